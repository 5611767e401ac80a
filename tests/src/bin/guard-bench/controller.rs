//! The controller: `guard apply` wall time (the CLI process, from its start until it returns,
//! which is once every hook runs the new policy) next to `guard check` of the same file, for
//! a genuinely different 10 000-rule policy each time, a one-rule change, and 100 000
//! rules; a 1 000 000-rule policy through the file watch (larger than the control socket
//! takes); the daemon's peak memory per rule; its RSS and idle CPU with 10 000 rules.

use std::{
    fmt::Write as _,
    path::Path,
    process::Command,
    time::{Duration, Instant},
};

use guard_tests::{Daemon, PolicyFile, TestNet, guard_bin};

use crate::{Paired, median};

/// Applies (and checks) per figure; the medians are reported.
const RUNS: usize = 9;

/// A policy of `n` zone rules on the test interface, variant `k`: each variant names other
/// ports (1000 of them from `1000 + 1000 * (k % 50)`), other sources (/24s under
/// `10.(k % 200)`) and other rule names, so that applying variant k+1 over variant k
/// rewrites every entry of the policy maps.
pub fn policy(iface: &str, n: usize, k: usize) -> String {
    let mut s = String::with_capacity(n * 100);
    let _ = write!(
        s,
        "mode = \"enforce\"\ninterfaces = [\"{iface}\"]\ndefault = \"allow\"\nfailsafe_ports = []\n[events]\nrate_per_second = 0\n"
    );
    let first_port = 1000 + 1000 * (k % 50);
    for i in 0..n {
        let block = i / 1000;
        let _ = write!(
            s,
            "[[ingress]]\nname = \"v{k}r{i}\"\nproto = \"tcp\"\nports = [{}]\nfrom = [\"10.{}.{}.{}/32\"]\n",
            first_port + i % 1000,
            k % 200,
            block / 256 % 256,
            block % 256,
        );
    }
    s
}

/// Wall time of one run of the CLI (ms); panics with its output when it fails.
fn cli_ms(daemon: &Daemon, args: &[&str]) -> f64 {
    let started = Instant::now();
    let out = daemon.dirs.guard().args(args).output().expect("guard");
    let ms = started.elapsed().as_secs_f64() * 1e3;
    assert!(
        out.status.success(),
        "guard {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    ms
}

fn check_ms(file: &Path) -> f64 {
    let started = Instant::now();
    let out = Command::new(guard_bin())
        .arg("check")
        .arg(file)
        .output()
        .expect("guard check");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    started.elapsed().as_secs_f64() * 1e3
}

/// The map writes of the daemon's last `policy_applied` event.
fn last_map_writes(daemon: &Daemon) -> u64 {
    let reply = guard::api::ctl::call(
        &daemon.dirs.run_dir,
        &guard::api::ctl::Request::Events { since: 0 },
        Duration::from_secs(10),
    )
    .expect("events");
    let events = reply.data.expect("events data");
    events["events"]
        .as_array()
        .into_iter()
        .flatten()
        .rfind(|e| e["kind"] == "policy_applied")
        .and_then(|e| e["map_writes"].as_u64())
        .unwrap_or(0)
}

/// A field of `guard status`; `Null` while the daemon is too busy to answer (applying).
fn status_field(daemon: &Daemon, field: &str) -> serde_json::Value {
    guard::api::ctl::call(
        &daemon.dirs.run_dir,
        &guard::api::ctl::Request::Status {},
        Duration::from_secs(10),
    )
    .ok()
    .and_then(|reply| reply.data)
    .map_or(serde_json::Value::Null, |data| data[field].clone())
}

fn proc_kib(pid: u32, field: &str) -> f64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with(field))
                .and_then(|l| l.split_whitespace().nth(1)?.parse::<f64>().ok())
        })
        .unwrap_or(0.0)
}

fn cpu_ticks(pid: u32) -> u64 {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    let fields: Vec<&str> = stat
        .rsplit(')')
        .next()
        .unwrap_or("")
        .split_whitespace()
        .collect();
    // utime and stime: fields 14 and 15 of the whole line, 12 and 13 after the comm.
    let field = |i: usize| {
        fields
            .get(i)
            .and_then(|v| v.parse::<u64>().ok())
            .unwrap_or(0)
    };
    field(11) + field(12)
}

/// One apply figure: the apply and `guard check` of the same files, medians, and each
/// apply's ratio to the check of its own file just before it.
pub struct Apply {
    pub what: String,
    pub apply_ms: f64,
    pub check_ms: f64,
    pub ratio: Paired,
    pub map_writes: u64,
}

pub struct Controller {
    pub applies: Vec<Apply>,
    /// A million rules through the file watch: from the rename until the daemon reports
    /// the new generation (ms), `guard check` of the same file, and the daemon's peak RSS
    /// per rule (bytes).
    pub million_ms: f64,
    pub million_check_ms: f64,
    pub million_bytes: usize,
    pub million_peak_bytes_per_rule: f64,
    pub rss_10k_mib: f64,
    pub idle_cpu_percent: f64,
}

fn apply_series(daemon: &Daemon, what: &str, files: impl Iterator<Item = PolicyFile>) -> Apply {
    let (mut applies, mut checks, mut writes) = (Vec::new(), Vec::new(), Vec::new());
    for file in files {
        checks.push(check_ms(&file.path));
        applies.push(cli_ms(daemon, &["apply", file.arg()]));
        writes.push(last_map_writes(daemon) as f64);
    }
    Apply {
        what: what.to_owned(),
        ratio: Paired::of(&applies, &checks),
        apply_ms: median(&mut applies),
        check_ms: median(&mut checks),
        map_writes: median(&mut writes) as u64,
    }
}

