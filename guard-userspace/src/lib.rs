//! guard's userspace: policy pipeline, eBPF loader, daemon and CLI commands. The `guard`
//! binary (`main.rs`) is a thin dispatcher over this library; the privileged tests in
//! `tests/` drive the same library.

pub mod audit;
pub mod bpf;
pub mod cli;
pub mod commands;
pub mod counters;
pub mod ctl;
pub mod daemon;
pub mod doctor;
pub mod events;
pub mod generation;
pub mod health;
pub mod host;
pub mod hoststats;
pub mod logging;
pub mod metrics;
pub mod policy;
pub mod probe;
pub mod sockets;
pub mod state;
pub mod sys;
