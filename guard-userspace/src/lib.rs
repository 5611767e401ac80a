//! guard's userspace, laid out along the data flow (see ARCHITECTURE.md):
//!
//! policy text → [`policy`] (parse, validate, model, reference semantics, lower) →
//! [`datapath`] (load the eBPF object, write the maps, attach, read the counters) →
//! [`observe`] (events, health, metrics, logs) → [`api`] (the control protocol and state
//! file) → [`daemon`] (the long-running service) and [`cli`] (the commands). [`inspect`]
//! holds the audits a operator runs against the host (listeners, probes, doctor), and
//! [`linux`] the host facts without guard semantics (interfaces, routes, filesystems,
//! sockets, /proc).
//!
//! The `guard` binary (`main.rs`) is a thin dispatcher over this library; the privileged
//! tests in `tests/` drive the same library.

pub mod api;
pub mod cli;
pub mod daemon;
pub mod datapath;
pub mod inspect;
pub mod linux;
pub mod observe;
pub mod policy;

#[cfg(test)]
mod layering;
