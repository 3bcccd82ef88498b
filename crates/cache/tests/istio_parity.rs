//! Istio parity: every case of Istio's `TestWasmCache` table
//! (`pkg/wasm/cache_test.go`), one test per case, ported as behaviour through
//! the public API: a real `docker-registry` and a real HTTP server on
//! 127.0.0.1, the injected [`ManualClock`], request counts from the registry's
//! access log and the server's counters.
//!
//! Istio seeds its cache's private maps; here the initial state of each case is
//! built with `get`s of the public API, then the counters are read, then the
//! case's own `get` runs. Where the reference's initial state cannot be reached
//! through the API (an entry whose URL has no checksum record, a record without
//! an entry) the closest reachable state is used and the case's doc comment
//! says so.
//!
//! The four hit-recording cases ("cache hit", "cache hit for tagged OCI url
//! with digest", "do not pull in spite of pull-always policy due to checksum",
//! "do not pull in spite of latest tag due to checksum") also check what
//! Istio's `touchEntry` -> `updateChecksum` implies: after the hit, the next
//! unpinned request for that URL and resource version makes no request at all.

mod common;

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use common::{RES, assert_module_at, builder, clock, req};
use wasm_cache::{Cache, ErrorKind, ManualClock, PullPolicy};
use wasm_cache_testkit::http::{Route, ServerOptions, TestServer};
use wasm_cache_testkit::images::{
    DOCKER_MANIFEST, OCI_MANIFEST, Pushed, digest_of, push_blob, push_docker_image,
    push_manifest_json,
};
use wasm_cache_testkit::modules::{sha256_hex, tar};
use wasm_cache_testkit::registry::{Registry, RegistryKind};

/// Istio's wasm header: magic number and version 1.
const WASM_HEADER: &[u8] = b"\0asm\x01\0\0\0";

/// The same wait Istio's purge cases allow (`checkPurgeTimeout`).
const CHECK_PURGE_TIMEOUT: Duration = Duration::from_secs(5);

fn with_header(tail: &[u8]) -> Vec<u8> {
    let mut v = WASM_HEADER.to_vec();
    v.extend_from_slice(tail);
    v
}

fn versions(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
    pairs
        .iter()
        .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
        .collect()
}

/// Entries as (module name, checksum hex), sorted.
fn keys(cache: &Cache) -> Vec<(String, String)> {
    let mut v: Vec<_> = cache
        .entries()
        .into_iter()
        .map(|e| (e.key.name.clone(), e.key.checksum.to_hex()))
        .collect();
    v.sort();
    v
}

/// The checksum record of `url` as (checksum hex, versions by resource).
fn record(cache: &Cache, url: &str) -> Option<(String, BTreeMap<String, String>)> {
    cache
        .checksum_record(url)
        .map(|r| (r.checksum.to_hex(), r.resource_versions))
}

