//! The `guard` command line (clap derive). Exit codes: 0 fine, 1 findings or invalid input,
//! 2 usage or runtime error.

pub mod apply;
pub mod assets;
pub mod audit;
pub mod check;
pub mod client;
pub mod doctor;
pub mod events;
pub mod stats;
pub mod status;
pub mod table;
pub mod unload;

use std::path::PathBuf;

use clap::{Args, Parser, Subcommand};

use crate::{
    datapath::KernelLog,
    observe::logging::{LogFormat, LogRotation},
    policy::model::Proto,
};

#[derive(Debug, Parser)]
#[command(
    name = "guard",
    version = crate::datapath::build::LONG_VERSION,
    about = "eBPF host firewall: enforce a port policy in the kernel, count and report"
)]
pub struct Cli {
    /// Directory on a bpf filesystem where the daemon pins its maps.
    #[arg(
        long,
        global = true,
        env = "GUARD_PIN_DIR",
        default_value = "/sys/fs/bpf/guard"
    )]
    pub pin_dir: PathBuf,
    /// Directory for the daemon's state file and lock (root-only).
    #[arg(
        long,
        global = true,
        env = "GUARD_RUN_DIR",
        default_value = "/run/guard"
    )]
    pub run_dir: PathBuf,
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Run the daemon: load the policy, attach, enforce, until SIGINT or SIGTERM.
    ///
    /// Without --policy it reads /etc/guard/policy.toml, or, when that does not exist, runs
    /// the embedded default policy in audit mode (counts what it would drop, drops nothing).
    ///
    /// Example: guard run --policy /etc/guard/policy.toml
    Run(RunArgs),
    /// Validate a policy file without touching the kernel.
    ///
    /// Prints FILE:LINE:COL: message for each error and exits 1 when there is any.
    ///
    /// Example: guard check policies/example.toml
    Check {
        /// The policy file.
        file: PathBuf,
    },
    /// Per-rule packet and byte counters and drop reasons of the running daemon.
    ///
    /// Example: guard stats --json
    Stats {
        /// Print JSON instead of a table.
        #[arg(long)]
        json: bool,
        /// Refresh every --interval seconds with rates per rule and port, in place (with
        /// --json: one JSON object per line), until Ctrl-C.
        #[arg(long)]
        watch: bool,
        /// Seconds between refreshes of --watch.
        #[arg(long, value_name = "SECS", default_value_t = 1.0, requires = "watch")]
        interval: f64,
        /// Stop --watch after this many refreshes.
        #[arg(long, value_name = "N", requires = "watch")]
        count: Option<u64>,
    },
    /// What the daemon runs: policy, hash, generation, mode, interfaces, uptime.
    Status {
        /// Print JSON instead of text.
        #[arg(long)]
        json: bool,
        /// Readiness check (e.g. a Kubernetes exec probe): print one line and exit 0 only
        /// when the daemon runs and every hook of its policy is attached; exit 1 otherwise.
        #[arg(long, conflicts_with = "json")]
        ready: bool,
    },
    /// Hand a new policy to the running daemon; atomic, and a rejected policy changes
    /// nothing.
    ///
    /// With --confirm-within SECS the daemon rolls back to the previous policy unless
    /// `guard confirm` arrives in time (for changes that could cut off your own access).
    ///
    /// Example: guard apply new.toml --confirm-within 60 && guard confirm
    Apply {
        /// The policy file.
        file: PathBuf,
        /// Roll back unless `guard confirm` comes within this many seconds.
        #[arg(long, value_name = "SECS", value_parser = clap::value_parser!(u64).range(1..=86400))]
        confirm_within: Option<u64>,
    },
    /// Keep the policy applied with --confirm-within.
    Confirm,
    /// Recent deny, violation and policy events (one JSON object per line).
    ///
    /// The daemon keeps the last 1000; older ones are in its log.
    ///
    /// Example: guard events --follow
    Events {
        /// Keep printing new events as they come (until Ctrl-C).
        #[arg(long)]
        follow: bool,
        /// JSON lines (the only format; accepted for symmetry with the other read commands).
        #[arg(long)]
        json: bool,
    },
    /// Listening sockets against the policy: unexpected listeners (exit 1), which zones reach
    /// each one, and rules allowing ports nothing listens on.
    ///
    /// The policy is the running daemon's, or --policy FILE. With --probe ADDR it instead
    /// connects to ADDR's policy ports (TCP) and sends them datagrams (UDP), and checks from
    /// the client's side that what the policy closes is closed (exit 1 when one is open).
    ///
    /// Example: guard audit --json; guard audit --probe 198.18.0.1 --netns client
    Audit(AuditArgs),
    /// Host checks: routes, network sysctls, other firewall layers and BPF programs on
    /// guard's hooks, drift between the kernel's maps and the running policy, permissions,
    /// kernel and BPF features. Each finding has a severity and a fix; exit 1 on errors.
    ///
    /// Example: guard doctor; guard doctor --netns web1 --policy web1.toml --json
    Doctor {
        /// Print JSON instead of text.
        #[arg(long)]
        json: bool,
        /// Judge other firewall layers and routes by this policy file instead of the
        /// running daemon's policy.
        #[arg(long, value_name = "FILE")]
        policy: Option<PathBuf>,
        /// Run the network checks (routes, sysctls, firewall rules) inside this network
        /// namespace (a name from `ip netns`, or a path such as /proc/PID/ns/net).
        #[arg(long, value_name = "NAME")]
        netns: Option<String>,
        /// Also check this WSO2 Identity Server installation (IS_HOME): default credentials,
        /// stock keystores, admin services, plain HTTP, hostname. Reads files only.
        #[arg(long, value_name = "DIR")]
        wso2_home: Option<PathBuf>,
    },
    /// Detach guard's programs and remove its pins (and stop the daemon if it runs).
    ///
    /// Stopping the daemon leaves enforcement in place; this is the way to remove it.
    Unload,
    /// Write the man pages and shell completions generated from these definitions into DIR
    /// (used by `cargo xtask package`).
    #[command(hide = true, name = "generate-assets")]
    GenerateAssets {
        #[arg(value_name = "DIR")]
        dir: PathBuf,
    },
}

