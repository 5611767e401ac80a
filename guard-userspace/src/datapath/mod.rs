//! guard's eBPF object in the kernel: load it, write the lowered policy into its maps,
//! attach the XDP program, pin the maps, read the counters.
//!
//! Every map is taken by its name from `guard_common::maps`; a missing one is an error.

pub mod counters;
pub mod generations;
pub mod sys;

use std::{collections::BTreeMap, os::fd::AsFd as _, path::Path};

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
    ActiveGeneration, ClassLens, ConnStats, GENERATIONS, GuardConfig, MAX_CLASSES, MAX_RULES,
    MAX_SRC_ENTRIES, POLICY_PORTS_LEN, PORTS_LEN, PROTOS_LEN, PortStats, RttHist, RuleRef,
    RuleStats, SrcHashKeyV4, SrcHashKeyV6, SrcKeyV4, SrcKeyV6, gen_index, maps, programs,
};

use crate::{
    datapath::counters::{CounterMaps, Counters},
    datapath::generations::{Changes, Contents, Delta},
    policy::{Lowered, PortSlot, RuleInfo},
};

/// The eBPF object built by `guard-userspace/build.rs`: empty in a build made without
/// `GUARD_EBPF=build` (plain `cargo build`), which then refuses to load.
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

/// What guard keeps in bpffs so enforcement and counters outlive the daemon:
/// `PIN_DIR/maps/<map>` (the state maps every load shares) and `PIN_DIR/links/<hook>`.
#[derive(Debug, Clone)]
pub struct Pins {
    dir: std::path::PathBuf,
}

impl Pins {
    pub fn new(dir: &Path) -> Self {
        Self {
            dir: dir.to_path_buf(),
        }
    }

    pub fn dir(&self) -> &Path {
        &self.dir
    }

    pub fn map(&self, name: &str) -> std::path::PathBuf {
        self.dir.join("maps").join(name)
    }

    pub fn link(&self, hook: &str) -> std::path::PathBuf {
        self.dir.join("links").join(hook)
    }

    /// Creates the directories (mounting bpffs at /sys/fs/bpf when needed).
    pub fn prepare(&self) -> std::io::Result<()> {
        crate::linux::host::prepare_pin_dir(&self.dir)?;
        std::fs::create_dir_all(self.dir.join("maps"))?;
        std::fs::create_dir_all(self.dir.join("links"))
    }

    /// The mark of this guard's pin layout ([`maps::PIN_LAYOUT`]): an empty directory, the
    /// only kind of entry bpffs holds besides pinned objects.
    fn layout_mark(layout: u32) -> String {
        format!("layout-{layout}")
    }

    /// The pin layout of what is pinned here: `None` when nothing is pinned; layout 1 when
    /// objects are pinned without a mark (a guard from before layouts were numbered).
    pub fn pinned_layout(&self) -> Option<u32> {
        let marked = std::fs::read_dir(&self.dir).ok()?.flatten().find_map(|e| {
            e.file_name()
                .to_str()?
                .strip_prefix("layout-")?
                .parse::<u32>()
                .ok()
        });
        let pinned =
            |sub: &str| std::fs::read_dir(self.dir.join(sub)).is_ok_and(|mut d| d.next().is_some());
        match marked {
            Some(layout) => Some(layout),
            None if pinned("maps") || pinned("links") => Some(1),
            None => None,
        }
    }

    /// Checks that what is pinned here has this guard's layout, marking an empty pin
    /// directory as ours. Another layout is refused before anything is touched: the programs
    /// attached by the guard that made the pins keep enforcing.
    pub fn adopt_layout(&self) -> Result<(), LoadError> {
        match self.pinned_layout() {
            Some(maps::PIN_LAYOUT) => Ok(()),
            Some(found) => Err(LoadError::PinLayout {
                dir: self.dir.display().to_string(),
                found,
            }),
            None => std::fs::create_dir_all(self.dir.join(Self::layout_mark(maps::PIN_LAYOUT)))
                .map_err(|source| LoadError::PinDir {
                    dir: self.dir.display().to_string(),
                    source,
                }),
        }
    }

