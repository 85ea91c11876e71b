//! How deep a YAML text nests, found in one pass before any YAML parser sees it: serde_yaml
//! needs ~36 s to refuse 200 KB of `[` with "recursion limit exceeded", and a hook would pay
//! that at every container start. A DS01 configuration nests 5 levels deep at most.
//!
//! The scan counts flow collections (`[`, `{` outside quoted scalars and comments) on top of
//! block levels (indentation, and each `- ` that opens a sequence on the same line). It is
//! not a parser: on odd YAML it may count a level too many or too few, never enough to
//! matter below [`MAX_DEPTH`], and the parser still checks everything that passes.

use std::path::Path;

use crate::model::diagnostics::{Diagnostics, Location};

/// Far above any real configuration, far below serde_yaml's own limit of 128.
pub(super) const MAX_DEPTH: usize = 32;

#[derive(Default)]
struct Scan {
    /// Open flow collections.
    flow: usize,
    /// The quote of a quoted scalar not yet closed (quoted scalars may span lines).
    quote: Option<u8>,
    /// Indentation of each open block level.
    block: Vec<usize>,
    /// Inside a block scalar (`|`, `>`): the indentation of the line that opened it, which
    /// every line of its content exceeds.
    block_scalar: Option<usize>,
}

impl Scan {
    fn depth(&self) -> usize {
        self.block.len() + self.flow
    }

    /// One line, without its line break; `false` when it nests too deep.
    fn line(&mut self, line: &[u8]) -> bool {
        let indent = line.iter().take_while(|b| **b == b' ').count();
        let blank = line[indent..].iter().all(|b| *b == b' ' || *b == b'\t');
        if let Some(opened_at) = self.block_scalar {
            if blank || indent > opened_at {
                return true;
            }
            self.block_scalar = None;
        }
        let mut start = 0;
        if self.quote.is_none() && self.flow == 0 {
            if blank || line[indent] == b'#' {
                return true;
            }
            let rest = &line[indent..];
            let marker = rest.starts_with(b"---") || rest.starts_with(b"...");
            if indent == 0 && marker && rest.get(3).is_none_or(|b| *b == b' ') {
                self.block.clear();
                start = 3;
            } else {
                while self.block.last().is_some_and(|i| *i > indent) {
                    self.block.pop();
                }
                if self.block.last().is_none_or(|i| *i < indent) {
                    self.block.push(indent);
                }
                start = indent;
            }
            if self.depth() > MAX_DEPTH {
                return false;
            }
        }
        self.tokens(line, start, indent)
    }

    fn tokens(&mut self, line: &[u8], start: usize, indent: usize) -> bool {
        // Where a node may begin: a quote there opens a quoted scalar, and in block context
        // a `[` there opens a flow collection (elsewhere it is part of a plain scalar).
        let mut node_start = true;
        let mut after_space = true;
        let mut i = start;
        while i < line.len() {
            let b = line[i];
            let next = line.get(i + 1).copied();
            i += 1;
            if let Some(q) = self.quote {
                match (q, b) {
                    (b'"', b'\\') => i += 1,
                    (b'\'', b'\'') if next == Some(b'\'') => i += 1,
                    _ if b == q => self.quote = None,
                    _ => {}
                }
                continue;
            }
            let space_or_end = next.is_none_or(|n| n == b' ' || n == b'\t');
            match b {
                b' ' | b'\t' => {
                    after_space = true;
                    continue;
                }
                b'#' if after_space => return true,
                b'"' | b'\'' if node_start => {
                    self.quote = Some(b);
                    node_start = false;
                }
                b'[' | b'{' if node_start || self.flow > 0 => {
                    self.flow += 1;
                    if self.depth() > MAX_DEPTH {
                        return false;
                    }
                    node_start = true;
                }
                b']' | b'}' if self.flow > 0 => {
                    self.flow -= 1;
                    node_start = false;
                }
                b',' if self.flow > 0 => node_start = true,
                b':' => {
                    let flow_next = self.flow > 0
                        && next.is_some_and(|n| matches!(n, b',' | b'[' | b']' | b'{' | b'}'));
                    node_start = space_or_end || flow_next;
                }
                b'-' | b'?' if node_start && space_or_end => {
                    if self.flow == 0 {
                        // `- - x`: each dash opens a level at the column after it.
                        let column = i + line[i..].iter().take_while(|b| **b == b' ').count();
                        self.block.push(column);
                        if self.depth() > MAX_DEPTH {
                            return false;
                        }
                    }
                }
                b'|' | b'>' if node_start && self.flow == 0 => {
                    self.block_scalar = Some(indent);
                    return true;
                }
                b'&' | b'!' if node_start => {
                    // An anchor or tag: the node it belongs to comes after it.
                    i += line[i..].iter().take_while(|b| **b != b' ').count();
                }
                _ => node_start = false,
            }
            after_space = false;
        }
        true
    }
}

/// The line (from 1) at which `text` nests deeper than [`MAX_DEPTH`], if it does. Linear in
/// the text's length.
pub(super) fn too_deep(text: &str) -> Option<usize> {
    let mut scan = Scan::default();
    for (index, line) in text.as_bytes().split(|b| *b == b'\n').enumerate() {
        let line = line.strip_suffix(b"\r").unwrap_or(line);
        if !scan.line(line) {
            return Some(index + 1);
        }
    }
    None
}

/// Whether `text` is refused for its depth (the reason, at its line, is then in `diags`).
pub(super) fn refused(path: &Path, text: &str, diags: &mut Diagnostics) -> bool {
    let Some(line) = too_deep(text) else {
        return false;
    };
    diags.error(
        Location::new(path, Some(line)),
        format!(
            "the YAML nests deeper than {MAX_DEPTH} levels here (a DS01 configuration needs 5 at most); look for an unclosed `[` or `{{` or indentation that keeps growing (refused before parsing: the YAML parser takes tens of seconds on such input)"
        ),
    );
    true
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn real_configurations_are_shallow() {
        for text in [
            include_str!("../../tests/data/production/resource-limits.yaml"),
            include_str!("../../tests/data/production/user-overrides.yaml"),
            include_str!("../../config/resource-limits.yaml"),
            "a: [1, {b: [2, 3]}, 'x[', \"y{\\\"\"]\nb: |\n  [[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[\nc: it's [not a list\n",
        ] {
            assert_eq!(too_deep(text), None, "{text}");
        }
    }

    #[test]
    fn deep_flow_and_block_nesting_is_found_at_its_line() {
        assert_eq!(too_deep(&"[".repeat(200_000)), Some(1));
        assert_eq!(
            too_deep(&format!("a:\n  b: {}", "{x: ".repeat(40))),
            Some(2)
        );
        let mut deep = String::new();
        for level in 0..40 {
            deep.push_str(&format!("{}k{level}:\n", " ".repeat(level)));
        }
        assert_eq!(too_deep(&deep), Some(MAX_DEPTH + 1));
        assert_eq!(too_deep(&format!("{}1", "- ".repeat(40))), Some(1));
        let ok = format!("{}{}", "[".repeat(MAX_DEPTH - 1), "]".repeat(MAX_DEPTH - 1));
        assert_eq!(too_deep(&format!("a: {ok}\n")), None);
    }
}
