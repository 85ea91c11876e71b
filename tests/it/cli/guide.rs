//! The README and the guide under docs/ hold together: every relative link leads to a file
//! that exists (and to a heading there, when it names one), and every subcommand of the
//! command line is in the guide, as `ds01-slices <command>`.

use std::fs;
use std::path::{Path, PathBuf};

use clap::CommandFactory;
use ds01_slices::cli::args::Cli;
use ds01_slices::cli::docs;

use crate::support::MANIFEST_DIR;

/// README.md and every docs/*.md, as (path from the repository root, text).
fn pages() -> Vec<(PathBuf, String)> {
    let root = Path::new(MANIFEST_DIR);
    let mut paths = vec![PathBuf::from("README.md")];
    for entry in fs::read_dir(root.join("docs")).unwrap().flatten() {
        let path = entry.path();
        if path.extension().is_some_and(|e| e == "md") {
            paths.push(path.strip_prefix(root).unwrap().to_path_buf());
        }
    }
    paths.sort();
    paths
        .into_iter()
        .map(|p| {
            let text = fs::read_to_string(root.join(&p)).unwrap();
            (p, text)
        })
        .collect()
}

/// The text outside fenced code blocks and inline code, where a `](` is a link.
fn prose(text: &str) -> String {
    let mut fenced = false;
    let mut out = String::new();
    for line in text.lines() {
        if line.trim_start().starts_with("```") {
            fenced = !fenced;
            continue;
        }
        if !fenced {
            let outside: Vec<&str> = line.split('`').step_by(2).collect();
            out.push_str(&outside.join(" "));
        }
        out.push('\n');
    }
    out
}

/// The targets of the inline links `[text](target)` of a page.
fn links(text: &str) -> Vec<String> {
    let prose = prose(text);
    prose
        .match_indices("](")
        .filter_map(|(at, _)| {
            let rest = &prose[at + 2..];
            let end = rest.find(')')?;
            // `[text](target "title")`: the target only.
            Some(rest[..end].split_whitespace().next()?.to_owned())
        })
        .collect()
}

/// GitHub's anchor of a heading: lower case, spaces to dashes, other punctuation dropped.
fn anchor(heading: &str) -> String {
    heading
        .trim()
        .to_lowercase()
        .chars()
        .filter_map(|c| match c {
            ' ' => Some('-'),
            c if c.is_alphanumeric() || c == '-' || c == '_' => Some(c),
            _ => None,
        })
        .collect()
}

fn anchors(text: &str) -> Vec<String> {
    let mut fenced = false;
    let mut out = Vec::new();
    for line in text.lines() {
        if line.trim_start().starts_with("```") {
            fenced = !fenced;
        } else if !fenced && line.starts_with('#') {
            out.push(anchor(line.trim_start_matches('#')));
        }
    }
    out
}

#[test]
fn every_relative_link_leads_somewhere() {
    let root = Path::new(MANIFEST_DIR);
    let pages = pages();
    assert!(pages.len() >= 3, "{pages:?}");
    let mut broken = Vec::new();
    let mut checked = 0;
    for (page, text) in &pages {
        for target in links(text) {
            if target.contains("://") || target.starts_with("mailto:") {
                continue;
            }
            checked += 1;
            let (file, fragment) = target.split_once('#').unwrap_or((&target, ""));
            let file = if file.is_empty() {
                root.join(page)
            } else {
                root.join(page.parent().unwrap()).join(file)
            };
            if !file.exists() {
                broken.push(format!("{}: {target}: no such file", page.display()));
            } else if !fragment.is_empty() {
                let text = fs::read_to_string(&file).unwrap_or_default();
                if !anchors(&text).iter().any(|a| a == fragment) {
                    broken.push(format!("{}: {target}: no such heading", page.display()));
                }
            }
        }
    }
    assert!(
        checked >= 10,
        "only {checked} relative links: is the parser blind?"
    );
    assert!(broken.is_empty(), "broken links:\n{}", broken.join("\n"));
}

#[test]
fn links_and_anchors_are_read_as_github_does() {
    let text =
        "See [a](a.md), [b](docs/b.md#exit-codes \"t\") and `[not](x.md)`.\n```\n[no](y.md)\n```\n";
    assert_eq!(links(text), ["a.md", "docs/b.md#exit-codes"]);
    assert_eq!(anchor(" Exit codes"), "exit-codes");
    assert_eq!(
        anchor("`apply`: set the limits (D-Bus)"),
        "apply-set-the-limits-d-bus"
    );
}

/// Every documented command as it is typed: `apply`, `hook pre-create`, ...
fn commands(cmd: &clap::Command, prefix: &str, out: &mut Vec<String>) {
    for sub in docs::documented(cmd) {
        let name = format!("{prefix}{}", sub.get_name());
        commands(sub, &format!("{name} "), out);
        out.push(name);
    }
}

#[test]
fn every_subcommand_is_in_the_guide() {
    let mut all = Vec::new();
    commands(&Cli::command(), "", &mut all);
    assert!(all.len() >= 13, "{all:?}");
    let guide: String = pages()
        .into_iter()
        .filter(|(p, _)| p.starts_with("docs"))
        .map(|(_, text)| text)
        .collect();
    let missing: Vec<&String> = all
        .iter()
        .filter(|c| !guide.contains(&format!("ds01-slices {c}")))
        .collect();
    assert!(
        missing.is_empty(),
        "not in the guide (docs/*.md) as `ds01-slices <command>`: {missing:?}"
    );
}
