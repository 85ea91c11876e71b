//! The bulk requests the gate passes on by splicing (`docker cp`'s archives), told from what has
//! arrived of them, and the framing of their bodies: pure, over bytes.
//!
//! Such a request passes through untouched anyway ([`super::route::Route::Other`] for every
//! caller); what this adds is that its bytes are moved by the kernel, not through hyper. The
//! gate then does its own HTTP/1 framing for that one request, so this module is strict where
//! HTTP is loose: a head or chunk it does not read exactly one way is not spliced (the head goes
//! to hyper instead) or ends the exchange (a chunk), never guessed at. Each spliced request is
//! the last on its connection: the daemon is asked to close after answering it (`Connection:
//! close`, which Go's server honours and says back), and nothing the client sends after its
//! body is read, so no second request can ride in behind it.

use super::route;

/// The most of a request's head looked at; a longer head is not spliced. Docker's clients send
/// an archive request's head in a few hundred bytes.
pub const MAX_HEAD: usize = 8 << 10;
/// Headers read in a spliced request's head.
const MAX_HEADERS: usize = 64;
/// The most of a chunk's size line looked at: the size in hex and an extension.
pub const MAX_CHUNK_LINE: usize = 256;

/// A request the gate splices: what goes to the daemon in place of the client's head, and how
/// its body is framed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Bulk {
    /// The client's head's length in bytes (what is consumed of the client's stream).
    pub head_len: usize,
    /// The head sent to the daemon: the client's request line and headers, its connection
    /// headers replaced by `Connection: close`.
    pub head: Vec<u8>,
    pub body: Framing,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Framing {
    /// Exactly this many bytes (none: a `GET`, or `Content-Length: 0`).
    Length(u64),
    /// `Transfer-Encoding: chunked`.
    Chunked,
}

/// The request at the start of `arrived` if it is one the gate splices; None if hyper is to
/// read it (another route, a head not whole yet or longer than [`MAX_HEAD`], or anything in it
/// this module would have to guess at).
pub fn bulk_request(arrived: &[u8]) -> Option<Bulk> {
    let window = &arrived[..arrived.len().min(MAX_HEAD)];
    let mut headers = [httparse::EMPTY_HEADER; MAX_HEADERS];
    let mut request = httparse::Request::new(&mut headers);
    let httparse::Status::Complete(head_len) = request.parse(window).ok()? else {
        return None;
    };
    let (method, path, version) = (request.method?, request.path?, request.version?);
    let raw_path = path.split_once('?').map_or(path, |(p, _)| p);
    if version != 1 || !route::is_archive(method, raw_path) {
        return None;
    }
    let mut length: Option<u64> = None;
    let mut chunked = false;
    let mut head = format!("{method} {path} HTTP/1.1\r\n").into_bytes();
    for header in request.headers.iter() {
        let name = header.name;
        let value = header.value;
        if name.eq_ignore_ascii_case("connection") {
            // Only the plain keep-alive choice is replaced; a header named as hop-by-hop in
            // it would need a proxy's care.
            if !(value.eq_ignore_ascii_case(b"keep-alive") || value.eq_ignore_ascii_case(b"close"))
            {
                return None;
            }
            continue;
        }
        if name.eq_ignore_ascii_case("keep-alive") {
            continue;
        }
        if ["upgrade", "expect", "te", "trailer", "proxy-connection"]
            .iter()
            .any(|n| name.eq_ignore_ascii_case(n))
        {
            return None;
        }
        if name.eq_ignore_ascii_case("content-length") {
            if length.is_some() || value.is_empty() || !value.iter().all(u8::is_ascii_digit) {
                return None;
            }
            length = Some(std::str::from_utf8(value).ok()?.parse().ok()?);
        }
        if name.eq_ignore_ascii_case("transfer-encoding") {
            if chunked || !value.eq_ignore_ascii_case(b"chunked") {
                return None;
            }
            chunked = true;
        }
        head.extend_from_slice(name.as_bytes());
        head.extend_from_slice(b": ");
        head.extend_from_slice(value);
        head.extend_from_slice(b"\r\n");
    }
    head.extend_from_slice(b"Connection: close\r\n\r\n");
    let body = match (length, chunked) {
        (Some(_), true) => return None,
        (_, true) if method == "GET" => return None,
        (_, true) => Framing::Chunked,
        (Some(n), false) if n > 0 && method == "GET" => return None,
        (length, false) => Framing::Length(length.unwrap_or(0)),
    };
    Some(Bulk {
        head_len,
        head,
        body,
    })
}

