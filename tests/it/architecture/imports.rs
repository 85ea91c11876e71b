//! The crate's import graph between files: no file may need itself back through other files,
//! however many the circle goes through. An edge goes from a file to the file that defines
//! what it names: every `use` leaf and every path in the code that starts with `crate::`,
//! `super::`, `self::`, a module the file declares or a name it imported, resolved through the
//! `mod` declarations (with `#[path]`) and through re-exports (`pub use` is a door, not a
//! dependency). `mod x;` itself is no edge. Comments, string literals and
//! code under `#[cfg(test)]` are skipped.

use std::collections::{BTreeMap, BTreeSet, HashMap, VecDeque};
use std::fs;
use std::path::{Path, PathBuf};

#[derive(Debug, Clone, PartialEq, Eq)]
enum Tok {
    Ident(String),
    Str(String),
    PathSep,
    Punct(char),
}

/// Tokens with their lines: comments, numbers, char literals and lifetimes dropped; strings
/// (plain and raw) kept whole, as `#[path = "..."]` needs their text.
fn lex(text: &str) -> Vec<(Tok, usize)> {
    let c: Vec<char> = text.chars().collect();
    let at = |i: usize| c.get(i).copied().unwrap_or('\0');
    let word = |i: usize| at(i).is_alphanumeric() || at(i) == '_';
    let (mut out, mut i, mut line) = (Vec::new(), 0, 1);
    while i < c.len() {
        let start = line;
        match c[i] {
            '\n' => (line, i) = (line + 1, i + 1),
            '/' if at(i + 1) == '/' => {
                while i < c.len() && c[i] != '\n' {
                    i += 1;
                }
            }
            '/' if at(i + 1) == '*' => {
                let end = text_find(&c, i + 2, &['*', '/']);
                line += c[i..end].iter().filter(|&&x| x == '\n').count();
                i = end + 2;
            }
            '"' => {
                let mut s = String::new();
                i += 1;
                while i < c.len() && c[i] != '"' {
                    i += usize::from(c[i] == '\\');
                    line += usize::from(at(i) == '\n');
                    s.push(at(i));
                    i += 1;
                }
                out.push((Tok::Str(s), start));
                i += 1;
            }
            // A char literal ('a', '\n', '\u{..}') or a lifetime ('a).
            '\'' if at(i + 1) == '\\' => i = text_find(&c, i + 2, &['\'']) + 1,
            '\'' if at(i + 2) == '\'' => i += 3,
            '\'' => {
                i += 1;
                while word(i) {
                    i += 1;
                }
            }
            ch if ch.is_alphabetic() || ch == '_' => {
                let from = i;
                while word(i) {
                    i += 1;
                }
                let w: String = c[from..i].iter().collect();
                let hashes = c[i..].iter().take_while(|&&x| x == '#').count();
                if (w == "r" || w == "br") && at(i + hashes) == '"' {
                    // A raw string: r"..", r#".."#.
                    let close: Vec<char> = std::iter::once('"')
                        .chain(std::iter::repeat_n('#', hashes))
                        .collect();
                    let end = text_find(&c, i + hashes + 1, &close);
                    let s: String = c[i + hashes + 1..end].iter().collect();
                    line += s.matches('\n').count();
                    out.push((Tok::Str(s), start));
                    i = end + close.len();
                } else if w == "r" && hashes == 1 {
                    // A raw identifier: r#type.
                    let from = i + 1;
                    i += 1;
                    while word(i) {
                        i += 1;
                    }
                    out.push((Tok::Ident(c[from..i].iter().collect()), line));
                } else {
                    out.push((Tok::Ident(w), line));
                }
            }
            ch if ch.is_ascii_digit() => {
                while word(i) || (at(i) == '.' && at(i + 1).is_ascii_digit()) {
                    i += 1;
                }
            }
            ':' if at(i + 1) == ':' => {
                out.push((Tok::PathSep, line));
                i += 2;
            }
            ch if ch.is_whitespace() => i += 1,
            ch => {
                out.push((Tok::Punct(ch), line));
                i += 1;
            }
        }
    }
    out
}

