//! The downstream crate's checks: the file:// fetcher conforms, serves the
//! composed cache, and the store works alone; all through public APIs.

use std::sync::Arc;
use std::time::{Duration, Instant};

use wasm_cache::fetcher::{ErrorKind, FetchRequest, Fetcher, ModuleUrl};
use wasm_cache::{Cache, GetRequest, PullPolicy};
use wasm_cache_conformance::{Fixture, run_all};
use wasm_cache_downstream::FileFetcher;
use wasm_store_fs::{FsStore, ModuleSink, Sha256Digest};

fn module(n: usize) -> Vec<u8> {
    let mut m = b"\0asm\x01\0\0\0".to_vec();
    m.extend((0..n).map(|i| (i % 251) as u8));
    m
}

fn file_url(path: &std::path::Path) -> String {
    format!("file://{}", path.display())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn file_fetcher_passes_the_conformance_suite() {
    let dir = tempfile::tempdir().unwrap();
    let m = module(300_000);
    let path = dir.path().join("m.wasm");
    std::fs::write(&path, &m).unwrap();
    let fetcher = FileFetcher::new(dir.path()).unwrap();
    let url = ModuleUrl::parse(&file_url(&path.canonicalize().unwrap())).unwrap();
    run_all(&fetcher, &Fixture::new(url, m)).await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn file_fetcher_refuses_what_it_should() {
    let root = tempfile::tempdir().unwrap();
    let outside = tempfile::tempdir().unwrap();
    std::fs::write(outside.path().join("x.wasm"), module(10)).unwrap();
    let fetcher = FileFetcher::new(root.path()).unwrap();
    let req = |url: &str| {
        FetchRequest::new(
            ModuleUrl::parse(url).unwrap(),
            Instant::now() + Duration::from_secs(5),
        )
    };
    let missing = req(&file_url(&root.path().join("missing.wasm")));
    let e = fetcher.fetch(&missing, &mut Vec::new()).await.unwrap_err();
    assert_eq!(e.kind(), ErrorKind::NotFound, "{e}");
    let escape = req(&file_url(&outside.path().join("x.wasm")));
    let e = fetcher.fetch(&escape, &mut Vec::new()).await.unwrap_err();
    assert!(e.to_string().contains("outside the fetcher's root"), "{e}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn file_fetcher_serves_the_composed_cache() {
    let files = tempfile::tempdir().unwrap();
    let cache_dir = tempfile::tempdir().unwrap();
    let m = module(50_000);
    let path = files.path().join("filter.wasm");
    std::fs::write(&path, &m).unwrap();
    // Only our file:// fetcher (in a workspace build, feature unification may
    // have compiled wasm-cache's own fetchers in: leave them out explicitly).
    let cache = Cache::builder(cache_dir.path())
        .background_purge(false)
        .default_fetchers(false)
        .fetcher(
            FileFetcher::scheme().unwrap(),
            Arc::new(FileFetcher::new(files.path()).unwrap()),
        )
        .build()
        .await
        .unwrap();
    let url = file_url(&path.canonicalize().unwrap());
    let req = GetRequest::new(url.clone()).resource("ns/plugin", "1");
    let got = cache.get(&req).await.unwrap();
    assert_eq!(std::fs::read(&got).unwrap(), m);
    assert!(got.starts_with(cache_dir.path()));
    // Cached: the source may go away and the same resource version still hits.
    std::fs::remove_file(&path).unwrap();
    assert_eq!(cache.get(&req).await.unwrap(), got);
    // Always pulls again, and a missing file is the reference's not-found error.
    let again = GetRequest::new(url)
        .resource("ns/plugin", "2")
        .pull_policy(PullPolicy::Always);
    let e = cache.get(&again).await.unwrap_err();
    assert_eq!(e.kind(), ErrorKind::NotFound, "{e}");
    // Without a fetcher for a scheme, the scheme is unsupported.
    let e = cache
        .get(&GetRequest::new("https://127.0.0.1:9/x.wasm"))
        .await
        .unwrap_err();
    assert!(
        e.to_string()
            .contains("unsupported Wasm module downloading URL scheme"),
        "{e}"
    );
    cache.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_store_alone_ingests_through_module_sink() {
    let files = tempfile::tempdir().unwrap();
    let store_dir = tempfile::tempdir().unwrap();
    let m = module(200_000);
    let path = files.path().join("m.wasm");
    std::fs::write(&path, &m).unwrap();
    let (store, report) = FsStore::open(store_dir.path()).unwrap();
    assert_eq!(report.modules, 0);

    // A fetcher writes straight into the store's ingest (a `ModuleSink`).
    let fetcher = FileFetcher::new(files.path()).unwrap();
    let req = FetchRequest::new(
        ModuleUrl::parse(&file_url(&path.canonicalize().unwrap())).unwrap(),
        Instant::now() + Duration::from_secs(5),
    );
    let mut ingest = store.ingest(None, 1 << 20).unwrap();
    let fetched = fetcher.fetch(&req, &mut ingest).await.unwrap();
    assert_eq!(fetched.size, m.len() as u64);
    let committed = ingest.commit().unwrap();
    assert_eq!(std::fs::read(&committed.path).unwrap(), m);
    assert!(store.contains(&committed.digest));

    // By hand, with an expected digest that is wrong: refused, nothing stored.
    let wrong = Sha256Digest::from_bytes([7; 32]);
    let mut ingest = store.ingest(Some(wrong), 1 << 20).unwrap();
    ingest.write(&m).unwrap();
    let e = ingest.commit().unwrap_err();
    assert!(e.is_integrity(), "{e}");
    assert!(!store.contains(&wrong));
    assert_eq!(store.list().len(), 1);
}
