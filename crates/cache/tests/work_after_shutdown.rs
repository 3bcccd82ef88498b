//! No work after shutdown (issue 14, item 6, cache part): byte-budget purges
//! started by over-budget fetches end before [`Cache::shutdown`] returns, and
//! the cache refuses `get`, `purge` and `verify` afterwards.
//!
//! A custom [`Clock`] counts the `now()` calls that end after `shutdown`
//! returned: every purge, hit and fetch reads the clock, so any work still
//! running after shutdown shows up there.

mod common;

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::{Duration, Instant, SystemTime};

use common::{clock, req};
use wasm_cache::{Cache, Clock, Error, ManualClock};
use wasm_cache_testkit::http::{Route, ServerOptions, TestServer};
use wasm_cache_testkit::modules::sample_module;

/// How long the test watches for late clock reads (a bounded poll, not a sleep
/// waiting for state: nothing may happen, so the whole window is watched).
const WATCH: Duration = Duration::from_millis(500);

/// How long each clock read takes.
const SLOW_READ: Duration = Duration::from_millis(20);

#[derive(Debug)]
struct CountingClock {
    inner: ManualClock,
    shut: AtomicBool,
    late_calls: AtomicUsize,
}

impl Clock for CountingClock {
    fn now(&self) -> SystemTime {
        // A slow clock read keeps any purge busy long enough that one still
        // running when shutdown returns is seen finishing its read after it.
        std::thread::sleep(SLOW_READ);
        if self.shut.load(Ordering::SeqCst) {
            self.late_calls.fetch_add(1, Ordering::SeqCst);
        }
        // Time moves a little on every read, so entries age and the budget
        // can evict (with a frozen clock every entry would be in its grace).
        self.inner.advance(Duration::from_millis(1));
        self.inner.now()
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn budget_purges_end_before_shutdown_returns() {
    const N: usize = 8;
    let server = TestServer::start(ServerOptions::plain());
    let modules: Vec<Vec<u8>> = (0..N)
        .map(|i| sample_module(20_000, 100 + i as u64))
        .collect();
    for (i, m) in modules.iter().enumerate() {
        server.route(&format!("/m{i}.wasm"), Route::bytes(m.clone()));
    }
    let clock = Arc::new(CountingClock {
        inner: clock(),
        shut: AtomicBool::new(false),
        late_calls: AtomicUsize::new(0),
    });
    let dir = tempfile::tempdir().unwrap();
    let cache = Cache::builder(dir.path())
        .background_purge(false)
        .clock(clock.clone())
        .max_bytes(Some(30_000))
        .eviction_grace(Duration::ZERO)
        .build()
        .await
        .unwrap();

    // Every fetch after the first goes over the budget and asks for a purge.
    let mut tasks = Vec::new();
    for (i, m) in modules.iter().enumerate() {
        let cache = cache.clone();
        let url = server.url(&format!("/m{i}.wasm"));
        let m = m.clone();
        tasks.push(tokio::spawn(async move {
            let p = cache.get(&req(&url, "1")).await.unwrap();
            // The file may be evicted right after (grace zero); only a
            // complete module may ever be at the path.
            if let Ok(bytes) = std::fs::read(&p) {
                assert!(bytes == m, "{} holds other bytes", p.display());
            }
        }));
    }
    for t in tasks {
        t.await.unwrap();
    }
    for i in 0..N {
        assert_eq!(server.hits(&format!("/m{i}.wasm")), 1);
    }

    cache.shutdown().await.unwrap();
    clock.shut.store(true, Ordering::SeqCst);

    let until = Instant::now() + WATCH;
    while Instant::now() < until {
        let late = clock.late_calls.load(Ordering::SeqCst);
        assert_eq!(
            late, 0,
            "{late} clock reads after shutdown returned: work went on"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }

    // The budget purges that did run kept the store within budget.
    let total: u64 = cache.entries().iter().map(|e| e.size).sum();
    assert!(
        total <= 30_000,
        "{total} bytes cached over a 30000 byte budget"
    );

    assert!(
        matches!(cache.purge().await, Err(Error::ShutDown)),
        "purge after shutdown"
    );
    assert!(
        matches!(cache.verify(true).await, Err(Error::ShutDown)),
        "verify after shutdown"
    );
    assert!(
        matches!(cache.verify(false).await, Err(Error::ShutDown)),
        "verify after shutdown"
    );
    let e = cache
        .get(&req(&server.url("/m0.wasm"), "1"))
        .await
        .unwrap_err();
    assert!(matches!(e, Error::ShutDown), "{e}");
    assert_eq!(e.to_string(), "the wasm module cache is shut down");
    assert_eq!(server.hits("/m0.wasm"), 1, "no request after shutdown");
    assert_eq!(
        clock.late_calls.load(Ordering::SeqCst),
        0,
        "refusals read no clock"
    );
    // Shutdown is idempotent.
    cache.shutdown().await.unwrap();
}
