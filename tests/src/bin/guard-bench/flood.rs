//! A veth flood: a small AF_PACKET sender (sendmmsg, qdisc bypass) in one namespace,
//! pinned to one CPU, floods 64-byte TCP SYNs or ACKs from one source to a closed port of a
//! second namespace, whose filter drops them. Rounds measure each filter in turn: the packets
//! per second the receiver took off the wire (sent minus what the veth dropped before the
//! receiver saw it) and the CPU's softirq time. On a veth the receiver's work runs on the
//! sender's CPU (the transmit runs the peer's receive inline), so the rate is one CPU's
//! budget split between sending and filtering: a costlier filter sends fewer.

use std::{
    fmt::Write as _,
    os::fd::{AsRawFd as _, FromRawFd as _, OwnedFd},
    time::{Duration, Instant},
};

use aya::programs::{Xdp, XdpMode};
use aya_obj::{
    generated::{bpf_attr, bpf_cmd, bpf_prog_type},
    programs::XdpAttachType,
};
use guard_tests::{NsPair, kernel::load, sh};

use crate::{Paired, median, xdp::XdpFilter};

const GUARD: &str = "guard (1 000 rules, events on)";
const EMPTY: &str = "empty XDP_DROP";
const NFT_INPUT: &str = "nftables inet input";
const IPTABLES: &str = "iptables INPUT";

/// Seconds of each flood.
const SECONDS: f64 = 1.0;
/// Rounds, each flooding every filter in turn: even, so that each filter is measured as
/// often in the forward order as in the reverse one (see [`run`]). One round's ratio to the
/// empty program moves by 1-2 % between rounds on a cloud VM, and the median of 10 rounds
/// moved by up to a point between runs of one object: 16 rounds narrow that.
const ROUNDS: usize = 16;
/// Frames per sendmmsg call.
const BATCH: usize = 64;
/// The CPU the sender (and so the veth receive path) runs on.
const CPU: usize = 1;

#[derive(Clone, Copy, PartialEq, Eq)]
pub enum Flood {
    Syn,
    Ack,
}

impl Flood {
    pub fn label(self) -> &'static str {
        match self {
            Flood::Syn => "SYN flood",
            Flood::Ack => "ACK flood",
        }
    }
}

/// One filter under one flood.
pub struct Sample {
    pub filter: &'static str,
    pub flood: Flood,
    pub mpps: f64,
    /// Softirq share of the sender's CPU, percent.
    pub softirq: f64,
    /// For a netfilter rule, the share of the delivered frames its counter saw: the check
    /// that the rule, not something before it, dropped them.
    pub matched: Option<f64>,
    /// Mpps against the empty XDP_DROP program's in the same round.
    pub vs_empty: Paired,
}

fn mac(ns: &str, dev: &str) -> [u8; 6] {
    let out = String::from_utf8_lossy(&sh(&["ip", "-n", ns, "-j", "link", "show", dev]).stdout)
        .into_owned();
    let v: serde_json::Value = serde_json::from_str(&out).expect("ip -j link");
    let text = v[0]["address"].as_str().expect("a MAC address");
    let mut m = [0u8; 6];
    for (b, part) in m.iter_mut().zip(text.split(':')) {
        *b = u8::from_str_radix(part, 16).expect("hex");
    }
    m
}

/// A 64-byte TCP frame from `b` to a closed port of `a`, with valid IPv4 and TCP checksums:
/// a frame with a bad checksum dies in the kernel's IP input before netfilter's input hooks
/// see it, which would measure those hooks at doing nothing.
fn frame(dst_mac: [u8; 6], src_mac: [u8; 6], pair: &NsPair, flood: Flood) -> Vec<u8> {
    let b = etherparse::PacketBuilder::ethernet2(src_mac, dst_mac)
        .ipv4(pair.b_ip.octets(), pair.a_ip.octets(), 64)
        .tcp(40000, 2000, 1, 1024);
    let b = match flood {
        Flood::Syn => b.syn(),
        Flood::Ack => b.ack(1),
    };
    let mut f = Vec::with_capacity(64);
    b.write(&mut f, &[]).expect("write the flood frame");
    f.resize(64, 0);
    f
}

