//! Trust policies in the cache: verified before anything is stored, verified
//! digests served without a round trip, failures leave nothing behind.
//!
//! These run the cache against the in-memory fetcher; the real-registry and
//! real-HTTP cases live with the fetchers' `signatures` implementations.

mod common;

use std::sync::Arc;

use common::{assert_module_at, builder, clock, module_files, req};
use wasm_cache::{Scheme, Sha256Digest, TrustPolicy};
use wasm_cache_conformance::MemoryFetcher;
use wasm_cache_core::{ErrorKind, SignatureLayer, Signatures};
use wasm_cache_testkit::cosign::{self, SigningKey};
use wasm_cache_testkit::modules::{sample_module, sha256_hex};

const HTTP_URL: &str = "http://mods.example/filter.wasm";
const OCI_URL: &str = "oci://registry.example/team/filter:v1";

fn digest_of(bytes: &[u8]) -> Sha256Digest {
    Sha256Digest::parse(&sha256_hex(bytes)).unwrap()
}

fn policy(keys: &[&SigningKey]) -> TrustPolicy {
    TrustPolicy::new(keys.iter().map(|k| k.public_key())).unwrap()
}

fn layer(key: &SigningKey, reference: &str, digest: &Sha256Digest) -> SignatureLayer {
    let l = cosign::SignatureLayer::sign(key, reference, &digest.to_prefixed());
    SignatureLayer {
        media_type: l.media_type,
        payload: l.payload,
        signature: l.signature,
    }
}

async fn cache_with(fetcher: &Arc<MemoryFetcher>, dir: &std::path::Path) -> wasm_cache::Cache {
    builder(dir, &clock())
        .default_fetchers(false)
        .fetcher(Scheme::Http, fetcher.clone())
        .fetcher(Scheme::Oci, fetcher.clone())
        .build()
        .await
        .unwrap()
}

/// An OCI module registered under a "manifest digest" distinct from its bytes.
fn oci_module(fetcher: &MemoryFetcher, seed: u64) -> (Vec<u8>, Sha256Digest) {
    let module = sample_module(3_000, seed);
    let manifest = digest_of(format!("manifest {seed}").as_bytes());
    fetcher.insert(OCI_URL, module.clone(), Some(manifest));
    (module, manifest)
}

#[tokio::test]
async fn http_blob_signature_is_checked_and_a_verified_hit_makes_no_request() {
    let fetcher = Arc::new(MemoryFetcher::new());
    let module = sample_module(4_000, 1);
    let key = cosign::generate_p256();
    fetcher.insert(HTTP_URL, module.clone(), None);
    fetcher.set_signatures(
        HTTP_URL,
        digest_of(&module),
        Signatures::Detached(cosign::sign_blob(&key, &module)),
    );
    let dir = tempfile::tempdir().unwrap();
    let cache = cache_with(&fetcher, dir.path()).await;
    let r = req(HTTP_URL, "1").verify_with(policy(&[&key]));
    let path = cache.get(&r).await.unwrap();
    assert_module_at(&path, &module);
    assert_eq!(
        (fetcher.fetch_count(), fetcher.signature_fetch_count()),
        (1, 1)
    );

    let again = cache.get(&r).await.unwrap();
    assert_eq!(again, path);
    assert_eq!(
        (
            fetcher.resolve_count(),
            fetcher.fetch_count(),
            fetcher.signature_fetch_count()
        ),
        (1, 1, 1),
        "a hit of a digest verified by a key of the policy makes no request"
    );
    cache.shutdown().await.unwrap();
}

#[tokio::test]
async fn wrong_key_stores_nothing_and_records_nothing() {
    let fetcher = Arc::new(MemoryFetcher::new());
    let module = sample_module(4_000, 2);
    let signer = cosign::generate_p256();
    let trusted = cosign::generate_p256();
    fetcher.insert(HTTP_URL, module.clone(), None);
    fetcher.set_signatures(
        HTTP_URL,
        digest_of(&module),
        Signatures::Detached(cosign::sign_blob(&signer, &module)),
    );
    let dir = tempfile::tempdir().unwrap();
    let cache = cache_with(&fetcher, dir.path()).await;
    let p = policy(&[&trusted]);
    let err = cache
        .get(&req(HTTP_URL, "1").verify_with(p.clone()))
        .await
        .unwrap_err();
    assert_eq!(
        err.to_string(),
        format!(
            "no valid signature for {HTTP_URL}@sha256:{} by any of {}",
            sha256_hex(&module),
            p.fingerprints()[0]
        )
    );
    assert_eq!(err.kind(), ErrorKind::Integrity);
    assert!(cache.entries().is_empty());
    assert!(cache.checksum_record(HTTP_URL).is_none());
    assert!(
        module_files(dir.path()).is_empty(),
        "{:?}",
        module_files(dir.path())
    );
    cache.shutdown().await.unwrap();
}