    /// True when links are pinned: a daemon ran and its programs are still attached.
    pub fn has_links(&self) -> bool {
        std::fs::read_dir(self.dir.join("links")).is_ok_and(|mut d| d.next().is_some())
    }

    /// Unpins one hook's link; the kernel detaches it once nothing else holds it.
    pub fn remove_link(&self, hook: &str) {
        let _ = std::fs::remove_file(self.link(hook));
    }

    /// Unpins everything: the links detach, the maps are freed (`guard unload`).
    pub fn remove_all(&self) -> std::io::Result<()> {
        match std::fs::remove_dir_all(&self.dir) {
            Err(e) if e.kind() != std::io::ErrorKind::NotFound => Err(e),
            _ => Ok(()),
        }
    }
}

/// Pin names of the links on an interface and on the cgroup.
pub fn xdp_hook(iface: &str) -> String {
    format!("xdp-{iface}")
}
pub fn tc_hook(iface: &str) -> String {
    format!("tc-{iface}")
}
pub fn cgroup_hook(program: &str) -> String {
    format!("cgroup-{program}")
}

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
}

impl Capacity {
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
        let contents = Contents::of(lowered, 0, capacity.classes_per_generation);
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
        Ok(Self {
            ebpf,
            logger,
            links: Vec::new(),
            cgroup_links: Vec::new(),
            active: 0,
            generations: [Some(contents), Some(Contents::default())],
            capacity,
        })
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

    /// True when `lowered` can replace the running policy in this instance's maps
    /// ([`Guard::switch`]); otherwise it needs a new instance ([`Guard::load`]).
    pub fn fits(&self, lowered: &Lowered) -> bool {
        let Some(active) = &self.generations[self.active as usize] else {
            return false;
        };
        if self.generations[1 - self.active as usize].is_none() {
            return false;
        }
        let cap = &self.capacity;
        let needed = [
            lowered.src_hash_v4.len(),
            lowered.src_hash_v6.len(),
            lowered.src_v4.len(),
            lowered.src_v6.len(),
        ];
        let rules_needed = lowered.rules.iter().map(|r| r.index + 1).max().unwrap_or(0);
        rules_needed <= cap.rules
            && lowered.classes < cap.classes_per_generation
            && active
                .source_entries()
                .iter()
                .zip(needed)
                .zip(cap.sources)
                .all(|((&running, new), room)| (running + new) as u32 <= room)
    }

    /// Makes `lowered` the running policy without reloading anything: writes the entries
    /// that differ into the inactive generation of the policy maps, zeroes the counters of
    /// new rules and ports, then flips the active generation (one map write: each program
    /// run sees the old policy or the new one, never a mix). Returns the number of map
    /// writes. Call only when [`Guard::fits`]; on an error the running policy stays.
    ///
    /// With `deadline_ns` (CLOCK_MONOTONIC_COARSE, see [`monotonic_ns`]) the switch is
    /// provisional: unless [`Guard::confirm`] comes first, the programs themselves go back
    /// to the previous generation at the deadline, whether or not a daemon is running.
    pub fn switch(
        &mut self,
        lowered: &Lowered,
        deadline_ns: Option<u64>,
    ) -> Result<usize, LoadError> {
        let target = 1 - self.active;
        let contents = Contents::of(lowered, target, self.capacity.classes_per_generation);
        let old = self.generations[target as usize]
            .take()
            .expect("Guard::fits checked both generations");
        let delta = Delta::between(&old, &contents);
        // From here until the write succeeds the target generation's contents are unknown
        // (`None`): a failure leaves the active generation running and forces a new
        // instance next time.
        write_delta(&mut self.ebpf, target, &delta)?;
        self.generations[target as usize] = Some(contents);
        self.zero_fresh(lowered)?;
        let active = ActiveGeneration {
            generation: target,
            fallback: self.active,
            deadline_ns: deadline_ns.unwrap_or(0),
        };
        set_array(&mut self.ebpf, maps::ACTIVE, &[(0, active)])?;
        self.active = target;
        Ok(delta.writes() + 1)
    }

