//! `guard audit --probe ADDR`: the client's view. Connects to each relevant TCP port of ADDR
//! and sends a datagram to each relevant UDP port, then compares what came back with what the
//! policy says a client at this host's source address should meet.
//!
//! What a probe can tell:
//! - TCP: `open` (handshake completed), `refused` (RST: the SYN reached the host's stack and
//!   nothing listens), `filtered` (no answer: dropped on the way, e.g. by guard's XDP).
//! - UDP: `open` (a reply came), `refused` (ICMP port unreachable: the datagram reached the
//!   stack), `open|filtered` (silence: dropped, or a listener that does not answer).
//!
//! A port the policy closes to this client but found `open` is a violation. Probing a local
//! address over loopback shows nothing: guard filters on its interfaces, and loopback is not
//! one. Probe from another host, or from a network namespace (`--netns`).

use std::{
    collections::BTreeSet,
    net::{IpAddr, SocketAddr},
    time::Duration,
};

use serde::Serialize;

use crate::policy::{
    eval,
    model::{Mode, Policy, Proto},
};

/// Most ports one run probes; past it the rest are listed as skipped.
pub const MAX_PROBES: usize = 4096;
/// Probes in flight at once.
const PARALLEL: usize = 256;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Observed {
    Open,
    Refused,
    Filtered,
    #[serde(rename = "open|filtered")]
    OpenOrFiltered,
}

impl Observed {
    pub fn as_str(self) -> &'static str {
        match self {
            Observed::Open => "open",
            Observed::Refused => "refused",
            Observed::Filtered => "filtered",
            Observed::OpenOrFiltered => "open|filtered",
        }
    }
}

/// How an observation compares with the policy.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Judgement {
    /// As the policy says.
    Ok,
    /// The policy closes it to this client, and it is open.
    Violation,
    /// Worth a look: allowed but filtered by something else, or denied but reaching the
    /// host's stack (refused), or open in audit mode.
    Warning,
    /// Allowed, nothing listens.
    Info,
}

impl Judgement {
    pub fn as_str(self) -> &'static str {
        match self {
            Judgement::Ok => "ok",
            Judgement::Violation => "violation",
            Judgement::Warning => "warning",
            Judgement::Info => "info",
        }
    }
}

#[derive(Debug, Clone, Serialize)]
pub struct ProbeResult {
    pub proto: Proto,
    pub port: u16,
    /// The policy lets this client in.
    pub allowed: bool,
    pub observed: Observed,
    pub judgement: Judgement,
    pub note: String,
}

/// The ports worth probing: every port the ingress rules, failsafe ports and `[listen]` name,
/// plus `extra`, sorted; at most [`MAX_PROBES`] (the second value counts those left out).
pub fn targets(policy: &Policy, extra: &[(Proto, u16)]) -> (Vec<(Proto, u16)>, usize) {
    let mut set: BTreeSet<(Proto, u16)> = extra.iter().copied().collect();
    let mut add = |proto: Proto, first: u16, last: u16| {
        for port in first..=last {
            set.insert((proto, port));
        }
    };
    for rule in &policy.ingress {
        for r in &rule.ports {
            add(rule.proto, r.first, r.last);
        }
    }
    for r in &policy.failsafe_ports {
        add(Proto::Tcp, r.first, r.last);
    }
    if let Some(listen) = &policy.listen {
        for r in &listen.tcp {
            add(Proto::Tcp, r.first, r.last);
        }
        for r in &listen.udp {
            add(Proto::Udp, r.first, r.last);
        }
    }
    let all: Vec<_> = set.into_iter().collect();
    let skipped = all.len().saturating_sub(MAX_PROBES);
    (all.into_iter().take(MAX_PROBES).collect(), skipped)
}

