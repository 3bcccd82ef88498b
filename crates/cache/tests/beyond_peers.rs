//! What the reference does not do (REFERENCE §7), each with its own test.

mod common;

use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use common::{assert_module_at, builder, clock, module_files, req};
use wasm_cache::{Cache, Scheme};
use wasm_cache_core::{
    Error as CoreError, FetchRequest, Fetched, Fetcher, ModuleSink, Sha256Digest,
};
use wasm_cache_testkit::http::{Route, ServerOptions, TestServer};
use wasm_cache_testkit::images::push_oci_image;
use wasm_cache_testkit::modules::{sample_module, sha256_hex};
use wasm_cache_testkit::registry::{Registry, RegistryKind};

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn concurrent_gets_of_one_missing_module_download_once() {
    let s = TestServer::start(ServerOptions::plain());
    s.route(
        "/big.wasm",
        Route::Generated {
            size: 8 << 20,
            seed: 9,
        },
    );
    let dir = tempfile::tempdir().unwrap();
    let cache = builder(dir.path(), &clock()).build().await.unwrap();
    let url = s.url("/big.wasm");
    let barrier = Arc::new(tokio::sync::Barrier::new(32));
    let tasks: Vec<_> = (0..32)
        .map(|_| {
            let (cache, url, barrier) = (cache.clone(), url.clone(), barrier.clone());
            tokio::spawn(async move {
                barrier.wait().await;
                cache.get(&req(&url, "1")).await
            })
        })
        .collect();
    let mut paths = Vec::new();
    for t in tasks {
        paths.push(t.await.unwrap().unwrap());
    }
    assert_eq!(
        s.hits("/big.wasm"),
        1,
        "one upstream download for 32 callers"
    );
    assert!(paths.windows(2).all(|w| w[0] == w[1]));
    assert_module_at(&paths[0], &sample_module(8 << 20, 9));
}

/// Holds every fetch until `n` fetches are in progress at once: if the cache
/// serialised distinct misses, the first would wait forever (until its deadline).
#[derive(Debug)]
struct Rendezvous {
    barrier: tokio::sync::Barrier,
}

