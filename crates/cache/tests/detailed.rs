//! `Cache::get_detailed` and `Cache::resolve` (what the command's `--json`
//! and `resolve` print), and the size hint fetchers give a progress display;
//! against a real HTTP server and a real registry on 127.0.0.1.

use std::time::{Duration, Instant};

use wasm_cache::{Cache, Fetcher, GetRequest, HttpFetcher, ModuleUrl, Sha256Digest};
use wasm_cache_core::{FetchRequest, ModuleSink};
use wasm_cache_testkit::http::{Route, ServerOptions, TestServer};
use wasm_cache_testkit::images::{push_cncf_artifact, push_oci_image};
use wasm_cache_testkit::modules::{sample_module, sha256_hex};
use wasm_cache_testkit::registry::{Registry, RegistryKind};

fn digest(hex: &str) -> Sha256Digest {
    Sha256Digest::parse(hex).unwrap()
}

#[tokio::test]
async fn get_detailed_reports_hash_size_origin_and_whether_it_was_cached() {
    let s = TestServer::start(ServerOptions::plain());
    let module = sample_module(12_345, 1);
    s.route("/m.wasm", Route::bytes(module.clone()));
    let r = Registry::start(RegistryKind::Plain);
    let oci = sample_module(9_999, 2);
    let pushed = push_oci_image(&r, "org/m", "v1", &oci).await;
    let dir = tempfile::tempdir().unwrap();
    let cache = Cache::builder(dir.path())
        .insecure_hosts([r.host()])
        .build()
        .await
        .unwrap();

    let req = GetRequest::new(s.url("/m.wasm")).resource("ns/p", "1");
    let first = cache.get_detailed(&req).await.unwrap();
    assert!(!first.cached);
    assert_eq!(first.sha256, digest(&sha256_hex(&module)));
    assert_eq!(first.size, 12_345);
    assert_eq!(first.manifest_digest, None);
    assert_eq!(std::fs::read(&first.path).unwrap(), module);
    let again = cache.get_detailed(&req).await.unwrap();
    assert!(again.cached);
    assert_eq!(again.path, first.path);
    assert_eq!(again.size, 12_345);
    // `get` is the same lookup.
    assert_eq!(cache.get(&req).await.unwrap(), first.path);
    assert_eq!(s.hits("/m.wasm"), 1);

    let req = GetRequest::new(pushed.url.clone());
    let o = cache.get_detailed(&req).await.unwrap();
    assert!(!o.cached);
    assert_eq!(o.sha256, digest(&sha256_hex(&oci)));
    assert_eq!(o.manifest_digest, Some(digest(&pushed.manifest_digest)));
    assert_eq!(o.size, 9_999);
    let o = cache.get_detailed(&req).await.unwrap();
    assert!(o.cached);
    assert_eq!(o.manifest_digest, Some(digest(&pushed.manifest_digest)));
    cache.shutdown().await.unwrap();

    // After a restart: recovered, still reported in full.
    let cache = Cache::builder(dir.path())
        .insecure_hosts([r.host()])
        .build()
        .await
        .unwrap();
    let o = cache.get_detailed(&req).await.unwrap();
    assert!(o.cached);
    assert_eq!(o.size, 9_999);
    assert_eq!(o.manifest_digest, Some(digest(&pushed.manifest_digest)));
}

