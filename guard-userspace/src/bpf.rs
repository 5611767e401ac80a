//! guard's eBPF object in the kernel: load it, write the lowered policy into its maps,
//! attach the XDP program, pin the maps, read the counters.
//!
//! Every map is taken by its name from `guard_common::maps`; a missing one is an error.

use std::path::Path;

use aya::{
    Ebpf, EbpfLoader,
    maps::{Array, LpmTrie, Map, MapData, MapError, PerCpuArray, lpm_trie::Key},
    programs::{ProgramError, Xdp, XdpMode, xdp::XdpLinkId},
};
use guard_common::{
    IngressConfig, MAX_RULES, MAX_SRC_ENTRIES, RuleRef, RuleStats, SrcKeyV4, SrcKeyV6, maps,
    programs,
};

use crate::{counters::Counters, policy::Lowered};

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
    links: Vec<(String, XdpLinkId, AttachMode)>,
}

fn map_mut<'a>(ebpf: &'a mut Ebpf, name: &'static str) -> Result<&'a mut Map, LoadError> {
    ebpf.map_mut(name).ok_or(LoadError::MissingMap(name))
}

fn map_err(map: &'static str) -> impl FnOnce(MapError) -> LoadError {
    move |source| LoadError::Map { map, source }
}

impl Guard {
    /// Loads the object, fills every map from `lowered` (the config entry last) and loads the
    /// XDP program. Nothing is attached yet.
    pub fn load(lowered: &Lowered, kernel_log: KernelLog) -> Result<Self, LoadError> {
        if EBPF_OBJECT.is_empty() {
            return Err(LoadError::NoObject);
        }
        let level = kernel_log.level();
        let rule_capacity = MAX_RULES.max((lowered.rules.len() as u32).next_power_of_two());
        let v4_capacity = MAX_SRC_ENTRIES.max((lowered.src_v4.len() as u32).next_power_of_two());
        let v6_capacity = MAX_SRC_ENTRIES.max((lowered.src_v6.len() as u32).next_power_of_two());
        let mut ebpf = EbpfLoader::new()
            .override_global(aya_log::LEVEL, &level, true)
            .map_max_entries(maps::RULE_STATS, rule_capacity)
            .map_max_entries(maps::SRC_V4, v4_capacity)
            .map_max_entries(maps::SRC_V6, v6_capacity)
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
        let program: &mut Xdp = ebpf
            .program_mut(programs::XDP_INGRESS)
            .ok_or(LoadError::MissingProgram(programs::XDP_INGRESS))?
            .try_into()
            .map_err(|source| LoadError::Program {
                name: programs::XDP_INGRESS,
                source,
            })?;
        program.load().map_err(|source| LoadError::Program {
            name: programs::XDP_INGRESS,
            source,
        })?;
        Ok(Self {
            ebpf,
            logger,
            links: Vec::new(),
        })
    }

    /// The XDP program (for BPF_PROG_TEST_RUN).
    pub fn xdp(&self) -> &Xdp {
        self.ebpf
            .program(programs::XDP_INGRESS)
            .and_then(|p| p.try_into().ok())
            .expect("loaded in Guard::load")
    }

    fn xdp_mut(&mut self) -> &mut Xdp {
        self.ebpf
            .program_mut(programs::XDP_INGRESS)
            .and_then(|p| p.try_into().ok())
            .expect("loaded in Guard::load")
    }

    /// Attaches the XDP program to `iface`: the kernel's choice (native when the driver
    /// supports it) first, generic (skb) XDP when that fails, e.g. virtio_net without spare
    /// TX queues. Returns the mode used. Links are owned by `self`: dropping it detaches them.
    pub fn attach(&mut self, iface: &str) -> Result<AttachMode, LoadError> {
        if crate::host::if_index(iface).is_none() {
            return Err(LoadError::NoSuchInterface(iface.to_owned()));
        }
        let (id, mode) = match self.xdp_mut().attach(iface, XdpMode::Default) {
            Ok(id) => (id, AttachMode::Default),
            Err(native) => match self.xdp_mut().attach(iface, XdpMode::Skb) {
                Ok(id) => {
                    tracing::warn!(
                        iface,
                        error = error_chain(&native),
                        "native XDP unavailable; attached in generic (skb) mode, which costs more per packet"
                    );
                    (id, AttachMode::Generic)
                }
                Err(source) => {
                    return Err(LoadError::Attach {
                        iface: iface.to_owned(),
                        source,
                    });
                }
            },
        };
        self.links.push((iface.to_owned(), id, mode));
        Ok(mode)
    }

