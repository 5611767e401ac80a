//! `guard audit --probe-http URL`: the path layer seen from a client (a DMZ vantage point),
//! the way an auditor checks it. guard enforces at L4; which HTTP contexts a load balancer
//! or the server lets through is verified here, never matched in the kernel (TLS hides the
//! paths, and segment splitting and path normalisation evade per-packet matching).
//!
//! Each deny-expected context (the admin surface) is requested as written and in evasion
//! variants that proxies and Tomcat normalise differently (`/carbon;x/`, `/x/..;/carbon/`,
//! `/%63arbon/`, `//carbon/`, `/CARBON/`, `/./carbon/`); each allow-expected context (the
//! end-user applications) as written. The client is a plain HTTP/1.1 writer over rustls: the
//! request line carries the path byte for byte (an HTTP library would normalise the
//! variants away), no redirect is followed (a redirect to a login page is itself the
//! finding), and every request has a timeout.

use std::{
    io::Write as _,
    net::{IpAddr, SocketAddr, TcpStream, ToSocketAddrs as _},
    sync::Arc,
    time::Duration,
};

use serde::Serialize;

pub use crate::policy::model::{
    DEFAULT_ALLOW_CONTEXTS, DEFAULT_DENY_CONTEXTS, ProbeTarget as Target,
};

/// The most body read from a response (enough to see a login form).
const MAX_BODY: usize = 64 * 1024;

/// What a context is expected to do from the probing point.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Expect {
    Deny,
    Allow,
}

/// How a request ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    /// An HTTP response: status, `Location`, and whether the body holds a login form.
    Response {
        status: u16,
        location: Option<String>,
        login_form: bool,
    },
    Refused,
    Timeout,
    TlsError(String),
    /// A connection that broke, or an answer that is not HTTP.
    Error(String),
}

