//! The fleet deployment in `deploy/`, checked offline and against a live daemon:
//! - the Prometheus alert rules: `promtool check rules` and their unit tests (every alert
//!   firing and not firing), and the PrometheusRule object holding the same groups;
//! - the Kubernetes bases: `kubectl kustomize` builds them and every object passes strict
//!   offline schema validation (`tests/tools/k8s_validate.py`); the DaemonSet has the unit's
//!   capabilities, the ConfigMap as a directory, an exec readiness probe, no liveness probe;
//! - the DaemonSet's own command line run as written (paths mapped to the test's), its
//!   readiness probe, a ConfigMap update that does not validate and a key that disappears;
//! - every metric the dashboard and the alerts name, scraped from a daemon that has seen
//!   no traffic yet;
//! - the Grafana dashboard's queries parse as PromQL; the Ansible role passes
//!   `ansible-playbook --syntax-check` and ansible-lint, and its policy template renders a
//!   policy `guard check` accepts; yamllint on all the YAML; the container image's inputs.

use std::{
    collections::BTreeSet,
    io::Write as _,
    path::{Path, PathBuf},
    process::{Command, Output, Stdio},
    thread,
    time::{Duration, Instant},
};

use guard_tests::{ConfigMapVolume, Daemon, TestNet, guard_bin};
use serde_json::Value;

fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("..")
}

fn deploy(path: &str) -> PathBuf {
    root().join("deploy").join(path)
}

/// Runs `cmd` (feeding it `stdin`), fails the test with its output unless it succeeds.
fn run(cmd: &mut Command, stdin: Option<&str>) -> String {
    let out = output(cmd, stdin);
    assert!(
        out.status.success(),
        "{cmd:?} failed ({}):\n{}{}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).expect("utf-8 output")
}

fn output(cmd: &mut Command, stdin: Option<&str>) -> Output {
    let mut child = cmd
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap_or_else(|e| {
            panic!(
                "{:?}: {e} (cargo xtask test installs the deploy tools: kubectl, yamllint, \
                 ansible-core, ansible-lint, promtool, and the test venv)",
                cmd.get_program()
            )
        });
    let mut pipe = child.stdin.take().expect("stdin");
    if let Some(text) = stdin {
        pipe.write_all(text.as_bytes()).expect("write stdin");
    }
    drop(pipe);
    child.wait_with_output().expect("wait")
}

/// The test venv's python (`cargo xtask test` makes it): PyYAML, kubernetes-validate, the
/// Prometheus Operator's models.
fn venv_python() -> PathBuf {
    let venv = std::env::var_os("GUARD_TEST_VENV")
        .map(PathBuf::from)
        .unwrap_or_else(|| {
            PathBuf::from(std::env::var_os("HOME").expect("HOME")).join(".cache/guard-tests/venv")
        });
    let python = venv.join("bin/python");
    assert!(
        python.exists(),
        "no test venv at {} (cargo xtask test or cargo xtask setup creates it)",
        venv.display()
    );
    python
}

/// The documents of a YAML stream, as JSON values.
fn yaml_docs(text: &str) -> Vec<Value> {
    let json = run(
        Command::new(venv_python()).args([
            "-c",
            "import json, sys, yaml; print(json.dumps([d for d in yaml.safe_load_all(sys.stdin) if d]))",
        ]),
        Some(text),
    );
    serde_json::from_str(&json).expect("JSON from PyYAML")
}

fn kustomize(dir: &Path) -> String {
    run(Command::new("kubectl").arg("kustomize").arg(dir), None)
}

fn kind<'a>(docs: &'a [Value], kind: &str) -> &'a Value {
    docs.iter()
        .find(|d| d["kind"] == kind)
        .unwrap_or_else(|| panic!("no {kind} in {docs:?}"))
}

/// The `guard_*` metric names a text mentions.
fn guard_names(text: &str) -> BTreeSet<String> {
    text.split(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))
        .filter(|w| w.starts_with("guard_"))
        .map(str::to_owned)
        .collect()
}

/// The sample names of a Prometheus text exposition (`name{...} value` or `name value`).
fn sample_names(metrics: &str) -> BTreeSet<String> {
    metrics
        .lines()
        .filter(|l| !l.starts_with('#') && !l.is_empty())
        .filter_map(|l| l.split(['{', ' ']).next())
        .map(str::to_owned)
        .collect()
}