/// What starts a chunk of a chunked body.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Chunk {
    /// `head_len` bytes of framing (the previous chunk's CRLF, if any, and this one's size
    /// line), then `size` bytes of data.
    Data { head_len: usize, size: u64 },
    /// The last chunk and the body's end (no trailers): `len` bytes, after which the request
    /// is whole.
    Last { len: usize },
    /// Not all of it has arrived.
    Partial,
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum FramingError {
    #[error(
        "a chunk's size line is not hex digits and CRLF (an extension of token characters at most)"
    )]
    BadSizeLine,
    #[error("a chunk's data is not followed by CRLF")]
    NoCrlfAfterData,
    #[error("the chunk size does not fit in 64 bits")]
    TooLarge,
    #[error("the chunked body has trailers, which the gate does not pass on")]
    Trailers,
}

/// The chunk framing at the start of `arrived`: after a chunk's data (`after_data`) its CRLF
/// first, then a size line `HEX[;ext]CRLF`; the last chunk (`0`) must end the body at once
/// (`0\r\n\r\n`). Stricter than Go's reader (no bare LF, no spaces), so that what is forwarded
/// is read the same way by the daemon.
pub fn chunk(arrived: &[u8], after_data: bool) -> Result<Chunk, FramingError> {
    let mut at = 0;
    if after_data {
        match arrived.get(..2) {
            None if arrived.len() < 2 && b"\r\n".starts_with(arrived) => return Ok(Chunk::Partial),
            Some(b"\r\n") => at = 2,
            _ => return Err(FramingError::NoCrlfAfterData),
        }
    }
    let line = &arrived[at..];
    let digits = line.iter().take_while(|b| b.is_ascii_hexdigit()).count();
    let Some(end) = line.windows(2).position(|w| w == b"\r\n") else {
        let seen = &line[..line.len().min(MAX_CHUNK_LINE)];
        if line.len() >= MAX_CHUNK_LINE || !line_may_continue(seen, digits) {
            return Err(FramingError::BadSizeLine);
        }
        return Ok(Chunk::Partial);
    };
    if end > MAX_CHUNK_LINE || digits == 0 || !is_extension(&line[digits..end]) {
        return Err(FramingError::BadSizeLine);
    }
    if digits > 16 {
        return Err(FramingError::TooLarge);
    }
    let hex = std::str::from_utf8(&line[..digits]).map_err(|_| FramingError::BadSizeLine)?;
    let size = u64::from_str_radix(hex, 16).map_err(|_| FramingError::TooLarge)?;
    let head_len = at + end + 2;
    if size > 0 {
        return Ok(Chunk::Data { head_len, size });
    }
    match arrived.get(head_len..head_len + 2) {
        Some(b"\r\n") => Ok(Chunk::Last { len: head_len + 2 }),
        Some(_) => Err(FramingError::Trailers),
        None if b"\r\n".starts_with(&arrived[head_len..]) => Ok(Chunk::Partial),
        None => Err(FramingError::Trailers),
    }
}

/// Whether a size line with no CRLF yet may still become a good one.
fn line_may_continue(line: &[u8], digits: usize) -> bool {
    let rest = &line[digits..];
    let rest = rest.strip_suffix(b"\r").unwrap_or(rest);
    rest.is_empty() || is_extension(rest)
}