/// Where `pat` next starts in `c` from `i` (the end of `c` when it does not).
fn text_find(c: &[char], mut i: usize, pat: &[char]) -> usize {
    while i < c.len() && !c[i..].starts_with(pat) {
        i += 1;
    }
    i.min(c.len())
}

type ModPath = Vec<String>;

/// One `use` leaf: the path as written, the name it binds (`None` for a glob), whether it is a
/// re-export, its line and the inline module (`mod tests { .. }`) it is in.
struct UseLeaf {
    path: Vec<String>,
    name: Option<String>,
    public: bool,
    line: usize,
    scope: Vec<String>,
}

/// What a file says about modules and names.
#[derive(Default)]
struct Facts {
    /// `mod x;`: (inline scope, name, `#[path]`).
    mods: Vec<(Vec<String>, String, Option<String>)>,
    /// Inline modules, by their path below the file's module.
    inline: BTreeSet<Vec<String>>,
    uses: Vec<UseLeaf>,
    /// Paths in the code: (line, inline scope, segments).
    paths: Vec<(usize, Vec<String>, Vec<String>)>,
}

fn ident(t: Option<&(Tok, usize)>) -> Option<&str> {
    match t {
        Some((Tok::Ident(s), _)) => Some(s),
        _ => None,
    }
}

/// The use tree at `t[*i]`, below `path`: its leaves, as (path, bound name, line).
fn use_tree(
    t: &[(Tok, usize)],
    i: &mut usize,
    mut path: Vec<String>,
    out: &mut Vec<(Vec<String>, Option<String>, usize)>,
) {
    loop {
        match t.get(*i) {
            Some((Tok::PathSep, _)) => *i += 1,
            Some((Tok::Punct('{'), _)) => {
                *i += 1;
                loop {
                    match t.get(*i) {
                        Some((Tok::Punct('}'), _)) | None => break *i += 1,
                        Some((Tok::Punct(','), _)) => *i += 1,
                        _ => use_tree(t, i, path.clone(), out),
                    }
                }
                return;
            }
            Some((Tok::Punct('*'), line)) => {
                *i += 1;
                return out.push((path, None, *line));
            }
            Some((Tok::Ident(s), line)) => {
                *i += 1;
                // `a::b::{self}` binds `b`.
                if s != "self" || path.is_empty() {
                    path.push(s.clone());
                }
                if t.get(*i).map(|t| &t.0) == Some(&Tok::PathSep) {
                    continue;
                }
                let mut name = path.last().cloned();
                if ident(t.get(*i)) == Some("as") {
                    name = ident(t.get(*i + 1)).map(str::to_owned);
                    *i += 2;
                }
                return out.push((path, name, *line));
            }
            _ => return,
        }
    }
}