fn dashboard() -> Value {
    let text = std::fs::read_to_string(deploy("grafana/guard-dashboard.json")).unwrap();
    serde_json::from_str(&text).expect("the dashboard is JSON")
}

/// Every query of the dashboard's panels.
fn dashboard_queries(dash: &Value) -> Vec<String> {
    let mut out = Vec::new();
    for panel in dash["panels"].as_array().expect("panels") {
        for target in panel["targets"].as_array().into_iter().flatten() {
            out.push(
                target["expr"]
                    .as_str()
                    .unwrap_or_else(|| panic!("a target without expr in {panel}"))
                    .to_owned(),
            );
        }
    }
    out
}

#[test]
fn the_rules_check_and_their_unit_tests_pass() {
    for args in [
        ["check", "rules", "guard-alerts.yml"],
        ["test", "rules", "guard-alerts-test.yml"],
    ] {
        run(
            Command::new("promtool")
                .args(args)
                .current_dir(deploy("prometheus")),
            None,
        );
    }
}

#[test]
fn the_prometheusrule_object_holds_the_rules_file() {
    let plain = yaml_docs(&std::fs::read_to_string(deploy("prometheus/guard-alerts.yml")).unwrap());
    let object = yaml_docs(&std::fs::read_to_string(deploy("k8s/prometheusrule.yaml")).unwrap());
    assert_eq!(
        object[0]["spec"]["groups"], plain[0]["groups"],
        "deploy/k8s/prometheusrule.yaml differs from deploy/prometheus/guard-alerts.yml: \
         regenerate it with the command in its header"
    );
}

#[test]
fn the_kustomize_bases_build_and_every_object_validates_strictly() {
    let validator = root().join("tests/tools/k8s_validate.py");
    for base in ["k8s", "k8s/cleanup"] {
        let rendered = kustomize(&deploy(base));
        let report = run(Command::new(venv_python()).arg(&validator), Some(&rendered));
        eprintln!("{base}:\n{report}");
    }
    let docs = yaml_docs(&kustomize(&deploy("k8s")));
    let kinds: BTreeSet<&str> = docs.iter().filter_map(|d| d["kind"].as_str()).collect();
    for want in [
        "Namespace",
        "ServiceAccount",
        "ConfigMap",
        "DaemonSet",
        "PodMonitor",
        "PrometheusRule",
    ] {
        assert!(kinds.contains(want), "no {want} in {kinds:?}");
    }
    let ds = kind(&docs, "DaemonSet");
    let pod = &ds["spec"]["template"]["spec"];
    assert_eq!(pod["hostNetwork"], true);
    assert_eq!(ds["spec"]["updateStrategy"]["type"], "RollingUpdate");
    let container = &pod["containers"][0];
    let security = &container["securityContext"];
    assert_ne!(security["privileged"], true, "not privileged");
    // The capabilities are the systemd unit's, no more.
    let unit = std::fs::read_to_string(root().join("packaging/guard.service")).unwrap();
    let unit_caps: BTreeSet<String> = unit
        .lines()
        .find_map(|l| l.strip_prefix("CapabilityBoundingSet="))
        .expect("the unit's capabilities")
        .split_whitespace()
        .map(|c| c.trim_start_matches("CAP_").to_owned())
        .collect();
    let pod_caps: BTreeSet<String> = security["capabilities"]["add"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| c.as_str().unwrap().to_owned())
        .collect();
    assert_eq!(pod_caps, unit_caps);
    assert_eq!(security["capabilities"]["drop"], serde_json::json!(["ALL"]));
    // The ConfigMap mounted as a directory (a subPath mount never sees an update).
    for mount in container["volumeMounts"].as_array().unwrap() {
        assert!(mount.get("subPath").is_none(), "{mount}");
    }
    assert!(container["readinessProbe"]["exec"]["command"].is_array());
    assert!(
        container.get("livenessProbe").is_none(),
        "no liveness probe"
    );
    // The shipped policy is one guard accepts.
    let policy = kind(&docs, "ConfigMap")["data"]["policy.toml"]
        .as_str()
        .expect("policy.toml in the ConfigMap");
    let file = guard_tests::PolicyFile::new(policy);
    run(Command::new(guard_bin()).args(["check", file.arg()]), None);
    // The cleanup runs `guard unload` against the same host paths.
    let cleanup = yaml_docs(&kustomize(&deploy("k8s/cleanup")));
    let unload = &kind(&cleanup, "DaemonSet")["spec"]["template"]["spec"]["initContainers"][0];
    assert_eq!(
        unload["command"].as_array().unwrap().last().unwrap(),
        "unload"
    );
}

