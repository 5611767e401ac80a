//! One daemon per run directory: an exclusive lock on a file in it.

use super::*;

/// Holds an exclusive lock on `RUN_DIR/lock` for the daemon's lifetime.
pub(super) fn lock(run_dir: &Path) -> Result<fs::File, Failure> {
    let path = run_dir.join("lock");
    let file = fs::OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open(&path)
        .map_err(|e| runtime("opening", &path, e))?;
    if file.try_lock().is_err() {
        let pid = state::read(run_dir)
            .map(|s| s.pid.to_string())
            .unwrap_or_else(|_| "?".into());
        return Err(Failure::Runtime(format!(
            "another guard daemon is running with run dir {} (pid {pid})",
            run_dir.display()
        )));
    }
    Ok(file)
}