fn cpu_softirq_ticks(cpu: usize) -> u64 {
    let stat = std::fs::read_to_string("/proc/stat").unwrap_or_default();
    stat.lines()
        .find(|l| l.starts_with(&format!("cpu{cpu} ")))
        .and_then(|l| l.split_whitespace().nth(7)?.parse().ok())
        .unwrap_or(0)
}

/// Frames the kernel's input backlogs dropped, all CPUs (`/proc/net/softnet_stat`, second
/// column): a receiver without XDP queues what the sender hands it, and drops what does not
/// fit.
fn backlog_dropped() -> u64 {
    std::fs::read_to_string("/proc/net/softnet_stat")
        .unwrap_or_default()
        .lines()
        .filter_map(|l| u64::from_str_radix(l.split_whitespace().nth(1)?, 16).ok())
        .sum()
}

fn tx_dropped(ns: &str) -> u64 {
    let out =
        String::from_utf8_lossy(&sh(&["ip", "-n", ns, "-s", "-j", "link", "show", "eth0"]).stdout)
            .into_owned();
    let v: serde_json::Value = serde_json::from_str(&out).expect("ip -s -j link");
    v[0]["stats64"]["tx"]["dropped"].as_u64().unwrap_or(0)
}

/// Sends `frame` from namespace `b`'s eth0 for SECONDS; returns (frames sent, seconds).
fn send(pair: &NsPair, frame: &[u8]) -> (u64, f64) {
    pair.b.run(|| {
        // SAFETY: a zeroed cpu_set_t is valid; CPU_SET writes within it.
        unsafe {
            let mut set: libc::cpu_set_t = std::mem::zeroed();
            libc::CPU_SET(CPU, &mut set);
            libc::sched_setaffinity(0, std::mem::size_of::<libc::cpu_set_t>(), &set);
        }
        // SAFETY: plain socket(2) and setsockopt(2) calls with valid arguments; the fd is
        // owned from here on.
        let sock = unsafe {
            let fd = libc::socket(libc::AF_PACKET, libc::SOCK_RAW, 0);
            assert!(fd >= 0, "AF_PACKET socket");
            OwnedFd::from_raw_fd(fd)
        };
        let one: libc::c_int = 1;
        // SAFETY: a valid option value of its declared size.
        unsafe {
            libc::setsockopt(
                sock.as_raw_fd(),
                libc::SOL_PACKET,
                libc::PACKET_QDISC_BYPASS,
                &one as *const _ as *const libc::c_void,
                std::mem::size_of::<libc::c_int>() as u32,
            );
        }
        let ifindex = guard::linux::host::if_index("eth0").expect("eth0 in the sender namespace");
        // SAFETY: sockaddr_ll is plain data; all zeros then the fields set.
        let mut addr: libc::sockaddr_ll = unsafe { std::mem::zeroed() };
        addr.sll_family = libc::AF_PACKET as u16;
        addr.sll_ifindex = ifindex as i32;
        addr.sll_protocol = (libc::ETH_P_IP as u16).to_be();
        // SAFETY: binding to a valid sockaddr_ll of its size.
        let rc = unsafe {
            libc::bind(
                sock.as_raw_fd(),
                &addr as *const _ as *const libc::sockaddr,
                std::mem::size_of::<libc::sockaddr_ll>() as u32,
            )
        };
        assert_eq!(rc, 0, "bind AF_PACKET");
        let mut iov = vec![
            libc::iovec {
                iov_base: frame.as_ptr() as *mut libc::c_void,
                iov_len: frame.len(),
            };
            BATCH
        ];
        // SAFETY: mmsghdr is plain data; the fields below point into `iov`, which outlives
        // every call.
        let mut msgs: Vec<libc::mmsghdr> = (0..BATCH)
            .map(|i| {
                let mut m: libc::mmsghdr = unsafe { std::mem::zeroed() };
                m.msg_hdr.msg_iov = &mut iov[i];
                m.msg_hdr.msg_iovlen = 1;
                m
            })
            .collect();
        let started = Instant::now();
        let until = started + Duration::from_secs_f64(SECONDS);
        let mut sent = 0u64;
        while Instant::now() < until {
            // SAFETY: `msgs` holds BATCH valid headers.
            let n = unsafe { libc::sendmmsg(sock.as_raw_fd(), msgs.as_mut_ptr(), BATCH as u32, 0) };
            if n > 0 {
                sent += n as u64;
            }
        }
        (sent, started.elapsed().as_secs_f64())
    })
}

