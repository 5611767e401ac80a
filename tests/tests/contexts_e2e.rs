//! Tier 3: `guard audit --probe-http`, run from a DMZ namespace against an Identity Server
//! look-alike (`guard_tests::idserver`) in another namespace, joined by a veth pair and
//! nothing else. Leaking, the admin contexts and their evasion variants are flagged (exit
//! 1); behind an allow-list, the same probe passes (exit 0). Refused, garbage and TLS
//! failures are rows, never crashes.

use std::net::{SocketAddr, TcpListener};

use guard_tests::{
    Dirs, NsPair,
    idserver::{self, Exposure},
    json_stdout,
};
use serde_json::Value;

fn probe(dirs: &Dirs, pair: &NsPair, url: &str, extra: &[&str]) -> (Option<i32>, Value) {
    let out = dirs
        .guard()
        .args([
            "audit",
            "--json",
            "--probe-http",
            url,
            "--netns",
            &pair.b.name,
        ])
        .args(extra)
        .output()
        .expect("run guard audit");
    (out.status.code(), json_stdout(&out))
}

/// (path, status, verdict) of every row of the first target.
fn rows(report: &Value) -> Vec<(String, String, String)> {
    report["targets"][0]["results"]
        .as_array()
        .expect("results")
        .iter()
        .map(|r| {
            (
                r["path"].as_str().unwrap().to_owned(),
                r["status"].as_str().unwrap().to_owned(),
                r["verdict"].as_str().unwrap().to_owned(),
            )
        })
        .collect()
}

fn row<'a>(rows: &'a [(String, String, String)], path: &str) -> &'a (String, String, String) {
    rows.iter()
        .find(|r| r.0 == path)
        .unwrap_or_else(|| panic!("no row for {path}: {rows:?}"))
}

fn serve(pair: &NsPair, port: u16, exposure: Exposure, tls: bool) -> idserver::IdServer {
    let ip = pair.a_ip;
    let listener = pair
        .a
        .run(move || TcpListener::bind(SocketAddr::from((ip, port))).expect("bind in ns a"));
    idserver::start(listener, exposure, tls, true)
}

#[test]
fn a_leaking_node_is_flagged_and_a_whitelisted_one_passes() {
    let pair = NsPair::new();
    let dirs = Dirs::new();
    let leaking = serve(&pair, 9443, Exposure::Leaking, true);
    let url = format!("https://{}", leaking.addr);
    let (code, report) = probe(&dirs, &pair, &url, &["--insecure"]);
    assert_eq!(code, Some(1), "violations exit 1: {report}");
    let r = rows(&report);
    for path in [
        "/carbon/",
        "/carbon;x/",
        "/x/..;/carbon/",
        "/%63arbon/",
        "//carbon/",
        "/./carbon/",
    ] {
        assert_eq!(row(&r, path).2, "violation", "{path}: {r:?}");
    }
    assert_eq!(row(&r, "/carbon/").1, "302", "a redirect to the login page");
    assert_eq!(row(&r, "/CARBON/").2, "ok", "Tomcat is case-sensitive: 404");
    assert_eq!(row(&r, "/console").2, "violation", "a login form");
    assert_eq!(row(&r, "/services/").2, "violation");
    assert_eq!(row(&r, "/api/server/v1/").1, "401");
    assert_eq!(row(&r, "/oauth2/").2, "ok");
    let cert = &report["targets"][0]["certificate"];
    assert_eq!(cert["self_signed"], true, "{report}");
    assert_eq!(cert["wso2_default"], true, "{report}");
    assert!(report["violations"].as_u64().unwrap() >= 9, "{report}");
    drop(leaking);

    let whitelisted = serve(&pair, 9444, Exposure::Whitelisted, true);
    let (code, report) = probe(
        &dirs,
        &pair,
        &format!("https://{}", whitelisted.addr),
        &["--insecure"],
    );
    assert_eq!(code, Some(0), "{report}");
    assert_eq!(report["violations"], 0);
    let r = rows(&report);
    assert!(
        r.iter()
            .filter(|x| x.0.contains("carbon"))
            .all(|x| x.1 == "404" && x.2 == "ok")
    );
    assert!(
        r.iter()
            .filter(|x| x.0 == "/myaccount" || x.0 == "/oidc/")
            .all(|x| x.2 == "ok"),
        "{r:?}"
    );
}

