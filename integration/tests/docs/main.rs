//! The repository documents itself: every file or path that the docs (README, `docs/`, the
//! deploy and vendor READMEs) or a comment in the code names exists, and every relative link
//! between the docs resolves. A clone never needs a file outside it.

use std::collections::HashSet;
use std::path::{Path, PathBuf};

use regex::Regex;

/// Directories that are not ours to check (build output, installed tools, upstream code) or
/// that hold what a running system makes.
const SKIPPED_DIRS: &[&str] = &["target", ".tools", "vendor", "data", ".git", "node_modules"];

/// Paths named on purpose although they are not in the repository, each with its reason.
const NOT_IN_THE_REPOSITORY: &[(&str, &str)] = &[
    (
        "deploy/k8s/secrets.env",
        "made by the operator from the example, and kept out of git",
    ),
    (
        "deploy/orders",
        "kubectl's name of the orders Deployment (`kubectl exec deploy/orders`)",
    ),
];

fn repository() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("the integration crate is in the repository")
        .to_path_buf()
}

/// Every file of the repository that is not skipped.
fn files(root: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    let mut dirs = vec![root.to_path_buf()];
    // Upstream code is not ours to check, but what we wrote about it is.
    let vendor_readme = root.join("vendor/README.md");
    if vendor_readme.is_file() {
        out.push(vendor_readme);
    }
    while let Some(dir) = dirs.pop() {
        for entry in std::fs::read_dir(&dir).expect("a readable directory") {
            let entry = entry.expect("a directory entry");
            let path = entry.path();
            let name = entry.file_name().to_string_lossy().into_owned();
            if path.is_dir() {
                let hidden_top = dir == root && name.starts_with('.') && name != ".ci";
                if !SKIPPED_DIRS.contains(&name.as_str()) && !hidden_top {
                    dirs.push(path);
                }
            } else {
                out.push(path);
            }
        }
    }
    out
}

/// The nearest directory at or above `file` that holds a `Cargo.toml` (paths in a crate's
/// comments are often written from the crate's root: `tests/saga/sqlite.rs`).
fn crate_root(file: &Path, root: &Path) -> PathBuf {
    let mut dir = file.parent();
    while let Some(d) = dir {
        if d.join("Cargo.toml").exists() {
            return d.to_path_buf();
        }
        if d == root {
            break;
        }
        dir = d.parent();
    }
    root.to_path_buf()
}

/// The part of a line that is prose: all of a Markdown line, the comment of a code line.
fn prose<'a>(file: &Path, line: &'a str) -> Option<&'a str> {
    let ext = file.extension().and_then(|e| e.to_str()).unwrap_or("");
    let marker = match ext {
        "md" => return Some(line),
        "rs" => "//",
        "sh" | "toml" | "yml" | "yaml" | "py" => "#",
        _ => return None,
    };
    line.find(marker).map(|at| &line[at..])
}

struct Checker {
    root: PathBuf,
    names: HashSet<String>,
    path: Regex,
    link: Regex,
}

impl Checker {
    fn new(root: PathBuf, all: &[PathBuf]) -> Self {
        let names = all
            .iter()
            .filter_map(|p| p.file_name().map(|n| n.to_string_lossy().into_owned()))
            .collect();
        // A file name with one of our extensions (with or without directories), or anything
        // under one of the repository's top-level directories; not part of a URL, a shell
        // variable or a glob.
        let path = Regex::new(
            r"(?:^|[^\w/.:$*{-])((?:\.{1,2}/)?[\w.-]+(?:/[\w.-]+)*\.(?:rs|md|toml|sh|ya?ml|json|sql|conf)|(?:actors|gateway|integration|deploy|\.ci|docs|schemas|vendor)/[\w./-]*\w)(?:$|[^\w/*<{-])",
        )
        .expect("the path pattern");
        let link = Regex::new(r"\]\(([^)#\s]+)(?:#[^)]*)?\)").expect("the link pattern");
        Self {
            root,
            names,
            path,
            link,
        }
    }

    /// What `file` names that does not exist, as `file:line: what`.
    fn check(&self, file: &Path) -> Vec<String> {
        let Ok(text) = std::fs::read_to_string(file) else {
            return Vec::new();
        };
        let here = file.parent().unwrap_or(&self.root);
        let bases = [
            self.root.clone(),
            here.to_path_buf(),
            crate_root(file, &self.root),
        ];
        let shown = file.strip_prefix(&self.root).unwrap_or(file).display();
        let mut dead = Vec::new();
        for (n, line) in text.lines().enumerate() {
            let Some(prose) = prose(file, line) else {
                continue;
            };
            let mut prose = prose.to_string();
            if file.extension().is_some_and(|e| e == "md") {
                for link in self.link.captures_iter(&prose) {
                    let target = &link[1];
                    let external = target.contains(':') || target.starts_with('/');
                    if !external && !here.join(target).exists() {
                        dead.push(format!("{shown}:{}: link to {target}", n + 1));
                    }
                }
                // A link's target is checked as a link, relative to the file, only.
                prose = self.link.replace_all(&prose, "]()").into_owned();
            }
            for found in self.path.captures_iter(&prose) {
                let named = &found[1];
                if named.starts_with("./data") || named.starts_with("data/") {
                    continue; // what a running system writes
                }
                if NOT_IN_THE_REPOSITORY.iter().any(|(p, _)| *p == named) {
                    continue;
                }
                let exists = bases.iter().any(|b| b.join(named).exists())
                    || (!named.contains('/') && self.names.contains(named));
                if !exists {
                    dead.push(format!("{shown}:{}: {named}", n + 1));
                }
            }
        }
        dead
    }
}

