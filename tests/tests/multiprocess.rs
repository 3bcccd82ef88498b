//! Many processes, one cache directory: the `wasm-cache` command run as
//! several processes at once, against a real HTTP server on loopback, with
//! `flock(1)` standing for another process holding a lock, a full tmpfs (in a
//! private mount namespace) and a hostile local user planting symlinks.
//!
//! Each test names the observation of issue 13 it checks.

mod common;

use std::io::Read as _;
use std::os::unix::fs::symlink;
use std::os::unix::process::CommandExt as _;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant, SystemTime};

use common::{cli, cli_bin, file_sha256};
use wasm_cache::Cache;
use wasm_cache_core::{IndexEvent, ModuleKey, Sha256Digest, Timestamp};
use wasm_cache_testkit::http::{Route, ServerOptions, TestServer};
use wasm_cache_testkit::modules::{sample_module, sha256_hex};
use wasm_store_fs::Journal;

const SLOW: Duration = Duration::from_millis(2500);

/// Held by each test that runs the command: they run one at a time, so that
/// the 32-process test does not load the 2 cores while a hit or a timeout is
/// timed.
static HEAVY: std::sync::Mutex<()> = std::sync::Mutex::new(());

fn heavy() -> std::sync::MutexGuard<'static, ()> {
    HEAVY
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
}

/// Waits for `child`, failing the test if it runs longer than `limit`.
fn wait_bounded(mut child: Child, limit: Duration, what: &str) -> Output {
    let deadline = Instant::now() + limit;
    loop {
        if child.try_wait().unwrap().is_some() {
            return child.wait_with_output().unwrap();
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            let out = child.wait_with_output().unwrap();
            panic!(
                "{what} hung: still running after {limit:?}; stderr:\n{}",
                String::from_utf8_lossy(&out.stderr)
            );
        }
        std::thread::sleep(Duration::from_millis(5));
    }
}

fn spawn(mut c: Command) -> Child {
    c.stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("starting the wasm-cache command")
}

fn text(b: &[u8]) -> String {
    String::from_utf8_lossy(b).into_owned()
}

/// Polls until `cond` holds, failing after `limit`.
fn poll(limit: Duration, what: &str, mut cond: impl FnMut() -> bool) {
    let deadline = Instant::now() + limit;
    while !cond() {
        assert!(
            Instant::now() < deadline,
            "{what}: not reached in {limit:?}"
        );
        std::thread::sleep(Duration::from_millis(5));
    }
}

/// `flock(1)` holding `lock` (created if needed) until killed.
struct Holder(Child);

impl Holder {
    fn start(lock: &Path) -> Self {
        // Its own process group, so that `sleep` (flock's child, which holds
        // the lock too) goes with it.
        let child = Command::new("flock")
            .arg(lock)
            .args(["sleep", "600"])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .process_group(0)
            .spawn()
            .expect("running flock(1) from util-linux");
        poll(Duration::from_secs(10), "flock(1) taking the lock", || {
            !Command::new("flock")
                .arg("-n")
                .arg(lock)
                .arg("true")
                .status()
                .unwrap()
                .success()
        });
        Self(child)
    }
}

