//! guard's eBPF object in the kernel: load it, write the lowered policy into its maps,
//! attach the XDP program, pin the maps, read the counters.
//!
//! Every map is taken by its name from `guard_common::maps`; a missing one is an error.

mod attach;
pub mod counters;
pub mod generations;
mod pins;
mod policy_maps;
mod read_counters;
pub mod sys;

use self::policy_maps::*;
pub use self::{pins::*, read_counters::*};

use std::{
    collections::BTreeMap,
    os::fd::{AsFd as _, BorrowedFd},
    path::Path,
};

use aya::{
    Ebpf, EbpfLoader,
    maps::{
        Array, HashMap, LpmTrie, Map, MapData, MapError, PerCpuArray, PerCpuHashMap, RingBuf,
        lpm_trie::Key,
    },
    programs::{
        CgroupAttachMode, CgroupSock, CgroupSockAddr, ProgramError, SchedClassifier, SockOps,
        TcAttachType, Xdp, XdpMode,
        cgroup_sock::CgroupSockLinkId,
        cgroup_sock_addr::CgroupSockAddrLinkId,
        sock_ops::SockOpsLinkId,
        tc::{self, SchedClassifierLinkId},
        xdp::XdpLinkId,
    },
    util::KernelVersion,
};
use guard_common::{
    ActiveGeneration, ClassLens, ConnStats, DIRECT_BLOCKS, DIRECT_RULES_LEN, DIRECT16_LEN,
    DenyTally, FLOW_SEEN_CHUNK, FlowKey, FlowState, GENERATIONS, GuardConfig, MAX_CLASSES,
    MAX_RULES, MAX_SRC_ENTRIES, POLICY_PORTS_LEN, PORTS_LEN, PROTOS_LEN, PortStats, RttHist,
    RuleRef, RuleStats, SRC_ZONES_LEN, SrcHashKeyV4, SrcHashKeyV6, SrcKeyV4, SrcKeyV6,
    TABLE_V6_MAX_BITS, TABLE_V6_WAYS, flow_seen_slot, gen_index, maps, programs,
};

use crate::{
    datapath::counters::{CounterMaps, Counters},
    datapath::generations::{Changes, Contents, Delta},
    policy::{Lowered, PortSlot, RuleInfo},
};

/// The eBPF object built by `guard-userspace/build.rs`: empty in a build made without
/// `GUARD_EBPF=build` (plain `cargo build`), which then refuses to load.
/// What this build is: its version, git commit, build date and the sha256 of the embedded
/// eBPF object (`none` for a stub build), for `guard --version` and `guard_build_info`.
pub mod build {
    pub const VERSION: &str = env!("CARGO_PKG_VERSION");
    pub const COMMIT: &str = env!("GUARD_GIT_COMMIT");
    pub const DATE: &str = env!("GUARD_BUILD_DATE");
    pub const EBPF_SHA256: &str = env!("GUARD_EBPF_SHA256");
    /// `guard --version`'s text after the name.
    pub const LONG_VERSION: &str = concat!(
        env!("CARGO_PKG_VERSION"),
        " (commit ",
        env!("GUARD_GIT_COMMIT"),
        ", built ",
        env!("GUARD_BUILD_DATE"),
        ", ebpf sha256 ",
        env!("GUARD_EBPF_SHA256"),
        ")"
    );
}

pub static EBPF_OBJECT: &[u8] =
    aya::include_bytes_aligned!(concat!(env!("OUT_DIR"), "/guard-ebpf"));

