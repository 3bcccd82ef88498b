//! cosign signatures on OCI modules, against a real `docker-registry` on
//! 127.0.0.1: testkit signs in cosign's format, the cache verifies before
//! any layer is downloaded.

mod common;

use common::{assert_module_at, builder, clock, req};
use wasm_cache::{ErrorKind, TrustPolicy};
use wasm_cache_testkit::cosign::{self, SignatureLayer, SigningKey};
use wasm_cache_testkit::images::{
    Platform, Pushed, push_cncf_artifact, push_index, push_oci_image, push_solo_artifact,
};
use wasm_cache_testkit::modules::sample_module;
use wasm_cache_testkit::registry::{LoggedRequest, Registry, RegistryKind};

async fn setup() -> (Registry, tempfile::TempDir, wasm_cache::Cache) {
    let r = Registry::start(RegistryKind::Plain);
    let dir = tempfile::tempdir().unwrap();
    let cache = builder(dir.path(), &clock())
        .insecure_hosts([r.host()])
        .build()
        .await
        .unwrap();
    (r, dir, cache)
}

fn policy(keys: &[&SigningKey]) -> TrustPolicy {
    TrustPolicy::new(keys.iter().map(|k| k.public_key())).unwrap()
}

/// Requests logged since `mark`, and the new mark.
fn since(r: &Registry, mark: usize) -> (Vec<LoggedRequest>, usize) {
    let all = r.sync_requests();
    (all[mark.min(all.len())..].to_vec(), all.len())
}

fn fetched_blob(requests: &[LoggedRequest], digest: &str) -> bool {
    requests
        .iter()
        .any(|q| q.is_blob_get() && q.path.ends_with(digest))
}

#[tokio::test]
async fn signed_image_artifact_and_index_verify_and_a_verified_hit_makes_no_request() {
    let (r, _dir, cache) = setup().await;
    let key = cosign::generate_p256();
    let module = sample_module(10_000, 1);
    let image = push_oci_image(&r, "t/image", "v1", &module).await;
    let artifact = push_cncf_artifact(&r, "t/artifact", "v1", &module).await;
    let solo = push_solo_artifact(&r, "t/solo", "v1", &module).await;
    let index = push_index(&r, "t/index", "v1", &[(Platform::WASIP1, &module)]).await;
    for (repo, pushed) in [
        ("t/image", &image),
        ("t/artifact", &artifact),
        ("t/solo", &solo),
        ("t/index", &index),
    ] {
        cosign::sign_image(&r, repo, &pushed.manifest_digest, &key).await;
        let path = cache
            .get(&req(&pushed.url, "1").verify_with(policy(&[&key])))
            .await
            .unwrap_or_else(|e| panic!("{repo}: {e}"));
        assert_module_at(&path, &module);
    }
    let (_, mark) = since(&r, 0);
    for pushed in [&image, &artifact, &solo, &index] {
        cache
            .get(&req(&pushed.url, "1").verify_with(policy(&[&key])))
            .await
            .unwrap();
    }
    let (requests, _) = since(&r, mark);
    assert!(
        requests.is_empty(),
        "verified hits made requests: {requests:?}"
    );
}

/// Pushes a module and signature layers; returns what was pushed.
async fn signed(r: &Registry, repo: &str, seed: u64, layers: &[SignatureLayer]) -> Pushed {
    let pushed = push_oci_image(r, repo, "v1", &sample_module(5_000, seed)).await;
    let layers: Vec<SignatureLayer> = layers
        .iter()
        .map(|l| {
            // Placeholders name the digest; fill in the real one.
            let mut l = l.clone();
            l.payload = String::from_utf8(l.payload)
                .unwrap()
                .replace(PLACEHOLDER, &pushed.manifest_digest)
                .into_bytes();
            l
        })
        .collect();
    cosign::push_signatures(r, repo, &pushed.manifest_digest, &layers).await;
    pushed
}

const PLACEHOLDER: &str = "sha256:0000000000000000000000000000000000000000000000000000000000000000";

