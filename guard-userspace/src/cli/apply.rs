//! `guard apply FILE [--confirm-within SECS]` and `guard confirm`.

use std::path::Path;

use crate::{
    api::{
        Failure,
        ctl::Request,
        replies::{ApplyReply, ConfirmReply},
    },
    cli::client::{ask_running, read_policy},
    policy,
};

pub fn apply(run_dir: &Path, file: &Path, confirm_within: Option<u64>) -> Result<(), Failure> {
    let text = read_policy(file)?;
    // Validate here first: precise errors even when the daemon is down.
    policy::check(&file.display().to_string(), &text)
        .map_err(|e| Failure::Invalid(e.to_string()))?;
    let request = Request::Apply {
        name: file.display().to_string(),
        policy: text,
        confirm_within,
    };
    let reply: ApplyReply = ask_running(
        run_dir,
        &request,
        "guard is not running: start it with `guard run`",
    )?;
    let hash = &reply.policy_hash;
    println!(
        "applied {} (sha256 {}, generation {})",
        file.display(),
        &hash[..hash.len().min(16)],
        reply.generation
    );
    if let Some(secs) = confirm_within {
        println!(
            "run `guard confirm` within {secs}s to keep it; otherwise the previous policy comes back"
        );
    }
    Ok(())
}

pub fn confirm(run_dir: &Path) -> Result<(), Failure> {
    let _: ConfirmReply = ask_running(run_dir, &Request::Confirm {}, "guard is not running")?;
    println!("confirmed");
    Ok(())
}
