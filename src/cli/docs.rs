//! The man pages and shell completions, generated from the clap definition itself, so that
//! they cannot miss a subcommand or an option: `ds01-slices(8)`, one page per subcommand
//! (`ds01-slices-apply(8)`, `ds01-slices-hook-pre-create(8)`, ...), and bash, zsh and fish
//! completions. `ds01-slices-assets DIR` (src/bin) writes them for the package.

use std::fs;
use std::io;
use std::path::{Path, PathBuf};

use clap::CommandFactory;
use clap_complete::Shell;

use super::args::Cli;

/// The manual section: administration commands, as the tool runs as root.
const SECTION: &str = "8";

/// Every page, as (file name, roff text), the top page first.
pub fn man_pages() -> io::Result<Vec<(String, Vec<u8>)>> {
    let mut cmd = Cli::command();
    // Propagates the global options into every subcommand, so each page lists them.
    cmd.build();
    let mut pages = Vec::new();
    render(&cmd, "ds01-slices", "ds01-slices", &mut pages)?;
    Ok(pages)
}

/// The page of `cmd` (`name`, as the synopsis shows it: `invoked`), then its subcommands'.
fn render(
    cmd: &clap::Command,
    name: &str,
    invoked: &str,
    pages: &mut Vec<(String, Vec<u8>)>,
) -> io::Result<()> {
    let mut text = Vec::new();
    let page = cmd
        .clone()
        .name(name.to_owned())
        .bin_name(invoked.to_owned());
    clap_mangen::Man::new(page)
        .section(SECTION)
        .render(&mut text)?;
    pages.push((format!("{name}.{SECTION}"), text));
    for sub in documented(cmd) {
        let sub_name = sub.get_name();
        render(
            sub,
            &format!("{name}-{sub_name}"),
            &format!("{invoked} {sub_name}"),
            pages,
        )?;
    }
    Ok(())
}

/// The subcommands that get pages of their own: all but hidden ones and clap's `help`.
pub fn documented(cmd: &clap::Command) -> impl Iterator<Item = &clap::Command> {
    cmd.get_subcommands()
        .filter(|s| !s.is_hide_set() && s.get_name() != "help")
}

/// The completion scripts, as (shell, file name, text).
pub fn completions() -> Vec<(Shell, String, Vec<u8>)> {
    [Shell::Bash, Shell::Zsh, Shell::Fish]
        .into_iter()
        .map(|shell| {
            let mut cmd = Cli::command();
            let mut text = Vec::new();
            clap_complete::generate(shell, &mut cmd, "ds01-slices", &mut text);
            let file = match shell {
                Shell::Zsh => "_ds01-slices".to_owned(),
                Shell::Fish => "ds01-slices.fish".to_owned(),
                _ => "ds01-slices".to_owned(),
            };
            (shell, file, text)
        })
        .collect()
}

/// Writes `man/` and `completions/{bash,zsh,fish}/` under `out`; returns the files written.
pub fn write_assets(out: &Path) -> io::Result<Vec<PathBuf>> {
    let mut written = Vec::new();
    let man = out.join("man");
    fs::create_dir_all(&man)?;
    for (file, text) in man_pages()? {
        let path = man.join(file);
        crate::atomic::replace(&path, &text)?;
        written.push(path);
    }
    for (shell, file, text) in completions() {
        let dir = out.join("completions").join(shell.to_string());
        fs::create_dir_all(&dir)?;
        let path = dir.join(file);
        crate::atomic::replace(&path, &text)?;
        written.push(path);
    }
    Ok(written)
}
