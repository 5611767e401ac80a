//! Step 1 of 3: the policy file as serde reads it, with source spans kept for error messages.
//! Nothing here judges values beyond their TOML types; see `validate` for that.

use std::{collections::BTreeMap, fmt};

use serde::{Deserialize, Deserializer, de};
use toml::Spanned;

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawPolicy<'t> {
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
    /// The rules after the first piece of a text parsed in pieces ([`parse`]), parsed as
    /// they are taken, so only one piece's raw rules are in memory at a time.
    #[serde(skip)]
    pub more_rules: MoreRules<'t>,
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
///
/// A large policy is parsed in pieces of [`PIECE_RULES`] rules: the toml crate holds a
/// token list and a value tree of the whole document at once, about 3 KiB per rule, so a
/// million rules would peak at gigabytes. Here only the first piece (everything before the
/// rules, and the first rules) is parsed; the others are parsed as validation takes them
/// ([`MoreRules`]). A piece that does not parse on its own, or parses to anything but the
/// rules its headers start, marks the parse [`MoreRules::failed`]: the caller then parses
/// and validates the whole text with [`parse_whole`], whose result and errors are the
/// reference.
pub fn parse(text: &str) -> Result<RawPolicy<'_>, toml::de::Error> {
    if text.len() >= PIECES_ABOVE_BYTES
        && let Some(raw) = parse_in_pieces(text)
    {
        return Ok(raw);
    }
    parse_whole(text)
}

/// Parses TOML text as one document.
pub fn parse_whole(text: &str) -> Result<RawPolicy<'_>, toml::de::Error> {
    toml::from_str(text)
}

/// Rules per piece of a large policy.
const PIECE_RULES: usize = 1024;
/// Texts at least this long are parsed in pieces.
const PIECES_ABOVE_BYTES: usize = 1 << 20;

/// What a piece after the first may hold: rules, nothing else.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawRules {
    #[serde(default)]
    ingress: Vec<Spanned<RawIngress>>,
    #[serde(default)]
    egress: Vec<Spanned<RawEgress>>,
}

/// The pieces of a policy text after its first, parsed one at a time: an iterator over
/// each piece's `[[ingress]]` rules; its `[[egress]]` rules are kept for [`MoreRules::egress`].
#[derive(Default)]
pub struct MoreRules<'t> {
    text: &'t str,
    /// Where each piece starts (and, last, the text's end).
    cuts: Vec<usize>,
    /// (ingress, egress) headers in each piece.
    counts: Vec<(usize, usize)>,
    next: usize,
    egress: Vec<Spanned<RawEgress>>,
    failed: std::rc::Rc<std::cell::Cell<bool>>,
}

impl fmt::Debug for MoreRules<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("MoreRules")
            .field("pieces", &self.cuts.len().saturating_sub(1))
            .field("next", &self.next)
            .field("failed", &self.failed.get())
            .finish()
    }
}

impl MoreRules<'_> {
    /// Set once a piece failed to parse as the rules its headers start: the rules taken so
    /// far are not the policy's, and the whole text must be parsed instead.
    pub fn failed(&self) -> std::rc::Rc<std::cell::Cell<bool>> {
        self.failed.clone()
    }

    /// The `[[egress]]` rules of the pieces taken so far.
    pub fn egress(&mut self) -> Vec<Spanned<RawEgress>> {
        std::mem::take(&mut self.egress)
    }
}

impl Iterator for MoreRules<'_> {
    type Item = Vec<Spanned<RawIngress>>;

    fn next(&mut self) -> Option<Self::Item> {
        if self.failed.get() || self.next + 1 >= self.cuts.len() {
            return None;
        }
        let (start, end) = (self.cuts[self.next], self.cuts[self.next + 1]);
        let expected = self.counts[self.next];
        self.next += 1;
        match toml::from_str::<RawRules>(&self.text[start..end]) {
            Ok(piece) if (piece.ingress.len(), piece.egress.len()) == expected => {
                self.egress
                    .extend(piece.egress.into_iter().map(|r| shift_egress(r, start)));
                Some(
                    piece
                        .ingress
                        .into_iter()
                        .map(|r| shift_ingress(r, start))
                        .collect(),
                )
            }
            _ => {
                self.failed.set(true);
                None
            }
        }
    }
}

