//! What every client command shares: talking to the daemon over the control socket with
//! typed replies, and reading policy files.

use std::{path::Path, time::Duration};

use serde::de::DeserializeOwned;

use crate::{
    api::{
        Failure,
        ctl::{self, CallError, Request},
        replies::PolicyReply,
    },
    policy,
};

const TIMEOUT: Duration = Duration::from_secs(30);

/// A policy file's text: unreadable is a runtime error (exit 2), not UTF-8 an invalid policy
/// (exit 1, `FILE:LINE:COL`).
pub fn read_policy(file: &Path) -> Result<String, Failure> {
    policy::read(file).map_err(|e| match e {
        policy::ReadError::Io(m) => Failure::Runtime(m),
        policy::ReadError::NotUtf8(m) => Failure::Invalid(m),
    })
}

/// Sends `request` and decodes its reply as `T`; `Ok(None)` when the daemon is not running.
/// A refusal with policy errors is invalid input (exit 1); any other refusal a runtime
/// error (exit 2).
pub fn ask<T: DeserializeOwned>(run_dir: &Path, request: &Request) -> Result<Option<T>, Failure> {
    let reply = match ctl::call(run_dir, request, TIMEOUT) {
        Ok(reply) => reply,
        Err(CallError::NotRunning(_)) => return Ok(None),
        Err(e) => return Err(Failure::Runtime(e.to_string())),
    };
    if reply.ok {
        reply.decode().map(Some).map_err(Failure::Runtime)
    } else if !reply.errors.is_empty() {
        Err(Failure::Invalid(reply.errors.join("\n")))
    } else {
        Err(Failure::Runtime(
            reply.error.unwrap_or_else(|| "the daemon refused".into()),
        ))
    }
}

/// As [`ask`], for requests only a running daemon answers: `not_running` says what to do.
pub fn ask_running<T: DeserializeOwned>(
    run_dir: &Path,
    request: &Request,
    not_running: &str,
) -> Result<T, Failure> {
    ask(run_dir, request)?.ok_or_else(|| Failure::Runtime(not_running.to_owned()))
}

/// The policy to judge by: `file`, else the running daemon's. Returns its label too.
pub fn policy_for(
    run_dir: &Path,
    file: Option<&Path>,
) -> Result<(String, policy::model::Policy), Failure> {
    let (label, text) = match file {
        Some(file) => (file.display().to_string(), read_policy(file)?),
        None => {
            let reply: PolicyReply = ask_running(
                run_dir,
                &Request::Policy {},
                "guard is not running: name the policy to judge by with --policy FILE",
            )?;
            (reply.name, reply.text)
        }
    };
    let checked = policy::check(&label, &text).map_err(|e| Failure::Invalid(e.to_string()))?;
    Ok((label, checked.policy))
}

/// Seconds since the Unix epoch.
pub fn now_unix() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}