#[derive(Debug, thiserror::Error)]
pub enum LoadError {
    #[error(
        "this guard binary has no eBPF object (it was built with plain `cargo build`); build it with `cargo xtask build`"
    )]
    NoObject,
    #[error("loading the eBPF object into the kernel failed: {0}")]
    Ebpf(#[from] aya::EbpfError),
    #[error("the eBPF object has no map named {0}")]
    MissingMap(&'static str),
    #[error("the eBPF object has no program named {0}")]
    MissingProgram(&'static str),
    #[error("map {map}: {source}")]
    Map {
        map: &'static str,
        #[source]
        source: MapError,
    },
    #[error("program {name}: {source}")]
    Program {
        name: &'static str,
        #[source]
        source: ProgramError,
    },
    #[error("interface `{0}` does not exist")]
    NoSuchInterface(String),
    #[error("attaching XDP to interface `{iface}` failed: {source}")]
    Attach {
        iface: String,
        #[source]
        source: ProgramError,
    },
    #[error("{0} is not a cgroup v2 directory")]
    NotCgroup2(String),
    #[error("opening cgroup {path}: {source}")]
    Cgroup {
        path: String,
        #[source]
        source: std::io::Error,
    },
    #[error("attaching to cgroup {path} failed: {source}")]
    AttachCgroup {
        path: String,
        #[source]
        source: ProgramError,
    },
    #[error("counting the possible CPUs: {0}")]
    Cpus(#[source] std::io::Error),
    #[error("pinning a link at {path}: {source}")]
    PinLink {
        path: String,
        #[source]
        source: std::io::Error,
    },
    #[error("replacing the program of the pinned link {path}: {source}")]
    Replace {
        path: String,
        #[source]
        source: std::io::Error,
    },
    #[error(
        "the pinned {map} map has {capacity} slots but this policy needs slot {needed}; run `guard unload` and start again"
    )]
    Capacity {
        map: &'static str,
        capacity: u32,
        needed: u32,
    },
    #[error("pinning map {map} at {path}: {source}")]
    Pin {
        map: &'static str,
        path: String,
        #[source]
        source: aya::pin::PinError,
    },
    #[error("starting the kernel log reader: {0}")]
    Log(#[from] aya_log::Error),
    #[error(
        "the pins in {dir} have pin layout {found}, and this guard uses layout {}: their maps hold records of another shape, so it will not adopt them. Enforcement is untouched: the programs already attached keep running. To move to this guard, run `guard unload` (enforcement stops until the next start) and start it again; or keep running the guard that made the pins",
        maps::PIN_LAYOUT
    )]
    PinLayout { dir: String, found: u32 },
    #[error("marking the pin layout in {dir}: {source}")]
    PinDir {
        dir: String,
        #[source]
        source: std::io::Error,
    },
}

/// Which kernel log records (aya-log) the programs emit. Per-packet records cost more than
/// the filter itself, so the default is `Off`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Default)]
pub enum KernelLog {
    #[default]
    Off,
    Error,
    Warn,
    Info,
    /// One record per dropped (or audit-dropped) packet.
    Debug,
    Trace,
}

impl KernelLog {
    /// Every level by its name on the command line, lowest first.
    pub const NAMES: [(&'static str, Self); 6] = [
        ("off", Self::Off),
        ("error", Self::Error),
        ("warn", Self::Warn),
        ("info", Self::Info),
        ("debug", Self::Debug),
        ("trace", Self::Trace),
    ];

    /// The value of aya-log-ebpf's `AYA_LOG_LEVEL` global (0 = nothing).
    const fn level(self) -> u8 {
        self as u8
    }
}

/// How XDP ended up attached to an interface.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum AttachMode {
    /// The kernel's choice: native (driver) XDP where the driver supports it.
    Default,
    /// Generic (skb) XDP, after the kernel's choice failed.
    Generic,
}

/// An error and its sources, joined with ": ".
pub fn error_chain(err: &dyn std::error::Error) -> String {
    let mut out = err.to_string();
    let mut source = err.source();
    while let Some(e) = source {
        out.push_str(": ");
        out.push_str(&e.to_string());
        source = e.source();
    }
    out
}

/// aya-log's ring buffer map (its name inside aya-log is private).
const AYA_LOGS_MAP: &str = "AYA_LOGS";

pub type KernelLogger = aya_log::EbpfLogger<&'static dyn log::Log>;

/// What attaching to a hook did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Attach {
    /// A new link, in this XDP mode (cgroup hooks report `Default`).
    New(AttachMode),
    /// The pinned link was kept and now runs the new program.
    Replaced,
}

/// Kernel run statistics of one of guard's programs.
#[derive(Debug, Clone, PartialEq)]
pub struct ProgramStats {
    pub program: String,
    pub runs: u64,
    pub run_seconds: f64,
}