impl Drop for Holder {
    fn drop(&mut self) {
        let _ = Command::new("kill")
            .args(["-KILL", "--", &format!("-{}", self.0.id())])
            .status();
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// 32 processes fetching 8 slow modules (2.5 s each) at once: all succeed,
/// each module is downloaded once, and different modules download in
/// parallel (a run serialised behind one lock takes at least 8 x 2.5 s).
/// Before: one directory lock held across each download serialised them,
/// and processes failed with "still locked after 60s".
#[test]
fn parallel_fetches_of_slow_modules_download_each_module_once() {
    let _heavy = heavy();
    let server = TestServer::start(ServerOptions::plain());
    let dir = tempfile::tempdir().unwrap();
    let modules: Vec<Vec<u8>> = (0..8)
        .map(|i| sample_module(30_000 + i * 1000, i as u64 + 7))
        .collect();
    for (i, m) in modules.iter().enumerate() {
        server.route(
            &format!("/slow{i}.wasm"),
            Route::delayed(SLOW, Route::bytes(m.clone())),
        );
    }
    let _ = cli_bin(); // Built before the clock starts.
    let started = Instant::now();
    let children: Vec<(usize, Child)> = (0..32)
        .map(|n| {
            let i = n % 8;
            let mut c = cli(dir.path());
            c.args([
                "fetch",
                &server.url(&format!("/slow{i}.wasm")),
                "--timeout",
                "60s",
            ]);
            (i, spawn(c))
        })
        .collect();
    for (i, child) in children {
        let out = wait_bounded(child, Duration::from_secs(120), "a parallel fetch");
        assert!(
            out.status.success(),
            "fetch of module {i} failed: {}",
            text(&out.stderr)
        );
        let path = PathBuf::from(text(&out.stdout).trim());
        assert_eq!(file_sha256(&path), sha256_hex(&modules[i]), "module {i}");
    }
    let elapsed = started.elapsed();
    for i in 0..8 {
        assert_eq!(
            server.hits(&format!("/slow{i}.wasm")),
            1,
            "module {i} must be downloaded exactly once"
        );
    }
    assert!(
        elapsed < SLOW * 8 * 3 / 4,
        "8 slow modules took {elapsed:?}: their downloads did not overlap"
    );
    common::assert_no_temp_files(dir.path());
}

/// A hit on a cached module while another process downloads another (slow)
/// module returns at once: five CLI hits, all while the download is still
/// running, none slower than 5 s and the fastest under 100 ms. Before: the hit waited for the download's
/// directory lock.
#[test]
fn a_hit_is_not_held_up_by_another_modules_download() {
    let _heavy = heavy();
    let server = TestServer::start(ServerOptions::plain());
    let dir = tempfile::tempdir().unwrap();
    let fast = sample_module(20_000, 1);
    let slow = sample_module(20_000, 2);
    server.route("/fast.wasm", Route::bytes(fast.clone()));
    server.route(
        "/slow.wasm",
        Route::delayed(Duration::from_secs(30), Route::bytes(slow)),
    );
    let fast_url = server.url("/fast.wasm");
    let sha = sha256_hex(&fast);
    let out = cli(dir.path())
        .args(["fetch", &fast_url, "--sha256", &sha])
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", text(&out.stderr));

    let mut download = cli(dir.path());
    download.args(["fetch", &server.url("/slow.wasm"), "--timeout", "60s"]);
    let mut download = spawn(download);
    poll(
        Duration::from_secs(20),
        "the slow download starting",
        || server.hits("/slow.wasm") == 1,
    );
    let mut times = Vec::new();
    for _ in 0..5 {
        let t = Instant::now();
        let out = cli(dir.path())
            .args(["fetch", &fast_url, "--sha256", &sha, "--timeout", "60s"])
            .output()
            .unwrap();
        times.push(t.elapsed());
        assert!(out.status.success(), "hit failed: {}", text(&out.stderr));
        assert_eq!(file_sha256(Path::new(text(&out.stdout).trim())), sha);
    }
    let still_downloading = download.try_wait().unwrap().is_none();
    let _ = download.kill();
    let _ = download.wait();
    assert!(
        still_downloading,
        "the hits must have overlapped the download, took {times:?}"
    );
    // None waited for the download; the fastest took under 100 ms (the
    // fastest, because the 2 cores are shared with other builds and tests).
    times.sort();
    assert!(
        times[4] < Duration::from_secs(5) && times[0] < Duration::from_millis(100),
        "hits during another module's download took {times:?}"
    );
    assert_eq!(server.hits("/fast.wasm"), 1);
}

/// Another process (`flock(1)`) holding the download lock of a module: a
/// fetch of it waits only up to its `--timeout`, then fails with an error
/// naming what it waited for, and downloads nothing. Before: the lock was
/// not consulted (or, for the directory lock, waited 60 s whatever the timeout).
#[test]
fn a_download_lock_held_elsewhere_fails_the_fetch_within_its_timeout() {
    let _heavy = heavy();
    let server = TestServer::start(ServerOptions::plain());
    let dir = tempfile::tempdir().unwrap();
    server.route("/m.wasm", Route::bytes(sample_module(10_000, 3)));
    let url = server.url("/m.wasm");
    let lock = {
        let rt = tokio::runtime::Runtime::new().unwrap();
        rt.block_on(async {
            let cache = Cache::builder(dir.path())
                .background_purge(false)
                .default_fetchers(false)
                .build()
                .await
                .unwrap();
            let lock = cache.download_lock_path(&url, None);
            cache.shutdown().await.unwrap();
            lock
        })
    };
    std::fs::create_dir_all(lock.parent().unwrap()).unwrap();
    let holder = Holder::start(&lock);
    let _ = cli_bin(); // Built before the clock starts.
    let t = Instant::now();
    let child = spawn({
        let mut c = cli(dir.path());
        c.args(["fetch", &url, "--timeout", "2s"]);
        c
    });
    let out = wait_bounded(child, Duration::from_secs(90), "a fetch behind a held lock");
    let elapsed = t.elapsed();
    drop(holder);
    assert!(
        !out.status.success(),
        "the fetch must fail while the lock is held"
    );
    let err = text(&out.stderr);
    assert!(
        elapsed < Duration::from_secs(2) + common::HANG_SLACK / 2,
        "took {elapsed:?} with --timeout 2s: {err}"
    );
    assert!(err.contains("timed out"), "{err}");
    assert!(err.contains(&lock.display().to_string()), "{err}");
    assert_eq!(server.hits("/m.wasm"), 0, "nothing may be downloaded");
    // Released: the same fetch now works.
    let out = cli(dir.path())
        .args(["fetch", &url, "--timeout", "20s"])
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", text(&out.stderr));
}

/// Readers never wait for a writer: with another process holding the
/// journal's lock and the old directory lock (`.lock`), a hit, `list` and
/// `verify` still exit 0 at once. Before: all three waited 60 s for `.lock`.
#[test]
fn readers_do_not_wait_for_metadata_locks_held_elsewhere() {
    let _heavy = heavy();
    let server = TestServer::start(ServerOptions::plain());
    let dir = tempfile::tempdir().unwrap();
    let module = sample_module(10_000, 4);
    let sha = sha256_hex(&module);
    server.route("/m.wasm", Route::bytes(module));
    let url = server.url("/m.wasm");
    let out = cli(dir.path())
        .args(["fetch", &url, "--sha256", &sha])
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", text(&out.stderr));
    let _dir_lock = Holder::start(&dir.path().join(".lock"));
    let _journal_lock = Holder::start(&dir.path().join("index.journal.lock"));
    for args in [
        vec![
            "fetch",
            url.as_str(),
            "--sha256",
            sha.as_str(),
            "--timeout",
            "30s",
        ],
        vec!["list"],
        vec!["verify"],
    ] {
        let t = Instant::now();
        let child = spawn({
            let mut c = cli(dir.path());
            c.args(&args);
            c
        });
        let out = wait_bounded(child, Duration::from_secs(90), "a reader");
        assert!(out.status.success(), "{args:?}: {}", text(&out.stderr));
        assert!(
            t.elapsed() < Duration::from_secs(5),
            "{args:?} took {:?} behind a held metadata lock",
            t.elapsed()
        );
    }
    assert_eq!(server.hits("/m.wasm"), 1);
}

/// A full disk: on a 100%-full tmpfs (made in a private mount namespace), a
/// hit, `list` and `verify` exit 0, a fetch needing space fails cleanly, and
/// a fetch whose module fits but whose journal record does not prints its
/// path and exits 0 (and is found again by its checksum). Before: all of
/// them exited 1 on `...compact-tmp: No space left on device`.
#[test]
fn a_full_disk_still_serves_lists_and_verifies() {
    let _heavy = heavy();
    let server = TestServer::start(ServerOptions::plain());
    let cached = sample_module(10_000, 5);
    let big = sample_module(64 * 1024, 6);
    // Exactly two pages: fits into the two pages the test frees.
    let exact = sample_module(8192, 7);
    assert_eq!(exact.len(), 8192);
    server.route("/cached.wasm", Route::bytes(cached.clone()));
    server.route("/big.wasm", Route::bytes(big));
    server.route("/exact.wasm", Route::bytes(exact.clone()));
    let mnt = tempfile::tempdir().unwrap();
    // Command output goes elsewhere: the tmpfs is full.
    let out_dir = tempfile::tempdir().unwrap();
    let script = r#"
set -u
mount -t tmpfs -o size=1m wasm-cache-test "$MNT" || { echo "mount failed"; exit 97; }
run() { label=$1; shift; "$BIN" "$@" > "$OUT/out" 2> "$OUT/err"; echo "$label=$? $(tr '\n' ' ' < "$OUT/out")"; cat "$OUT/err" >&2; }
run prefetch --dir "$MNT/a" fetch "$CACHED_URL" --sha256 "$CACHED_SHA"
i=0
while dd if=/dev/zero of="$MNT/fill$i" bs=4096 count=1 2>/dev/null; do i=$((i+1)); done
run hit --dir "$MNT/a" fetch "$CACHED_URL" --sha256 "$CACHED_SHA"
run list --dir "$MNT/a" list
run verify --dir "$MNT/a" verify
run nospace --dir "$MNT/a" fetch "$BIG_URL"
echo "leftovers=$(ls -A "$MNT/a" | grep -c tmp)"
mkdir "$MNT/b" && touch "$MNT/b/index.journal" "$MNT/b/index.journal.lock"
rm -f "$MNT/fill0" "$MNT/fill1"
run exact --dir "$MNT/b" fetch "$EXACT_URL" --sha256 "$EXACT_SHA"
run exact_again --dir "$MNT/b" fetch "$EXACT_URL" --sha256 "$EXACT_SHA"
if [ -f "$MNT/b/$EXACT_SHA.wasm" ]; then echo "exact_file=$(sha256sum < "$MNT/b/$EXACT_SHA.wasm" | cut -c1-64)"; fi
"#;
    let out = Command::new("unshare")
        .args(["-m", "--propagation", "private", "sh", "-c", script])
        .env("MNT", mnt.path())
        .env("OUT", out_dir.path())
        .env("BIN", cli_bin())
        .env("CACHED_URL", server.url("/cached.wasm"))
        .env("CACHED_SHA", sha256_hex(&cached))
        .env("BIG_URL", server.url("/big.wasm"))
        .env("EXACT_URL", server.url("/exact.wasm"))
        .env("EXACT_SHA", sha256_hex(&exact))
        .env_remove("WASM_CACHE_DIR")
        .env_remove("RUST_LOG")
        .output()
        .expect("running unshare(1) (the test needs root for a private mount namespace)");
    let stdout = text(&out.stdout);
    let stderr = text(&out.stderr);
    let status = |label: &str| -> (i32, String) {
        let line = stdout
            .lines()
            .find_map(|l| l.strip_prefix(&format!("{label}=")))
            .unwrap_or_else(|| panic!("no {label} in:\n{stdout}\nstderr:\n{stderr}"));
        let (code, rest) = line.split_once(' ').unwrap_or((line, ""));
        (code.trim().parse().unwrap(), rest.trim().to_owned())
    };
    assert!(
        out.status.success(),
        "the script failed ({:?}):\n{stdout}\n{stderr}",
        out.status
    );
    assert_eq!(status("prefetch").0, 0, "{stdout}\n{stderr}");
    let (hit, path) = status("hit");
    assert_eq!(
        hit, 0,
        "a hit on a full disk must succeed:\n{stdout}\n{stderr}"
    );
    assert!(
        path.ends_with(&format!("{}.wasm", sha256_hex(&cached))),
        "{path}"
    );
    assert_eq!(
        status("list").0,
        0,
        "list on a full disk:\n{stdout}\n{stderr}"
    );
    assert_eq!(
        status("verify").0,
        0,
        "verify on a full disk:\n{stdout}\n{stderr}"
    );
    assert_ne!(
        status("nospace").0,
        0,
        "a fetch needing space must fail:\n{stdout}"
    );
    assert!(stderr.contains("No space left on device"), "{stderr}");
    assert_eq!(
        status("leftovers").0,
        0,
        "no temporary file may be left:\n{stdout}"
    );
    let (exact_code, exact_path) = status("exact");
    assert_eq!(
        exact_code, 0,
        "a committed module whose journal record does not fit must still be served:\n{stdout}\n{stderr}"
    );
    assert!(
        exact_path.ends_with(&format!("{}.wasm", sha256_hex(&exact))),
        "{exact_path}"
    );
    assert_eq!(status("exact_again").0, 0, "{stdout}\n{stderr}");
    assert!(
        stdout.contains(&format!("exact_file={}", sha256_hex(&exact))),
        "{stdout}"
    );
    assert_eq!(
        server.hits("/exact.wasm"),
        1,
        "adopted, not downloaded again"
    );
}

/// A hostile local user's symlinks: at the journal compaction's temporary
/// name (pointing at a victim file), planted while a fetch runs and before a
/// purge, and dangling ones where lock files belong. The victim stays
/// byte-identical and no link target is created. Before: the fetch's
/// shutdown compaction truncated and overwrote the victim with journal lines
/// (URL credentials included), and `.lock`'s target was created.
#[test]
fn symlinks_planted_in_the_cache_directory_are_never_written_through() {
    let _heavy = heavy();
    let server = TestServer::start(ServerOptions::plain());
    let dir = tempfile::tempdir().unwrap();
    let elsewhere = tempfile::tempdir().unwrap();
    server.route("/m.wasm", Route::bytes(sample_module(10_000, 8)));
    server.route(
        "/slow.wasm",
        Route::delayed(
            Duration::from_secs(2),
            Route::bytes(sample_module(10_000, 10)),
        ),
    );
    server.route("/other.wasm", Route::bytes(sample_module(5_000, 9)));
    let with_secret = |path: &str| server.url(path).replace("http://", "http://user:s3cret@");
    let out = cli(dir.path())
        .args(["fetch", &with_secret("/m.wasm")])
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", text(&out.stderr));

    let victim = elsewhere.path().join("victim");
    let precious = b"the victim's own bytes\n".repeat(100);
    std::fs::write(&victim, &precious).unwrap();
    let compact_tmp = dir.path().join("index.journal.compact-tmp");
    // Planted while a fetch is downloading (after its open, before it ends).
    let fetch = spawn({
        let mut c = cli(dir.path());
        c.args(["fetch", &with_secret("/slow.wasm"), "--timeout", "60s"]);
        c
    });
    poll(
        Duration::from_secs(60),
        "the slow download starting",
        || server.hits("/slow.wasm") == 1,
    );
    symlink(&victim, &compact_tmp).unwrap();
    let out = wait_bounded(fetch, Duration::from_secs(90), "a fetch");
    assert!(out.status.success(), "{}", text(&out.stderr));
    assert_eq!(
        std::fs::read(&victim).unwrap(),
        precious,
        "written through a symlink by a fetch"
    );

    // Dead lines, so that the next purge compacts the journal; the link
    // planted again, and dangling links where lock files belong.
    let journal = dir.path().join("index.journal");
    let mut lines = std::fs::read(&journal).unwrap();
    lines.extend_from_slice(&b"00000000 {\"dead\":true}\n".repeat(500));
    std::fs::write(&journal, &lines).unwrap();
    let _ = std::fs::remove_file(&compact_tmp);
    symlink(&victim, &compact_tmp).unwrap();
    let dangling: Vec<PathBuf> = (0..3)
        .map(|i| elsewhere.path().join(format!("created-{i}")))
        .collect();
    let _ = std::fs::remove_file(dir.path().join(".lock"));
    symlink(&dangling[0], dir.path().join(".lock")).unwrap();
    let _ = std::fs::remove_file(dir.path().join("index.journal.lock"));
    symlink(&dangling[1], dir.path().join("index.journal.lock")).unwrap();
    let rt = tokio::runtime::Runtime::new().unwrap();
    let key_lock = rt.block_on(async {
        let cache = Cache::builder(dir.path())
            .background_purge(false)
            .default_fetchers(false)
            .build()
            .await
            .unwrap();
        let lock = cache.download_lock_path(&server.url("/other.wasm"), None);
        cache.shutdown().await.unwrap();
        lock
    });
    std::fs::create_dir_all(key_lock.parent().unwrap()).unwrap();
    symlink(&dangling[2], &key_lock).unwrap();
    for args in [
        vec![
            "purge".to_owned(),
            "--expiry".to_owned(),
            "1000d".to_owned(),
        ],
        vec!["fetch".to_owned(), server.url("/other.wasm")],
        vec!["list".to_owned()],
    ] {
        let out = cli(dir.path()).args(&args).output().unwrap();
        assert!(out.status.success(), "{args:?}: {}", text(&out.stderr));
    }
    assert_eq!(
        std::fs::read(&victim).unwrap(),
        precious,
        "the victim was written through a symlink"
    );
    for d in &dangling {
        assert!(
            std::fs::symlink_metadata(d).is_err(),
            "{} was created through a dangling symlink",
            d.display()
        );
    }
    let now = std::fs::read_to_string(&journal).unwrap();
    assert!(
        !now.contains("\"dead\""),
        "the purge did not compact the journal"
    );
    assert!(now.contains("s3cret"), "the journal keeps URLs as given");
    let mut victim_text = String::new();
    std::fs::File::open(&victim)
        .unwrap()
        .read_to_string(&mut victim_text)
        .unwrap();
    assert!(!victim_text.contains("s3cret"));
}

fn now_ms() -> u64 {
    u64::try_from(
        SystemTime::now()
            .duration_since(SystemTime::UNIX_EPOCH)
            .unwrap()
            .as_millis(),
    )
    .unwrap()
}

/// Appends hand-made records to the journal of `dir`, as a buggy or hostile
/// writer would (valid checksums, untrustworthy values).
fn append_records(dir: &Path, events: &[IndexEvent]) {
    let journal = Journal::<IndexEvent>::open(dir.join("index.journal")).unwrap();
    for e in events {
        journal.append(e).unwrap();
    }
}

/// Two cached modules, then a journal rewritten by hand saying they were
/// last used `at` and have sizes u64::MAX and 0.
fn untrusted_cache(server: &TestServer, dir: &Path, at: Timestamp) -> Vec<(String, Vec<u8>)> {
    let mut out = Vec::new();
    let mut events = Vec::new();
    for (i, size) in [(0, u64::MAX), (1, 0)] {
        let module = sample_module(10_000 + i * 100, 20 + i as u64);
        let path = format!("/v{i}.wasm");
        server.route(&path, Route::bytes(module.clone()));
        let url = server.url(&path);
        let sha = sha256_hex(&module);
        let o = cli(dir)
            .args(["fetch", &url, "--sha256", &sha])
            .output()
            .unwrap();
        assert!(o.status.success(), "{}", text(&o.stderr));
        let digest = Sha256Digest::parse(&sha).unwrap();
        let name = wasm_cache_core::ModuleUrl::parse(&url)
            .unwrap()
            .module_name();
        events.push(IndexEvent::Insert {
            key: ModuleKey::new(name, digest),
            content: digest,
            size,
            url: Some(url.clone()),
            at,
        });
        out.push((sha, module));
    }
    std::fs::remove_file(dir.join("index.journal")).unwrap();
    append_records(dir, &events);
    out
}

/// Journal values are checked: a last use a year ahead does not keep an
/// entry from `--expiry 0s`, and sizes of u64::MAX and 0 neither saturate
/// the budget nor keep an entry from `--max-bytes 0`; `list` shows the
/// files' real sizes and no future time. Before: the entries were never
/// purged (and the size-0 one never evicted).
#[test]
fn journal_values_from_the_future_or_with_wrong_sizes_are_purged() {
    let _heavy = heavy();
    let server = TestServer::start(ServerOptions::plain());
    let year_ahead =
        Timestamp::from_system_time(SystemTime::now() + Duration::from_secs(365 * 24 * 3600));

    let dir = tempfile::tempdir().unwrap();
    let modules = untrusted_cache(&server, dir.path(), year_ahead);
    let out = cli(dir.path()).args(["list", "--json"]).output().unwrap();
    assert!(out.status.success(), "{}", text(&out.stderr));
    // `list --json`: one JSON object per module, one per line.
    let listed: Vec<serde_json::Value> = text(&out.stdout)
        .lines()
        .filter(|l| !l.trim().is_empty())
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    let mut got: Vec<u64> = listed.iter().map(|m| m["size"].as_u64().unwrap()).collect();
    let mut want: Vec<u64> = modules.iter().map(|(_, m)| m.len() as u64).collect();
    want.sort_unstable();
    got.sort_unstable();
    assert_eq!(got, want, "sizes must come from the files: {listed:?}");
    for m in &listed {
        assert!(
            m["last_use_unix_ms"].as_u64().unwrap() <= now_ms(),
            "future last use listed: {m}"
        );
    }
    let out = cli(dir.path())
        .args(["purge", "--expiry", "0s"])
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", text(&out.stderr));
    assert!(
        common::module_files(dir.path()).is_empty(),
        "--expiry 0s left {:?}: {}",
        common::module_files(dir.path()),
        text(&out.stdout)
    );

    // The byte budget, with last uses a day ago (outside the eviction grace).
    let dir = tempfile::tempdir().unwrap();
    let day_ago = Timestamp::from_system_time(SystemTime::now() - Duration::from_secs(24 * 3600));
    let _ = untrusted_cache(&server, dir.path(), day_ago);
    let out = cli(dir.path())
        .args(["purge", "--expiry", "1000d", "--max-bytes", "0"])
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", text(&out.stderr));
    assert!(
        common::module_files(dir.path()).is_empty(),
        "--max-bytes 0 left {:?}: {}",
        common::module_files(dir.path()),
        text(&out.stdout)
    );
}

/// Two caches on one directory in one process (as two processes would be):
/// one compacts the journal while the other keeps appending, and nothing is
/// lost. Before: the second cache appended into the unlinked old journal,
/// and its shutdown rewrote the journal from its own view, dropping the
/// first cache's module.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_caches_on_one_directory_lose_no_journal_record() {
    let server = TestServer::start(ServerOptions::plain());
    let dir = tempfile::tempdir().unwrap();
    let mut urls = Vec::new();
    for i in 0..3 {
        let path = format!("/two{i}.wasm");
        server.route(
            &path,
            Route::bytes(sample_module(4_000 + i * 10, 40 + i as u64)),
        );
        urls.push(server.url(&path));
    }
    let open = || Cache::builder(dir.path()).background_purge(false).build();
    let a = open().await.unwrap();
    let b = open().await.unwrap();
    a.get(&wasm_cache::GetRequest::new(&urls[0])).await.unwrap();
    b.get(&wasm_cache::GetRequest::new(&urls[1])).await.unwrap();
    // Dead lines, so that A's purge compacts the journal under B's feet.
    let journal = dir.path().join("index.journal");
    let mut bytes = std::fs::read(&journal).unwrap();
    bytes.extend_from_slice(&b"00000000 {\"dead\":true}\n".repeat(300));
    std::fs::write(&journal, &bytes).unwrap();
    a.purge().await.unwrap();
    assert!(
        std::fs::metadata(&journal).unwrap().len() < bytes.len() as u64,
        "the purge compacted the journal"
    );
    a.shutdown().await.unwrap();
    b.get(&wasm_cache::GetRequest::new(&urls[2])).await.unwrap();
    b.shutdown().await.unwrap();
    let c = open().await.unwrap();
    let mut names: Vec<String> = c.entries().into_iter().map(|e| e.key.name).collect();
    names.sort();
    assert_eq!(names.len(), 3, "{names:?}");
    for i in 0..3 {
        assert_eq!(server.hits(&format!("/two{i}.wasm")), 1);
    }
    // Both caches served from the same files; C serves all three offline.
    drop(server);
    for u in &urls {
        c.get(&wasm_cache::GetRequest::new(u)).await.unwrap();
    }
}