impl Outcome {
    /// The `status` column: the HTTP code, or what happened instead.
    pub fn status(&self) -> String {
        match self {
            Outcome::Response { status, .. } => status.to_string(),
            Outcome::Refused => "refused".into(),
            Outcome::Timeout => "timeout".into(),
            Outcome::TlsError(_) => "tls-error".into(),
            Outcome::Error(_) => "error".into(),
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Verdict {
    Ok,
    Warning,
    Violation,
}

impl Verdict {
    pub fn as_str(self) -> &'static str {
        match self {
            Verdict::Ok => "ok",
            Verdict::Warning => "warning",
            Verdict::Violation => "violation",
        }
    }
}

/// One request's row.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Row {
    pub path: String,
    /// The context the path is a variant of.
    pub context: String,
    pub expect: Expect,
    pub status: String,
    pub verdict: Verdict,
    pub note: String,
}

/// What the server's certificate is.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Default)]
pub struct CertInfo {
    pub subject: String,
    pub issuer: String,
    pub self_signed: bool,
    /// WSO2's default `wso2carbon` certificate, whose private key ships with every download.
    pub wso2_default: bool,
}

/// The paths to request for `context`: itself, and for deny-expected contexts the evasion
/// variants of its first segment.
pub fn variants(context: &str, expect: Expect) -> Vec<String> {
    let mut out = vec![context.to_owned()];
    if expect == Expect::Allow {
        return out;
    }
    let trimmed = context.trim_start_matches('/');
    let (first, rest) = match trimmed.find('/') {
        Some(i) => (&trimmed[..i], &trimmed[i..]),
        None => (trimmed, ""),
    };
    if first.is_empty() {
        return out;
    }
    let mut chars = first.chars();
    let head = chars.next().expect("non-empty");
    let tail: String = chars.collect();
    out.extend([
        format!("/{first};x{rest}"),
        format!("/x/..;/{first}{rest}"),
        format!("/%{:02x}{tail}{rest}", head as u32),
        format!("//{first}{rest}"),
        format!("/{}{rest}", first.to_uppercase()),
        format!("/./{first}{rest}"),
    ]);
    out.dedup();
    out
}

/// True when a `Location` names a login page.
fn is_login_location(location: &str) -> bool {
    let l = location.to_ascii_lowercase();
    [
        "login",
        "authenticationendpoint",
        "commonauth",
        "signin",
        "/oauth2/authorize",
    ]
    .iter()
    .any(|k| l.contains(k))
}

/// True when an HTML body holds a login form (a form with a password field).
pub fn has_login_form(body: &str) -> bool {
    let b = body.to_ascii_lowercase();
    b.contains("<form")
        && (b.contains("type=\"password\"")
            || b.contains("type='password'")
            || b.contains("type=password"))
}

/// The verdict of one response for a context expected to be `expect`ed.
pub fn judge(expect: Expect, outcome: &Outcome) -> (Verdict, String) {
    use Verdict::*;
    let said = |v: Verdict, s: &str| (v, s.to_owned());
    match (expect, outcome) {
        (
            Expect::Deny,
            Outcome::Response {
                status,
                location,
                login_form,
            },
        ) => match status {
            200..=299 => said(
                Violation,
                "answers: the admin context is reachable from here",
            ),
            300..=399 if location.as_deref().is_some_and(is_login_location) => said(
                Violation,
                "redirects to a login page: the admin context is reachable",
            ),
            401 | 403 if *login_form => said(
                Violation,
                "asks for a login: the admin context is reachable",
            ),
            300..=399 => (
                Warning,
                format!(
                    "redirects to {}: follow it by hand",
                    location.as_deref().unwrap_or("(no Location)")
                ),
            ),
            401 => said(
                Warning,
                "asks for credentials: the context is reachable, behind authentication",
            ),
            403 | 404 => said(Ok, "blocked"),
            500..=599 => said(Warning, "server error: the request reached something"),
            _ => said(Warning, "unexpected status"),
        },
        (Expect::Deny, Outcome::Refused | Outcome::Timeout) => said(Ok, "not reachable"),
        (Expect::Deny, Outcome::TlsError(e) | Outcome::Error(e)) => {
            (Warning, format!("could not tell: {e}"))
        }
        (Expect::Allow, Outcome::Response { status, .. }) => match status {
            200..=399 | 401 => said(Ok, "reachable"),
            500..=599 => said(Warning, "server error"),
            _ => said(
                Warning,
                "an end-user application is not reachable from here",
            ),
        },
        (Expect::Allow, Outcome::Refused | Outcome::Timeout) => said(
            Warning,
            "an end-user application is not reachable from here",
        ),
        (Expect::Allow, Outcome::TlsError(e) | Outcome::Error(e)) => {
            (Warning, format!("could not tell: {e}"))
        }
    }
}

/// Parses the head of an HTTP/1.x response: (status, Location, body start).
pub fn parse_response(raw: &[u8]) -> Result<(u16, Option<String>, &[u8]), String> {
    let end = raw
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .ok_or("no complete HTTP response head")?;
    let head = std::str::from_utf8(&raw[..end]).map_err(|_| "a response head that is not text")?;
    let mut lines = head.split("\r\n");
    let status_line = lines.next().unwrap_or("");
    let mut parts = status_line.splitn(3, ' ');
    let version = parts.next().unwrap_or("");
    if !version.starts_with("HTTP/1.") {
        return Err(format!(
            "not an HTTP/1 response: {:?}",
            status_line.chars().take(40).collect::<String>()
        ));
    }
    let status: u16 = parts
        .next()
        .and_then(|s| s.parse().ok())
        .filter(|s| (100..=999).contains(s))
        .ok_or_else(|| format!("no status code in {status_line:?}"))?;
    let location = lines
        .filter_map(|l| l.split_once(':'))
        .find(|(k, _)| k.trim().eq_ignore_ascii_case("location"))
        .map(|(_, v)| v.trim().to_owned());
    Ok((status, location, &raw[end + 4..]))
}

/// Accepts any certificate (`--insecure`): the probe is about paths, and a self-signed
/// certificate is reported separately.
#[derive(Debug)]
struct AcceptAny(Arc<rustls::crypto::CryptoProvider>);

impl rustls::client::danger::ServerCertVerifier for AcceptAny {
    fn verify_server_cert(
        &self,
        _: &rustls::pki_types::CertificateDer<'_>,
        _: &[rustls::pki_types::CertificateDer<'_>],
        _: &rustls::pki_types::ServerName<'_>,
        _: &[u8],
        _: rustls::pki_types::UnixTime,
    ) -> Result<rustls::client::danger::ServerCertVerified, rustls::Error> {
        Ok(rustls::client::danger::ServerCertVerified::assertion())
    }
    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &rustls::pki_types::CertificateDer<'_>,
        dss: &rustls::DigitallySignedStruct,
    ) -> Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(
            message,
            cert,
            dss,
            &self.0.signature_verification_algorithms,
        )
    }
    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &rustls::pki_types::CertificateDer<'_>,
        dss: &rustls::DigitallySignedStruct,
    ) -> Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(
            message,
            cert,
            dss,
            &self.0.signature_verification_algorithms,
        )
    }
    fn supported_verify_schemes(&self) -> Vec<rustls::SignatureScheme> {
        self.0.signature_verification_algorithms.supported_schemes()
    }
}