/// Whether `line` is an `[[ingress]]` header (`Some(true)`), an `[[egress]]` header
/// (`Some(false)`), or neither, as written one per line (a comment may follow).
fn rule_header(line: &str) -> Option<bool> {
    let line = line.trim();
    let rest = |head: &str| {
        line.strip_prefix(head)
            .map(str::trim_start)
            .is_some_and(|r| r.is_empty() || r.starts_with('#'))
    };
    if rest("[[ingress]]") {
        Some(true)
    } else if rest("[[egress]]") {
        Some(false)
    } else {
        None
    }
}

/// The first piece of a policy text parsed, the others left to [`MoreRules`]: the text up
/// to a rule header, then [`PIECE_RULES`] rules at a time, each piece its own TOML document,
/// spans moved back to the whole text. `None` when the first piece does not parse or is not
/// what its headers promise.
fn parse_in_pieces(text: &str) -> Option<RawPolicy<'_>> {
    // Every rule header: (offset, ingress?).
    let mut headers = Vec::new();
    let mut at = 0;
    for line in text.split_inclusive('\n') {
        if let Some(ingress) = rule_header(line) {
            headers.push((at, ingress));
        }
        at += line.len();
    }
    if headers.len() < 2 * PIECE_RULES {
        return None;
    }
    let cuts: Vec<usize> = headers
        .iter()
        .step_by(PIECE_RULES)
        .skip(1)
        .map(|&(at, _)| at)
        .chain([text.len()])
        .collect();
    let counts_in = |start: usize, end: usize| {
        let within = headers.iter().filter(|&&(at, _)| at >= start && at < end);
        let ingress = within.clone().filter(|&&(_, i)| i).count();
        (ingress, within.count() - ingress)
    };
    let mut raw: RawPolicy = toml::from_str(&text[..cuts[0]]).ok()?;
    if (raw.ingress.len(), raw.egress.len()) != counts_in(0, cuts[0]) {
        return None;
    }
    let counts = cuts.windows(2).map(|w| counts_in(w[0], w[1])).collect();
    raw.more_rules = MoreRules {
        text,
        cuts,
        counts,
        ..MoreRules::default()
    };
    Some(raw)
}

/// `s` with its span moved `by` bytes later and its value passed through `f` (which moves
/// the spans inside it).
fn shift_with<T>(s: Spanned<T>, by: usize, f: impl FnOnce(T) -> T) -> Spanned<T> {
    let span = s.span();
    Spanned::new(span.start + by..span.end + by, f(s.into_inner()))
}

/// `s` with its span moved `by` bytes later.
fn shift<T>(s: Spanned<T>, by: usize) -> Spanned<T> {
    shift_with(s, by, |v| v)
}

fn shift_list<T>(list: Spanned<Vec<Spanned<T>>>, by: usize) -> Spanned<Vec<Spanned<T>>> {
    shift_with(list, by, |items| {
        items.into_iter().map(|i| shift(i, by)).collect()
    })
}

fn shift_ingress(rule: Spanned<RawIngress>, by: usize) -> Spanned<RawIngress> {
    shift_with(rule, by, |r| RawIngress {
        name: shift(r.name, by),
        proto: shift(r.proto, by),
        ports: r.ports.map(|p| shift_list(p, by)),
        from: r.from.map(|f| shift_list(f, by)),
        action: r.action.map(|a| shift(a, by)),
    })
}