#[tokio::test]
async fn bad_signatures_fail_before_any_layer_and_store_nothing() {
    let (r, dir, cache) = setup().await;
    let key = cosign::generate_p256();
    let other = cosign::generate_p256();
    let host = r.host();
    let pushed_for = |repo: &str| format!("{host}/{repo}");

    // Each case: a repository whose signature is bad in one way, and the
    // reason the error must give.
    let mut cases: Vec<(&str, Pushed, &str)> = Vec::new();

    let wrong_key = push_oci_image(&r, "bad/wrong-key", "v1", &sample_module(5_000, 2)).await;
    cosign::sign_image(&r, "bad/wrong-key", &wrong_key.manifest_digest, &other).await;
    cases.push(("bad/wrong-key", wrong_key, "does not verify"));

    let pushed = push_oci_image(&r, "bad/tampered", "v1", &sample_module(5_000, 3)).await;
    let mut layer =
        SignatureLayer::sign(&key, &pushed_for("bad/tampered"), &pushed.manifest_digest);
    layer.payload = String::from_utf8(layer.payload)
        .unwrap()
        .replace(
            "cosign container image signature",
            "cosign container image signaturE",
        )
        .into_bytes();
    cosign::push_signatures(&r, "bad/tampered", &pushed.manifest_digest, &[layer]).await;
    cases.push(("bad/tampered", pushed, "does not verify"));

    let pushed = push_oci_image(&r, "bad/other-digest", "v1", &sample_module(5_000, 4)).await;
    let another = push_oci_image(&r, "bad/other-digest", "v2", &sample_module(5_000, 5)).await;
    let layer = SignatureLayer::sign(
        &key,
        &pushed_for("bad/other-digest"),
        &another.manifest_digest,
    );
    cosign::push_signatures(&r, "bad/other-digest", &pushed.manifest_digest, &[layer]).await;
    cases.push(("bad/other-digest", pushed, "the payload is for"));

    let pushed = push_oci_image(&r, "bad/unsigned", "v1", &sample_module(5_000, 6)).await;
    cases.push((
        "bad/unsigned",
        pushed,
        "no signature manifest at tag sha256-",
    ));

    let mut layer = SignatureLayer::sign(&key, "x/y", PLACEHOLDER);
    layer.signature = Some("!!! not base64 !!!".into());
    let pushed = signed(&r, "bad/garbage", 7, &[layer]).await;
    cases.push(("bad/garbage", pushed, "not base64"));

    let mut layer = SignatureLayer::sign(&key, "x/y", PLACEHOLDER);
    layer.signature = Some("A".repeat(300 * 1024));
    let pushed = signed(&r, "bad/huge", 8, &[layer]).await;
    cases.push(("bad/huge", pushed, "more than the 262144 allowed"));

    let p = policy(&[&key]);
    let (_, mut mark) = since(&r, 0);
    for (repo, pushed, reason) in cases {
        let err = cache
            .get(&req(&pushed.url, "1").verify_with(p.clone()))
            .await
            .unwrap_err();
        assert_eq!(err.kind(), ErrorKind::Integrity, "{repo}: {err}");
        assert_eq!(
            err.to_string(),
            format!(
                "no valid signature for {}@{} by any of {}",
                pushed.url,
                pushed.manifest_digest,
                p.fingerprints()[0]
            ),
            "{repo}"
        );
        let reasons = match err.as_fetch() {
            Some(wasm_cache_core::Error::NoValidSignature { reasons, .. }) => reasons.join("; "),
            other => panic!("{repo}: {other:?}"),
        };
        assert!(reasons.contains(reason), "{repo}: {reasons}");
        let (requests, m) = since(&r, mark);
        mark = m;
        assert!(
            !fetched_blob(&requests, &pushed.layer_digest),
            "{repo}: the module's layer was downloaded: {requests:?}"
        );
        assert!(cache.checksum_record(&pushed.url).is_none(), "{repo}");
    }
    assert!(cache.entries().is_empty());
    assert!(common::module_files(dir.path()).is_empty());
}

#[tokio::test]
async fn another_repository_in_the_payload_is_accepted_and_the_second_key_suffices() {
    let (r, _dir, cache) = setup().await;
    let first = cosign::generate_ed25519();
    let second = cosign::generate_p256();
    let module = sample_module(5_000, 9);
    let pushed = push_oci_image(&r, "copied/module", "v1", &module).await;
    // Signed where it was first published, then copied here with its signature.
    let layer = SignatureLayer::sign(
        &second,
        "origin.example/team/module:v1",
        &pushed.manifest_digest,
    );
    cosign::push_signatures(&r, "copied/module", &pushed.manifest_digest, &[layer]).await;
    let strict = policy(&[&first, &second]).require_reference(true);
    let err = cache
        .get(&req(&pushed.url, "1").verify_with(strict))
        .await
        .unwrap_err();
    assert_eq!(err.kind(), ErrorKind::Integrity, "{err}");
    let path = cache
        .get(&req(&pushed.url, "1").verify_with(policy(&[&first, &second])))
        .await
        .unwrap();
    assert_module_at(&path, &module);
}

#[tokio::test]
async fn a_policy_added_to_a_cached_module_fetches_only_the_signature() {
    let (r, _dir, cache) = setup().await;
    let key = cosign::generate_p256();
    let module = sample_module(20_000, 10);
    let pushed = push_oci_image(&r, "t/later", "v1", &module).await;
    let path = cache.get(&req(&pushed.url, "1")).await.unwrap();
    cosign::sign_image(&r, "t/later", &pushed.manifest_digest, &key).await;
    let (_, mark) = since(&r, 0);
    let again = cache
        .get(&req(&pushed.url, "1").verify_with(policy(&[&key])))
        .await
        .unwrap();
    assert_eq!(again, path);
    let (requests, _) = since(&r, mark);
    assert!(
        !fetched_blob(&requests, &pushed.layer_digest),
        "the module was downloaded again: {requests:?}"
    );
    assert!(
        requests
            .iter()
            .any(|q| q.is_manifest_read() && q.path.contains(".sig")),
        "{requests:?}"
    );
}