#[test]
fn every_file_the_docs_and_comments_name_exists() {
    let root = repository();
    let all = files(&root);
    let checker = Checker::new(root.clone(), &all);
    let mut dead: Vec<String> = all.iter().flat_map(|f| checker.check(f)).collect();
    dead.sort();
    assert!(
        dead.is_empty(),
        "{} references to files that are not in the repository:\n{}",
        dead.len(),
        dead.join("\n")
    );
    // The check itself finds what it should.
    let readme = root.join("README.md");
    assert!(all.contains(&readme), "the walk finds the README");
    assert!(
        all.iter()
            .filter(|f| f.extension().is_some_and(|e| e == "rs"))
            .count()
            > 50,
        "the walk finds the code"
    );
}

#[test]
fn the_check_finds_a_dead_reference() {
    let dir = tempfile::Builder::new()
        .prefix("jetflow-docs-")
        .tempdir()
        .expect("a temporary directory");
    let root = dir.path().to_path_buf();
    std::fs::create_dir_all(root.join("docs")).expect("docs/");
    std::fs::write(root.join("docs/here.md"), "# here\n").expect("docs/here.md");
    std::fs::write(
        root.join("README.md"),
        "See [here](docs/here.md), [gone](docs/gone.md) and `deploy/missing.yaml`.\n\
         Runs with `$CONF_DIR/pg_hba.conf` and writes `./data/jetflow.db`.\n",
    )
    .expect("README.md");
    std::fs::write(
        root.join("lib.rs"),
        // (Written in two parts so that this file's own check does not see the comment.)
        concat!(
            "/",
            "/! Named in DESIGN.md; see `docs/here.md`.\nconst X: &str = \"API.md\";\n"
        ),
    )
    .expect("lib.rs");
    let all = files(&root);
    let checker = Checker::new(root.clone(), &all);
    let mut dead: Vec<String> = all.iter().flat_map(|f| checker.check(f)).collect();
    dead.sort();
    assert_eq!(
        dead,
        [
            "README.md:1: deploy/missing.yaml",
            "README.md:1: link to docs/gone.md",
            "lib.rs:1: DESIGN.md",
        ],
        "a dead link, a dead path and a document outside the repository; not a shell \
         variable, a runtime path, or code"
    );
}

/// The database is reached through each engine's own sqlx driver: the workspace does not
/// turn on sqlx's `any` feature, and no code names its types (the check would have nothing
/// to compile against, but a comment or a doc example could still teach it).
#[test]
fn no_code_goes_through_sqlx_any() {
    let root = repository();
    let manifest = std::fs::read_to_string(root.join("Cargo.toml")).expect("Cargo.toml");
    let sqlx = manifest
        .lines()
        .find(|l| l.starts_with("sqlx ="))
        .expect("the workspace's sqlx dependency");
    assert!(
        sqlx.contains("\"postgres\"") && sqlx.contains("\"sqlite\""),
        "{sqlx}"
    );
    assert!(!sqlx.contains("\"any\""), "sqlx's any driver is on: {sqlx}");
    // (Each name in two parts, so that this file does not find itself.)
    let names = [
        concat!("sqlx::", "any"),
        concat!("sqlx::", "Any"),
        concat!("Any", "Connection"),
        concat!("Any", "Pool"),
        concat!("Any", "Row"),
    ];
    let mut found = Vec::new();
    for file in files(&root) {
        // The code, its comments and its doc examples (the lab notebook may name what was).
        if file.extension().is_none_or(|e| e != "rs") {
            continue;
        }
        let text = std::fs::read_to_string(&file).unwrap_or_default();
        for (i, line) in text.lines().enumerate() {
            if names.iter().any(|n| line.contains(n)) {
                let at = file.strip_prefix(&root).unwrap_or(&file).display();
                found.push(format!("{at}:{}: {}", i + 1, line.trim()));
            }
        }
    }
    assert!(
        found.is_empty(),
        "sqlx's any driver named:\n{}",
        found.join("\n")
    );
}

/// The README is a user's guide that one can read through; the lab notebook and the
/// references live in `docs/`.
#[test]
fn the_readme_stays_a_guide() {
    let readme = std::fs::read_to_string(repository().join("README.md")).expect("README.md");
    let lines = readme.lines().count();
    assert!(
        lines <= 300,
        "README.md has {lines} lines; move detail to docs/"
    );
}
