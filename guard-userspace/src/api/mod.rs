//! The control protocol between the daemon and the CLI, and the state file the daemon
//! leaves in its run directory.

pub mod ctl;
pub mod state;
