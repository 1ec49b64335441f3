//! The layout of the workspace, checked: no crate's modules depend on each other in a circle,
//! and the agent links nothing of the orchestrator.
//!
//! A module cycle is read at every level of a crate's module tree: among the children of one
//! module (the files and folders of one folder, or the top-level modules of a crate), child
//! `a` depends on child `b` when code anywhere under `a` names a path under `b` (a `use`, or a
//! path in the code: `crate::b::x`, `super::b`, `b::x` for a sibling). Those edges must not
//! form a circle. A module naming its parent's items, or its own children, is the module tree
//! itself, not a dependency. `#[cfg(test)]` items and test files (`tests.rs`, `testutil.rs`)
//! are left out: tests may reach anywhere.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

use moirai_tests::fleet::repo_root;
use syn::visit::Visit;

/// A module: its path from the crate root (`["fleet", "model"]`).
type ModPath = Vec<String>;

/// What one module names: (target path as written, resolved from the module).
struct Names {
    module: ModPath,
    paths: Vec<Vec<String>>,
}

fn is_test_attr(attrs: &[syn::Attribute]) -> bool {
    attrs.iter().any(|a| {
        a.path().is_ident("cfg")
            && a.parse_args::<syn::Meta>()
                .map(|m| m.path().is_ident("test"))
                .unwrap_or(false)
    })
}

/// The paths of a `use` tree, each as segments (`use a::{b, c::d}` gives `a::b`, `a::c::d`).
fn use_paths(tree: &syn::UseTree, prefix: &mut Vec<String>, out: &mut Vec<Vec<String>>) {
    match tree {
        syn::UseTree::Path(p) => {
            prefix.push(p.ident.to_string());
            use_paths(&p.tree, prefix, out);
            prefix.pop();
        }
        syn::UseTree::Name(n) => {
            let mut p = prefix.clone();
            if n.ident != "self" {
                p.push(n.ident.to_string());
            }
            out.push(p);
        }
        syn::UseTree::Rename(r) => {
            let mut p = prefix.clone();
            p.push(r.ident.to_string());
            out.push(p);
        }
        syn::UseTree::Glob(_) => out.push(prefix.clone()),
        syn::UseTree::Group(g) => {
            for t in &g.items {
                use_paths(t, prefix, out);
            }
        }
    }
}

/// Collects every `use` and every path in code, outside `#[cfg(test)]` items.
struct Collector {
    paths: Vec<Vec<String>>,
}

impl<'ast> Visit<'ast> for Collector {
    fn visit_item(&mut self, i: &'ast syn::Item) {
        let attrs: &[syn::Attribute] = match i {
            syn::Item::Mod(m) => &m.attrs,
            syn::Item::Fn(f) => &f.attrs,
            syn::Item::Impl(m) => &m.attrs,
            syn::Item::Use(u) => &u.attrs,
            syn::Item::Const(c) => &c.attrs,
            syn::Item::Struct(s) => &s.attrs,
            syn::Item::Enum(e) => &e.attrs,
            _ => &[],
        };
        if is_test_attr(attrs) {
            return;
        }
        if let syn::Item::Use(u) = i {
            use_paths(&u.tree, &mut Vec::new(), &mut self.paths);
            return;
        }
        syn::visit::visit_item(self, i);
    }

    fn visit_path(&mut self, p: &'ast syn::Path) {
        if p.segments.len() > 1 {
            self.paths
                .push(p.segments.iter().map(|s| s.ident.to_string()).collect());
        }
        syn::visit::visit_path(self, p);
    }
}

/// The module path of a source file under `src`.
fn module_of(src: &Path, file: &Path) -> ModPath {
    let rel = file.strip_prefix(src).unwrap_or(file);
    let mut parts: Vec<String> = rel
        .components()
        .map(|c| c.as_os_str().to_string_lossy().into_owned())
        .collect();
    let last = parts.pop().unwrap_or_default();
    let stem = last.trim_end_matches(".rs");
    if !matches!(stem, "mod" | "lib" | "main") {
        parts.push(stem.to_string());
    }
    parts
}

fn rust_files(dir: &Path, out: &mut Vec<PathBuf>) {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return;
    };
    for e in entries.flatten() {
        let p = e.path();
        if p.is_dir() {
            rust_files(&p, out);
        } else if p.extension().is_some_and(|x| x == "rs") {
            let name = p.file_name().unwrap_or_default().to_string_lossy();
            if name != "tests.rs" && name != "testutil.rs" {
                out.push(p);
            }
        }
    }
}

/// A crate's modules and what each names.
fn read_crate(src: &Path) -> (BTreeSet<ModPath>, Vec<Names>) {
    let mut files = Vec::new();
    rust_files(src, &mut files);
    let mut modules = BTreeSet::new();
    let mut names = Vec::new();
    for f in files {
        let module = module_of(src, &f);
        let text = std::fs::read_to_string(&f).unwrap_or_default();
        let Ok(ast) = syn::parse_file(&text) else {
            panic!("{} does not parse", f.display());
        };
        // A file may hold inline modules; their paths resolve from the file's module, which
        // is close enough at file granularity.
        let mut c = Collector { paths: Vec::new() };
        c.visit_file(&ast);
        for i in &ast.items {
            if let syn::Item::Mod(m) = i {
                if m.content.is_some() && !is_test_attr(&m.attrs) {
                    let mut p = module.clone();
                    p.push(m.ident.to_string());
                    modules.insert(p);
                }
            }
        }
        modules.insert(module.clone());
        names.push(Names {
            module,
            paths: c.paths,
        });
    }
    (modules, names)
}