    /// Interfaces the XDP program is attached to, with the mode.
    pub fn attached(&self) -> impl Iterator<Item = (&str, AttachMode)> {
        self.links
            .iter()
            .map(|(name, _, mode)| (name.as_str(), *mode))
    }

    /// Detaches from every interface.
    pub fn detach_all(&mut self) {
        let links = std::mem::take(&mut self.links);
        for (iface, id, _) in links {
            if let Err(err) = self.xdp_mut().detach(id) {
                tracing::warn!(iface, %err, "detaching XDP failed");
            }
        }
    }

    /// Pins every map under `dir` (which must be on a bpffs), so `guard stats` can read them.
    pub fn pin_maps(&self, dir: &Path) -> Result<(), LoadError> {
        for name in maps::ALL {
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

    /// Current counters, summed over CPUs.
    pub fn counters(&mut self, rules: &[crate::policy::RuleInfo]) -> Result<Counters, LoadError> {
        let stats =
            PerCpuArray::<_, RuleStats>::try_from(map_mut(&mut self.ebpf, maps::RULE_STATS)?)
                .map_err(map_err(maps::RULE_STATS))?;
        let rule_totals =
            crate::counters::sum_rules(&stats, rules.len()).map_err(map_err(maps::RULE_STATS))?;
        let reasons = PerCpuArray::<_, u64>::try_from(map_mut(&mut self.ebpf, maps::REASONS)?)
            .map_err(map_err(maps::REASONS))?;
        let reason_totals =
            crate::counters::sum_reasons(&reasons).map_err(map_err(maps::REASONS))?;
        Ok(Counters::new(rules, &rule_totals, &reason_totals))
    }
}

fn write_maps(ebpf: &mut Ebpf, lowered: &Lowered) -> Result<(), LoadError> {
    let mut ports =
        Array::<_, u32>::try_from(map_mut(ebpf, maps::PORTS)?).map_err(map_err(maps::PORTS))?;
    for &(index, value) in &lowered.ports {
        ports.set(index, value, 0).map_err(map_err(maps::PORTS))?;
    }
    fill_trie::<SrcKeyV4>(map_mut(ebpf, maps::SRC_V4)?, maps::SRC_V4, &lowered.src_v4)?;
    fill_trie::<SrcKeyV6>(map_mut(ebpf, maps::SRC_V6)?, maps::SRC_V6, &lowered.src_v6)?;
    let mut config = Array::<_, IngressConfig>::try_from(map_mut(ebpf, maps::CONFIG)?)
        .map_err(map_err(maps::CONFIG))?;
    config
        .set(0, lowered.config, 0)
        .map_err(map_err(maps::CONFIG))
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
    rules: &[crate::policy::RuleInfo],
) -> Result<Counters, LoadError> {
    let open = |name: &'static str| -> Result<Map, LoadError> {
        let data = MapData::from_pin(dir.join(name)).map_err(map_err(name))?;
        Map::from_map_data(data).map_err(map_err(name))
    };
    let stats = PerCpuArray::<_, RuleStats>::try_from(open(maps::RULE_STATS)?)
        .map_err(map_err(maps::RULE_STATS))?;
    let reasons =
        PerCpuArray::<_, u64>::try_from(open(maps::REASONS)?).map_err(map_err(maps::REASONS))?;
    let rule_totals =
        crate::counters::sum_rules(&stats, rules.len()).map_err(map_err(maps::RULE_STATS))?;
    let reason_totals = crate::counters::sum_reasons(&reasons).map_err(map_err(maps::REASONS))?;
    Ok(Counters::new(rules, &rule_totals, &reason_totals))
}
