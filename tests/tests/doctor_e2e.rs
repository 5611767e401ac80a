//! Tier 3: `guard doctor`. Each check is shown on a set-up that exhibits the finding and on
//! one that does not:
//! - network checks inside a test namespace whose interfaces are veth pairs with both ends
//!   in it (nothing in it reaches the host or a real network): recommended sysctls and one default route, then
//!   `ip_forward=1`, a second default route via an interface guard does not filter, an
//!   nftables rule and an iptables rule dropping ports the policy allows;
//! - guard's own state with a daemon on a test veth and cgroup: clean, then a world-writable
//!   policy file, a pin opened to other users, a map entry written behind guard's back
//!   (drift), another program on a cgroup hook, guard's XDP link detached and another XDP
//!   program in its place.

use std::{os::fd::AsFd as _, os::unix::fs::PermissionsExt as _};

use guard_tests::{Daemon, NetNs, PolicyFile, TestNet, json_stdout, kernel, sh};
use serde_json::Value;

/// Messages of the findings of `checks` with `severity`.
fn messages(report: &Value, checks: &[&str], severity: &str) -> Vec<String> {
    report["findings"]
        .as_array()
        .expect("findings")
        .iter()
        .filter(|f| {
            checks.contains(&f["check"].as_str().unwrap_or("")) && f["severity"] == severity
        })
        .map(|f| f["message"].as_str().unwrap_or("").to_owned())
        .collect()
}

fn has(list: &[String], needle: &str) -> bool {
    list.iter().any(|m| m.contains(needle))
}

fn in_ns(ns: &NetNs, args: &[&str]) {
    let mut full = vec!["ip", "netns", "exec", &ns.name];
    full.extend_from_slice(args);
    sh(&full);
}

const NETWORK: [&str; 3] = ["routes", "sysctl", "firewall"];

