//! The man pages and completions come from the clap definition: every subcommand has its
//! page, every option (global ones included) is on the page of each command that takes it,
//! and every subcommand completes in bash, zsh and fish.

use clap::CommandFactory;
use ds01_slices::cli::args::Cli;
use ds01_slices::cli::docs;

use crate::support::Scratch;

/// Every documented command with the name of its page: `ds01-slices`, `ds01-slices-apply`,
/// `ds01-slices-hook-pre-create`, ...
fn commands(cmd: &clap::Command, name: &str, out: &mut Vec<(String, clap::Command)>) {
    out.push((name.to_owned(), cmd.clone()));
    for sub in docs::documented(cmd) {
        commands(sub, &format!("{name}-{}", sub.get_name()), out);
    }
}

#[test]
fn every_command_and_option_is_in_the_man_pages() {
    let mut cli = Cli::command();
    cli.build();
    let mut all = Vec::new();
    commands(&cli, "ds01-slices", &mut all);
    assert!(all.len() >= 13, "{}", all.len());
    let pages = docs::man_pages().unwrap();
    let mut missing = Vec::new();
    for (name, cmd) in &all {
        let file = format!("{name}.8");
        let Some((_, text)) = pages.iter().find(|(f, _)| *f == file) else {
            missing.push(format!("no page {file}"));
            continue;
        };
        let text = String::from_utf8_lossy(text);
        for arg in cmd.get_arguments().filter(|a| !a.is_hide_set()) {
            if let Some(long) = arg.get_long() {
                // roff writes a minus as `\-`.
                if !text.contains(&format!("\\-\\-{}", long.replace('-', "\\-"))) {
                    missing.push(format!("{file}: --{long}"));
                }
            }
        }
        for sub in docs::documented(cmd) {
            if !text.contains(&sub.get_name().replace('-', "\\-")) {
                missing.push(format!("{file}: subcommand {}", sub.get_name()));
            }
        }
    }
    assert!(
        missing.is_empty(),
        "missing from the man pages:\n{}",
        missing.join("\n")
    );
    let top = String::from_utf8_lossy(&pages[0].1).into_owned();
    assert!(
        top.starts_with(".ie") || top.contains(".TH ds01-slices 8"),
        "{top}"
    );
}

#[test]
fn every_subcommand_completes_in_every_shell() {
    let cli = Cli::command();
    let names: Vec<&str> = docs::documented(&cli).map(|s| s.get_name()).collect();
    for (shell, file, text) in docs::completions() {
        let text = String::from_utf8_lossy(&text);
        for n in &names {
            assert!(text.contains(n), "{shell} ({file}) does not complete {n}");
        }
        assert!(text.contains("state-dir"), "{shell}: no global option");
    }
}

#[test]
fn the_assets_are_written_where_the_package_takes_them() {
    let dir = Scratch::new("assets");
    let files = docs::write_assets(dir.path()).unwrap();
    for rel in [
        "man/ds01-slices.8",
        "man/ds01-slices-status.8",
        "man/ds01-slices-hook-pre-create.8",
        "completions/bash/ds01-slices",
        "completions/zsh/_ds01-slices",
        "completions/fish/ds01-slices.fish",
    ] {
        assert!(
            files.contains(&dir.join(rel)),
            "{rel} not written: {files:?}"
        );
        assert!(
            dir.join(rel).metadata().unwrap().len() > 100,
            "{rel} is empty"
        );
    }
}
