//! Repository hygiene, run as a test so that one test command is the whole contract.

use std::fs;
use std::path::{Path, PathBuf};

fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .unwrap()
        .to_path_buf()
}

fn crate_dirs() -> Vec<PathBuf> {
    let mut dirs: Vec<PathBuf> = fs::read_dir(root().join("crates"))
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.join("Cargo.toml").is_file())
        .collect();
    dirs.sort();
    assert!(
        dirs.len() >= 6,
        "expected the six crates of the design, found {dirs:?}"
    );
    dirs
}

#[test]
fn every_crate_has_a_readme_and_crate_docs() {
    for dir in crate_dirs() {
        assert!(
            dir.join("README.md").is_file(),
            "{} has no README.md",
            dir.display()
        );
        let entry = ["src/lib.rs", "src/main.rs"]
            .iter()
            .map(|f| dir.join(f))
            .find(|p| p.is_file())
            .unwrap_or_else(|| panic!("{} has no lib.rs or main.rs", dir.display()));
        let text = fs::read_to_string(&entry).unwrap();
        assert!(
            text.trim_start().starts_with("//!"),
            "{} does not start with //! crate docs",
            entry.display()
        );
    }
}

#[test]
fn readme_names_the_two_commands_and_ci_runs_the_test_one() {
    let readme = fs::read_to_string(root().join("README.md")).unwrap();
    assert!(
        readme.contains("cargo xtask demo"),
        "README lacks the demo command"
    );
    assert!(
        readme.contains("cargo xtask ci"),
        "README lacks the test command"
    );
    let ci = fs::read_to_string(root().join(".ci/run")).unwrap();
    assert!(
        ci.lines().any(|l| l.trim() == "exec cargo xtask ci"),
        ".ci/run must run the README's test command"
    );
}

#[test]
fn architecture_doc_has_a_code_map_and_invariants() {
    let doc = fs::read_to_string(root().join("docs/ARCHITECTURE.md")).unwrap();
    assert!(doc.contains("## Code map"));
    assert!(doc.matches("Architecture invariant:").count() >= 4);
}

#[test]
fn core_stays_free_of_io_crates() {
    let manifest = fs::read_to_string(root().join("crates/core/Cargo.toml")).unwrap();
    let deps = manifest
        .split("[dependencies]")
        .nth(1)
        .unwrap()
        .split("\n[")
        .next()
        .unwrap();
    for banned in ["tokio", "hyper", "reqwest", "ring", "oci-client", "flate2"] {
        assert!(
            !deps.lines().any(|l| l.trim_start().starts_with(banned)),
            "wasm-cache-core must not depend on {banned}"
        );
    }
}
