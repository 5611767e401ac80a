//! `permissions`: the policy file, the run directory and control socket, and the pins.

use super::*;

/// Judges the mode and owner of a file guard relies on. `secret`: only root may read it
/// (control socket, pins); otherwise only root may write it.
pub fn check_mode(what: &str, path: &Path, mode: u32, uid: u32, secret: bool) -> Vec<Finding> {
    let mut out = Vec::new();
    let shown = format!(
        "{what} {} (mode {:04o}, owner uid {uid})",
        path.display(),
        mode & 0o7777
    );
    if secret && mode & 0o077 != 0 {
        out.push(finding(
            "permissions",
            Severity::Error,
            format!("{shown} is open to other users"),
            format!("chmod go-rwx {}", path.display()),
        ));
    } else if !secret && mode & 0o002 != 0 {
        out.push(finding(
            "permissions",
            Severity::Error,
            format!("{shown} is writable by every user: anyone can change what guard enforces"),
            format!("chmod o-w {}", path.display()),
        ));
    } else if !secret && mode & 0o020 != 0 {
        out.push(finding(
            "permissions",
            Severity::Warning,
            format!("{shown} is writable by its group"),
            format!("chmod g-w {}", path.display()),
        ));
    } else if uid != 0 {
        out.push(finding(
            "permissions",
            Severity::Warning,
            format!("{shown} is not owned by root"),
            format!("chown root {}", path.display()),
        ));
    } else {
        out.push(finding("permissions", Severity::Ok, shown, ""));
    }
    out
}

pub(super) fn check_path(what: &str, path: &Path, secret: bool) -> Vec<Finding> {
    match fs::metadata(path) {
        Ok(m) => check_mode(what, path, m.permissions().mode(), m.uid(), secret),
        Err(e) => vec![finding(
            "permissions",
            Severity::Info,
            format!("{what} {}: {e}", path.display()),
            "",
        )],
    }
}

/// Pins under `dir` (to `depth` levels) other users can open, and directories they can
/// write (add or remove pins in), as `path (mode)`.
pub(super) fn open_pins(dir: &Path, depth: u32) -> Vec<String> {
    let mut open = Vec::new();
    let Ok(entries) = fs::read_dir(dir) else {
        return open;
    };
    for e in entries.flatten() {
        let Ok(m) = e.metadata() else { continue };
        let mode = m.permissions().mode();
        let too_open = if m.is_dir() {
            mode & 0o022 != 0
        } else {
            mode & 0o077 != 0
        };
        if too_open {
            open.push(format!("{} ({:04o})", e.path().display(), mode & 0o7777));
        }
        if m.is_dir() && depth > 1 {
            open.extend(open_pins(&e.path(), depth - 1));
        }
    }
    open
}