#[tokio::test]
async fn oci_signature_is_checked_before_any_layer_is_downloaded() {
    let fetcher = Arc::new(MemoryFetcher::new());
    let (module, manifest) = oci_module(&fetcher, 3);
    let key = cosign::generate_ed25519();
    fetcher.set_signatures(
        OCI_URL,
        manifest,
        Signatures::Cosign(vec![layer(&key, "registry.example/team/filter", &manifest)]),
    );
    let dir = tempfile::tempdir().unwrap();
    let cache = cache_with(&fetcher, dir.path()).await;
    let r = req(OCI_URL, "1").verify_with(policy(&[&key]));
    let path = cache.get(&r).await.unwrap();
    assert_module_at(&path, &module);
    assert_eq!(
        (fetcher.fetch_count(), fetcher.signature_fetch_count()),
        (1, 1)
    );
    cache.get(&r).await.unwrap();
    assert_eq!(
        (fetcher.fetch_count(), fetcher.signature_fetch_count()),
        (1, 1),
        "the verified digest is not checked again"
    );
    cache.shutdown().await.unwrap();
}

#[tokio::test]
async fn payload_for_another_digest_downloads_no_module() {
    let fetcher = Arc::new(MemoryFetcher::new());
    let (_, manifest) = oci_module(&fetcher, 4);
    let key = cosign::generate_p256();
    let other = digest_of(b"some other manifest");
    fetcher.set_signatures(
        OCI_URL,
        manifest,
        Signatures::Cosign(vec![layer(&key, "registry.example/team/filter", &other)]),
    );
    let dir = tempfile::tempdir().unwrap();
    let cache = cache_with(&fetcher, dir.path()).await;
    let err = cache
        .get(&req(OCI_URL, "1").verify_with(policy(&[&key])))
        .await
        .unwrap_err();
    assert!(
        err.to_string().starts_with("no valid signature for "),
        "{err}"
    );
    let reasons = match err.as_fetch() {
        Some(wasm_cache_core::Error::NoValidSignature { reasons, .. }) => reasons.clone(),
        other => panic!("{other:?}"),
    };
    assert!(reasons[0].contains(&other.to_prefixed()), "{reasons:?}");
    assert_eq!(fetcher.fetch_count(), 0, "no layer fetched");
    assert!(cache.entries().is_empty());
    assert!(cache.checksum_record(OCI_URL).is_none());
    cache.shutdown().await.unwrap();
}

#[tokio::test]
async fn two_keys_where_only_the_second_verifies() {
    let fetcher = Arc::new(MemoryFetcher::new());
    let (module, manifest) = oci_module(&fetcher, 5);
    let second = cosign::generate_p256();
    fetcher.set_signatures(
        OCI_URL,
        manifest,
        Signatures::Cosign(vec![layer(&second, "elsewhere.example/copy", &manifest)]),
    );
    let dir = tempfile::tempdir().unwrap();
    let cache = cache_with(&fetcher, dir.path()).await;
    let first = cosign::generate_ed25519();
    let path = cache
        .get(&req(OCI_URL, "1").verify_with(policy(&[&first, &second])))
        .await
        .unwrap();
    assert_module_at(&path, &module);
    cache.shutdown().await.unwrap();
}

#[tokio::test]
async fn require_reference_rejects_a_payload_naming_another_repository() {
    let fetcher = Arc::new(MemoryFetcher::new());
    let (_, manifest) = oci_module(&fetcher, 6);
    let key = cosign::generate_p256();
    fetcher.set_signatures(
        OCI_URL,
        manifest,
        Signatures::Cosign(vec![layer(&key, "elsewhere.example/copy:v1", &manifest)]),
    );
    let dir = tempfile::tempdir().unwrap();
    let cache = cache_with(&fetcher, dir.path()).await;
    let strict = policy(&[&key]).require_reference(true);
    let err = cache
        .get(&req(OCI_URL, "1").verify_with(strict))
        .await
        .unwrap_err();
    assert_eq!(err.kind(), ErrorKind::Integrity, "{err}");
    assert_eq!(fetcher.fetch_count(), 0);
    // The default accepts it, as cosign does.
    cache
        .get(&req(OCI_URL, "1").verify_with(policy(&[&key])))
        .await
        .unwrap();
    cache.shutdown().await.unwrap();
}

