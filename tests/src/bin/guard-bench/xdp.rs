//! Per-packet cost of guard's XDP program under BPF_PROG_TEST_RUN, for the paths a flood
//! takes as well as the ones legitimate traffic takes, against the empty-XDP floor and
//! Debian's xdp-filter on the same packets, all interleaved in each round of one run.

use std::{
    net::{Ipv4Addr, Ipv6Addr},
    time::Instant,
};

use aya::programs::{TestRun as _, TestRunOptions, Xdp};
use aya_obj::programs::XdpAttachType;
use guard_tests::{
    TestNet,
    kernel::{Loaded, load},
    packets::{L4, TCP_ACK, TCP_SYN, ipv4, ipv6},
};

use crate::{ROUNDS, median, sh};

/// Runs per measurement.
pub const REPEAT: u32 = 1_000_000;

const HOST4: Ipv4Addr = Ipv4Addr::new(198, 18, 0, 1);
const HOST6: Ipv6Addr = Ipv6Addr::new(0x2001, 0xdb8, 0, 0, 0, 0, 0, 1);
/// A source in no zone of the policy (the flood's source).
const OUTSIDER4: Ipv4Addr = Ipv4Addr::new(192, 0, 2, 1);
const OUTSIDER6: Ipv6Addr = Ipv6Addr::new(0x2001, 0xdb8, 0xffff, 0, 0, 0, 0, 1);
/// A source in the first zone rule's prefixes (10.0.0.0/24, fd00:0:0::/48).
const INSIDER4: Ipv4Addr = Ipv4Addr::new(10, 0, 0, 5);
const INSIDER6: Ipv6Addr = Ipv6Addr::new(0xfd00, 0, 0, 0, 0, 0, 0, 5);

/// What a packet does in guard's program.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub enum Path {
    /// TCP SYN to port 80, which an any-source rule allows.
    PassAny,
    /// TCP SYN to port 2000 from a source in the zone rule's prefixes.
    PassZone,
    /// TCP SYN to port 2000 from a source in no zone: default deny (a SYN flood).
    SynDrop,
    /// TCP ACK to port 2000 from a source in no zone, answering no flow (an ACK flood).
    AckDrop,
    /// UDP datagram to port 2000 from a source in no zone (a UDP flood).
    UdpDrop,
}

impl Path {
    pub const ALL: [Path; 5] = [
        Path::PassAny,
        Path::PassZone,
        Path::SynDrop,
        Path::AckDrop,
        Path::UdpDrop,
    ];

    pub fn label(self) -> &'static str {
        match self {
            Path::PassAny => "pass, any-source rule",
            Path::PassZone => "pass, zone rule",
            Path::SynDrop => "SYN drop (a SYN flood from one source)",
            Path::AckDrop => "ACK drop (no flow: an ACK flood)",
            Path::UdpDrop => "UDP drop (a UDP flood)",
        }
    }

    pub fn drops(self) -> bool {
        !matches!(self, Path::PassAny | Path::PassZone)
    }

    /// The packet: a 64-byte frame for IPv4, the smallest (74 or 62 bytes) for IPv6.
    pub fn packet(self, v6: bool) -> Vec<u8> {
        let (dport, flags, udp) = match self {
            Path::PassAny => (80, TCP_SYN, false),
            Path::PassZone | Path::SynDrop => (2000, TCP_SYN, false),
            Path::AckDrop => (2000, TCP_ACK, false),
            Path::UdpDrop => (2000, 0, true),
        };
        let l4 = if udp {
            L4::Udp {
                sport: 40000,
                dport,
                payload: Vec::new(),
            }
        } else {
            L4::Tcp {
                sport: 40000,
                dport,
                flags,
            }
        };
        let inside = self == Path::PassZone;
        if v6 {
            let src = if inside { INSIDER6 } else { OUTSIDER6 };
            ipv6(src, HOST6, &[], &l4)
        } else {
            let src = if inside { INSIDER4 } else { OUTSIDER4 };
            let mut p = ipv4(src, HOST4, 0, (0, false), &l4);
            p.resize(64, 0);
            p
        }
    }
}

