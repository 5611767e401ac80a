use std::process::ExitCode;

use clap::Parser as _;
use guard::cli::{Cli, Command};

fn main() -> ExitCode {
    let cli = Cli::parse();
    if !matches!(cli.command, Command::Run(_)) {
        // A CLI writing into a closed pipe (`guard stats | head`) ends quietly, as Unix tools
        // do, instead of panicking on the failed write. The daemon keeps Rust's default.
        // SAFETY: setting a signal disposition before any thread starts.
        unsafe { libc::signal(libc::SIGPIPE, libc::SIG_DFL) };
    }
    guard::cli::dispatch(&cli)
}
