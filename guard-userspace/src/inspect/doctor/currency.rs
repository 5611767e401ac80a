//! `firmware` and `kernel-currency`: is what runs up to date?
//!
//! - per guarded interface, the driver and its firmware version (ethtool's driver-info
//!   ioctl, info), and a promiscuous interface (warning: it sees traffic for other hosts);
//! - devlink devices whose running firmware differs from the stored (flashed) one: the
//!   update is not active until a reboot (warning);
//! - fwupd's pending updates, when `fwupdmgr` is installed (warning);
//! - a pending reboot (`/run/reboot-required`, warning), a newer installed kernel than the
//!   running one (warning), and the running kernel's build age (info past a threshold).
//!
//! Files are read below a root directory (`/` on a host), so tests can lay out each case.

use std::time::{Duration, SystemTime};

use super::*;

/// A running kernel built longer ago than this is reported (info).
pub const KERNEL_AGE_DAYS: u64 = 180;

/// `IFF_PROMISC` in `/sys/class/net/IF/flags`.
const IFF_PROMISC: u32 = 0x100;

/// What ethtool's driver-info ioctl says of an interface.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct DriverInfo {
    pub driver: String,
    pub version: String,
    pub firmware: String,
}

/// The driver and firmware of `iface` (ETHTOOL_GDRVINFO); `None` when it cannot be asked.
pub fn driver_info(iface: &str) -> Option<DriverInfo> {
    // struct ethtool_drvinfo: cmd, then driver[32], version[32], fw_version[32], bus_info[32],
    // erom_version[32], reserved2[12], then five u32 counts.
    #[repr(C)]
    struct DrvInfo {
        cmd: u32,
        driver: [u8; 32],
        version: [u8; 32],
        fw_version: [u8; 32],
        bus_info: [u8; 32],
        erom_version: [u8; 32],
        reserved2: [u8; 12],
        counts: [u32; 5],
    }
    const ETHTOOL_GDRVINFO: u32 = 0x0000_0003;
    const SIOCETHTOOL: libc::c_ulong = 0x8946;
    let name = iface.as_bytes();
    if name.is_empty() || name.len() >= libc::IFNAMSIZ {
        return None;
    }
    let mut info = DrvInfo {
        cmd: ETHTOOL_GDRVINFO,
        driver: [0; 32],
        version: [0; 32],
        fw_version: [0; 32],
        bus_info: [0; 32],
        erom_version: [0; 32],
        reserved2: [0; 12],
        counts: [0; 5],
    };
    // SAFETY: ifreq is plain data; all zeros is valid.
    let mut req: libc::ifreq = unsafe { std::mem::zeroed() };
    for (dst, src) in req.ifr_name.iter_mut().zip(name) {
        *dst = *src as libc::c_char;
    }
    req.ifr_ifru.ifru_data = (&raw mut info).cast();
    let socket = rustix::net::socket(
        rustix::net::AddressFamily::INET,
        rustix::net::SocketType::DGRAM,
        None,
    )
    .ok()?;
    // SAFETY: SIOCETHTOOL with a valid ifreq whose data points at a live ethtool_drvinfo of
    // the size the kernel writes.
    let rc = unsafe {
        libc::ioctl(
            std::os::fd::AsRawFd::as_raw_fd(&socket),
            SIOCETHTOOL,
            &raw mut req,
        )
    };
    if rc != 0 {
        return None;
    }
    let text = |b: &[u8]| {
        let end = b.iter().position(|&c| c == 0).unwrap_or(b.len());
        String::from_utf8_lossy(&b[..end]).into_owned()
    };
    Some(DriverInfo {
        driver: text(&info.driver),
        version: text(&info.version),
        firmware: text(&info.fw_version),
    })
}

/// A kernel release split into its numbers for ordering (`6.1.0-18-amd64` → [6, 1, 0, 18]).
fn release_key(release: &str) -> Vec<u64> {
    release
        .split(|c: char| !c.is_ascii_digit())
        .filter(|p| !p.is_empty())
        .filter_map(|p| p.parse().ok())
        .collect()
}

