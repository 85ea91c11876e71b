//! Which requests the gate looks into, told from the method and path as Docker's router
//! reads them: the path percent-decoded (Go's `URL.Path`), an optional `/vX.Y` prefix
//! (`/v{version:[0-9.]+}`), then the route. Everything else passes through untouched.
//! A path Go's router would read differently from a plain comparison (`//`, `/./`, `/../`)
//! is not guessed at: it is refused for the callers the rules apply to.

/// A request the rules apply to; `Other` passes through.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Route {
    /// `POST /containers/create`: placed in the caller's slice, admitted, checked.
    ContainerCreate,
    /// `POST /containers/{id}/start`: old API versions took a HostConfig in the body.
    ContainerStart,
    /// `POST /containers/{id}/exec`: an exec may ask to be privileged.
    ExecCreate,
    /// `POST /build`: the classic builder's steps go to the `cgroupparent` query parameter.
    Build,
    /// `POST /volumes/create`: a local volume can bind any host path (`device`).
    VolumeCreate,
    /// Another request that creates something (an image pulled or loaded, a network, a
    /// commit): only a caller the configuration knows may make it; its body streams through.
    Creating,
    Other,
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RouteError {
    #[error("the path {0:?} is not in canonical form (an empty, '.' or '..' segment); send it as /containers/create, without such segments")]
    NotCanonical(String),
    #[error("the path {0:?} has an invalid percent-escape")]
    BadEscape(String),
}

pub fn classify(method: &str, raw_path: &str) -> Result<Route, RouteError> {
    let decoded = percent_decode(raw_path, false)
        .ok_or_else(|| RouteError::BadEscape(raw_path.to_owned()))?;
    let path = String::from_utf8_lossy(&decoded);
    if !is_canonical(&path) {
        return Err(RouteError::NotCanonical(raw_path.to_owned()));
    }
    if !method.eq_ignore_ascii_case("POST") {
        return Ok(Route::Other);
    }
    let path = without_version(&path);
    Ok(match path {
        "/containers/create" => Route::ContainerCreate,
        "/build" => Route::Build,
        "/volumes/create" => Route::VolumeCreate,
        // Docker's routes are `/containers/{name:.*}/start`: the name may hold a '/'.
        p if container_action(p, "/start") => Route::ContainerStart,
        p if container_action(p, "/exec") => Route::ExecCreate,
        "/images/load" | "/commit" | "/plugins/pull" => Route::Creating,
        p if p.ends_with("/create") => Route::Creating,
        _ => Route::Other,
    })
}

/// `GET` (copy out of) or `PUT` (copy into) `/containers/{name}/archive`: `docker cp`'s
/// archives, which pass for every caller (the gate splices them: [`super::bulk`]). `raw_path`
/// without its query.
pub fn is_archive(method: &str, raw_path: &str) -> bool {
    if method != "GET" && method != "PUT" {
        return false;
    }
    let Some(decoded) = percent_decode(raw_path, false) else {
        return false;
    };
    let path = String::from_utf8_lossy(&decoded);
    is_canonical(&path) && container_action(without_version(&path), "/archive")
}

fn container_action(path: &str, action: &str) -> bool {
    path.strip_prefix("/containers/")
        .and_then(|rest| rest.strip_suffix(action))
        .is_some_and(|name| !name.is_empty())
}

/// Without a `/v1.41`-like prefix (digits and dots, as Docker's router takes it).
fn without_version(path: &str) -> &str {
    let Some(rest) = path.strip_prefix("/v") else {
        return path;
    };
    let version_len = rest
        .bytes()
        .take_while(|b| b.is_ascii_digit() || *b == b'.')
        .count();
    if version_len > 0 && rest[version_len..].starts_with('/') {
        &rest[version_len..]
    } else {
        path
    }
}

/// No `.` or `..` segment and no empty one, except a trailing `/` (which Go's router keeps
/// and which matches none of the routes the rules apply to).
fn is_canonical(path: &str) -> bool {
    let Some(rest) = path.strip_prefix('/') else {
        return false;
    };
    let rest = rest.strip_suffix('/').unwrap_or(rest);
    rest.is_empty() || rest.split('/').all(|seg| !matches!(seg, "" | "." | ".."))
}

/// `%XX` decoded (and, in a query, `+` as a space), as Go's `url.PathUnescape` and
/// `url.QueryUnescape` do; `None` for a malformed escape, which Go refuses too.
pub fn percent_decode(text: &str, query: bool) -> Option<Vec<u8>> {
    let bytes = text.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        match bytes[i] {
            b'%' => {
                let hex = bytes.get(i + 1..i + 3)?;
                let hex = std::str::from_utf8(hex).ok()?;
                out.push(u8::from_str_radix(hex, 16).ok()?);
                i += 3;
            }
            b'+' if query => {
                out.push(b' ');
                i += 1;
            }
            b => {
                out.push(b);
                i += 1;
            }
        }
    }
    Some(out)
}

/// What a classic build's query said, and the query to send instead.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BuildQuery {
    /// Every `cgroupparent` the client sent (decoded), in order.
    pub cgroup_parents: Vec<String>,
    /// The client's query without them, with `cgroupparent=<slice>` at the end.
    pub placed: String,
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum QueryError {
    #[error("the query has a ';', which Docker refuses; separate parameters with '&'")]
    Semicolon,
    #[error("the query parameter {0:?} has an invalid percent-escape")]
    BadEscape(String),
}