/// The TLS client configuration: the system trust store, or (`insecure`) any certificate.
pub fn tls_config(insecure: bool) -> Arc<rustls::ClientConfig> {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let builder = rustls::ClientConfig::builder_with_provider(provider.clone())
        .with_safe_default_protocol_versions()
        .expect("ring supports the default protocol versions");
    let config = if insecure {
        builder
            .dangerous()
            .with_custom_certificate_verifier(Arc::new(AcceptAny(provider)))
            .with_no_client_auth()
    } else {
        let mut roots = rustls::RootCertStore::empty();
        for cert in rustls_native_certs::load_native_certs().certs {
            let _ = roots.add(cert);
        }
        builder.with_root_certificates(roots).with_no_client_auth()
    };
    Arc::new(config)
}

/// What the certificate `der` says of itself.
pub fn cert_info(der: &[u8]) -> Option<CertInfo> {
    let (_, cert) = x509_parser::parse_x509_certificate(der).ok()?;
    let subject = cert.subject().to_string();
    let issuer = cert.issuer().to_string();
    let org_is_wso2 = cert
        .subject()
        .iter_organization()
        .any(|o| o.as_str().is_ok_and(|s| s.eq_ignore_ascii_case("WSO2")));
    let cn_localhost = cert
        .subject()
        .iter_common_name()
        .any(|c| c.as_str().is_ok_and(|s| s == "localhost"));
    Some(CertInfo {
        self_signed: subject == issuer,
        wso2_default: org_is_wso2 && cn_localhost,
        subject,
        issuer,
    })
}

fn resolve(target: &Target) -> Result<SocketAddr, Outcome> {
    match target.host.parse::<IpAddr>() {
        Ok(ip) => Ok(SocketAddr::new(ip, target.port)),
        Err(_) => (target.host.as_str(), target.port)
            .to_socket_addrs()
            .map_err(|e| Outcome::Error(format!("resolving {}: {e}", target.host)))?
            .next()
            .ok_or_else(|| Outcome::Error(format!("{} has no address", target.host))),
    }
}