/// The build date in `/proc/sys/kernel/version` (`#1 SMP ... Debian 6.1.129-1 (2025-03-06)`,
/// or a `date`-style stamp such as `Thu Mar  6 09:52:47 UTC 2025`), as days since the epoch.
pub fn build_day(version: &str) -> Option<u64> {
    // An ISO date in parentheses (Debian, Ubuntu).
    for part in version.split(['(', ')']) {
        if let Some(day) = iso_day(part.trim()) {
            return Some(day);
        }
    }
    // A `date` stamp: month name, day, then a four-digit year.
    const MONTHS: [&str; 12] = [
        "Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec",
    ];
    let words: Vec<&str> = version.split_whitespace().collect();
    let month = words.iter().position(|w| MONTHS.contains(w))?;
    let m = MONTHS.iter().position(|n| *n == words[month])? as u32 + 1;
    let d: u32 = words.get(month + 1)?.parse().ok()?;
    let y: i64 = words[month..]
        .iter()
        .find_map(|w| (w.len() == 4).then(|| w.parse().ok()).flatten())?;
    days_from_civil(y, m, d)
}

fn iso_day(s: &str) -> Option<u64> {
    let mut parts = s.splitn(3, '-');
    let y: i64 = parts.next()?.parse().ok()?;
    let m: u32 = parts.next()?.parse().ok()?;
    let d: u32 = parts.next()?.get(..2)?.parse().ok()?;
    (1990..=9999).contains(&y).then_some(())?;
    days_from_civil(y, m, d)
}

/// Days since 1970-01-01 of a proleptic Gregorian date (Howard Hinnant's algorithm).
fn days_from_civil(y: i64, m: u32, d: u32) -> Option<u64> {
    if !(1..=12).contains(&m) || !(1..=31).contains(&d) {
        return None;
    }
    let y = if m <= 2 { y - 1 } else { y };
    let era = y.div_euclid(400);
    let yoe = y - era * 400;
    let mp = (i64::from(m) + 9) % 12;
    let doy = (153 * mp + 2) / 5 + i64::from(d) - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    u64::try_from(era * 146_097 + doe - 719_468).ok()
}

/// The running versions that differ from the stored ones, per devlink device, from
/// `devlink -j dev info`.
pub fn devlink_pending(json: &str) -> Vec<(String, String, String, String)> {
    let Ok(v) = serde_json::from_str::<Value>(json) else {
        return Vec::new();
    };
    let mut out = Vec::new();
    for (device, info) in v["info"].as_object().into_iter().flatten() {
        let versions = &info["versions"];
        for (name, running) in versions["running"].as_object().into_iter().flatten() {
            if let Some(stored) = versions["stored"][name].as_str()
                && running.as_str() != Some(stored)
            {
                out.push((
                    device.clone(),
                    name.clone(),
                    running.as_str().unwrap_or("?").to_owned(),
                    stored.to_owned(),
                ));
            }
        }
    }
    out
}

/// The updates `fwupdmgr get-updates --json` lists: (device, new version).
pub fn fwupd_pending(json: &str) -> Vec<(String, String)> {
    let Ok(v) = serde_json::from_str::<Value>(json) else {
        return Vec::new();
    };
    v["Devices"]
        .as_array()
        .into_iter()
        .flatten()
        .flat_map(|d| {
            let name = d["Name"].as_str().unwrap_or("?").to_owned();
            d["Releases"]
                .as_array()
                .into_iter()
                .flatten()
                .filter_map(move |r| Some((name.clone(), r["Version"].as_str()?.to_owned())))
        })
        .collect()
}

/// The inputs the currency checks judge, read by [`read_currency`] or laid out by a test.
#[derive(Debug, Clone, Default)]
pub struct Currency {
    /// Guarded interfaces with their driver info (None: not available) and sysfs flags.
    pub interfaces: Vec<(String, Option<DriverInfo>, Option<u32>)>,
    /// `devlink -j dev info` output (None: no devlink tool).
    pub devlink: Option<String>,
    /// `fwupdmgr get-updates --json` output (None: no fwupd).
    pub fwupd: Option<String>,
    /// `/run/reboot-required` exists, with the packages named in `reboot-required.pkgs`.
    pub reboot_required: Option<Vec<String>>,
    pub running_release: String,
    /// Kernel releases installed (from `/lib/modules` and `/boot/vmlinuz-*`).
    pub installed_releases: Vec<String>,
    /// `/proc/sys/kernel/version`.
    pub version: String,
    /// Days since the epoch, today.
    pub today: u64,
}

