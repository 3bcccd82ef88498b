//! Issue 19: hits make no system call (a watch of the module directory
//! vouches for the files), yet a module file deleted, renamed away or
//! replaced behind the cache's back stops being handed out once the change
//! is observable; and with the watch off (or unavailable) every hit checks
//! its file, as before.

mod common;

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use common::{assert_module_at, builder, clock, req};
use wasm_cache::Cache;
use wasm_cache_testkit::http::{Route, ServerOptions, TestServer};
use wasm_cache_testkit::modules::{sample_module, sha256_hex};

/// How long a change may take to be noticed (the watch's thread wakes on
/// its event within microseconds on an idle machine; this is for a loaded one).
const DEADLINE: Duration = Duration::from_secs(20);

struct Setup {
    server: TestServer,
    url: String,
    module: Vec<u8>,
    cache: Cache,
    path: PathBuf,
    _dir: tempfile::TempDir,
}

/// A cache holding one module, fetched once and then hit (so the hit path,
/// not the fetch, is what hands it out next).
async fn setup(watch: bool, seed: u64) -> Setup {
    let server = TestServer::start(ServerOptions::plain());
    let module = sample_module(6_000, seed);
    server.route("/m.wasm", Route::bytes(module.clone()));
    let url = server.url("/m.wasm");
    let dir = tempfile::tempdir().unwrap();
    let cache = builder(dir.path(), &clock())
        .watch_directory(watch)
        .build()
        .await
        .unwrap();
    let path = cache.get(&req(&url, "1")).await.unwrap();
    for _ in 0..3 {
        assert_eq!(cache.get(&req(&url, "1")).await.unwrap(), path);
    }
    assert_eq!(
        server.hits("/m.wasm"),
        1,
        "the gets after the first were hits"
    );
    Setup {
        server,
        url,
        module,
        cache,
        path,
        _dir: dir,
    }
}

impl Setup {
    /// Gets the module until the cache fetches it again (the server sees a
    /// second download), checking every path handed out meanwhile; fails
    /// after [`DEADLINE`].
    async fn poll_until_fetched_again(&self) {
        let started = Instant::now();
        loop {
            let p = self.cache.get(&req(&self.url, "1")).await.unwrap();
            assert_eq!(p, self.path, "one content, one path");
            if self.server.hits("/m.wasm") == 2 {
                assert_module_at(&p, &self.module);
                return;
            }
            assert!(
                started.elapsed() < DEADLINE,
                "the cache still hands out {} {DEADLINE:?} after it changed",
                p.display()
            );
            tokio::time::sleep(Duration::from_millis(1)).await;
        }
    }
}

fn file_sha256(p: &Path) -> String {
    sha256_hex(&std::fs::read(p).unwrap())
}

/// A Wasm header and other bytes: what a hostile user could put in place.
fn impostor(len: usize) -> Vec<u8> {
    let mut bytes = sample_module(len, 999);
    bytes[len - 1] ^= 0xff;
    bytes
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_deleted_module_file_stops_being_handed_out() {
    let s = setup(true, 1).await;
    std::fs::remove_file(&s.path).unwrap();
    s.poll_until_fetched_again().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_module_file_renamed_away_stops_being_handed_out() {
    let s = setup(true, 2).await;
    let moved = s.path.with_extension("moved");
    std::fs::rename(&s.path, &moved).unwrap();
    s.poll_until_fetched_again().await;
    assert!(
        moved.exists(),
        "the renamed file is not ours any more: left alone"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_module_file_replaced_by_a_rename_is_checked_before_it_is_served() {
    let s = setup(true, 3).await;
    let other = s.path.with_file_name("elsewhere.bin");
    std::fs::write(&other, impostor(s.module.len())).unwrap();
    std::fs::rename(&other, &s.path).unwrap();
    // Re-hashed before it is served again: a mismatch is fetched again.
    s.poll_until_fetched_again().await;
    assert_eq!(file_sha256(&s.path), sha256_hex(&s.module));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_module_file_rewritten_in_place_is_checked_before_it_is_served() {
    let s = setup(true, 4).await;
    std::fs::write(&s.path, impostor(s.module.len())).unwrap();
    s.poll_until_fetched_again().await;
    assert_eq!(file_sha256(&s.path), sha256_hex(&s.module));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_module_file_touched_but_unchanged_is_still_served_without_a_download() {
    let s = setup(true, 5).await;
    // Metadata only (IN_ATTRIB): the content is checked again (by its
    // verification mark or by hashing it) and found good.
    let f = std::fs::File::open(&s.path).unwrap();
    f.set_permissions(std::os::unix::fs::PermissionsExt::from_mode(0o644))
        .unwrap();
    drop(f);
    for _ in 0..100 {
        assert_eq!(s.cache.get(&req(&s.url, "1")).await.unwrap(), s.path);
    }
    assert_eq!(s.server.hits("/m.wasm"), 1);
    assert_module_at(&s.path, &s.module);
}

/// The fallback: with the watch off, every hit checks its file, so the
/// very next get after a change notices it (no polling).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_the_watch_the_next_hit_notices_a_deleted_file() {
    let s = setup(false, 6).await;
    std::fs::remove_file(&s.path).unwrap();
    let again = s.cache.get(&req(&s.url, "1")).await.unwrap();
    assert_eq!(again, s.path);
    assert_eq!(s.server.hits("/m.wasm"), 2, "fetched again at once");
    assert_module_at(&again, &s.module);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_the_watch_the_next_hit_notices_a_file_renamed_away() {
    let s = setup(false, 7).await;
    std::fs::rename(&s.path, s.path.with_extension("moved")).unwrap();
    let again = s.cache.get(&req(&s.url, "1")).await.unwrap();
    assert_eq!(again, s.path);
    assert_eq!(s.server.hits("/m.wasm"), 2, "fetched again at once");
    assert_module_at(&again, &s.module);
}