#[test]
fn yamllint_passes_on_every_yaml_file() {
    run(
        Command::new("yamllint")
            .args(["--strict", "-c", "deploy/.yamllint", "deploy"])
            .current_dir(root()),
        None,
    );
}

#[test]
fn the_ansible_role_passes_syntax_check_and_lint_and_renders_a_valid_policy() {
    let dir = deploy("ansible");
    run(
        Command::new("ansible-playbook")
            .args(["--syntax-check", "site.yml"])
            .current_dir(&dir),
        None,
    );
    run(
        Command::new("ansible-lint")
            .args(["--offline", "--profile", "production"])
            .current_dir(&dir),
        None,
    );
    // The policy template with its defaults and with a rule, rendered by Ansible itself.
    for extra in [
        "{}",
        r#"{"guard_mode": "enforce", "guard_interfaces": ["eth0"], "guard_ingress": [{"name": "console-https", "ports": [9443], "from": ["10.0.0.0/8"]}, {"name": "dns", "proto": "udp", "ports": [53]}]}"#,
    ] {
        let rendered = std::env::temp_dir().join(guard_tests::unique("guard-ansible-policy-"));
        let defaults = dir.join("roles/guard/defaults/main.yml");
        run(
            Command::new("ansible")
                .args(["localhost", "-i", "localhost,", "-c", "local", "-m"])
                .arg("ansible.builtin.template")
                .arg("-a")
                .arg(format!(
                    "src={} dest={}",
                    dir.join("roles/guard/templates/policy.toml.j2").display(),
                    rendered.display()
                ))
                .arg("-e")
                .arg(format!("@{}", defaults.display()))
                .args(["-e", extra])
                .current_dir(&dir),
            None,
        );
        let text = std::fs::read_to_string(&rendered).unwrap();
        let _ = std::fs::remove_file(&rendered);
        let file = guard_tests::PolicyFile::new(&text);
        run(Command::new(guard_bin()).args(["check", file.arg()]), None);
    }
}

#[test]
fn the_dashboard_queries_parse_and_cover_what_an_operator_watches() {
    let dash = dashboard();
    let queries = dashboard_queries(&dash);
    assert!(queries.len() >= 20, "{queries:?}");
    // Each query, with the dashboard's variables filled in, as a recording rule: promtool
    // parses it as PromQL.
    let mut rules = String::from("groups:\n  - name: dashboard\n    rules:\n");
    for (i, q) in queries.iter().enumerate() {
        let q = q
            .replace("$__rate_interval", "5m")
            .replace("$instance", ".*");
        rules += &format!(
            "      - record: dashboard:query{i}\n        expr: {}\n",
            serde_json::to_string(&q).unwrap()
        );
    }
    let file = std::env::temp_dir().join(format!(
        "{}.yml",
        guard_tests::unique("guard-dashboard-rules-")
    ));
    std::fs::write(&file, rules).unwrap();
    let checked = output(
        Command::new("promtool")
            .arg("check")
            .arg("rules")
            .arg(&file),
        None,
    );
    let _ = std::fs::remove_file(&file);
    assert!(
        checked.status.success(),
        "a dashboard query is not PromQL:\n{}{}",
        String::from_utf8_lossy(&checked.stdout),
        String::from_utf8_lossy(&checked.stderr)
    );
    let used = guard_names(&queries.join("\n"));
    for want in [
        "guard_enforcing",
        "guard_policy_info",
        "guard_rule_packets_total",
        "guard_packets_by_reason_total",
        "guard_connections_attempted_total",
        "guard_connections_accepted_total",
        "guard_connections_active",
        "guard_connections_rejected_total",
        "guard_tcp_rtt_seconds_bucket",
        "guard_anomaly_active",
        "guard_unexpected_listeners",
        "guard_events_lost_total",
        "guard_build_info",
    ] {
        assert!(used.contains(want), "the dashboard does not show {want}");
    }
}

/// Scrapes until `until` holds for the text (10 s at most), and returns it.
fn scrape_until(daemon: &Daemon, what: &str, until: impl Fn(&str) -> bool) -> String {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let (code, metrics) = daemon.http_get("/metrics");
        if code == 200 && until(&metrics) {
            return metrics;
        }
        assert!(
            Instant::now() < deadline,
            "{what}: not seen in /metrics within 10 s:\n{metrics}\n--- log:\n{}",
            daemon.log_text()
        );
        thread::sleep(Duration::from_millis(100));
    }
}

