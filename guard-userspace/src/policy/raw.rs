//! Step 1 of 3: the policy file as serde reads it, with source spans kept for error messages.
//! Nothing here judges values beyond their TOML types; see `validate` for that.

use std::{collections::BTreeMap, fmt};

use serde::{Deserialize, Deserializer, de};
use toml::Spanned;

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawPolicy {
    pub version: Option<Spanned<i64>>,
    pub mode: Option<Spanned<String>>,
    pub interfaces: Option<Spanned<Vec<Spanned<String>>>>,
    pub default: Option<Spanned<String>>,
    pub failsafe_ports: Option<Spanned<Vec<Spanned<RawPort>>>>,
    pub icmp_echo: Option<Spanned<Vec<Spanned<String>>>>,
    #[serde(default)]
    pub zones: BTreeMap<Spanned<String>, Spanned<Vec<Spanned<String>>>>,
    #[serde(default)]
    pub ingress: Vec<Spanned<RawIngress>>,
    #[serde(default)]
    pub egress: Vec<Spanned<RawEgress>>,
    pub cgroup: Option<Spanned<String>>,
    pub listen: Option<Spanned<RawListen>>,
    pub events: Option<Spanned<RawEvents>>,
    pub flows: Option<Spanned<RawFlows>>,
    pub health: Option<Spanned<RawHealth>>,
    pub contexts: Option<Spanned<RawContexts>>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawContexts {
    pub deny: Option<Spanned<Vec<Spanned<String>>>>,
    pub allow: Option<Spanned<Vec<Spanned<String>>>>,
    pub targets: Option<Spanned<Vec<Spanned<String>>>>,
    pub insecure: Option<Spanned<bool>>,
    pub interval_seconds: Option<Spanned<i64>>,
    pub timeout_seconds: Option<Spanned<i64>>,
    pub netns: Option<Spanned<String>>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawHealth {
    pub tcp: Option<Spanned<Vec<Spanned<RawPort>>>>,
    pub udp: Option<Spanned<Vec<Spanned<RawPort>>>>,
    pub service: Option<Spanned<String>>,
    pub interval_seconds: Option<Spanned<i64>>,
    pub rtt_factor: Option<Spanned<f64>>,
    pub rtt_min_samples: Option<Spanned<i64>>,
    pub rejected_per_second: Option<Spanned<i64>>,
    pub overflows_per_second: Option<Spanned<i64>>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawEvents {
    pub rate_per_second: Option<Spanned<i64>>,
    pub burst: Option<Spanned<i64>>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawFlows {
    pub tcp_timeout_seconds: Option<Spanned<i64>>,
    pub udp_timeout_seconds: Option<Spanned<i64>>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawIngress {
    pub name: Spanned<String>,
    pub proto: Spanned<String>,
    /// Required for `tcp` and `udp`; absent for protocols judged as a whole.
    pub ports: Option<Spanned<Vec<Spanned<RawPort>>>>,
    pub from: Option<Spanned<Vec<Spanned<String>>>>,
    pub action: Option<Spanned<String>>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawEgress {
    pub name: Spanned<String>,
    pub proto: Spanned<String>,
    pub ports: Spanned<Vec<Spanned<RawPort>>>,
    pub to: Option<Spanned<Vec<Spanned<String>>>>,
    pub action: Option<Spanned<String>>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawListen {
    /// Ports any protocol may bind.
    pub allow: Option<Spanned<Vec<Spanned<RawPort>>>>,
    /// Ports only TCP sockets may bind.
    pub tcp: Option<Spanned<Vec<Spanned<RawPort>>>>,
    /// Ports only UDP sockets may bind.
    pub udp: Option<Spanned<Vec<Spanned<RawPort>>>>,
}

/// A port as written: `443` or `"9999-10000"` (or `"8080"`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RawPort {
    Number(i64),
    Text(String),
}

impl<'de> Deserialize<'de> for RawPort {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct PortVisitor;
        impl de::Visitor<'_> for PortVisitor {
            type Value = RawPort;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(r#"a port number like 443 or a range like "9999-10000""#)
            }
            fn visit_i64<E: de::Error>(self, v: i64) -> Result<RawPort, E> {
                Ok(RawPort::Number(v))
            }
            fn visit_u64<E: de::Error>(self, v: u64) -> Result<RawPort, E> {
                Ok(RawPort::Number(i64::try_from(v).unwrap_or(i64::MAX)))
            }
            fn visit_str<E: de::Error>(self, v: &str) -> Result<RawPort, E> {
                Ok(RawPort::Text(v.to_owned()))
            }
        }
        deserializer.deserialize_any(PortVisitor)
    }
}

/// Parses TOML text; the error carries the span toml reports.
pub fn parse(text: &str) -> Result<RawPolicy, toml::de::Error> {
    toml::from_str(text)
}
