//! Policy: TOML text -> [`raw::RawPolicy`] (parse) -> validated [`model::Policy`]
//! ([`validate`], with `addresses` and the `lint` warnings) -> [`lower::Lowered`] map
//! contents ([`lower`], with counter slots from [`catalog`]). [`eval`] is the reference
//! semantics every other judge follows; [`diff`] summarises a change. Each step unit-tested.

mod addresses;
pub mod catalog;
mod contexts;
pub mod diff;
pub mod direct;
pub mod eval;
mod lint;
pub mod lower;
pub mod model;
pub mod raw;
pub mod validate;

#[cfg(test)]
mod tests;

use std::{fmt, ops::Range, path::Path};

pub use catalog::{PortSlot, RuleInfo};
pub use contexts::context_path_problem;
pub use lower::{ClassIds, Lowered, lower, lower_after, lower_after_classes};
pub use model::Policy;
use sha2::{Digest, Sha256};

/// The policy `guard run` uses when no `--policy` is given and `/etc/guard/policy.toml` does
/// not exist. It is in audit mode: it counts and reports, and drops nothing.
pub const DEFAULT_POLICY: &str = include_str!("../../../policies/default.toml");
/// Label used in messages about [`DEFAULT_POLICY`].
pub const DEFAULT_POLICY_LABEL: &str = "<embedded default policy>";
/// Where `guard run` looks for a policy when none is given.
pub const SYSTEM_POLICY_PATH: &str = "/etc/guard/policy.toml";

/// A problem at a place in the policy text.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Diagnostic {
    pub span: Range<usize>,
    pub message: String,
}

impl Diagnostic {
    pub fn new(span: Range<usize>, message: impl Into<String>) -> Self {
        Self {
            span,
            message: message.into(),
        }
    }

    /// `FILE:LINE:COL: message`, with 1-based line and column (in characters).
    pub fn render(&self, file: &str, text: &str) -> String {
        self.render_with(&LineIndex::new(text), file, text)
    }

    /// As [`Diagnostic::render`], with the text's line index made once for many.
    pub fn render_with(&self, index: &LineIndex, file: &str, text: &str) -> String {
        let (line, col) = index.line_col(text, self.span.start);
        format!("{file}:{line}:{col}: {}", self.message)
    }
}

/// 1-based line and column (counted in characters) of a byte offset.
pub fn line_col(text: &str, offset: usize) -> (usize, usize) {
    LineIndex::new(text).line_col(text, offset)
}

/// Where each line of a text starts, so that placing many diagnostics costs a binary
/// search each, not a scan of the text each (80 000 errors in a large policy stay fast).
pub struct LineIndex {
    starts: Vec<usize>,
}

impl LineIndex {
    pub fn new(text: &str) -> Self {
        let starts = std::iter::once(0)
            .chain(text.match_indices('\n').map(|(i, _)| i + 1))
            .collect();
        Self { starts }
    }

    /// 1-based line and column (in characters) of a byte offset of `text`.
    pub fn line_col(&self, text: &str, offset: usize) -> (usize, usize) {
        let offset = text.floor_char_boundary(offset.min(text.len()));
        let line = self.starts.partition_point(|&s| s <= offset);
        let start = self.starts[line - 1];
        (line, text[start..offset].chars().count() + 1)
    }
}

/// Reads a policy file as UTF-8 text. Text that is not UTF-8 is reported like any other
/// policy error, `FILE:LINE:COL: message`, at the first byte that is not.
pub fn read(path: &Path) -> Result<String, ReadError> {
    let bytes = std::fs::read(path)
        .map_err(|e| ReadError::Io(format!("cannot read policy {}: {e}", path.display())))?;
    String::from_utf8(bytes).map_err(|e| {
        let good = e.utf8_error().valid_up_to();
        let bytes = e.into_bytes();
        let text = String::from_utf8_lossy(&bytes[..good]);
        let (line, col) = line_col(&text, good);
        ReadError::NotUtf8(format!(
            "{}:{line}:{col}: the policy is not UTF-8 text (byte 0x{:02x})",
            path.display(),
            bytes[good]
        ))
    })
}

/// Why a policy file could not be read as text.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ReadError {
    #[error("{0}")]
    Io(String),
    #[error("{0}")]
    NotUtf8(String),
}

/// A policy that did not pass validation: every error, rendered as `FILE:LINE:COL: message`.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub struct PolicyErrors {
    pub lines: Vec<String>,
}

impl fmt::Display for PolicyErrors {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.lines.join("\n"))
    }
}

