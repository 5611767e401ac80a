//! `guard events [--follow]`: the daemon's recent events, one JSON object per line.

use std::{path::Path, time::Duration};

use crate::{
    api::{Failure, ctl::Request, replies::EventsReply},
    cli::client::ask_running,
};

pub fn events(run_dir: &Path, follow: bool) -> Result<(), Failure> {
    let mut since = 0;
    loop {
        let reply: EventsReply = ask_running(
            run_dir,
            &Request::Events { since },
            "guard is not running: events are kept by the daemon (see also its log)",
        )?;
        for e in &reply.events {
            println!("{e}");
        }
        since = reply.next;
        if !follow {
            return Ok(());
        }
        std::thread::sleep(Duration::from_millis(500));
    }
}