/// A loaded, configured (not yet attached) guard.
pub struct Guard {
    ebpf: Ebpf,
    logger: Option<KernelLogger>,
    links: Vec<Link>,
    cgroup_links: Vec<CgroupLink>,
    /// The policy generation the programs judge by (`maps::ACTIVE`).
    active: u32,
    /// What each generation of the policy maps holds; `None` after a failed write left it
    /// unknown (the next policy then needs a new instance, see [`Guard::fits`]).
    generations: [Option<Contents>; 2],
    capacity: Capacity,
}

/// The sizes this instance's policy and counter maps were created with.
#[derive(Debug, Clone, Copy)]
struct Capacity {
    rules: u32,
    classes_per_generation: u32,
    /// Source hash v4, v6, trie v4, v6: entries of both generations together.
    sources: [u32; 4],
    /// log2 of the buckets per generation of the IPv6 source table: as many slots as the
    /// IPv6 source hash holds entries, so a generation's table is at most that full.
    table_v6_bits: u32,
}

impl Capacity {
    /// What generation `generation` of an instance of this size holds for `lowered`: the
    /// one way every write and every drift check derives a generation's entries (classes
    /// numbered apart per generation, the IPv6 table at this instance's size).
    fn contents(&self, lowered: &Lowered, generation: u32) -> Contents {
        Contents::of(lowered, generation, self.classes_per_generation)
            .with_table_v6(generation, self.table_v6_bits)
    }

    /// Room for `lowered` in each generation, with headroom for policies that grow.
    fn for_policy(lowered: &Lowered) -> Self {
        let room = |n: usize, floor: u32| floor.max((n as u32).next_power_of_two() * 2);
        Self {
            rules: room(lowered.rules.len(), MAX_RULES),
            classes_per_generation: room(lowered.classes as usize + 1, MAX_CLASSES / 2),
            sources: [
                room(lowered.src_hash_v4.len(), MAX_SRC_ENTRIES),
                room(lowered.src_hash_v6.len(), MAX_SRC_ENTRIES),
                room(lowered.src_v4.len(), MAX_SRC_ENTRIES),
                room(lowered.src_v6.len(), MAX_SRC_ENTRIES),
            ],
            table_v6_bits: {
                let slots = room(lowered.src_hash_v6.len(), MAX_SRC_ENTRIES).next_power_of_two();
                (slots / TABLE_V6_WAYS as u32)
                    .trailing_zeros()
                    .min(TABLE_V6_MAX_BITS)
            },
        }
    }
}

/// Every program guard attaches to the cgroup.
pub const CGROUP_PROGRAMS: [&str; 8] = [
    programs::BIND4,
    programs::BIND6,
    programs::CONNECT4,
    programs::CONNECT6,
    programs::SENDMSG4,
    programs::SENDMSG6,
    programs::SOCK_OPS,
    programs::SOCK_CREATE,
];

/// The cgroup socket-address hooks: `[listen]` at bind, `[[egress]]` at connect and sendmsg.
const SOCK_ADDR_PROGRAMS: [&str; 6] = [
    programs::BIND4,
    programs::BIND6,
    programs::CONNECT4,
    programs::CONNECT6,
    programs::SENDMSG4,
    programs::SENDMSG6,
];

