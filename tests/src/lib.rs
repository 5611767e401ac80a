//! Helpers for guard's privileged tests (run as root, one at a time, by `cargo xtask test`).
//!
//! Safety of the host: every namespace, veth pair, pin directory and run directory is created
//! here with a unique name and removed by an RAII guard, also when a test panics. XDP is only
//! attached to veth devices these guards created; test traffic only flows between the host
//! end of such a pair and its namespace, addressed from 198.18.0.0/15, with no default route.
//! A missing prerequisite (not root, no `ip`) fails the test with a message; nothing skips.

pub mod idserver;
pub mod kernel;
pub mod packets;
pub mod policies;

use std::{
    net::Ipv4Addr,
    path::PathBuf,
    process::{Child, Command, ExitStatus, Output, Stdio},
    sync::atomic::{AtomicU32, Ordering},
    thread,
    time::{Duration, Instant},
};

/// Panics unless the tests run as root.
pub fn require_root() {
    // SAFETY: geteuid has no preconditions.
    let euid = unsafe { libc::geteuid() };
    assert_eq!(
        euid, 0,
        "guard's privileged tests need root (BPF, namespaces): run `sudo -E cargo xtask test`"
    );
}

static COUNTER: AtomicU32 = AtomicU32::new(0);

/// A short name unique to this process and call, e.g. `g1234a3`.
pub fn unique(prefix: &str) -> String {
    let n = COUNTER.fetch_add(1, Ordering::Relaxed);
    format!("{prefix}{}x{n}", std::process::id() % 100_000)
}