fn has_sample(metrics: &str, sample: &str) -> bool {
    metrics.lines().any(|l| l == sample)
}

#[test]
fn the_daemonset_runs_guard_as_written_and_reports_bad_configmaps() {
    let net = TestNet::new();
    let docs = yaml_docs(&kustomize(&deploy("k8s")));
    let pod = &kind(&docs, "DaemonSet")["spec"]["template"]["spec"];
    let container = &pod["containers"][0];
    let mount = |name: &str| -> String {
        container["volumeMounts"]
            .as_array()
            .unwrap()
            .iter()
            .find(|m| m["name"] == name)
            .unwrap_or_else(|| panic!("no mount {name}"))["mountPath"]
            .as_str()
            .unwrap()
            .to_owned()
    };
    let volume = |name: &str| -> Value {
        pod["volumes"]
            .as_array()
            .unwrap()
            .iter()
            .find(|v| v["name"] == name)
            .unwrap_or_else(|| panic!("no volume {name}"))
            .clone()
    };
    let strings = |v: &Value| -> Vec<String> {
        v.as_array()
            .unwrap()
            .iter()
            .map(|s| s.as_str().unwrap().to_owned())
            .collect()
    };
    let command = strings(&container["command"]);
    assert_eq!(command[0], "/usr/sbin/guard");
    let at_run = command.iter().position(|a| a == "run").expect("guard run");
    // Global flags: the run directory and pins on the host's paths, where the node's own
    // `guard` CLI finds them.
    assert_eq!(
        command[1..at_run],
        [
            "--run-dir".to_owned(),
            mount("run"),
            "--pin-dir".to_owned(),
            format!("{}/guard", mount("bpffs")),
        ]
    );
    assert_eq!(volume("run")["hostPath"]["path"], "/run/guard");
    assert_eq!(volume("bpffs")["hostPath"]["path"], "/sys/fs/bpf");
    assert_eq!(volume("cgroup2")["hostPath"]["path"], "/sys/fs/cgroup");
    assert_eq!(
        volume("policy")["configMap"]["name"],
        kind(&docs, "ConfigMap")["metadata"]["name"]
    );
    assert_eq!(
        container["env"][0]["valueFrom"]["fieldRef"]["fieldPath"],
        "status.hostIP"
    );

    // The ConfigMap's policy, on the test veth instead of the node's default-route
    // interface (a test never attaches to the machine's own interfaces).
    let shipped = kind(&docs, "ConfigMap")["data"]["policy.toml"]
        .as_str()
        .unwrap()
        .to_owned();
    let default_route = r#"interfaces = ["@default-route"]"#;
    assert!(shipped.contains(default_route), "{shipped}");
    let policy_text = shipped.replace(
        default_route,
        &format!(r#"interfaces = ["{}"]"#, net.host_if),
    );
    let mut configmap = ConfigMapVolume::new("policy.toml", &policy_text);

    // `guard run`'s arguments, the paths mapped to the test's: the policy in the ConfigMap
    // volume, the test's cgroup for the host's cgroup2 tree, loopback for the node address.
    let mut args = Vec::new();
    let mut rest = command[at_run + 1..].iter();
    while let Some(flag) = rest.next() {
        let value = rest
            .next()
            .unwrap_or_else(|| panic!("{flag} without a value"));
        match flag.as_str() {
            "--policy" => {
                assert_eq!(*value, format!("{}/policy.toml", mount("policy")));
                args.push(flag.clone());
                args.push(configmap.path("policy.toml").display().to_string());
            }
            "--cgroup" => assert_eq!(*value, mount("cgroup2")),
            "--metrics-addr" => {
                assert_eq!(value, "$(HOST_IP):9871");
                args.push(flag.clone());
                args.push("127.0.0.1:0".into());
            }
            _ => {
                args.push(flag.clone());
                args.push(value.clone());
            }
        }
    }
    let probe = strings(&container["readinessProbe"]["exec"]["command"]);
    let mut daemon = Daemon::start(&args.iter().map(String::as_str).collect::<Vec<_>>());
    let run_dir = daemon.dirs.run_dir.clone();
    let ready = || {
        let mut cmd = Command::new(guard_bin());
        let mut probe_args = probe[1..].iter();
        while let Some(a) = probe_args.next() {
            cmd.arg(a);
            if a == "--run-dir" {
                probe_args.next();
                cmd.arg(&run_dir);
            }
        }
        output(&mut cmd, None)
    };
    let out = ready();
    assert!(
        out.status.success() && String::from_utf8_lossy(&out.stdout).starts_with("ready: audit"),
        "the readiness probe: {out:?}\n{}",
        daemon.log_text()
    );

    // Before anything happened, every metric the dashboard and the alerts use is there.
    let rules = std::fs::read_to_string(deploy("prometheus/guard-alerts.yml")).unwrap();
    let mut used = guard_names(&rules);
    used.extend(guard_names(&dashboard_queries(&dashboard()).join("\n")));
    let metrics = scrape_until(&daemon, "every referenced metric", |m| {
        used.is_subset(&sample_names(m))
    });
    assert!(
        metrics.contains("guard_tcp_rtt_seconds_bucket{port=\"9871\",direction=\"inbound\""),
        "{metrics}"
    );
    eprintln!(
        "{} metrics the dashboard and alerts use, all exported",
        used.len()
    );

    // A ConfigMap update that does not validate: rejected with FILE:LINE:COL, the running
    // policy stays, the rejected counter rises, the pod stays ready.
    configmap.update(
        "policy.toml",
        &(policy_text.clone()
            + "\n[[ingress]]\nname = \"bad\"\nproto = \"tcp\"\nports = [70000]\nfrom = [\"any\"]\n"),
    );
    scrape_until(&daemon, "the rejected update", |m| {
        has_sample(m, "guard_policy_reloads_total{result=\"rejected\"} 1")
            && has_sample(m, "guard_policy_generation 1")
    });
    let log = daemon.log_text();
    let path = configmap.path("policy.toml").display().to_string();
    let located = log.split(&format!("{path}:")).skip(1).any(|after| {
        let mut parts = after.splitn(3, ':');
        parts.next().is_some_and(|l| l.parse::<u32>().is_ok())
            && parts.next().is_some_and(|c| c.parse::<u32>().is_ok())
    });
    assert!(located, "no {path}:LINE:COL in the log:\n{log}");
    assert!(
        ready().status.success(),
        "still ready on the running policy"
    );

    // The key removed from the ConfigMap: reported, the running policy stays.
    configmap.remove_key("policy.toml");
    scrape_until(&daemon, "the missing policy file", |m| {
        has_sample(m, "guard_policy_file_unreadable 1")
            && has_sample(m, "guard_policy_generation 1")
            && has_sample(m, "guard_enforcing 1")
    });
    assert!(daemon.log_text().contains("policy_unreadable"));
    let events = run(daemon.dirs.guard().args(["events", "--json"]), None);
    assert!(events.contains("policy_unreadable"), "{events}");
    assert!(
        ready().status.success(),
        "still ready on the running policy"
    );

    // The daemon gone: not ready (the pinned programs still enforce; nothing reports).
    daemon.stop();
    let out = ready();
    assert_eq!(out.status.code(), Some(1), "{out:?}");
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("not ready"),
        "{out:?}"
    );
}