/// The build's query with the slice as its only `cgroupparent` (Go's `FormValue` takes the
/// first one, so every other is removed, however it is spelled with escapes).
pub fn place_build(query: Option<&str>, slice: &str) -> Result<BuildQuery, QueryError> {
    let mut cgroup_parents = Vec::new();
    let mut kept: Vec<&str> = Vec::new();
    for pair in query.unwrap_or("").split('&').filter(|p| !p.is_empty()) {
        if pair.contains(';') {
            return Err(QueryError::Semicolon);
        }
        let (key, value) = pair.split_once('=').unwrap_or((pair, ""));
        let bad = || QueryError::BadEscape(pair.to_owned());
        let key = percent_decode(key, true).ok_or_else(bad)?;
        let value = percent_decode(value, true).ok_or_else(bad)?;
        if key == b"cgroupparent" {
            cgroup_parents.push(String::from_utf8_lossy(&value).into_owned());
        } else {
            kept.push(pair);
        }
    }
    // A slice name is letters, digits, '-', '_', ':' and '.': nothing to escape.
    kept.push("");
    let mut placed = kept.join("&");
    placed.push_str("cgroupparent=");
    placed.push_str(slice);
    Ok(BuildQuery {
        cgroup_parents,
        placed,
    })
}

/// Whether a request body of this media type would be read by Go's `FormValue` as form
/// fields, which take precedence over the query's: a build sent so could name its own
/// `cgroupparent` in the body.
pub fn is_form(content_type: Option<&str>) -> bool {
    content_type.is_some_and(|ct| {
        let media = ct.split(';').next().unwrap_or("").trim();
        media.eq_ignore_ascii_case("application/x-www-form-urlencoded")
            || media.eq_ignore_ascii_case("multipart/form-data")
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_routes_are_found_with_or_without_a_version_and_escapes() {
        let cases = [
            ("POST", "/containers/create", Route::ContainerCreate),
            ("POST", "/v1.41/containers/create", Route::ContainerCreate),
            ("POST", "/v1.24/containers/create", Route::ContainerCreate),
            ("POST", "/v1/containers/create", Route::ContainerCreate),
            ("post", "/containers/create", Route::ContainerCreate),
            ("POST", "/containers/%63reate", Route::ContainerCreate),
            ("POST", "/v1.41/containers/abc/start", Route::ContainerStart),
            ("POST", "/containers/a/b/start", Route::ContainerStart),
            ("POST", "/containers/abc/exec", Route::ExecCreate),
            ("POST", "/build", Route::Build),
            ("POST", "/v1.41/build", Route::Build),
            ("POST", "/volumes/create", Route::VolumeCreate),
            ("GET", "/containers/create", Route::Other),
            ("POST", "/containers/start", Route::Other),
            // Not a version: Docker answers 404; to the gate it is a path that creates.
            ("POST", "/vx/containers/create", Route::Creating),
            ("POST", "/v/containers/create", Route::Creating),
            ("POST", "/containers/create/", Route::Other),
            ("POST", "/exec/abc/start", Route::Other),
            ("POST", "/images/create", Route::Creating),
            ("POST", "/v1.41/images/load", Route::Creating),
            ("POST", "/networks/create", Route::Creating),
            ("POST", "/commit", Route::Creating),
            ("POST", "/containers/abc/kill", Route::Other),
            ("GET", "/_ping", Route::Other),
        ];
        for (method, path, want) in cases {
            assert_eq!(classify(method, path), Ok(want), "{method} {path}");
        }
    }

    #[test]
    fn paths_the_router_would_clean_are_refused() {
        for path in [
            "//containers/create",
            "/containers//create",
            "/v1.41/containers/./create",
            "/x/../containers/create",
            "/containers/create/..",
            "/containers//start",
            "/containers/%2e%2e/create",
            "containers/create",
        ] {
            assert!(
                matches!(classify("POST", path), Err(RouteError::NotCanonical(_))),
                "{path}"
            );
        }
        assert!(matches!(
            classify("POST", "/containers/%zzcreate"),
            Err(RouteError::BadEscape(_))
        ));
        assert_eq!(classify("GET", "/"), Ok(Route::Other));
    }

    #[test]
    fn a_builds_cgroupparent_is_replaced_by_the_slice_however_it_is_spelled() {
        let q = place_build(
            Some("t=x&cgroupparent=%2F&cgroup%70arent=a&q=1&cgroupparent"),
            "ds01-s-a.slice",
        )
        .unwrap();
        assert_eq!(q.cgroup_parents, ["/", "a", ""]);
        assert_eq!(q.placed, "t=x&q=1&cgroupparent=ds01-s-a.slice");
        let q = place_build(None, "ds01-s-a.slice").unwrap();
        assert_eq!(q.placed, "cgroupparent=ds01-s-a.slice");
        assert!(q.cgroup_parents.is_empty());
        // `CgroupParent` is another parameter to Go (keys are case-sensitive): kept.
        let q = place_build(Some("CgroupParent=x"), "s.slice").unwrap();
        assert_eq!(q.placed, "CgroupParent=x&cgroupparent=s.slice");
        assert_eq!(
            place_build(Some("a=1;cgroupparent=x"), "s"),
            Err(QueryError::Semicolon)
        );
        assert!(matches!(
            place_build(Some("cgroupparent=%g1"), "s"),
            Err(QueryError::BadEscape(_))
        ));
    }

    #[test]
    fn form_bodies_are_recognised() {
        assert!(is_form(Some("application/x-www-form-urlencoded")));
        assert!(is_form(Some("Multipart/Form-Data; boundary=x")));
        assert!(!is_form(Some("application/x-tar")));
        assert!(!is_form(None));
    }
}
