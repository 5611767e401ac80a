//! One `tracing` setup for the daemon: text or JSON lines on stdout. The `log` records of
//! aya-log (kernel log lines) are bridged into `tracing` by tracing-subscriber's log support.

use std::io::IsTerminal as _;

use tracing_subscriber::EnvFilter;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, clap::ValueEnum)]
pub enum LogFormat {
    #[default]
    Text,
    Json,
}

/// Filter from `GUARD_LOG` (tracing's EnvFilter syntax), else `info`. Kernel records
/// (target `guard_ebpf`) always pass: their volume is chosen by `--kernel-log`.
pub fn init(format: LogFormat) {
    let filter = EnvFilter::try_from_env("GUARD_LOG")
        .unwrap_or_else(|_| EnvFilter::new("info"))
        .add_directive("guard_ebpf=trace".parse().expect("valid directive"));
    // Colours only on a terminal: log files and journald get plain text.
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_ansi(std::io::stdout().is_terminal())
        .with_writer(std::io::stdout);
    let result = match format {
        LogFormat::Text => builder.try_init(),
        LogFormat::Json => builder.json().flatten_event(true).try_init(),
    };
    if let Err(err) = result {
        eprintln!("guard: logging already initialised: {err}");
    }
}