/// Compares an observation with the policy for a client at `source`.
pub fn judge(
    policy: &Policy,
    source: IpAddr,
    proto: Proto,
    port: u16,
    observed: Observed,
) -> ProbeResult {
    let allowed = eval::inbound(policy, proto, port, source).passes();
    let audit_mode = policy.mode == Mode::Audit;
    let (judgement, note) = match (allowed, observed) {
        (true, Observed::Open) => (Judgement::Ok, "open, as allowed"),
        (true, Observed::Refused) => (Judgement::Info, "allowed; nothing listens"),
        (true, Observed::Filtered) => (
            Judgement::Warning,
            "allowed by the policy but filtered: another layer drops it, or the host is down",
        ),
        (true, Observed::OpenOrFiltered) => (
            Judgement::Ok,
            "allowed; no answer (UDP cannot tell open from filtered)",
        ),
        (false, Observed::Open) if audit_mode => (
            Judgement::Warning,
            "open: the policy denies it, but audit mode drops nothing",
        ),
        (false, Observed::Open) => (
            Judgement::Violation,
            "OPEN, but the policy closes it to this client",
        ),
        (false, Observed::Refused) if audit_mode => (
            Judgement::Warning,
            "reaches the host: the policy denies it, but audit mode drops nothing",
        ),
        (false, Observed::Refused) => (
            Judgement::Warning,
            "denied by the policy but reaches the host's stack (is guard attached on this path?)",
        ),
        (false, Observed::Filtered | Observed::OpenOrFiltered) => {
            (Judgement::Ok, "closed, as the policy says")
        }
    };
    ProbeResult {
        proto,
        port,
        allowed,
        observed,
        judgement,
        note: note.to_owned(),
    }
}

/// The source address this host uses to reach `target` (no packet is sent).
pub fn source_for(target: IpAddr) -> std::io::Result<IpAddr> {
    let bind: SocketAddr = match target {
        IpAddr::V4(_) => "0.0.0.0:0".parse().expect("literal"),
        IpAddr::V6(_) => "[::]:0".parse().expect("literal"),
    };
    let socket = std::net::UdpSocket::bind(bind)?;
    socket.connect(SocketAddr::new(target, 9))?;
    Ok(socket.local_addr()?.ip())
}

async fn probe_tcp(to: SocketAddr, timeout: Duration) -> Observed {
    match tokio::time::timeout(timeout, tokio::net::TcpStream::connect(to)).await {
        Ok(Ok(_)) => Observed::Open,
        Ok(Err(e)) if e.kind() == std::io::ErrorKind::ConnectionRefused => Observed::Refused,
        // Unreachable host or network, or no answer at all.
        _ => Observed::Filtered,
    }
}

async fn probe_udp(to: SocketAddr, timeout: Duration) -> Observed {
    let bind: SocketAddr = if to.is_ipv4() {
        "0.0.0.0:0".parse().expect("literal")
    } else {
        "[::]:0".parse().expect("literal")
    };
    let Ok(socket) = tokio::net::UdpSocket::bind(bind).await else {
        return Observed::OpenOrFiltered;
    };
    if socket.connect(to).await.is_err() {
        return Observed::Filtered;
    }
    let mut buf = [0u8; 512];
    let exchange = async {
        socket.send(b"guard-audit-probe\n").await?;
        socket.recv(&mut buf).await
    };
    match tokio::time::timeout(timeout, exchange).await {
        Ok(Ok(_)) => Observed::Open,
        Ok(Err(e)) if e.kind() == std::io::ErrorKind::ConnectionRefused => Observed::Refused,
        _ => Observed::OpenOrFiltered,
    }
}