#[derive(Debug, Args)]
pub struct AuditArgs {
    /// Print JSON instead of a table.
    #[arg(long)]
    pub json: bool,
    /// Judge by this policy file instead of the running daemon's policy.
    #[arg(long, value_name = "FILE")]
    pub policy: Option<PathBuf>,
    /// Work inside this network namespace (a name from `ip netns`, or a path such as
    /// /proc/PID/ns/net): its sockets are audited, or, with --probe, the probes start there.
    #[arg(long, value_name = "NAME")]
    pub netns: Option<String>,
    /// Probe this address's ports instead of listing local sockets.
    #[arg(long, value_name = "ADDR")]
    pub probe: Option<std::net::IpAddr>,
    /// Also probe this port (repeatable), e.g. --port tcp/5432 --port udp/161.
    #[arg(long = "port", value_name = "PROTO/PORT", requires = "probe", value_parser = parse_proto_port)]
    pub ports: Vec<(Proto, u16)>,
    /// Seconds to wait for each probe's answer (default 1 for --probe; for --probe-http,
    /// the policy's [contexts] timeout_seconds, else 3).
    #[arg(long, value_name = "SECS")]
    pub timeout: Option<f64>,
    /// Request the HTTP contexts of this URL (repeatable), e.g. https://10.0.1.5:9443: the
    /// admin contexts (and their evasion variants) must be closed, the end-user ones open.
    #[arg(long = "probe-http", value_name = "URL", conflicts_with = "probe")]
    pub probe_http: Vec<String>,
    /// With --probe-http: accept any certificate (self-signed ones are still reported).
    #[arg(long, requires = "probe_http")]
    pub insecure: bool,
    /// With --probe-http: a context that must be closed (repeatable; replaces the policy's
    /// [contexts] deny list and the defaults).
    #[arg(long = "deny-context", value_name = "PATH", requires = "probe_http")]
    pub deny_contexts: Vec<String>,
    /// With --probe-http: a context that must be open (repeatable; replaces the allow list).
    #[arg(long = "allow-context", value_name = "PATH", requires = "probe_http")]
    pub allow_contexts: Vec<String>,
}

/// Parses `tcp/5432` or `udp/53`.
pub fn parse_proto_port(s: &str) -> Result<(Proto, u16), String> {
    let (proto, port) = s
        .split_once('/')
        .ok_or_else(|| format!("`{s}`: write PROTO/PORT, e.g. tcp/5432"))?;
    let proto = match proto {
        "tcp" => Proto::Tcp,
        "udp" => Proto::Udp,
        other => return Err(format!("`{other}`: the protocol is tcp or udp")),
    };
    let port: u16 = port
        .parse()
        .ok()
        .filter(|&p| p != 0)
        .ok_or_else(|| format!("`{port}`: a port is a number from 1 to 65535"))?;
    Ok((proto, port))
}

