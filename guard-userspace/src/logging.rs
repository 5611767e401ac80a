//! One `tracing` setup for the daemon: text or JSON lines on stdout and, optionally, JSON
//! lines in rotated files with retention (tracing-appender). The `log` records of aya-log
//! (kernel log lines) are bridged into `tracing` by tracing-subscriber's log support.

use std::{io::IsTerminal as _, path::PathBuf};

use tracing_appender::rolling::{RollingFileAppender, Rotation};
use tracing_subscriber::{
    EnvFilter, Layer as _, layer::SubscriberExt as _, util::SubscriberInitExt as _,
};

#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, clap::ValueEnum)]
pub enum LogFormat {
    #[default]
    Text,
    Json,
}

/// When the log file in `--log-dir` is rotated.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, clap::ValueEnum)]
pub enum LogRotation {
    Minutely,
    Hourly,
    #[default]
    Daily,
    Never,
}

/// Log files: where, how often a new one starts, how many are kept.
#[derive(Debug, Clone)]
pub struct LogFiles {
    pub dir: PathBuf,
    pub rotation: LogRotation,
    pub keep: usize,
}

/// File names are `PREFIX.DATE.SUFFIX`; retention deletes only files with this prefix and
/// suffix.
pub const LOG_FILE_PREFIX: &str = "guard";
pub const LOG_FILE_SUFFIX: &str = "log";

fn appender(files: &LogFiles) -> Result<RollingFileAppender, String> {
    std::fs::create_dir_all(&files.dir)
        .map_err(|e| format!("creating the log directory {}: {e}", files.dir.display()))?;
    RollingFileAppender::builder()
        .rotation(match files.rotation {
            LogRotation::Minutely => Rotation::MINUTELY,
            LogRotation::Hourly => Rotation::HOURLY,
            LogRotation::Daily => Rotation::DAILY,
            LogRotation::Never => Rotation::NEVER,
        })
        .filename_prefix(LOG_FILE_PREFIX)
        .filename_suffix(LOG_FILE_SUFFIX)
        .max_log_files(files.keep)
        .build(&files.dir)
        .map_err(|e| format!("opening a log file in {}: {e}", files.dir.display()))
}

/// Filter from `GUARD_LOG` (tracing's EnvFilter syntax), else `info`. Kernel records
/// (target `guard_ebpf`) always pass: their volume is chosen by `--kernel-log`.
pub fn init(format: LogFormat, files: Option<&LogFiles>) -> Result<(), String> {
    let filter = EnvFilter::try_from_env("GUARD_LOG")
        .unwrap_or_else(|_| EnvFilter::new("info"))
        .add_directive("guard_ebpf=trace".parse().expect("valid directive"));
    // Colours only on a terminal: log files and journald get plain text.
    let stdout = tracing_subscriber::fmt::layer()
        .with_ansi(std::io::stdout().is_terminal())
        .with_writer(std::io::stdout);
    let stdout = match format {
        LogFormat::Text => stdout.boxed(),
        LogFormat::Json => stdout.json().flatten_event(true).boxed(),
    };
    let file = match files {
        Some(files) => Some(
            tracing_subscriber::fmt::layer()
                .json()
                .flatten_event(true)
                .with_ansi(false)
                .with_writer(appender(files)?)
                .boxed(),
        ),
        None => None,
    };
    if let Err(err) = tracing_subscriber::registry()
        .with(filter)
        .with(stdout)
        .with(file)
        .try_init()
    {
        eprintln!("guard: logging already initialised: {err}");
    }
    Ok(())
}