#[test]
fn the_container_image_copies_what_exists_and_needs_only_debian_libraries() {
    let dockerfile = std::fs::read_to_string(deploy("container/Dockerfile")).unwrap();
    let ignore = std::fs::read_to_string(deploy("container/Dockerfile.dockerignore")).unwrap();
    let copies: Vec<&str> = dockerfile
        .lines()
        .filter_map(|l| l.strip_prefix("COPY "))
        .map(|l| l.split_whitespace().next().unwrap())
        .collect();
    assert!(copies.contains(&"target/release/guard"), "{copies:?}");
    for source in &copies {
        assert!(
            ignore.lines().any(|l| l == format!("!{source}")),
            "{source} is not in the build context (Dockerfile.dockerignore)"
        );
        if *source != "target/release/guard" {
            assert!(root().join(source).exists(), "{source} does not exist");
        }
    }
    // The binary needs nothing debian:12-slim lacks: libc and libgcc_s.
    let ldd = run(Command::new("ldd").arg(guard_bin()), None);
    for line in ldd.lines() {
        let lib = line.split_whitespace().next().unwrap_or_default();
        assert!(
            [
                "linux-vdso.so.1",
                "libgcc_s.so.1",
                "libc.so.6",
                "libm.so.6",
                "/lib64/ld-linux-x86-64.so.2",
            ]
            .contains(&lib),
            "the guard binary needs {lib}, which debian:12-slim may not have:\n{ldd}"
        );
    }
}