fn facts(text: &str) -> Facts {
    let t = lex(text);
    let mut f = Facts::default();
    // The inline modules open, each with the brace depth inside it.
    let mut scope: Vec<(String, usize)> = Vec::new();
    let names = |scope: &[(String, usize)]| scope.iter().map(|s| s.0.clone()).collect::<Vec<_>>();
    let (mut depth, mut path_attr, mut i) = (0, None, 0);
    // Code under `#[cfg(test)]` (a `mod tests { .. }`, a test-only item) is built into the test
    // binary only, where nothing imports it: what it names is no edge. `test_at`: the brace
    // depth inside the item.
    let (mut cfg_test, mut test_at) = (false, None);
    while i < t.len() {
        match &t[i].0 {
            Tok::Punct('{') => {
                depth += 1;
                if std::mem::take(&mut cfg_test) && test_at.is_none() {
                    test_at = Some(depth);
                }
            }
            Tok::Punct('}') => {
                if scope.last().is_some_and(|s| s.1 == depth) {
                    scope.pop();
                }
                if test_at == Some(depth) {
                    test_at = None;
                }
                depth -= 1;
            }
            Tok::Punct(';') => cfg_test = false,
            Tok::Punct('#')
                if ident(t.get(i + 2)) == Some("cfg")
                    && ident(t.get(i + 4)) == Some("test")
                    && t.get(i + 5).map(|t| &t.0) == Some(&Tok::Punct(')')) =>
            {
                cfg_test = true;
            }
            Tok::Punct('#') if ident(t.get(i + 2)) == Some("path") => {
                if let Some((Tok::Str(p), _)) = t.get(i + 4) {
                    path_attr = Some(p.clone());
                }
            }
            Tok::Ident(w) if w == "mod" => match (ident(t.get(i + 1)), t.get(i + 2)) {
                (Some(name), Some((Tok::Punct(';'), _))) => {
                    cfg_test = false;
                    f.mods
                        .push((names(&scope), name.to_owned(), path_attr.take()));
                    i += 2;
                }
                (Some(name), Some((Tok::Punct('{'), _))) => {
                    depth += 1;
                    if std::mem::take(&mut cfg_test) && test_at.is_none() {
                        test_at = Some(depth);
                    }
                    scope.push((name.to_owned(), depth));
                    f.inline.insert(names(&scope));
                    i += 2;
                }
                _ => {}
            },
            Tok::Ident(w) if w == "use" => {
                // `pub use`, `pub(crate) use`, `pub(super) use`: a re-export.
                let back = |n: usize| i.checked_sub(n).and_then(|b| t.get(b));
                let public = ident(back(1)) == Some("pub")
                    || (back(1).map(|t| &t.0) == Some(&Tok::Punct(')'))
                        && ident(back(4)) == Some("pub"));
                let test_only = std::mem::take(&mut cfg_test) || test_at.is_some();
                i += 1;
                // `use ::other_crate::..` is not ours.
                if t.get(i).map(|t| &t.0) != Some(&Tok::PathSep) {
                    let mut leaves = Vec::new();
                    use_tree(&t, &mut i, Vec::new(), &mut leaves);
                    leaves.retain(|_| !test_only);
                    f.uses
                        .extend(leaves.into_iter().map(|(path, name, line)| UseLeaf {
                            path,
                            name,
                            public,
                            line,
                            scope: names(&scope),
                        }));
                }
                continue;
            }
            Tok::Ident(first) => {
                let mut segs = vec![first.clone()];
                let mut j = i + 1;
                while t.get(j).map(|t| &t.0) == Some(&Tok::PathSep) {
                    let Some(s) = ident(t.get(j + 1)) else { break };
                    segs.push(s.to_owned());
                    j += 2;
                }
                let after_sep = i > 0 && t[i - 1].0 == Tok::PathSep;
                if !after_sep && segs.len() > 1 && test_at.is_none() {
                    f.paths.push((t[i].1, names(&scope), segs));
                }
                i = j;
                continue;
            }
            _ => {}
        }
        i += 1;
    }
    f
}

/// The crate's files by module path, from `lib.rs` through its `mod` declarations.
struct Crate {
    files: BTreeMap<ModPath, String>,
    facts: HashMap<String, Facts>,
}

impl Crate {
    fn read(src: &Path) -> Crate {
        let mut c = Crate {
            files: BTreeMap::new(),
            facts: HashMap::new(),
        };
        c.add(src, Vec::new(), PathBuf::from("lib.rs"));
        c
    }

    fn add(&mut self, src: &Path, module: ModPath, rel: PathBuf) {
        let text =
            fs::read_to_string(src.join(&rel)).unwrap_or_else(|e| panic!("{}: {e}", rel.display()));
        let f = facts(&text);
        let here = rel.parent().unwrap().to_path_buf();
        let is_root = ["lib.rs", "main.rs", "mod.rs"]
            .iter()
            .any(|n| rel.ends_with(n));
        // Where this file's child modules live.
        let dir = if is_root {
            here.clone()
        } else {
            rel.with_extension("")
        };
        let mut children = Vec::new();
        for (scope, child, attr) in &f.mods {
            let base = scope.iter().fold(dir.clone(), |d, s| d.join(s));
            let flat = base.join(format!("{child}.rs"));
            let child_rel = match attr {
                Some(p) => here.join(p),
                None if src.join(&flat).exists() => flat,
                None => base.join(child).join("mod.rs"),
            };
            let mut m = module.clone();
            m.extend(scope.iter().cloned());
            m.push(child.clone());
            children.push((m, child_rel));
        }
        let key = rel.display().to_string();
        self.files.insert(module, key.clone());
        self.facts.insert(key, f);
        for (m, child_rel) in children {
            self.add(src, m, child_rel);
        }
    }

