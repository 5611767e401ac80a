//! A stand-in for a WSO2 Identity Server node's HTTPS front: it normalises paths the way
//! Tomcat does (percent-decoding, `;parameters` dropped from each segment, `//`, `.` and
//! `..` resolved, case kept) and answers the admin contexts as Identity Server does
//! (`/carbon` redirects to its login page, `/console` shows a login form, `/services` lists
//! services, `/api/server` asks for credentials) and the end-user applications with 200.
//! Behind a whitelist, only the end-user applications answer; everything else is 404.

use std::{
    io::Write as _,
    net::{SocketAddr, TcpListener},
    sync::{
        Arc,
        atomic::{AtomicBool, Ordering},
    },
    thread,
    time::Duration,
};

/// How the node answers its admin contexts.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Exposure {
    /// Straight to the node: the admin contexts answer.
    Leaking,
    /// Behind an allow-list of the end-user applications.
    Whitelisted,
}

/// A running server; stopped on drop.
pub struct IdServer {
    pub addr: SocketAddr,
    stop: Arc<AtomicBool>,
}

impl Drop for IdServer {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
    }
}

/// A self-signed certificate like Identity Server's default one (`CN=localhost, O=WSO2`)
/// when `wso2`, else `CN=idp.test`.
pub fn certificate(wso2: bool) -> (Vec<u8>, Vec<u8>) {
    let mut params = rcgen::CertificateParams::new(vec!["localhost".to_owned()]).expect("params");
    let mut dn = rcgen::DistinguishedName::new();
    if wso2 {
        dn.push(rcgen::DnType::CommonName, "localhost");
        dn.push(rcgen::DnType::OrganizationName, "WSO2");
        dn.push(rcgen::DnType::LocalityName, "Mountain View");
    } else {
        dn.push(rcgen::DnType::CommonName, "idp.test");
    }
    params.distinguished_name = dn;
    let key = rcgen::KeyPair::generate().expect("key");
    let cert = params.self_signed(&key).expect("self-signed");
    (cert.der().to_vec(), key.serialize_der())
}

/// Tomcat's view of a request path.
pub fn normalise(raw: &str) -> String {
    let path = raw.split('?').next().unwrap_or("");
    let mut decoded = Vec::new();
    let bytes = path.as_bytes();
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'%'
            && i + 2 < bytes.len()
            && let Some(b) = std::str::from_utf8(&bytes[i + 1..i + 3])
                .ok()
                .and_then(|h| u8::from_str_radix(h, 16).ok())
        {
            decoded.push(b);
            i += 3;
            continue;
        }
        decoded.push(bytes[i]);
        i += 1;
    }
    let decoded = String::from_utf8_lossy(&decoded).into_owned();
    let mut out: Vec<&str> = Vec::new();
    for segment in decoded.split('/') {
        let segment = segment.split(';').next().unwrap_or("");
        match segment {
            "" | "." => {}
            ".." => {
                out.pop();
            }
            s => out.push(s),
        }
    }
    let trailing = decoded.ends_with('/') && !out.is_empty();
    format!("/{}{}", out.join("/"), if trailing { "/" } else { "" })
}

const END_USER: [&str; 7] = [
    "/oauth2",
    "/oidc",
    "/samlsso",
    "/commonauth",
    "/authenticationendpoint",
    "/accountrecoveryendpoint",
    "/myaccount",
];

fn under(path: &str, prefix: &str) -> bool {
    path == prefix || path.starts_with(&format!("{prefix}/"))
}

