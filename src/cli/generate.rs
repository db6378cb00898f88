//! `tokenkeeper completions SHELL` and `tokenkeeper manpage`: a shell's completion script and
//! the man page, generated from the clap definitions the command parses with. Packages ship
//! the files under `packaging/`; `tests/packaging.rs` checks they are what this prints.

use std::io::Write;
use std::path::Path;

use clap_complete::Shell;

use super::{EXIT_OK, EXIT_OSERR};

/// Print `shell`'s completion script for `cmd` to stdout.
pub(crate) fn completions(mut cmd: clap::Command, shell: Shell) -> u8 {
    let mut out = Vec::new();
    clap_complete::generate(shell, &mut cmd, "tokenkeeper", &mut out);
    emit(&out)
}

/// Print the man page `tokenkeeper(1)` to stdout, or with `dir` write it and one page per
/// subcommand there: the commands and their options, from the same definitions `--help`
/// shows. The page names the release only, not the commit, so a package's pages stay the
/// same from one commit to the next.
pub(crate) fn manpage(cmd: clap::Command, dir: Option<&Path>) -> u8 {
    let cmd = cmd.version(env!("CARGO_PKG_VERSION"));
    if let Some(dir) = dir {
        return match clap_mangen::generate_to(cmd, dir) {
            Ok(()) => EXIT_OK,
            Err(e) => {
                say_err!(
                    "tokenkeeper: cannot write the man pages to {}: {e}",
                    dir.display()
                );
                EXIT_OSERR
            }
        };
    }
    let mut out = Vec::new();
    // Writing into memory cannot fail but for a bug in the renderer; say so rather than
    // print half a page.
    if let Err(e) = clap_mangen::Man::new(cmd).render(&mut out) {
        say_err!("tokenkeeper: cannot render the man page: {e}");
        return EXIT_OSERR;
    }
    emit(&out)
}

fn emit(bytes: &[u8]) -> u8 {
    let mut stdout = std::io::stdout().lock();
    match stdout.write_all(bytes).and_then(|()| stdout.flush()) {
        Ok(()) => EXIT_OK,
        // A closed pipe (`| head`) or a full disk: the caller sees a short file and this code.
        Err(e) => {
            say_err!("tokenkeeper: cannot write the output: {e}");
            EXIT_OSERR
        }
    }
}
