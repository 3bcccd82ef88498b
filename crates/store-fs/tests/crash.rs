//! Crash tests: a child process (this very test binary, re-executed) is killed
//! with SIGKILL at chosen points of an ingest or a journal append, then the
//! parent reopens the directory and checks what survived.
//!
//! The child is steered over stdin: it prints a progress line and waits for a
//! line from the parent before its next step, so the kill point is exact and no
//! test sleeps. The "racing" scenarios instead let the child run freely, so the
//! kill lands wherever it lands (possibly between the temporary file's fsync
//! and the rename).

use std::collections::BTreeMap;
use std::fs;
use std::io::{BufRead, BufReader, Write};
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdin, Command, Stdio};
use std::sync::mpsc;
use std::time::Duration;

use serde::{Deserialize, Serialize};
use wasm_cache_core::{ModuleSink, Sha256Digest};
use wasm_store_fs::{FsStore, Journal};

const CHILD_ENV: &str = "WASM_STORE_FS_CRASH_CHILD";
const DIR_ENV: &str = "WASM_STORE_FS_CRASH_DIR";
const PREFIX: &str = "CHILD ";
const CHUNK: usize = 64 * 1024;
const BIG: usize = 8 * 1024 * 1024;
/// How long the parent waits for any one line before giving up on the child.
const LINE_DEADLINE: Duration = Duration::from_secs(120);

/// A valid Wasm header followed by `size - 8` deterministic bytes.
fn module(size: usize, seed: u64) -> Vec<u8> {
    wasm_cache_testkit::modules::sample_module(size, seed)
}

fn sha(bytes: &[u8]) -> Sha256Digest {
    let d = ring::digest::digest(&ring::digest::SHA256, bytes);
    let mut b = [0u8; 32];
    b.copy_from_slice(d.as_ref());
    Sha256Digest::from_bytes(b)
}

// ---------------------------------------------------------------------------
// The child side.

fn say(line: &str) {
    // stdout is line-buffered: each line reaches the parent at once.
    println!("{PREFIX}{line}");
}

/// Waits for the parent's go-ahead; the parent kills us instead of answering
/// at the point it chose. EOF means the parent is gone: stop.
fn wait_for_parent() {
    let mut line = String::new();
    if std::io::stdin().read_line(&mut line).unwrap_or(0) == 0 {
        std::process::exit(0);
    }
}

fn commit_small_modules(store: &FsStore, seeds: std::ops::Range<u64>) {
    for seed in seeds {
        let m = module(10_000 + seed as usize * 100, seed);
        let mut ing = store.ingest(Some(sha(&m)), u64::MAX).unwrap();
        for c in m.chunks(4096) {
            ing.write(c).unwrap();
        }
        let c = ing.commit().unwrap();
        say(&format!("committed {seed} {}", c.digest));
    }
}

