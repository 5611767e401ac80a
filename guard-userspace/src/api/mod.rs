//! The control protocol between the daemon and the CLI, and the state file the daemon
//! leaves in its run directory.

pub mod ctl;
pub mod replies;
pub mod state;

/// Why a command failed, and so its exit code.
#[derive(Debug, thiserror::Error)]
pub enum Failure {
    /// Invalid input or findings: exit 1.
    #[error("{0}")]
    Invalid(String),
    /// Usage or runtime error: exit 2.
    #[error("{0}")]
    Runtime(String),
}

impl Failure {
    pub fn exit_code(&self) -> u8 {
        match self {
            Failure::Invalid(_) => 1,
            Failure::Runtime(_) => 2,
        }
    }
}