/// A program guard attached to a cgroup.
enum CgroupLink {
    SockAddr(&'static str, CgroupSockAddrLinkId),
    SockOps(SockOpsLinkId),
    Sock(CgroupSockLinkId),
}

/// What guard attached to one interface.
struct Link {
    iface: String,
    xdp: XdpLinkId,
    tc: Option<SchedClassifierLinkId>,
}

fn map_mut<'a>(ebpf: &'a mut Ebpf, name: &'static str) -> Result<&'a mut Map, LoadError> {
    ebpf.map_mut(name).ok_or(LoadError::MissingMap(name))
}

fn map_err(map: &'static str) -> impl FnOnce(MapError) -> LoadError {
    move |source| LoadError::Map { map, source }
}

fn program_err(name: &'static str) -> impl FnOnce(ProgramError) -> LoadError {
    move |source| LoadError::Program { name, source }
}

impl Guard {
    /// Loads the object, fills generation 0 of the policy maps from `lowered` (the config
    /// entry last) and loads every program. Nothing is attached yet. The maps are sized with
    /// room for policies to grow, so later policies usually go through [`Guard::switch`].
    pub fn load(
        lowered: &Lowered,
        kernel_log: KernelLog,
        pins: Option<&Pins>,
    ) -> Result<Self, LoadError> {
        if EBPF_OBJECT.is_empty() {
            return Err(LoadError::NoObject);
        }
        let level = kernel_log.level();
        let mut capacity = Capacity::for_policy(lowered);
        // The pinned per-rule counters outlive every load. Too small for this policy: they
        // are moved into a new map of the needed size (the pin is replaced; the running
        // programs keep the old map until their links switch). Larger: used as they are.
        let outgrown = match pins {
            Some(pins) => outgrow_rule_counters(pins, &mut capacity)?,
            None => None,
        };
        let loaded = Self::load_sized(lowered, kernel_log, level, pins, capacity);
        match (loaded, outgrown) {
            (Ok(mut guard), Some(old)) => {
                guard.carry_rule_counters(&old)?;
                Ok(guard)
            }
            (Err(e), Some(old)) => {
                // Put the old counters back where they were, so nothing is lost.
                if let Some(pins) = pins {
                    let path = pins.map(maps::RULE_STATS);
                    let _ = std::fs::remove_file(&path);
                    if let Err(pin) = old.pin(&path) {
                        tracing::error!(error = %pin, "re-pinning the rule counters failed");
                    }
                }
                Err(e)
            }
            (loaded, None) => loaded,
        }
    }

    fn load_sized(
        lowered: &Lowered,
        kernel_log: KernelLog,
        level: u8,
        pins: Option<&Pins>,
        capacity: Capacity,
    ) -> Result<Self, LoadError> {
        let mut loader = EbpfLoader::new();
        if let Some(pins) = pins {
            // Shared with every other load: created and pinned by the first, reused after.
            for name in maps::STATE {
                loader.map_pin_path(name, pins.map(name));
            }
            if kernel_log != KernelLog::Off {
                loader.map_pin_path(AYA_LOGS_MAP, pins.map(AYA_LOGS_MAP));
            }
        }
        let mut ebpf = loader
            .override_global(aya_log::LEVEL, &level, true)
            .map_max_entries(maps::RULE_STATS, capacity.rules)
            .map_max_entries(
                maps::CLASS_LENS,
                GENERATIONS * capacity.classes_per_generation,
            )
            .map_max_entries(maps::SRC_HASH_V4, capacity.sources[0])
            .map_max_entries(maps::SRC_HASH_V6, capacity.sources[1])
            .map_max_entries(maps::SRC_TABLE_V6, 2 << capacity.table_v6_bits)
            .map_max_entries(maps::SRC_V4, capacity.sources[2])
            .map_max_entries(maps::SRC_V6, capacity.sources[3])
            .load(EBPF_OBJECT)?;
        // The logger owns the log map's fd: it must live as long as the programs.
        let logger = if kernel_log == KernelLog::Off {
            None
        } else {
            Some(aya_log::EbpfLogger::init(&mut ebpf)?)
        };
        for name in maps::ALL {
            map_mut(&mut ebpf, name)?;
        }
        // Generation 0 of fresh maps, which are all zero: everything is written.
        let contents = capacity.contents(lowered, 0);
        write_delta(
            &mut ebpf,
            0,
            &Delta::between(&Contents::default(), &contents),
        )?;
        set_array(&mut ebpf, maps::ACTIVE, &[(0, ActiveGeneration::default())])?;
        let xdp: &mut Xdp = program_mut(&mut ebpf, programs::XDP_INGRESS)?;
        xdp.load().map_err(program_err(programs::XDP_INGRESS))?;
        let tc: &mut SchedClassifier = program_mut(&mut ebpf, programs::TC_EGRESS)?;
        tc.load().map_err(program_err(programs::TC_EGRESS))?;
        for name in SOCK_ADDR_PROGRAMS {
            let hook: &mut CgroupSockAddr = program_mut(&mut ebpf, name)?;
            hook.load().map_err(program_err(name))?;
        }
        let sock_ops: &mut SockOps = program_mut(&mut ebpf, programs::SOCK_OPS)?;
        sock_ops.load().map_err(program_err(programs::SOCK_OPS))?;
        let sock_create: &mut CgroupSock = program_mut(&mut ebpf, programs::SOCK_CREATE)?;
        sock_create
            .load()
            .map_err(program_err(programs::SOCK_CREATE))?;
        let mut guard = Self {
            ebpf,
            logger,
            links: Vec::new(),
            cgroup_links: Vec::new(),
            active: 0,
            generations: [Some(contents), Some(Contents::default())],
            capacity,
        };
        guard.seed_flow_seen()?;
        Ok(guard)
    }