/// A command's stdout parsed as JSON, panicking with its output when it is not.
pub fn json_stdout(out: &Output) -> serde_json::Value {
    serde_json::from_slice(&out.stdout).unwrap_or_else(|e| {
        panic!(
            "not JSON ({e}): {}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        )
    })
}

/// Runs a command, panicking with its output when it fails.
pub fn sh(args: &[&str]) -> Output {
    let out = Command::new(args[0])
        .args(&args[1..])
        .output()
        .unwrap_or_else(|e| panic!("cannot run {args:?}: {e} (is iproute2 installed?)"));
    assert!(
        out.status.success(),
        "{args:?} failed: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    out
}

/// Reports a test guard's failed cleanup: a namespace, veth, cgroup or pin directory left
/// behind on the host is a failure of the test that made it (unless it already failed).
fn cleanup_failed(what: &str, why: &str) {
    let message = format!("CLEANUP FAILED: {what}: {why}; remove it by hand");
    if thread::panicking() {
        eprintln!("{message}");
    } else {
        panic!("{message}");
    }
}

/// Runs a cleanup command; a failure is reported with [`cleanup_failed`].
fn cleanup_cmd(what: &str, args: &[&str]) {
    match Command::new(args[0]).args(&args[1..]).output() {
        Ok(out) if out.status.success() => {}
        Ok(out) => cleanup_failed(what, String::from_utf8_lossy(&out.stderr).trim()),
        Err(e) => cleanup_failed(what, &e.to_string()),
    }
}

/// A network namespace, deleted on drop.
pub struct NetNs {
    pub name: String,
}

impl NetNs {
    pub fn new() -> Self {
        require_root();
        let name = unique("gt-ns-");
        sh(&["ip", "netns", "add", &name]);
        sh(&["ip", "-n", &name, "link", "set", "lo", "up"]);
        Self { name }
    }

    /// Runs `f` on a thread that has entered this namespace; sockets it opens live there.
    pub fn run<T: Send>(&self, f: impl FnOnce() -> T + Send) -> T {
        thread::scope(|s| {
            s.spawn(|| {
                let _inside = guard::linux::host::InNetns::enter(&self.name)
                    .unwrap_or_else(|e| panic!("{e}"));
                f()
            })
            .join()
            .expect("thread inside the namespace panicked")
        })
    }
}

impl Default for NetNs {
    fn default() -> Self {
        Self::new()
    }
}

impl Drop for NetNs {
    fn drop(&mut self) {
        cleanup_cmd(
            &format!("network namespace {}", self.name),
            &["ip", "netns", "del", &self.name],
        );
    }
}

/// A client host: a namespace joined to the host by a veth pair. The host end
/// (`host_if`, address `host_ip`) is where tests attach XDP; the namespace end has
/// `peer_ip`. Both in one /24 of 198.18.0.0/15; no default route anywhere.
pub struct TestNet {
    pub host_if: String,
    pub host_ip: Ipv4Addr,
    pub peer_ip: Ipv4Addr,
    // Dropped after the veth (declared last): deleting the namespace removes the peer end.
    pub ns: NetNs,
}

impl TestNet {
    /// A client host whose address is `198.18.<subnet>.<peer_host>`; the host end is `.1`.
    pub fn new() -> Self {
        Self::with_peer(2)
    }

    pub fn with_peer(peer_host: u8) -> Self {
        let ns = NetNs::new();
        let subnet = next_subnet();
        let host_if = unique("gh");
        let peer_if = "eth0";
        let host_ip = Ipv4Addr::new(198, 18, subnet, 1);
        let peer_ip = Ipv4Addr::new(198, 18, subnet, peer_host);
        sh(&[
            "ip", "link", "add", &host_if, "type", "veth", "peer", "name", peer_if, "netns",
            &ns.name,
        ]);
        sh(&[
            "ip",
            "addr",
            "add",
            &format!("{host_ip}/24"),
            "dev",
            &host_if,
        ]);
        sh(&["ip", "link", "set", &host_if, "up"]);
        sh(&[
            "ip",
            "-n",
            &ns.name,
            "addr",
            "add",
            &format!("{peer_ip}/24"),
            "dev",
            peer_if,
        ]);
        sh(&["ip", "-n", &ns.name, "link", "set", peer_if, "up"]);
        Self {
            host_if,
            host_ip,
            peer_ip,
            ns,
        }
    }

    /// Connects over TCP from inside the namespace to `to`; `Ok` on success, the error kind
    /// otherwise (`TimedOut` when the SYN was dropped).
    pub fn connect(
        &self,
        to: std::net::SocketAddr,
        timeout: Duration,
    ) -> Result<(), std::io::ErrorKind> {
        self.ns.run(|| {
            std::net::TcpStream::connect_timeout(&to, timeout)
                .map(drop)
                .map_err(|e| e.kind())
        })
    }

    /// True when an XDP program is attached to the host end.
    pub fn has_xdp(&self) -> bool {
        let out = sh(&["ip", "-d", "link", "show", "dev", &self.host_if]);
        String::from_utf8_lossy(&out.stdout).contains("prog/xdp")
    }
}

impl Default for TestNet {
    fn default() -> Self {
        Self::new()
    }
}

impl Drop for TestNet {
    fn drop(&mut self) {
        cleanup_cmd(
            &format!("veth {}", self.host_if),
            &["ip", "link", "del", &self.host_if],
        );
    }
}

fn next_subnet() -> u8 {
    // 198.18.<1..=250>.0/24, spread by pid so two test processes rarely collide.
    let n = COUNTER.fetch_add(1, Ordering::Relaxed) + std::process::id();
    (n % 250 + 1) as u8
}

/// Two network namespaces joined by a veth pair and nothing else (no host end): `a`
/// (address `a_ip`) and `b` (`b_ip`), in one /24 of 198.18.0.0/15. A DMZ client in `b`
/// reaches a server in `a` without touching the host's network.
pub struct NsPair {
    pub a: NetNs,
    pub b: NetNs,
    pub a_ip: Ipv4Addr,
    pub b_ip: Ipv4Addr,
}

impl NsPair {
    pub fn new() -> Self {
        let (a, b) = (NetNs::new(), NetNs::new());
        let subnet = next_subnet();
        let (a_ip, b_ip) = (
            Ipv4Addr::new(198, 18, subnet, 1),
            Ipv4Addr::new(198, 18, subnet, 2),
        );
        let link = unique("gp");
        sh(&[
            "ip", "-n", &a.name, "link", "add", "eth0", "type", "veth", "peer", "name", &link,
            "netns", &b.name,
        ]);
        sh(&["ip", "-n", &b.name, "link", "set", &link, "name", "eth0"]);
        for (ns, ip) in [(&a, a_ip), (&b, b_ip)] {
            sh(&[
                "ip",
                "-n",
                &ns.name,
                "addr",
                "add",
                &format!("{ip}/24"),
                "dev",
                "eth0",
            ]);
            sh(&["ip", "-n", &ns.name, "link", "set", "eth0", "up"]);
        }
        Self { a, b, a_ip, b_ip }
    }
}

impl Default for NsPair {
    fn default() -> Self {
        Self::new()
    }
}

/// A cgroup v2 directory of the test's own under the cgroup2 root, removed on drop.
pub struct Cgroup {
    pub path: PathBuf,
}

impl Cgroup {
    pub fn new() -> Self {
        require_root();
        let root =
            guard::linux::host::cgroup2_root().expect("a cgroup2 mount (see /proc/self/mountinfo)");
        let path = root.join(unique("guard-test-"));
        std::fs::create_dir(&path).unwrap_or_else(|e| panic!("create {}: {e}", path.display()));
        Self { path }
    }

    pub fn arg(&self) -> &str {
        self.path.to_str().expect("utf-8 path")
    }

    /// Runs `f` with this whole process moved into the cgroup; moves it back afterwards,
    /// also when `f` panics. Sockets created meanwhile belong to the cgroup.
    pub fn run<T>(&self, f: impl FnOnce() -> T) -> T {
        struct Back(PathBuf);
        impl Drop for Back {
            fn drop(&mut self) {
                let _ = std::fs::write(self.0.join("cgroup.procs"), std::process::id().to_string());
            }
        }
        let root = guard::linux::host::cgroup2_root().expect("cgroup2 root");
        let own = std::fs::read_to_string("/proc/self/cgroup").expect("/proc/self/cgroup");
        let relative = own
            .lines()
            .find_map(|l| l.strip_prefix("0::"))
            .expect("a cgroup v2 entry in /proc/self/cgroup")
            .trim_start_matches('/')
            .to_owned();
        let _back = Back(root.join(relative));
        std::fs::write(
            self.path.join("cgroup.procs"),
            std::process::id().to_string(),
        )
        .unwrap_or_else(|e| panic!("enter {}: {e}", self.path.display()));
        f()
    }

    /// Programs attached to the cgroup, as `bpftool cgroup show` lists them.
    pub fn attached_programs(&self) -> String {
        String::from_utf8_lossy(&sh(&["bpftool", "cgroup", "show", self.arg()]).stdout).into_owned()
    }
}

impl Default for Cgroup {
    fn default() -> Self {
        Self::new()
    }
}

impl Drop for Cgroup {
    fn drop(&mut self) {
        // A process that just left may keep the cgroup busy for a moment.
        let mut last = None;
        for _ in 0..50 {
            match std::fs::remove_dir(&self.path) {
                Ok(()) => return,
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => return,
                Err(e) => last = Some(e),
            }
            thread::sleep(Duration::from_millis(20));
        }
        if let Some(e) = last {
            cleanup_failed(&format!("cgroup {}", self.path.display()), &e.to_string());
        }
    }
}

/// The `guard` binary built beside this executable: next to it (a binary such as the
/// benchmark harness), or one level up (a test, which lives in `deps/`).
fn find_guard_bin() -> Option<PathBuf> {
    let exe = std::env::current_exe().ok()?;
    let dir = exe.parent()?;
    [dir.join("guard"), dir.parent()?.join("guard")]
        .into_iter()
        .find(|p| p.exists())
}

/// The `guard` binary (`cargo xtask test` builds it first); panics with a hint if missing.
pub fn guard_bin() -> PathBuf {
    find_guard_bin().unwrap_or_else(|| {
        panic!(
            "the guard binary was not found next to {:?}: build it first (`cargo xtask test` does)",
            std::env::current_exe()
        )
    })
}

/// A `guard` command with this test's own pin and run directories.
pub struct Dirs {
    pub pin_dir: PathBuf,
    pub run_dir: PathBuf,
}

impl Dirs {
    pub fn new() -> Self {
        let name = unique("guard-test-");
        Self {
            pin_dir: PathBuf::from("/sys/fs/bpf").join(&name),
            run_dir: std::env::temp_dir().join(&name),
        }
    }

    pub fn guard(&self) -> Command {
        let mut cmd = Command::new(guard_bin());
        cmd.arg("--pin-dir")
            .arg(&self.pin_dir)
            .arg("--run-dir")
            .arg(&self.run_dir);
        cmd.env_remove("GUARD_LOG");
        cmd
    }

    /// `guard stats --json`, parsed.
    pub fn stats(&self) -> serde_json::Value {
        let out = self
            .guard()
            .args(["stats", "--json"])
            .output()
            .expect("run guard stats");
        assert!(
            out.status.success(),
            "guard stats: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        serde_json::from_slice(&out.stdout).expect("guard stats --json prints JSON")
    }
}

impl Default for Dirs {
    fn default() -> Self {
        Self::new()
    }
}

impl Drop for Dirs {
    fn drop(&mut self) {
        for dir in [&self.pin_dir, &self.run_dir] {
            match std::fs::remove_dir_all(dir) {
                Err(e) if e.kind() != std::io::ErrorKind::NotFound => {
                    cleanup_failed(&dir.display().to_string(), &e.to_string());
                }
                _ => {}
            }
        }
    }
}

/// The packet count of reason `name` (`policy`, `reply_passed`, ...) in `guard stats --json`
/// output.
pub fn reason_packets(stats: &serde_json::Value, name: &str) -> u64 {
    stats["reasons"]
        .as_array()
        .expect("reasons array")
        .iter()
        .find(|r| r["reason"] == name)
        .unwrap_or_else(|| panic!("no reason {name} in {stats}"))["packets"]
        .as_u64()
        .expect("packets")
}

/// Packets of rule `name` in `guard stats --json` output.
pub fn rule_packets(stats: &serde_json::Value, name: &str) -> u64 {
    stats["rules"]
        .as_array()
        .expect("rules array")
        .iter()
        .find(|r| r["rule"] == name)
        .unwrap_or_else(|| panic!("no rule {name} in {stats}"))["packets"]
        .as_u64()
        .expect("packets")
}

/// A running `guard run`. On drop it is stopped (SIGTERM) and `guard unload` removes what
/// it left pinned. Its cgroup programs are attached to a cgroup of its own (`cgroup`), never
/// to the host's root cgroup.
pub struct Daemon {
    child: Option<Child>,
    args: Vec<String>,
    env: Vec<(String, String)>,
    /// A command the daemon runs under (e.g. `setpriv --bounding-set ...`), if any.
    wrapper: Vec<String>,
    pub log: PathBuf,
    pub dirs: Dirs,
    pub cgroup: Cgroup,
}

impl Daemon {
    /// Starts `guard run ARGS` and waits until it has attached and answers on its socket.
    pub fn start(args: &[&str]) -> Self {
        Self::start_with_env(args, &[])
    }

    /// As [`Daemon::start`], run under `wrapper` (a command that then runs guard, such as
    /// `setpriv --bounding-set -all,+bpf --`).
    pub fn start_wrapped(wrapper: &[&str], args: &[&str]) -> Self {
        require_root();
        let mut daemon = Self::prepare(args, &[]);
        daemon.wrapper = wrapper.iter().map(|s| s.to_string()).collect();
        daemon.spawn();
        daemon
    }

    /// As [`Daemon::start`], with extra environment variables.
    pub fn start_with_env(args: &[&str], env: &[(&str, &str)]) -> Self {
        require_root();
        let mut daemon = Self::prepare(args, env);
        daemon.spawn();
        daemon
    }

    /// A daemon with its directories and cgroup, not started yet.
    fn prepare(args: &[&str], env: &[(&str, &str)]) -> Self {
        let dirs = Dirs::new();
        std::fs::create_dir_all(&dirs.run_dir).expect("create run dir");
        // Root-only, as the daemon makes its own (`guard doctor` checks it).
        std::fs::set_permissions(
            &dirs.run_dir,
            std::os::unix::fs::PermissionsExt::from_mode(0o700),
        )
        .expect("chmod run dir");
        Self {
            child: None,
            args: args.iter().map(|s| s.to_string()).collect(),
            env: env
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect(),
            wrapper: Vec::new(),
            log: dirs.run_dir.with_extension("log"),
            dirs,
            cgroup: Cgroup::new(),
        }
    }

    fn spawn(&mut self) {
        let out = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&self.log)
            .expect("open daemon log");
        let mut command = self.dirs.guard();
        if let Some((program, args)) = self.wrapper.split_first() {
            let guard = command;
            command = Command::new(program);
            command
                .args(args)
                .arg(guard.get_program())
                .args(guard.get_args())
                .env_remove("GUARD_LOG");
        }
        let child = command
            .arg("run")
            .args(["--cgroup", self.cgroup.arg()])
            // A free port of its own, so tests (and a daemon on the host) never collide.
            .args(
                (!self.args.iter().any(|a| a == "--metrics-addr"))
                    .then_some(["--metrics-addr", "127.0.0.1:0"])
                    .into_iter()
                    .flatten(),
            )
            .args(&self.args)
            .envs(self.env.iter().map(|(k, v)| (k, v)))
            .stdout(out.try_clone().expect("dup"))
            .stderr(out)
            .stdin(Stdio::null())
            .spawn()
            .expect("spawn guard run");
        let pid = child.id();
        self.child = Some(child);
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            if let Some(status) = self
                .child
                .as_mut()
                .and_then(|c| c.try_wait().ok().flatten())
            {
                panic!("guard run exited early ({status}):\n{}", self.log_text());
            }
            let status = guard::api::ctl::call(
                &self.dirs.run_dir,
                &guard::api::ctl::Request::Status {},
                Duration::from_secs(2),
            );
            if let Ok(reply) = status
                && reply.ok
                && reply.data.as_ref().and_then(|d| d["pid"].as_u64()) == Some(u64::from(pid))
            {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "guard run not ready in 20 s:\n{}",
                self.log_text()
            );
            thread::sleep(Duration::from_millis(20));
        }
    }

    /// The address the daemon serves /metrics and /health on (from `guard status`).
    pub fn metrics_addr(&self) -> std::net::SocketAddr {
        let reply = guard::api::ctl::call(
            &self.dirs.run_dir,
            &guard::api::ctl::Request::Status {},
            Duration::from_secs(5),
        )
        .expect("guard status");
        let data = reply.data.expect("status data");
        data["metrics_addr"]
            .as_str()
            .unwrap_or_else(|| panic!("no metrics_addr in {data}"))
            .parse()
            .expect("an IP:PORT")
    }

    /// `GET path` on the metrics server: (status code, body).
    pub fn http_get(&self, path: &str) -> (u16, String) {
        http_get(self.metrics_addr(), path)
    }

    pub fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    pub fn pid(&self) -> u32 {
        self.child.as_ref().expect("running").id()
    }

    /// True while the daemon process has not exited.
    pub fn is_running(&mut self) -> bool {
        self.child
            .as_mut()
            .is_some_and(|c| c.try_wait().expect("wait").is_none())
    }

    /// Sends SIGTERM and waits for the exit status.
    pub fn stop(&mut self) -> ExitStatus {
        self.stop_with(libc::SIGTERM)
    }

    /// Sends `signal` and waits for the exit status.
    pub fn stop_with(&mut self, signal: i32) -> ExitStatus {
        let child = self.child.as_ref().expect("daemon already stopped");
        // SAFETY: signalling our own child.
        unsafe { libc::kill(child.id() as i32, signal) };
        self.wait_exit()
    }

    /// Waits (10 s at most) for the daemon to exit.
    pub fn wait_exit(&mut self) -> ExitStatus {
        let mut child = self.child.take().expect("daemon already stopped");
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            if let Some(status) = child.try_wait().expect("wait") {
                return status;
            }
            if Instant::now() > deadline {
                let _ = child.kill();
                panic!("guard did not exit within 10 s:\n{}", self.log_text());
            }
            thread::sleep(Duration::from_millis(20));
        }
    }

    /// Starts the daemon again with the same arguments, directories and cgroup.
    pub fn restart(&mut self) {
        assert!(self.child.is_none(), "stop the daemon first");
        self.spawn();
    }

    /// `guard unload` for this daemon's directories.
    pub fn unload(&self) -> Output {
        self.dirs
            .guard()
            .arg("unload")
            .output()
            .expect("run guard unload")
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        if self.child.is_some() {
            let _ = self.stop();
        }
        let _ = self.unload();
        let _ = std::fs::remove_file(&self.log);
    }
}

