//! REFERENCE §8 OCI cache and pull-policy scenarios against a real
//! `docker-registry` on 127.0.0.1, counting manifest and blob requests.

mod common;

use std::time::{Duration, Instant};

use common::{assert_module_at, builder, clock, req};
use wasm_cache::{ErrorKind, PullPolicy};
use wasm_cache_testkit::images::{
    Pushed, push_blob, push_docker_image, push_manifest_json, push_oci_image, push_solo_artifact,
};
use wasm_cache_testkit::modules::sample_module;
use wasm_cache_testkit::registry::{LoggedRequest, Registry, RegistryKind};

struct Counts {
    manifests: usize,
    blobs: usize,
}

fn counts(r: &Registry, since: usize) -> (Counts, usize) {
    let all: Vec<LoggedRequest> = r.sync_requests();
    let new = &all[since.min(all.len())..];
    (
        Counts {
            manifests: new.iter().filter(|q| q.is_manifest_read()).count(),
            blobs: new.iter().filter(|q| q.is_blob_get()).count(),
        },
        all.len(),
    )
}

fn hex(pushed: &Pushed) -> String {
    pushed
        .manifest_digest
        .trim_start_matches("sha256:")
        .to_owned()
}

async fn setup() -> (
    Registry,
    tempfile::TempDir,
    wasm_cache::Cache,
    common::Clock,
) {
    let r = Registry::start(RegistryKind::Plain);
    let dir = tempfile::tempdir().unwrap();
    let c = clock();
    let cache = builder(dir.path(), &c)
        .insecure_hosts([r.host()])
        .build()
        .await
        .unwrap();
    (r, dir, cache, c)
}

#[tokio::test]
async fn tagged_url_miss_then_hit_without_network() {
    let (r, _dir, cache, _c) = setup().await;
    let module = sample_module(20_000, 1);
    let pushed = push_oci_image(&r, "org/filter", "v1", &module).await;
    let (_, mark) = counts(&r, 0);
    // Cache miss for tagged oci url without digest: resolve + one layer.
    let p = cache.get(&req(&pushed.url, "1")).await.unwrap();
    assert_module_at(&p, &module);
    let (n, mark) = counts(&r, mark);
    assert_eq!(n.blobs, 1, "exactly the module's layer");
    assert!(n.manifests >= 1);
    let rec = cache.checksum_record(&pushed.url).unwrap();
    assert_eq!(rec.checksum.to_hex(), hex(&pushed));
    // Cache hit for tagged oci url without digest: any version, no request.
    assert_eq!(cache.get(&req(&pushed.url, "2")).await.unwrap(), p);
    // Cache hit for tagged oci url with digest (checksum given).
    assert_eq!(
        cache
            .get(&req(&pushed.url, "3").checksum(hex(&pushed)))
            .await
            .unwrap(),
        p
    );
    // Cache hit for oci url suffixed by digest.
    assert_eq!(cache.get(&req(&pushed.digest_url, "4")).await.unwrap(), p);
    // (if-not-present) no pull when cache hit.
    let inp = req(&pushed.url, "5").pull_policy(PullPolicy::IfNotPresent);
    assert_eq!(cache.get(&inp).await.unwrap(), p);
    // Do not pull in spite of pull-always policy due to checksum.
    let pinned_always = req(&pushed.url, "6")
        .checksum(format!("sha256:{}", hex(&pushed)))
        .pull_policy(PullPolicy::Always);
    assert_eq!(cache.get(&pinned_always).await.unwrap(), p);
    let (n, _) = counts(&r, mark);
    assert_eq!(
        (n.manifests, n.blobs),
        (0, 0),
        "hits must not touch the registry"
    );
}

#[tokio::test]
async fn pull_always_pulls_on_new_version_only() {
    let (r, _dir, cache, _c) = setup().await;
    let module = sample_module(8_000, 2);
    let pushed = push_docker_image(&r, "org/always", "v1", &module).await;
    let always = |v: &str| req(&pushed.url, v).pull_policy(PullPolicy::Always);
    let p = cache.get(&always("1")).await.unwrap();
    assert_module_at(&p, &module);
    let (_, mark) = counts(&r, 0);
    // Do not pull due to resourceVersion is the same.
    cache.get(&always("1")).await.unwrap();
    let (n, mark) = counts(&r, mark);
    assert_eq!((n.manifests, n.blobs), (0, 0));
    // Pull due to pull-always policy when cache hit: the manifest is checked;
    // the layer is not downloaded again because the digest is cached.
    assert_eq!(cache.get(&always("2")).await.unwrap(), p);
    let (n, mark) = counts(&r, mark);
    assert!(
        n.manifests >= 1,
        "Always with a new version must ask the registry"
    );
    assert_eq!(n.blobs, 0);
    // The tag moves: Always with a new version gets the new module.
    let module2 = sample_module(8_000, 3);
    push_docker_image(&r, "org/always", "v1", &module2).await;
    let p2 = cache.get(&always("3")).await.unwrap();
    assert_module_at(&p2, &module2);
    let (n, _) = counts(&r, mark);
    assert_eq!(n.blobs, 1);
}

