//! Helpers shared by the reliability and security suite's test binaries.
#![allow(dead_code, unreachable_pub)] // reason: each test binary uses a different subset

use std::collections::{BTreeMap, BTreeSet};
use std::future::Future;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use wasm_cache::Cache;
use wasm_cache_testkit::modules::sha256_hex;

/// The slack allowed past a request's own timeout before a test calls it a hang.
pub const HANG_SLACK: Duration = Duration::from_secs(10);

/// Runs `fut`, failing the test if it is still running after `limit`: the
/// suite's hang detector (a bound, not a timing assertion).
pub async fn within<T>(limit: Duration, what: &str, fut: impl Future<Output = T>) -> T {
    match tokio::time::timeout(limit, fut).await {
        Ok(v) => v,
        Err(_) => panic!("{what} hung: still running after {limit:?}"),
    }
}

/// Names of the entries of `dir`, sorted.
pub fn dir_names(dir: &Path) -> Vec<String> {
    let mut v: Vec<String> = std::fs::read_dir(dir)
        .unwrap_or_else(|e| panic!("listing {}: {e}", dir.display()))
        .map(|e| e.unwrap().file_name().into_string().unwrap())
        .collect();
    v.sort();
    v
}

/// Module files (`<64 hex>.wasm`) in `dir`, by digest hex.
pub fn module_files(dir: &Path) -> BTreeSet<String> {
    dir_names(dir)
        .into_iter()
        .filter_map(|n| n.strip_suffix(".wasm").map(str::to_owned))
        .collect()
}

/// Temporary files of ingests (`.tmp-*.wasm.partial`) or of journal
/// compaction (`*.compact-tmp`) in `dir`.
pub fn temp_files(dir: &Path) -> Vec<String> {
    dir_names(dir)
        .into_iter()
        .filter(|n| n.ends_with(".partial") || n.contains("tmp"))
        .collect()
}

/// Asserts `dir` holds no temporary file.
pub fn assert_no_temp_files(dir: &Path) {
    let t = temp_files(dir);
    assert!(
        t.is_empty(),
        "temporary files left in {}: {t:?}",
        dir.display()
    );
}

/// The sha256 hex of the file at `path` (test modules are small).
pub fn file_sha256(path: &Path) -> String {
    sha256_hex(&std::fs::read(path).unwrap_or_else(|e| panic!("reading {}: {e}", path.display())))
}

/// Why the store of `cache` does not agree with its index, if it does not:
/// every entry's file must exist, hash to the entry's content digest, have the
/// entry's size and a Wasm header; every module file must belong to an entry
/// (or be one of `orphans_allowed`); no temporary file may be left.
pub fn store_inconsistency(cache: &Cache, orphans_allowed: &BTreeSet<String>) -> Option<String> {
    let dir = cache.dir();
    let mut problems = Vec::new();
    let mut referenced = BTreeSet::new();
    for e in cache.entries() {
        let hex = e.content.to_hex();
        referenced.insert(hex.clone());
        let path = cache.module_path(&e.content);
        match std::fs::read(&path) {
            Err(err) => problems.push(format!(
                "entry {} has no file {}: {err}",
                e.key.name,
                path.display()
            )),
            Ok(bytes) => {
                if sha256_hex(&bytes) != hex {
                    problems.push(format!("file {} does not hash to its name", path.display()));
                }
                if bytes.len() as u64 != e.size {
                    problems.push(format!(
                        "file {} has {} bytes, its entry says {}",
                        path.display(),
                        bytes.len(),
                        e.size
                    ));
                }
                if let Err(reason) = wasm_cache_core::check_wasm_header(&bytes) {
                    problems.push(format!("file {} is not Wasm: {reason}", path.display()));
                }
            }
        }
    }
    for f in module_files(dir) {
        if !referenced.contains(&f) && !orphans_allowed.contains(&f) {
            problems.push(format!("module file {f}.wasm has no index entry"));
        }
    }
    let t = temp_files(dir);
    if !t.is_empty() {
        problems.push(format!("temporary files left: {t:?}"));
    }
    (!problems.is_empty()).then(|| problems.join("\n"))
}