/// The module a path names, seen from `from`: the longest prefix that is a module.
fn resolve(modules: &BTreeSet<ModPath>, from: &ModPath, path: &[String]) -> Option<ModPath> {
    let mut base: ModPath = Vec::new();
    let mut rest = path;
    match path.first().map(String::as_str) {
        Some("crate") => rest = &path[1..],
        Some("super") => {
            base = from.clone();
            while rest.first().map(String::as_str) == Some("super") {
                base.pop()?;
                rest = &rest[1..];
            }
        }
        Some("self") => {
            base = from.clone();
            rest = &path[1..];
        }
        Some(first) => {
            // A bare path is relative when it starts with a child (or, from a file's point of
            // view, itself a child module) of the current module.
            let mut child = from.clone();
            child.push(first.to_string());
            if !modules.contains(&child) {
                return None;
            }
            base = from.clone();
        }
        None => return None,
    }
    let mut best = None;
    let mut p = base;
    if modules.contains(&p) {
        best = Some(p.clone());
    }
    for seg in rest {
        p.push(seg.clone());
        if modules.contains(&p) {
            best = Some(p.clone());
        } else {
            break;
        }
    }
    best
}

/// Circles among siblings, each as the module paths in order, with one reference per edge.
fn cycles(modules: &BTreeSet<ModPath>, names: &[Names]) -> Vec<String> {
    // parent -> (child a -> child b -> an example "file module names path").
    type Edges = BTreeMap<String, BTreeMap<String, String>>;
    let mut levels: BTreeMap<ModPath, Edges> = BTreeMap::new();
    for n in names {
        for path in &n.paths {
            let Some(target) = resolve(modules, &n.module, path) else {
                continue;
            };
            let common = n
                .module
                .iter()
                .zip(&target)
                .take_while(|(a, b)| a == b)
                .count();
            // An ancestor or a descendant: the module tree itself.
            if common == n.module.len() || common == target.len() {
                continue;
            }
            let parent = n.module[..common].to_vec();
            let a = n.module[common].clone();
            let b = target[common].clone();
            levels
                .entry(parent)
                .or_default()
                .entry(a)
                .or_default()
                .entry(b)
                .or_insert_with(|| format!("{} names {}", n.module.join("::"), path.join("::")));
        }
    }
    let mut found = Vec::new();
    for (parent, edges) in &levels {
        let mut g = petgraph::graphmap::DiGraphMap::<&str, (), std::hash::RandomState>::default();
        for (a, tos) in edges {
            for b in tos.keys() {
                g.add_edge(a.as_str(), b.as_str(), ());
            }
        }
        for scc in petgraph::algo::tarjan_scc(&g) {
            if scc.len() < 2 {
                continue;
            }
            let ties: Vec<String> = scc
                .iter()
                .flat_map(|a| {
                    edges[*a]
                        .iter()
                        .filter(|(b, _)| scc.contains(&b.as_str()))
                        .map(|(_, why)| why.clone())
                        .collect::<Vec<_>>()
                })
                .collect();
            found.push(format!(
                "under `{}`: {} ({})",
                if parent.is_empty() {
                    "crate".to_string()
                } else {
                    parent.join("::")
                },
                scc.join(" <-> "),
                ties.join("; ")
            ));
        }
    }
    found
}

/// Every crate of the workspace we write (not vendor/): its name and `src`.
fn crates() -> Vec<(String, PathBuf)> {
    let root = repo_root();
    let mut out = Vec::new();
    let mut dirs = vec![
        root.join("orchestrator"),
        root.join("agent"),
        root.join("shared"),
    ];
    if let Ok(entries) = std::fs::read_dir(root.join("shared")) {
        dirs.extend(entries.flatten().map(|e| e.path()).filter(|p| p.is_dir()));
    }
    for d in dirs {
        let manifest = d.join("Cargo.toml");
        if d.join("src").is_dir() && manifest.is_file() {
            out.push((d.display().to_string(), d.join("src")));
        }
    }
    out
}

#[test]
fn no_crate_has_a_module_cycle() {
    let mut all = Vec::new();
    let mut checked = 0;
    for (name, src) in crates() {
        let (modules, names) = read_crate(&src);
        checked += modules.len();
        for c in cycles(&modules, &names) {
            all.push(format!("{name}: {c}"));
        }
    }
    assert!(checked > 50, "only {checked} modules found");
    println!("{checked} modules checked for cycles");
    assert!(all.is_empty(), "module cycles:\n{}", all.join("\n"));
}

#[test]
fn the_cycle_check_finds_a_planted_cycle() {
    let m = |s: &str| -> ModPath { s.split("::").map(String::from).collect() };
    let modules: BTreeSet<ModPath> = [m("a"), m("b"), m("c"), m("c::d")].into_iter().collect();
    let names = vec![
        Names {
            module: m("a"),
            paths: vec![m("crate::b::X")],
        },
        Names {
            module: m("b"),
            paths: vec![m("super::a::Y")],
        },
        // A child naming its parent, and a parent its child: no cycle.
        Names {
            module: m("c::d"),
            paths: vec![m("super::Z")],
        },
        Names {
            module: m("c"),
            paths: vec![m("d::W")],
        },
    ];
    let found = cycles(&modules, &names);
    assert_eq!(found.len(), 1, "{found:?}");
    assert!(
        found[0].contains("a <-> b") || found[0].contains("b <-> a"),
        "{found:?}"
    );
}
