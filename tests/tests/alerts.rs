//! The Prometheus alert rules in `deploy/prometheus/`: `promtool check rules` passes, the
//! rule unit tests (every alert firing and not firing) pass, and every guard metric they use
//! is one guard exports.

use std::{path::PathBuf, process::Command};

fn dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../deploy/prometheus")
}

fn promtool(args: &[&str]) {
    let out = Command::new("promtool")
        .args(args)
        .current_dir(dir())
        .output()
        .expect("promtool (Debian's prometheus package; cargo xtask test installs it)");
    assert!(
        out.status.success(),
        "promtool {args:?}:\n{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

#[test]
fn the_rules_check_and_their_unit_tests_pass() {
    promtool(&["check", "rules", "guard-alerts.yml"]);
    promtool(&["test", "rules", "guard-alerts-test.yml"]);
}

#[test]
fn every_metric_the_rules_use_is_exported() {
    let rules = std::fs::read_to_string(dir().join("guard-alerts.yml")).unwrap();
    let metrics = std::fs::read_to_string(
        PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../guard-userspace/src/observe/metrics.rs"),
    )
    .unwrap();
    let mut used: Vec<&str> = rules
        .split(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))
        .filter(|w| w.starts_with("guard_"))
        .collect();
    used.sort_unstable();
    used.dedup();
    assert!(used.len() >= 7, "{used:?}");
    for name in used {
        assert!(
            metrics.contains(&format!("\"{name}\"")),
            "the alert rules use {name}, which guard does not export"
        );
    }
}
