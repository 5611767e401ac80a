//! Host figures an operator weighs for failover, read from /proc: CPU time, load, memory,
//! TCP listen-queue overflows and the open file descriptors of a named service. (Whether a
//! port has a listener comes from sock_diag: `linux::sockets`.)

use std::fs;

/// One reading of the host's gauges.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct HostStats {
    /// CPU seconds by mode (`user`, `system`, `idle`, `iowait`, ...), all CPUs together.
    pub cpu_seconds: Vec<(String, f64)>,
    pub cpus: usize,
    /// Load average over 1, 5, 15 minutes.
    pub load: (f64, f64, f64),
    pub memory_total_bytes: u64,
    pub memory_available_bytes: u64,
    /// TcpExt ListenOverflows: connections dropped because a listen queue was full.
    pub listen_overflows: u64,
    pub service: Option<ServiceStats>,
}

/// The processes whose command name is the `[health] service`.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ServiceStats {
    pub name: String,
    pub processes: u64,
    pub open_fds: u64,
}

const CPU_MODES: [&str; 8] = [
    "user", "nice", "system", "idle", "iowait", "irq", "softirq", "steal",
];

/// The `cpu` line of /proc/stat, in seconds per mode.
pub fn parse_cpu(stat: &str, ticks_per_second: f64) -> Vec<(String, f64)> {
    let Some(line) = stat.lines().find(|l| l.starts_with("cpu ")) else {
        return Vec::new();
    };
    line.split_whitespace()
        .skip(1)
        .zip(CPU_MODES)
        .filter_map(|(v, mode)| Some((mode.to_owned(), v.parse::<f64>().ok()? / ticks_per_second)))
        .collect()
}

/// A `Key: value kB` field of /proc/meminfo, in bytes.
pub fn parse_meminfo(meminfo: &str, key: &str) -> Option<u64> {
    let line = meminfo.lines().find(|l| l.split(':').next() == Some(key))?;
    let kib: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kib * 1024)
}

/// A counter of /proc/net/netstat, whose lines come in pairs: names, then values.
pub fn parse_netstat(netstat: &str, group: &str, name: &str) -> Option<u64> {
    let lines: Vec<&str> = netstat.lines().collect();
    lines.chunks(2).find_map(|pair| {
        let [names, values] = pair else { return None };
        let names = names.strip_prefix(group)?.strip_prefix(':')?;
        let values = values.strip_prefix(group)?.strip_prefix(':')?;
        let at = names.split_whitespace().position(|n| n == name)?;
        values.split_whitespace().nth(at)?.parse().ok()
    })
}

fn read(path: &str) -> String {
    fs::read_to_string(path).unwrap_or_default()
}

impl HostStats {
    /// Reads everything; figures that cannot be read are left at zero.
    pub fn read(service: Option<&str>) -> Self {
        let hz = rustix::param::clock_ticks_per_second().max(1) as f64;
        let loadavg = read("/proc/loadavg");
        let mut load = loadavg.split_whitespace().map(|v| v.parse().unwrap_or(0.0));
        let meminfo = read("/proc/meminfo");
        Self {
            cpu_seconds: parse_cpu(&read("/proc/stat"), hz),
            cpus: std::thread::available_parallelism().map_or(0, |n| n.get()),
            load: (
                load.next().unwrap_or(0.0),
                load.next().unwrap_or(0.0),
                load.next().unwrap_or(0.0),
            ),
            memory_total_bytes: parse_meminfo(&meminfo, "MemTotal").unwrap_or(0),
            memory_available_bytes: parse_meminfo(&meminfo, "MemAvailable").unwrap_or(0),
            listen_overflows: listen_overflows(),
            service: service.map(service_stats),
        }
    }
}

/// TcpExt ListenOverflows of /proc/net/netstat (0 when unreadable).
pub fn listen_overflows() -> u64 {
    parse_netstat(&read("/proc/net/netstat"), "TcpExt", "ListenOverflows").unwrap_or(0)
}

/// Processes named `name` (their `comm`) and their open file descriptors.
pub fn service_stats(name: &str) -> ServiceStats {
    let mut stats = ServiceStats {
        name: name.to_owned(),
        ..ServiceStats::default()
    };
    let Ok(all) = procfs::process::all_processes() else {
        return stats;
    };
    for process in all.flatten() {
        if !process.stat().is_ok_and(|s| s.comm == name) {
            continue;
        }
        stats.processes += 1;
        stats.open_fds += process.fd_count().map_or(0, |n| n as u64);
    }
    stats
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_proc_files() {
        let cpu = parse_cpu(
            "cpu  200 0 100 5000 10 0 4 0 0 0\ncpu0 100 0 50 2500 5 0 2 0 0 0\n",
            100.0,
        );
        assert_eq!(cpu[0], ("user".to_owned(), 2.0));
        assert_eq!(cpu[3], ("idle".to_owned(), 50.0));
        assert_eq!(cpu.len(), 8);
        let meminfo = "MemTotal:       24684008 kB\nMemFree:  1 kB\nMemAvailable:   24236776 kB\n";
        assert_eq!(parse_meminfo(meminfo, "MemTotal"), Some(24684008 * 1024));
        assert_eq!(parse_meminfo(meminfo, "Mem"), None);
        let netstat = "TcpExt: SyncookiesSent ListenOverflows ListenDrops\nTcpExt: 0 17 20\nIpExt: InNoRoutes\nIpExt: 3\n";
        assert_eq!(
            parse_netstat(netstat, "TcpExt", "ListenOverflows"),
            Some(17)
        );
        assert_eq!(parse_netstat(netstat, "IpExt", "InNoRoutes"), Some(3));
        assert_eq!(parse_netstat(netstat, "TcpExt", "Nope"), None);
    }
}
