//! `cargo xtask bench`: per-packet cost of guard's XDP program under BPF_PROG_TEST_RUN,
//! against an empty XDP program (the floor) and Debian's xdp-filter on the same packets, in
//! one run. Writes BENCHMARKS.md. A benchmark, not a test: it reports, it asserts nothing.
//!
//! Usage: guard-bench [OUTPUT.md]  (root)

use std::{fmt::Write as _, net::Ipv4Addr, time::Instant};

use guard_tests::{kernel::load, require_root};

mod controller;
mod flood;
mod xdp;

/// Rounds of each measurement (the median is reported).
const ROUNDS: usize = 11;

fn median(v: &mut [f64]) -> f64 {
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

fn sh(args: &[&str]) -> String {
    String::from_utf8_lossy(&guard_tests::sh(args).stdout).into_owned()
}

/// Nanoseconds per call of `f`, over `n` calls.
fn per_call(n: u32, mut f: impl FnMut()) -> f64 {
    let started = Instant::now();
    for _ in 0..n {
        f();
    }
    started.elapsed().as_nanos() as f64 / f64::from(n)
}

struct Sockets {
    connect_without: f64,
    connect_with: f64,
    bind_without: f64,
    bind_with: f64,
    /// Percent, the median over the rounds of each round's with/without ratio.
    connect_overhead: f64,
    bind_overhead: f64,
}

/// Each round's ratio of a figure to its base measured in the same round (a drift of the
/// machine's speed between rounds cancels out): the median over the rounds, and the spread
/// (the second lowest and the second highest).
#[derive(Clone, Copy, Debug)]
pub struct Paired {
    pub low: f64,
    pub median: f64,
    pub high: f64,
}

impl Paired {
    /// `values[i] / base[i]` over the rounds `i`; at least one round.
    pub fn of(values: &[f64], base: &[f64]) -> Self {
        let mut ratios: Vec<f64> = values.iter().zip(base).map(|(v, b)| v / b).collect();
        let median = median(&mut ratios);
        let n = ratios.len();
        Self {
            low: ratios[1.min(n - 1)],
            median,
            high: ratios[n.saturating_sub(2)],
        }
    }

    /// The median as an overhead in percent (`with` against `without`).
    fn overhead_percent(self) -> f64 {
        (self.median - 1.0) * 100.0
    }
}

/// connect()+close() and bind()+close() on loopback from a test cgroup, without and with
/// guard's cgroup programs attached there (1000 egress rules covering the port but not
/// loopback, so every connect takes the lookup path and is allowed), rounds alternating
/// which goes first: the sockets each round leaves in TIME_WAIT make the next connects'
/// port search a little slower, which would otherwise always count against the second.
fn sockets() -> Sockets {
    const CONNECTS: u32 = 1000;
    const BINDS: u32 = 10_000;
    let cgroup = guard_tests::Cgroup::new();
    let listener = std::net::TcpListener::bind((Ipv4Addr::LOCALHOST, 0)).unwrap();
    let target = listener.local_addr().unwrap();
    std::thread::spawn(move || {
        for s in listener.incoming() {
            drop(s);
        }
    });
    let bind_port = std::net::UdpSocket::bind((Ipv4Addr::LOCALHOST, 0))
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let mut text = format!(
        "mode = \"enforce\"\ninterfaces = [\"unused0\"]\n[events]\nrate_per_second = 0\n[listen]\nallow = [{bind_port}]\n"
    );
    for i in 0..1000u32 {
        let port = if i == 0 {
            target.port()
        } else {
            20_000 + (i % 1000) as u16
        };
        let _ = write!(
            text,
            "[[egress]]\nname = \"e{i}\"\nproto = \"tcp\"\nports = [{port}]\nto = [\"10.{}.{}.0/24\"]\naction = \"deny\"\n",
            i / 256,
            i % 256
        );
    }
    let mut g = load(&text);
    let connect = || {
        drop(std::net::TcpStream::connect(target).expect("connect"));
    };
    let bind = || {
        drop(std::net::UdpSocket::bind((Ipv4Addr::LOCALHOST, bind_port)).expect("bind"));
    };
    let (mut cw, mut cg, mut bw, mut bg) = (Vec::new(), Vec::new(), Vec::new(), Vec::new());
    cgroup.run(|| {
        per_call(CONNECTS / 2, connect);
        for round in 0..SOCKET_ROUNDS {
            for with_guard in [round % 2 == 1, round % 2 == 0] {
                if with_guard {
                    g.guard
                        .attach_cgroup(&cgroup.path, None)
                        .expect("attach to the bench cgroup");
                    cg.push(per_call(CONNECTS, connect));
                    bg.push(per_call(BINDS, bind));
                    g.guard.detach_all();
                } else {
                    cw.push(per_call(CONNECTS, connect));
                    bw.push(per_call(BINDS, bind));
                }
            }
        }
    });
    Sockets {
        connect_overhead: Paired::of(&cg, &cw).overhead_percent(),
        bind_overhead: Paired::of(&bg, &bw).overhead_percent(),
        connect_without: median(&mut cw),
        connect_with: median(&mut cg),
        bind_without: median(&mut bw),
        bind_with: median(&mut bg),
    }
}

fn machine() -> String {
    let cpu = std::fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|c| {
            c.lines()
                .find(|l| l.starts_with("model name"))
                .map(|l| l.split(':').nth(1).unwrap_or("").trim().to_owned())
        })
        .unwrap_or_else(|| "unknown CPU".into());
    let kernel = sh(&["uname", "-r"]).trim().to_owned();
    let cores = std::thread::available_parallelism().map_or(0, |n| n.get());
    format!("{cpu}, {cores} cores, kernel {kernel}")
}

