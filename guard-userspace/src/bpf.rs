//! guard's eBPF object in the kernel: load it, write the lowered policy into its maps,
//! attach the XDP program, pin the maps, read the counters.
//!
//! Every map is taken by its name from `guard_common::maps`; a missing one is an error.

use std::path::Path;

use aya::{
    Ebpf, EbpfLoader,
    maps::{
        Array, HashMap, LpmTrie, Map, MapData, MapError, PerCpuArray, PerCpuHashMap, RingBuf,
        lpm_trie::Key,
    },
    programs::{
        CgroupAttachMode, CgroupSockAddr, ProgramError, SchedClassifier, SockOps, TcAttachType,
        Xdp, XdpMode,
        cgroup_sock_addr::CgroupSockAddrLinkId,
        sock_ops::SockOpsLinkId,
        tc::{self, SchedClassifierLinkId},
        xdp::XdpLinkId,
    },
    util::KernelVersion,
};
use guard_common::{
    ClassLens, ConnStats, GuardConfig, MAX_CLASSES, MAX_RULES, MAX_SRC_ENTRIES, PortStats, RttHist,
    RuleRef, RuleStats, SrcKeyV4, SrcKeyV6, maps, programs,
};

use crate::{
    counters::{CounterMaps, Counters},
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
    #[error("pinning map {map} at {path}: {source}")]
    Pin {
        map: &'static str,
        path: String,
        #[source]
        source: aya::pin::PinError,
    },
    #[error("starting the kernel log reader: {0}")]
    Log(#[from] aya_log::Error),
}

/// Which kernel log records (aya-log) the programs emit. Per-packet records cost more than
/// the filter itself, so the default is `Off`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Default, clap::ValueEnum)]
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

pub type KernelLogger = aya_log::EbpfLogger<&'static dyn log::Log>;

/// A loaded, configured (not yet attached) guard.
pub struct Guard {
    ebpf: Ebpf,
    logger: Option<KernelLogger>,
    links: Vec<Link>,
    cgroup_links: Vec<CgroupLink>,
}

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
}

