//! `vhdsync completions SHELL` and `vhdsync man`: shell completion scripts and roff manual
//! pages, generated from the clap definitions in [`super::args`] so they never drift from the
//! parser. Both are rendered into memory first: the generators cannot fail there, and a
//! write error (a closed pipe, a full disk) becomes an error message instead of a panic.

use std::io::Write;
use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Args, CommandFactory};
use clap_complete::Shell;
use clap_mangen::Man;
use clap_mangen::roff::{Roff, bold, roman};

use super::CliError;
use super::args::Cli;
use crate::fsio::atomic;
use crate::xapi::connect::{SOURCE_PASSWORD_ENV, TARGET_PASSWORD_ENV};

#[derive(Debug, Args)]
pub struct CompletionsArgs {
    /// The shell to complete for; write the script where the shell loads completions from,
    /// e.g. bash: /usr/share/bash-completion/completions/vhdsync.
    #[arg(value_enum)]
    pub shell: Shell,
}

#[derive(Debug, Args)]
pub struct ManArgs {
    /// Write one page per command and subcommand into DIR (vhdsync.1, vhdsync-replicate.1,
    /// vhdsync-lab-init.1, ...; DIR is created if missing) and list them, instead of writing
    /// vhdsync.1 to stdout.
    #[arg(long, value_name = "DIR")]
    pub out: Option<PathBuf>,
}

/// The program name the scripts complete and the pages are titled with.
const BIN_NAME: &str = "vhdsync";

/// The exit statuses every command shares (see [`super::run`]).
const EXIT_STATUS: [(&str, &str); 4] = [
    ("0", "Success."),
    (
        "1",
        "The work failed, or check found problems, or status found a replica older than --max-age.",
    ),
    (
        "2",
        "Usage or input error: a bad argument, job file, manifest or VHD file, or an unsafe state directory.",
    ),
    ("3", "Another run holds the lock of a VM this run needs."),
];

pub fn completions(args: &CompletionsArgs) -> Result<ExitCode, CliError> {
    let mut script = Vec::new();
    clap_complete::generate(args.shell, &mut command(), BIN_NAME, &mut script);
    write_stdout(&script)
}

pub fn man(args: &ManArgs) -> Result<ExitCode, CliError> {
    let command = command();
    match &args.out {
        None => write_stdout(&top_page(command)?),
        Some(dir) => {
            std::fs::create_dir_all(dir)
                .map_err(|e| CliError::Failed(format!("cannot create {}: {e}", dir.display())))?;
            let mut pages = Vec::new();
            collect_pages(command, true, &mut pages)?;
            let mut listing = String::new();
            for (name, roff) in pages {
                let path = dir.join(name);
                atomic::write(&path, &roff).map_err(|e| CliError::Failed(e.to_string()))?;
                listing.push_str(&format!("{}\n", path.display()));
            }
            write_stdout(listing.as_bytes())
        }
    }
}

/// The whole command tree, built (subcommands know their display names, e.g.
/// `vhdsync-lab-init`), without clap's implicit `help` subcommand, which has no page.
fn command() -> clap::Command {
    let mut command = Cli::command()
        .bin_name(BIN_NAME)
        .disable_help_subcommand(true);
    command.build();
    command
}

/// `command`'s page and its visible subcommands' pages, recursively, as (file name, roff).
fn collect_pages(
    command: clap::Command,
    top: bool,
    pages: &mut Vec<(String, Vec<u8>)>,
) -> Result<(), CliError> {
    for sub in command.get_subcommands().filter(|s| !s.is_hide_set()) {
        collect_pages(sub.clone(), false, pages)?;
    }
    let name = Man::new(command.clone()).get_filename();
    let roff = if top {
        top_page(command)?
    } else {
        let mut roff = Vec::new();
        Man::new(command).render(&mut roff).map_err(render_error)?;
        roff
    };
    pages.push((name, roff));
    Ok(())
}