    /// Sets the [`maps::FLOW_SEEN`] flag of every flow in [`maps::FLOWS`]: flows recorded
    /// by programs that did not set flags (a guard before them, or an older instance
    /// between its last packet and the switch) keep their replies passing.
    pub fn seed_flow_seen(&mut self) -> Result<(), LoadError> {
        let mut chunks: BTreeMap<u32, Vec<usize>> = BTreeMap::new();
        {
            let flows =
                aya::maps::HashMap::<_, FlowKey, FlowState>::try_from(self.map(maps::FLOWS)?)
                    .map_err(map_err(maps::FLOWS))?;
            for key in flows.keys() {
                // A flow evicted while we iterate is simply not seeded.
                let Ok(key) = key else { continue };
                let (chunk, byte) = flow_seen_slot(&key);
                chunks.entry(chunk).or_default().push(byte);
            }
        }
        let name = maps::FLOW_SEEN;
        let mut seen = Array::<_, [u8; FLOW_SEEN_CHUNK]>::try_from(map_mut(&mut self.ebpf, name)?)
            .map_err(map_err(name))?;
        for (chunk, bytes) in chunks {
            let mut value = seen.get(&chunk, 0).map_err(map_err(name))?;
            if bytes.iter().all(|&b| value[b] != 0) {
                continue;
            }
            for b in bytes {
                value[b] = 1;
            }
            seen.set(chunk, value, 0).map_err(map_err(name))?;
        }
        Ok(())
    }

    /// Clears every [`maps::FLOW_SEEN`] flag (for tests of [`Guard::seed_flow_seen`]: the
    /// state an older guard's pins are in).
    #[doc(hidden)]
    pub fn clear_flow_seen(&mut self) -> Result<(), LoadError> {
        let name = maps::FLOW_SEEN;
        let mut seen = Array::<_, [u8; FLOW_SEEN_CHUNK]>::try_from(map_mut(&mut self.ebpf, name)?)
            .map_err(map_err(name))?;
        for chunk in 0..guard_common::FLOW_SEEN_CHUNKS {
            seen.set(chunk, [0u8; FLOW_SEEN_CHUNK], 0)
                .map_err(map_err(name))?;
        }
        Ok(())
    }

    /// Copies every per-CPU rule counter of `old` (a smaller map this load replaces) into
    /// this load's counters.
    fn carry_rule_counters(&mut self, old: &MapData) -> Result<(), LoadError> {
        let name = maps::RULE_STATS;
        let info = old.info().map_err(map_err(name))?;
        let old_map = Map::from_map_data(MapData::from_id(info.id()).map_err(map_err(name))?)
            .map_err(map_err(name))?;
        let old_counters =
            PerCpuArray::<_, RuleStats>::try_from(&old_map).map_err(map_err(name))?;
        let mut new = PerCpuArray::<_, RuleStats>::try_from(map_mut(&mut self.ebpf, name)?)
            .map_err(map_err(name))?;
        for index in 0..info.max_entries() {
            let values = old_counters.get(&index, 0).map_err(map_err(name))?;
            new.set(index, values, 0).map_err(map_err(name))?;
        }
        Ok(())
    }

    fn map(&self, name: &'static str) -> Result<&Map, LoadError> {
        self.ebpf.map(name).ok_or(LoadError::MissingMap(name))
    }