/// An XDP program that drops everything: `r0 = XDP_DROP; exit`, loaded with BPF_PROG_LOAD
/// and pinned so aya can attach it.
fn empty_drop() -> (Xdp, std::path::PathBuf) {
    let insns: [u64; 2] = [
        // BPF_ALU64 | BPF_MOV | BPF_K, dst r0, imm 1 (XDP_DROP)
        0xb7 | (1u64 << 32),
        // BPF_JMP | BPF_EXIT
        0x95,
    ];
    let license = c"GPL";
    // SAFETY: bpf_attr is plain data; the prog_load fields point at live buffers.
    let mut attr: bpf_attr = unsafe { std::mem::zeroed() };
    attr.__bindgen_anon_3.prog_type = bpf_prog_type::BPF_PROG_TYPE_XDP as u32;
    attr.__bindgen_anon_3.insn_cnt = insns.len() as u32;
    attr.__bindgen_anon_3.insns = insns.as_ptr() as u64;
    attr.__bindgen_anon_3.license = license.as_ptr() as u64;
    // SAFETY: a valid, initialised bpf_attr of its size.
    let fd = unsafe {
        libc::syscall(
            libc::SYS_bpf,
            bpf_cmd::BPF_PROG_LOAD as libc::c_long,
            &mut attr as *mut bpf_attr,
            std::mem::size_of::<bpf_attr>(),
        )
    };
    assert!(
        fd >= 0,
        "BPF_PROG_LOAD: {}",
        std::io::Error::last_os_error()
    );
    // SAFETY: the kernel returned a new fd we own.
    let fd = unsafe { OwnedFd::from_raw_fd(fd as i32) };
    let pin = std::path::PathBuf::from(format!(
        "/sys/fs/bpf/{}",
        guard_tests::unique("guard-bench-drop-")
    ));
    guard::datapath::sys::obj_pin(std::os::fd::AsFd::as_fd(&fd), &pin).expect("pin");
    (
        Xdp::from_pin(&pin, XdpAttachType::Interface).expect("the pinned drop program"),
        pin,
    )
}

fn nft(ns: &str, ruleset: &str) {
    let mut child = std::process::Command::new("ip")
        .args(["netns", "exec", ns, "nft", "-f", "-"])
        .stdin(std::process::Stdio::piped())
        .spawn()
        .expect("nft");
    std::io::Write::write_all(child.stdin.as_mut().unwrap(), ruleset.as_bytes()).unwrap();
    assert!(child.wait().unwrap().success(), "nft -f: {ruleset}");
}

/// Packets the rule of table `guardbench` of `family` counted.
fn nft_counter(ns: &str, family: &str) -> Option<u64> {
    let out = sh(&[
        "ip",
        "netns",
        "exec",
        ns,
        "nft",
        "list",
        "table",
        family,
        "guardbench",
    ]);
    let text = String::from_utf8_lossy(&out.stdout);
    let after = &text[text.find("counter packets ")? + "counter packets ".len()..];
    after.split_whitespace().next()?.parse().ok()
}

/// Packets the first rule of the INPUT chain counted.
fn iptables_counter(ns: &str) -> Option<u64> {
    let out = sh(&[
        "ip", "netns", "exec", ns, "iptables", "-L", "INPUT", "-v", "-x", "-n",
    ]);
    let text = String::from_utf8_lossy(&out.stdout);
    text.lines().nth(2)?.split_whitespace().next()?.parse().ok()
}