#[tokio::test]
async fn resolve_names_the_current_digest_and_stores_nothing() {
    let s = TestServer::start(ServerOptions::plain());
    let module = sample_module(5_000, 3);
    s.route("/m.wasm", Route::bytes(module.clone()));
    s.route("/text", Route::bytes(b"not a wasm module".to_vec()));
    let r = Registry::start(RegistryKind::Plain);
    let pushed = push_oci_image(&r, "org/r", "v1", &sample_module(4_000, 4)).await;
    let dir = tempfile::tempdir().unwrap();
    let cache = Cache::builder(dir.path())
        .insecure_hosts([r.host()])
        .build()
        .await
        .unwrap();

    let oci = cache
        .resolve(&GetRequest::new(pushed.url.clone()), false)
        .await
        .unwrap()
        .unwrap();
    assert!(oci.manifest);
    assert_eq!(oci.digest, digest(&pushed.manifest_digest));
    assert!(!r.sync_requests().iter().any(|q| q.is_blob_get()));

    let http = GetRequest::new(s.url("/m.wasm"));
    assert_eq!(cache.resolve(&http, false).await.unwrap(), None);
    assert_eq!(s.hits("/m.wasm"), 0);
    let got = cache.resolve(&http, true).await.unwrap().unwrap();
    assert!(!got.manifest);
    assert_eq!(got.digest, digest(&sha256_hex(&module)));
    assert_eq!(got.size, Some(5_000));
    assert!(cache.entries().is_empty());
    let stored = std::fs::read_dir(cache.dir())
        .unwrap()
        .filter(|e| {
            e.as_ref()
                .unwrap()
                .path()
                .extension()
                .is_some_and(|x| x == "wasm")
        })
        .count();
    assert_eq!(stored, 0, "resolve stored a module");

    let e = cache
        .resolve(&GetRequest::new(s.url("/text")), true)
        .await
        .unwrap_err();
    assert_eq!(e.kind(), wasm_cache::ErrorKind::InvalidModule, "{e}");
    let e = cache
        .resolve(&GetRequest::new("ftp://127.0.0.1/m.wasm"), true)
        .await
        .unwrap_err();
    assert_eq!(e.kind(), wasm_cache::ErrorKind::InvalidInput);
}

/// Records the size hint and the bytes.
#[derive(Default)]
struct Hinted {
    hint: Option<u64>,
    len: u64,
}

impl ModuleSink for Hinted {
    fn write(&mut self, chunk: &[u8]) -> std::io::Result<()> {
        self.len += chunk.len() as u64;
        Ok(())
    }
    fn size_hint(&mut self, len: u64) {
        self.hint = Some(len);
    }
}

#[tokio::test]
async fn fetchers_announce_the_module_length_when_they_know_it() {
    let s = TestServer::start(ServerOptions::plain());
    let module = sample_module(70_000, 5);
    s.route("/plain.wasm", Route::bytes(module.clone()));
    s.route("/chunked.wasm", Route::Chunked(module.clone().into()));
    let http = HttpFetcher::builder().build().unwrap();
    let deadline = Instant::now() + Duration::from_secs(20);
    let fetch = |path: &str| {
        let url = ModuleUrl::parse(&s.url(path)).unwrap();
        FetchRequest::new(url, deadline)
    };
    let mut sink = Hinted::default();
    http.fetch(&fetch("/plain.wasm"), &mut sink).await.unwrap();
    assert_eq!((sink.hint, sink.len), (Some(70_000), 70_000));
    let mut sink = Hinted::default();
    http.fetch(&fetch("/chunked.wasm"), &mut sink)
        .await
        .unwrap();
    assert_eq!((sink.hint, sink.len), (None, 70_000));

    // OCI: a raw `application/wasm` layer's size is the module's; a tar+gzip
    // layer's is not.
    let r = Registry::start(RegistryKind::Plain);
    let oci = wasm_cache::OciFetcher::builder()
        .insecure_hosts([r.host()])
        .build()
        .unwrap();
    let raw = push_cncf_artifact(&r, "org/raw", "v1", &module).await;
    let boxed = push_oci_image(&r, "org/boxed", "v1", &module).await;
    for (pushed, hint) in [(raw, Some(70_000)), (boxed, None)] {
        let req = FetchRequest::new(ModuleUrl::parse(&pushed.url).unwrap(), deadline);
        let mut sink = Hinted::default();
        oci.fetch(&req, &mut sink).await.unwrap();
        assert_eq!((sink.hint, sink.len), (hint, 70_000), "{}", pushed.url);
    }
}
