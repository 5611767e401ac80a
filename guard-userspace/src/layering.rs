//! The dependency rule of ARCHITECTURE.md, checked on the source: no module imports a layer
//! above it. Test code (`tests.rs` files and `#[cfg(test)]` modules) is exempt.

use std::{collections::BTreeSet, fs, path::Path};

/// Each layer with the layers it may use, lowest first.
const RULES: [(&str, &[&str]); 8] = [
    ("policy", &[]),
    ("linux", &[]),
    ("datapath", &["policy", "linux"]),
    ("observe", &["datapath", "policy", "linux"]),
    ("api", &["observe", "datapath", "policy", "linux"]),
    (
        "inspect",
        &["api", "observe", "datapath", "policy", "linux"],
    ),
    (
        "daemon",
        &["inspect", "api", "observe", "datapath", "policy", "linux"],
    ),
    (
        "cli",
        &[
            "daemon", "inspect", "api", "observe", "datapath", "policy", "linux",
        ],
    ),
];

/// The top-level modules `code` names through `crate::`.
fn used_layers(code: &str) -> BTreeSet<String> {
    let mut used = BTreeSet::new();
    let ident = |s: &str| -> String {
        s.chars()
            .take_while(|c| c.is_ascii_alphanumeric() || *c == '_')
            .collect()
    };
    for (i, _) in code.match_indices("crate::") {
        let rest = &code[i + "crate::".len()..];
        if let Some(group) = rest.strip_prefix('{') {
            // `crate::{a::b, c, d::{e, f}}`: the first name of each top-level item.
            let (mut depth, mut start) = (0, true);
            for (j, c) in group.char_indices() {
                match c {
                    '{' => depth += 1,
                    '}' if depth == 0 => break,
                    '}' => depth -= 1,
                    ',' if depth == 0 => start = true,
                    c if start && !c.is_whitespace() => {
                        used.insert(ident(&group[j..]));
                        start = false;
                    }
                    _ => {}
                }
            }
        } else {
            used.insert(ident(rest));
        }
    }
    used
}

/// The code of `path` without its test module.
fn non_test_code(path: &Path) -> String {
    let text = fs::read_to_string(path).expect("readable source");
    match text.find("#[cfg(test)]\nmod ") {
        Some(at) => text[..at].to_owned(),
        None => text,
    }
}

fn sources(dir: &Path, out: &mut Vec<std::path::PathBuf>) {
    for entry in fs::read_dir(dir).expect("source dir").flatten() {
        let path = entry.path();
        if path.is_dir() {
            sources(&path, out);
        } else if path.extension().is_some_and(|e| e == "rs")
            && path.file_name().is_some_and(|n| n != "tests.rs")
        {
            out.push(path);
        }
    }
}

#[test]
fn no_module_imports_a_layer_above_it() {
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
    let layers: BTreeSet<&str> = RULES.iter().map(|(l, _)| *l).collect();
    let mut broken = Vec::new();
    for (layer, allowed) in RULES {
        let mut files = Vec::new();
        sources(&src.join(layer), &mut files);
        assert!(!files.is_empty(), "layer {layer} has no sources");
        for file in files {
            for used in used_layers(&non_test_code(&file)) {
                if used != layer && layers.contains(used.as_str()) && !allowed.contains(&&*used) {
                    broken.push(format!(
                        "{} ({layer}) uses {used}",
                        file.strip_prefix(&src).unwrap_or(&file).display()
                    ));
                }
            }
        }
    }
    assert!(broken.is_empty(), "layering broken:\n{}", broken.join("\n"));
}

#[test]
fn grouped_and_plain_paths_are_both_seen() {
    let used = used_layers(
        "use crate::{\n    api::ctl::{self, Reply},\n    datapath,\n};\nlet x = crate::linux::host::f();",
    );
    let used: Vec<&str> = used.iter().map(String::as_str).collect();
    assert_eq!(used, ["api", "datapath", "linux"]);
}
