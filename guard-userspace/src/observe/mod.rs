//! What the kernel reports, turned into what operators read: deny events, health
//! detectors, Prometheus metrics and logs.

pub mod events;
pub mod health;
pub mod logging;
pub mod metrics;
