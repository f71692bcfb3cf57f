//! The layout ARCHITECTURE.md promises, checked on the source tree so a change that breaks it
//! fails the build: no module cycles inside any crate, `unsafe` only in `ferry-sys`, every
//! other crate root forbidding it, the pure core free of I/O and async dependencies, and the
//! harness reachable only from the binary's `demo`/`bench` commands.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

/// Every `.rs` file under `dir`.
fn rust_files(dir: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        for e in std::fs::read_dir(&d).unwrap() {
            let p = e.unwrap().path();
            if p.is_dir() {
                stack.push(p);
            } else if p.extension().is_some_and(|x| x == "rs") {
                out.push(p);
            }
        }
    }
    out.sort();
    out
}

/// The non-test part of a source file: test modules (`*_tests.rs`, `tests.rs`) are skipped
/// and inline ones are cut at their `#[cfg(test)]`, which by convention ends a file.
fn production_source(p: &Path) -> Option<String> {
    let name = p.file_name()?.to_str()?;
    if name.ends_with("_tests.rs") || name == "tests.rs" || name == "test_support.rs" {
        return None;
    }
    let text = std::fs::read_to_string(p).ok()?;
    Some(match text.find("#[cfg(test)]") {
        Some(i) => text[..i].to_string(),
        None => text,
    })
}

/// Top-level module → the top-level modules it names through `crate::`.
fn module_graph(src: &Path) -> BTreeMap<String, BTreeSet<String>> {
    let mut graph: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
    for f in rust_files(src) {
        let rel = f.strip_prefix(src).unwrap();
        let first = rel.components().next().unwrap().as_os_str().to_str().unwrap().trim_end_matches(".rs").to_string();
        if first == "lib" || first == "main" {
            continue;
        }
        let Some(text) = production_source(&f) else { continue };
        let deps = graph.entry(first.clone()).or_default();
        let mut rest = text.as_str();
        while let Some(i) = rest.find("crate::") {
            rest = &rest[i + 7..];
            let name: String = rest.chars().take_while(|c| c.is_ascii_alphanumeric() || *c == '_').collect();
            if !name.is_empty() && name != first {
                deps.insert(name);
            }
        }
    }
    graph
}

/// A cycle in `graph`, if there is one, as the path that closes it.
fn find_cycle(graph: &BTreeMap<String, BTreeSet<String>>) -> Option<Vec<String>> {
    fn visit(n: &str, g: &BTreeMap<String, BTreeSet<String>>, path: &mut Vec<String>, done: &mut BTreeSet<String>) -> Option<Vec<String>> {
        if let Some(i) = path.iter().position(|p| p == n) {
            let mut cycle = path[i..].to_vec();
            cycle.push(n.to_string());
            return Some(cycle);
        }
        if done.contains(n) {
            return None;
        }
        path.push(n.to_string());
        for d in g.get(n).into_iter().flatten() {
            if let Some(c) = visit(d, g, path, done) {
                return Some(c);
            }
        }
        path.pop();
        done.insert(n.to_string());
        None
    }
    let mut done = BTreeSet::new();
    graph.keys().find_map(|n| visit(n, graph, &mut Vec::new(), &mut done))
}

fn crate_sources() -> Vec<(&'static str, PathBuf)> {
    let r = root();
    vec![
        ("ferry", r.join("src")),
        ("ferry-core", r.join("crates/core/src")),
        ("ferry-sys", r.join("crates/sys/src")),
        ("ferry-harness", r.join("crates/harness/src")),
        ("ferry-cni", r.join("cni-plugin/src")),
    ]
}

#[test]
fn no_module_cycles_in_any_crate() {
    for (name, src) in crate_sources() {
        let g = module_graph(&src);
        assert!(find_cycle(&g).is_none(), "{name}: module cycle {:?}", find_cycle(&g));
    }
}

#[test]
fn the_cycle_finder_finds_cycles() {
    let g: BTreeMap<String, BTreeSet<String>> = [
        ("a".to_string(), ["b".to_string()].into()),
        ("b".to_string(), ["c".to_string()].into()),
        ("c".to_string(), ["a".to_string()].into()),
    ]
    .into();
    assert_eq!(find_cycle(&g).unwrap(), ["a", "b", "c", "a"]);
}

#[test]
fn unsafe_only_in_ferry_sys_and_forbidden_elsewhere() {
    for (name, src) in crate_sources() {
        for f in rust_files(&src) {
            let text = std::fs::read_to_string(&f).unwrap();
            let uses_unsafe = text.lines().any(|l| {
                let code = l.split("//").next().unwrap_or("");
                code.contains("unsafe {") || code.contains("unsafe fn") || code.contains("unsafe impl")
            });
            if name != "ferry-sys" {
                assert!(!uses_unsafe, "{}: unsafe outside ferry-sys", f.display());
            }
        }
        if name != "ferry-sys" {
            let roots: Vec<PathBuf> = ["lib.rs", "main.rs"].iter().map(|r| src.join(r)).filter(|p| p.exists()).collect();
            assert!(!roots.is_empty(), "{name} has no crate root");
            for r in roots {
                let text = std::fs::read_to_string(&r).unwrap();
                assert!(text.contains("#![forbid(unsafe_code)]"), "{} must forbid unsafe_code", r.display());
            }
        }
    }
}

/// The `[dependencies]` table of a manifest, as crate names.
fn dependencies(manifest: &Path) -> Vec<String> {
    let text = std::fs::read_to_string(manifest).unwrap();
    let Some(start) = text.find("\n[dependencies]\n") else { return Vec::new() };
    let table = &text[start + 16..];
    let table = &table[..table.find("\n[").unwrap_or(table.len())];
    table.lines().filter_map(|l| l.split_once('=').map(|(k, _)| k.trim().to_string())).filter(|k| !k.is_empty()).collect()
}

#[test]
fn the_core_does_no_io_and_depends_on_no_other_ferry_crate() {
    let deps = dependencies(&root().join("crates/core/Cargo.toml"));
    for banned in ["tokio", "nix", "libc", "socket2", "hyper", "h2", "rustls", "ferry-sys", "ferry-cni", "ferry-harness", "ferry"] {
        assert!(!deps.iter().any(|d| d == banned), "ferry-core must not depend on {banned}");
    }
    for f in rust_files(&root().join("crates/core/src")) {
        let text = production_source(&f).unwrap_or_default();
        for io in ["std::fs", "std::net::Tcp", "std::process", "std::thread::spawn"] {
            assert!(!text.contains(io), "{}: ferry-core does no I/O ({io})", f.display());
        }
    }
}

#[test]
fn the_product_library_does_not_use_the_harness() {
    for f in rust_files(&root().join("src")) {
        if f.ends_with("main.rs") {
            continue;
        }
        let text = std::fs::read_to_string(&f).unwrap();
        assert!(!text.contains("ferry_harness"), "{}: the product library must not use the harness", f.display());
    }
    let deps = dependencies(&root().join("crates/harness/Cargo.toml"));
    assert!(!deps.iter().any(|d| d == "ferry"), "the harness drives ferry through its binaries, not its library");
}
