//! Watching the policy file (inotify).
//!
//! The watch is on the file's directory, and any change in it is a reason to read the file
//! again: the daemon applies it only when its text differs from the running policy's. Names
//! are not matched, because the file can change without an event naming it:
//! - an editor writes a new file and renames it over the old one;
//! - kubelet's atomic writer (a ConfigMap mounted as a directory) leaves `policy.toml` as a
//!   symlink to `..data/policy.toml` and renames a new `..data` symlink over the old one;
//! - a file is deleted and created again.
//!
//! When the directory is itself a symlink (`/etc/guard -> /srv/guard-v2`), it can be
//! switched to another directory: the parent's events for that name move the watch to the
//! new target.

use futures_util::FutureExt as _;

use super::*;

/// What to watch: the policy's directory (followed through symlinks), and that directory's
/// own name in its parent.
pub(super) struct PolicyWatch {
    inotify: inotify::Inotify,
    dir: PathBuf,
    dir_name: Option<OsString>,
    dir_watch: Option<inotify::WatchDescriptor>,
}

const DIR_EVENTS: inotify::WatchMask = inotify::WatchMask::CLOSE_WRITE
    .union(inotify::WatchMask::MOVED_TO)
    .union(inotify::WatchMask::MOVED_FROM)
    .union(inotify::WatchMask::CREATE)
    .union(inotify::WatchMask::DELETE)
    .union(inotify::WatchMask::ATTRIB);

/// Events taken into one read of the policy file at most.
const MAX_COALESCED: usize = 4096;

pub(super) fn watch_file(path: &Path) -> std::io::Result<PolicyWatch> {
    let dir = path
        .parent()
        .filter(|d| !d.as_os_str().is_empty())
        .unwrap_or(Path::new("."))
        .to_path_buf();
    let inotify = inotify::Inotify::init()?;
    let dir_watch = Some(inotify.watches().add(&dir, DIR_EVENTS)?);
    // The parent, for the directory's own name being replaced (a symlinked directory).
    if let Some(parent) = dir.parent().filter(|p| !p.as_os_str().is_empty()) {
        let _ = inotify.watches().add(
            parent,
            inotify::WatchMask::MOVED_TO
                | inotify::WatchMask::CREATE
                | inotify::WatchMask::DONT_FOLLOW
                | inotify::WatchMask::ONLYDIR,
        );
    }
    Ok(PolicyWatch {
        inotify,
        dir_name: dir.file_name().map(Into::into),
        dir,
        dir_watch,
    })
}

pub(super) async fn forward_changes(watch: PolicyWatch, path: PathBuf, changed: mpsc::Sender<()>) {
    let PolicyWatch {
        inotify,
        dir,
        dir_name,
        mut dir_watch,
    } = watch;
    let mut watches = inotify.watches();
    let Ok(mut stream) = inotify.into_event_stream([0u8; 4096]) else {
        warn!(policy = %path.display(), "cannot read the policy watch; reload with SIGHUP or guard apply");
        return;
    };
    // Moves the directory's watch when its name points somewhere new; true when `event`
    // may have changed the policy file.
    let mut relevant = |event: inotify::Event<OsString>| {
        let in_dir = dir_watch.as_ref() == Some(&event.wd);
        let dir_replaced =
            !in_dir && event.name.is_some() && event.name.as_deref() == dir_name.as_deref();
        if dir_replaced {
            // The directory's name points somewhere new: watch what it points to now.
            if let Some(old) = dir_watch.take() {
                let _ = watches.remove(old);
            }
            dir_watch = watches.add(&dir, DIR_EVENTS).ok();
        }
        in_dir || dir_replaced || event.mask.contains(inotify::EventMask::IGNORED)
    };
    while let Some(event) = stream.next().await {
        let Ok(event) = event else { continue };
        if !relevant(event) {
            continue;
        }
        // Let a burst of changes settle into one read: wait, then take in every event that
        // came meanwhile (an editor's save, or a busy directory, is several), so the burst
        // costs one read of the file, not one per event. Bounded, so a directory that never
        // falls quiet still gets its file read.
        tokio::time::sleep(Duration::from_millis(100)).await;
        for _ in 0..MAX_COALESCED {
            match stream.next().now_or_never() {
                Some(Some(Ok(event))) => {
                    relevant(event);
                }
                Some(Some(Err(_))) => {}
                _ => break,
            }
        }
        if changed.send(()).await.is_err() {
            return;
        }
    }
}