    /// A map of this instance by name, to read or write raw entries: for tests that corrupt
    /// the kernel's state on purpose (the daemon goes through the typed writers).
    pub fn raw_map_mut(&mut self, name: &str) -> Option<&mut Map> {
        self.ebpf.map_mut(name)
    }

    /// The XDP ingress program (for BPF_PROG_TEST_RUN).
    pub fn xdp(&self) -> &Xdp {
        program(&self.ebpf, programs::XDP_INGRESS).expect("loaded in Guard::load")
    }

    /// The TC egress program (for BPF_PROG_TEST_RUN).
    pub fn tc_egress(&self) -> &SchedClassifier {
        program(&self.ebpf, programs::TC_EGRESS).expect("loaded in Guard::load")
    }

    /// Loads the XDP program that only passes (the benchmark floor); see [`Guard::floor`].
    pub fn load_floor(&mut self) -> Result<(), LoadError> {
        let floor: &mut Xdp = program_mut(&mut self.ebpf, programs::XDP_FLOOR)?;
        if floor.fd().is_err() {
            floor.load().map_err(program_err(programs::XDP_FLOOR))?;
        }
        Ok(())
    }

    /// The benchmark floor program, once [`Guard::load_floor`] has loaded it.
    pub fn floor(&self) -> Result<&Xdp, LoadError> {
        program(&self.ebpf, programs::XDP_FLOOR)
    }

    /// The kernel log reader, for the daemon to poll. `None` when kernel logging is off.
    pub fn take_logger(&mut self) -> Option<KernelLogger> {
        self.logger.take()
    }

    /// The deny-event ring buffer, for the daemon to read (once).
    pub fn take_events(&mut self) -> Result<RingBuf<MapData>, LoadError> {
        let map = self
            .ebpf
            .take_map(maps::EVENTS)
            .ok_or(LoadError::MissingMap(maps::EVENTS))?;
        RingBuf::try_from(map).map_err(map_err(maps::EVENTS))
    }

    /// Kernel run statistics of every attached program (zero unless
    /// `kernel.bpf_stats_enabled` is 1).
    pub fn program_stats(&self) -> Vec<ProgramStats> {
        [programs::XDP_INGRESS, programs::TC_EGRESS]
            .into_iter()
            .chain(CGROUP_PROGRAMS)
            .filter_map(|name| {
                let info = self.ebpf.program(name)?.info().ok()?;
                Some(ProgramStats {
                    program: name.to_owned(),
                    runs: info.run_count(),
                    run_seconds: info.run_time().as_secs_f64(),
                })
            })
            .collect()
    }

    /// Current counters, summed over CPUs.
    pub fn counters(&self, rules: &[RuleInfo], slots: &[PortSlot]) -> Result<Counters, LoadError> {
        counter_maps(|name| self.ebpf.map(name).ok_or(LoadError::MissingMap(name)))?
            .read(rules, slots)
            .map_err(map_err(maps::RULE_STATS))
    }
}

/// CLOCK_MONOTONIC_COARSE in ns: the clock of `bpf_ktime_get_coarse_ns`, which the
/// programs compare a commit-confirm deadline with.
pub fn monotonic_ns() -> u64 {
    let ts = rustix::time::clock_gettime(rustix::time::ClockId::MonotonicCoarse);
    ts.tv_sec as u64 * 1_000_000_000 + ts.tv_nsec as u64
}

fn program<'a, P>(ebpf: &'a Ebpf, name: &'static str) -> Result<&'a P, LoadError>
where
    &'a P: TryFrom<&'a aya::programs::Program, Error = ProgramError>,
{
    ebpf.program(name)
        .ok_or(LoadError::MissingProgram(name))?
        .try_into()
        .map_err(program_err(name))
}

fn program_mut<'a, P>(ebpf: &'a mut Ebpf, name: &'static str) -> Result<&'a mut P, LoadError>
where
    &'a mut P: TryFrom<&'a mut aya::programs::Program, Error = ProgramError>,
{
    ebpf.program_mut(name)
        .ok_or(LoadError::MissingProgram(name))?
        .try_into()
        .map_err(program_err(name))
}