/// Probes every target of `address`, [`PARALLEL`] at a time, in the calling thread's network
/// namespace; results in target order.
pub fn run(address: IpAddr, targets: &[(Proto, u16)], timeout: Duration) -> Vec<Observed> {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("a current-thread runtime");
    runtime.block_on(async {
        let semaphore = std::sync::Arc::new(tokio::sync::Semaphore::new(PARALLEL));
        let mut tasks = tokio::task::JoinSet::new();
        for (i, &(proto, port)) in targets.iter().enumerate() {
            let semaphore = semaphore.clone();
            let to = SocketAddr::new(address, port);
            tasks.spawn(async move {
                let _permit = semaphore.acquire().await;
                let observed = match proto {
                    Proto::Tcp => probe_tcp(to, timeout).await,
                    Proto::Udp => probe_udp(to, timeout).await,
                };
                (i, observed)
            });
        }
        let mut out = vec![Observed::Filtered; targets.len()];
        while let Some(done) = tasks.join_next().await {
            if let Ok((i, observed)) = done {
                out[i] = observed;
            }
        }
        out
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::policy;

    const POLICY: &str = r#"
version = 1
interfaces = ["eth0"]
default = "deny"
failsafe_ports = [22]
[zones]
lab = ["198.18.0.0/15"]
[[ingress]]
name = "web"
proto = "tcp"
ports = [8080]
from = ["lab"]
[[ingress]]
name = "admin"
proto = "tcp"
ports = ["9000-9001"]
from = ["10.0.0.0/8"]
[[ingress]]
name = "dns"
proto = "udp"
ports = [53]
from = ["lab"]
[listen]
tcp = [8080, 9000, 9001, 22]
udp = [53]
"#;

    fn policy(text: &str) -> Policy {
        policy::check("t.toml", text).expect("valid").policy
    }

    #[test]
    fn targets_are_the_policy_ports_plus_extra() {
        let p = policy(POLICY);
        let (t, skipped) = targets(&p, &[(Proto::Tcp, 5432)]);
        assert_eq!(
            t,
            [
                (Proto::Tcp, 22),
                (Proto::Tcp, 5432),
                (Proto::Tcp, 8080),
                (Proto::Tcp, 9000),
                (Proto::Tcp, 9001),
                (Proto::Udp, 53)
            ]
        );
        assert_eq!(skipped, 0);
    }

    #[test]
    fn observations_are_judged_for_the_client_address() {
        let p = policy(POLICY);
        let lab: IpAddr = "198.18.0.2".parse().unwrap();
        let j = |proto, port, observed| judge(&p, lab, proto, port, observed).judgement;
        assert_eq!(j(Proto::Tcp, 8080, Observed::Open), Judgement::Ok);
        assert_eq!(j(Proto::Tcp, 9000, Observed::Filtered), Judgement::Ok);
        assert_eq!(j(Proto::Tcp, 9000, Observed::Open), Judgement::Violation);
        assert_eq!(j(Proto::Tcp, 9000, Observed::Refused), Judgement::Warning);
        assert_eq!(j(Proto::Tcp, 8080, Observed::Filtered), Judgement::Warning);
        assert_eq!(j(Proto::Tcp, 8080, Observed::Refused), Judgement::Info);
        assert_eq!(j(Proto::Tcp, 22, Observed::Open), Judgement::Ok, "failsafe");
        assert_eq!(j(Proto::Udp, 53, Observed::OpenOrFiltered), Judgement::Ok);
        let audit =
            policy(&POLICY.replace("default = \"deny\"", "mode = \"audit\"\ndefault = \"deny\""));
        assert_eq!(
            judge(&audit, lab, Proto::Tcp, 9000, Observed::Open).judgement,
            Judgement::Warning
        );
    }

    #[test]
    fn loopback_probes_see_open_refused_and_udp_silence() {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let open = l.local_addr().unwrap().port();
        drop(std::net::TcpListener::bind("127.0.0.1:0").unwrap());
        let closed = {
            let t = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
            t.local_addr().unwrap().port()
        };
        let u = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
        let silent = u.local_addr().unwrap().port();
        let got = run(
            "127.0.0.1".parse().unwrap(),
            &[
                (Proto::Tcp, open),
                (Proto::Tcp, closed),
                (Proto::Udp, silent),
            ],
            Duration::from_millis(300),
        );
        assert_eq!(
            got,
            [Observed::Open, Observed::Refused, Observed::OpenOrFiltered]
        );
        assert_eq!(
            source_for("127.0.0.1".parse().unwrap()).unwrap(),
            IpAddr::from([127, 0, 0, 1])
        );
    }
}