#[async_trait]
impl Fetcher for Rendezvous {
    async fn resolve(&self, _: &FetchRequest) -> Result<Option<Sha256Digest>, CoreError> {
        Ok(None)
    }
    async fn fetch(
        &self,
        req: &FetchRequest,
        sink: &mut dyn ModuleSink,
    ) -> Result<Fetched, CoreError> {
        let left = req.remaining(std::time::Instant::now());
        if tokio::time::timeout(left, self.barrier.wait())
            .await
            .is_err()
        {
            return Err(req.timeout_error(left));
        }
        let seed = req.url.as_str().len() as u64;
        let m = sample_module(1000, seed);
        sink.write(&m).map_err(|source| CoreError::Sink {
            url: req.url.redacted(),
            source,
        })?;
        Ok(Fetched::new(m.len() as u64, None))
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn distinct_modules_fetch_in_parallel() {
    let dir = tempfile::tempdir().unwrap();
    let fetcher = Arc::new(Rendezvous {
        barrier: tokio::sync::Barrier::new(3),
    });
    let cache = builder(dir.path(), &clock())
        .fetcher(Scheme::Https, fetcher)
        .build()
        .await
        .unwrap();
    let gets: Vec<_> = [
        "https://a.example/m.wasm",
        "https://bb.example/m.wasm",
        "https://ccc.example/m.wasm",
    ]
    .into_iter()
    .map(|u| {
        let cache = cache.clone();
        tokio::spawn(async move {
            cache
                .get(&req(u, "1").timeout(Duration::from_secs(10)))
                .await
        })
    })
    .collect();
    for g in gets {
        g.await
            .unwrap()
            .expect("three misses of distinct modules must run at once");
    }
    assert_eq!(module_files(dir.path()).len(), 3);
}

#[tokio::test]
async fn restart_serves_modules_and_records_without_network() {
    let r = Registry::start(RegistryKind::Plain);
    let s = TestServer::start(ServerOptions::plain());
    let oci_module = sample_module(6_000, 11);
    let http_module = sample_module(7_000, 12);
    let pushed = push_oci_image(&r, "org/restart", "v1", &oci_module).await;
    s.route("/m.wasm", Route::bytes(http_module.clone()));
    let http_url = s.url("/m.wasm");
    let dir = tempfile::tempdir().unwrap();
    let c = clock();
    let first = builder(dir.path(), &c)
        .insecure_hosts([r.host()])
        .build()
        .await
        .unwrap();
    let p_oci = first.get(&req(&pushed.url, "1")).await.unwrap();
    let p_http = first.get(&req(&http_url, "1")).await.unwrap();
    first.shutdown().await.unwrap();
    drop(first);
    // The network is gone.
    drop(r);
    drop(s);
    let second = builder(dir.path(), &c)
        .insecure_hosts(["*"])
        .build()
        .await
        .unwrap();
    assert_eq!(second.entries().len(), 2);
    // Tagged OCI URL (records) and http URL with the same version: hits.
    assert_eq!(second.get(&req(&pushed.url, "9")).await.unwrap(), p_oci);
    assert_eq!(second.get(&req(&http_url, "1")).await.unwrap(), p_http);
    assert_module_at(&p_oci, &oci_module);
    assert_module_at(&p_http, &http_module);
}

#[tokio::test]
async fn restart_without_shutdown_still_recovers_and_rehashes_once() {
    let s = TestServer::start(ServerOptions::plain());
    let module = sample_module(5_000, 13);
    s.route("/m.wasm", Route::bytes(module.clone()));
    let url = s.url("/m.wasm");
    let dir = tempfile::tempdir().unwrap();
    let c = clock();
    let first = builder(dir.path(), &c).build().await.unwrap();
    let p = first.get(&req(&url, "1")).await.unwrap();
    drop(first); // no shutdown: as after a crash
    // Corrupt the file behind the cache's back, keeping its name.
    let mut bytes = std::fs::read(&p).unwrap();
    bytes[100] ^= 0xff;
    std::fs::write(&p, bytes).unwrap();
    let second = builder(dir.path(), &c).build().await.unwrap();
    // The recovered entry is re-hashed before it is served: a mismatch is a miss.
    let again = second.get(&req(&url, "1")).await.unwrap();
    assert_eq!(again, p);
    assert_module_at(&again, &module);
    assert_eq!(s.hits("/m.wasm"), 2);
}

#[tokio::test]
async fn a_hit_whose_file_vanished_fetches_again() {
    let s = TestServer::start(ServerOptions::plain());
    let module = sample_module(5_000, 14);
    s.route("/m.wasm", Route::bytes(module.clone()));
    let url = s.url("/m.wasm");
    let dir = tempfile::tempdir().unwrap();
    let cache = builder(dir.path(), &clock()).build().await.unwrap();
    let p = cache.get(&req(&url, "1")).await.unwrap();
    std::fs::remove_file(&p).unwrap();
    let again = cache.get(&req(&url, "1")).await.unwrap();
    assert_module_at(&again, &module);
    assert_eq!(s.hits("/m.wasm"), 2);
}

#[tokio::test]
async fn byte_budget_evicts_lru_but_never_within_grace() {
    let s = TestServer::start(ServerOptions::plain());
    for i in 0..4u64 {
        s.route(
            &format!("/{i}.wasm"),
            Route::bytes(sample_module(10_000, 100 + i)),
        );
    }
    let dir = tempfile::tempdir().unwrap();
    let c = clock();
    let cache = builder(dir.path(), &c)
        .max_bytes(Some(25_000))
        .eviction_grace(Duration::from_secs(60))
        .build()
        .await
        .unwrap();
    let mut paths = Vec::new();
    for i in 0..3 {
        paths.push(
            cache
                .get(&req(&s.url(&format!("/{i}.wasm")), "1"))
                .await
                .unwrap(),
        );
        c.advance(Duration::from_secs(10));
    }
    // All three are within the grace period: nothing may go, although over budget.
    let r = cache.purge().await.unwrap();
    assert!(r.evicted.is_empty(), "{r:?}");
    assert_eq!(module_files(dir.path()).len(), 3);
    c.advance(Duration::from_secs(120));
    // Module 0 is used again: now 1 is the least recently used.
    cache.get(&req(&s.url("/0.wasm"), "1")).await.unwrap();
    let r = cache.purge().await.unwrap();
    // The third fetch went over budget and queued a purge of its own, which
    // a loaded machine may run only now, and evict module 1 itself: what
    // counts is what is left, and that no more than one was evicted.
    assert!(r.evicted.len() <= 1, "{r:?}");
    assert!(!paths[1].exists(), "{r:?}");
    assert!(paths[0].exists() && paths[2].exists());
}

#[tokio::test]
async fn pinned_checksum_works_with_the_network_down() {
    let s = TestServer::start(ServerOptions::plain());
    let module = sample_module(3_000, 15);
    s.route("/m.wasm", Route::bytes(module.clone()));
    let url = s.url("/m.wasm");
    let dir = tempfile::tempdir().unwrap();
    let cache = builder(dir.path(), &clock()).build().await.unwrap();
    let sum = sha256_hex(&module);
    let p = cache
        .get(&req(&url, "1").checksum(sum.clone()))
        .await
        .unwrap();
    drop(s);
    for v in ["1", "2", "3"] {
        let r = req(&url, v)
            .checksum(sum.clone())
            .pull_policy(wasm_cache::PullPolicy::Always);
        assert_eq!(cache.get(&r).await.unwrap(), p);
    }
}

#[tokio::test]
async fn shutdown_stops_the_purge_task_and_refuses_gets() {
    let dir = tempfile::tempdir().unwrap();
    let cache = Cache::builder(dir.path())
        .purge_interval(Duration::from_millis(50))
        .build()
        .await
        .unwrap();
    assert!(cache.purge_task_running());
    cache.shutdown().await.unwrap();
    assert!(!cache.purge_task_running());
    let e = cache
        .get(&req("http://127.0.0.1:9/m.wasm", "1"))
        .await
        .unwrap_err();
    assert!(matches!(e, wasm_cache::Error::ShutDown), "{e}");
    cache.shutdown().await.unwrap();
}

#[test]
fn metrics_use_the_reference_names() {
    use metrics_util::debugging::{DebugValue, DebuggingRecorder};
    let recorder = DebuggingRecorder::new();
    let snapshotter = recorder.snapshotter();
    let s = TestServer::start(ServerOptions::plain());
    s.route("/m.wasm", Route::bytes(sample_module(1_000, 16)));
    s.route("/bad.wasm", Route::Status(404));
    let dir = tempfile::tempdir().unwrap();
    metrics::with_local_recorder(&recorder, || {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        rt.block_on(async {
            let cache = builder(dir.path(), &clock()).build().await.unwrap();
            cache.get(&req(&s.url("/m.wasm"), "1")).await.unwrap();
            cache.get(&req(&s.url("/m.wasm"), "1")).await.unwrap();
            cache.get(&req(&s.url("/bad.wasm"), "1")).await.unwrap_err();
            cache.shutdown().await.unwrap();
        });
    });
    let mut seen = std::collections::BTreeMap::new();
    for (key, _, _, value) in snapshotter.snapshot().into_vec() {
        let k = key.key();
        let labels: Vec<String> = k
            .labels()
            .map(|l| format!("{}={}", l.key(), l.value()))
            .collect();
        let v = match value {
            DebugValue::Counter(n) => n as f64,
            DebugValue::Gauge(g) => g.into_inner(),
            DebugValue::Histogram(_) => continue,
        };
        seen.insert(format!("{}{{{}}}", k.name(), labels.join(",")), v);
    }
    assert_eq!(
        seen.get("wasm_cache_lookup_count{hit=true}"),
        Some(&1.0),
        "{seen:?}"
    );
    assert_eq!(
        seen.get("wasm_cache_lookup_count{hit=false}"),
        Some(&2.0),
        "{seen:?}"
    );
    assert_eq!(
        seen.get("wasm_remote_fetch_count{result=success,source=upstream}"),
        Some(&1.0),
        "{seen:?}"
    );
    assert_eq!(
        seen.get("wasm_remote_fetch_count{result=download_failure,source=upstream}"),
        Some(&1.0),
        "{seen:?}"
    );
    assert_eq!(seen.get("wasm_cache_entries{}"), Some(&1.0), "{seen:?}");
}

/// Writes half a module, then waits for `release` before writing the rest.
#[derive(Debug)]
struct HalfThenWait {
    module: Vec<u8>,
    halfway: tokio::sync::Notify,
    release: tokio::sync::Notify,
}

#[async_trait]
impl Fetcher for HalfThenWait {
    async fn resolve(&self, _: &FetchRequest) -> Result<Option<Sha256Digest>, CoreError> {
        Ok(None)
    }
    async fn fetch(
        &self,
        req: &FetchRequest,
        sink: &mut dyn ModuleSink,
    ) -> Result<Fetched, CoreError> {
        let (a, b) = self.module.split_at(self.module.len() / 2);
        let err = |source| CoreError::Sink {
            url: req.url.redacted(),
            source,
        };
        sink.write(a).map_err(err)?;
        self.halfway.notify_one();
        self.release.notified().await;
        sink.write(b).map_err(err)?;
        Ok(Fetched::new(self.module.len() as u64, None))
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_purge_never_touches_a_module_being_written_or_just_handed_out() {
    let module = sample_module(200_000, 17);
    let fetcher = Arc::new(HalfThenWait {
        module: module.clone(),
        halfway: tokio::sync::Notify::new(),
        release: tokio::sync::Notify::new(),
    });
    let dir = tempfile::tempdir().unwrap();
    let c = clock();
    // The harshest settings: everything idle is expired, and no byte is allowed.
    let cache = builder(dir.path(), &c)
        .fetcher(Scheme::Https, fetcher.clone())
        .expiry(Duration::ZERO)
        .max_bytes(Some(0))
        .eviction_grace(Duration::from_secs(60))
        .build()
        .await
        .unwrap();
    let get = {
        let cache = cache.clone();
        tokio::spawn(async move { cache.get(&req("https://slow.example/m.wasm", "1")).await })
    };
    fetcher.halfway.notified().await;
    // Mid-write: nothing is indexed yet, and the temporary file survives a purge.
    let r = cache.purge().await.unwrap();
    assert_eq!(r.files_removed, 0, "{r:?}");
    fetcher.release.notify_one();
    let path = get.await.unwrap().unwrap();
    assert_module_at(&path, &module);
    // Just handed out: it has not been idle at all (expiry counts from the
    // last get) and it is within the eviction grace period.
    let r = cache.purge().await.unwrap();
    assert!(r.evicted.is_empty() && r.files_removed == 0, "{r:?}");
    assert_module_at(&path, &module);
    // Once idle past the grace period, the budget evicts it: this purge, or
    // the one the fetch queued when it went over budget (a loaded machine
    // may run that one only now).
    c.advance(Duration::from_secs(61));
    let r = cache.purge().await.unwrap();
    assert!(r.files_removed <= 1, "{r:?}");
    assert!(!path.exists(), "{r:?}");
}
