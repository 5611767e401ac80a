//! `guard doctor`: host checks, each finding with a severity and a fix hint.
//!
//! - `routes`: no default route, several defaults, routes via interfaces guard does not
//!   filter;
//! - `sysctl`: forwarding, reverse-path filtering, redirects, source routing, SYN cookies,
//!   martian logging against recommended values;
//! - `firewall`: nftables and iptables rules present, and rules that drop ports the policy
//!   allows (a packet must pass both layers);
//! - `bpf-hooks`: other XDP, tc or cgroup programs on the hooks guard uses;
//! - `integrity`: guard's links attached and running guard's programs, the kernel's policy
//!   maps equal to the running policy (drift), the policy file equal to what runs;
//! - `permissions`: policy file, run directory and control socket, pins;
//! - `kernel`: version, BPF features, unprivileged BPF, JIT.
//!
//! The parsers and judgements are pure functions of what was read (unit-tested); [`run`]
//! reads the host. With a network namespace, the network checks (routes, sysctls,
//! firewall) look inside it; the rest is host-wide.

mod currency;
mod files;
mod firewall;
mod integrity;
mod kernel;
mod network;
mod routes;
mod sysctls;
mod wso2;

pub use self::{currency::*, files::*, firewall::*, kernel::*, routes::*, sysctls::*, wso2::*};
use self::{integrity::*, network::*};

use std::{
    collections::{BTreeMap, BTreeSet},
    fs,
    os::{
        fd::AsFd as _,
        unix::fs::{MetadataExt as _, PermissionsExt as _},
    },
    path::{Path, PathBuf},
    process::Command,
};

use ipnet::IpNet;
use serde::Serialize;
use serde_json::Value;

use crate::{
    api::state::State,
    datapath::{self, Pins},
    policy::eval::{self, Reach},
    policy::model::{InterfaceSpec, Policy, PortRange, Proto, RuleAction},
};

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Severity {
    Ok,
    Info,
    Warning,
    Error,
}

impl Severity {
    pub fn as_str(self) -> &'static str {
        match self {
            Severity::Ok => "ok",
            Severity::Info => "info",
            Severity::Warning => "warning",
            Severity::Error => "error",
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Finding {
    pub check: &'static str,
    pub severity: Severity,
    pub message: String,
    /// What to do about it (empty for `ok`).
    #[serde(skip_serializing_if = "String::is_empty")]
    pub hint: String,
}

fn finding(
    check: &'static str,
    severity: Severity,
    message: impl Into<String>,
    hint: impl Into<String>,
) -> Finding {
    Finding {
        check,
        severity,
        message: message.into(),
        hint: hint.into(),
    }
}

/// Where doctor finds guard's things.
pub struct Places<'a> {
    pub run_dir: &'a Path,
    pub pin_dir: &'a Path,
    /// A policy file named on the command line.
    pub policy_file: Option<&'a Path>,
    /// A WSO2 Identity Server installation to check (`--wso2-home`).
    pub wso2_home: Option<&'a Path>,
}

#[derive(Debug, Clone, Serialize)]
pub struct Report {
    pub findings: Vec<Finding>,
    pub errors: usize,
    pub warnings: usize,
}

/// The interfaces guard guards: the running (or last) daemon's, else the policy's named ones.
fn guarded_interfaces(places: &Places<'_>, policy: Option<&Policy>) -> Vec<String> {
    match crate::api::state::read(places.run_dir) {
        Ok(st) => st.interfaces.into_iter().map(|a| a.name).collect(),
        Err(_) => policy
            .map(|p| {
                p.interfaces
                    .iter()
                    .filter_map(|i| match i {
                        InterfaceSpec::Name(n) => Some(n.clone()),
                        InterfaceSpec::DefaultRoute => None,
                    })
                    .collect()
            })
            .unwrap_or_default(),
    }
}

/// Every check. `netns`: run the network checks inside this namespace.
pub fn run(
    places: &Places<'_>,
    policy: Option<&Policy>,
    netns: Option<&str>,
) -> std::io::Result<Report> {
    let mut findings = {
        let _inside = netns.map(crate::linux::host::InNetns::enter).transpose()?;
        network_checks(policy)
    };
    if policy.is_none() {
        findings.push(finding(
            "firewall",
            Severity::Info,
            "no policy (guard is not running and no --policy): contradictions with it were not checked",
            "",
        ));
    }
    findings.extend(guard_checks(places));
    findings.extend(kernel_checks());
    findings.extend(check_currency(&read_currency(
        Path::new("/"),
        &guarded_interfaces(places, policy),
    )));
    if let Some(home) = places.wso2_home {
        findings.extend(check_wso2_home(home));
    }
    findings.sort_by_key(|f| std::cmp::Reverse(f.severity));
    let count = |s| findings.iter().filter(|f| f.severity == s).count();
    Ok(Report {
        errors: count(Severity::Error),
        warnings: count(Severity::Warning),
        findings,
    })
}

#[cfg(test)]
mod tests;