/// What guard attached to one interface.
struct Link {
    iface: String,
    xdp: XdpLinkId,
    mode: AttachMode,
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
    /// Loads the object, fills every map from `lowered` (the config entry last) and loads the
    /// XDP and TC programs. Nothing is attached yet.
    pub fn load(lowered: &Lowered, kernel_log: KernelLog) -> Result<Self, LoadError> {
        if EBPF_OBJECT.is_empty() {
            return Err(LoadError::NoObject);
        }
        let level = kernel_log.level();
        let rule_capacity = MAX_RULES.max((lowered.rules.len() as u32).next_power_of_two());
        let v4_capacity = MAX_SRC_ENTRIES.max((lowered.src_v4.len() as u32).next_power_of_two());
        let v6_capacity = MAX_SRC_ENTRIES.max((lowered.src_v6.len() as u32).next_power_of_two());
        let class_capacity = MAX_CLASSES.max((lowered.classes + 1).next_power_of_two());
        let hash_v4_capacity =
            MAX_SRC_ENTRIES.max((lowered.src_hash_v4.len() as u32).next_power_of_two());
        let hash_v6_capacity =
            MAX_SRC_ENTRIES.max((lowered.src_hash_v6.len() as u32).next_power_of_two());
        let mut ebpf = EbpfLoader::new()
            .override_global(aya_log::LEVEL, &level, true)
            .map_max_entries(maps::RULE_STATS, rule_capacity)
            .map_max_entries(maps::SRC_V4, v4_capacity)
            .map_max_entries(maps::SRC_V6, v6_capacity)
            .map_max_entries(maps::CLASS_LENS, class_capacity)
            .map_max_entries(maps::SRC_HASH_V4, hash_v4_capacity)
            .map_max_entries(maps::SRC_HASH_V6, hash_v6_capacity)
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
        write_maps(&mut ebpf, lowered)?;
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
        Ok(Self {
            ebpf,
            logger,
            links: Vec::new(),
            cgroup_links: Vec::new(),
        })
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
    /// on TC egress. Returns the XDP mode used. Links are owned by `self`: dropping it
    /// detaches them.
    pub fn attach(&mut self, iface: &str) -> Result<AttachMode, LoadError> {
        if crate::host::if_index(iface).is_none() {
            return Err(LoadError::NoSuchInterface(iface.to_owned()));
        }
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
        // Recorded now, so the XDP link is detached even if the TC attach fails.
        self.links.push(Link {
            iface: iface.to_owned(),
            xdp: xdp_link,
            mode,
            tc: None,
        });
        // Kernels before 6.6 have no TCX and need a clsact qdisc for TC programs.
        let has_tcx = KernelVersion::current().is_ok_and(|v| v >= KernelVersion::new(6, 6, 0));
        if !has_tcx && let Err(err) = tc::qdisc_add_clsact(iface) {
            tracing::debug!(iface, error = %err, "adding clsact (it may exist already)");
        }
        let tc: &mut SchedClassifier = program_mut(&mut self.ebpf, programs::TC_EGRESS)?;
        let tc_link = tc.attach(iface, TcAttachType::Egress).map_err(attach_err)?;
        if let Some(link) = self.links.last_mut() {
            link.tc = Some(tc_link);
        }
        Ok(mode)
    }

    /// Attaches the `bind()` hooks and sock_ops accounting to the cgroup v2 directory
    /// `cgroup`. Links are owned by `self`. The mode is `Single` (flags 0) because that is
    /// what `bpf_link_create` accepts for cgroups; cgroup links always sit alongside the
    /// other programs attached there (the kernel attaches them with BPF_F_ALLOW_MULTI).
    pub fn attach_cgroup(&mut self, cgroup: &Path) -> Result<(), LoadError> {
        if !crate::host::is_cgroup2(cgroup) {
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
        for name in SOCK_ADDR_PROGRAMS {
            let hook: &mut CgroupSockAddr = program_mut(&mut self.ebpf, name)?;
            let id = hook
                .attach(&dir, CgroupAttachMode::Single)
                .map_err(attach_err)?;
            self.cgroup_links.push(CgroupLink::SockAddr(name, id));
        }
        let sock_ops: &mut SockOps = program_mut(&mut self.ebpf, programs::SOCK_OPS)?;
        let id = sock_ops
            .attach(&dir, CgroupAttachMode::Single)
            .map_err(attach_err)?;
        self.cgroup_links.push(CgroupLink::SockOps(id));
        Ok(())
    }

    /// Interfaces guard is attached to, with the XDP mode.
    pub fn attached(&self) -> impl Iterator<Item = (&str, AttachMode)> {
        self.links.iter().map(|l| (l.iface.as_str(), l.mode))
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

    /// Pins the counter and flow maps under `dir` (which must be on a bpffs), so
    /// `guard stats` can read them.
    pub fn pin_maps(&self, dir: &Path) -> Result<(), LoadError> {
        for name in maps::PINNED {
            let path = dir.join(name);
            let map = self.ebpf.map(name).ok_or(LoadError::MissingMap(name))?;
            map.pin(&path).map_err(|source| LoadError::Pin {
                map: name,
                path: path.display().to_string(),
                source,
            })?;
        }
        Ok(())
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

    /// Current counters, summed over CPUs.
    pub fn counters(&self, rules: &[RuleInfo], slots: &[PortSlot]) -> Result<Counters, LoadError> {
        counter_maps(|name| self.ebpf.map(name).ok_or(LoadError::MissingMap(name)))?
            .read(rules, slots)
            .map_err(map_err(maps::RULE_STATS))
    }
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

fn write_maps(ebpf: &mut Ebpf, lowered: &Lowered) -> Result<(), LoadError> {
    let mut ports =
        Array::<_, u32>::try_from(map_mut(ebpf, maps::PORTS)?).map_err(map_err(maps::PORTS))?;
    for &(index, value) in &lowered.ports {
        ports.set(index, value, 0).map_err(map_err(maps::PORTS))?;
    }
    let mut listen =
        Array::<_, u32>::try_from(map_mut(ebpf, maps::LISTEN)?).map_err(map_err(maps::LISTEN))?;
    for &index in &lowered.listen {
        listen.set(index, 1, 0).map_err(map_err(maps::LISTEN))?;
    }
    let mut slots = Array::<_, u32>::try_from(map_mut(ebpf, maps::PORT_SLOTS)?)
        .map_err(map_err(maps::PORT_SLOTS))?;
    for &(index, slot) in &lowered.port_slots {
        slots
            .set(index, slot, 0)
            .map_err(map_err(maps::PORT_SLOTS))?;
    }
    let mut lens = Array::<_, ClassLens>::try_from(map_mut(ebpf, maps::CLASS_LENS)?)
        .map_err(map_err(maps::CLASS_LENS))?;
    for &(class, value) in &lowered.class_lens {
        lens.set(class, value, 0)
            .map_err(map_err(maps::CLASS_LENS))?;
    }
    fill_hash(
        map_mut(ebpf, maps::SRC_HASH_V4)?,
        maps::SRC_HASH_V4,
        &lowered.src_hash_v4,
    )?;
    fill_hash(
        map_mut(ebpf, maps::SRC_HASH_V6)?,
        maps::SRC_HASH_V6,
        &lowered.src_hash_v6,
    )?;
    fill_trie::<SrcKeyV4>(map_mut(ebpf, maps::SRC_V4)?, maps::SRC_V4, &lowered.src_v4)?;
    fill_trie::<SrcKeyV6>(map_mut(ebpf, maps::SRC_V6)?, maps::SRC_V6, &lowered.src_v6)?;
    let mut config = Array::<_, GuardConfig>::try_from(map_mut(ebpf, maps::CONFIG)?)
        .map_err(map_err(maps::CONFIG))?;
    config
        .set(0, lowered.config, 0)
        .map_err(map_err(maps::CONFIG))
}

fn fill_hash<K: aya::Pod>(
    map: &mut Map,
    name: &'static str,
    entries: &[(K, RuleRef)],
) -> Result<(), LoadError> {
    let mut hash = HashMap::<_, K, RuleRef>::try_from(map).map_err(map_err(name))?;
    for (key, value) in entries {
        hash.insert(key, value, 0).map_err(map_err(name))?;
    }
    Ok(())
}

fn fill_trie<K: aya::Pod>(
    map: &mut Map,
    name: &'static str,
    entries: &[(u32, K, RuleRef)],
) -> Result<(), LoadError> {
    let mut trie = LpmTrie::<_, K, RuleRef>::try_from(map).map_err(map_err(name))?;
    for (prefix, key, value) in entries {
        trie.insert(&Key::new(*prefix, *key), *value, 0)
            .map_err(map_err(name))?;
    }
    Ok(())
}

/// Counters read from maps pinned by a running (or crashed) daemon.
pub fn pinned_counters(
    dir: &Path,
    rules: &[RuleInfo],
    slots: &[PortSlot],
) -> Result<Counters, LoadError> {
    counter_maps(|name| {
        let data = MapData::from_pin(dir.join(name)).map_err(map_err(name))?;
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