    fn module_of(&self, file: &str) -> ModPath {
        let found = self.files.iter().find(|(_, f)| f.as_str() == file);
        found.map(|(m, _)| m.clone()).unwrap()
    }

    /// `segs`, written in `file` (inline module `scope`), as a path from the crate root;
    /// `None` when it does not lead into the crate (std, another crate, a local item).
    fn absolute(
        &self,
        file: &str,
        scope: &[String],
        segs: &[String],
        depth: usize,
    ) -> Option<ModPath> {
        let mut here = self.module_of(file);
        here.extend(scope.iter().cloned());
        let (first, rest) = segs.split_first()?;
        let mut base = match first.as_str() {
            "crate" => Vec::new(),
            "self" => here,
            "super" => here[..here.len().checked_sub(1)?].to_vec(),
            name => {
                let facts = &self.facts[file];
                let mut child = here.clone();
                child.push(name.to_owned());
                let inline = child
                    .get(here.len() - scope.len()..)
                    .map(<[String]>::to_vec);
                if !self.files.contains_key(&child)
                    && !inline.is_some_and(|m| facts.inline.contains(&m))
                {
                    // A name a `use` of this file bound, in this scope or the file's.
                    let leaf = facts
                        .uses
                        .iter()
                        .find(|u| u.name.as_deref() == Some(name) && scope.starts_with(&u.scope))?;
                    if depth > 8 {
                        return None;
                    }
                    let mut target = self.absolute(file, &leaf.scope, &leaf.path, depth + 1)?;
                    target.extend(rest.iter().cloned());
                    return Some(target);
                }
                child
            }
        };
        let mut rest = rest;
        while rest.first().is_some_and(|s| s == "super") {
            base.pop()?;
            rest = &rest[1..];
        }
        base.extend(rest.iter().cloned());
        Some(base)
    }

    /// The file that defines what `path` names: the deepest module file on the way, through
    /// that module's own `use`s (a re-export, or a private import a child module sees).
    fn definer(&self, path: &[String], depth: usize) -> String {
        let k = (0..=path.len())
            .rev()
            .find(|k| self.files.contains_key(&path[..*k]))
            .unwrap();
        let file = &self.files[&path[..k]];
        let Some(item) = path.get(k) else {
            return file.clone();
        };
        let door = self.facts[file]
            .uses
            .iter()
            .find(|u| u.scope.is_empty() && u.name.as_deref() == Some(item));
        match door.and_then(|u| self.absolute(file, &[], &u.path, 0)) {
            Some(mut target) if depth < 8 => {
                target.extend(path[k + 1..].iter().cloned());
                self.definer(&target, depth + 1)
            }
            _ => file.clone(),
        }
    }

    /// Every edge: from → to → (line, the path as written) of its first use.
    fn edges(&self) -> BTreeMap<String, BTreeMap<String, (usize, String)>> {
        let mut edges: BTreeMap<String, BTreeMap<String, (usize, String)>> = BTreeMap::new();
        for file in self.files.values() {
            let facts = &self.facts[file];
            let named = facts
                .paths
                .iter()
                .map(|(line, scope, segs)| (*line, scope, segs));
            let used = facts.uses.iter().filter(|u| !u.public);
            for (line, scope, segs) in named.chain(used.map(|u| (u.line, &u.scope, &u.path))) {
                let Some(abs) = self.absolute(file, scope, segs, 0) else {
                    continue;
                };
                let to = self.definer(&abs, 0);
                if &to != file {
                    let first = (line, segs.join("::"));
                    let out = edges.entry(file.clone()).or_default();
                    let e = out.entry(to).or_insert_with(|| first.clone());
                    *e = e.clone().min(first);
                }
            }
        }
        edges
    }
}