fn verdict(ok: bool) -> &'static str {
    if ok { "met" } else { "NOT met" }
}

/// The per-packet section of BENCHMARKS.md.
fn xdp_report(md: &mut String, rows: &[xdp::Row]) {
    use xdp::Path;
    let _ = writeln!(
        md,
        "## Per packet (XDP)\n\nBPF_PROG_TEST_RUN, median of {ROUNDS} rounds of {} runs; in each \
         round every case below runs once, interleaved, so machine noise hits them alike: the \
         floor (an empty XDP program: the cost of BPF_PROG_TEST_RUN itself), guard with events \
         at their defaults (5 per second per source, burst 10) and with events off, and \
         Debian's xdp-filter (deny policy, port 80 allowed) on the same packet. Frames: 64 \
         bytes for IPv4, the bare headers for IPv6. Policies: an any-source rule on TCP 80 and \
         N zone rules on ports 2000-2999, each from a /24 and a /48; default deny. The flood \
         packets come from one source in no zone, again and again, as a flood does: events \
         on, that source is past its rate limit after its burst and its CPU past its event \
         budget. All figures in ns per packet.\n",
        xdp::REPEAT
    );
    for r in rows {
        let _ = writeln!(
            md,
            "### {} rules (floor {:.0} ns, policy load {:.0} ms)\n",
            r.rules, r.floor, r.load_ms
        );
        let _ = writeln!(
            md,
            "| path | family | guard, events on | above floor | guard, events off | xdp-filter | guard / xdp-filter |"
        );
        let _ = writeln!(md, "| --- | --- | ---: | ---: | ---: | ---: | ---: |");
        for path in Path::ALL {
            for v6 in [false, true] {
                let on = r.guard(path, v6, true);
                let off = if path.drops() {
                    format!("{:.0}", r.guard(path, v6, false))
                } else {
                    "(same)".into()
                };
                let xf = r.xdp_filter(path, v6);
                let _ = writeln!(
                    md,
                    "| {} | {} | {on:.0} | +{:.0} | {off} | {xf:.0} | {:.2}x |",
                    path.label(),
                    if v6 { "IPv6" } else { "IPv4" },
                    on - r.floor,
                    on / xf
                );
            }
        }
        let _ = writeln!(
            md,
            "\nA drop that sends an event every time (rate limits out of the way, ring drained \
             between batches of 10 000): {:.0} ns; {}.\n",
            r.drop_event_sent, r.event_note
        );
    }
    // Targets, over every rule count and both families (the worst case decides).
    let worst = |f: &dyn Fn(&xdp::Row, bool) -> f64| {
        rows.iter()
            .flat_map(|r| [f(r, false), f(r, true)])
            .fold(f64::MIN, f64::max)
    };
    let above = |path: Path, events: bool| {
        move |r: &xdp::Row, v6: bool| r.guard(path, v6, events) - r.floor
    };
    let ratio =
        |path: Path| move |r: &xdp::Row, v6: bool| r.guard(path, v6, true) / r.xdp_filter(path, v6);
    let _ = writeln!(md, "### Targets (issue L)\n");
    let _ = writeln!(
        md,
        "| target | measured (worst of 10 / 1K / 100K rules, IPv4 and IPv6) | |"
    );
    let _ = writeln!(md, "| --- | --- | --- |");
    for (what, path, limit) in [
        (
            "pass via an any-source rule <= floor + 15 ns",
            Path::PassAny,
            15.0,
        ),
        (
            "pass via a zone rule <= floor + 25 ns",
            Path::PassZone,
            25.0,
        ),
        (
            "SYN drop, events on, one source flooding <= floor + 25 ns",
            Path::SynDrop,
            25.0,
        ),
        ("ACK drop, no flow <= floor + 30 ns", Path::AckDrop, 30.0),
        ("UDP drop <= floor + 30 ns", Path::UdpDrop, 30.0),
    ] {
        let w = worst(&above(path, true));
        let _ = writeln!(
            md,
            "| {what} | floor + {w:.0} ns | {} |",
            verdict(w <= limit)
        );
    }
    let worst_ratio = Path::ALL
        .iter()
        .map(|&p| worst(&ratio(p)))
        .fold(f64::MIN, f64::max);
    let _ = writeln!(
        md,
        "| each <= 0.5 x xdp-filter on the same packet | worst {worst_ratio:.2}x ({}) | {} |",
        Path::ALL
            .iter()
            .map(|&p| format!("{}: {:.2}x", p.label(), worst(&ratio(p))))
            .collect::<Vec<_>>()
            .join("; "),
        verdict(worst_ratio <= 0.5)
    );
    let (small, big) = (&rows[0], &rows[rows.len() - 1]);
    let flat = Path::ALL
        .iter()
        .flat_map(|&p| [false, true].map(|v6| big.guard(p, v6, true) / small.guard(p, v6, true)))
        .fold(f64::MIN, f64::max);
    let _ = writeln!(
        md,
        "| cost flat from {} to {} rules (<= 1.2x) | worst {flat:.2}x (whole program, floor included) | {} |\n",
        small.rules,
        big.rules,
        verdict(flat <= 1.2)
    );
}

