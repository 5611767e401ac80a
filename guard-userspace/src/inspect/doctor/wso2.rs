//! `credentials` and `wso2`: read-only checks of a WSO2 Identity Server installation
//! (`guard doctor --wso2-home DIR`), from its `repository/conf/deployment.toml` and keystore
//! files. Never a login attempt: Identity Server locks accounts.
//!
//! - `[super_admin]` password `admin`: error; any other plain (not `$secret{...}`) value:
//!   warning;
//! - keystore or truststore password `wso2carbon`, or the stock `wso2carbon` keystore (whose
//!   private key ships with every download) still configured or defaulted to: error;
//! - admin services not disabled, the plain-HTTP transport not disabled, a hostname of
//!   `localhost`: warnings with a fix.

use toml::{Table, Value};

use super::*;

/// The deployment configuration, relative to the installation directory.
pub const DEPLOYMENT_TOML: &str = "repository/conf/deployment.toml";

/// The key and trust stores every Identity Server download ships, with their password.
const STOCK_KEYSTORES: [&str; 4] = [
    "wso2carbon.jks",
    "wso2carbon.p12",
    "client-truststore.jks",
    "client-truststore.p12",
];
const STOCK_PASSWORD: &str = "wso2carbon";

/// A value found at `path` (dotted, through tables) in `table`.
fn lookup<'a>(table: &'a Table, path: &str) -> Option<&'a Value> {
    let mut parts = path.split('.');
    let mut value = table.get(parts.next()?)?;
    for part in parts {
        value = value.as_table()?.get(part)?;
    }
    Some(value)
}

fn text<'a>(table: &'a Table, path: &str) -> Option<&'a str> {
    lookup(table, path).and_then(Value::as_str)
}

/// True for a secret the secure vault resolves (`$secret{alias}`), not a literal.
fn is_vaulted(value: &str) -> bool {
    value.trim_start().starts_with("$secret{")
}

/// The first value of `key` anywhere in `table` (any depth), for settings whose table moved
/// between versions.
fn find_key<'a>(table: &'a Table, key: &str) -> Option<&'a Value> {
    table.iter().find_map(|(k, v)| {
        if k == key {
            Some(v)
        } else {
            v.as_table().and_then(|t| find_key(t, key))
        }
    })
}

/// Judges an Identity Server installation at `home`.
pub fn check_wso2_home(home: &Path) -> Vec<Finding> {
    let config = home.join(DEPLOYMENT_TOML);
    let text_of = match fs::read_to_string(&config) {
        Ok(t) => t,
        Err(e) => {
            return vec![finding(
                "wso2",
                Severity::Error,
                format!(
                    "{} is not an Identity Server installation: {}: {e}",
                    home.display(),
                    config.display()
                ),
                "pass the directory that holds repository/conf/deployment.toml (IS_HOME)",
            )];
        }
    };
    let table: Table = match text_of.parse() {
        Ok(t) => t,
        Err(e) => {
            return vec![finding(
                "wso2",
                Severity::Error,
                format!(
                    "{} does not parse: {}",
                    config.display(),
                    e.message().trim_end()
                ),
                "fix the file (Identity Server will not start with it either)",
            )];
        }
    };
    judge_deployment(&table)
}

