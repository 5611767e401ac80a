//! Tier 3: observability. `/metrics` against the kernel counters and `promtool`, `/health`
//! flipping with a declared listener and with an injected RTT anomaly (a `tc tbf` rate limit
//! on the test veth: this kernel has no netem), log files with retention and bounded volume
//! under a SYN flood, and `guard stats --watch --json`. Real sockets, a veth into a test
//! namespace, the daemon's own cgroup.

use std::{
    io::{Read as _, Write as _},
    net::{SocketAddr, TcpListener, TcpStream},
    process::{Command, Stdio},
    sync::{
        Arc,
        atomic::{AtomicBool, Ordering},
    },
    thread,
    time::{Duration, Instant},
};

use guard_tests::{Daemon, PolicyFile, TestNet, policies};

fn base_policy(net: &TestNet, allowed: u16, extra: &str) -> String {
    policies::head(&net.host_if, "enforce", "deny")
        + &policies::allow("web", "tcp", &[allowed])
        + extra
}

/// The value of the sample `name{labels}` (labels as the encoder writes them).
fn sample(metrics: &str, series: &str) -> Option<f64> {
    metrics.lines().find_map(|l| {
        let (name, value) = l.rsplit_once(' ')?;
        (name == series).then(|| value.parse().ok())?
    })
}

/// Accepts and holds connections until dropped.
fn accept_all(listener: TcpListener) -> Arc<AtomicBool> {
    let stop = Arc::new(AtomicBool::new(false));
    let flag = stop.clone();
    listener.set_nonblocking(true).unwrap();
    thread::spawn(move || {
        let mut held = Vec::new();
        while !flag.load(Ordering::Relaxed) {
            match listener.accept() {
                Ok((s, _)) => held.push(s),
                Err(_) => thread::sleep(Duration::from_millis(5)),
            }
        }
    });
    stop
}

