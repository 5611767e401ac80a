use std::process::ExitCode;

use clap::Parser as _;
use guard::cli::{Cli, Command, Failure};

fn main() -> ExitCode {
    let cli = Cli::parse();
    if !matches!(cli.command, Command::Run(_)) {
        // A CLI writing into a closed pipe (`guard stats | head`) ends quietly, as Unix tools
        // do, instead of panicking on the failed write. The daemon keeps Rust's default.
        // SAFETY: setting a signal disposition before any thread starts.
        unsafe { libc::signal(libc::SIGPIPE, libc::SIG_DFL) };
    }
    let result = match &cli.command {
        Command::Run(args) => guard::daemon::run(&cli.pin_dir, &cli.run_dir, args),
        Command::Check { file } => guard::commands::check(file),
        Command::Stats {
            json, watch: false, ..
        } => guard::commands::stats(&cli.run_dir, *json),
        Command::Stats {
            json,
            watch: true,
            interval,
            count,
        } => guard::commands::stats_watch(&cli.run_dir, *json, *interval, *count),
        Command::Status { json } => guard::commands::status(&cli.run_dir, *json),
        Command::Apply {
            file,
            confirm_within,
        } => guard::commands::apply(&cli.run_dir, file, *confirm_within),
        Command::Confirm => guard::commands::confirm(&cli.run_dir),
        Command::Events { follow, json: _ } => guard::commands::events(&cli.run_dir, *follow),
        Command::Audit(args) => guard::commands::audit(&cli.run_dir, args),
        Command::Doctor {
            json,
            policy,
            netns,
        } => guard::commands::doctor(
            &cli.pin_dir,
            &cli.run_dir,
            *json,
            policy.as_deref(),
            netns.as_deref(),
        ),
        Command::Unload => guard::commands::unload(&cli.pin_dir, &cli.run_dir),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(Failure::Invalid(lines)) => {
            eprintln!("{lines}");
            ExitCode::from(1)
        }
        Err(err @ Failure::Runtime(_)) => {
            eprintln!("guard: error: {err}");
            ExitCode::from(err.exit_code())
        }
    }
}