/// A policy text that passed validation.
#[derive(Debug, Clone)]
pub struct Checked {
    pub policy: Policy,
    /// Rendered warnings (`FILE:LINE:COL: warning: ...`).
    pub warnings: Vec<String>,
    /// SHA-256 of the policy text, hex.
    pub hash: String,
}

/// Parses and validates a policy text; `file` names it in messages. The warnings include
/// the lint's (shadowed and overlapping rules).
pub fn check(file: &str, text: &str) -> Result<Checked, PolicyErrors> {
    let (mut checked, lint) = check_before_lint(file, text)?;
    checked
        .warnings
        .extend(lint.warnings(&checked.policy, file, text));
    Ok(checked)
}

/// As [`check`], with the lint left for later ([`Lint::warnings`]): the daemon answers an
/// apply once the kernel enforces, and says the lint's warnings after. Its warnings can
/// never refuse a policy, and for a large one it is a sizeable share of the check.
pub fn check_before_lint(file: &str, text: &str) -> Result<(Checked, Lint), PolicyErrors> {
    let parse_error = |e: toml::de::Error| PolicyErrors {
        lines: vec![
            Diagnostic::new(e.span().unwrap_or(0..0), e.message().trim_end()).render(file, text),
        ],
    };
    let raw = raw::parse(text).map_err(parse_error)?;
    let pieces_failed = raw.more_rules.failed();
    let mut validated = validate::validate(raw);
    if pieces_failed.get() {
        // A large text whose pieces did not parse alone: the one-document parse decides.
        validated = validate::validate(raw::parse_whole(text).map_err(parse_error)?);
    }
    let index = LineIndex::new(text);
    match validated {
        Ok((policy, warnings, spans)) => Ok((
            Checked {
                policy,
                warnings: render_warnings(&warnings, &index, file, text),
                hash: hash(text),
            },
            Lint { spans },
        )),
        Err(errors) => Err(PolicyErrors {
            lines: errors
                .iter()
                .map(|e| e.render_with(&index, file, text))
                .collect(),
        }),
    }
}

/// The lint of a policy [`check_before_lint`] validated (no `Default`: it belongs to that
/// policy).
#[derive(Debug, Clone)]
pub struct Lint {
    spans: lint::RuleSpans,
}

impl Lint {
    /// The lint's warnings (shadowed and overlapping rules), rendered as
    /// `FILE:LINE:COL: warning: ...`, for `policy` and `text` as they were checked.
    pub fn warnings(&self, policy: &Policy, file: &str, text: &str) -> Vec<String> {
        let warnings = self.spans.warnings(policy);
        if warnings.is_empty() {
            return Vec::new();
        }
        render_warnings(&warnings, &LineIndex::new(text), file, text)
    }
}

fn render_warnings(
    warnings: &[Diagnostic],
    index: &LineIndex,
    file: &str,
    text: &str,
) -> Vec<String> {
    warnings
        .iter()
        .map(|w| {
            Diagnostic::new(w.span.clone(), format!("warning: {}", w.message))
                .render_with(index, file, text)
        })
        .collect()
}

/// SHA-256 of a policy text, lowercase hex.
pub fn hash(text: &str) -> String {
    Sha256::digest(text.as_bytes())
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

/// Where a policy text came from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PolicySource {
    File(std::path::PathBuf),
    Embedded,
}

impl PolicySource {
    /// The name used in messages.
    pub fn label(&self) -> String {
        match self {
            PolicySource::File(p) => p.display().to_string(),
            PolicySource::Embedded => DEFAULT_POLICY_LABEL.to_owned(),
        }
    }
}

/// Resolves `guard run`'s policy: the given file, else the system file (normally
/// [`SYSTEM_POLICY_PATH`]), else the embedded default. Returns the source and its text.
pub fn resolve(given: Option<&Path>, system: &Path) -> std::io::Result<(PolicySource, String)> {
    // (Text that is not UTF-8 is an io::Error of kind InvalidData here, with its place.)
    let path = match given {
        Some(p) => p.to_path_buf(),
        None => {
            if !system.exists() {
                return Ok((PolicySource::Embedded, DEFAULT_POLICY.to_owned()));
            }
            system.to_path_buf()
        }
    };
    let text = read(&path).map_err(|e| match e {
        ReadError::Io(m) => std::io::Error::other(m),
        ReadError::NotUtf8(m) => std::io::Error::new(std::io::ErrorKind::InvalidData, m),
    })?;
    Ok((PolicySource::File(path), text))
}