/// The import cycles of the crate under `src`: for each file on one, the shortest way back to
/// it, shown file → file with the line that makes each step; each cycle once.
fn import_cycles(src: &Path) -> Vec<String> {
    let edges = Crate::read(src).edges();
    let mut found = BTreeMap::new();
    for start in edges.keys() {
        // Breadth first from `start`, until an edge leads back to it.
        let mut came_from: HashMap<&str, &str> = HashMap::new();
        let mut queue = VecDeque::from([start.as_str()]);
        let mut last = None;
        while let Some(at) = queue.pop_front() {
            for to in edges.get(at).into_iter().flat_map(BTreeMap::keys) {
                if to == start {
                    last = Some(at);
                    queue.clear();
                    break;
                }
                if !came_from.contains_key(to.as_str()) {
                    came_from.insert(to, at);
                    queue.push_back(to);
                }
            }
        }
        let Some(mut at) = last else { continue };
        let mut cycle = vec![start.as_str(), at];
        while at != start {
            at = came_from[at];
            cycle.push(at);
        }
        cycle.reverse();
        // Each cycle once, whichever of its files it was found from.
        let min = (0..cycle.len() - 1).min_by_key(|i| cycle[*i]).unwrap();
        let mut key: Vec<&str> = cycle[min..cycle.len() - 1].to_vec();
        key.extend(&cycle[..=min]);
        let steps: Vec<String> = key
            .windows(2)
            .map(|w| {
                let (line, path) = &edges[w[0]][w[1]];
                format!("    {}:{line}: {path}\n    → {}", w[0], w[1])
            })
            .collect();
        found.insert(key.join(" → "), steps.join("\n"));
    }
    found
        .into_iter()
        .map(|(cycle, steps)| format!("{cycle}\n{steps}"))
        .collect()
}

#[test]
fn no_file_imports_itself_through_others() {
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
    let found = import_cycles(&src);
    assert!(
        found.is_empty(),
        "import cycles between files:\n{}",
        found.join("\n\n")
    );
}

#[test]
fn the_import_graph_sees_every_kind_of_path() {
    let dir = crate::support::Scratch::new("imports");
    let write = |rel: &str, text: &str| {
        let p = dir.path().join(rel);
        fs::create_dir_all(p.parent().unwrap()).unwrap();
        fs::write(p, text).unwrap();
    };
    // a → b through a nested `use crate::` with `self as`; b → c through a path in the code
    // (and not through a string or a comment); c → a through a re-export in m/mod.rs;
    // d → e through `super::`, e → d through an imported name `as`; gee.rs is a `#[path]`
    // module that names itself and e, which makes no cycle; mod.rs declaring its children,
    // r#"raw strings"# and e's unit tests naming gee make none either.
    write(
        "lib.rs",
        "pub mod a;\npub mod b;\npub mod c;\npub mod m;\n// crate::z\n",
    );
    write(
        "a.rs",
        "use crate::b::{self as bee, Thing};\npub struct A;\n",
    );
    write(
        "b.rs",
        "pub struct Thing;\nfn f() { crate::c::g(); let _ = \"crate::a\"; let _ = r#\"crate::m\"#; }\n",
    );
    write("c.rs", "pub fn g() { let _ = crate::m::A; }\n");
    write(
        "m/mod.rs",
        "mod d;\nmod e;\n#[path = \"gee.rs\"]\nmod g;\npub use crate::a::A;\nuse self::d::D;\n",
    );
    write("m/d.rs", "pub struct D;\nfn f() { super::e::E; }\n");
    write(
        "m/e.rs",
        "use super::d as dee;\npub struct E(dee::D);\n#[cfg(test)]\nmod tests {\n    use crate::m::g;\n    fn f() { crate::m::g::f(); }\n}\n",
    );
    write(
        "m/gee.rs",
        "use super::g as me;\nfn f() { crate::m::e::E; me::f(); }\n",
    );
    let cycles = import_cycles(dir.path());
    assert_eq!(cycles.len(), 2, "{cycles:#?}");
    assert!(
        cycles[0].starts_with("a.rs → b.rs → c.rs → a.rs\n"),
        "{}",
        cycles[0]
    );
    assert!(
        cycles[0].contains("c.rs:1: crate::m::A\n    → a.rs"),
        "{}",
        cycles[0]
    );
    assert!(
        cycles[1].starts_with("m/d.rs → m/e.rs → m/d.rs\n"),
        "{}",
        cycles[1]
    );
}