/// Polls `cond` every 10 ms until it holds or `limit` passes.
async fn eventually(limit: Duration, mut cond: impl FnMut() -> bool) -> bool {
    let deadline = Instant::now() + limit;
    loop {
        if cond() {
            return true;
        }
        if Instant::now() >= deadline {
            return false;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

// ---------------------------------------------------------------- HTTP cases

/// Istio's HTTP server: every path serves `httpData`, except
/// `/different-url` (`httpData` + "different data") and
/// `/invalid-wasm-header` ("invalid binary").
struct Http {
    server: TestServer,
    data: Vec<u8>,
    data_sum: String,
    invalid: Vec<u8>,
    dir: tempfile::TempDir,
    clock: ManualClock,
    cache: Cache,
}

const DATA_PATH: &str = "/module.wasm";
const DIFFERENT_PATH: &str = "/module.wasm/different-url";
const INVALID_PATH: &str = "/module.wasm/invalid-wasm-header";

impl Http {
    async fn start() -> Self {
        let data = with_header(b"data");
        let invalid = b"invalid binary".to_vec();
        let server = TestServer::start(ServerOptions::plain());
        server.route(DATA_PATH, Route::bytes(data.clone()));
        let mut different = data.clone();
        different.extend_from_slice(b"different data");
        server.route(DIFFERENT_PATH, Route::bytes(different));
        server.route(INVALID_PATH, Route::bytes(invalid.clone()));
        let dir = tempfile::tempdir().unwrap();
        let clock = clock();
        let cache = builder(dir.path(), &clock).build().await.unwrap();
        Self {
            data_sum: sha256_hex(&data),
            server,
            data,
            invalid,
            dir,
            clock,
            cache,
        }
    }

    /// Istio's `ts.URL`.
    fn url(&self) -> String {
        self.server.url(DATA_PATH)
    }

    /// Requests the server received on every path (Istio's `tsNumRequest`).
    fn requests(&self) -> usize {
        [DATA_PATH, DIFFERENT_PATH, INVALID_PATH]
            .iter()
            .map(|p| self.server.hits(p))
            .sum()
    }
}

/// Istio: "cache miss".
#[tokio::test]
async fn cache_miss() {
    let h = Http::start().await;
    let url = h.url();
    let p = h
        .cache
        .get(&req(&url, "0").checksum(h.data_sum.clone()))
        .await
        .unwrap();
    assert_module_at(&p, &h.data);
    assert_eq!(h.requests(), 1, "a miss downloads once");
    assert_eq!(keys(&h.cache), vec![(url.clone(), h.data_sum.clone())]);
    assert_eq!(
        record(&h.cache, &url),
        Some((h.data_sum.clone(), versions(&[(RES, "0")])))
    );
}

/// Istio: "cache hit".
///
/// Istio seeds the entry with no checksum record; the API can only make the
/// entry with a download, which records this resource at version "123456".
/// The hit (checksum pinned, version "0") must touch the entry and record the
/// URL's checksum for version "0", like Istio's `touchEntry`; then an unpinned
/// request for version "0" is served without a request.
#[tokio::test]
async fn cache_hit() {
    let h = Http::start().await;
    let url = h.url();
    let p = h
        .cache
        .get(&req(&url, "123456").checksum(h.data_sum.clone()))
        .await
        .unwrap();
    assert_eq!(h.requests(), 1);
    let before = h.cache.entries()[0].last_use;
    h.clock.advance(Duration::from_secs(5));

    let got = h
        .cache
        .get(&req(&url, "0").checksum(h.data_sum.clone()))
        .await
        .unwrap();
    assert_eq!(got, p);
    assert_module_at(&got, &h.data);
    assert_eq!(h.requests(), 1, "a hit must not visit the server");
    let entries = h.cache.entries();
    assert_eq!(entries.len(), 1);
    assert!(
        entries[0].last_use > before,
        "the hit must update the entry's last use"
    );
    assert_eq!(
        record(&h.cache, &url),
        Some((h.data_sum.clone(), versions(&[(RES, "0")]))),
        "a hit records the URL's checksum and the resource version like a download"
    );
    // The next unpinned request for this URL and version: no request.
    assert_eq!(h.cache.get(&req(&url, "0")).await.unwrap(), p);
    assert_eq!(
        h.requests(),
        1,
        "after a hit, an unpinned request for the same URL and version must not visit the server"
    );
}

/// Istio: "invalid scheme".
#[tokio::test]
async fn invalid_scheme() {
    let h = Http::start().await;
    let e = h
        .cache
        .get(&req("foo://abc", "").checksum(h.data_sum.clone()))
        .await
        .unwrap_err();
    assert_eq!(
        e.to_string(),
        "unsupported Wasm module downloading URL scheme: foo"
    );
    assert_eq!(h.requests(), 0);
    assert!(keys(&h.cache).is_empty());
    assert!(common::module_files(h.dir.path()).is_empty());
}

/// Istio: "download failure".
///
/// Istio fetches `https://-invalid-url` (a name that does not resolve); no
/// traffic may leave this machine, so the failing upstream here is a loopback
/// port nobody listens on. Five attempts, then the reference's wrapper.
#[tokio::test]
async fn download_failure() {
    let h = Http::start().await;
    let port = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        l.local_addr().unwrap().port()
    };
    let url = format!("https://127.0.0.1:{port}/m.wasm");
    let e = h.cache.get(&req(&url, "")).await.unwrap_err();
    assert!(
        e.to_string()
            .starts_with("wasm module download failed after 5 attempts, last error: "),
        "{e}"
    );
    assert!(e.to_string().contains(&format!("127.0.0.1:{port}")), "{e}");
    assert!(keys(&h.cache).is_empty());
    assert!(h.cache.checksum_record(&url).is_none());
    assert!(common::module_files(h.dir.path()).is_empty());
}

/// Istio: "wrong checksum".
///
/// Istio's checksum `"wrongchecksum\n"` is malformed: REFERENCE §7 refuses it
/// before any request, naming it. A well-formed wrong checksum downloads and
/// fails with the reference's wording; nothing is stored or recorded.
#[tokio::test]
async fn wrong_checksum() {
    let h = Http::start().await;
    let url = h.url();
    let e = h
        .cache
        .get(&req(&url, "").checksum("wrongchecksum\n"))
        .await
        .unwrap_err();
    assert!(
        e.to_string()
            .starts_with("invalid sha256 checksum \"wrongchecksum"),
        "{e}"
    );
    assert_eq!(e.kind(), ErrorKind::InvalidInput);
    assert_eq!(h.requests(), 0, "a malformed checksum is refused first");

    let wrong = sha256_hex(b"wrongchecksum");
    let e = h
        .cache
        .get(&req(&url, "").checksum(wrong.clone()))
        .await
        .unwrap_err();
    assert_eq!(
        e.to_string(),
        format!(
            "module downloaded from {url} has checksum {}, which does not match: {wrong}",
            h.data_sum
        )
    );
    assert_eq!(h.requests(), 1);
    assert!(keys(&h.cache).is_empty());
    assert!(h.cache.checksum_record(&url).is_none());
    assert!(common::module_files(h.dir.path()).is_empty());
}

/// Istio: "different url same checksum".
///
/// The URL changed but not the checksum: the download proceeds, fails the
/// checksum, and the module cached for the first URL stays as it was.
#[tokio::test]
async fn different_url_same_checksum() {
    let h = Http::start().await;
    let url = h.url();
    let p = h
        .cache
        .get(&req(&url, "").checksum(h.data_sum.clone()))
        .await
        .unwrap();
    let mark = h.requests();
    let different = h.server.url(DIFFERENT_PATH);
    let e = h
        .cache
        .get(&req(&different, "").checksum(h.data_sum.clone()))
        .await
        .unwrap_err();
    assert!(
        e.to_string()
            .starts_with(&format!("module downloaded from {different} has checksum ")),
        "{e}"
    );
    assert_eq!(h.requests(), mark + 1, "the new URL is downloaded");
    assert_eq!(keys(&h.cache), vec![(url, h.data_sum.clone())]);
    assert!(h.cache.checksum_record(&different).is_none());
    assert_module_at(&p, &h.data);
    assert_eq!(common::module_files(h.dir.path()).len(), 1);
}

/// Istio: "invalid wasm header".
#[tokio::test]
async fn invalid_wasm_header() {
    let h = Http::start().await;
    let url = h.url();
    let p = h
        .cache
        .get(&req(&url, "").checksum(h.data_sum.clone()))
        .await
        .unwrap();
    let mark = h.requests();
    let invalid = h.server.url(INVALID_PATH);
    let e = h
        .cache
        .get(&req(&invalid, "").checksum(sha256_hex(&h.invalid)))
        .await
        .unwrap_err();
    assert!(
        e.to_string()
            .starts_with(&format!("fetched Wasm binary from {invalid} is invalid")),
        "{e}"
    );
    assert_eq!(e.kind(), ErrorKind::InvalidModule);
    assert_eq!(h.requests(), mark + 1);
    assert_eq!(keys(&h.cache), vec![(url, h.data_sum.clone())]);
    assert!(h.cache.checksum_record(&invalid).is_none());
    assert_module_at(&p, &h.data);
    assert_eq!(common::module_files(h.dir.path()).len(), 1);
}

/// Istio: "purge on expiry".
///
/// Expiry 1 ms with the background purge running every few milliseconds: the
/// module, its entry and the URL's record are gone within Istio's 5 s.
#[tokio::test]
async fn purge_on_expiry() {
    let h = Http::start().await;
    let c = clock();
    let cache = Cache::builder(h.dir.path().join("purging"))
        .clock(Arc::new(c.clone()))
        .purge_interval(Duration::from_millis(5))
        .expiry(Duration::from_millis(1))
        .build()
        .await
        .unwrap();
    let url = h.url();
    let p = cache
        .get(&req(&url, "").checksum(h.data_sum.clone()))
        .await
        .unwrap();
    assert_module_at(&p, &h.data);
    assert_eq!(h.requests(), 1);
    c.advance(Duration::from_secs(1));
    let purged = eventually(CHECK_PURGE_TIMEOUT, || {
        !p.exists() && cache.entries().is_empty() && cache.checksum_record(&url).is_none()
    })
    .await;
    assert!(
        purged,
        "the module was not purged within {CHECK_PURGE_TIMEOUT:?}: file exists {}, entries {:?}",
        p.exists(),
        keys(&cache)
    );
    assert!(common::module_files(cache.dir()).is_empty());
    cache.shutdown().await.unwrap();
}

// ----------------------------------------------------------------- OCI cases

/// Istio's registry: a Docker image with `plugin.wasm` at
/// `test/valid/docker:v0.1.0` and the same manifest at `:latest`.
struct Oci {
    registry: Registry,
    module: Vec<u8>,
    pushed: Pushed,
    latest_url: String,
    dir: tempfile::TempDir,
    clock: ManualClock,
    cache: Cache,
}

const REPO: &str = "test/valid/docker";

impl Oci {
    async fn start() -> Self {
        let registry = Registry::start(RegistryKind::Plain);
        let module = with_header(b"this is wasm plugin");
        let pushed = push_docker_image(&registry, REPO, "v0.1.0", &module).await;
        let latest =
            push_manifest_json(&registry, REPO, "latest", DOCKER_MANIFEST, &pushed.manifest).await;
        assert_eq!(latest, pushed.manifest_digest);
        let dir = tempfile::tempdir().unwrap();
        let clock = clock();
        let cache = builder(dir.path(), &clock)
            .insecure_hosts([registry.host()])
            .build()
            .await
            .unwrap();
        Self {
            latest_url: registry.url(&format!("{REPO}:latest")),
            registry,
            module,
            pushed,
            dir,
            clock,
            cache,
        }
    }

    /// `ociURLWithTag`.
    fn tag_url(&self) -> &str {
        &self.pushed.url
    }

    /// `ociURLWithDigest`.
    fn digest_url(&self) -> &str {
        &self.pushed.digest_url
    }

    /// `dockerImageDigest` (hex).
    fn digest(&self) -> String {
        self.pushed
            .manifest_digest
            .trim_start_matches("sha256:")
            .to_owned()
    }

    /// `urlAsResourceName(ociURLWithTag)`.
    fn name(&self) -> String {
        format!("oci://{}/{REPO}", self.registry.host())
    }

    /// Every request the registry logged so far; marks where a case starts.
    fn mark(&self) -> usize {
        self.registry.sync_requests().len()
    }

    /// (manifest reads, blob GETs, all requests) since `mark`.
    fn since(&self, mark: usize) -> (usize, usize, usize) {
        let all = self.registry.sync_requests();
        let new = &all[mark.min(all.len())..];
        (
            new.iter().filter(|q| q.is_manifest_read()).count(),
            new.iter().filter(|q| q.is_blob_get()).count(),
            new.len(),
        )
    }

    /// Initial state "entry for the image, no checksum record": a pull by
    /// digest caches the module under the repository's name and records no
    /// URL (an `@` URL never is).
    async fn seed_entry_only(&self) {
        let p = self.cache.get(&req(self.digest_url(), "")).await.unwrap();
        assert_module_at(&p, &self.module);
        assert_eq!(keys(&self.cache), vec![(self.name(), self.digest())]);
        assert!(self.cache.checksum_record(self.tag_url()).is_none());
        assert!(self.cache.checksum_record(&self.latest_url).is_none());
    }

    /// Initial state "entry for the image, and `url` recorded with this
    /// resource at version 123456".
    async fn seed_with_record(&self, url: &str) {
        let p = self.cache.get(&req(url, "123456")).await.unwrap();
        assert_module_at(&p, &self.module);
        assert_eq!(keys(&self.cache), vec![(self.name(), self.digest())]);
        assert_eq!(
            record(&self.cache, url),
            Some((self.digest(), versions(&[(RES, "123456")])))
        );
    }

    fn assert_state(&self, url: &str, version: &str) {
        assert_eq!(keys(&self.cache), vec![(self.name(), self.digest())]);
        assert_eq!(
            record(&self.cache, url),
            Some((self.digest(), versions(&[(RES, version)])))
        );
    }
}

/// Istio: "fetch oci without digest".
#[tokio::test]
async fn fetch_oci_without_digest() {
    let o = Oci::start().await;
    let mark = o.mark();
    let p = o.cache.get(&req(o.tag_url(), "0")).await.unwrap();
    assert_module_at(&p, &o.module);
    let (manifests, blobs, _) = o.since(mark);
    assert!(manifests >= 1, "the tag must be resolved");
    assert_eq!(blobs, 1, "exactly the module's layer");
    o.assert_state(o.tag_url(), "0");
}

/// Istio: "fetch oci with digest" (the tagged URL, the manifest digest given
/// as checksum).
#[tokio::test]
async fn fetch_oci_with_digest() {
    let o = Oci::start().await;
    let mark = o.mark();
    let p = o
        .cache
        .get(&req(o.tag_url(), "0").checksum(o.digest()))
        .await
        .unwrap();
    assert_module_at(&p, &o.module);
    let (manifests, blobs, _) = o.since(mark);
    assert!(manifests >= 1);
    assert_eq!(blobs, 1);
    o.assert_state(o.tag_url(), "0");
}

/// Istio: "cache hit for tagged OCI url with digest".
///
/// The entry exists and the tagged URL has no record; the checksum is given:
/// served without a request, and (Istio's `touchEntry`) the tagged URL's
/// checksum and this resource's version are recorded, so the next unpinned
/// request for that URL and version makes no request either.
#[tokio::test]
async fn cache_hit_for_tagged_oci_url_with_digest() {
    let o = Oci::start().await;
    o.seed_entry_only().await;
    let before = o.cache.entries()[0].last_use;
    o.clock.advance(Duration::from_secs(5));
    let mark = o.mark();
    let p = o
        .cache
        .get(&req(o.tag_url(), "0").checksum(o.digest()))
        .await
        .unwrap();
    assert_module_at(&p, &o.module);
    assert_eq!(o.since(mark).2, 0, "a hit must not touch the registry");
    assert!(o.cache.entries()[0].last_use > before);
    o.assert_state(o.tag_url(), "0");
    for policy in [PullPolicy::Unspecified, PullPolicy::Always] {
        let next = req(o.tag_url(), "0").pull_policy(policy);
        assert_eq!(o.cache.get(&next).await.unwrap(), p);
        assert_eq!(
            o.since(mark).2,
            0,
            "after the hit, an unpinned {policy:?} request for the same URL and version must not touch the registry"
        );
    }
}

/// Istio: "cache hit for tagged OCI url without digest".
#[tokio::test]
async fn cache_hit_for_tagged_oci_url_without_digest() {
    let o = Oci::start().await;
    o.seed_with_record(o.tag_url()).await;
    let mark = o.mark();
    let p = o.cache.get(&req(o.tag_url(), "0")).await.unwrap();
    assert_module_at(&p, &o.module);
    assert_eq!(o.since(mark).2, 0, "a hit must not touch the registry");
    o.assert_state(o.tag_url(), "0");
}

/// Istio: "cache miss for tagged OCI url without digest".
///
/// No record for the tag: the manifest is resolved, its digest names a cached
/// module, so no layer is downloaded (REFERENCE §3.5).
#[tokio::test]
async fn cache_miss_for_tagged_oci_url_without_digest() {
    let o = Oci::start().await;
    o.seed_entry_only().await;
    let mark = o.mark();
    let p = o.cache.get(&req(o.tag_url(), "0")).await.unwrap();
    assert_module_at(&p, &o.module);
    let (manifests, blobs, _) = o.since(mark);
    assert!(manifests >= 1, "the tag must be resolved");
    assert_eq!(blobs, 0, "the digest is cached: no layer download");
    o.assert_state(o.tag_url(), "0");
}

/// Istio: "cache hit for OCI url suffixed by digest".
#[tokio::test]
async fn cache_hit_for_oci_url_suffixed_by_digest() {
    let o = Oci::start().await;
    o.seed_entry_only().await;
    let mark = o.mark();
    let p = o.cache.get(&req(o.digest_url(), "0")).await.unwrap();
    assert_module_at(&p, &o.module);
    assert_eq!(o.since(mark).2, 0);
    assert_eq!(keys(&o.cache), vec![(o.name(), o.digest())]);
    assert!(o.cache.checksum_record(o.digest_url()).is_none());
    assert!(o.cache.checksum_record(o.tag_url()).is_none());
}

/// Istio: "pull due to pull-always policy when cache hit".
#[tokio::test]
async fn pull_due_to_pull_always_policy_when_cache_hit() {
    let o = Oci::start().await;
    o.seed_with_record(o.tag_url()).await;
    let mark = o.mark();
    let p = o
        .cache
        .get(&req(o.tag_url(), "0").pull_policy(PullPolicy::Always))
        .await
        .unwrap();
    assert_module_at(&p, &o.module);
    let (manifests, blobs, _) = o.since(mark);
    assert!(
        manifests >= 1,
        "Always with a new version asks the registry"
    );
    assert_eq!(blobs, 0, "the digest did not change: no layer download");
    o.assert_state(o.tag_url(), "0");
}

/// Istio: "do not pull due to resourceVersion is the same".
#[tokio::test]
async fn do_not_pull_due_to_resource_version_is_the_same() {
    let o = Oci::start().await;
    o.seed_with_record(o.tag_url()).await;
    let mark = o.mark();
    let p = o
        .cache
        .get(&req(o.tag_url(), "123456").pull_policy(PullPolicy::Always))
        .await
        .unwrap();
    assert_module_at(&p, &o.module);
    assert_eq!(o.since(mark).2, 0);
    o.assert_state(o.tag_url(), "123456");
}

/// Istio: "pull due to if-not-present policy when cache hit" (the name is
/// Istio's; the case expects no pull).
#[tokio::test]
async fn pull_due_to_if_not_present_policy_when_cache_hit() {
    let o = Oci::start().await;
    o.seed_with_record(o.tag_url()).await;
    let mark = o.mark();
    let p = o
        .cache
        .get(&req(o.tag_url(), "0").pull_policy(PullPolicy::IfNotPresent))
        .await
        .unwrap();
    assert_module_at(&p, &o.module);
    assert_eq!(o.since(mark).2, 0);
    o.assert_state(o.tag_url(), "0");
}

/// Istio: "do not pull in spite of pull-always policy due to checksum".
///
/// Entry cached, no record for the tag; `Always` with the checksum pinned is a
/// pure content lookup. The hit records the tag's checksum and version "0", so
/// the next unpinned request (under `Always` too) makes no request.
#[tokio::test]
async fn do_not_pull_in_spite_of_pull_always_policy_due_to_checksum() {
    let o = Oci::start().await;
    o.seed_entry_only().await;
    let mark = o.mark();
    let p = o
        .cache
        .get(
            &req(o.tag_url(), "0")
                .checksum(o.digest())
                .pull_policy(PullPolicy::Always),
        )
        .await
        .unwrap();
    assert_module_at(&p, &o.module);
    assert_eq!(o.since(mark).2, 0);
    o.assert_state(o.tag_url(), "0");
    for policy in [PullPolicy::Always, PullPolicy::Unspecified] {
        let next = req(o.tag_url(), "0").pull_policy(policy);
        assert_eq!(o.cache.get(&next).await.unwrap(), p);
        assert_eq!(
            o.since(mark).2,
            0,
            "after the hit, an unpinned {policy:?} request for the same URL and version must not touch the registry"
        );
    }
}

/// Istio: "pull due to latest tag".
#[tokio::test]
async fn pull_due_to_latest_tag() {
    let o = Oci::start().await;
    o.seed_with_record(&o.latest_url).await;
    let mark = o.mark();
    let p = o.cache.get(&req(&o.latest_url, "0")).await.unwrap();
    assert_module_at(&p, &o.module);
    let (manifests, blobs, _) = o.since(mark);
    assert!(
        manifests >= 1,
        ":latest with a new version asks the registry"
    );
    assert_eq!(blobs, 0);
    o.assert_state(&o.latest_url, "0");
}

/// Istio: "do not pull in spite of latest tag due to checksum".
///
/// The hit with the checksum pinned records `:latest`'s checksum for version
/// "0"; the next unpinned request for `:latest` at version "0" (which would
/// pull for a version the record does not hold) makes no request.
#[tokio::test]
async fn do_not_pull_in_spite_of_latest_tag_due_to_checksum() {
    let o = Oci::start().await;
    o.seed_with_record(&o.latest_url).await;
    let mark = o.mark();
    let p = o
        .cache
        .get(&req(&o.latest_url, "0").checksum(o.digest()))
        .await
        .unwrap();
    assert_module_at(&p, &o.module);
    assert_eq!(o.since(mark).2, 0);
    o.assert_state(&o.latest_url, "0");
    assert_eq!(o.cache.get(&req(&o.latest_url, "0")).await.unwrap(), p);
    assert_eq!(
        o.since(mark).2,
        0,
        "after the hit, an unpinned request for :latest at the same version must not touch the registry"
    );
}

/// Istio: "do not pull in spite of latest tag due to IfNotPresent policy".
#[tokio::test]
async fn do_not_pull_in_spite_of_latest_tag_due_to_if_not_present_policy() {
    let o = Oci::start().await;
    o.seed_with_record(&o.latest_url).await;
    let mark = o.mark();
    let p = o
        .cache
        .get(&req(&o.latest_url, "0").pull_policy(PullPolicy::IfNotPresent))
        .await
        .unwrap();
    assert_module_at(&p, &o.module);
    assert_eq!(o.since(mark).2, 0);
    o.assert_state(&o.latest_url, "0");
}

/// Istio: "purge OCI image on expiry".
///
/// Istio seeds an entry under another name (`<name>-purged`) referencing the
/// tagged URL, a record for that URL and an unrelated record (`test-url`). Here
/// the same image is pushed to a second repository and pulled by tag (entry
/// under another name plus its URL's record); a record without an entry cannot
/// be made through the API. The pull by digest misses (other name) and visits
/// the registry; with a 1 ms expiry the background purge then removes every
/// module, entry and record within Istio's 5 s.
#[tokio::test]
async fn purge_oci_image_on_expiry() {
    let o = Oci::start().await;
    let other =
        push_docker_image(&o.registry, "test/valid/docker-purged", "v0.1.0", &o.module).await;
    let c = clock();
    let cache = Cache::builder(o.dir.path().join("purging"))
        .clock(Arc::new(c.clone()))
        .insecure_hosts([o.registry.host()])
        .purge_interval(Duration::from_millis(5))
        .expiry(Duration::from_millis(1))
        .build()
        .await
        .unwrap();
    cache.get(&req(&other.url, "123456")).await.unwrap();
    assert!(cache.checksum_record(&other.url).is_some());
    let mark = o.mark();
    let p = cache.get(&req(o.digest_url(), "0")).await.unwrap();
    assert_module_at(&p, &o.module);
    let (manifests, blobs, _) = o.since(mark);
    assert!(
        manifests + blobs >= 1,
        "the pull by digest visits the registry"
    );
    c.advance(Duration::from_secs(1));
    let purged = eventually(CHECK_PURGE_TIMEOUT, || {
        cache.entries().is_empty()
            && cache.checksum_record(&other.url).is_none()
            && common::module_files(cache.dir()).is_empty()
    })
    .await;
    assert!(
        purged,
        "not purged within {CHECK_PURGE_TIMEOUT:?}: entries {:?}, files {:?}",
        keys(&cache),
        common::module_files(cache.dir())
    );
    cache.shutdown().await.unwrap();
}

/// Istio: "fetch oci timed out" (request timeout 0: no request is made).
#[tokio::test]
async fn fetch_oci_timed_out() {
    let o = Oci::start().await;
    let mark = o.mark();
    let e = o
        .cache
        .get(&req(o.tag_url(), "0").timeout(Duration::ZERO))
        .await
        .unwrap_err();
    assert_eq!(e.kind(), ErrorKind::Timeout, "{e}");
    assert!(
        e.to_string()
            .starts_with(&format!("fetching {} timed out", o.tag_url())),
        "{e}"
    );
    assert_eq!(o.since(mark).2, 0, "no request after an expired deadline");
    assert!(keys(&o.cache).is_empty());
    assert!(o.cache.checksum_record(o.tag_url()).is_none());
    assert!(common::module_files(o.dir.path()).is_empty());
}

/// Istio: "fetch oci with wrong digest".
///
/// Istio's `"wrongdigest"` is malformed and refused before any request
/// (REFERENCE §7); a well-formed wrong digest gets the reference's mismatch
/// wording with the image's real digest. Nothing is stored or recorded.
#[tokio::test]
async fn fetch_oci_with_wrong_digest() {
    let o = Oci::start().await;
    let mark = o.mark();
    let e = o
        .cache
        .get(&req(o.tag_url(), "0").checksum("wrongdigest"))
        .await
        .unwrap_err();
    assert!(
        e.to_string()
            .starts_with("invalid sha256 checksum \"wrongdigest\""),
        "{e}"
    );
    assert_eq!(o.since(mark).2, 0);

    let wrong = sha256_hex(b"wrongdigest");
    let e = o
        .cache
        .get(&req(o.tag_url(), "0").checksum(wrong.clone()))
        .await
        .unwrap_err();
    assert_eq!(
        e.to_string(),
        format!(
            "module downloaded from {} has checksum {}, which does not match: {wrong}",
            o.tag_url(),
            o.digest()
        )
    );
    assert!(o.since(mark).0 >= 1, "the registry is asked");
    assert!(keys(&o.cache).is_empty());
    assert!(o.cache.checksum_record(o.tag_url()).is_none());
    assert!(common::module_files(o.dir.path()).is_empty());
}

/// Istio: "fetch invalid oci": an OCI manifest whose only layer is an
/// uncompressed tar (`application/vnd.oci.image.layer.v1.tar`) holding
/// `not-wasm.txt`, fetched with its digest as checksum.
#[tokio::test]
async fn fetch_invalid_oci() {
    let o = Oci::start().await;
    let config =
        br#"{"architecture":"amd64","os":"linux","rootfs":{"type":"layers","diff_ids":[]}}"#;
    let layer = tar(&[("not-wasm.txt", &b"a"[..])]);
    push_blob(&o.registry, "test/invalid", config).await;
    push_blob(&o.registry, "test/invalid", &layer).await;
    let manifest = serde_json::json!({
        "schemaVersion": 2,
        "mediaType": OCI_MANIFEST,
        "config": {"mediaType": "application/vnd.oci.image.config.v1+json", "digest": digest_of(config), "size": config.len()},
        "layers": [{"mediaType": "application/vnd.oci.image.layer.v1.tar", "digest": digest_of(&layer), "size": layer.len()}],
    });
    let bytes = serde_json::to_vec(&manifest).unwrap();
    let digest =
        push_manifest_json(&o.registry, "test/invalid", "latest", OCI_MANIFEST, &bytes).await;
    let url = format!("oci://{}/test/invalid", o.registry.host());
    let mark = o.mark();
    let e = o
        .cache
        .get(&req(&url, "0").checksum(digest.trim_start_matches("sha256:")))
        .await
        .unwrap_err();
    assert!(
        matches!(
            e.kind(),
            ErrorKind::Manifest | ErrorKind::InvalidModule | ErrorKind::NotFound
        ),
        "{:?}: {e}",
        e.kind()
    );
    assert!(e.to_string().contains(&url), "the error names the URL: {e}");
    assert!(o.since(mark).2 >= 1, "the registry is visited");
    assert!(keys(&o.cache).is_empty());
    assert!(o.cache.checksum_record(&url).is_none());
    assert!(common::module_files(o.dir.path()).is_empty());
}
