//! The module layout `src/lib.rs` describes is the one the code has: every module has a row in
//! its layout table, and no module imports one whose row is above its own (so there is no import
//! circle either).
//!
//! The graph is built the way `../shared/tools/modgraph.py` builds it: from the `crate::` paths
//! (in `use` groups, braces expanded, and inline) of each file's non-test code, comments left out;
//! a path names the longest module prefix that is a file. A parent and its own submodules may
//! import each other (a parent declares its children; a child may use its parent's items), and a
//! parent file that only declares submodules (`src/auth.rs`) needs no row.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

fn src() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("src")
}

/// Module path of every `.rs` file under `src/` except the crate roots, with its file.
fn modules() -> BTreeMap<String, PathBuf> {
    fn walk(dir: &Path, root: &Path, out: &mut BTreeMap<String, PathBuf>) {
        for entry in std::fs::read_dir(dir).unwrap() {
            let path = entry.unwrap().path();
            if path.is_dir() {
                walk(&path, root, out);
            } else if path.extension().is_some_and(|e| e == "rs") {
                let rel = path.strip_prefix(root).unwrap().with_extension("");
                let name: Vec<String> = rel
                    .components()
                    .map(|c| c.as_os_str().to_string_lossy().into_owned())
                    .collect();
                let mut name = name.join("::");
                if name == "lib" || name == "main" {
                    continue;
                }
                if let Some(parent) = name.strip_suffix("::mod") {
                    name = parent.to_owned();
                }
                out.insert(name, path);
            }
        }
    }
    let mut out = BTreeMap::new();
    walk(&src(), &src(), &mut out);
    out
}

/// The text before the first `#[cfg(test)]` module, each line with its number, comments blanked.
fn code_lines(text: &str) -> Vec<(usize, String)> {
    let mut lines = Vec::new();
    let mut in_block = false;
    let mut previous_is_cfg_test = false;
    for (i, line) in text.lines().enumerate() {
        let trimmed = line.trim();
        if previous_is_cfg_test
            && (trimmed.starts_with("mod ")
                || trimmed.starts_with("pub mod ")
                || trimmed.starts_with("pub(crate) mod "))
        {
            break;
        }
        previous_is_cfg_test = trimmed == "#[cfg(test)]";
        let mut kept = String::new();
        let mut rest = line;
        loop {
            if in_block {
                match rest.find("*/") {
                    Some(end) => {
                        in_block = false;
                        rest = &rest[end + 2..];
                    }
                    None => break,
                }
            } else {
                let line_comment = rest.find("//");
                let block = rest.find("/*");
                match (line_comment, block) {
                    (Some(l), b) if b.is_none_or(|b| l < b) => {
                        kept.push_str(&rest[..l]);
                        break;
                    }
                    (_, Some(b)) => {
                        kept.push_str(&rest[..b]);
                        in_block = true;
                        rest = &rest[b + 2..];
                    }
                    _ => {
                        kept.push_str(rest);
                        break;
                    }
                }
            }
        }
        lines.push((i + 1, kept));
    }
    lines
}

/// `a::{b, c::{d, e}}` as `a::b`, `a::c::d`, `a::c::e` (aliases dropped).
fn expand(group: &str) -> Vec<String> {
    let group = group.trim();
    let Some(open) = group.find('{') else {
        let path = group.split(" as ").next().unwrap_or("").trim();
        return vec![path.to_owned()];
    };
    let close = group.rfind('}').unwrap_or(group.len());
    let (prefix, body) = (&group[..open], &group[open + 1..close]);
    let mut parts = Vec::new();
    let (mut depth, mut current) = (0usize, String::new());
    for ch in body.chars() {
        match ch {
            ',' if depth == 0 => parts.push(std::mem::take(&mut current)),
            '{' => {
                depth += 1;
                current.push(ch);
            }
            '}' => {
                depth = depth.saturating_sub(1);
                current.push(ch);
            }
            _ => current.push(ch),
        }
    }
    parts.push(current);
    parts
        .iter()
        .filter(|p| !p.trim().is_empty())
        .flat_map(|p| expand(p).into_iter().map(|x| format!("{prefix}{x}")))
        .collect()
}

