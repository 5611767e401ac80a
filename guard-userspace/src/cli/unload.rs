//! `guard unload`: detach everything and remove the pins, through the daemon when it runs.

use std::path::Path;

use crate::{
    api::{Failure, ctl::Request, replies::UnloadReply, state},
    cli::client::ask,
    datapath::Pins,
};

pub fn unload(pin_dir: &Path, run_dir: &Path) -> Result<(), Failure> {
    let reply: Option<UnloadReply> = ask(run_dir, &Request::Unload {})?;
    if reply.is_none() {
        // The state file names the pin directory the daemon used; a path seen from inside a
        // container (the Kubernetes DaemonSet's /host/sys/fs/bpf/guard) does not exist on the
        // host, where --pin-dir is the same directory.
        let pins = match state::read(run_dir) {
            Ok(st) if st.pin_dir.exists() => Pins::new(&st.pin_dir),
            _ => Pins::new(pin_dir),
        };
        pins.remove_all()
            .map_err(|e| Failure::Runtime(format!("removing {}: {e}", pins.dir().display())))?;
        state::remove(run_dir);
    }
    println!("guard unloaded: programs detached, pins removed");
    Ok(())
}