/// The response to `GET raw_path`.
pub fn answer(raw_path: &str, exposure: Exposure) -> String {
    let path = normalise(raw_path);
    let reply = |status: &str, headers: &str, body: &str| {
        format!(
            "HTTP/1.1 {status}\r\nContent-Type: text/html\r\nContent-Length: {}\r\nConnection: close\r\n{headers}\r\n{body}",
            body.len()
        )
    };
    if END_USER.iter().any(|p| under(&path, p)) {
        return reply("200 OK", "", "<html>end-user application</html>");
    }
    if exposure == Exposure::Whitelisted {
        return reply("404 Not Found", "", "<html>not found</html>");
    }
    if under(&path, "/carbon") {
        reply(
            "302 Found",
            "Location: https://localhost:9443/carbon/admin/login.jsp\r\n",
            "",
        )
    } else if under(&path, "/console") {
        reply(
            "200 OK",
            "",
            "<html><form method=post action=/commonauth><input name=username><input type=\"password\" name=password></form></html>",
        )
    } else if under(&path, "/services") {
        reply(
            "200 OK",
            "",
            "<html>Deployed services: UserAdmin RemoteUserStoreManagerService</html>",
        )
    } else if under(&path, "/api/server") {
        reply(
            "401 Unauthorized",
            "WWW-Authenticate: Basic realm=\"WSO2\"\r\n",
            "",
        )
    } else {
        reply("404 Not Found", "", "<html>not found</html>")
    }
}

fn serve_one(mut stream: impl std::io::Read + std::io::Write, exposure: Exposure) {
    let mut buf = Vec::new();
    let mut chunk = [0u8; 2048];
    while !buf.windows(4).any(|w| w == b"\r\n\r\n") && buf.len() < 16 * 1024 {
        match stream.read(&mut chunk) {
            Ok(0) | Err(_) => return,
            Ok(n) => buf.extend_from_slice(&chunk[..n]),
        }
    }
    let head = String::from_utf8_lossy(&buf);
    let path = head
        .lines()
        .next()
        .and_then(|l| l.split(' ').nth(1))
        .unwrap_or("/")
        .to_owned();
    let _ = stream.write_all(answer(&path, exposure).as_bytes());
    let _ = stream.flush();
}

/// Starts the server on `listener` (made by the caller, e.g. inside a test namespace):
/// HTTPS with a self-signed certificate (WSO2's look-alike when `wso2_cert`), or plain
/// HTTP when `tls` is false (an upstream behind a proxy).
pub fn start(listener: TcpListener, exposure: Exposure, tls: bool, wso2_cert: bool) -> IdServer {
    let addr = listener.local_addr().expect("local addr");
    listener.set_nonblocking(true).expect("nonblocking");
    let stop = Arc::new(AtomicBool::new(false));
    let config = tls.then(|| {
        let (cert, key) = certificate(wso2_cert);
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        Arc::new(
            rustls::ServerConfig::builder_with_provider(provider)
                .with_safe_default_protocol_versions()
                .expect("versions")
                .with_no_client_auth()
                .with_single_cert(
                    vec![cert.into()],
                    rustls::pki_types::PrivateKeyDer::Pkcs8(key.into()),
                )
                .expect("server config"),
        )
    });
    let flag = stop.clone();
    thread::spawn(move || {
        while !flag.load(Ordering::Relaxed) {
            match listener.accept() {
                Ok((tcp, _)) => {
                    let _ = tcp.set_nonblocking(false);
                    let _ = tcp.set_read_timeout(Some(Duration::from_secs(5)));
                    let config = config.clone();
                    thread::spawn(move || match config {
                        Some(config) => {
                            if let Ok(conn) = rustls::ServerConnection::new(config) {
                                let mut s = rustls::StreamOwned::new(conn, tcp);
                                serve_one(&mut s, exposure);
                                s.conn.send_close_notify();
                                let _ = s.flush();
                            }
                        }
                        None => serve_one(tcp, exposure),
                    });
                }
                Err(_) => thread::sleep(Duration::from_millis(5)),
            }
        }
    });
    IdServer { addr, stop }
}

/// A self-signed certificate and key as PEM (for nginx).
pub fn certificate_pem() -> (String, String) {
    let params = rcgen::CertificateParams::new(vec!["localhost".to_owned()]).expect("params");
    let key = rcgen::KeyPair::generate().expect("key");
    let cert = params.self_signed(&key).expect("self-signed");
    (cert.pem(), key.serialize_pem())
}