/// The findings for a parsed `deployment.toml`.
pub fn judge_deployment(table: &Table) -> Vec<Finding> {
    let mut out = Vec::new();
    let shown = DEPLOYMENT_TOML;
    // The super admin.
    match text(table, "super_admin.password") {
        Some("admin") => out.push(finding(
            "credentials",
            Severity::Error,
            format!("{shown}: [super_admin] password is the default `admin`"),
            "set a strong password, stored with the secure vault ($secret{...}), before the server is reachable",
        )),
        Some(p) if !is_vaulted(p) => out.push(finding(
            "credentials",
            Severity::Warning,
            format!("{shown}: [super_admin] password is written in plain text"),
            "encrypt it with the cipher tool: password = \"$secret{admin_password}\"",
        )),
        Some(_) => out.push(finding(
            "credentials",
            Severity::Ok,
            format!("{shown}: [super_admin] password comes from the secure vault"),
            "",
        )),
        None => out.push(finding(
            "credentials",
            Severity::Warning,
            format!("{shown}: no [super_admin] password: the product default applies"),
            "set [super_admin] username and a vaulted password",
        )),
    }
    // Key and trust stores: missing sections mean the stock ones.
    for (section, default_file) in [
        ("keystore.primary", "wso2carbon.jks"),
        ("keystore.internal", "wso2carbon.jks"),
        ("keystore.tls", "wso2carbon.jks"),
        ("truststore", "client-truststore.jks"),
    ] {
        let configured = lookup(table, section).is_some();
        if !configured && section != "keystore.primary" && section != "truststore" {
            // These default to the primary keystore, judged under it.
            continue;
        }
        let file = text(table, &format!("{section}.file_name")).unwrap_or(default_file);
        let password = text(table, &format!("{section}.password"));
        let stock_file = STOCK_KEYSTORES.iter().any(|s| {
            std::path::Path::new(file)
                .file_name()
                .is_some_and(|n| n == *s)
        });
        if stock_file && section != "truststore" {
            out.push(finding(
                "credentials",
                Severity::Error,
                format!(
                    "{shown}: [{section}] uses the stock keystore {file}{}: its private key ships with every Identity Server download",
                    if configured { "" } else { " (not configured, so the default)" }
                ),
                "create a keystore with your own key and CA-signed certificate and configure it here",
            ));
        }
        if password == Some(STOCK_PASSWORD) || (!configured && password.is_none()) {
            out.push(finding(
                "credentials",
                Severity::Error,
                format!("{shown}: [{section}] password is the default `wso2carbon`"),
                "change the store's password (keytool -storepasswd) and vault it ($secret{...})",
            ));
        }
    }
    // Admin services and the management console's SOAP back end.
    match find_key(table, "disable_admin_services").and_then(Value::as_bool) {
        Some(true) => {}
        _ => out.push(finding(
            "wso2",
            Severity::Warning,
            format!("{shown}: admin services (SOAP, /services) are not disabled"),
            "set disable_admin_services = true where the admin console is not needed, and block /services and /carbon at the load balancer",
        )),
    }
    // Plain HTTP (9763).
    let http_disabled = ["transport.http.enabled", "transport.http.enable"]
        .iter()
        .any(|k| lookup(table, k).and_then(Value::as_bool) == Some(false));
    if !http_disabled {
        out.push(finding(
            "wso2",
            Severity::Warning,
            format!("{shown}: the plain-HTTP transport (9763) is not disabled"),
            "set [transport.http] enabled = false (and keep 9763 closed in guard's policy)",
        ));
    }
    // The hostname clients and redirects use.
    if let Some(host) = text(table, "server.hostname")
        && (host == "localhost" || host.starts_with("127."))
    {
        out.push(finding(
            "wso2",
            Severity::Warning,
            format!("{shown}: [server] hostname is `{host}`: redirects and tokens name a host clients cannot reach"),
            "set [server] hostname to the name clients use (the load balancer's)",
        ));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn judge(text: &str) -> Vec<(Severity, String)> {
        judge_deployment(&text.parse().unwrap())
            .into_iter()
            .map(|f| (f.severity, f.message))
            .collect()
    }

    fn has(findings: &[(Severity, String)], severity: Severity, part: &str) -> bool {
        findings
            .iter()
            .any(|(s, m)| *s == severity && m.contains(part))
    }

    const STOCK: &str = r#"
[server]
hostname = "localhost"
[super_admin]
username = "admin"
password = "admin"
create_admin_account = true
[keystore.primary]
file_name = "wso2carbon.jks"
password = "wso2carbon"
[truststore]
file_name = "client-truststore.jks"
password = "wso2carbon"
"#;

    #[test]
    fn a_stock_installation_is_flagged_everywhere() {
        let f = judge(STOCK);
        assert!(has(&f, Severity::Error, "password is the default `admin`"));
        assert!(has(
            &f,
            Severity::Error,
            "[keystore.primary] uses the stock keystore wso2carbon.jks"
        ));
        assert!(has(
            &f,
            Severity::Error,
            "[keystore.primary] password is the default `wso2carbon`"
        ));
        assert!(has(
            &f,
            Severity::Error,
            "[truststore] password is the default `wso2carbon`"
        ));
        assert!(
            !has(&f, Severity::Error, "[truststore] uses the stock"),
            "the stock CA list is fine"
        );
        assert!(has(&f, Severity::Warning, "admin services"));
        assert!(has(&f, Severity::Warning, "plain-HTTP transport"));
        assert!(has(&f, Severity::Warning, "hostname is `localhost`"));
    }

    #[test]
    fn a_hardened_installation_passes_and_plain_passwords_warn() {
        let hardened = r#"
[server]
hostname = "id.example.com"
disable_admin_services = true
[super_admin]
username = "ops"
password = "$secret{admin_password}"
[keystore.primary]
file_name = "node1.p12"
password = "$secret{keystore_password}"
[truststore]
file_name = "client-truststore.p12"
password = "$secret{truststore_password}"
[transport.http]
enabled = false
"#;
        let f = judge(hardened);
        assert!(f.iter().all(|(s, _)| *s == Severity::Ok), "{f:?}");
        let plain = hardened.replace("$secret{admin_password}", "S3cure-but-plain");
        assert!(has(&judge(&plain), Severity::Warning, "plain text"));
    }

    #[test]
    fn missing_sections_mean_the_defaults() {
        let f = judge("[server]\nhostname = \"id.example.com\"\n");
        assert!(has(&f, Severity::Warning, "no [super_admin] password"));
        assert!(has(&f, Severity::Error, "(not configured, so the default)"));
        assert!(has(
            &f,
            Severity::Error,
            "[truststore] password is the default"
        ));
    }

    #[test]
    fn not_an_installation_or_a_broken_file_is_one_finding() {
        let dir = std::env::temp_dir().join(format!("guard-wso2-{}", std::process::id()));
        let conf = dir.join("repository/conf");
        std::fs::create_dir_all(&conf).unwrap();
        let f = check_wso2_home(&dir.join("nope"));
        assert_eq!(f.len(), 1);
        assert!(
            f[0].message
                .contains("is not an Identity Server installation")
        );
        std::fs::write(conf.join("deployment.toml"), "[server\nhostname = 1").unwrap();
        let f = check_wso2_home(&dir);
        assert_eq!(f.len(), 1);
        assert!(f[0].message.contains("does not parse"), "{:?}", f[0]);
        std::fs::write(conf.join("deployment.toml"), STOCK).unwrap();
        assert!(check_wso2_home(&dir).len() > 5);
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