/// Writes `text` to a unique policy file, removed on drop.
pub struct PolicyFile {
    pub path: PathBuf,
}

impl PolicyFile {
    pub fn new(text: &str) -> Self {
        let path = std::env::temp_dir().join(format!("{}.toml", unique("guard-policy-")));
        std::fs::write(&path, text).expect("write policy");
        Self { path }
    }

    pub fn arg(&self) -> &str {
        self.path.to_str().expect("utf-8 path")
    }
}

impl Drop for PolicyFile {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.path);
    }
}

/// A plain HTTP/1.1 GET (`Connection: close`): (status code, body).
pub fn http_get(addr: std::net::SocketAddr, path: &str) -> (u16, String) {
    use std::io::{Read as _, Write as _};
    let mut stream =
        std::net::TcpStream::connect_timeout(&addr, Duration::from_secs(5)).expect("connect");
    stream
        .set_read_timeout(Some(Duration::from_secs(10)))
        .expect("timeout");
    write!(
        stream,
        "GET {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n"
    )
    .expect("send request");
    let mut response = String::new();
    stream.read_to_string(&mut response).expect("read response");
    let (head, body) = response
        .split_once("\r\n\r\n")
        .unwrap_or_else(|| panic!("no header end in {response:?}"));
    let code = head
        .split_whitespace()
        .nth(1)
        .and_then(|c| c.parse().ok())
        .unwrap_or_else(|| panic!("bad status line in {head:?}"));
    (code, body.to_owned())
}