    /// Makes the running generation final: a provisional [`Guard::switch`]'s deadline is
    /// cleared.
    pub fn confirm(&mut self) -> Result<(), LoadError> {
        self.set_active(self.active)
    }

    /// Undoes the [`Guard::switch`] just made: the programs judge by the previous generation
    /// again (the switch wrote only the other one, so it is intact).
    pub fn revert(&mut self) -> Result<(), LoadError> {
        self.set_active(1 - self.active)
    }

    fn set_active(&mut self, generation: u32) -> Result<(), LoadError> {
        let active = ActiveGeneration {
            generation,
            fallback: generation,
            deadline_ns: 0,
        };
        set_array(&mut self.ebpf, maps::ACTIVE, &[(0, active)])?;
        self.active = generation;
        Ok(())
    }

    /// The kernel's [`maps::ACTIVE`] record.
    pub fn active_record(&self) -> Result<ActiveGeneration, LoadError> {
        Array::<_, ActiveGeneration>::try_from(self.map(maps::ACTIVE)?)
            .map_err(map_err(maps::ACTIVE))?
            .get(&0, 0)
            .map_err(map_err(maps::ACTIVE))
    }

    /// Drift: what the kernel's policy maps hold for the active generation, compared with
    /// what this daemon wrote there. Each difference is described (map, entries that
    /// differ); none means the kernel judges by exactly the running policy.
    ///
    /// `recorded` is the recorded policy lowered again (the daemon lowers the policy text
    /// whose hash the state file records, with the recorded rule and port slots), so the
    /// kernel is compared with what was recorded, not with what this process remembers it
    /// wrote.
    pub fn verify(&self, recorded: &Lowered) -> Result<Vec<String>, LoadError> {
        let mut found = Vec::new();
        let record = self.active_record()?;
        let flag = record.in_force(monotonic_ns());
        if flag != self.active {
            found.push(format!(
                "{}: the programs judge by generation {flag}{}, the daemon wrote generation {}",
                maps::ACTIVE,
                if record.generation == self.active {
                    " (a commit-confirm deadline passed)"
                } else {
                    ""
                },
                self.active
            ));
        }
        let expected = Contents::of(recorded, self.active, self.capacity.classes_per_generation);
        let read = self.read_generation(self.active)?;
        for (map, count) in Delta::between(&expected.without_zeros(), &read).counts() {
            found.push(format!(
                "{map}: {count} entr{} differ from the running policy",
                if count == 1 { "y" } else { "ies" }
            ));
        }
        Ok(found)
    }

    fn map(&self, name: &'static str) -> Result<&Map, LoadError> {
        self.ebpf.map(name).ok_or(LoadError::MissingMap(name))
    }

    /// The non-zero entries generation `generation` holds in the kernel's policy maps.
    fn read_generation(&self, generation: u32) -> Result<Contents, LoadError> {
        let classes = self.capacity.classes_per_generation;
        let own_class = |c: u32| c / classes == generation & 1;
        let array = |name: &'static str, len: u32| -> Result<BTreeMap<u32, u32>, LoadError> {
            let a = Array::<_, u32>::try_from(self.map(name)?).map_err(map_err(name))?;
            let mut out = BTreeMap::new();
            for i in 0..len {
                let index = gen_index(generation, len, i);
                let v = a.get(&index, 0).map_err(map_err(name))?;
                if v != 0 {
                    out.insert(index, v);
                }
            }
            Ok(out)
        };
        let config = Array::<_, GuardConfig>::try_from(self.map(maps::CONFIG)?)
            .map_err(map_err(maps::CONFIG))?
            .get(&generation, 0)
            .map_err(map_err(maps::CONFIG))?;
        let lens = Array::<_, ClassLens>::try_from(self.map(maps::CLASS_LENS)?)
            .map_err(map_err(maps::CLASS_LENS))?;
        let mut class_lens = BTreeMap::new();
        let first = (generation & 1) * classes;
        for c in first..first + classes {
            let v = lens.get(&c, 0).map_err(map_err(maps::CLASS_LENS))?;
            if v != ClassLens::default() {
                class_lens.insert(c, v);
            }
        }
        Ok(Contents {
            config,
            ports: array(maps::PORTS, POLICY_PORTS_LEN)?,
            protos: array(maps::PROTOS, PROTOS_LEN)?,
            listen: array(maps::LISTEN, PORTS_LEN)?.into_keys().collect(),
            port_slots: array(maps::PORT_SLOTS, PORTS_LEN)?,
            class_lens,
            hash_v4: read_hash(
                self.map(maps::SRC_HASH_V4)?,
                maps::SRC_HASH_V4,
                |k: &SrcHashKeyV4| own_class(k.class),
            )?,
            hash_v6: read_hash(
                self.map(maps::SRC_HASH_V6)?,
                maps::SRC_HASH_V6,
                |k: &SrcHashKeyV6| own_class(k.class),
            )?,
            trie_v4: read_trie(self.map(maps::SRC_V4)?, maps::SRC_V4, |k: &SrcKeyV4| {
                own_class(u32::from_be_bytes(k.class))
            })?,
            trie_v6: read_trie(self.map(maps::SRC_V6)?, maps::SRC_V6, |k: &SrcKeyV6| {
                own_class(u32::from_be_bytes(k.class))
            })?,
        })
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