/// Reads the currency inputs below `root` (`/` on a host) for `interfaces`.
pub fn read_currency(root: &Path, interfaces: &[String]) -> Currency {
    let read = |p: &str| fs::read_to_string(root.join(p)).unwrap_or_default();
    let mut installed: Vec<String> = fs::read_dir(root.join("lib/modules"))
        .map(|d| {
            d.flatten()
                .filter_map(|e| e.file_name().into_string().ok())
                .collect()
        })
        .unwrap_or_default();
    installed.extend(
        fs::read_dir(root.join("boot"))
            .map(|d| {
                d.flatten()
                    .filter_map(|e| {
                        e.file_name()
                            .into_string()
                            .ok()?
                            .strip_prefix("vmlinuz-")
                            .map(str::to_owned)
                    })
                    .collect::<Vec<_>>()
            })
            .unwrap_or_default(),
    );
    installed.sort();
    installed.dedup();
    let reboot = root.join("run/reboot-required");
    Currency {
        interfaces: interfaces
            .iter()
            .map(|i| {
                let flags = read(&format!("sys/class/net/{i}/flags"));
                let flags = u32::from_str_radix(flags.trim().trim_start_matches("0x"), 16).ok();
                (i.clone(), driver_info(i), flags)
            })
            .collect(),
        devlink: tool("devlink", &["-j", "dev", "info"]).and_then(Result::ok),
        fwupd: tool("fwupdmgr", &["get-updates", "--json"]).and_then(Result::ok),
        reboot_required: reboot.exists().then(|| {
            read("run/reboot-required.pkgs")
                .lines()
                .map(str::to_owned)
                .collect()
        }),
        running_release: read("proc/sys/kernel/osrelease").trim().to_owned(),
        installed_releases: installed,
        version: read("proc/sys/kernel/version").trim().to_owned(),
        today: SystemTime::now()
            .duration_since(SystemTime::UNIX_EPOCH)
            .unwrap_or(Duration::ZERO)
            .as_secs()
            / 86_400,
    }
}

