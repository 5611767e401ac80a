//! The readers of what the kernel sends: the deny-event ring buffer and the kernel log.

use super::*;

/// Logs every event the kernel sends.
/// How long after a bind() event the listener audit runs.
pub(super) const BIND_AUDIT_DELAY: Duration = Duration::from_millis(500);

pub(super) async fn pump_events(
    mut fd: AsyncFd<RingBuf<MapData>>,
    decoder: Arc<Decoder>,
    recent: Arc<Mutex<Recent>>,
    binds: mpsc::Sender<()>,
) {
    loop {
        let Ok(mut ready) = fd.readable_mut().await else {
            warn!("event reader stopped");
            return;
        };
        let ring = ready.get_inner_mut();
        while let Some(record) = ring.next() {
            match decoder.decode(&record) {
                Some(ev) => {
                    events::log(&ev);
                    if ev.kind == "bind_denied" {
                        // Full: an audit is already due.
                        let _ = binds.try_send(());
                    }
                    if let (Ok(mut recent), Ok(value)) = (recent.lock(), serde_json::to_value(&ev))
                    {
                        recent.push(value);
                    }
                }
                None => warn!(bytes = record.len(), "undecodable event record"),
            }
        }
        ready.clear_ready();
    }
}

/// Forwards kernel log records (aya-log) into `log`, which tracing picks up.
pub(super) async fn pump_kernel_log(mut fd: AsyncFd<KernelLogger>) {
    loop {
        let Ok(mut ready) = fd.readable_mut().await else {
            warn!("kernel log reader stopped");
            return;
        };
        ready.get_inner_mut().flush();
        ready.clear_ready();
    }
}
