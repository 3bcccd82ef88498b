//! Sigstore bundles attached as OCI 1.1 referrers, against a real
//! `docker-registry` on 127.0.0.1. Debian's docker-registry is distribution
//! 2.8, which has no referrers API (`GET /v2/<repo>/referrers/<digest>`
//! answers 404): the fetcher falls back to the referrers tag schema (an index
//! at tag `sha256-<hex>`), which is what testkit pushes, as cosign does for
//! such registries.

mod common;

use common::{assert_module_at, builder, clock, module_files, req};
use wasm_cache::{ErrorKind, TrustPolicy};
use wasm_cache_testkit::cosign::{self, SigningKey};
use wasm_cache_testkit::images::{OCI_MANIFEST, Pushed, push_oci_image};
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

async fn attach(r: &Registry, repo: &str, pushed: &Pushed, bundles: &[Vec<u8>]) {
    cosign::attach_bundles(
        r,
        repo,
        &pushed.manifest_digest,
        OCI_MANIFEST,
        pushed.manifest.len(),
        bundles,
    )
    .await;
}

#[tokio::test]
async fn bundles_by_a_trusted_key_verify_and_a_verified_hit_makes_no_request() {
    let (r, _dir, cache) = setup().await;
    let key = cosign::generate_p256();
    let ed = cosign::generate_ed25519();
    // Distinct modules: a digest verified once is verified wherever it is.
    let modules: Vec<Vec<u8>> = (0..4).map(|i| sample_module(8_000, 21 + i)).collect();
    let dsse = push_oci_image(&r, "b/dsse", "v1", &modules[0]).await;
    attach(
        &r,
        "b/dsse",
        &dsse,
        &[cosign::bundle_cosign_sign(&key, &dsse.manifest_digest)],
    )
    .await;
    let message = push_oci_image(&r, "b/message", "v1", &modules[1]).await;
    attach(
        &r,
        "b/message",
        &message,
        &[cosign::bundle_message_signature(
            &key,
            &message.manifest_digest,
        )],
    )
    .await;
    let ed_dsse = push_oci_image(&r, "b/ed25519", "v1", &modules[2]).await;
    attach(
        &r,
        "b/ed25519",
        &ed_dsse,
        &[cosign::bundle_cosign_sign(&ed, &ed_dsse.manifest_digest)],
    )
    .await;
    // A wrong bundle first, then a good one: one valid signature suffices.
    let second = push_oci_image(&r, "b/second", "v1", &modules[3]).await;
    attach(
        &r,
        "b/second",
        &second,
        &[
            cosign::bundle_cosign_sign(&cosign::generate_p256(), &second.manifest_digest),
            cosign::bundle_message_signature(&key, &second.manifest_digest),
        ],
    )
    .await;

    let p = policy(&[&ed, &key]);
    let (_, mut mark) = since(&r, 0);
    for (repo, pushed, module) in [
        ("b/dsse", &dsse, &modules[0]),
        ("b/message", &message, &modules[1]),
        ("b/ed25519", &ed_dsse, &modules[2]),
        ("b/second", &second, &modules[3]),
    ] {
        let path = cache
            .get(&req(&pushed.url, "1").verify_with(p.clone()))
            .await
            .unwrap_or_else(|e| panic!("{repo}: {e}"));
        assert_module_at(&path, module);
        let (requests, m) = since(&r, mark);
        mark = m;
        let hex = pushed.manifest_digest.trim_start_matches("sha256:");
        // Distribution 2.8 has no referrers API: asked, 404, then the tag.
        assert!(
            requests
                .iter()
                .any(|q| q.path.ends_with(&format!("/referrers/sha256:{hex}")) && q.status == 404),
            "{repo}: {requests:?}"
        );
        assert!(
            requests
                .iter()
                .any(|q| q.path.ends_with(&format!("/manifests/sha256-{hex}")) && q.status == 200),
            "{repo}: {requests:?}"
        );
    }
    for pushed in [&dsse, &message, &ed_dsse, &second] {
        cache
            .get(&req(&pushed.url, "1").verify_with(p.clone()))
            .await
            .unwrap();
    }
    let (requests, _) = since(&r, mark);
    assert!(
        requests.is_empty(),
        "verified hits made requests: {requests:?}"
    );
}

