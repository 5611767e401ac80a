//! `guard doctor`: host checks, exit 1 when any finding is an error.

use std::{fmt::Write as _, path::Path};

use crate::{
    api::Failure,
    cli::client::policy_for,
    inspect::doctor::{self, Report},
};

/// `guard doctor`: exit 1 when any finding is an error.
pub fn doctor(
    pin_dir: &Path,
    run_dir: &Path,
    json: bool,
    policy_file: Option<&Path>,
    netns: Option<&str>,
    wso2_home: Option<&Path>,
) -> Result<(), Failure> {
    if !rustix::process::geteuid().is_root() {
        return Err(Failure::Runtime(
            "guard doctor needs root: it reads guard's pins, BPF programs, links and maps (run it with sudo)".into(),
        ));
    }
    // The running daemon's policy when there is one; no policy is not an error here.
    let policy = match policy_for(run_dir, policy_file) {
        Ok((_, p)) => Some(p),
        Err(e) if policy_file.is_some() => return Err(e),
        Err(_) => None,
    };
    let places = doctor::Places {
        run_dir,
        pin_dir,
        policy_file,
        wso2_home,
    };
    let report = doctor::run(&places, policy.as_ref(), netns)
        .map_err(|e| Failure::Runtime(e.to_string()))?;
    if json {
        let mut v = serde_json::to_value(&report).expect("serialisable");
        v["netns"] = netns.into();
        println!("{v}");
    } else {
        print!("{}", render(&report));
    }
    if report.errors > 0 {
        return Err(Failure::Invalid(format!(
            "guard doctor: {} error(s)",
            report.errors
        )));
    }
    Ok(())
}

/// The report as text, worst first.
pub fn render(report: &Report) -> String {
    let mut out = String::new();
    for f in &report.findings {
        let _ = writeln!(
            out,
            "{:<8} {:<12} {}",
            f.severity.as_str(),
            f.check,
            f.message
        );
        if !f.hint.is_empty() {
            let _ = writeln!(out, "{:<21} fix: {}", "", f.hint);
        }
    }
    let _ = writeln!(
        out,
        "{} errors, {} warnings, {} checks",
        report.errors,
        report.warnings,
        report.findings.len()
    );
    out
}