fn main() {
    require_root();
    let mut out_path = "BENCHMARKS.md".to_owned();
    let mut only: Option<String> = None;
    let mut rule_counts = vec![10, 1_000, 100_000];
    let mut args = std::env::args().skip(1);
    while let Some(a) = args.next() {
        match a.as_str() {
            "--only" => only = args.next(),
            // One rule count only (a quicker look while working on the XDP program).
            "--rules" => {
                rule_counts = vec![args.next().and_then(|n| n.parse().ok()).expect("--rules N")]
            }
            _ => out_path = a,
        }
    }
    let wants = |section: &str| only.as_deref().is_none_or(|o| o == section);
    let mut md = String::new();
    let _ = writeln!(md, "# Benchmarks\n");
    let _ = writeln!(
        md,
        "Produced by `cargo xtask bench` (do not edit by hand). Machine: {}. Absolute \
         nanoseconds depend on the CPU and its mitigations; the ratios against the floor and \
         the peers measured in the same run are what carries over to other machines.\n",
        machine()
    );
    if wants("xdp") {
        eprintln!(
            "==> per packet: guard, the floor and xdp-filter interleaved ({ROUNDS} rounds of {} runs)",
            xdp::REPEAT
        );
        let filter = xdp::XdpFilter::load();
        let rows: Vec<xdp::Row> = rule_counts
            .iter()
            .copied()
            .map(|n| {
                let r = xdp::row(n, &filter);
                eprintln!(
                    "    {n:>6} rules: floor {:.0}; events on v4: pass {:.0}/{:.0} syn {:.0} ack {:.0} udp {:.0}; v6: pass {:.0}/{:.0} syn {:.0} ack {:.0} udp {:.0}; xdp-filter v4 pass {:.0} drop {:.0} ns",
                    r.floor,
                    r.guard(xdp::Path::PassAny, false, true),
                    r.guard(xdp::Path::PassZone, false, true),
                    r.guard(xdp::Path::SynDrop, false, true),
                    r.guard(xdp::Path::AckDrop, false, true),
                    r.guard(xdp::Path::UdpDrop, false, true),
                    r.guard(xdp::Path::PassAny, true, true),
                    r.guard(xdp::Path::PassZone, true, true),
                    r.guard(xdp::Path::SynDrop, true, true),
                    r.guard(xdp::Path::AckDrop, true, true),
                    r.guard(xdp::Path::UdpDrop, true, true),
                    r.xdp_filter(xdp::Path::PassAny, false),
                    r.xdp_filter(xdp::Path::SynDrop, false),
                );
                r
            })
            .collect();
        drop(filter);
        xdp_report(&mut md, &rows);
    }
    if wants("flood") {
        eprintln!(
            "==> veth flood: an AF_PACKET sender pinned to one CPU, SYN and ACK floods, each filter in turn"
        );
        let filter = xdp::XdpFilter::load();
        let samples = flood::run(&filter);
        drop(filter);
        for s in &samples {
            eprintln!(
                "    {}: {} {:.2} Mpps, softirq {:.0} %",
                s.filter,
                s.flood.label(),
                s.mpps,
                s.softirq
            );
        }
        flood::report(&mut md, &samples);
    }
    if wants("sockets") {
        eprintln!(
            "==> sockets: connect()+close() and bind()+close() on loopback, without and with the cgroup programs"
        );
        let so = sockets();
        eprintln!(
            "    connect {:.0} -> {:.0} ns, bind {:.0} -> {:.0} ns",
            so.connect_without, so.connect_with, so.bind_without, so.bind_with
        );
        sockets_report(&mut md, &so);
    }
    if wants("controller") {
        eprintln!(
            "==> controller: guard apply next to guard check (10K, one rule, 100K), 1M rules by the file watch, memory"
        );
        let ctl = controller::run();
        for a in &ctl.applies {
            eprintln!(
                "    {}: apply {:.0} ms, check {:.0} ms, {} map writes",
                a.what, a.apply_ms, a.check_ms, a.map_writes
            );
        }
        eprintln!(
            "    1M rules: {:.1} s (check {:.1} s), peak {:.0} B/rule; 10K RSS {:.1} MiB, idle CPU {:.2} %",
            ctl.million_ms / 1e3,
            ctl.million_check_ms / 1e3,
            ctl.million_peak_bytes_per_rule,
            ctl.rss_10k_mib,
            ctl.idle_cpu_percent
        );
        controller::report(&mut md, &ctl);
    }
    std::fs::write(&out_path, &md).unwrap_or_else(|e| panic!("write {out_path}: {e}"));
    println!("{md}");
    eprintln!("==> wrote {out_path}");
}