pub fn run() -> Controller {
    let net = TestNet::new();
    let iface = net.host_if.clone();
    let start = PolicyFile::new(&policy(&iface, 10_000, 0));
    let mut daemon = Daemon::start(&["--policy", start.arg()]);
    let mut applies = Vec::new();
    // A different 10K-rule policy each time: every entry rewritten.
    applies.push(apply_series(
        &daemon,
        "10 000 rules, a different policy each time",
        (1..=RUNS).map(|k| PolicyFile::new(&policy(&iface, 10_000, k))),
    ));
    // One rule more each time: every apply adds one rule to the running policy (and, in the
    // generation it writes, two since that generation's last policy).
    let mut grown = policy(&iface, 10_000, RUNS);
    applies.push(apply_series(
        &daemon,
        "10 000 rules, one rule added",
        (0..RUNS).map(|i| {
            let _ = write!(
                grown,
                "[[ingress]]\nname = \"extra{i}\"\nproto = \"tcp\"\nports = [{}]\n",
                100 + i
            );
            PolicyFile::new(&grown)
        }),
    ));
    let pid = daemon.pid();
    let rss_10k_mib = proc_kib(pid, "VmRSS:") / 1024.0;
    // SAFETY: sysconf has no preconditions.
    let hz = unsafe { libc::sysconf(libc::_SC_CLK_TCK) } as f64;
    let (t0, c0) = (Instant::now(), cpu_ticks(pid));
    std::thread::sleep(Duration::from_secs(5));
    let idle_cpu_percent = (cpu_ticks(pid) - c0) as f64 / hz / t0.elapsed().as_secs_f64() * 100.0;
    applies.push(apply_series(
        &daemon,
        "100 000 rules, a different policy each time",
        (RUNS + 1..=RUNS + 3).map(|k| PolicyFile::new(&policy(&iface, 100_000, k))),
    ));
    daemon.stop();
    drop(daemon);

    // A million rules: more text than the control socket takes, so through the file watch
    // of a daemon started on a small policy.
    let watched = PolicyFile::new(&policy(&iface, 10, 0));
    let daemon = Daemon::start(&["--policy", watched.arg()]);
    let million = policy(&iface, 1_000_000, 7);
    let staged = watched.path.with_extension("next");
    std::fs::write(&staged, &million).expect("write the 1M-rule policy");
    let million_check_ms = check_ms(&staged);
    let generation = status_field(&daemon, "generation").as_u64().unwrap_or(0);
    let started = Instant::now();
    std::fs::rename(&staged, &watched.path).expect("rename");
    loop {
        if status_field(&daemon, "generation").as_u64().unwrap_or(0) > generation {
            break;
        }
        assert!(
            started.elapsed() < Duration::from_secs(600),
            "the 1M-rule policy was not applied in 10 minutes:\n{}",
            daemon.log_text()
        );
        std::thread::sleep(Duration::from_millis(10));
    }
    let million_ms = started.elapsed().as_secs_f64() * 1e3;
    let peak = proc_kib(daemon.pid(), "VmHWM:") * 1024.0;
    Controller {
        applies,
        million_ms,
        million_check_ms,
        million_bytes: million.len(),
        million_peak_bytes_per_rule: peak / 1e6,
        rss_10k_mib,
        idle_cpu_percent,
    }
}

pub fn report(md: &mut String, c: &Controller) {
    let verdict = crate::verdict;
    let _ = writeln!(md, "## Controller\n");
    let _ = writeln!(
        md,
        "A daemon on a test veth and cgroup. `guard apply FILE` is timed as the CLI process, \
         from its start until it returns (once every hook runs the new policy), next to \
         `guard check FILE` of the same file just before it, {RUNS} files (3 for 100 000 \
         rules), and the medians. The ratio is the median of each apply's ratio to its own \
         check, with their spread: a moment of machine noise then hits one pair, not one \
         column. Each \"different policy\" names other ports, sources and rule names than the \
         one before, so every entry of the policy maps is rewritten (map writes, from the \
         daemon's `policy_applied` event).\n"
    );
    let _ = writeln!(
        md,
        "| apply | guard apply | guard check | apply / check (target <= 1.5x) | map writes | |"
    );
    let _ = writeln!(md, "| --- | ---: | ---: | ---: | ---: | --- |");
    for a in &c.applies {
        let _ = writeln!(
            md,
            "| {} | {:.0} ms | {:.0} ms | {:.2}x ({:.2}-{:.2}x) | {} | {} |",
            a.what,
            a.apply_ms,
            a.check_ms,
            a.ratio.median,
            a.ratio.low,
            a.ratio.high,
            a.map_writes,
            verdict(a.ratio.median <= 1.5)
        );
    }
    let _ = writeln!(
        md,
        "\nA policy of 1 000 000 rules ({:.0} MB of TOML) is larger than the control socket \
         takes (16 MiB), so it goes through the file watch: {:.1} s from the rename until the \
         daemon reports the new generation, next to {:.1} s for `guard check` of the file. The \
         daemon's peak RSS (VmHWM) with it: {:.0} bytes per rule (target <= 1 KiB: {}).\n",
        c.million_bytes as f64 / 1e6,
        c.million_ms / 1e3,
        c.million_check_ms / 1e3,
        c.million_peak_bytes_per_rule,
        verdict(c.million_peak_bytes_per_rule <= 1024.0)
    );
    let _ = writeln!(
        md,
        "With 10 000 rules the daemon's RSS is {:.1} MiB and its idle CPU {:.2} % (over 5 s).\n",
        c.rss_10k_mib, c.idle_cpu_percent
    );
}
