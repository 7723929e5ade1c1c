//! Rules of the code's shape, checked on the sources rather than stated in prose (as
//! rust-analyzer's tidy tests do): within a crate, no two files import each other. A file's
//! imports are its `use crate::…`, `use super::…` and `use self::…` paths outside its
//! `#[cfg(test)] mod tests` block, each resolved to the file of the longest module path it
//! names.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

fn rust_files(dir: &Path, out: &mut Vec<PathBuf>) {
    for entry in std::fs::read_dir(dir).unwrap() {
        let path = entry.unwrap().path();
        if path.is_dir() {
            rust_files(&path, out);
        } else if path.extension().is_some_and(|e| e == "rs") {
            out.push(path);
        }
    }
}

/// The module path of a file below `src`: `index/mod.rs` is `["index"]`, `lib.rs` is `[]`.
fn module_of(src: &Path, file: &Path) -> Vec<String> {
    let rel = file.strip_prefix(src).unwrap().with_extension("");
    let mut parts: Vec<String> = rel
        .components()
        .map(|c| c.as_os_str().to_string_lossy().into_owned())
        .collect();
    if parts
        .last()
        .is_some_and(|p| p == "mod" || p == "lib" || p == "main")
    {
        parts.pop();
    }
    parts
}

/// The file that holds the longest prefix of `path` that is a module.
fn file_of(src: &Path, path: &[String]) -> PathBuf {
    for n in (1..=path.len()).rev() {
        let base = path[..n].iter().fold(src.to_path_buf(), |p, s| p.join(s));
        if base.with_extension("rs").is_file() {
            return base.with_extension("rs");
        }
        if base.join("mod.rs").is_file() {
            return base.join("mod.rs");
        }
    }
    if src.join("lib.rs").is_file() {
        src.join("lib.rs")
    } else {
        src.join("main.rs")
    }
}

/// The `use` items of a file's text (without its test module), as strings.
fn use_items(text: &str) -> Vec<String> {
    let text = text
        .split("#[cfg(test)]\nmod tests {")
        .next()
        .unwrap_or_default();
    let mut items = Vec::new();
    for (i, _) in text.match_indices("use ") {
        let before = text[..i].chars().next_back();
        if before.is_some_and(|c| !c.is_whitespace()) {
            continue;
        }
        let line_start = text[..i].rfind('\n').map_or(0, |n| n + 1);
        if text[line_start..i].trim_start().starts_with("//") {
            continue;
        }
        if let Some(end) = text[i..].find(';') {
            items.push(text[i + 4..i + end].to_owned());
        }
    }
    items
}

/// The files a file imports from within its crate.
fn imports(src: &Path, file: &Path) -> BTreeSet<PathBuf> {
    let text = std::fs::read_to_string(file).unwrap();
    let me = module_of(src, file);
    let mut out = BTreeSet::new();
    for item in use_items(&text) {
        let item: String = item.split_whitespace().collect::<Vec<_>>().join(" ");
        for (anchor, base) in [
            ("crate", Vec::new()),
            ("super", me[..me.len().saturating_sub(1)].to_vec()),
            ("self", me.clone()),
        ] {
            for (at, _) in item.match_indices(anchor) {
                let head = &item[..at];
                if head
                    .chars()
                    .next_back()
                    .is_some_and(|c| c.is_alphanumeric() || c == '_' || c == ':')
                {
                    continue;
                }
                let tail = &item[at + anchor.len()..];
                let mut path = base.clone();
                let mut rest = tail;
                while let Some(next) = rest.strip_prefix("::") {
                    let name: String = next
                        .chars()
                        .take_while(|c| c.is_alphanumeric() || *c == '_')
                        .collect();
                    if name.is_empty() {
                        break;
                    }
                    rest = &next[name.len()..];
                    path.push(name);
                }
                let target = file_of(src, &path);
                if target != file {
                    out.insert(target);
                }
            }
        }
    }
    out
}

#[test]
fn no_two_files_of_a_crate_import_each_other() {
    let root = crate::support::repo_root().join("crates");
    let mut cycles = Vec::new();
    for entry in std::fs::read_dir(&root).unwrap() {
        let src = entry.unwrap().path().join("src");
        if !src.is_dir() {
            continue;
        }
        let mut files = Vec::new();
        rust_files(&src, &mut files);
        let graph: BTreeMap<PathBuf, BTreeSet<PathBuf>> = files
            .iter()
            .map(|f| (f.clone(), imports(&src, f)))
            .collect();
        for (a, deps) in &graph {
            for b in deps {
                if a < b && graph.get(b).is_some_and(|d| d.contains(a)) {
                    cycles.push(format!("{} <-> {}", a.display(), b.display()));
                }
            }
        }
    }
    assert!(
        cycles.is_empty(),
        "files that import each other:\n{}",
        cycles.join("\n")
    );
}

/// "Actions decide nothing": the executor is handed an `Outbox`, which cannot commit a decision;
/// this keeps the crate from reaching for the engine's state some other way.
#[test]
fn the_actions_crate_uses_only_the_outbox_of_the_engine_state() {
    let src = crate::support::repo_root().join("crates/gancho-actions/src");
    let mut files = Vec::new();
    rust_files(&src, &mut files);
    let allowed = ["Outbox", "OutboxItem", "Attempt", "Delivery", "Error"];
    let mut found = Vec::new();
    for file in &files {
        let text = std::fs::read_to_string(file).unwrap();
        for (at, _) in text.match_indices("gancho_state::") {
            let rest = &text[at + "gancho_state::".len()..];
            let names: Vec<&str> = match rest.strip_prefix('{') {
                Some(list) => list[..list.find('}').unwrap_or(0)]
                    .split(',')
                    .map(str::trim)
                    .collect(),
                None => vec![
                    rest.split(|c: char| !c.is_alphanumeric() && c != '_')
                        .next()
                        .unwrap_or(""),
                ],
            };
            for name in names {
                if !name.is_empty() && !allowed.contains(&name) {
                    found.push(format!("{}: gancho_state::{name}", file.display()));
                }
            }
        }
    }
    assert!(
        found.is_empty(),
        "the actions crate reaches past the outbox:\n{}",
        found.join("\n")
    );
}

#[test]
fn the_checker_sees_an_import_cycle() {
    let dir = tempfile::tempdir().unwrap();
    let src = dir.path();
    std::fs::create_dir_all(src.join("index")).unwrap();
    std::fs::write(src.join("lib.rs"), "mod index;\nuse crate::index::Index;\n").unwrap();
    std::fs::write(
        src.join("index/mod.rs"),
        "mod run;\npub(crate) use self::run::Run;\npub(crate) struct Index;\n",
    )
    .unwrap();
    std::fs::write(
        src.join("index/run.rs"),
        "use super::{Index};\n#[cfg(test)]\nmod tests {\n    use crate::Whatever;\n}\n",
    )
    .unwrap();
    let run = imports(src, &src.join("index/run.rs"));
    assert_eq!(run, BTreeSet::from([src.join("index/mod.rs")]));
    let index = imports(src, &src.join("index/mod.rs"));
    assert_eq!(index, BTreeSet::from([src.join("index/run.rs")]));
    assert_eq!(
        imports(src, &src.join("lib.rs")),
        BTreeSet::from([src.join("index/mod.rs")])
    );
}