/// Runs the child scenario if this process is a child. Returns `false` in the parent.
fn run_child_if_asked() -> bool {
    let Ok(scenario) = std::env::var(CHILD_ENV) else {
        return false;
    };
    let dir = PathBuf::from(std::env::var(DIR_ENV).expect("the parent sets the directory"));
    match scenario.as_str() {
        "ingest-steps" => {
            let (store, _) = FsStore::open(&dir).unwrap();
            commit_small_modules(&store, 0..3);
            say("between-ingests");
            wait_for_parent();
            let big = module(BIG, 1000);
            let mut ing = store.ingest(Some(sha(&big)), u64::MAX).unwrap();
            say("ingest-open");
            wait_for_parent();
            for (i, c) in big.chunks(CHUNK).enumerate() {
                ing.write(c).unwrap();
                say(&format!("chunk {i}"));
                wait_for_parent();
            }
            say("all-written");
            wait_for_parent();
            let c = ing.commit().unwrap();
            say(&format!("committed 1000 {}", c.digest));
            wait_for_parent();
        }
        "ingest-racing" => {
            let (store, _) = FsStore::open(&dir).unwrap();
            let mut seed = 0;
            loop {
                // Alternate small and medium modules, and some removals.
                let size = if seed % 3 == 0 { 300_000 } else { 5_000 };
                let m = module(size, seed);
                let mut ing = store.ingest(Some(sha(&m)), u64::MAX).unwrap();
                for c in m.chunks(CHUNK) {
                    ing.write(c).unwrap();
                }
                let c = ing.commit().unwrap();
                say(&format!("committed {seed} {}", c.digest));
                if seed % 5 == 4 {
                    let victim = seed - 2;
                    let vm = module(if victim % 3 == 0 { 300_000 } else { 5_000 }, victim);
                    store.remove(&sha(&vm)).unwrap();
                    say(&format!("removed {victim} {}", sha(&vm)));
                }
                seed += 1;
            }
        }
        "journal-racing" => {
            let journal = Journal::<Rec>::open(dir.join("index.journal")).unwrap();
            for n in 0.. {
                journal.append(&rec(n)).unwrap();
                say(&format!("appended {n}"));
            }
        }
        other => panic!("unknown child scenario {other}"),
    }
    std::process::exit(0);
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
struct Rec {
    n: u64,
    payload: String,
}

fn rec(n: u64) -> Rec {
    // Big enough (~200 KiB) that a kill may land inside the write itself.
    Rec {
        n,
        payload: format!("{n:08}").repeat(25_000),
    }
}

// ---------------------------------------------------------------------------
// The parent side.

struct ChildProc {
    child: Child,
    stdin: ChildStdin,
    lines: mpsc::Receiver<String>,
}

impl ChildProc {
    fn spawn(test_name: &str, scenario: &str, dir: &Path) -> Self {
        let mut child = Command::new(std::env::current_exe().unwrap())
            .args(["--exact", test_name, "--nocapture", "--test-threads=1"])
            .env(CHILD_ENV, scenario)
            .env(DIR_ENV, dir)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("re-executing the test binary as the child");
        let stdin = child.stdin.take().unwrap();
        let stdout = child.stdout.take().unwrap();
        let (tx, lines) = mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines() {
                let Ok(line) = line else { break };
                // The harness prints "test <name> ... " without a newline before
                // the child's first line, so look for the prefix anywhere.
                if let Some(at) = line.find(PREFIX)
                    && tx.send(line[at + PREFIX.len()..].to_owned()).is_err()
                {
                    break;
                }
            }
        });
        Self {
            child,
            stdin,
            lines,
        }
    }

    /// The child's next progress line, or a failure if it dies or stalls.
    fn next(&mut self) -> String {
        match self.lines.recv_timeout(LINE_DEADLINE) {
            Ok(line) => line,
            Err(e) => {
                let _ = self.child.kill();
                let status = self.child.wait();
                panic!("child stopped talking ({e}); exit status {status:?}");
            }
        }
    }

    fn go(&mut self) {
        self.stdin.write_all(b"go\n").unwrap();
        self.stdin.flush().unwrap();
    }

    /// SIGKILL (what `Child::kill` sends on Unix) and reap.
    fn kill(self) {
        let _ = self.kill_and_drain();
    }

    /// [`kill`](Self::kill), returning the lines the child printed after
    /// the last one read: it kept working until the signal landed.
    fn kill_and_drain(mut self) -> Vec<String> {
        self.child.kill().unwrap();
        let status = self.child.wait().unwrap();
        assert!(
            !status.success(),
            "the child must have been killed: {status:?}"
        );
        let mut rest = Vec::new();
        while let Ok(line) = self.lines.recv_timeout(LINE_DEADLINE) {
            rest.push(line);
        }
        rest
    }
}

/// Records "committed <seed> <digest>" / "removed <seed> <digest>" lines into
/// the set of modules the child acknowledged.
fn track(line: &str, acked: &mut BTreeMap<Sha256Digest, u64>) {
    let mut parts = line.split(' ');
    let (Some(what), Some(seed), Some(digest)) = (parts.next(), parts.next(), parts.next()) else {
        return;
    };
    let seed: u64 = seed.parse().unwrap();
    let digest: Sha256Digest = digest.parse().unwrap();
    match what {
        "committed" => {
            acked.insert(digest, seed);
        }
        "removed" => {
            acked.remove(&digest);
        }
        _ => {}
    }
}

fn temp_files(dir: &Path) -> Vec<PathBuf> {
    fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| {
            p.file_name()
                .unwrap()
                .to_string_lossy()
                .starts_with(".tmp-")
        })
        .collect()
}

/// Reopens the directory and checks: no temporary file survives recovery,
/// every acknowledged module is present and intact, and every file at a final
/// name hashes to its name. Returns the recovered store.
fn check_recovered(
    dir: &Path,
    acked: &BTreeMap<Sha256Digest, u64>,
    temps_before: usize,
) -> FsStore {
    let (store, report) = FsStore::open(dir).unwrap();
    assert_eq!(report.removed_temp_files.len(), temps_before);
    assert!(report.ignored.is_empty(), "{:?}", report.ignored);
    assert!(
        temp_files(dir).is_empty(),
        "temporary files survived recovery"
    );
    for (digest, seed) in acked {
        assert!(store.contains(digest), "acknowledged module {seed} lost");
        assert!(
            store.verify(digest).unwrap(),
            "acknowledged module {seed} corrupt"
        );
    }
    let verify = store.verify_all(false).unwrap();
    assert!(verify.mismatched.is_empty(), "{:?}", verify.mismatched);
    assert!(verify.missing.is_empty());
    store
}