    /// Attaches to `iface`: the XDP filter on ingress (native when the driver supports it,
    /// else generic (skb) XDP, e.g. virtio_net without spare TX queues) and the flow recorder
    /// on TC egress.
    ///
    /// With `pins`, the links are pinned so they outlive the daemon; when both are pinned
    /// already (a previous load or daemon), they are kept and switched to this load's
    /// programs atomically. Without `pins`, `self` owns the links: dropping it detaches them.
    pub fn attach(&mut self, iface: &str, pins: Option<&Pins>) -> Result<Attach, LoadError> {
        if crate::linux::host::if_index(iface).is_none() {
            return Err(LoadError::NoSuchInterface(iface.to_owned()));
        }
        if let Some(pins) = pins {
            let (xdp_pin, tc_pin) = (pins.link(&xdp_hook(iface)), pins.link(&tc_hook(iface)));
            if xdp_pin.exists() && tc_pin.exists() {
                self.replace(&xdp_pin, programs::XDP_INGRESS)?;
                self.replace(&tc_pin, programs::TC_EGRESS)?;
                return Ok(Attach::Replaced);
            }
            // A half-pinned interface (a crash between the two pins): start over.
            pins.remove_link(&xdp_hook(iface));
            pins.remove_link(&tc_hook(iface));
        }
        let mode = self.attach_xdp(iface, pins)?;
        self.attach_tc(iface, pins)?;
        Ok(Attach::New(mode))
    }

    /// A new XDP link on `iface` (native when the driver supports it, else generic), pinned
    /// with `pins`. The daemon also uses it alone, for an XDP link detached behind its back.
    pub fn attach_xdp(
        &mut self,
        iface: &str,
        pins: Option<&Pins>,
    ) -> Result<AttachMode, LoadError> {
        let attach_err = |source| LoadError::Attach {
            iface: iface.to_owned(),
            source,
        };
        let xdp: &mut Xdp = program_mut(&mut self.ebpf, programs::XDP_INGRESS)?;
        let (xdp_link, mode) = match xdp.attach(iface, XdpMode::Default) {
            Ok(id) => (id, AttachMode::Default),
            Err(native) => {
                let id = xdp.attach(iface, XdpMode::Skb).map_err(attach_err)?;
                tracing::warn!(
                    iface,
                    error = error_chain(&native),
                    "native XDP unavailable; attached in generic (skb) mode, which costs more per packet"
                );
                (id, AttachMode::Generic)
            }
        };
        if let Some(pins) = pins {
            let link = xdp.take_link(xdp_link).map_err(attach_err)?;
            pin_link(link, &pins.link(&xdp_hook(iface)))?;
        } else {
            // Recorded now, so the XDP link is detached even if the TC attach fails.
            self.links.push(Link {
                iface: iface.to_owned(),
                xdp: xdp_link,
                tc: None,
            });
        }
        Ok(mode)
    }

