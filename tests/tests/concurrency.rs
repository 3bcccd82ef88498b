//! Concurrency: 1,000 gets over 100 modules from 16 tasks while purge and
//! eviction run (a small byte budget, a short grace, a manual clock moved by a
//! ticker task), then a consistency check of the store against the index.
//!
//! Invariants checked while it runs: every get of a valid module succeeds and
//! returns a path holding exactly that module (never a partial file); a path
//! handed out is not deleted within the eviction grace. Afterwards: every
//! entry's file exists and verifies, no module file lacks an entry, no
//! temporary file is left, and a fresh cache on the directory recovers the same
//! entries and serves them with the network down.

mod common;

use std::collections::BTreeSet;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::{Duration, SystemTime};

use common::{
    HANG_SLACK, Rng, assert_store_consistent, poll_until_none, store_inconsistency, within,
};
use wasm_cache::{Cache, Clock as _, ErrorKind, GetRequest, ManualClock, PullPolicy};
use wasm_cache_testkit::http::{Route, ServerOptions, TestServer};
use wasm_cache_testkit::modules::{sample_module, sha256_hex};

const MODULES: usize = 100;
const TASKS: usize = 16;
const GETS: usize = 1000;
/// Clock time; the ticker moves the clock by [`TICK`] every [`TICK_EVERY`].
const GRACE: Duration = Duration::from_secs(30);
const EXPIRY: Duration = Duration::from_secs(120);
const TICK: Duration = Duration::from_secs(3);
const TICK_EVERY: Duration = Duration::from_millis(5);

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn thousand_gets_with_purge_and_eviction_keep_store_and_index_consistent() {
    let seed = common::seed(0x00c0_ffee);
    let server = TestServer::start(ServerOptions::plain());
    let modules: Arc<Vec<Vec<u8>>> = Arc::new(
        (0..MODULES)
            .map(|i| sample_module(2048 + (i * 977) % 24_000, i as u64 + 1))
            .collect(),
    );
    for (i, m) in modules.iter().enumerate() {
        server.route(&format!("/m{i}.wasm"), Route::bytes(m.clone()));
    }
    server.route(
        "/broken.wasm",
        Route::bytes(b"<html>not wasm</html>".to_vec()),
    );
    let total: u64 = modules.iter().map(|m| m.len() as u64).sum();
    let dir = tempfile::tempdir().unwrap();
    let clock = ManualClock::new(SystemTime::UNIX_EPOCH + Duration::from_secs(1_700_000_000));
    let cache = Cache::builder(dir.path())
        .clock(Arc::new(clock.clone()))
        .purge_interval(Duration::from_millis(25))
        .expiry(EXPIRY)
        .eviction_grace(GRACE)
        .max_bytes(Some(total / 6))
        .build()
        .await
        .unwrap();
    let base = server.url("");

    let stop = Arc::new(AtomicBool::new(false));
    let ticker = tokio::spawn({
        let (clock, stop) = (clock.clone(), stop.clone());
        async move {
            while !stop.load(Ordering::Relaxed) {
                tokio::time::sleep(TICK_EVERY).await;
                clock.advance(TICK);
            }
        }
    });
    // An explicit purger besides the background task, so purges overlap gets
    // and each other; its reports prove that expiry and eviction happened.
    let purger = tokio::spawn({
        let (cache, stop) = (cache.clone(), stop.clone());
        async move {
            let (mut expired, mut evicted, mut files) = (0, 0, 0);
            while !stop.load(Ordering::Relaxed) {
                let r = cache.purge().await.unwrap();
                expired += r.expired.len();
                evicted += r.evicted.len();
                files += r.files_removed;
                assert_eq!(r.failures, 0, "a purge failed to remove a file");
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
            (expired, evicted, files)
        }
    });

    let late_reads = Arc::new(AtomicUsize::new(0));
    let mut workers = Vec::new();
    for t in 0..TASKS {
        let gets = GETS / TASKS + usize::from(t < GETS % TASKS);
        let (cache, clock, modules, base, late) = (
            cache.clone(),
            clock.clone(),
            modules.clone(),
            base.clone(),
            late_reads.clone(),
        );
        let mut rng = Rng::new(seed.wrapping_add(t as u64));
        workers.push(tokio::spawn(async move {
            let mut errors = 0;
            for _ in 0..gets {
                // A hot set of 20 modules gets 80% of the traffic; the cold
                // rest idles long enough to expire or be evicted.
                let i = if rng.below(5) < 4 { rng.below(20) } else { 20 + rng.below(80) } as usize;
                if rng.below(50) == 0 {
                    let r = cache.get(&GetRequest::new(format!("{base}/broken.wasm"))).await;
                    assert_eq!(r.unwrap_err().kind(), ErrorKind::InvalidModule);
                    errors += 1;
                    continue;
                }
                let want = sha256_hex(&modules[i]);
                let mut req = GetRequest::new(format!("{base}/m{i}.wasm"))
                    .resource(format!("ns/p{}", rng.below(4)), rng.below(3).to_string())
                    .timeout(Duration::from_secs(20));
                req = match rng.below(3) {
                    0 => req.checksum(&want),
                    1 => req.pull_policy(PullPolicy::IfNotPresent),
                    _ => req,
                };
                let t0 = clock.now();
                let path = within(req.timeout + HANG_SLACK, "a get", cache.get(&req))
                    .await
                    .unwrap_or_else(|e| panic!("get of module {i} failed: {e}"));
                assert_eq!(path.file_name().unwrap().to_str().unwrap(), format!("{want}.wasm"));
                match std::fs::read(&path) {
                    Ok(bytes) => assert!(
                        sha256_hex(&bytes) == want,
                        "{} holds {} bytes that are not module {i}",
                        path.display(),
                        bytes.len()
                    ),
                    Err(e) => {
                        let held = clock.now().duration_since(t0).unwrap();
                        assert!(
                            held + 2 * TICK >= GRACE,
                            "{} vanished {held:?} (clock) after it was handed out, within the grace: {e}",
                            path.display()
                        );
                        late.fetch_add(1, Ordering::Relaxed);
                    }
                }
            }
            errors
        }));
    }
    let mut expected_errors = 0;
    for w in workers {
        expected_errors += within(Duration::from_secs(120), "a worker", w)
            .await
            .unwrap();
    }
    stop.store(true, Ordering::Relaxed);
    ticker.await.unwrap();
    let (expired, evicted, files_removed) = purger.await.unwrap();
    eprintln!(
        "expired {expired}, evicted {evicted}, files removed {files_removed}, \
         failed gets of the broken URL {expected_errors}, reads after the grace {}",
        late_reads.load(Ordering::Relaxed)
    );
    assert!(evicted > 0, "the byte budget never evicted anything");
    assert!(files_removed > 0, "no purge removed a file");

    // Purges started by gets may still be finishing: the store must converge
    // to agree with the index.
    let problem = poll_until_none(Duration::from_secs(10), || {
        store_inconsistency(&cache, &BTreeSet::new())
    })
    .await;
    assert!(
        problem.is_none(),
        "store and index disagree:\n{}",
        problem.unwrap()
    );
    // Snapshot after the shutdown, which waits for every queued budget purge:
    // one still running after the check above evicts entries (and files)
    // that an earlier snapshot would still list.
    cache.shutdown().await.unwrap();
    let before: BTreeSet<(String, String, String)> = cache
        .entries()
        .into_iter()
        .map(|e| (e.key.name, e.key.checksum.to_hex(), e.content.to_hex()))
        .collect();
    assert!(!before.is_empty());
    drop(cache);

    // A fresh cache on the directory recovers the same entries, and serves
    // every one of them with the server gone.
    drop(server);
    let fresh = Cache::builder(dir.path())
        .background_purge(false)
        .clock(Arc::new(clock.clone()))
        .build()
        .await
        .unwrap();
    let after: BTreeSet<(String, String, String)> = fresh
        .entries()
        .into_iter()
        .map(|e| (e.key.name, e.key.checksum.to_hex(), e.content.to_hex()))
        .collect();
    assert_eq!(before, after, "the journal did not recover the index");
    assert_store_consistent(&fresh);
    let report = fresh.verify(false).await.unwrap();
    assert!(
        report.mismatched.is_empty() && report.missing.is_empty(),
        "{report:?}"
    );
    for (name, checksum, _) in &after {
        let req = GetRequest::new(name)
            .checksum(checksum)
            .timeout(Duration::from_secs(2));
        let path = fresh.get(&req).await.unwrap();
        assert_eq!(common::file_sha256(&path), *checksum);
    }
    fresh.shutdown().await.unwrap();
}
