//! One `tracing` setup for the daemon: text or JSON lines on stdout and, optionally, JSON
//! lines in rotated files with retention (tracing-appender). The `log` records of aya-log
//! (kernel log lines) are bridged into `tracing` by tracing-subscriber's log support.

use std::{
    io::{self, IsTerminal as _, Write},
    path::PathBuf,
    sync::{
        Mutex,
        atomic::{AtomicBool, AtomicU64, Ordering},
    },
};

use tracing_appender::rolling::{RollingFileAppender, Rotation};
use tracing_subscriber::{
    EnvFilter, Layer as _, fmt::MakeWriter, layer::SubscriberExt as _, util::SubscriberInitExt as _,
};

/// Failed writes to the log files since the daemon started (`guard_log_write_errors_total`).
pub static LOG_WRITE_ERRORS: AtomicU64 = AtomicU64::new(0);
/// True from a failed write to the next successful one: `/health` is unhealthy meanwhile.
static FAILING: AtomicBool = AtomicBool::new(false);
static LAST_ERROR: Mutex<String> = Mutex::new(String::new());

/// Why the log files are not being written, while they are not (a full disk, a removed
/// directory); `None` while they are.
pub fn file_failure() -> Option<String> {
    FAILING
        .load(Ordering::Relaxed)
        .then(|| LAST_ERROR.lock().map(|e| e.clone()).unwrap_or_default())
}

/// The log file appender with its write errors watched: a failed write (a full disk) is
/// counted, said once on stderr, and makes `/health` unhealthy until writes succeed again;
/// the first successful write after a failure starts on a new line, so a line cut short by
/// the failure does not swallow the next record.
struct Watched(RollingFileAppender);

struct WatchedWriter<W>(W);

impl<'a> MakeWriter<'a> for Watched {
    type Writer = WatchedWriter<<RollingFileAppender as MakeWriter<'a>>::Writer>;
    fn make_writer(&'a self) -> Self::Writer {
        WatchedWriter(self.0.make_writer())
    }
}

impl<W: Write> Write for WatchedWriter<W> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        if FAILING.load(Ordering::Relaxed) {
            // Recovering: end the cut line first. If that fails, it is still failing.
            if let Err(e) = self.0.write_all(b"\n") {
                LOG_WRITE_ERRORS.fetch_add(1, Ordering::Relaxed);
                return Err(e);
            }
            FAILING.store(false, Ordering::Relaxed);
            eprintln!("guard: the log files are written again");
        }
        let written = self.0.write(buf);
        if let Err(e) = &written {
            LOG_WRITE_ERRORS.fetch_add(1, Ordering::Relaxed);
            if !FAILING.swap(true, Ordering::Relaxed) {
                eprintln!(
                    "guard: writing the log file failed: {e}; records go to stdout only until it recovers"
                );
            }
            if let Ok(mut last) = LAST_ERROR.lock() {
                *last = e.to_string();
            }
        }
        written
    }

    fn flush(&mut self) -> io::Result<()> {
        self.0.flush()
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum LogFormat {
    #[default]
    Text,
    Json,
}

impl LogFormat {
    /// Every format by its name on the command line.
    pub const NAMES: [(&'static str, Self); 2] = [("text", Self::Text), ("json", Self::Json)];
}

/// When the log file in `--log-dir` is rotated.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum LogRotation {
    Minutely,
    Hourly,
    #[default]
    Daily,
    Never,
}

impl LogRotation {
    /// Every rotation by its name on the command line.
    pub const NAMES: [(&'static str, Self); 4] = [
        ("minutely", Self::Minutely),
        ("hourly", Self::Hourly),
        ("daily", Self::Daily),
        ("never", Self::Never),
    ];
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
/// True when stdout is the journal's stream (systemd sets JOURNAL_STREAM to its
/// `device:inode`).
fn under_journald() -> bool {
    use std::os::unix::fs::MetadataExt as _;
    let Ok(stream) = std::env::var("JOURNAL_STREAM") else {
        return false;
    };
    let Some((dev, ino)) = stream.split_once(':') else {
        return false;
    };
    let Ok(meta) = std::fs::metadata("/proc/self/fd/1") else {
        return false;
    };
    dev.parse() == Ok(meta.dev()) && ino.parse() == Ok(meta.ino())
}

pub fn init(format: LogFormat, files: Option<&LogFiles>) -> Result<(), String> {
    let filter = EnvFilter::try_from_env("GUARD_LOG")
        .unwrap_or_else(|_| EnvFilter::new("info"))
        .add_directive("guard_ebpf=trace".parse().expect("valid directive"));
    // Colours only on a terminal: log files and journald get plain text.
    let stdout = tracing_subscriber::fmt::layer()
        .with_ansi(std::io::stdout().is_terminal())
        .with_writer(std::io::stdout);
    // Under systemd with stdout connected to the journal, the journal gets the records with
    // their fields as journal fields (`journalctl -u guard RULE=web`), not as text.
    let journal = under_journald()
        .then(|| tracing_journald::layer().ok())
        .flatten()
        // Fields by their own names (RULE=, KIND=), not F_RULE=.
        .map(|layer| layer.with_field_prefix(None));
    let stdout = match (format, journal) {
        (_, Some(journal)) => journal.boxed(),
        (LogFormat::Text, None) => stdout.boxed(),
        (LogFormat::Json, None) => stdout.json().flatten_event(true).boxed(),
    };
    let file = match files {
        Some(files) => Some(
            tracing_subscriber::fmt::layer()
                .json()
                .flatten_event(true)
                .with_ansi(false)
                .with_writer(Watched(appender(files)?))
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