#[test]
fn network_checks_in_a_namespace_show_each_finding_and_its_absence() {
    let ns = NetNs::new();
    // Veth pairs with both ends inside the namespace: whatever the routes say, no packet
    // leaves it.
    for (dev, peer, subnet) in [("gd0", "gp0", 1), ("gd1", "gp1", 2)] {
        sh(&[
            "ip", "-n", &ns.name, "link", "add", dev, "type", "veth", "peer", "name", peer,
        ]);
        sh(&["ip", "-n", &ns.name, "link", "set", dev, "up"]);
        sh(&["ip", "-n", &ns.name, "link", "set", peer, "up"]);
        if subnet == 1 {
            sh(&[
                "ip",
                "-n",
                &ns.name,
                "addr",
                "add",
                "198.19.1.2/24",
                "dev",
                dev,
            ]);
        }
    }
    sh(&[
        "ip",
        "-n",
        &ns.name,
        "route",
        "add",
        "default",
        "via",
        "198.19.1.1",
        "dev",
        "gd0",
    ]);
    for (key, value) in [
        ("net.ipv4.ip_forward", "0"),
        ("net.ipv6.conf.all.forwarding", "0"),
        ("net.ipv4.conf.all.accept_redirects", "0"),
        ("net.ipv4.conf.default.accept_redirects", "0"),
        ("net.ipv6.conf.all.accept_redirects", "0"),
        ("net.ipv4.conf.all.accept_source_route", "0"),
        ("net.ipv6.conf.all.accept_source_route", "0"),
        ("net.ipv4.tcp_syncookies", "1"),
        ("net.ipv4.conf.all.log_martians", "1"),
        ("net.ipv4.conf.all.rp_filter", "1"),
    ] {
        in_ns(&ns, &["sysctl", "-q", "-w", &format!("{key}={value}")]);
    }
    // guard filters gd0 and the peers; the policy allows tcp 8080 and 9090.
    let policy = PolicyFile::new(
        "version = 1\ninterfaces = [\"gd0\", \"gp0\", \"gp1\"]\ndefault = \"deny\"\nfailsafe_ports = []\n\
         [[ingress]]\nname = \"web\"\nproto = \"tcp\"\nports = [8080, 9090]\nfrom = [\"any\"]\n",
    );
    let dirs = guard_tests::Dirs::new();
    let doctor = || {
        dirs.guard()
            .args([
                "doctor",
                "--json",
                "--netns",
                &ns.name,
                "--policy",
                policy.arg(),
            ])
            .output()
            .expect("run guard doctor")
    };

    let clean = json_stdout(&doctor());
    assert!(
        messages(&clean, &NETWORK, "warning").is_empty()
            && messages(&clean, &NETWORK, "error").is_empty(),
        "a namespace set up as recommended has no network findings: {clean:#}"
    );
    let ok = messages(&clean, &NETWORK, "ok");
    assert!(has(&ok, "one IPv4 default route: via gd0"), "{ok:?}");
    assert!(has(&ok, "net.ipv4.ip_forward = 0"));
    assert!(has(&ok, "no nftables rules"));
    assert!(
        has(&ok, "every route is via an interface guard filters"),
        "{ok:?}"
    );

    in_ns(&ns, &["sysctl", "-q", "-w", "net.ipv4.ip_forward=1"]);
    sh(&[
        "ip",
        "-n",
        &ns.name,
        "addr",
        "add",
        "198.19.2.2/24",
        "dev",
        "gd1",
    ]);
    sh(&[
        "ip",
        "-n",
        &ns.name,
        "route",
        "add",
        "default",
        "via",
        "198.19.2.1",
        "dev",
        "gd1",
        "metric",
        "100",
    ]);
    in_ns(&ns, &["nft", "add", "table", "inet", "gtest"]);
    in_ns(
        &ns,
        &[
            "nft",
            "add",
            "chain",
            "inet",
            "gtest",
            "input",
            "{ type filter hook input priority 0; policy accept; }",
        ],
    );
    in_ns(
        &ns,
        &[
            "nft", "add", "rule", "inet", "gtest", "input", "tcp", "dport", "8080", "drop",
        ],
    );
    in_ns(
        &ns,
        &[
            "iptables", "-A", "INPUT", "-p", "tcp", "--dport", "9090", "-j", "DROP",
        ],
    );

    let out = doctor();
    assert_eq!(out.status.code(), Some(1), "errors exit 1");
    let dirty = json_stdout(&out);
    let warnings = messages(&dirty, &NETWORK, "warning");
    assert!(
        has(&warnings, "net.ipv4.ip_forward = 1, recommended 0"),
        "{warnings:?}"
    );
    assert!(
        has(
            &warnings,
            "2 IPv4 default routes: via gd0 (metric 0), gd1 (metric 100)"
        ),
        "{warnings:?}"
    );
    assert!(
        has(
            &warnings,
            "routes via gd1 (0.0.0.0/0, 198.19.2.0/24), which guard does not filter"
        ),
        "{warnings:?}"
    );
    let errors = messages(&dirty, &NETWORK, "error");
    assert!(
        has(
            &errors,
            "nftables inet gtest input drops tcp 8080, which the policy allows (tcp/8080 by `web`)"
        ),
        "{errors:?}"
    );
    assert!(
        has(&errors, "drops tcp 9090, which the policy allows"),
        "{errors:?}"
    );
    // Each finding carries a fix.
    assert!(
        dirty["findings"]
            .as_array()
            .unwrap()
            .iter()
            .filter(|f| f["severity"] == "error" || f["severity"] == "warning")
            .all(|f| !f["hint"].as_str().unwrap_or("").is_empty())
    );
}

/// The id of a BPF object as `bpftool ... -j` prints it.
fn bpftool(args: &[&str]) -> Value {
    let mut full = vec!["bpftool", "-j"];
    full.extend_from_slice(args);
    serde_json::from_slice(&sh(&full).stdout).expect("bpftool -j prints JSON")
}