#[test]
fn failures_are_rows_not_crashes() {
    let pair = NsPair::new();
    let dirs = Dirs::new();
    // Nothing listens: every request is refused, which is fine for the admin contexts and a
    // warning for the end-user ones.
    let (code, report) = probe(
        &dirs,
        &pair,
        &format!("https://{}:9", pair.a_ip),
        &["--insecure", "--timeout", "1"],
    );
    assert_eq!(code, Some(0), "{report}");
    let r = rows(&report);
    assert_eq!(
        row(&r, "/carbon/"),
        &("/carbon/".into(), "refused".into(), "ok".into())
    );
    assert_eq!(row(&r, "/oauth2/").2, "warning");
    // Garbage instead of HTTP.
    let ip = pair.a_ip;
    let junk = pair.a.run(move || TcpListener::bind((ip, 2222)).unwrap());
    std::thread::spawn(move || {
        for s in junk.incoming().flatten() {
            use std::io::Write as _;
            let mut s = s;
            let _ = s.write_all(b"SSH-2.0-OpenSSH_9.2\r\nnot http at all\r\n\r\n");
        }
    });
    let (code, report) = probe(
        &dirs,
        &pair,
        &format!("http://{}:2222", pair.a_ip),
        &["--deny-context", "/carbon/", "--allow-context", "/oauth2/"],
    );
    assert_eq!(code, Some(0), "{report}");
    let r = rows(&report);
    assert_eq!(
        r.len(),
        8,
        "7 variants of one deny context and one allow context: {r:?}"
    );
    assert!(
        r.iter().all(|x| x.1 == "error" && x.2 == "warning"),
        "{r:?}"
    );
    // A self-signed certificate without --insecure: a TLS error, said as such.
    let tls = serve(&pair, 9445, Exposure::Leaking, true);
    let (code, report) = probe(
        &dirs,
        &pair,
        &format!("https://{}", tls.addr),
        &["--deny-context", "/carbon/"],
    );
    assert_eq!(code, Some(0), "{report}");
    assert_eq!(row(&rows(&report), "/carbon/").1, "tls-error", "{report}");
    // Bad input: a precise error, exit 2.
    let out = dirs
        .guard()
        .args(["audit", "--probe-http", "ftp://x"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("https://HOST[:PORT]"));
}

/// The value of `series` in the daemon's /metrics, if present.
fn metric(daemon: &guard_tests::Daemon, series: &str) -> Option<f64> {
    let (_, text) = daemon.http_get("/metrics");
    text.lines().find_map(|l| {
        let (name, value) = l.rsplit_once(' ')?;
        (name == series).then(|| value.parse().ok())?
    })
}

fn wait_for(what: &str, within: std::time::Duration, mut ok: impl FnMut() -> bool) {
    let deadline = std::time::Instant::now() + within;
    while !ok() {
        assert!(
            std::time::Instant::now() < deadline,
            "timed out waiting for {what}"
        );
        std::thread::sleep(std::time::Duration::from_millis(200));
    }
}

#[test]
fn the_daemon_probes_its_targets_and_reports_changes() {
    let net = guard_tests::TestNet::new();
    let pair = NsPair::new();
    let leaking = serve(&pair, 9443, Exposure::Leaking, true);
    let target = format!("https://{}", leaking.addr);
    let policy = guard_tests::PolicyFile::new(
        &(guard_tests::policies::head(&net.host_if, "audit", "allow")
            + &format!(
                "[health]\ninterval_seconds = 1\n[contexts]\ntargets = [\"{target}\"]\nnetns = \"{}\"\ninsecure = true\ninterval_seconds = 10\n",
                pair.b.name
            )),
    );
    let daemon = guard_tests::Daemon::start(&["--policy", policy.arg()]);
    let carbon = format!("guard_context_exposed{{target=\"{target}\",path=\"/carbon/\"}}");
    let apps = format!("guard_context_exposed{{target=\"{target}\",path=\"/api/server/v1/\"}}");
    wait_for(
        "the first probe",
        std::time::Duration::from_secs(15),
        || metric(&daemon, &carbon) == Some(1.0),
    );
    assert_eq!(
        metric(&daemon, &apps),
        Some(0.0),
        "a 401 without a login form is not exposure"
    );
    let events = daemon.dirs.guard().arg("events").output().unwrap();
    let events = String::from_utf8_lossy(&events.stdout).into_owned();
    assert!(
        events
            .lines()
            .any(|l| l.contains("\"kind\":\"context_exposed\"")
                && l.contains("\"path\":\"/carbon/\"")
                && l.contains("/x/..;/carbon/")),
        "{events}"
    );
    // The node goes behind an allow-list: the next probe says the context is closed again.
    drop(leaking);
    std::thread::sleep(std::time::Duration::from_millis(100));
    let _whitelisted = serve(&pair, 9443, Exposure::Whitelisted, true);
    wait_for("the next probe", std::time::Duration::from_secs(25), || {
        metric(&daemon, &carbon) == Some(0.0)
    });
    let events = daemon.dirs.guard().arg("events").output().unwrap();
    assert!(
        String::from_utf8_lossy(&events.stdout)
            .lines()
            .any(|l| l.contains("\"kind\":\"context_closed\"")
                && l.contains("\"path\":\"/carbon/\"")),
    );
}

/// nginx in front of the node, in the node's namespace: the node (plain HTTP) on
/// 127.0.0.1:8080 there, nginx with TLS on the namespace's address.
fn behind_nginx(
    pair: &NsPair,
    port: u16,
    locations: &str,
) -> (idserver::Nginx, idserver::IdServer) {
    let upstream = pair
        .a
        .run(|| TcpListener::bind("127.0.0.1:8080").expect("bind the upstream"));
    let node = idserver::start(upstream, Exposure::Leaking, false, false);
    let nginx =
        idserver::Nginx::start(&pair.a.name, SocketAddr::from((pair.a_ip, port)), locations);
    (nginx, node)
}

#[test]
fn nginx_with_an_allow_list_passes_and_a_deny_list_is_bypassed() {
    let pair = NsPair::new();
    let dirs = Dirs::new();
    {
        let url = format!("https://{}:8443", pair.a_ip);
        let _proxy = behind_nginx(
            &pair,
            8443,
            "    location ~ ^/(oauth2|oidc|samlsso|commonauth|authenticationendpoint|accountrecoveryendpoint|myaccount)(/|$) {\n      proxy_pass http://127.0.0.1:8080;\n    }\n    location / { return 404; }",
        );
        let (code, report) = probe(&dirs, &pair, &url, &["--insecure"]);
        assert_eq!(
            code,
            Some(0),
            "the allow-list holds against every variant: {report}"
        );
        let r = rows(&report);
        assert_eq!(row(&r, "/oauth2/").2, "ok", "{r:?}");
        assert_eq!(row(&r, "/x/..;/carbon/").1, "404", "{r:?}");
    }
    // The first node's listener goes with its thread; let it.
    std::thread::sleep(std::time::Duration::from_millis(100));
    let url = format!("https://{}:8444", pair.a_ip);
    let _proxy = behind_nginx(
        &pair,
        8444,
        "    location /carbon { return 403; }\n    location /services { return 403; }\n    location /console { return 403; }\n    location /api/server { return 403; }\n    location / { proxy_pass http://127.0.0.1:8080; }",
    );
    let (code, report) = probe(&dirs, &pair, &url, &["--insecure"]);
    assert_eq!(code, Some(1), "{report}");
    let r = rows(&report);
    // What nginx itself normalises is blocked ...
    for path in [
        "/carbon/",
        "/carbon;x/",
        "/%63arbon/",
        "//carbon/",
        "/./carbon/",
    ] {
        assert_eq!(row(&r, path).2, "ok", "{path}: {r:?}");
    }
    // ... but `..;` reaches Tomcat, which resolves it to /carbon/.
    assert_eq!(row(&r, "/x/..;/carbon/").2, "violation", "{r:?}");
    assert_eq!(row(&r, "/x/..;/console").2, "violation", "{r:?}");
}