/// A policy with `n` zone rules (ports 2000-2999, each from a /24 and a /48) plus an
/// any-source rule on TCP 80; deny by default; events at their defaults or off.
pub fn policy(n: usize, events: bool) -> String {
    use std::fmt::Write as _;
    let mut s = String::from(
        "mode = \"enforce\"\ninterfaces = [\"unused0\"]\ndefault = \"deny\"\nfailsafe_ports = []\n",
    );
    if !events {
        s += "[events]\nrate_per_second = 0\n";
    }
    s += "[[ingress]]\nname = \"web\"\nproto = \"tcp\"\nports = [80]\n";
    for i in 0..n {
        let block = i / 1000;
        let (a, b) = (block / 256 % 256, block % 256);
        let _ = write!(
            s,
            "[[ingress]]\nname = \"r{i}\"\nproto = \"tcp\"\nports = [{}]\nfrom = [\"10.{a}.{b}.0/24\", \"fd00:{a:x}:{b:x}::/48\"]\n",
            2000 + i % 1000,
        );
    }
    s
}

/// One rule count's figures, in ns per packet.
pub struct Row {
    pub rules: usize,
    pub floor: f64,
    /// (path, IPv6, events on) → ns.
    pub guard: Vec<((Path, bool, bool), f64)>,
    /// (path, IPv6) → ns of xdp-filter on the same packet.
    pub xdp_filter: Vec<((Path, bool), f64)>,
    /// A drop that sends an event every time (rate limit out of the way), IPv4 SYN.
    pub drop_event_sent: f64,
    pub event_note: String,
    pub load_ms: f64,
}

impl Row {
    pub fn guard(&self, path: Path, v6: bool, events: bool) -> f64 {
        self.guard
            .iter()
            .find(|(k, _)| *k == (path, v6, events))
            .map_or(f64::NAN, |&(_, v)| v)
    }

    pub fn xdp_filter(&self, path: Path, v6: bool) -> f64 {
        self.xdp_filter
            .iter()
            .find(|(k, _)| *k == (path, v6))
            .map_or(f64::NAN, |&(_, v)| v)
    }
}

/// Median ns per run of each (program, packet) case: ROUNDS rounds of REPEAT runs, the
/// cases interleaved within each round so that machine noise hits them alike.
fn measure_all(cases: &[(&Xdp, &[u8])]) -> Vec<f64> {
    let run = |prog: &Xdp, packet: &[u8]| {
        let opts = TestRunOptions {
            data_in: Some(packet),
            repeat: REPEAT,
            ..Default::default()
        };
        prog.test_run(opts)
            .expect("BPF_PROG_TEST_RUN")
            .duration
            .as_nanos() as f64
    };
    let mut samples = vec![Vec::with_capacity(ROUNDS); cases.len()];
    // One unmeasured round first: caches, branch predictors and CPU frequency settle.
    for (prog, packet) in cases {
        run(prog, packet);
    }
    for _ in 0..ROUNDS {
        for (i, (prog, packet)) in cases.iter().enumerate() {
            samples[i].push(run(prog, packet));
        }
    }
    samples.iter_mut().map(|s| median(s)).collect()
}

/// Drop with an event for every packet: batches small enough for the ring buffer, drained
/// between batches, so every run reserves and submits.
fn measure_drop_event(g: &mut Loaded, packet: &[u8]) -> (f64, String) {
    let batch = 10_000;
    let mut events = g.guard.take_events().expect("event ring");
    let prog: &Xdp = g.guard.xdp();
    let mut samples = Vec::new();
    let mut drained = 0u64;
    for _ in 0..ROUNDS * 10 {
        let opts = TestRunOptions {
            data_in: Some(packet),
            repeat: batch,
            ..Default::default()
        };
        samples.push(
            prog.test_run(opts)
                .expect("BPF_PROG_TEST_RUN")
                .duration
                .as_nanos() as f64,
        );
        while events.next().is_some() {
            drained += 1;
        }
    }
    let c = g.counters().events;
    (
        median(&mut samples),
        format!(
            "sent {} suppressed {} lost {} (drained {drained})",
            c.sent, c.suppressed, c.lost
        ),
    )
}