    /// A new TC egress link on `iface`, pinned with `pins` (see [`Guard::attach_xdp`]).
    pub fn attach_tc(&mut self, iface: &str, pins: Option<&Pins>) -> Result<(), LoadError> {
        let attach_err = |source| LoadError::Attach {
            iface: iface.to_owned(),
            source,
        };
        // Kernels before 6.6 have no TCX and need a clsact qdisc for TC programs.
        let has_tcx = KernelVersion::current().is_ok_and(|v| v >= KernelVersion::new(6, 6, 0));
        if !has_tcx && let Err(err) = tc::qdisc_add_clsact(iface) {
            tracing::debug!(iface, error = %err, "adding clsact (it may exist already)");
        }
        let tc: &mut SchedClassifier = program_mut(&mut self.ebpf, programs::TC_EGRESS)?;
        let tc_link = tc.attach(iface, TcAttachType::Egress).map_err(attach_err)?;
        if let Some(pins) = pins {
            let link = tc.take_link(tc_link).map_err(attach_err)?;
            pin_link(link, &pins.link(&tc_hook(iface)))?;
        } else if let Some(link) = self.links.iter_mut().rfind(|l| l.iface == iface) {
            link.tc = Some(tc_link);
        }
        Ok(())
    }

    /// Switches the pinned link at `pin` to this load's program `name`.
    fn replace(&self, pin: &Path, name: &'static str) -> Result<(), LoadError> {
        let err = |source| LoadError::Replace {
            path: pin.display().to_string(),
            source,
        };
        let link = crate::datapath::sys::obj_get(pin).map_err(err)?;
        let prog = self
            .ebpf
            .program(name)
            .ok_or(LoadError::MissingProgram(name))?;
        let prog_fd = prog.fd().map_err(program_err(name))?;
        crate::datapath::sys::link_update(link.as_fd(), prog_fd.as_fd()).map_err(err)
    }

    /// Attaches the socket-address hooks (`[listen]` at bind, `[[egress]]` at connect and
    /// sendmsg) and sock_ops accounting to the cgroup v2 directory `cgroup`. With `pins`,
    /// as [`Guard::attach`]: pinned links are kept and switched to this load's programs (the
    /// caller unpins them first when the cgroup changes). The mode is `Single` (flags 0)
    /// because that is what `bpf_link_create` accepts for cgroups; cgroup links always sit
    /// alongside the other programs attached there (the kernel uses BPF_F_ALLOW_MULTI).
    pub fn attach_cgroup(&mut self, cgroup: &Path, pins: Option<&Pins>) -> Result<(), LoadError> {
        if !crate::linux::host::is_cgroup2(cgroup) {
            return Err(LoadError::NotCgroup2(cgroup.display().to_string()));
        }
        let dir = std::fs::File::open(cgroup).map_err(|source| LoadError::Cgroup {
            path: cgroup.display().to_string(),
            source,
        })?;
        let attach_err = |source| LoadError::AttachCgroup {
            path: cgroup.display().to_string(),
            source,
        };
        for name in SOCK_ADDR_PROGRAMS
            .into_iter()
            .chain([programs::SOCK_OPS, programs::SOCK_CREATE])
        {
            if let Some(pins) = pins {
                let pin = pins.link(&cgroup_hook(name));
                if pin.exists() {
                    self.replace(&pin, name)?;
                    continue;
                }
            }
            // Attach program `name` as type `$kind`, then pin the link (or keep its id in
            // `$own` when nothing is pinned). aya's three cgroup program types share no trait.
            macro_rules! attach {
                ($kind:ty, $own:expr) => {{
                    let hook: &mut $kind = program_mut(&mut self.ebpf, name)?;
                    let id = hook
                        .attach(&dir, CgroupAttachMode::Single)
                        .map_err(attach_err)?;
                    match pins {
                        Some(pins) => pin_link(
                            hook.take_link(id).map_err(attach_err)?,
                            &pins.link(&cgroup_hook(name)),
                        )?,
                        None => self.cgroup_links.push($own(id)),
                    }
                }};
            }
            match name {
                programs::SOCK_CREATE => attach!(CgroupSock, CgroupLink::Sock),
                programs::SOCK_OPS => attach!(SockOps, CgroupLink::SockOps),
                _ => attach!(CgroupSockAddr, |id| CgroupLink::SockAddr(name, id)),
            }
        }
        Ok(())
    }