/// vhdsync(1): clap_mangen's sections, with EXIT STATUS and ENVIRONMENT where man-pages(7)
/// places them (after the commands, before the version).
fn top_page(command: clap::Command) -> Result<Vec<u8>, CliError> {
    let has_extra = command.get_after_help().is_some() || command.get_after_long_help().is_some();
    let man = Man::new(command);
    let mut roff = Vec::new();
    man.render_title(&mut roff).map_err(render_error)?;
    man.render_name_section(&mut roff).map_err(render_error)?;
    man.render_synopsis_section(&mut roff)
        .map_err(render_error)?;
    man.render_description_section(&mut roff)
        .map_err(render_error)?;
    man.render_options_section(&mut roff)
        .map_err(render_error)?;
    man.render_subcommands_section(&mut roff)
        .map_err(render_error)?;
    if has_extra {
        man.render_extra_section(&mut roff).map_err(render_error)?;
    }
    shared_sections()
        .to_writer(&mut roff)
        .map_err(render_error)?;
    man.render_version_section(&mut roff)
        .map_err(render_error)?;
    Ok(roff)
}

/// What no single argument's help says: the exit statuses and the environment variables.
fn shared_sections() -> Roff {
    let mut roff = Roff::new();
    roff.control("SH", ["EXIT STATUS"]);
    for (code, meaning) in EXIT_STATUS {
        roff.control("TP", [])
            .text([bold(code)])
            .text([roman(meaning)]);
    }
    roff.control("SH", ["ENVIRONMENT"]);
    let variables = [
        (
            "VHDSYNC_LOG",
            "The log filter (e.g. debug, or vhdsync=trace); overrides -v.".to_owned(),
        ),
        (
            SOURCE_PASSWORD_ENV,
            "The source host's password when no password file is given.".to_owned(),
        ),
        (
            TARGET_PASSWORD_ENV,
            "The target host's password when no password file is given.".to_owned(),
        ),
        (
            "XDG_STATE_HOME, HOME",
            "Place the default state directory (lock files) of a job without state_dir: \
             $XDG_STATE_HOME/vhdsync, else $HOME/.local/state/vhdsync."
                .to_owned(),
        ),
    ];
    for (name, meaning) in variables {
        roff.control("TP", [])
            .text([bold(name)])
            .text([roman(meaning)]);
    }
    roff
}

fn render_error(e: std::io::Error) -> CliError {
    CliError::Failed(format!("rendering the manual page: {e}"))
}

fn write_stdout(bytes: &[u8]) -> Result<ExitCode, CliError> {
    let mut out = std::io::stdout().lock();
    out.write_all(bytes)
        .and_then(|()| out.flush())
        .map_err(|e| CliError::Failed(format!("stdout: {e}")))?;
    Ok(ExitCode::SUCCESS)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn page_names() -> Vec<String> {
        let mut pages = Vec::new();
        collect_pages(command(), true, &mut pages).unwrap();
        pages.into_iter().map(|(name, _)| name).collect()
    }

    #[test]
    fn every_command_and_nested_subcommand_gets_a_page() {
        let names = page_names();
        for expected in [
            "vhdsync.1",
            "vhdsync-replicate.1",
            "vhdsync-lab.1",
            "vhdsync-lab-init.1",
            "vhdsync-lab-fault.1",
            "vhdsync-completions.1",
            "vhdsync-man.1",
        ] {
            assert!(
                names.iter().any(|n| n == expected),
                "{expected} in {names:?}"
            );
        }
        assert!(!names.iter().any(|n| n.contains("help")), "{names:?}");
        let visible = command().get_subcommands().count();
        let lab = command()
            .find_subcommand("lab")
            .map(|lab| lab.get_subcommands().count())
            .unwrap();
        assert_eq!(names.len(), 1 + visible + lab, "{names:?}");
    }

    #[test]
    fn the_top_page_has_the_shared_sections_in_order() {
        let page = String::from_utf8(top_page(command()).unwrap()).unwrap();
        let at = |heading: &str| {
            page.find(heading)
                .unwrap_or_else(|| panic!("{heading} missing:\n{page}"))
        };
        assert!(at(".SH SUBCOMMANDS") < at(".SH \"EXIT STATUS\""));
        assert!(at(".SH \"EXIT STATUS\"") < at(".SH ENVIRONMENT"));
        assert!(at(".SH ENVIRONMENT") < at(".SH VERSION"));
        assert!(page.contains(SOURCE_PASSWORD_ENV), "{page}");
        assert!(page.contains("vhdsync\\-replicate(1)"), "{page}");
    }
}