/// Rounds of the socket benchmark (an even number: each order goes first equally often).
const SOCKET_ROUNDS: usize = 10;

fn sockets_report(md: &mut String, so: &Sockets) {
    let (co, bo) = (so.connect_overhead, so.bind_overhead);
    let _ = writeln!(md, "## Sockets (issue C)\n");
    let _ = writeln!(
        md,
        "Wall-clock ns per call from a process in a test cgroup, median of {SOCKET_ROUNDS} \
         rounds (1000 `connect()`+`close()` to a loopback listener; 10 000 `bind()`+`close()` \
         of a UDP socket to a port `[listen]` allows), each round measuring without and with \
         guard's cgroup programs (bind/connect/sendmsg hooks and sock_ops) and a policy of 1000 \
         egress rules, in alternating order. The overhead is the median over the rounds of each \
         round's own ratio (a drift of the machine between rounds cancels out).\n"
    );
    let _ = writeln!(
        md,
        "| call | without | with guard | overhead | target <= 5 % |"
    );
    let _ = writeln!(md, "| --- | ---: | ---: | ---: | --- |");
    let _ = writeln!(
        md,
        "| connect()+close() | {:.0} | {:.0} | {co:+.1} % | {} |",
        so.connect_without,
        so.connect_with,
        verdict(co <= 5.0)
    );
    let _ = writeln!(
        md,
        "| bind()+close() | {:.0} | {:.0} | {bo:+.1} % | {} |\n",
        so.bind_without,
        so.bind_with,
        verdict(bo <= 5.0)
    );
}