/// The filters compared, in the order each round measures them.
#[derive(Clone, Copy)]
enum Filter {
    None,
    EmptyDrop,
    Guard,
    XdpFilterProgram,
    NftNetdev,
    NftInput,
    Iptables,
}

impl Filter {
    const ALL: [Filter; 7] = [
        Filter::None,
        Filter::EmptyDrop,
        Filter::Guard,
        Filter::XdpFilterProgram,
        Filter::NftNetdev,
        Filter::NftInput,
        Filter::Iptables,
    ];

    fn name(self) -> &'static str {
        match self {
            Filter::None => "no filter",
            Filter::EmptyDrop => EMPTY,
            Filter::Guard => GUARD,
            Filter::XdpFilterProgram => "xdp-filter",
            Filter::NftNetdev => "nftables netdev ingress",
            Filter::NftInput => NFT_INPUT,
            Filter::Iptables => IPTABLES,
        }
    }
}

const NFT_NETDEV_RULES: &str = "table netdev guardbench {\n chain c {\n  type filter hook ingress device eth0 priority 0\n  tcp dport 2000 counter drop\n }\n}\n";
const NFT_INPUT_RULES: &str = "table inet guardbench {\n chain c {\n  type filter hook input priority 0\n  tcp dport 2000 counter drop\n }\n}\n";

/// The receiver's filters, loaded once; each round installs one at a time.
struct Filters<'a> {
    pair: &'a NsPair,
    empty: Xdp,
    empty_pin: std::path::PathBuf,
    guard: guard_tests::kernel::Loaded,
    xdp_filter: Xdp,
}

impl Filters<'_> {
    /// Puts `filter` in place in the receiver's namespace; returns what `remove` takes.
    fn install(&mut self, filter: Filter) -> Option<aya::programs::xdp::XdpLinkId> {
        let a = self.pair.a.name.clone();
        match filter {
            Filter::None => None,
            Filter::EmptyDrop => Some(self.pair.a.run(|| {
                self.empty
                    .attach("eth0", XdpMode::Driver)
                    .expect("attach the empty program")
            })),
            Filter::XdpFilterProgram => Some(self.pair.a.run(|| {
                self.xdp_filter
                    .attach("eth0", XdpMode::Driver)
                    .expect("attach xdp-filter")
            })),
            Filter::Guard => {
                self.pair
                    .a
                    .run(|| self.guard.guard.attach("eth0", None).expect("attach guard"));
                None
            }
            Filter::NftNetdev => {
                nft(&a, NFT_NETDEV_RULES);
                None
            }
            Filter::NftInput => {
                nft(&a, NFT_INPUT_RULES);
                None
            }
            Filter::Iptables => {
                sh(&[
                    "ip", "netns", "exec", &a, "iptables", "-A", "INPUT", "-p", "tcp", "--dport",
                    "2000", "-j", "DROP",
                ]);
                None
            }
        }
    }

    fn remove(&mut self, filter: Filter, link: Option<aya::programs::xdp::XdpLinkId>) {
        let a = self.pair.a.name.clone();
        match filter {
            Filter::None => {}
            Filter::EmptyDrop => self
                .empty
                .detach(link.expect("a link"))
                .expect("detach the empty program"),
            Filter::XdpFilterProgram => self
                .xdp_filter
                .detach(link.expect("a link"))
                .expect("detach xdp-filter"),
            Filter::Guard => self.guard.guard.detach_all(),
            Filter::NftNetdev => nft(&a, "delete table netdev guardbench"),
            Filter::NftInput => nft(&a, "delete table inet guardbench"),
            Filter::Iptables => {
                sh(&["ip", "netns", "exec", &a, "iptables", "-F", "INPUT"]);
            }
        }
    }

    /// Packets the filter's own rule counted, where it has one to read.
    fn counted(&self, filter: Filter) -> Option<u64> {
        let a = &self.pair.a.name;
        match filter {
            Filter::NftNetdev => nft_counter(a, "netdev"),
            Filter::NftInput => nft_counter(a, "inet"),
            Filter::Iptables => iptables_counter(a),
            _ => None,
        }
    }
}

impl Drop for Filters<'_> {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.empty_pin);
    }
}

