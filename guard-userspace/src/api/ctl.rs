//! The control socket, `RUN_DIR/guard.sock` (mode 0600: root only). One JSON object per
//! line each way: requests at most [`MAX_MESSAGE`] bytes, replies (which grow with the
//! policy) at most [`MAX_REPLY`]. Every request and reply carries
//! `"version": 1`. A request the daemon cannot parse gets an error reply; the connection
//! stays usable, and the daemon is never harmed by what a client sends.
//!
//! Requests: `{"version":1,"cmd":"status"}`, `"stats"`, `"confirm"`, `"unload"`, `"policy"`,
//! `"verify"`,
//! `{"version":1,"cmd":"events","since":0}`, and
//! `{"version":1,"cmd":"apply","name":"FILE","policy":"<toml>","confirm_within":30}`.
//! Replies: `{"version":1,"ok":true,"data":{...}}` or
//! `{"version":1,"ok":false,"error":"...","errors":["FILE:LINE:COL: ..."]}`.

use std::{
    io::{BufRead as _, BufReader, Read as _, Write as _},
    os::unix::net::UnixStream,
    path::{Path, PathBuf},
    time::Duration,
};

use serde::{Deserialize, Serialize};

pub const SOCKET: &str = "guard.sock";
pub const VERSION: u32 = 1;
/// The largest message either side accepts (a policy with 100K rules fits).
pub const MAX_MESSAGE: usize = 16 << 20;
/// The largest reply a client reads. Replies come from the (root) daemon and grow with the
/// policy: `stats` of a million rules is about 100 MB.
pub const MAX_REPLY: usize = 1 << 30;

pub fn socket_path(run_dir: &Path) -> PathBuf {
    run_dir.join(SOCKET)
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "cmd", rename_all = "snake_case", deny_unknown_fields)]
pub enum Request {
    // Empty struct variants, not unit ones: serde rejects unknown fields only in these.
    Status {},
    Stats {},
    /// Replace the running policy with `policy` (named `name` in messages); with
    /// `confirm_within`, roll back unless `confirm` arrives within that many seconds.
    Apply {
        name: String,
        policy: String,
        confirm_within: Option<u64>,
    },
    Confirm {},
    /// Recent events numbered above `since` (0: every kept one).
    Events {
        #[serde(default)]
        since: u64,
    },
    /// Detach everything, remove guard's pins, and stop the daemon.
    Unload {},
    /// The running policy: its name, text and hash.
    Policy {},
    /// Drift: the kernel's policy maps compared with the running policy.
    Verify {},
}

#[derive(Debug, Serialize, Deserialize)]
struct Envelope<T> {
    version: u32,
    #[serde(flatten)]
    body: T,
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Reply {
    pub version: u32,
    pub ok: bool,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
    /// Policy errors, `FILE:LINE:COL: message`.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub errors: Vec<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub data: Option<serde_json::Value>,
}

impl Reply {
    pub fn ok(data: serde_json::Value) -> Self {
        Self {
            version: VERSION,
            ok: true,
            data: Some(data),
            ..Self::default()
        }
    }
    /// A success carrying a typed reply (one of [`crate::api::replies`]).
    pub fn data<T: Serialize>(reply: &T) -> Self {
        Self::ok(serde_json::to_value(reply).expect("a reply serialises"))
    }
    /// The data of a success decoded as the request's reply type.
    pub fn decode<T: serde::de::DeserializeOwned>(self) -> Result<T, String> {
        let data = self.data.unwrap_or(serde_json::Value::Null);
        serde_json::from_value(data).map_err(|e| format!("a reply the CLI cannot read: {e}"))
    }
    pub fn error(message: impl Into<String>) -> Self {
        Self {
            version: VERSION,
            ok: false,
            error: Some(message.into()),
            ..Self::default()
        }
    }
    pub fn invalid(message: impl Into<String>, errors: Vec<String>) -> Self {
        Self {
            errors,
            ..Self::error(message)
        }
    }
    /// The reply as one line.
    pub fn to_line(&self) -> Vec<u8> {
        let mut line = serde_json::to_vec(self).expect("serialisable");
        line.push(b'\n');
        line
    }
}

/// Parses one request line: its JSON, version and command.
pub fn parse_request(line: &[u8]) -> Result<Request, String> {
    let mut value: serde_json::Value =
        serde_json::from_slice(line).map_err(|e| format!("not JSON: {e}"))?;
    let object = value.as_object_mut().ok_or("a request is a JSON object")?;
    match object
        .remove("version")
        .as_ref()
        .and_then(serde_json::Value::as_u64)
    {
        Some(v) if v == u64::from(VERSION) => {}
        Some(v) => {
            return Err(format!(
                "unsupported protocol version {v}; this daemon speaks {VERSION}"
            ));
        }
        None => return Err("missing \"version\"".into()),
    }
    // What is left must be exactly one request, unknown fields included in "bad".
    serde_json::from_value(value).map_err(|e| format!("bad request: {e}"))
}

/// Why a client call failed.
#[derive(Debug, thiserror::Error)]
pub enum CallError {
    #[error("guard is not running (no control socket at {0})")]
    NotRunning(String),
    #[error("control socket {path}: {source}")]
    Io {
        path: String,
        #[source]
        source: std::io::Error,
    },
    #[error("control socket: bad reply: {0}")]
    BadReply(String),
    #[error(
        "the daemon closed the control connection without replying (did it stop or restart? see its log)"
    )]
    NoReply,
    #[error("the request is {0} bytes, more than the control socket takes ({MAX_MESSAGE} bytes)")]
    TooLarge(usize),
}