#[tokio::test]
async fn missing_signature_fails_with_the_reason() {
    let fetcher = Arc::new(MemoryFetcher::new());
    oci_module(&fetcher, 7);
    let dir = tempfile::tempdir().unwrap();
    let cache = cache_with(&fetcher, dir.path()).await;
    let err = cache
        .get(&req(OCI_URL, "1").verify_with(policy(&[&cosign::generate_p256()])))
        .await
        .unwrap_err();
    match err.as_fetch() {
        Some(wasm_cache_core::Error::NoValidSignature { reasons, .. }) => {
            assert!(
                reasons[0].contains("no signatures registered"),
                "{reasons:?}"
            );
        }
        other => panic!("{other:?}"),
    }
    assert_eq!(fetcher.fetch_count(), 0);
    cache.shutdown().await.unwrap();
}

#[tokio::test]
async fn policy_added_to_a_cached_module_verifies_without_downloading_it_again() {
    let fetcher = Arc::new(MemoryFetcher::new());
    let module = sample_module(4_000, 8);
    let key = cosign::generate_p256();
    fetcher.insert(HTTP_URL, module.clone(), None);
    let dir = tempfile::tempdir().unwrap();
    let cache = cache_with(&fetcher, dir.path()).await;
    let path = cache.get(&req(HTTP_URL, "1")).await.unwrap();
    assert_eq!(fetcher.fetch_count(), 1);

    // Not signed yet: the cached module is not served under the policy, and
    // stays cached for callers without one.
    let r = req(HTTP_URL, "1").verify_with(policy(&[&key]));
    cache.get(&r).await.unwrap_err();
    assert_eq!(cache.get(&req(HTTP_URL, "1")).await.unwrap(), path);

    fetcher.set_signatures(
        HTTP_URL,
        digest_of(&module),
        Signatures::Detached(cosign::sign_blob(&key, &module)),
    );
    assert_eq!(cache.get(&r).await.unwrap(), path);
    assert_eq!(
        fetcher.fetch_count(),
        1,
        "the module was not downloaded again"
    );
    assert_eq!(fetcher.signature_fetch_count(), 2);
    cache.get(&r).await.unwrap();
    assert_eq!(fetcher.signature_fetch_count(), 2);
    cache.shutdown().await.unwrap();
}

#[tokio::test]
async fn the_builder_default_policy_applies_to_requests_without_one() {
    let fetcher = Arc::new(MemoryFetcher::new());
    let (_, manifest) = oci_module(&fetcher, 9);
    let signer = cosign::generate_p256();
    fetcher.set_signatures(
        OCI_URL,
        manifest,
        Signatures::Cosign(vec![layer(
            &signer,
            "registry.example/team/filter",
            &manifest,
        )]),
    );
    let dir = tempfile::tempdir().unwrap();
    let cache = builder(dir.path(), &clock())
        .default_fetchers(false)
        .fetcher(Scheme::Oci, fetcher.clone())
        .trust_policy(Some(policy(&[&cosign::generate_p256()])))
        .build()
        .await
        .unwrap();
    let err = cache.get(&req(OCI_URL, "1")).await.unwrap_err();
    assert_eq!(err.kind(), ErrorKind::Integrity, "{err}");
    // A request's own policy overrides the default.
    cache
        .get(&req(OCI_URL, "1").verify_with(policy(&[&signer])))
        .await
        .unwrap();
    cache.shutdown().await.unwrap();
}

#[test]
fn a_failed_verification_counts_as_signature() {
    use metrics_util::debugging::{DebugValue, DebuggingRecorder};
    let recorder = DebuggingRecorder::new();
    let snapshotter = recorder.snapshotter();
    let dir = tempfile::tempdir().unwrap();
    metrics::with_local_recorder(&recorder, || {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        rt.block_on(async {
            let fetcher = Arc::new(MemoryFetcher::new());
            oci_module(&fetcher, 10);
            let cache = cache_with(&fetcher, dir.path()).await;
            let r = req(OCI_URL, "1").verify_with(policy(&[&cosign::generate_p256()]));
            cache.get(&r).await.unwrap_err();
            cache.shutdown().await.unwrap();
        });
    });
    let count = snapshotter
        .snapshot()
        .into_vec()
        .into_iter()
        .find_map(|(key, _, _, value)| {
            let k = key.key();
            let label = k.labels().find(|l| l.key() == "result")?;
            (k.name() == "wasm_remote_fetch_count" && label.value() == "signature").then_some(value)
        });
    assert!(matches!(count, Some(DebugValue::Counter(1))), "{count:?}");
}