/// Reads an answer into `raw`: at most [`MAX_BODY`] and 16 KiB of head, and for at most
/// three times `timeout` in all, so a server that trickles bytes cannot hold the probe.
fn read_bounded(
    reader: &mut impl std::io::Read,
    raw: &mut Vec<u8>,
    timeout: Duration,
) -> std::io::Result<()> {
    let deadline = std::time::Instant::now() + timeout * 3;
    let limit = MAX_BODY + 16 * 1024;
    let mut chunk = [0u8; 8192];
    while raw.len() < limit {
        if std::time::Instant::now() > deadline {
            return Err(std::io::ErrorKind::TimedOut.into());
        }
        match reader.read(&mut chunk) {
            Ok(0) => return Ok(()),
            Ok(n) => raw.extend_from_slice(&chunk[..n.min(limit - raw.len())]),
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    Ok(())
}

/// One GET of `path`; also returns the server's certificate (TLS).
pub fn request(
    target: &Target,
    path: &str,
    tls: &Arc<rustls::ClientConfig>,
    timeout: Duration,
) -> (Outcome, Option<Vec<u8>>) {
    let addr = match resolve(target) {
        Ok(a) => a,
        Err(o) => return (o, None),
    };
    let tcp = match TcpStream::connect_timeout(&addr, timeout) {
        Ok(s) => s,
        Err(e) if e.kind() == std::io::ErrorKind::ConnectionRefused => {
            return (Outcome::Refused, None);
        }
        Err(e)
            if matches!(
                e.kind(),
                std::io::ErrorKind::TimedOut | std::io::ErrorKind::WouldBlock
            ) =>
        {
            return (Outcome::Timeout, None);
        }
        Err(e) => return (Outcome::Error(e.to_string()), None),
    };
    let _ = tcp.set_read_timeout(Some(timeout));
    let _ = tcp.set_write_timeout(Some(timeout));
    let host_header = if target.host.contains(':') {
        format!("[{}]", target.host)
    } else {
        target.host.clone()
    };
    let req = format!(
        "GET {path} HTTP/1.1\r\nHost: {host_header}:{}\r\nUser-Agent: guard-audit\r\nAccept: */*\r\nConnection: close\r\n\r\n",
        target.port
    );
    let io_outcome = |e: std::io::Error, tls: bool| match e.kind() {
        std::io::ErrorKind::TimedOut | std::io::ErrorKind::WouldBlock => Outcome::Timeout,
        std::io::ErrorKind::ConnectionRefused => Outcome::Refused,
        _ if tls && e.get_ref().is_some_and(|i| i.is::<rustls::Error>()) => {
            Outcome::TlsError(e.to_string())
        }
        _ => Outcome::Error(e.to_string()),
    };
    let (raw, cert) = if target.tls {
        let name = match rustls::pki_types::ServerName::try_from(target.host.clone()) {
            Ok(n) => n,
            Err(e) => return (Outcome::Error(format!("{}: {e}", target.host)), None),
        };
        let conn = match rustls::ClientConnection::new(tls.clone(), name) {
            Ok(c) => c,
            Err(e) => return (Outcome::TlsError(e.to_string()), None),
        };
        let mut stream = rustls::StreamOwned::new(conn, tcp);
        if let Err(e) = stream.write_all(req.as_bytes()) {
            return (io_outcome(e, true), None);
        }
        let cert = stream
            .conn
            .peer_certificates()
            .and_then(|c| c.first())
            .map(|c| c.as_ref().to_vec());
        let mut raw = Vec::new();
        let read = read_bounded(&mut stream, &mut raw, timeout);
        match read {
            Ok(_) => {}
            // A server that closes without close_notify after a full answer is common.
            Err(e) if !raw.is_empty() && e.kind() == std::io::ErrorKind::UnexpectedEof => {}
            Err(e) if raw.windows(4).any(|w| w == b"\r\n\r\n") => {
                let _ = e;
            }
            Err(e) => return (io_outcome(e, true), cert),
        }
        (raw, cert)
    } else {
        let mut tcp = tcp;
        if let Err(e) = tcp.write_all(req.as_bytes()) {
            return (io_outcome(e, false), None);
        }
        let mut raw = Vec::new();
        if let Err(e) = read_bounded(&mut tcp, &mut raw, timeout)
            && !raw.windows(4).any(|w| w == b"\r\n\r\n")
        {
            return (io_outcome(e, false), None);
        }
        (raw, None)
    };
    let outcome = match parse_response(&raw) {
        Ok((status, location, body)) => Outcome::Response {
            status,
            location,
            login_form: has_login_form(&String::from_utf8_lossy(&body[..body.len().min(MAX_BODY)])),
        },
        Err(e) if raw.is_empty() => Outcome::Error(format!("no answer ({e})")),
        Err(e) => Outcome::Error(e),
    };
    (outcome, cert)
}

/// A whole probe of one target.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Report {
    pub target: String,
    /// The certificate (TLS targets that completed a handshake).
    pub certificate: Option<CertInfo>,
    pub results: Vec<Row>,
    pub violations: usize,
}

/// Probes `target` for every context: `deny` and `allow` lists of paths.
pub fn probe(
    target: &Target,
    deny: &[String],
    allow: &[String],
    insecure: bool,
    timeout: Duration,
) -> Report {
    let tls = tls_config(insecure);
    let mut certificate = None;
    let mut results = Vec::new();
    let contexts = deny
        .iter()
        .map(|c| (c, Expect::Deny))
        .chain(allow.iter().map(|c| (c, Expect::Allow)));
    for (context, expect) in contexts {
        for path in variants(context, expect) {
            let (outcome, cert) = request(target, &path, &tls, timeout);
            if certificate.is_none() {
                certificate = cert.as_deref().and_then(cert_info);
            }
            let (verdict, note) = judge(expect, &outcome);
            results.push(Row {
                status: outcome.status(),
                path,
                context: context.clone(),
                expect,
                verdict,
                note,
            });
        }
    }
    let violations = results
        .iter()
        .filter(|r| r.verdict == Verdict::Violation)
        .count();
    Report {
        target: target.url(),
        certificate,
        results,
        violations,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn deny_contexts_come_with_their_evasion_variants() {
        assert_eq!(
            variants("/carbon/", Expect::Deny),
            [
                "/carbon/",
                "/carbon;x/",
                "/x/..;/carbon/",
                "/%63arbon/",
                "//carbon/",
                "/CARBON/",
                "/./carbon/"
            ]
        );
        assert_eq!(variants("/console", Expect::Deny)[1], "/console;x");
        assert_eq!(
            variants("/api/server/v1/", Expect::Deny)[2],
            "/x/..;/api/server/v1/"
        );
        assert_eq!(variants("/oauth2/", Expect::Allow), ["/oauth2/"]);
    }

    #[test]
    fn verdicts_follow_what_the_context_answers() {
        let resp = |status, location: Option<&str>, login_form| Outcome::Response {
            status,
            location: location.map(str::to_owned),
            login_form,
        };
        let v = |expect, o: &Outcome| judge(expect, o).0;
        assert_eq!(v(Expect::Deny, &resp(200, None, false)), Verdict::Violation);
        assert_eq!(
            v(
                Expect::Deny,
                &resp(302, Some("https://h/carbon/admin/login.jsp"), false)
            ),
            Verdict::Violation
        );
        assert_eq!(v(Expect::Deny, &resp(401, None, true)), Verdict::Violation);
        assert_eq!(v(Expect::Deny, &resp(403, None, true)), Verdict::Violation);
        assert_eq!(v(Expect::Deny, &resp(403, None, false)), Verdict::Ok);
        assert_eq!(v(Expect::Deny, &resp(404, None, false)), Verdict::Ok);
        assert_eq!(v(Expect::Deny, &Outcome::Refused), Verdict::Ok);
        assert_eq!(v(Expect::Deny, &Outcome::Timeout), Verdict::Ok);
        assert_eq!(v(Expect::Deny, &resp(502, None, false)), Verdict::Warning);
        assert_eq!(
            v(Expect::Deny, &Outcome::TlsError("x".into())),
            Verdict::Warning
        );
        assert_eq!(v(Expect::Allow, &resp(200, None, false)), Verdict::Ok);
        assert_eq!(v(Expect::Allow, &resp(404, None, false)), Verdict::Warning);
    }

    #[test]
    fn responses_and_targets_parse_or_say_why_not() {
        let (status, location, body) =
            parse_response(b"HTTP/1.1 302 Found\r\nlocation: /login\r\n\r\nhi").unwrap();
        assert_eq!(
            (status, location.as_deref(), body),
            (302, Some("/login"), &b"hi"[..])
        );
        assert!(parse_response(b"SSH-2.0-OpenSSH\r\n\r\n").is_err());
        assert!(parse_response(b"HTTP/1.1 abc\r\n\r\n").is_err());
        assert!(
            parse_response(b"HTTP/1.1 200 OK\r\n").is_err(),
            "incomplete head"
        );
        assert!(has_login_form(
            "<form action=x><input type=\"password\" name=p></form>"
        ));
        assert!(!has_login_form("<p>Not found</p>"));
        let t = Target::parse("https://198.18.3.1:9443/").unwrap();
        assert_eq!((t.tls, t.host.as_str(), t.port), (true, "198.18.3.1", 9443));
        assert_eq!(Target::parse("http://[2001:db8::1]").unwrap().port, 80);
        assert_eq!(
            Target::parse("https://[2001:db8::1]:8443").unwrap().host,
            "2001:db8::1"
        );
        assert!(Target::parse("ftp://x").is_err());
        assert!(Target::parse("https://h:0").is_err());
        assert!(Target::parse("https://h:99999").is_err());
        assert!(Target::parse("https://").is_err());
        assert!(
            Target::parse("https://h\r\nX-Evil: 1").is_err(),
            "no header injection"
        );
        assert!(Target::parse("https://h%0d:443").is_err());
    }
}
