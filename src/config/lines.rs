//! Lines of keys in block-style YAML, found by indentation: serde_yaml's values carry no
//! positions, and a problem found after parsing must still name its line.

use std::collections::HashMap;

/// Flow-style documents fall back to the nearest enclosing key found.
pub(super) struct LineIndex<'a> {
    /// Indentation and content of each significant line (comments and blanks are `None`),
    /// computed once: every key lookup walks them.
    lines: Vec<Option<(usize, &'a str)>>,
}

impl<'a> LineIndex<'a> {
    pub(super) fn new(text: &'a str) -> Self {
        let lines = text
            .lines()
            .map(|l| {
                let t = l.trim_start();
                let significant = !t.is_empty() && !t.starts_with('#') && !t.starts_with("---");
                significant.then_some((l.len() - t.len(), t))
            })
            .collect();
        LineIndex { lines }
    }

    /// Every key directly under `path` (the top level for an empty path) with its line, in
    /// one pass: for mappings with many entries, where one `find` per entry would be
    /// quadratic.
    pub(super) fn child_lines(&self, path: &[&str]) -> HashMap<String, usize> {
        let (start, end, parent_indent) = match path.is_empty() {
            true => (0, self.lines.len(), None),
            false => {
                let Some(line) = self.find(path) else {
                    return HashMap::new();
                };
                let indent = self.lines[line - 1].map(|(i, _)| i).unwrap_or(0);
                let end = (line..self.lines.len())
                    .find(|&j| self.lines[j].is_some_and(|(i, _)| i <= indent))
                    .unwrap_or(self.lines.len());
                (line, end, Some(indent))
            }
        };
        let Some(child_indent) = self.lines[start..end]
            .iter()
            .flatten()
            .find(|(indent, _)| parent_indent.is_none_or(|p| *indent > p))
            .map(|(indent, _)| *indent)
        else {
            return HashMap::new();
        };
        let mut out = HashMap::new();
        for (i, line) in self.lines.iter().enumerate().take(end).skip(start) {
            let Some((indent, content)) = line else {
                continue;
            };
            if *indent != child_indent {
                continue;
            }
            let Some((key, _)) = content.split_once(':') else {
                continue;
            };
            let key = key.trim().trim_matches('"').trim_matches('\'');
            out.entry(key.to_owned()).or_insert(i + 1);
        }
        out
    }

    pub(super) fn find(&self, path: &[&str]) -> Option<usize> {
        let (mut start, mut end) = (0, self.lines.len());
        let mut parent_indent: Option<usize> = None;
        let mut found = None;
        for key in path {
            let child_indent = self.lines[start..end]
                .iter()
                .flatten()
                .find(|(indent, _)| parent_indent.is_none_or(|p| *indent > p))
                .map(|(indent, _)| *indent)?;
            let hit = (start..end).find(|&i| {
                self.lines[i].is_some_and(|(indent, content)| {
                    indent == child_indent && key_matches(content, key)
                })
            });
            let Some(i) = hit else { return found };
            found = Some(i + 1);
            let block_end = (i + 1..end)
                .find(|&j| self.lines[j].is_some_and(|(indent, _)| indent <= child_indent))
                .unwrap_or(end);
            start = i + 1;
            end = block_end;
            parent_indent = Some(child_indent);
        }
        found
    }
}

fn key_matches(content: &str, key: &str) -> bool {
    // Runs for every line of every lookup: no allocation here.
    let quoted = |q: char| {
        content
            .strip_prefix(q)
            .and_then(|c| c.strip_prefix(key))
            .and_then(|c| c.strip_prefix(q))
    };
    let rest = content
        .strip_prefix(key)
        .or_else(|| quoted('"'))
        .or_else(|| quoted('\''));
    rest.is_some_and(|r| {
        let r = r.trim_start();
        r.starts_with(':') && (r.len() == 1 || r[1..].starts_with(char::is_whitespace))
    })
}