#[tokio::test]
async fn latest_tag_rules() {
    let (r, _dir, cache, _c) = setup().await;
    let module = sample_module(4_000, 4);
    let pushed = push_solo_artifact(&r, "org/latest", "latest", &module).await;
    assert!(pushed.url.ends_with(":latest"));
    cache.get(&req(&pushed.url, "1")).await.unwrap();
    let (_, mark) = counts(&r, 0);
    // Do not pull in spite of latest tag due to IfNotPresent policy.
    cache
        .get(&req(&pushed.url, "2").pull_policy(PullPolicy::IfNotPresent))
        .await
        .unwrap();
    // Do not pull in spite of latest tag due to checksum.
    cache
        .get(&req(&pushed.url, "3").checksum(hex(&pushed)))
        .await
        .unwrap();
    let (n, mark) = counts(&r, mark);
    assert_eq!(n.manifests + n.blobs, 0);
    // Pull due to latest tag (a new version under Unspecified).
    cache.get(&req(&pushed.url, "4")).await.unwrap();
    let (n, _) = counts(&r, mark);
    assert!(n.manifests >= 1);
}

#[tokio::test]
async fn fetch_with_digest_is_not_recorded_and_wrong_digest_fails() {
    let (r, dir, cache, _c) = setup().await;
    let module = sample_module(4_000, 5);
    let pushed = push_oci_image(&r, "org/pinned", "v1", &module).await;
    // Fetch oci with digest.
    let p = cache.get(&req(&pushed.digest_url, "1")).await.unwrap();
    assert_module_at(&p, &module);
    assert!(cache.checksum_record(&pushed.digest_url).is_none());
    // Fetch oci with wrong digest (checksum given for a tag).
    let wrong = "ab".repeat(32);
    let e = cache
        .get(&req(&pushed.url, "1").checksum(wrong.clone()))
        .await
        .unwrap_err();
    assert_eq!(
        e.to_string(),
        format!(
            "module downloaded from {} has checksum {}, which does not match: {wrong}",
            pushed.url,
            hex(&pushed)
        )
    );
    assert_eq!(common::module_files(dir.path()).len(), 1);
}

#[tokio::test]
async fn invalid_oci_image_is_rejected() {
    let (r, dir, cache, _c) = setup().await;
    let manifest = serde_json::json!({
        "schemaVersion": 2,
        "mediaType": "application/vnd.oci.image.manifest.v1+json",
        "config": {"mediaType": "application/vnd.oci.image.config.v1+json", "digest": "sha256:44136fa355b3678a1146ad16f7e8649e94fb4fc21fe77e8310c060f61caaff8a", "size": 2},
        "layers": []
    });
    push_blob(&r, "org/invalid", b"{}").await;
    let bytes = serde_json::to_vec(&manifest).unwrap();
    push_manifest_json(
        &r,
        "org/invalid",
        "v1",
        "application/vnd.oci.image.manifest.v1+json",
        &bytes,
    )
    .await;
    let e = cache
        .get(&req(&r.url("org/invalid:v1"), "1"))
        .await
        .unwrap_err();
    assert_eq!(e.kind(), ErrorKind::Manifest, "{e}");
    assert!(common::module_files(dir.path()).is_empty());
}

#[tokio::test]
async fn fetch_oci_timed_out() {
    // A registry that accepts connections and never answers.
    let blackhole = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let host = blackhole.local_addr().unwrap().to_string();
    let dir = tempfile::tempdir().unwrap();
    let cache = builder(dir.path(), &clock())
        .insecure_hosts([host.clone()])
        .build()
        .await
        .unwrap();
    let started = Instant::now();
    let e = cache
        .get(&req(&format!("oci://{host}/org/slow:v1"), "1").timeout(Duration::from_millis(500)))
        .await
        .unwrap_err();
    assert_eq!(e.kind(), ErrorKind::Timeout, "{e}");
    // Generous bound: the point is "ends at the deadline", not speed.
    assert!(
        started.elapsed() < Duration::from_secs(10),
        "{:?}",
        started.elapsed()
    );
    drop(blackhole);
}

#[tokio::test]
async fn purge_oci_image_on_expiry() {
    let (r, _dir, cache, c) = setup().await;
    let module = sample_module(4_000, 6);
    let pushed = push_oci_image(&r, "org/expire", "v1", &module).await;
    let p = cache.get(&req(&pushed.url, "1")).await.unwrap();
    c.advance(wasm_cache::DEFAULT_EXPIRY + Duration::from_secs(1));
    let report = cache.purge().await.unwrap();
    assert_eq!(report.expired.len(), 1);
    assert!(!p.exists());
    assert!(cache.checksum_record(&pushed.url).is_none());
    let (_, mark) = counts(&r, 0);
    assert_eq!(cache.get(&req(&pushed.url, "1")).await.unwrap(), p);
    let (n, _) = counts(&r, mark);
    assert_eq!(n.blobs, 1);
}

#[tokio::test]
async fn all_insecure_registry_over_self_signed_tls() {
    let r = Registry::start(RegistryKind::Tls);
    let module = sample_module(4_000, 7);
    let pushed = push_oci_image(&r, "org/tls", "v1", &module).await;
    let dir = tempfile::tempdir().unwrap();
    // Without trust: a TLS failure.
    let strict = builder(dir.path(), &clock()).build().await.unwrap();
    let e = strict.get(&req(&pushed.url, "1")).await.unwrap_err();
    assert!(matches!(e.kind(), ErrorKind::Transport), "{e}");
    strict.shutdown().await.unwrap();
    // With `*`: accepted.
    let lax = builder(dir.path(), &clock())
        .insecure_hosts(["*"])
        .build()
        .await
        .unwrap();
    assert_module_at(&lax.get(&req(&pushed.url, "1")).await.unwrap(), &module);
}