#[tokio::test]
async fn bad_bundles_fail_before_any_layer_and_store_nothing() {
    let (r, dir, cache) = setup().await;
    let key = cosign::generate_p256();
    let other = cosign::generate_p256();
    let mut cases: Vec<(&str, Pushed, &str)> = Vec::new();

    let pushed = push_oci_image(&r, "bad/wrong-key", "v1", &sample_module(5_000, 22)).await;
    attach(
        &r,
        "bad/wrong-key",
        &pushed,
        &[
            cosign::bundle_cosign_sign(&other, &pushed.manifest_digest),
            cosign::bundle_message_signature(&other, &pushed.manifest_digest),
        ],
    )
    .await;
    cases.push(("bad/wrong-key", pushed, "does not verify"));

    // Valid signatures by the trusted key, but over another manifest.
    let pushed = push_oci_image(&r, "bad/other", "v1", &sample_module(5_000, 23)).await;
    let another = push_oci_image(&r, "bad/other", "v2", &sample_module(5_000, 24)).await;
    attach(
        &r,
        "bad/other",
        &pushed,
        &[cosign::bundle_cosign_sign(&key, &another.manifest_digest)],
    )
    .await;
    cases.push(("bad/other", pushed, "the in-toto statement is for"));

    let pushed = push_oci_image(&r, "bad/other-message", "v1", &sample_module(5_000, 25)).await;
    let another = push_oci_image(&r, "bad/other-message", "v2", &sample_module(5_000, 26)).await;
    attach(
        &r,
        "bad/other-message",
        &pushed,
        &[cosign::bundle_message_signature(
            &key,
            &another.manifest_digest,
        )],
    )
    .await;
    cases.push((
        "bad/other-message",
        pushed,
        "the bundle signs another digest",
    ));

    // A referrer attached to another manifest, listed under this one's tag.
    let pushed = push_oci_image(&r, "bad/subject", "v1", &sample_module(5_000, 27)).await;
    let another = push_oci_image(&r, "bad/subject", "v2", &sample_module(5_000, 28)).await;
    let listed = cosign::attach_bundles(
        &r,
        "bad/subject",
        &another.manifest_digest,
        OCI_MANIFEST,
        another.manifest.len(),
        &[cosign::bundle_cosign_sign(&key, &pushed.manifest_digest)],
    )
    .await;
    let tag = format!(
        "sha256-{}",
        pushed.manifest_digest.trim_start_matches("sha256:")
    );
    wasm_cache_testkit::images::push_manifest_json(
        &r,
        "bad/subject",
        &tag,
        wasm_cache_testkit::images::OCI_INDEX,
        &listed.manifest,
    )
    .await;
    cases.push(("bad/subject", pushed, "bundle manifest is for"));

    // Neither a classic signature nor a bundle.
    let pushed = push_oci_image(&r, "bad/unsigned", "v1", &sample_module(5_000, 29)).await;
    cases.push(("bad/unsigned", pushed, "no referrers of sha256:"));

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
        assert!(
            reasons.contains("no signature manifest at tag"),
            "{repo}: {reasons}"
        );
        let (requests, m) = since(&r, mark);
        mark = m;
        assert!(
            !fetched_blob(&requests, &pushed.layer_digest),
            "{repo}: the module's layer was downloaded: {requests:?}"
        );
        assert!(cache.checksum_record(&pushed.url).is_none(), "{repo}");
    }
    assert!(cache.entries().is_empty());
    assert!(module_files(dir.path()).is_empty());
}

#[tokio::test]
async fn a_classic_signature_and_a_bundle_by_another_key_each_suffice() {
    let (r, _dir, cache) = setup().await;
    let classic = cosign::generate_p256();
    let bundled = cosign::generate_ed25519();
    let module = sample_module(6_000, 30);
    let pushed = push_oci_image(&r, "both/module", "v1", &module).await;
    cosign::sign_image(&r, "both/module", &pushed.manifest_digest, &classic).await;
    attach(
        &r,
        "both/module",
        &pushed,
        &[cosign::bundle_cosign_sign(
            &bundled,
            &pushed.manifest_digest,
        )],
    )
    .await;
    for key in [&classic, &bundled] {
        let path = cache
            .get(&req(&pushed.url, "1").verify_with(policy(&[key])))
            .await
            .unwrap();
        assert_module_at(&path, &module);
    }
    // A bundle's statement names no repository: a policy requiring one
    // accepts only the classic payload, which names this one.
    let strict = |k: &SigningKey| policy(&[k]).require_reference(true);
    cache
        .get(&req(&pushed.url, "1").verify_with(strict(&classic)))
        .await
        .unwrap();
    let err = cache
        .get(&req(&pushed.url, "1").verify_with(strict(&bundled)))
        .await
        .unwrap_err();
    let reasons = match err.as_fetch() {
        Some(wasm_cache_core::Error::NoValidSignature { reasons, .. }) => reasons.join("; "),
        other => panic!("{other:?}"),
    };
    assert!(reasons.contains("names no subject in"), "{reasons}");
}