/// One flood of SECONDS with whatever filter is in place.
fn flood_once(
    pair: &NsPair,
    frame: &[u8],
    counted: &dyn Fn() -> Option<u64>,
) -> (f64, f64, Option<f64>) {
    let b = &pair.b.name;
    // SAFETY: sysconf has no preconditions.
    let hz = unsafe { libc::sysconf(libc::_SC_CLK_TCK) as f64 };
    let (drops0, backlog0, soft0, counted0) = (
        tx_dropped(b),
        backlog_dropped(),
        cpu_softirq_ticks(CPU),
        counted(),
    );
    let (sent, secs) = send(pair, frame);
    let (drops1, backlog1, soft1, counted1) = (
        tx_dropped(b),
        backlog_dropped(),
        cpu_softirq_ticks(CPU),
        counted(),
    );
    let delivered = sent.saturating_sub((drops1 - drops0) + (backlog1 - backlog0));
    (
        delivered as f64 / secs / 1e6,
        (soft1 - soft0) as f64 / hz / secs * 100.0,
        counted0
            .zip(counted1)
            .map(|(c0, c1)| (c1 - c0) as f64 / delivered.max(1) as f64),
    )
}

/// Floods the receiver with each filter in place: ROUNDS rounds, each measuring every filter
/// in turn (so a drift of the machine's speed reaches them all alike); the medians.
pub fn run(filter: &XdpFilter) -> Vec<Sample> {
    let pair = NsPair::new();
    let (dst, src) = (mac(&pair.a.name, "eth0"), mac(&pair.b.name, "eth0"));
    // guard first: a load that fails leaves no pinned program behind.
    let guard = load(&crate::xdp::policy(1_000, true).replace("unused0", "eth0"));
    let xdp_filter = Xdp::from_pin(filter.pin(), XdpAttachType::Interface).expect("xdp-filter");
    let (empty, empty_pin) = empty_drop();
    let mut filters = Filters {
        pair: &pair,
        empty,
        empty_pin,
        guard,
        xdp_filter,
    };
    let floods = [Flood::Syn, Flood::Ack];
    // Per filter and flood: Mpps, softirq and counted share of every round.
    let mut rounds: Vec<Vec<(f64, f64, Option<f64>)>> =
        vec![Vec::new(); Filter::ALL.len() * floods.len()];
    for round in 0..ROUNDS {
        // Every other round runs the filters in reverse order. In one fixed order a filter's
        // place in the round biased its figure: two copies of one guard program, measured
        // one after the other in each round, differed by 0.3-0.7 % in favour of the first.
        // Reversing puts every filter as often before as after each other one, so such
        // an effect cancels out of the paired ratios.
        let order: Vec<usize> = if round % 2 == 0 {
            (0..Filter::ALL.len()).collect()
        } else {
            (0..Filter::ALL.len()).rev().collect()
        };
        for i in order {
            let f = Filter::ALL[i];
            let link = filters.install(f);
            for (j, &flood) in floods.iter().enumerate() {
                let frame = frame(dst, src, &pair, flood);
                rounds[i * floods.len() + j]
                    .push(flood_once(&pair, &frame, &|| filters.counted(f)));
            }
            filters.remove(f, link);
        }
    }
    // The empty program's rounds are the base of every filter's pairs.
    let empty = Filter::ALL
        .iter()
        .position(|f| matches!(f, Filter::EmptyDrop))
        .expect("the empty program is measured");
    let mut out = Vec::new();
    for (i, &f) in Filter::ALL.iter().enumerate() {
        for (j, &flood) in floods.iter().enumerate() {
            let r = &rounds[i * floods.len() + j];
            let mpps = |rounds: &[(f64, f64, Option<f64>)]| -> Vec<f64> {
                rounds.iter().map(|s| s.0).collect()
            };
            let base = mpps(&rounds[empty * floods.len() + j]);
            out.push(Sample {
                filter: f.name(),
                flood,
                mpps: median(&mut mpps(r)),
                softirq: median(&mut r.iter().map(|s| s.1).collect::<Vec<_>>()),
                matched: r
                    .iter()
                    .map(|s| s.2)
                    .collect::<Option<Vec<f64>>>()
                    .map(|mut v| median(&mut v)),
                vs_empty: Paired::of(&mpps(r), &base),
            });
        }
    }
    out
}