/// The `crate::` paths a file's code names, with the line each is on.
fn crate_paths(text: &str) -> Vec<(usize, String)> {
    let lines = code_lines(text);
    let mut paths = Vec::new();
    // `use crate::...;` groups may span lines: join them, remembering where each started.
    let mut pending: Option<(usize, String)> = None;
    for (number, line) in &lines {
        if let Some((start, mut group)) = pending.take() {
            group.push_str(line);
            match group.find(';') {
                Some(end) => paths.extend(expand(&group[..end]).into_iter().map(|p| (start, p))),
                None => pending = Some((start, group)),
            }
        }
        let mut rest = line.as_str();
        while let Some(at) = rest.find("use crate::") {
            let after = &rest[at + "use crate::".len()..];
            match after.find(';') {
                Some(end) => paths.extend(expand(&after[..end]).into_iter().map(|p| (*number, p))),
                None => pending = Some((*number, after.to_owned())),
            }
            rest = after;
        }
        let mut rest = line.as_str();
        while let Some(at) = rest.find("crate::") {
            let boundary = at == 0
                || !rest[..at]
                    .chars()
                    .next_back()
                    .is_some_and(|c| c.is_alphanumeric() || c == '_' || c == '$');
            let after = &rest[at + "crate::".len()..];
            if boundary {
                let path: String = after
                    .chars()
                    .take_while(|c| c.is_alphanumeric() || *c == '_' || *c == ':')
                    .collect();
                paths.push((*number, path.trim_end_matches(':').to_owned()));
            }
            rest = after;
        }
    }
    paths
}

/// The module a path names: its longest prefix that is a module file.
fn target(path: &str, modules: &BTreeMap<String, PathBuf>) -> Option<String> {
    let segments: Vec<&str> = path
        .split("::")
        .filter(|s| !s.is_empty() && *s != "self")
        .collect();
    (1..=segments.len())
        .rev()
        .map(|n| segments[..n].join("::"))
        .find(|candidate| modules.contains_key(candidate))
}

/// Whether one module is the other or contains it.
fn related(a: &str, b: &str) -> bool {
    a == b || a.starts_with(&format!("{b}::")) || b.starts_with(&format!("{a}::"))
}

/// The rows of `src/lib.rs`'s layout table, top to bottom.
fn table() -> Vec<String> {
    let lib = std::fs::read_to_string(src().join("lib.rs")).unwrap();
    lib.lines()
        .filter_map(|line| line.strip_prefix("//! | `"))
        .filter_map(|rest| rest.split('`').next())
        .map(str::to_owned)
        .collect()
}

/// Whether a module file only declares submodules (and so needs no row).
fn only_declares(path: &Path) -> bool {
    let text = std::fs::read_to_string(path).unwrap();
    code_lines(&text).iter().all(|(_, line)| {
        let line = line.trim();
        line.is_empty() || line.starts_with("pub mod ") || line.starts_with("mod ")
    })
}

#[test]
fn every_module_has_a_layout_row_and_imports_only_modules_below_it() {
    let modules = modules();
    let rows = table();
    let rank: BTreeMap<&str, usize> = rows
        .iter()
        .enumerate()
        .map(|(i, m)| (m.as_str(), i))
        .collect();
    let mut problems = BTreeSet::new();
    for row in &rows {
        if !modules.contains_key(row) {
            problems.insert(format!("lib.rs lists `{row}`, which is no module file"));
        }
    }
    for (module, path) in &modules {
        if !rank.contains_key(module.as_str()) && !only_declares(path) {
            problems.insert(format!(
                "`{module}` ({}) has no row in lib.rs's layout table",
                path.display()
            ));
        }
    }
    for (module, path) in &modules {
        let Some(&own) = rank.get(module.as_str()) else {
            continue;
        };
        let text = std::fs::read_to_string(path).unwrap();
        for (line, crate_path) in crate_paths(&text) {
            let Some(imported) = target(&crate_path, &modules) else {
                continue;
            };
            if related(module, &imported) {
                continue;
            }
            match rank.get(imported.as_str()) {
                Some(&theirs) if theirs < own => {
                    problems.insert(format!(
                        "`{module}` (row {}) imports `{imported}` (row {}), listed above it: {}:{line} `crate::{crate_path}`",
                        own + 1,
                        theirs + 1,
                        path.display(),
                    ));
                }
                _ => {}
            }
        }
    }
    assert!(
        problems.is_empty(),
        "the layout in src/lib.rs does not match the code:\n{}",
        problems.into_iter().collect::<Vec<_>>().join("\n")
    );
}

#[test]
fn use_groups_expand_to_every_path_they_name() {
    assert_eq!(
        expand("a::{b, c::{d, e as f}}, "),
        vec!["a::b", "a::c::d", "a::c::e"]
    );
    let text = "use crate::x::{y,\n    z::W};\nfn f() { crate::q::r(); }\n// crate::ignored\n#[cfg(test)]\nmod tests { use crate::t; }\n";
    let paths: BTreeSet<(usize, String)> = crate_paths(text).into_iter().collect();
    for expected in [(1, "x::y"), (1, "x::z::W"), (3, "q::r")] {
        assert!(
            paths.contains(&(expected.0, expected.1.to_owned())),
            "{expected:?} in {paths:?}"
        );
    }
    assert!(
        paths.iter().all(|(_, p)| p != "ignored" && p != "t"),
        "comments and test modules are not code: {paths:?}"
    );
}