    /// Zeroes the counters of rule indices and port slots the policy gives to new names
    /// (they may hold a removed rule's counts).
    pub fn zero_fresh(&mut self, lowered: &Lowered) -> Result<(), LoadError> {
        let cpus = aya::util::nr_cpus().map_err(|(_, e)| LoadError::Cpus(e))?;
        let mut rules =
            PerCpuArray::<_, RuleStats>::try_from(map_mut(&mut self.ebpf, maps::RULE_STATS)?)
                .map_err(map_err(maps::RULE_STATS))?;
        for &index in &lowered.fresh_rules {
            if index >= rules.len() {
                return Err(LoadError::Capacity {
                    map: maps::RULE_STATS,
                    capacity: rules.len(),
                    needed: index,
                });
            }
            let zero = aya::maps::PerCpuValues::try_from(vec![RuleStats::default(); cpus])
                .map_err(LoadError::Cpus)?;
            rules
                .set(index, zero, 0)
                .map_err(map_err(maps::RULE_STATS))?;
        }
        let mut ports =
            PerCpuArray::<_, PortStats>::try_from(map_mut(&mut self.ebpf, maps::PORT_STATS)?)
                .map_err(map_err(maps::PORT_STATS))?;
        for &slot in &lowered.fresh_slots {
            let zero = aya::maps::PerCpuValues::try_from(vec![PortStats::default(); cpus])
                .map_err(LoadError::Cpus)?;
            ports
                .set(slot, zero, 0)
                .map_err(map_err(maps::PORT_STATS))?;
        }
        Ok(())
    }