pub fn report(md: &mut String, samples: &[Sample]) {
    let _ = writeln!(
        md,
        "## Veth flood\n\nA small AF_PACKET sender (sendmmsg of {BATCH} frames, qdisc bypass) in \
         one namespace, pinned to CPU {CPU}, floods 64-byte TCP SYNs and then ACKs from one \
         source to a closed port of a second namespace, whose filter drops them: {ROUNDS} \
         rounds, each flooding every filter in turn for {SECONDS} s (every other round in \
         reverse order, so that no filter always runs before another), and the medians. \
         \"vs empty XDP_DROP\" is the median over the rounds of each round's ratio to the \
         empty program's figure in that round (a drift of the machine's speed between rounds \
         cancels out); the target line gives the spread of the rounds too. Mpps: frames the receiver took (sent, less what the veth and the input \
         backlog dropped before it); softirq: that CPU's softirq time. On a veth the receive path runs on the \
         sender's CPU, so a costlier filter leaves less of the CPU to send with. On veth the \
         XDP path itself costs more than the netdev hook; the comparison with nftables netdev \
         belongs to a real NIC. The frames carry valid IPv4 and TCP checksums (a frame with a \
         bad one dies in the kernel's IP input before netfilter's input hooks); \"rule \
         counted\" is the share of the delivered frames the netfilter rule's own counter saw. \
         \"no filter\" is the kernel answering each SYN or ACK to a closed port with a RST.\n"
    );
    let _ = writeln!(
        md,
        "| filter | SYN flood Mpps | softirq | ACK flood Mpps | softirq | vs empty XDP_DROP (SYN / ACK) | rule counted (SYN / ACK) |"
    );
    let _ = writeln!(md, "| --- | ---: | ---: | ---: | ---: | ---: | ---: |");
    let get = |name: &str, flood: Flood| {
        samples
            .iter()
            .find(|s| s.filter == name && s.flood == flood)
            .expect("every filter is measured under every flood")
    };
    let share = |m: Option<f64>| m.map_or("-".to_string(), |m| format!("{:.0} %", m * 100.0));
    let mut names: Vec<&str> = samples.iter().map(|s| s.filter).collect();
    names.dedup();
    for name in names {
        let (syn, ack) = (get(name, Flood::Syn), get(name, Flood::Ack));
        let _ = writeln!(
            md,
            "| {name} | {:.2} | {:.0} % | {:.2} | {:.0} % | {:.2}x / {:.2}x | {} / {} |",
            syn.mpps,
            syn.softirq,
            ack.mpps,
            ack.softirq,
            syn.vs_empty.median,
            ack.vs_empty.median,
            share(syn.matched),
            share(ack.matched)
        );
    }
    let met = |ok: bool| if ok { "met" } else { "NOT met" };
    // The worse flood decides; each flood's spread over the rounds is stated with it.
    let (syn, ack) = (
        get(GUARD, Flood::Syn).vs_empty,
        get(GUARD, Flood::Ack).vs_empty,
    );
    let vs_empty = syn.median.min(ack.median);
    let ahead = [NFT_INPUT, IPTABLES].iter().all(|peer| {
        [Flood::Syn, Flood::Ack]
            .iter()
            .all(|&f| get(GUARD, f).mpps > get(peer, f).mpps)
    });
    let _ = writeln!(
        md,
        "\nTargets: guard >= 0.95x the empty XDP_DROP program in both floods: SYN {:.3}x \
         (rounds: {:.3}-{:.3}x), ACK {:.3}x (rounds: {:.3}-{:.3}x), {}; ahead of nftables inet \
         input and iptables INPUT in both floods: {}.\n",
        syn.median,
        syn.low,
        syn.high,
        ack.median,
        ack.low,
        ack.high,
        met(vs_empty >= 0.95),
        met(ahead)
    );
}