#[derive(Debug, Args)]
pub struct RunArgs {
    /// Policy file (default: the --system-policy file, else the embedded default).
    #[arg(long)]
    pub policy: Option<PathBuf>,
    /// Where to look for a policy when --policy is not given.
    #[arg(long, env = "GUARD_SYSTEM_POLICY", default_value = crate::policy::SYSTEM_POLICY_PATH)]
    pub system_policy: PathBuf,
    /// Attach to this interface instead of the policy's `interfaces` (repeatable), e.g. to
    /// try a policy on one interface first.
    #[arg(long = "interface", value_name = "IFACE")]
    pub interfaces: Vec<String>,
    /// Attach the cgroup programs (`[listen]`, connection accounting) to this cgroup v2
    /// directory instead of the policy's `cgroup` (default: the cgroup2 root).
    #[arg(long, value_name = "DIR")]
    pub cgroup: Option<PathBuf>,
    /// Kernel log records to emit; `debug` logs every dropped packet (costly).
    #[arg(long, value_parser = named(&KernelLog::NAMES), default_value = "off")]
    pub kernel_log: KernelLog,
    /// Log format on stdout.
    #[arg(long, value_parser = named(&LogFormat::NAMES), default_value = "text")]
    pub log_format: LogFormat,
    /// Also write the log, as JSON lines, to files `guard.DATE.log` in this directory,
    /// rotated by --log-rotation and pruned to --log-keep files.
    #[arg(long, value_name = "DIR")]
    pub log_dir: Option<PathBuf>,
    /// When to start a new log file in --log-dir.
    #[arg(long, value_parser = named(&LogRotation::NAMES), default_value = "daily")]
    pub log_rotation: LogRotation,
    /// Log files to keep in --log-dir, the current one included (older ones are deleted).
    #[arg(long, value_name = "N", default_value_t = 14, value_parser = clap::value_parser!(u16).range(1..))]
    pub log_keep: u16,
    /// Serve Prometheus metrics (/metrics) and the health check (/health) over HTTP on this
    /// address; `off` serves neither.
    #[arg(long, value_name = "ADDR", default_value = "127.0.0.1:9871")]
    pub metrics_addr: String,
    /// Per-rule series in /metrics: the first N rules by counter slot (guard's own come
    /// first); the counts of the rest are summed into `rule="(other)"` per action, so a
    /// policy of a million rules keeps scrapes small.
    #[arg(long, value_name = "N", default_value_t = 10_000)]
    pub metrics_max_rules: usize,
}

pub use crate::api::Failure;

/// Prints a reply or report as JSON (`pretty`: indented). It goes through a
/// `serde_json::Value`, whose objects keep their keys sorted: the `--json` outputs do not
/// depend on the order of a struct's fields.
pub fn print_json<T: serde::Serialize>(value: &T, pretty: bool) {
    let value = serde_json::to_value(value).expect("serialisable");
    if pretty {
        println!(
            "{}",
            serde_json::to_string_pretty(&value).expect("serialisable")
        );
    } else {
        println!("{value}");
    }
}

/// A clap parser for an enum given as a table of (name, value): the names are its possible
/// values (shown in `--help`), so the lower layers stay free of clap.
fn named<T: Copy + Send + Sync + 'static>(
    names: &'static [(&'static str, T)],
) -> impl clap::builder::TypedValueParser<Value = T> {
    use clap::builder::TypedValueParser as _;
    clap::builder::PossibleValuesParser::new(names.iter().map(|(name, _)| *name)).map(move |s| {
        names
            .iter()
            .find(|(name, _)| *name == s)
            .map(|(_, value)| *value)
            .expect("one of the possible values")
    })
}

impl RunArgs {
    /// The daemon's options, as given.
    pub fn options(&self) -> crate::daemon::Options {
        crate::daemon::Options {
            policy: self.policy.clone(),
            system_policy: self.system_policy.clone(),
            interfaces: self.interfaces.clone(),
            cgroup: self.cgroup.clone(),
            kernel_log: self.kernel_log,
            log_format: self.log_format,
            log_dir: self.log_dir.clone(),
            log_rotation: self.log_rotation,
            log_keep: self.log_keep,
            metrics_addr: self.metrics_addr.clone(),
            metrics_max_rules: self.metrics_max_rules,
        }
    }
}

/// Runs the command `cli` names; the process's exit status says how it went (see
/// [`Failure::exit_code`]).
pub fn dispatch(cli: &Cli) -> std::process::ExitCode {
    use std::process::ExitCode;
    let result = match &cli.command {
        Command::Run(args) => crate::daemon::run(&cli.pin_dir, &cli.run_dir, &args.options()),
        Command::Check { file } => check::check(file),
        Command::Stats {
            json, watch: false, ..
        } => stats::stats(&cli.run_dir, *json),
        Command::Stats {
            json,
            watch: true,
            interval,
            count,
        } => stats::stats_watch(&cli.run_dir, *json, *interval, *count),
        Command::Status { ready: true, .. } => status::ready(&cli.run_dir),
        Command::Status { json, .. } => status::status(&cli.run_dir, *json),
        Command::Apply {
            file,
            confirm_within,
        } => apply::apply(&cli.run_dir, file, *confirm_within),
        Command::Confirm => apply::confirm(&cli.run_dir),
        Command::Events { follow, json: _ } => events::events(&cli.run_dir, *follow),
        Command::Audit(args) => audit::audit(&cli.run_dir, args),
        Command::Doctor {
            json,
            policy,
            netns,
            wso2_home,
        } => doctor::doctor(
            &cli.pin_dir,
            &cli.run_dir,
            *json,
            policy.as_deref(),
            netns.as_deref(),
            wso2_home.as_deref(),
        ),
        Command::Unload => unload::unload(&cli.pin_dir, &cli.run_dir),
        Command::GenerateAssets { dir } => assets::generate(dir),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(Failure::Invalid(lines)) => {
            eprintln!("{lines}");
            ExitCode::from(1)
        }
        Err(err @ Failure::Runtime(_)) => {
            eprintln!("guard: error: {err}");
            ExitCode::from(err.exit_code())
        }
    }
}
