//! Keeps man/umbra.1 in step with the clap definitions that `--help` is
//! made from: the page is generated here, in memory, and compared with the
//! committed file. After changing a command or a help text, regenerate it:
//!
//!     UMBRA_BLESS_MAN=1 cargo test -p umbra --bins man
//!
//! Test-only: the binary never renders its own man page.

use std::io::Write;
use std::path::Path;

use clap::CommandFactory;
use clap_mangen::Man;
use clap_mangen::roff::{Roff, bold, italic, roman};

use crate::cli::Cli;

const PAGE: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/man/umbra.1");

/// umbra(1): the top-level page, then one subsection per command with its
/// synopsis, description and options, then the hand-written sections.
fn render() -> std::io::Result<Vec<u8>> {
    let mut command = Cli::command();
    command.build();
    let man = Man::new(command.clone()).date("").manual("umbra manual");
    let mut page = Page::default();
    page.add(Man::render_title, &man)?;
    page.add(Man::render_name_section, &man)?;
    page.add(Man::render_synopsis_section, &man)?;
    page.add(Man::render_description_section, &man)?;
    page.add(Man::render_options_section, &man)?;
    page.roff(Roff::new().control("SH", ["COMMANDS"]))?;
    for sub in command.get_subcommands() {
        // The global options are described once, above.
        let sub = sub.clone().mut_args(|arg| {
            if arg.is_global_set() {
                arg.hide(true)
            } else {
                arg
            }
        });
        let man = Man::new(sub.clone());
        page.roff(Roff::new().control("SS", [sub.get_bin_name().unwrap_or(sub.get_name())]))?;
        page.add(Man::render_synopsis_section, &man)?;
        page.add(Man::render_description_section, &man)?;
        page.add(Man::render_options_section, &man)?;
    }
    page.roff(&extra_sections())?;
    Ok(page.text.into_bytes())
}

/// Roff text put together from `clap_mangen`'s sections: the string
/// definitions each section starts with are kept once, and a command's
/// `.SH` headings become paragraph breaks inside its `.SS`.
#[derive(Default)]
struct Page {
    text: String,
    in_commands: bool,
}

type Section = fn(&Man, &mut dyn Write) -> std::io::Result<()>;

impl Page {
    fn add(&mut self, section: Section, man: &Man) -> std::io::Result<()> {
        let mut roff = Vec::new();
        section(man, &mut roff)?;
        self.push(&String::from_utf8_lossy(&roff));
        Ok(())
    }

    fn roff(&mut self, roff: &Roff) -> std::io::Result<()> {
        let mut text = Vec::new();
        roff.to_writer(&mut text)?;
        self.push(&String::from_utf8_lossy(&text));
        Ok(())
    }

    fn push(&mut self, roff: &str) {
        for line in roff.lines() {
            let preamble = line.starts_with(".ie \\n(.g .ds Aq") || line.starts_with(".el .ds Aq");
            if preamble && self.text.contains(line) {
                continue;
            }
            if line == ".SH COMMANDS" {
                self.in_commands = true;
            } else if self.in_commands && line.starts_with(".SH ") {
                match line {
                    ".SH SYNOPSIS" => continue,
                    ".SH DESCRIPTION" | ".SH OPTIONS" => {
                        self.text.push_str(".PP\n");
                        continue;
                    }
                    _ => self.in_commands = false,
                }
            }
            self.text.push_str(line);
            self.text.push('\n');
        }
    }
}

fn extra_sections() -> Roff {
    let mut roff = Roff::new();
    roff.control("SH", ["OUTPUT"])
        .text([roman(
            "umbra up prints one line per mount, then the control socket, then the line ",
        ), bold("umbra: ready"), roman(", all on stdout. Logs go to stderr.")])
        .control("PP", [])
        .text([roman("With "), bold("--json"), roman(
            ", a client prints one JSON document on stdout. A set is an object with id, name, \
             created (RFC 3339, UTC), label (a string or null) and volumes (an array of volume names).",
        )])
        .control("SH", ["EXIT STATUS"])
        .text([roman(
            "0 on success. On an error umbra prints one line, umbra: <message>, on stderr and exits with 1; \
             a command line it cannot parse exits with 2.",
        )])
        .control("SH", ["ENVIRONMENT"])
        .control("TP", [])
        .text([bold("UMBRA_SOCKET")])
        .text([roman("The control socket, when --socket is not given.")])
        .control("TP", [])
        .text([bold("UMBRA_LOG")])
        .text([roman("The log filter, e.g. debug or umbra=debug,umbra_fs=trace. Default: info.")])
        .control("SH", ["FILES"])
        .control("TP", [])
        .text([italic("./.umbra/")])
        .text([roman(
            "The embedded default's state dir: the diff area (store/), the lock (lock, holding the \
             daemon's pid), the control socket (control.sock) and, with a [schedule], the time of \
             its last firing (schedule.stamp). A client told nothing else \
             looks for .umbra/control.sock here and then in each directory above, so that it \
             finds the daemon from inside data/ and snapshots/ too.",
        )])
        .control("SH", ["SEE ALSO"])
        .text([bold("umbra.toml"), roman("(5), "), bold("fusermount3"), roman("(1)")]);
    roff
}

#[test]
fn man_page_matches_the_command_line() {
    let rendered = render().expect("renders");
    if std::env::var_os("UMBRA_BLESS_MAN").is_some() {
        std::fs::write(PAGE, &rendered).expect("writes man/umbra.1");
        return;
    }
    let committed = std::fs::read(Path::new(PAGE)).unwrap_or_default();
    assert!(
        committed == rendered,
        "man/umbra.1 is out of date with the clap definitions; regenerate it with \
         UMBRA_BLESS_MAN=1 cargo test -p umbra --bins man"
    );
}