/// Sends one request to the daemon using `run_dir` and waits for its reply.
pub fn call(run_dir: &Path, request: &Request, timeout: Duration) -> Result<Reply, CallError> {
    let path = socket_path(run_dir);
    let io = |source| CallError::Io {
        path: path.display().to_string(),
        source,
    };
    let mut stream = UnixStream::connect(&path).map_err(|e| match e.kind() {
        std::io::ErrorKind::NotFound | std::io::ErrorKind::ConnectionRefused => {
            CallError::NotRunning(path.display().to_string())
        }
        _ => io(e),
    })?;
    stream.set_read_timeout(Some(timeout)).map_err(io)?;
    let mut line = serde_json::to_vec(&Envelope {
        version: VERSION,
        body: request,
    })
    .expect("serialisable");
    line.push(b'\n');
    if line.len() > MAX_MESSAGE {
        return Err(CallError::TooLarge(line.len()));
    }
    // The daemon may answer (and close) before reading everything, e.g. to say a message is
    // too large: its reply is the better error than the broken pipe of our write.
    let written = stream.write_all(&line);
    let mut reply = Vec::new();
    let read = BufReader::new(&stream)
        .take(MAX_REPLY as u64)
        .read_until(b'\n', &mut reply);
    if reply.is_empty() {
        written.map_err(io)?;
        read.map_err(io)?;
        return Err(CallError::NoReply);
    }
    serde_json::from_slice(&reply).map_err(|e| CallError::BadReply(e.to_string()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_daemon_that_closes_without_replying_is_said_so() {
        let dir = std::env::temp_dir().join(format!("guard-ctl-eof-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let listener = std::os::unix::net::UnixListener::bind(socket_path(&dir)).unwrap();
        let server = std::thread::spawn(move || {
            // Reads the request, then dies (closes) without a reply.
            let (stream, _) = listener.accept().unwrap();
            let mut line = String::new();
            BufReader::new(&stream).read_line(&mut line).unwrap();
        });
        let err = call(&dir, &Request::Status {}, Duration::from_secs(5)).unwrap_err();
        server.join().unwrap();
        assert!(matches!(err, CallError::NoReply), "{err}");
        assert!(
            err.to_string()
                .contains("closed the control connection without replying")
        );
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn replies_larger_than_a_request_may_be_are_read_whole() {
        let dir = std::env::temp_dir().join(format!("guard-ctl-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let listener = std::os::unix::net::UnixListener::bind(socket_path(&dir)).unwrap();
        // A 20 MiB reply, as `stats` of a few hundred thousand rules is.
        let big = "x".repeat(20 << 20);
        let served = big.clone();
        let server = std::thread::spawn(move || {
            let (stream, _) = listener.accept().unwrap();
            let mut line = String::new();
            BufReader::new(&stream).read_line(&mut line).unwrap();
            (&stream)
                .write_all(&Reply::ok(serde_json::json!({ "big": served })).to_line())
                .unwrap();
        });
        let reply = call(&dir, &Request::Stats {}, Duration::from_secs(30)).unwrap();
        server.join().unwrap();
        assert_eq!(
            reply.data.unwrap()["big"].as_str().unwrap().len(),
            big.len()
        );
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn requests_round_trip_and_bad_input_is_explained() {
        let apply =
            br#"{"version":1,"cmd":"apply","name":"p.toml","policy":"x","confirm_within":5}"#;
        assert_eq!(
            parse_request(apply),
            Ok(Request::Apply {
                name: "p.toml".into(),
                policy: "x".into(),
                confirm_within: Some(5)
            })
        );
        assert_eq!(
            parse_request(br#"{"version":1,"cmd":"status"}"#),
            Ok(Request::Status {})
        );
        assert!(
            parse_request(b"garbage")
                .unwrap_err()
                .starts_with("not JSON")
        );
        assert!(
            parse_request(br#"{"cmd":"status"}"#)
                .unwrap_err()
                .contains("missing \"version\"")
        );
        assert!(
            parse_request(br#"{"version":2,"cmd":"status"}"#)
                .unwrap_err()
                .contains("version 2")
        );
        assert!(
            parse_request(br#"{"version":1,"cmd":"reboot"}"#)
                .unwrap_err()
                .starts_with("bad request")
        );
        assert!(parse_request(br#"{"version":1,"cmd":"status","extra":1}"#).is_err());
        let line = Reply::invalid("policy rejected", vec!["p.toml:1:1: x".into()]).to_line();
        let back: Reply = serde_json::from_slice(&line).unwrap();
        assert!(!back.ok && back.errors.len() == 1 && back.version == VERSION);
    }
}
