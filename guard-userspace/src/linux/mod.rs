//! Host facts with no guard semantics: interfaces and routes, bpffs and cgroup2, sysctls,
//! network namespaces, sockets (sock_diag) and /proc figures.

pub mod host;
pub mod hoststats;
pub mod sockets;
