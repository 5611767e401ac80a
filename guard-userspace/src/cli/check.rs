//! `guard check FILE`: validate a policy without touching the kernel.

use std::path::Path;

use crate::{api::Failure, cli::client::read_policy, policy};

pub fn check(file: &Path) -> Result<(), Failure> {
    let text = read_policy(file)?;
    let checked = policy::check(&file.display().to_string(), &text)
        .map_err(|e| Failure::Invalid(e.to_string()))?;
    for w in &checked.warnings {
        eprintln!("{w}");
    }
    let p = &checked.policy;
    println!(
        "{}: ok: mode {}, default {}, {} ingress and {} egress rules, {} zones",
        file.display(),
        p.mode,
        match p.default_action {
            policy::model::DefaultAction::Allow => "allow",
            policy::model::DefaultAction::Deny => "deny",
        },
        p.ingress.len(),
        p.egress.len(),
        p.zones.len()
    );
    Ok(())
}
