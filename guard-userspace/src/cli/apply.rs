//! `guard apply FILE [--confirm-within SECS]` and `guard confirm`.

use std::path::Path;

use crate::{
    api::{
        Failure,
        ctl::Request,
        replies::{ApplyReply, ConfirmReply},
    },
    cli::client::{ask, ask_running, read_policy},
    policy,
};

pub fn apply(run_dir: &Path, file: &Path, confirm_within: Option<u64>) -> Result<(), Failure> {
    let text = read_policy(file)?;
    let name = file.display().to_string();
    // The daemon validates the policy (once: the CLI does not parse it too) and answers
    // with the same FILE:LINE:COL errors `guard check` prints.
    let request = Request::Apply {
        name: name.clone(),
        policy: text,
        confirm_within,
    };
    let Some(reply): Option<ApplyReply> = ask(run_dir, &request)? else {
        // No daemon: the policy's own errors first, they are what to fix.
        let Request::Apply { policy: text, .. } = request else {
            unreachable!("built above")
        };
        policy::check(&name, &text).map_err(|e| Failure::Invalid(e.to_string()))?;
        return Err(Failure::Runtime(
            "guard is not running: start it with `guard run`".into(),
        ));
    };
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