    /// Detaches from every interface and the cgroup.
    pub fn detach_all(&mut self) {
        for link in std::mem::take(&mut self.cgroup_links) {
            let result = match link {
                CgroupLink::SockAddr(name, id) => {
                    program_mut::<CgroupSockAddr>(&mut self.ebpf, name).map(|p| p.detach(id))
                }
                CgroupLink::SockOps(id) => {
                    program_mut::<SockOps>(&mut self.ebpf, programs::SOCK_OPS).map(|p| p.detach(id))
                }
                CgroupLink::Sock(id) => {
                    program_mut::<CgroupSock>(&mut self.ebpf, programs::SOCK_CREATE)
                        .map(|p| p.detach(id))
                }
            };
            if let Ok(Err(err)) = result {
                tracing::warn!(
                    error = error_chain(&err),
                    "detaching a cgroup program failed"
                );
            }
        }
        for link in std::mem::take(&mut self.links) {
            if let Ok(xdp) = program_mut::<Xdp>(&mut self.ebpf, programs::XDP_INGRESS)
                && let Err(err) = xdp.detach(link.xdp)
            {
                tracing::warn!(
                    iface = link.iface,
                    error = error_chain(&err),
                    "detaching XDP failed"
                );
            }
            if let Some(id) = link.tc
                && let Ok(tc) = program_mut::<SchedClassifier>(&mut self.ebpf, programs::TC_EGRESS)
                && let Err(err) = tc.detach(id)
            {
                tracing::warn!(
                    iface = link.iface,
                    error = error_chain(&err),
                    "detaching TC failed"
                );
            }
        }
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
                let fd = self.ebpf.program(name)?.fd().ok()?;
                let (runs, ns) = crate::datapath::sys::prog_run_stats(fd.as_fd()).ok()?;
                Some(ProgramStats {
                    program: name.to_owned(),
                    runs,
                    run_seconds: ns as f64 / 1e9,
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

/// When the pinned rule-counter map holds fewer slots than `capacity` asks, unpins it and
/// returns it (its counters are carried into the new map the load creates). When it holds
/// more, `capacity` grows to its size, so the loader's idea of the map is the kernel's.
fn outgrow_rule_counters(
    pins: &Pins,
    capacity: &mut Capacity,
) -> Result<Option<MapData>, LoadError> {
    let name = maps::RULE_STATS;
    let path = pins.map(name);
    if !path.exists() {
        return Ok(None);
    }
    let pinned = MapData::from_pin(&path).map_err(map_err(name))?;
    let slots = pinned.info().map_err(map_err(name))?.max_entries();
    if slots >= capacity.rules {
        capacity.rules = slots;
        return Ok(None);
    }
    tracing::info!(
        from = slots,
        to = capacity.rules,
        "the policy outgrows the pinned rule counters: moving them into a larger map"
    );
    std::fs::remove_file(&path).map_err(|source| LoadError::PinLink {
        path: path.display().to_string(),
        source,
    })?;
    Ok(Some(pinned))
}

/// CLOCK_MONOTONIC_COARSE in ns: the clock of `bpf_ktime_get_coarse_ns`, which the
/// programs compare a commit-confirm deadline with.
pub fn monotonic_ns() -> u64 {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: ts is a valid out-pointer.
    unsafe { libc::clock_gettime(libc::CLOCK_MONOTONIC_COARSE, &mut ts) };
    ts.tv_sec as u64 * 1_000_000_000 + ts.tv_nsec as u64
}

/// Pins a link (any type aya can turn into an fd link) at `path`.
fn pin_link<L>(link: L, path: &Path) -> Result<(), LoadError>
where
    aya::programs::links::FdLink: TryFrom<L, Error = aya::programs::links::LinkError>,
{
    let err = |e: &dyn std::fmt::Display| LoadError::PinLink {
        path: path.display().to_string(),
        source: std::io::Error::other(e.to_string()),
    };
    let fd_link = aya::programs::links::FdLink::try_from(link).map_err(|e| err(&e))?;
    fd_link.pin(path).map_err(|e| err(&e))?;
    Ok(())
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

/// Performs `delta` on generation `generation` of the policy maps: deletions before
/// insertions (so a full map has room), the config last.
fn write_delta(ebpf: &mut Ebpf, generation: u32, delta: &Delta) -> Result<(), LoadError> {
    set_array(ebpf, maps::PORTS, &delta.ports)?;
    set_array(ebpf, maps::PROTOS, &delta.protos)?;
    set_array(ebpf, maps::LISTEN, &delta.listen)?;
    set_array(ebpf, maps::PORT_SLOTS, &delta.port_slots)?;
    set_array(ebpf, maps::CLASS_LENS, &delta.class_lens)?;
    write_hash(ebpf, maps::SRC_HASH_V4, &delta.hash_v4)?;
    write_hash(ebpf, maps::SRC_HASH_V6, &delta.hash_v6)?;
    write_trie(ebpf, maps::SRC_V4, &delta.trie_v4)?;
    write_trie(ebpf, maps::SRC_V6, &delta.trie_v6)?;
    if let Some(config) = delta.config {
        set_array(ebpf, maps::CONFIG, &[(generation, config)])?;
    }
    Ok(())
}

fn set_array<V: aya::Pod>(
    ebpf: &mut Ebpf,
    name: &'static str,
    entries: &[(u32, V)],
) -> Result<(), LoadError> {
    let mut array = Array::<_, V>::try_from(map_mut(ebpf, name)?).map_err(map_err(name))?;
    for &(index, value) in entries {
        array.set(index, value, 0).map_err(map_err(name))?;
    }
    Ok(())
}

fn write_hash<K: aya::Pod>(
    ebpf: &mut Ebpf,
    name: &'static str,
    changes: &Changes<K>,
) -> Result<(), LoadError> {
    let mut hash =
        HashMap::<_, K, RuleRef>::try_from(map_mut(ebpf, name)?).map_err(map_err(name))?;
    for key in &changes.delete {
        hash.remove(key).map_err(map_err(name))?;
    }
    for (key, value) in &changes.insert {
        hash.insert(key, value, 0).map_err(map_err(name))?;
    }
    Ok(())
}

fn write_trie<K: aya::Pod>(
    ebpf: &mut Ebpf,
    name: &'static str,
    changes: &Changes<(u32, K)>,
) -> Result<(), LoadError> {
    let mut trie =
        LpmTrie::<_, K, RuleRef>::try_from(map_mut(ebpf, name)?).map_err(map_err(name))?;
    for (prefix, key) in &changes.delete {
        trie.remove(&Key::new(*prefix, *key))
            .map_err(map_err(name))?;
    }
    for ((prefix, key), value) in &changes.insert {
        trie.insert(&Key::new(*prefix, *key), *value, 0)
            .map_err(map_err(name))?;
    }
    Ok(())
}

fn read_hash<K: aya::Pod + Eq + std::hash::Hash>(
    map: &Map,
    name: &'static str,
    keep: impl Fn(&K) -> bool,
) -> Result<std::collections::HashMap<K, RuleRef>, LoadError> {
    let hash = HashMap::<_, K, RuleRef>::try_from(map).map_err(map_err(name))?;
    let mut out = std::collections::HashMap::new();
    for entry in hash.iter() {
        let (k, v) = entry.map_err(map_err(name))?;
        if keep(&k) {
            out.insert(k, v);
        }
    }
    Ok(out)
}

fn read_trie<K: aya::Pod + Eq + std::hash::Hash>(
    map: &Map,
    name: &'static str,
    keep: impl Fn(&K) -> bool,
) -> Result<std::collections::HashMap<(u32, K), RuleRef>, LoadError> {
    let trie = LpmTrie::<_, K, RuleRef>::try_from(map).map_err(map_err(name))?;
    let mut out = std::collections::HashMap::new();
    for entry in trie.iter() {
        let (k, v) = entry.map_err(map_err(name))?;
        if keep(&k.data()) {
            out.insert((k.prefix_len(), k.data()), v);
        }
    }
    Ok(out)
}

/// Counters read from maps pinned by a running (or crashed) daemon.
pub fn pinned_counters(
    pins: &Pins,
    rules: &[RuleInfo],
    slots: &[PortSlot],
) -> Result<Counters, LoadError> {
    if let Some(found) = pins.pinned_layout().filter(|&l| l != maps::PIN_LAYOUT) {
        return Err(LoadError::PinLayout {
            dir: pins.dir().display().to_string(),
            found,
        });
    }
    counter_maps(|name| {
        let data = MapData::from_pin(pins.map(name)).map_err(map_err(name))?;
        Map::from_map_data(data).map_err(map_err(name))
    })?
    .read(rules, slots)
    .map_err(map_err(maps::RULE_STATS))
}

/// The counter maps, each taken by name through `get` (a live `&Map` or a pinned `Map`).
fn counter_maps<M, T>(
    mut get: impl FnMut(&'static str) -> Result<M, LoadError>,
) -> Result<CounterMaps<T>, LoadError>
where
    T: std::borrow::Borrow<MapData>,
    M: TryInto<PerCpuArray<T, RuleStats>, Error = MapError>
        + TryInto<PerCpuArray<T, u64>, Error = MapError>
        + TryInto<PerCpuArray<T, PortStats>, Error = MapError>
        + TryInto<PerCpuHashMap<T, u32, ConnStats>, Error = MapError>
        + TryInto<PerCpuHashMap<T, u32, RttHist>, Error = MapError>
        + TryInto<PerCpuHashMap<T, u32, u64>, Error = MapError>,
{
    Ok(CounterMaps {
        rules: get(maps::RULE_STATS)?
            .try_into()
            .map_err(map_err(maps::RULE_STATS))?,
        reasons: get(maps::REASONS)?
            .try_into()
            .map_err(map_err(maps::REASONS))?,
        ports: get(maps::PORT_STATS)?
            .try_into()
            .map_err(map_err(maps::PORT_STATS))?,
        events: get(maps::EVENT_STATS)?
            .try_into()
            .map_err(map_err(maps::EVENT_STATS))?,
        conns: get(maps::CONN_STATS)?
            .try_into()
            .map_err(map_err(maps::CONN_STATS))?,
        rtt: get(maps::RTT_HIST)?
            .try_into()
            .map_err(map_err(maps::RTT_HIST))?,
        bind_denied: get(maps::BIND_DENIED)?
            .try_into()
            .map_err(map_err(maps::BIND_DENIED))?,
    })
}