/// Asserts [`store_inconsistency`] finds nothing.
pub fn assert_store_consistent(cache: &Cache) {
    if let Some(p) = store_inconsistency(cache, &BTreeSet::new()) {
        panic!(
            "store and index disagree in {}:\n{p}",
            cache.dir().display()
        );
    }
}

/// Asserts that `text` contains none of `secrets`.
pub fn assert_no_secret(text: &str, secrets: &[&str], what: &str) {
    for s in secrets {
        assert!(!text.contains(s), "{what} leaks the secret {s:?}: {text}");
    }
}

/// The path of the `wasm-cache` command, built (or found up to date) once per
/// test binary with the same cargo and target directory as the tests, so the
/// suite always runs the current CLI even when only this package is tested.
pub fn cli_bin() -> &'static Path {
    static BIN: OnceLock<PathBuf> = OnceLock::new();
    BIN.get_or_init(|| {
        // Another build of the command (e.g. an older one, to show that a
        // test fails there).
        if let Some(bin) = std::env::var_os("WASM_CACHE_TEST_CLI").filter(|b| !b.is_empty()) {
            return PathBuf::from(bin);
        }
        let cargo = std::env::var("CARGO").unwrap_or_else(|_| env!("CARGO").to_owned());
        let root = Path::new(env!("CARGO_MANIFEST_DIR")).parent().unwrap();
        let out = Command::new(cargo)
            .current_dir(root)
            .args([
                "build",
                "--quiet",
                "--package",
                "wasm-cache-cli",
                "--bin",
                "wasm-cache",
                "--message-format=json",
            ])
            .output()
            .expect("running cargo to build the wasm-cache command");
        assert!(
            out.status.success(),
            "building the wasm-cache command failed:\n{}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout)
            .lines()
            .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
            .filter_map(|v| v.get("executable")?.as_str().map(PathBuf::from))
            .next_back()
            .expect("cargo reported no wasm-cache executable")
    })
}

/// A `wasm-cache` command on `dir`, with the environment that could change
/// its behaviour removed.
pub fn cli(dir: &Path) -> Command {
    let mut c = Command::new(cli_bin());
    c.arg("--dir")
        .arg(dir)
        .env_remove("WASM_CACHE_DIR")
        .env_remove("RUST_LOG")
        .env_remove("DOCKER_CONFIG");
    c
}

/// A small deterministic generator (xorshift64*), so runs are reproducible from a seed.
#[derive(Debug, Clone)]
pub struct Rng(u64);

impl Rng {
    /// A generator from `seed`.
    pub fn new(seed: u64) -> Self {
        Self(seed ^ 0x9e37_79b9_7f4a_7c15 | 1)
    }

    /// The next 64 random bits.
    pub fn next_u64(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }

    /// A number in `0..n`.
    pub fn below(&mut self, n: u64) -> u64 {
        self.next_u64() % n
    }
}

/// The seed of a randomised test: `WASM_CACHE_TEST_SEED` if set (to replay a
/// failure), else `default`. Printed so a failure can be replayed.
pub fn seed(default: u64) -> u64 {
    let s = std::env::var("WASM_CACHE_TEST_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(default);
    eprintln!("seed: {s} (replay with WASM_CACHE_TEST_SEED={s})");
    s
}

/// Polls `check` until it returns `None` or `deadline` passes; returns the
/// last complaint otherwise.
pub async fn poll_until_none(
    deadline: Duration,
    mut check: impl FnMut() -> Option<String>,
) -> Option<String> {
    let end = Instant::now() + deadline;
    loop {
        let last = check()?;
        if Instant::now() >= end {
            return Some(last);
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Counts per key, for summaries in assertion messages.
pub fn tally<K: Ord>(items: impl IntoIterator<Item = K>) -> BTreeMap<K, usize> {
    let mut m = BTreeMap::new();
    for k in items {
        *m.entry(k).or_insert(0) += 1;
    }
    m
}