/// `;name[=value]...` of token characters, as Go's client never sends but a client may.
fn is_extension(ext: &[u8]) -> bool {
    ext.is_empty()
        || (ext[0] == b';'
            && ext[1..]
                .iter()
                .all(|b| b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~;=".contains(b)))
}

#[cfg(test)]
mod tests {
    use super::*;

    const PUT: &[u8] = b"PUT /v1.41/containers/abc/archive?path=%2Ftmp HTTP/1.1\r\nHost: api.moby.localhost\r\nUser-Agent: Docker-Client/20.10.24\r\nContent-Type: application/x-tar\r\nTransfer-Encoding: chunked\r\n\r\n8000\r\n";

    #[test]
    fn the_clis_copy_into_a_container_is_spliced_chunked_and_closed_after() {
        let bulk = bulk_request(PUT).unwrap();
        assert_eq!(bulk.head_len, PUT.len() - b"8000\r\n".len());
        assert_eq!(bulk.body, Framing::Chunked);
        let head = String::from_utf8(bulk.head).unwrap();
        assert!(head.starts_with("PUT /v1.41/containers/abc/archive?path=%2Ftmp HTTP/1.1\r\n"));
        assert!(head.ends_with("Transfer-Encoding: chunked\r\nConnection: close\r\n\r\n"));
    }

    #[test]
    fn a_copy_out_has_no_body_and_its_keep_alive_is_replaced() {
        let get = b"GET /containers/a/b/archive?path=/x HTTP/1.1\r\nHost: x\r\nConnection: keep-alive\r\nKeep-Alive: 5\r\n\r\n";
        let bulk = bulk_request(get).unwrap();
        assert_eq!(bulk.body, Framing::Length(0));
        assert_eq!(
            bulk.head,
            b"GET /containers/a/b/archive?path=/x HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n"
        );
    }

    #[test]
    fn what_is_not_a_plain_archive_request_goes_to_hyper() {
        let not = |head: &str| assert_eq!(bulk_request(head.as_bytes()), None, "{head:?}");
        not("PUT /containers/abc/archive HTTP/1.1\r\nHost: x\r\n"); // not whole yet
        not("POST /containers/create HTTP/1.1\r\nHost: x\r\n\r\n");
        not("HEAD /containers/abc/archive HTTP/1.1\r\nHost: x\r\n\r\n");
        not("put /containers/abc/archive HTTP/1.1\r\nHost: x\r\n\r\n");
        not("PUT /containers//archive HTTP/1.1\r\nHost: x\r\n\r\n");
        not("PUT /containers/a/../create/archive HTTP/1.1\r\nHost: x\r\n\r\n");
        not("PUT /containers/abc/archive HTTP/1.0\r\nHost: x\r\n\r\n");
        not("PUT /containers/abc/archive HTTP/1.1\r\nContent-Length: 5\r\nTransfer-Encoding: chunked\r\n\r\n");
        not("PUT /containers/abc/archive HTTP/1.1\r\nContent-Length: 5\r\nContent-Length: 5\r\n\r\n");
        not("PUT /containers/abc/archive HTTP/1.1\r\nContent-Length: +5\r\n\r\n");
        not("PUT /containers/abc/archive HTTP/1.1\r\nTransfer-Encoding: gzip, chunked\r\n\r\n");
        not("PUT /containers/abc/archive HTTP/1.1\r\nTransfer-Encoding: chunked\r\nTransfer-Encoding: chunked\r\n\r\n");
        not("PUT /containers/abc/archive HTTP/1.1\r\nExpect: 100-continue\r\nContent-Length: 5\r\n\r\n");
        not("GET /containers/abc/archive HTTP/1.1\r\nUpgrade: tcp\r\nConnection: Upgrade\r\n\r\n");
        not("GET /containers/abc/archive HTTP/1.1\r\nContent-Length: 3\r\n\r\n");
        not("GET /containers/abc/archive HTTP/1.1\r\nConnection: x-secret\r\n\r\n");
        not("GET /containers/abc/archive HTTP/1.1\r\nHost: x\r\n bad-fold\r\n\r\n");
    }

    #[test]
    fn a_content_length_body_is_framed_by_its_length() {
        let put = b"PUT /v1.24/containers/abc/archive HTTP/1.1\r\nContent-Length: 1024\r\n\r\n";
        assert_eq!(bulk_request(put).unwrap().body, Framing::Length(1024));
    }

    #[test]
    fn chunks_are_read_exactly() {
        assert_eq!(
            chunk(b"8000\r\nDATA", false),
            Ok(Chunk::Data {
                head_len: 6,
                size: 0x8000
            })
        );
        assert_eq!(
            chunk(b"\r\n1f;x=y\r\n", true),
            Ok(Chunk::Data {
                head_len: 10,
                size: 0x1f
            })
        );
        assert_eq!(
            chunk(b"\r\n0\r\n\r\nGET /", true),
            Ok(Chunk::Last { len: 7 })
        );
        assert_eq!(chunk(b"000\r\n\r\n", false), Ok(Chunk::Last { len: 7 }));
        for partial in [
            &b""[..],
            b"\r",
            b"\r\n",
            b"\r\n8",
            b"\r\n80;a",
            b"\r\n0\r\n",
            b"\r\n0\r\n\r",
        ] {
            assert_eq!(chunk(partial, true), Ok(Chunk::Partial), "{partial:?}");
        }
    }

    #[test]
    fn chunk_framing_that_could_be_read_two_ways_ends_the_exchange() {
        use FramingError::*;
        let bad: &[(&[u8], bool, FramingError)] = &[
            (b"8000\nDATA", false, BadSizeLine),
            (b"8000 \r\n", false, BadSizeLine),
            (b" 8000\r\n", false, BadSizeLine),
            (b"+8\r\n", false, BadSizeLine),
            (b"\r\n\r\n", true, BadSizeLine),
            (b"x\r\n", false, BadSizeLine),
            (b"8;a b\r\n", false, BadSizeLine),
            (b"8\n", false, BadSizeLine),
            (b"XX", true, NoCrlfAfterData),
            (b"\n8\r\n", true, NoCrlfAfterData),
            (b"10000000000000000\r\n", false, TooLarge),
            (b"0\r\nX-Trailer: 1\r\n\r\n", false, Trailers),
        ];
        for (bytes, after, error) in bad {
            assert_eq!(chunk(bytes, *after), Err(error.clone()), "{bytes:?}");
        }
        let long = [b'1'; MAX_CHUNK_LINE + 1];
        assert_eq!(chunk(&long, false), Err(BadSizeLine));
    }

    #[test]
    fn a_huge_chunk_size_is_read_as_such() {
        assert_eq!(
            chunk(b"ffffffffffffffff\r\n", false),
            Ok(Chunk::Data {
                head_len: 18,
                size: u64::MAX
            })
        );
    }
}