/// Judges what [`read_currency`] read.
pub fn check_currency(c: &Currency) -> Vec<Finding> {
    let mut out = Vec::new();
    for (iface, info, flags) in &c.interfaces {
        match info {
            Some(d) => out.push(finding(
                "firmware",
                Severity::Info,
                format!(
                    "{iface}: driver {} {}, firmware {}",
                    d.driver,
                    d.version,
                    if d.firmware.is_empty() {
                        "none reported"
                    } else {
                        &d.firmware
                    }
                ),
                "",
            )),
            None => out.push(finding(
                "firmware",
                Severity::Info,
                format!("{iface}: the driver does not report its version (ethtool)"),
                "",
            )),
        }
        if flags.is_some_and(|f| f & IFF_PROMISC != 0) {
            out.push(finding(
                "firmware",
                Severity::Warning,
                format!(
                    "{iface} is in promiscuous mode: it receives traffic meant for other hosts"
                ),
                format!("unless a capture is running on purpose: ip link set {iface} promisc off"),
            ));
        }
    }
    for (device, name, running, stored) in c
        .devlink
        .as_deref()
        .map(devlink_pending)
        .unwrap_or_default()
    {
        out.push(finding(
            "firmware",
            Severity::Warning,
            format!("{device}: {name} firmware {stored} is flashed but {running} runs"),
            "the update is not active until the device resets: plan a reboot",
        ));
    }
    match c.fwupd.as_deref().map(fwupd_pending) {
        Some(updates) if !updates.is_empty() => {
            for (device, version) in updates {
                out.push(finding(
                    "firmware",
                    Severity::Warning,
                    format!("fwupd has a firmware update for {device}: {version}"),
                    "fwupdmgr update (after trying it outside production)",
                ));
            }
        }
        Some(_) => out.push(finding(
            "firmware",
            Severity::Ok,
            "fwupd lists no pending firmware update",
            "",
        )),
        None => {}
    }
    if let Some(pkgs) = &c.reboot_required {
        out.push(finding(
            "kernel-currency",
            Severity::Warning,
            if pkgs.is_empty() {
                "a reboot is pending (/run/reboot-required)".to_owned()
            } else {
                format!("a reboot is pending for {}", pkgs.join(", "))
            },
            "reboot (one node at a time) so the updates take effect",
        ));
    }
    let running = release_key(&c.running_release);
    if let Some(newer) = c
        .installed_releases
        .iter()
        .filter(|r| release_key(r) > running)
        .max_by_key(|r| release_key(r))
    {
        out.push(finding(
            "kernel-currency",
            Severity::Warning,
            format!("kernel {newer} is installed but {} runs", c.running_release),
            "reboot into the newer kernel",
        ));
    }
    match build_day(&c.version) {
        Some(day) if c.today.saturating_sub(day) > KERNEL_AGE_DAYS => out.push(finding(
            "kernel-currency",
            Severity::Info,
            format!(
                "the running kernel was built {} days ago",
                c.today.saturating_sub(day)
            ),
            "check your distribution for a newer kernel",
        )),
        Some(day) => out.push(finding(
            "kernel-currency",
            Severity::Ok,
            format!(
                "the running kernel was built {} days ago",
                c.today.saturating_sub(day)
            ),
            "",
        )),
        None => {}
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn build_dates_are_read_in_both_styles() {
        let debian = "#1 SMP PREEMPT_DYNAMIC Debian 6.1.129-1 (2025-03-06)";
        assert_eq!(build_day(debian), days_from_civil(2025, 3, 6));
        let stamp = "#1 SMP PREEMPT_DYNAMIC Thu Mar  6 09:52:47 UTC 2025";
        assert_eq!(build_day(stamp), days_from_civil(2025, 3, 6));
        assert_eq!(build_day("#1 SMP PREEMPT_DYNAMIC @0"), None);
        assert_eq!(days_from_civil(1970, 1, 1), Some(0));
        assert_eq!(days_from_civil(2000, 3, 1), Some(11_017));
    }

    #[test]
    fn releases_order_by_their_numbers() {
        assert!(release_key("6.1.0-18-amd64") > release_key("6.1.0-9-amd64"));
        assert!(release_key("6.10.2") > release_key("6.9.12"));
    }

    #[test]
    fn each_finding_from_a_laid_out_root() {
        let root = std::env::temp_dir().join(format!("guard-currency-{}", std::process::id()));
        let _ = fs::remove_dir_all(&root);
        for d in [
            "run",
            "lib/modules/6.1.0-18-amd64",
            "lib/modules/6.1.0-20-amd64",
            "boot",
            "proc/sys/kernel",
            "sys/class/net/eth9",
        ] {
            fs::create_dir_all(root.join(d)).unwrap();
        }
        fs::write(root.join("run/reboot-required"), "").unwrap();
        fs::write(
            root.join("run/reboot-required.pkgs"),
            "linux-image-6.1.0-20-amd64\n",
        )
        .unwrap();
        fs::write(root.join("proc/sys/kernel/osrelease"), "6.1.0-18-amd64\n").unwrap();
        fs::write(
            root.join("proc/sys/kernel/version"),
            "#1 SMP PREEMPT_DYNAMIC Debian 6.1.76-1 (2024-02-01)\n",
        )
        .unwrap();
        fs::write(root.join("sys/class/net/eth9/flags"), "0x1103\n").unwrap();
        let mut c = read_currency(&root, &["eth9".to_owned()]);
        c.today = days_from_civil(2026, 11, 30).unwrap();
        c.devlink = Some(
            r#"{"info":{"pci/0000:01:00.0":{"driver":"mlx5_core","versions":{"running":{"fw.version":"22.36.1010"},"stored":{"fw.version":"22.39.1002"}}}}}"#.into(),
        );
        c.fwupd =
            Some(r#"{"Devices":[{"Name":"UEFI dbx","Releases":[{"Version":"371"}]}]}"#.into());
        let f = check_currency(&c);
        let has = |sev: Severity, part: &str| {
            f.iter()
                .any(|x| x.severity == sev && x.message.contains(part))
        };
        assert!(
            has(Severity::Warning, "eth9 is in promiscuous mode"),
            "{f:?}"
        );
        assert!(has(
            Severity::Warning,
            "fw.version firmware 22.39.1002 is flashed but 22.36.1010 runs"
        ));
        assert!(has(Severity::Warning, "firmware update for UEFI dbx: 371"));
        assert!(has(
            Severity::Warning,
            "a reboot is pending for linux-image-6.1.0-20-amd64"
        ));
        assert!(has(
            Severity::Warning,
            "kernel 6.1.0-20-amd64 is installed but 6.1.0-18-amd64 runs"
        ));
        assert!(has(Severity::Info, "built 1033 days ago"), "{f:?}");
        // A current host: none of those.
        fs::remove_file(root.join("run/reboot-required")).unwrap();
        fs::remove_dir(root.join("lib/modules/6.1.0-20-amd64")).unwrap();
        fs::write(root.join("sys/class/net/eth9/flags"), "0x1003\n").unwrap();
        let mut c = read_currency(&root, &["eth9".to_owned()]);
        c.today = days_from_civil(2024, 3, 1).unwrap();
        c.devlink = Some(r#"{"info":{"pci/0000:01:00.0":{"versions":{"running":{"fw.version":"1"},"stored":{"fw.version":"1"}}}}}"#.into());
        c.fwupd = Some(r#"{"Devices":[]}"#.into());
        let f = check_currency(&c);
        assert!(f.iter().all(|x| x.severity <= Severity::Info), "{f:?}");
        fs::remove_dir_all(&root).unwrap();
    }
}
