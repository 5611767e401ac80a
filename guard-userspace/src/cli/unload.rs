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
        let pins =
            state::read(run_dir).map_or_else(|_| Pins::new(pin_dir), |st| Pins::new(&st.pin_dir));
        pins.remove_all()
            .map_err(|e| Failure::Runtime(format!("removing {}: {e}", pins.dir().display())))?;
        state::remove(run_dir);
    }
    println!("guard unloaded: programs detached, pins removed");
    Ok(())
}