/// Debian's xdp-filter (deny policy, port 80 allowed) loaded on a veth of its own, its
/// program pinned so it runs in the same rounds as guard's. Unloaded on drop.
pub struct XdpFilter {
    _net: TestNet,
    iface: String,
    pin: std::path::PathBuf,
    pub prog: Xdp,
}

impl XdpFilter {
    pub fn load() -> Self {
        let net = TestNet::new();
        sh(&[
            "xdp-filter",
            "load",
            "-m",
            "native",
            "-p",
            "deny",
            &net.host_if,
        ]);
        sh(&["xdp-filter", "port", "80"]);
        let link = sh(&["ip", "-d", "link", "show", "dev", &net.host_if]);
        let id = link
            .split("prog/xdp id ")
            .nth(1)
            .and_then(|s| s.split_whitespace().next())
            .unwrap_or_else(|| panic!("xdp-filter's program id in: {link}"))
            .to_owned();
        let pin = std::path::PathBuf::from(format!(
            "/sys/fs/bpf/{}",
            guard_tests::unique("guard-bench-xdpfilter-")
        ));
        sh(&["bpftool", "prog", "pin", "id", &id, pin.to_str().unwrap()]);
        let prog = Xdp::from_pin(&pin, XdpAttachType::Interface).expect("xdp-filter's program");
        Self {
            iface: net.host_if.clone(),
            _net: net,
            pin,
            prog,
        }
    }
}

impl XdpFilter {
    /// Where its program is pinned (to attach it elsewhere too).
    pub fn pin(&self) -> &std::path::Path {
        &self.pin
    }
}

impl Drop for XdpFilter {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.pin);
        let _ = std::process::Command::new("xdp-filter")
            .args(["unload", &self.iface])
            .output();
    }
}

/// Every path, IPv4 and IPv6, events on and off, for a policy of `rules` zone rules, with
/// the floor and xdp-filter in the same rounds.
pub fn row(rules: usize, filter: &XdpFilter) -> Row {
    let started = Instant::now();
    let mut on = load(&policy(rules, true));
    let load_ms = started.elapsed().as_secs_f64() * 1e3;
    // The events' ring is read by nobody here; past its budget a flood sends nothing.
    let _ = on.guard.take_events();
    let off = load(&policy(rules, false));
    on.guard.load_floor().expect("floor program");
    let packets: Vec<((Path, bool), Vec<u8>)> = Path::ALL
        .iter()
        .flat_map(|&p| [false, true].map(|v6| ((p, v6), p.packet(v6))))
        .collect();
    let floor = on.guard.floor().expect("floor program");
    let mut cases: Vec<(&Xdp, &[u8])> = vec![(floor, &packets[0].1)];
    let mut keys = Vec::new();
    for ((path, v6), packet) in &packets {
        cases.push((&filter.prog, packet));
        keys.push(None);
        cases.push((on.guard.xdp(), packet));
        keys.push(Some((*path, *v6, true)));
        if path.drops() {
            cases.push((off.guard.xdp(), packet));
            keys.push(Some((*path, *v6, false)));
        }
    }
    let m = measure_all(&cases);
    let mut guard = Vec::new();
    let mut xdp_filter = Vec::new();
    let mut next_filter = packets.iter().map(|(k, _)| *k);
    for (key, ns) in keys.iter().zip(&m[1..]) {
        match key {
            Some(k) => guard.push((*k, *ns)),
            None => xdp_filter.push((next_filter.next().unwrap(), *ns)),
        }
    }
    std::mem::drop((on, off));
    let mut every = load(&policy(rules, true).replace(
        "failsafe_ports = []\n",
        "failsafe_ports = []\n[events]\nrate_per_second = 1000000\nburst = 1000000\n",
    ));
    let (drop_event_sent, event_note) =
        measure_drop_event(&mut every, &Path::SynDrop.packet(false));
    Row {
        rules,
        floor: m[0],
        guard,
        xdp_filter,
        drop_event_sent,
        event_note,
        load_ms,
    }
}