fn shift_egress(rule: Spanned<RawEgress>, by: usize) -> Spanned<RawEgress> {
    shift_with(rule, by, |r| RawEgress {
        name: shift(r.name, by),
        proto: shift(r.proto, by),
        ports: shift_list(r.ports, by),
        to: r.to.map(|t| shift_list(t, by)),
        action: r.action.map(|a| shift(a, by)),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A policy of `n` rules, with an egress rule every 100th, big enough to be parsed in
    /// pieces.
    fn big(n: usize) -> String {
        let mut s = String::from(
            "mode = \"enforce\"\ninterfaces = [\"eth0\"]\n[zones]\nlan = [\"10.0.0.0/8\"]\n",
        );
        for i in 0..n {
            if i % 100 == 0 {
                s += &format!(
                    "[[egress]]  # rule {i}\nname = \"e{i}\"\nproto = \"tcp\"\nports = [{}]\nto = [\"lan\"]\n",
                    1 + i % 60000
                );
            }
            s += &format!(
                "[[ingress]]\r\nname = \"r{i}\"\nproto = \"tcp\"\nports = [{}, \"10-20\"]\nfrom = [\"lan\", \"192.0.2.{}/32\"]\naction = \"allow\"\n",
                1 + i % 60000,
                i % 256
            );
        }
        s
    }

    fn whole(text: &str) -> String {
        format!("{:?}", toml::from_str::<RawPolicy>(text).unwrap())
    }

    #[test]
    fn pieces_give_what_the_whole_document_gives() {
        let text = big(12000);
        assert!(text.len() >= PIECES_ABOVE_BYTES);
        let mut pieces = parse_in_pieces(&text).expect("parsed in pieces");
        let mut more = std::mem::take(&mut pieces.more_rules);
        let failed = more.failed();
        let rest: Vec<_> = more.by_ref().collect();
        assert!(rest.len() > 5, "{} pieces", rest.len() + 1);
        assert!(!failed.get());
        pieces.ingress.extend(rest.into_iter().flatten());
        pieces.egress.extend(more.egress());
        assert_eq!(pieces.ingress.len(), 12000);
        assert_eq!(pieces.egress.len(), 120);
        // Spans included: every one points where the whole parse points.
        assert_eq!(format!("{pieces:?}"), whole(&text));
    }

    /// Whether taking every piece of `text` fails (a first piece that does not parse counts).
    fn pieces_fail(text: &str) -> bool {
        let Some(mut raw) = parse_in_pieces(text) else {
            return true;
        };
        let failed = raw.more_rules.failed();
        raw.more_rules.by_ref().for_each(drop);
        failed.get()
    }

    #[test]
    fn anything_but_plain_rules_after_the_first_piece_fails_the_pieces() {
        let text = big(12000);
        assert!(!pieces_fail(&text));
        // A table after the rules.
        assert!(pieces_fail(&format!(
            "{text}[events]\nrate_per_second = 3\n"
        )));
        // A table between rules.
        let cut = text.match_indices("[[ingress]]").nth(3000).unwrap().0;
        let between = format!("{}[events]\nburst = 2\n{}", &text[..cut], &text[cut..]);
        assert!(pieces_fail(&between));
        // An inline rule array ahead of the headers: TOML rejects the mix.
        let inline = text.replacen(
            "[zones]",
            "ingress = [{ name = \"x\", proto = \"tcp\", ports = [1] }]\n[zones]",
            1,
        );
        assert!(parse_in_pieces(&inline).is_none());
        // A header line inside a multi-line string, where a piece would start.
        for nth in [PIECE_RULES, 5 * PIECE_RULES] {
            let mut lines: Vec<&str> = text.split_inclusive('\n').collect();
            let cut = lines
                .iter()
                .enumerate()
                .filter(|(_, l)| rule_header(l).is_some())
                .nth(nth)
                .unwrap()
                .0;
            lines.insert(cut, "name2 = \"\"\"\n");
            lines.insert(cut + 2, "\"\"\"\n");
            assert!(pieces_fail(&lines.concat()), "a string across piece {nth}");
        }
    }

    #[test]
    fn an_error_in_a_later_piece_fails_the_pieces() {
        let text = big(12000).replace("name = \"r9321\"", "name = r9321");
        assert!(text.len() >= PIECES_ABOVE_BYTES);
        assert!(pieces_fail(&text));
    }
}