#[test]
fn integrity_hooks_and_permissions_with_a_running_daemon() {
    let net = TestNet::new();
    let text = format!(
        "mode = \"enforce\"\ninterfaces = [\"{}\"]\ndefault = \"deny\"\nfailsafe_ports = []\n\
         [[ingress]]\nname = \"web\"\nproto = \"tcp\"\nports = [8080]\nfrom = [\"any\"]\n\
         [health]\ninterval_seconds = 3600\n",
        net.host_if
    );
    // A long [health] interval: the daemon repairs detached links on its ticks, and this
    // test wants to see what the doctor says of one before it is repaired.
    let policy = PolicyFile::new(&text);
    std::fs::set_permissions(&policy.path, std::fs::Permissions::from_mode(0o644)).unwrap();
    let mut daemon = Daemon::start(&["--policy", policy.arg()]);
    let guard_checks = ["integrity", "bpf-hooks", "permissions"];
    let doctor = |daemon: &Daemon| {
        let out = daemon
            .dirs
            .guard()
            .args(["doctor", "--json"])
            .output()
            .expect("run guard doctor");
        json_stdout(&out)
    };

    let clean = doctor(&daemon);
    assert!(
        messages(&clean, &guard_checks, "error").is_empty(),
        "a fresh daemon has no integrity errors: {clean:#}"
    );
    let ok = messages(&clean, &guard_checks, "ok");
    assert!(
        has(
            &ok,
            "the kernel's policy maps hold exactly the running policy"
        ),
        "{ok:?}"
    );
    assert!(
        has(&ok, &format!("XDP on {}: guard's program", net.host_if)),
        "{ok:?}"
    );
    assert!(has(&ok, "is the running policy"), "{ok:?}");
    assert!(has(&ok, "are root-only"), "{ok:?}");
    assert!(
        messages(&clean, &["bpf-hooks"], "warning")
            .iter()
            .all(|w| !w.contains("also runs")),
        "{clean:#}"
    );

    // A policy file anyone can write.
    std::fs::set_permissions(&policy.path, std::fs::Permissions::from_mode(0o666)).unwrap();
    let errors = messages(&doctor(&daemon), &["permissions"], "error");
    assert!(has(&errors, "is writable by every user"), "{errors:?}");
    std::fs::set_permissions(&policy.path, std::fs::Permissions::from_mode(0o644)).unwrap();

    // A pin other users can open.
    let pins = guard::datapath::Pins::new(&daemon.dirs.pin_dir);
    let xdp_pin = pins.link(&guard::datapath::xdp_hook(&net.host_if));
    std::fs::set_permissions(&xdp_pin, std::fs::Permissions::from_mode(0o644)).unwrap();
    let errors = messages(&doctor(&daemon), &["permissions"], "error");
    assert!(has(&errors, "open to other users"), "{errors:?}");
    std::fs::set_permissions(&xdp_pin, std::fs::Permissions::from_mode(0o600)).unwrap();

    // Drift: an entry of the daemon's port map written with bpftool.
    let prog_id =
        bpftool(&["link", "show", "pinned", xdp_pin.to_str().unwrap()])["prog_id"].clone();
    let map_ids = bpftool(&["prog", "show", "id", &prog_id.to_string()])["map_ids"].clone();
    let ports_map = map_ids
        .as_array()
        .unwrap()
        .iter()
        .map(|id| id.to_string())
        .find(|id| bpftool(&["map", "show", "id", id])["name"] == guard_common::maps::PORTS)
        .expect("the daemon's GUARD_PORTS map");
    // Index 7 (tcp port 7 of generation 0) is unused by the policy.
    sh(&[
        "bpftool", "map", "update", "id", &ports_map, "key", "7", "0", "0", "0", "value", "1", "0",
        "0", "0",
    ]);
    let errors = messages(&doctor(&daemon), &["integrity"], "error");
    assert!(
        has(
            &errors,
            "drift: GUARD_PORTS: 1 entry differ from the running policy"
        ),
        "{errors:?}"
    );
    // The fix doctor gives: a restarted daemon loads fresh policy maps.
    daemon.stop();
    daemon.restart();
    let errors = messages(&doctor(&daemon), &["integrity"], "error");
    assert!(errors.is_empty(), "{errors:?}");

    // Another program on the daemon's cgroup hooks: a second copy of guard's programs.
    let mut other = kernel::load(&text);
    other
        .guard
        .attach_cgroup(&daemon.cgroup.path, None)
        .expect("attach a second instance");
    let warnings = messages(&doctor(&daemon), &["bpf-hooks"], "warning");
    assert!(
        has(
            &warnings,
            &format!("hook of {} also runs id", daemon.cgroup.path.display())
        ),
        "{warnings:?}"
    );

    // Guard's XDP link detached, and another XDP program in its place.
    let link = guard::datapath::sys::obj_get(&xdp_pin).unwrap();
    guard::datapath::sys::link_detach(link.as_fd()).expect("BPF_LINK_DETACH");
    let errors = messages(&doctor(&daemon), &["integrity"], "error");
    assert!(
        has(
            &errors,
            &format!("guard's XDP link on {} is detached", net.host_if)
        ),
        "{errors:?}"
    );
    other
        .guard
        .attach(&net.host_if, None)
        .expect("attach another XDP program");
    let out = daemon
        .dirs
        .guard()
        .args(["doctor", "--json"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    let errors = messages(&json_stdout(&out), &["bpf-hooks"], "error");
    assert!(
        has(&errors, &format!("XDP on {} runs id", net.host_if))
            && has(&errors, "which is not guard's"),
        "{errors:?}"
    );
    // The text form says the same, worst first.
    let text = daemon.dirs.guard().arg("doctor").output().unwrap();
    let stdout = String::from_utf8_lossy(&text.stdout);
    assert!(stdout.starts_with("error"), "{stdout}");
    assert!(stdout.contains("fix: "), "{stdout}");
    other.guard.detach_all();
}

#[test]
fn an_identity_server_installation_is_checked_without_a_login() {
    let dirs = guard_tests::Dirs::new();
    let home = std::env::temp_dir().join(guard_tests::unique("guard-is-home-"));
    let conf = home.join("repository/conf");
    std::fs::create_dir_all(&conf).unwrap();
    let doctor = |home: &std::path::Path| {
        let out = dirs
            .guard()
            .args(["doctor", "--json", "--wso2-home"])
            .arg(home)
            .output()
            .expect("run guard doctor");
        (out.status.code(), json_stdout(&out))
    };
    // Not an installation: one clear finding, an error.
    let (code, report) = doctor(&home.join("missing"));
    assert_eq!(code, Some(1));
    let wso2 = messages(&report, &["wso2"], "error");
    assert!(
        has(&wso2, "is not an Identity Server installation"),
        "{report}"
    );
    // The stock configuration of a download.
    std::fs::write(
        conf.join("deployment.toml"),
        "[server]\nhostname = \"localhost\"\n[super_admin]\nusername = \"admin\"\npassword = \"admin\"\n\
         [keystore.primary]\nfile_name = \"wso2carbon.jks\"\npassword = \"wso2carbon\"\n\
         [truststore]\nfile_name = \"client-truststore.jks\"\npassword = \"wso2carbon\"\n",
    )
    .unwrap();
    let (code, report) = doctor(&home);
    assert_eq!(code, Some(1), "errors found");
    let errors = messages(&report, &["credentials"], "error");
    assert!(has(&errors, "default `admin`"), "{report}");
    assert!(has(&errors, "stock keystore wso2carbon.jks"), "{report}");
    assert!(has(&errors, "default `wso2carbon`"), "{report}");
    let warnings = messages(&report, &["wso2"], "warning");
    assert!(has(&warnings, "plain-HTTP transport"), "{report}");
    assert!(has(&warnings, "hostname is `localhost`"), "{report}");
    // A hardened one: no credentials or wso2 finding above ok.
    std::fs::write(
        conf.join("deployment.toml"),
        "[server]\nhostname = \"id.example.com\"\ndisable_admin_services = true\n\
         [super_admin]\nusername = \"ops\"\npassword = \"$secret{admin_password}\"\n\
         [keystore.primary]\nfile_name = \"node1.p12\"\npassword = \"$secret{ks}\"\n\
         [truststore]\nfile_name = \"client-truststore.p12\"\npassword = \"$secret{ts}\"\n\
         [transport.http]\nenabled = false\n",
    )
    .unwrap();
    let (_, report) = doctor(&home);
    for severity in ["error", "warning"] {
        assert!(
            messages(&report, &["credentials", "wso2"], severity).is_empty(),
            "{report}"
        );
    }
    std::fs::remove_dir_all(&home).unwrap();
}

#[test]
fn a_guarded_interface_reports_its_driver_and_a_promiscuous_mode() {
    let net = TestNet::new();
    let dirs = guard_tests::Dirs::new();
    let policy = PolicyFile::new(&format!("interfaces = [\"{}\"]\n", net.host_if));
    let doctor = || {
        let out = dirs
            .guard()
            .args(["doctor", "--json", "--policy", policy.arg()])
            .output()
            .expect("run guard doctor");
        json_stdout(&out)
    };
    let report = doctor();
    let info = messages(&report, &["firmware"], "info");
    assert!(
        has(&info, &format!("{}: driver veth", net.host_if)),
        "ethtool's driver info: {report}"
    );
    assert!(
        messages(&report, &["firmware"], "warning").is_empty(),
        "{report}"
    );
    sh(&["ip", "link", "set", &net.host_if, "promisc", "on"]);
    let report = doctor();
    assert!(
        has(
            &messages(&report, &["firmware"], "warning"),
            &format!("{} is in promiscuous mode", net.host_if)
        ),
        "{report}"
    );
}
