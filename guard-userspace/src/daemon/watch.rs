//! Watching the policy file (inotify).

use super::*;

/// An inotify stream on the policy file's directory: editors that write a new file and
/// rename it over the old one are seen too.
pub(super) fn watch_file(path: &Path) -> std::io::Result<inotify::EventStream<[u8; 4096]>> {
    let dir = path
        .parent()
        .filter(|d| !d.as_os_str().is_empty())
        .unwrap_or(Path::new("."));
    let inotify = inotify::Inotify::init()?;
    inotify.watches().add(
        dir,
        inotify::WatchMask::CLOSE_WRITE | inotify::WatchMask::MOVED_TO | inotify::WatchMask::CREATE,
    )?;
    inotify.into_event_stream([0u8; 4096])
}

pub(super) async fn forward_changes(
    mut stream: inotify::EventStream<[u8; 4096]>,
    path: PathBuf,
    changed: mpsc::Sender<()>,
) {
    let name: Option<OsString> = path.file_name().map(Into::into);
    while let Some(event) = stream.next().await {
        let Ok(event) = event else { continue };
        if event.name.as_deref() == name.as_deref() {
            // Let a burst of writes settle into one reload.
            tokio::time::sleep(Duration::from_millis(50)).await;
            if changed.send(()).await.is_err() {
                return;
            }
        }
    }
}