/// A ConfigMap volume as kubelet lays it out and updates it: each version in a timestamped
/// directory, `..data` a symlink to the current one, and each key a symlink through `..data`
/// (`policy.toml -> ..data/policy.toml`). Removed on drop.
pub struct ConfigMapVolume {
    pub dir: PathBuf,
    version: u32,
}

impl ConfigMapVolume {
    /// A volume holding `key` with `text`.
    pub fn new(key: &str, text: &str) -> Self {
        use std::os::unix::fs::symlink;
        let dir = std::env::temp_dir().join(unique("guard-configmap-"));
        std::fs::create_dir_all(&dir).expect("create volume");
        let mut volume = Self { dir, version: 0 };
        let first = volume.payload(key, text);
        symlink(first.file_name().unwrap(), volume.dir.join("..data")).expect("..data");
        symlink(format!("..data/{key}"), volume.dir.join(key)).expect("key link");
        volume
    }

    /// The path a pod reads the key at.
    pub fn path(&self, key: &str) -> PathBuf {
        self.dir.join(key)
    }

    fn payload(&mut self, key: &str, text: &str) -> PathBuf {
        self.version += 1;
        let payload = self
            .dir
            .join(format!("..2026_11_30_10_00_00.{:09}", self.version));
        std::fs::create_dir(&payload).expect("payload dir");
        std::fs::write(payload.join(key), text).expect("payload");
        payload
    }

    /// An update, step by step as kubelet's atomic writer does it: the new payload,
    /// `..data_tmp` pointing at it, renamed over `..data`, then the old payload removed.
    pub fn update(&mut self, key: &str, text: &str) {
        use std::os::unix::fs::symlink;
        let old = std::fs::read_link(self.dir.join("..data")).expect("..data");
        let new = self.payload(key, text);
        symlink(new.file_name().unwrap(), self.dir.join("..data_tmp")).expect("..data_tmp");
        std::fs::rename(self.dir.join("..data_tmp"), self.dir.join("..data")).expect("swap");
        std::fs::remove_dir_all(self.dir.join(old)).expect("remove the old payload");
    }

    /// The key removed from the ConfigMap: kubelet drops its symlink.
    pub fn remove_key(&self, key: &str) {
        std::fs::remove_file(self.dir.join(key)).expect("remove the key's link");
    }
}

impl Drop for ConfigMapVolume {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}