#[test]
fn metrics_equal_the_kernel_counters_and_pass_promtool() {
    let net = TestNet::new();
    let listener = TcpListener::bind((net.host_ip, 0)).unwrap();
    let allowed = listener.local_addr().unwrap();
    let stop = accept_all(listener);
    let denied = SocketAddr::from((net.host_ip, allowed.port() + 1));
    let policy = PolicyFile::new(&base_policy(&net, allowed.port(), ""));
    let daemon = Daemon::start(&["--policy", policy.arg()]);

    for _ in 0..3 {
        net.connect(allowed, Duration::from_secs(2))
            .expect("allowed port");
    }
    for _ in 0..2 {
        assert_eq!(
            net.connect(denied, Duration::from_millis(200)),
            Err(std::io::ErrorKind::TimedOut)
        );
    }
    let (code, metrics) = daemon.http_get("/metrics");
    let stats = daemon.dirs.stats();
    stop.store(true, Ordering::Relaxed);
    assert_eq!(code, 200, "{metrics}");

    // Every rule and port counter equals what `guard stats` read from the same maps.
    for rule in stats["rules"].as_array().unwrap() {
        for (field, metric) in [
            ("packets", "guard_rule_packets_total"),
            ("bytes", "guard_rule_bytes_total"),
        ] {
            let series = format!(
                "{metric}{{rule=\"{}\",action=\"{}\"}}",
                rule["rule"].as_str().unwrap(),
                rule["action"].as_str().unwrap()
            );
            assert_eq!(
                sample(&metrics, &series),
                rule[field].as_u64().map(|v| v as f64),
                "{series}\n{metrics}"
            );
        }
    }
    for port in stats["ports"].as_array().unwrap() {
        for (field, metric) in [
            ("attempted", "guard_connections_attempted_total"),
            ("rejected", "guard_connections_rejected_total"),
        ] {
            let series = format!(
                "{metric}{{proto=\"{}\",port=\"{}\"}}",
                port["proto"].as_str().unwrap(),
                port["port"].as_str().unwrap()
            );
            assert_eq!(
                sample(&metrics, &series),
                port[field].as_u64().map(|v| v as f64),
                "{series}"
            );
        }
    }
    // And the counts are the traffic sent: 3 SYNs to the allowed port, both denied SYNs
    // rejected under `other` (a SYN retransmit would add, never remove).
    let port = allowed.port();
    assert_eq!(
        sample(
            &metrics,
            &format!("guard_connections_attempted_total{{proto=\"tcp\",port=\"{port}\"}}")
        ),
        Some(3.0)
    );
    let rejected = sample(
        &metrics,
        "guard_connections_rejected_total{proto=\"tcp\",port=\"other\"}",
    )
    .unwrap();
    assert!(rejected >= 2.0, "{rejected}");
    assert_eq!(sample(&metrics, "guard_enforcing"), Some(1.0));
    assert_eq!(sample(&metrics, "guard_policy_generation"), Some(1.0));
    assert_eq!(
        sample(&metrics, "guard_policy_reloads_total{result=\"applied\"}"),
        Some(1.0)
    );
    for gauge in [
        "guard_host_memory_available_bytes",
        "guard_host_cpus",
        "process_resident_memory_bytes",
        "process_open_fds",
    ] {
        assert!(
            sample(&metrics, gauge).is_some_and(|v| v > 0.0),
            "{gauge} in\n{metrics}"
        );
    }

    // The exposition is valid Prometheus text format.
    let mut promtool = Command::new("promtool")
        .args(["check", "metrics"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("promtool (Debian package `prometheus`; `cargo xtask setup` installs it)");
    promtool
        .stdin
        .take()
        .unwrap()
        .write_all(metrics.as_bytes())
        .unwrap();
    let out = promtool.wait_with_output().unwrap();
    assert!(
        out.status.success(),
        "promtool check metrics: {}{}\n{metrics}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

#[test]
fn health_flips_when_a_declared_listener_stops_and_returns() {
    let net = TestNet::new();
    let listener = TcpListener::bind((net.host_ip, 0)).unwrap();
    let port = listener.local_addr().unwrap().port();
    let policy = PolicyFile::new(&base_policy(
        &net,
        port,
        // A long interval: no tick repairs the link this test detaches.
        &format!("[health]\ntcp = [{port}]\ninterval_seconds = 3600\n"),
    ));
    let daemon = Daemon::start(&["--policy", policy.arg()]);

    let (code, body) = daemon.http_get("/health");
    assert_eq!(code, 200, "{body}");
    let v: serde_json::Value = serde_json::from_str(&body).unwrap();
    assert_eq!(v["status"], "ok");

    drop(listener);
    let (code, body) = daemon.http_get("/health");
    assert_eq!(code, 503, "{body}");
    let v: serde_json::Value = serde_json::from_str(&body).unwrap();
    assert_eq!(v["status"], "unhealthy");
    assert_eq!(
        v["reasons"][0],
        format!("tcp/{port} has no listener"),
        "{body}"
    );

    let _back = TcpListener::bind((net.host_ip, port)).unwrap();
    let (code, body) = daemon.http_get("/health");
    assert_eq!(code, 200, "{body}");

    // Enforcement gone (its XDP link detached behind the daemon's back): unhealthy.
    let pins = guard::datapath::Pins::new(&daemon.dirs.pin_dir);
    let link = guard::datapath::sys::obj_get(&pins.link(&guard::datapath::xdp_hook(&net.host_if)))
        .unwrap();
    guard::datapath::sys::link_detach(std::os::fd::AsFd::as_fd(&link)).expect("BPF_LINK_DETACH");
    let (code, body) = daemon.http_get("/health");
    assert_eq!(code, 503, "{body}");
    assert!(body.contains("enforcement is not active"), "{body}");
    let (_, metrics) = daemon.http_get("/metrics");
    assert_eq!(sample(&metrics, "guard_enforcing"), Some(0.0));
}

/// Request/response exchanges from the namespace to `to`, each answer `size` bytes, until
/// `stop`.
fn exchange_until(net: &TestNet, to: SocketAddr, size: usize, until: Instant) {
    net.ns.run(|| {
        let mut s = TcpStream::connect_timeout(&to, Duration::from_secs(2)).expect("connect");
        s.set_nodelay(true).unwrap();
        s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
        let mut buf = vec![0u8; size];
        while Instant::now() < until {
            s.write_all(&(size as u32).to_be_bytes()).unwrap();
            s.read_exact(&mut buf).unwrap();
        }
    });
}

#[test]
fn an_rtt_anomaly_fires_the_detector_and_health_goes_unhealthy() {
    let net = TestNet::new();
    let policy_text = |port: u16| {
        base_policy(
            &net,
            port,
            "[health]\ninterval_seconds = 1\nrtt_factor = 4\nrtt_min_samples = 5\n",
        )
    };
    let first = PolicyFile::new(&policy_text(1));
    let daemon = Daemon::start(&["--policy", first.arg()]);
    // The server's socket is created in the guarded cgroup, so sock_ops measures its RTT.
    let listener = daemon
        .cgroup
        .run(|| TcpListener::bind((net.host_ip, 0)).unwrap());
    let server = listener.local_addr().unwrap();
    std::fs::write(&first.path, policy_text(server.port())).unwrap();
    let out = daemon
        .dirs
        .guard()
        .args(["apply", first.arg()])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    thread::spawn(move || {
        for stream in listener.incoming() {
            let Ok(mut s) = stream else { return };
            thread::spawn(move || {
                s.set_nodelay(true).unwrap();
                let mut len = [0u8; 4];
                while s.read_exact(&mut len).is_ok() {
                    let reply = vec![7u8; u32::from_be_bytes(len) as usize];
                    if s.write_all(&reply).is_err() {
                        return;
                    }
                }
            });
        }
    });

    // Baseline: small answers, back to back, for 5 windows.
    exchange_until(&net, server, 100, Instant::now() + Duration::from_secs(5));
    let (code, body) = daemon.http_get("/health");
    assert_eq!(code, 200, "a steady RTT is healthy: {body}");

    // The anomaly: the host's side of the veth limited to 1 Mbit/s, so each 8 KB answer
    // queues for tens of milliseconds.
    let tc = |args: &[&str]| {
        let out = Command::new("tc").args(args).output().unwrap();
        assert!(
            out.status.success(),
            "tc {args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    };
    tc(&[
        "qdisc",
        "add",
        "dev",
        &net.host_if,
        "root",
        "tbf",
        "rate",
        "1mbit",
        "burst",
        "1600",
        "limit",
        "200000",
    ]);
    let deadline = Instant::now() + Duration::from_secs(15);
    let mut fired = None;
    while Instant::now() < deadline {
        exchange_until(
            &net,
            server,
            8000,
            Instant::now() + Duration::from_millis(1500),
        );
        let (code, body) = daemon.http_get("/health");
        if code == 503 {
            fired = Some(body);
            break;
        }
    }
    let body = fired.unwrap_or_else(|| {
        panic!(
            "the RTT detector did not fire:\n{}\n{}",
            daemon.dirs.stats(),
            daemon.log_text()
        )
    });
    eprintln!("health with the rate limit: {body}");
    let v: serde_json::Value = serde_json::from_str(&body).unwrap();
    assert_eq!(v["anomalies"][0]["detector"], "rtt", "{body}");
    assert_eq!(
        v["anomalies"][0]["subject"],
        format!("tcp/{} inbound", server.port())
    );
    let (_, metrics) = daemon.http_get("/metrics");
    assert_eq!(
        sample(&metrics, "guard_anomalies_total{detector=\"rtt\"}"),
        Some(1.0),
        "{metrics}"
    );
    assert!(
        daemon.log_text().contains("kind=\"anomaly\""),
        "the anomaly is logged:\n{}",
        daemon.log_text()
    );

    // Back to normal: the detector clears.
    tc(&["qdisc", "del", "dev", &net.host_if, "root"]);
    let deadline = Instant::now() + Duration::from_secs(15);
    loop {
        exchange_until(
            &net,
            server,
            100,
            Instant::now() + Duration::from_millis(1500),
        );
        let (code, _) = daemon.http_get("/health");
        if code == 200 {
            break;
        }
        assert!(Instant::now() < deadline, "the RTT detector did not clear");
    }
}

#[test]
fn log_files_keep_n_and_a_syn_flood_logs_a_bounded_volume() {
    let net = TestNet::new();
    let dir = std::env::temp_dir().join(format!("guard-logs-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    for day in 1..=5 {
        std::fs::write(dir.join(format!("guard.2026-01-0{day}.log")), "{}\n").unwrap();
    }
    std::fs::write(dir.join("unrelated.txt"), "kept").unwrap();
    let listener = TcpListener::bind((net.host_ip, 0)).unwrap();
    let denied = SocketAddr::from((net.host_ip, listener.local_addr().unwrap().port() + 1));
    let policy = PolicyFile::new(&base_policy(
        &net,
        listener.local_addr().unwrap().port(),
        "[events]\nrate_per_second = 1\nburst = 3\n",
    ));
    let daemon = Daemon::start(&[
        "--policy",
        policy.arg(),
        "--log-dir",
        dir.to_str().unwrap(),
        "--log-keep",
        "3",
    ]);
    let logs = || {
        let mut names: Vec<String> = std::fs::read_dir(&dir)
            .unwrap()
            .flatten()
            .map(|e| e.file_name().to_string_lossy().into_owned())
            .filter(|n| n.starts_with("guard.") && n.ends_with(".log"))
            .collect();
        names.sort();
        names
    };
    let kept = logs();
    assert_eq!(kept.len(), 3, "retention keeps 3 files: {kept:?}");
    assert!(
        dir.join("unrelated.txt").exists(),
        "other files are left alone"
    );

    // A SYN flood of 60 attempts to a denied port from one source.
    for _ in 0..60 {
        let _ = net.connect(denied, Duration::from_millis(20));
    }
    let stats = daemon.dirs.stats();
    let sent = stats["events"]["sent"].as_u64().unwrap();
    let suppressed = stats["events"]["suppressed"].as_u64().unwrap();
    assert!(sent <= 10, "the per-source limit bounds events: {stats}");
    assert!(
        suppressed >= 45,
        "the rest are counted as suppressed: {stats}"
    );

    // The current file holds JSON lines: the policy change and at most `sent` drops.
    thread::sleep(Duration::from_millis(500));
    let current = dir.join(logs().last().unwrap());
    let text = std::fs::read_to_string(&current).unwrap();
    let records: Vec<serde_json::Value> = text
        .lines()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("{e}: {l}")))
        .collect();
    assert!(
        records.iter().any(|r| r["kind"] == "policy_applied"),
        "{text}"
    );
    let drops = records.iter().filter(|r| r["kind"] == "drop").count() as u64;
    assert!(drops <= sent, "{drops} drop records for {sent} events");
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn stats_watch_json_prints_rates() {
    let net = TestNet::new();
    let listener = TcpListener::bind((net.host_ip, 0)).unwrap();
    let allowed = listener.local_addr().unwrap();
    let stop = accept_all(listener);
    let policy = PolicyFile::new(&base_policy(&net, allowed.port(), ""));
    let daemon = Daemon::start(&["--policy", policy.arg()]);
    let watch = daemon
        .dirs
        .guard()
        .args([
            "stats",
            "--watch",
            "--json",
            "--interval",
            "0.5",
            "--count",
            "3",
        ])
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let started = Instant::now();
    while started.elapsed() < Duration::from_millis(1200) {
        let _ = net.connect(allowed, Duration::from_millis(500));
        thread::sleep(Duration::from_millis(50));
    }
    let out = watch.wait_with_output().unwrap();
    stop.store(true, Ordering::Relaxed);
    assert!(out.status.success());
    let lines: Vec<serde_json::Value> = String::from_utf8_lossy(&out.stdout)
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(lines.len(), 3, "{lines:?}");
    let web_rate = |v: &serde_json::Value| {
        v["rules"]
            .as_array()
            .unwrap()
            .iter()
            .find(|r| r["rule"] == "web")
            .unwrap()["packets_per_second"]
            .as_f64()
            .unwrap()
    };
    assert!(
        lines.iter().any(|l| web_rate(l) > 0.0),
        "traffic shows as a rate: {lines:?}"
    );
    assert!(
        lines
            .iter()
            .all(|l| l["interval_seconds"].as_f64().unwrap() >= 0.4)
    );
}

/// A small tmpfs the test mounts (and unmounts on drop): a disk that fills.
struct SmallDisk(std::path::PathBuf);

impl SmallDisk {
    fn new(kib: u32) -> Self {
        let dir = std::env::temp_dir().join(guard_tests::unique("guard-smalldisk-"));
        std::fs::create_dir_all(&dir).unwrap();
        let out = std::process::Command::new("mount")
            .args(["-t", "tmpfs", "-o", &format!("size={kib}k"), "tmpfs"])
            .arg(&dir)
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "mount tmpfs: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        Self(dir)
    }

    /// Fills the disk with a file; returns its path.
    fn fill(&self) -> std::path::PathBuf {
        let filler = self.0.join("filler");
        let mut f = std::fs::File::create(&filler).unwrap();
        let block = vec![0u8; 4096];
        while std::io::Write::write_all(&mut f, &block).is_ok() {}
        filler
    }
}

impl Drop for SmallDisk {
    fn drop(&mut self) {
        let _ = std::process::Command::new("umount").arg(&self.0).status();
        let _ = std::fs::remove_dir(&self.0);
    }
}

/// Issue K-10: a full log disk is not silent. Failed writes are counted
/// (`guard_log_write_errors_total`), `/health` says the audit trail has a gap, and when
/// space returns the log goes on with whole JSON lines.
#[test]
fn a_full_log_disk_is_reported_and_recovers() {
    let net = TestNet::new();
    let disk = SmallDisk::new(256);
    let listener = TcpListener::bind((net.host_ip, 0)).unwrap();
    let denied = SocketAddr::from((net.host_ip, listener.local_addr().unwrap().port() + 1));
    let policy = PolicyFile::new(&base_policy(
        &net,
        listener.local_addr().unwrap().port(),
        "[events]\nrate_per_second = 1000\nburst = 1000\n",
    ));
    let daemon = Daemon::start(&[
        "--policy",
        policy.arg(),
        "--log-dir",
        disk.0.to_str().unwrap(),
    ]);
    let (code, body) = daemon.http_get("/health");
    assert_eq!(code, 200, "{body}");
    let filler = disk.fill();
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let _ = net.connect(denied, Duration::from_millis(20));
        let (code, body) = daemon.http_get("/health");
        if code == 503 {
            assert!(
                body.contains("the log files are not being written"),
                "{body}"
            );
            assert!(body.contains("No space left on device"), "{body}");
            break;
        }
        assert!(
            Instant::now() < deadline,
            "a full log disk never showed: {body}"
        );
    }
    let (_, metrics) = daemon.http_get("/metrics");
    assert!(
        sample(&metrics, "guard_log_write_errors_total").is_some_and(|n| n >= 1.0),
        "{metrics}"
    );
    // Space again: the next records are written, health is ok.
    std::fs::remove_file(filler).unwrap();
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let _ = net.connect(denied, Duration::from_millis(20));
        let (code, body) = daemon.http_get("/health");
        if code == 200 {
            break;
        }
        assert!(Instant::now() < deadline, "never recovered: {body}");
    }
    thread::sleep(Duration::from_millis(300));
    let file = std::fs::read_dir(&disk.0)
        .unwrap()
        .flatten()
        .find(|e| e.file_name().to_string_lossy().starts_with("guard."))
        .expect("a log file");
    let text = std::fs::read_to_string(file.path()).unwrap();
    let bad: Vec<&str> = text
        .lines()
        .filter(|l| !l.is_empty() && serde_json::from_str::<serde_json::Value>(l).is_err())
        .collect();
    assert!(
        bad.len() <= 1,
        "at most the one line the full disk cut: {bad:?}"
    );
    let last = text.lines().rfind(|l| !l.is_empty()).unwrap();
    assert!(
        serde_json::from_str::<serde_json::Value>(last).is_ok(),
        "{last}"
    );
}