/// nginx (Debian's) run by a test in a network namespace, with a configuration of its own
/// under a private prefix; stopped on drop. Never a host service.
pub struct Nginx {
    child: std::process::Child,
    prefix: std::path::PathBuf,
}

impl Nginx {
    /// Starts nginx in namespace `ns` with `server` (the body of one `server { }` block that
    /// listens with TLS on `listen`), proxying to `upstream`.
    pub fn start(ns: &str, listen: SocketAddr, server: &str) -> Self {
        let prefix = std::env::temp_dir().join(crate::unique("guard-nginx-"));
        std::fs::create_dir_all(&prefix).expect("nginx prefix");
        let (cert, key) = certificate_pem();
        std::fs::write(prefix.join("cert.pem"), cert).expect("cert");
        std::fs::write(prefix.join("key.pem"), key).expect("key");
        let p = prefix.display();
        let conf = format!(
            "master_process off;\nworker_processes 1;\nerror_log {p}/error.log;\npid {p}/nginx.pid;\nevents {{ worker_connections 64; }}\n\
             http {{\n  access_log off;\n  client_body_temp_path {p}/body;\n  proxy_temp_path {p}/proxy;\n  fastcgi_temp_path {p}/fastcgi;\n  uwsgi_temp_path {p}/uwsgi;\n  scgi_temp_path {p}/scgi;\n\
             server {{\n    listen {listen} ssl;\n    ssl_certificate {p}/cert.pem;\n    ssl_certificate_key {p}/key.pem;\n{server}\n  }}\n}}\n"
        );
        std::fs::write(prefix.join("nginx.conf"), conf).expect("nginx.conf");
        let child = std::process::Command::new("ip")
            .args(["netns", "exec", ns, "nginx", "-p"])
            .arg(&prefix)
            .arg("-c")
            .arg(prefix.join("nginx.conf"))
            .args(["-g", "daemon off;"])
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::piped())
            .spawn()
            .expect("nginx (apt-get install nginx-light; cargo xtask test installs it)");
        let mut nginx = Self { child, prefix };
        // Ready when it accepts connections.
        let deadline = std::time::Instant::now() + Duration::from_secs(10);
        loop {
            if let Ok(Some(status)) = nginx.child.try_wait() {
                let log =
                    std::fs::read_to_string(nginx.prefix.join("error.log")).unwrap_or_default();
                panic!("nginx exited ({status}): {log}");
            }
            let up = std::process::Command::new("ip")
                .args(["netns", "exec", ns, "bash", "-c"])
                .arg(format!(
                    "exec 3<>/dev/tcp/{}/{}",
                    listen.ip(),
                    listen.port()
                ))
                .stderr(std::process::Stdio::null())
                .status()
                .is_ok_and(|s| s.success());
            if up {
                return nginx;
            }
            assert!(std::time::Instant::now() < deadline, "nginx did not start");
            thread::sleep(Duration::from_millis(50));
        }
    }
}

impl Drop for Nginx {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        let _ = std::fs::remove_dir_all(&self.prefix);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn paths_normalise_like_tomcat() {
        assert_eq!(normalise("/carbon;x/"), "/carbon/");
        assert_eq!(normalise("/x/..;/carbon/"), "/carbon/");
        assert_eq!(normalise("/%63arbon/"), "/carbon/");
        assert_eq!(normalise("//carbon/"), "/carbon/");
        assert_eq!(normalise("/./carbon/"), "/carbon/");
        assert_eq!(normalise("/CARBON/"), "/CARBON/");
        assert!(answer("/CARBON/", Exposure::Leaking).starts_with("HTTP/1.1 404"));
        assert!(answer("/x/..;/carbon/", Exposure::Leaking).starts_with("HTTP/1.1 302"));
        assert!(answer("/oauth2/", Exposure::Whitelisted).starts_with("HTTP/1.1 200"));
        assert!(answer("/console", Exposure::Whitelisted).starts_with("HTTP/1.1 404"));
    }
}