fn kill_points_test(kill_after: &str) {
    const NAME: &str = "kill_during_ingest_steps";
    let dir = tempfile::tempdir().unwrap();
    let mut child = ChildProc::spawn(NAME, "ingest-steps", dir.path());
    let mut acked = BTreeMap::new();
    loop {
        let line = child.next();
        track(&line, &mut acked);
        if line == kill_after {
            break;
        }
        if !line.starts_with("committed ") || line.starts_with("committed 1000 ") {
            child.go();
        }
    }
    let temps = temp_files(dir.path()).len();
    let mid_ingest = kill_after == "ingest-open"
        || kill_after.starts_with("chunk ")
        || kill_after == "all-written";
    assert_eq!(temps, usize::from(mid_ingest), "kill after {kill_after:?}");
    child.kill();
    let big = sha(&module(BIG, 1000));
    let store = check_recovered(dir.path(), &acked, temps);
    assert_eq!(
        acked.len(),
        if kill_after.starts_with("committed 1000") {
            4
        } else {
            3
        },
        "kill after {kill_after:?}: {acked:?}"
    );
    assert_eq!(store.list().len(), acked.len());
    if !acked.contains_key(&big) {
        assert!(
            !store.path_of(&big).exists(),
            "partial module at its final path"
        );
    }
}

#[test]
fn kill_during_ingest_steps() {
    if run_child_if_asked() {
        return;
    }
    let big_chunks = BIG / CHUNK;
    // Between two ingests; with the temporary file open but empty; after the
    // first chunk; half-way; after the last chunk but before commit; after commit.
    kill_points_test("between-ingests");
    kill_points_test("ingest-open");
    kill_points_test("chunk 0");
    kill_points_test(&format!("chunk {}", big_chunks / 2));
    kill_points_test("all-written");
    kill_points_test(&format!("committed 1000 {}", sha(&module(BIG, 1000))));
}

#[test]
fn kill_while_ingesting_freely() {
    const NAME: &str = "kill_while_ingesting_freely";
    if run_child_if_asked() {
        return;
    }
    // Different numbers of acknowledged operations move the kill point around.
    for stop_after in [1usize, 7, 20, 33] {
        let dir = tempfile::tempdir().unwrap();
        let mut child = ChildProc::spawn(NAME, "ingest-racing", dir.path());
        let mut acked = BTreeMap::new();
        for _ in 0..stop_after {
            let line = child.next();
            track(&line, &mut acked);
        }
        // The child kept going after the last line read (it may have removed
        // an acknowledged module since): what it printed counts too.
        for line in child.kill_and_drain() {
            track(&line, &mut acked);
        }
        // The child may have died mid-ingest (one temporary file) or not:
        // both are fine, as long as recovery removes it and everything
        // acknowledged survived.
        let before = temp_files(dir.path()).len();
        assert!(before <= 1, "at most the one in-flight ingest: {before}");
        check_recovered(dir.path(), &acked, before);
    }
}

#[test]
fn kill_during_journal_appends() {
    const NAME: &str = "kill_during_journal_appends";
    if run_child_if_asked() {
        return;
    }
    for stop_after in [1u64, 10, 25] {
        let dir = tempfile::tempdir().unwrap();
        let mut child = ChildProc::spawn(NAME, "journal-racing", dir.path());
        let mut last = None;
        for _ in 0..stop_after {
            let line = child.next();
            last = Some(
                line.strip_prefix("appended ")
                    .unwrap()
                    .parse::<u64>()
                    .unwrap(),
            );
        }
        child.kill();
        let acked = last.unwrap() + 1;
        let raw = fs::read(dir.path().join("index.journal")).unwrap();
        println!(
            "killed after {acked} acknowledged appends; journal {} bytes, torn tail: {}",
            raw.len(),
            raw.last().is_some_and(|&b| b != b'\n')
        );
        let journal = Journal::<Rec>::open(dir.path().join("index.journal")).unwrap();
        let replay = journal.replay_report().unwrap();
        // Open truncated any torn tail, so what is left is a clean prefix.
        assert_eq!(replay.corrupt, 0);
        assert!(!replay.torn_tail);
        let got = replay.records;
        assert!(
            got.len() as u64 >= acked,
            "lost acknowledged records: {} < {acked}",
            got.len()
        );
        assert_eq!(got, (0..got.len() as u64).map(rec).collect::<Vec<_>>());
        // The journal keeps working after the crash.
        journal.append(&rec(9999)).unwrap();
        let again = journal.replay().unwrap();
        assert_eq!(again.len(), got.len() + 1);
        assert_eq!(again.last(), Some(&rec(9999)));
    }
}
