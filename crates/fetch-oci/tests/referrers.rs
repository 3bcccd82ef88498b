//! The referrers API itself (`GET /v2/<repo>/referrers/<digest>`), which the
//! real test registry (Debian's distribution 2.8) does not have: served here
//! by the testkit's HTTP server, the only way to produce it on this machine.
//! The tag-schema fallback is tested against the real registry in
//! `crates/cache/tests/oci_bundles.rs`.

use std::time::{Duration, Instant};

use serde_json::json;
use wasm_cache_core::{FetchRequest, Fetcher, ModuleUrl, Sha256Digest, Signatures};
use wasm_cache_signature::{BUNDLE_MEDIA_TYPE, Subject, TrustPolicy};
use wasm_cache_testkit::cosign;
use wasm_cache_testkit::http::{Route, ServerOptions, TestServer};
use wasm_cache_testkit::images::{OCI_INDEX, OCI_MANIFEST, digest_of};
use wasm_fetch_oci::OciFetcher;

const REPO: &str = "org/m";
const MANIFEST: &str = "sha256:5a5a5a5a5a5a5a5a5a5a5a5a5a5a5a5a5a5a5a5a5a5a5a5a5a5a5a5a5a5a5a5a";

fn request(server: &TestServer) -> FetchRequest {
    let url = format!("oci://{}/{REPO}@{MANIFEST}", server.host_port());
    FetchRequest::new(
        ModuleUrl::parse(&url).unwrap(),
        Instant::now() + Duration::from_secs(10),
    )
}

fn fetcher(server: &TestServer) -> OciFetcher {
    OciFetcher::builder()
        .docker_config_dir(None)
        .insecure_hosts([server.host_port()])
        .build()
        .unwrap()
}

fn hex() -> &'static str {
    MANIFEST.trim_start_matches("sha256:")
}

/// Serves `bundle` as a referrer of MANIFEST; returns the referrer manifest's
/// bytes (listed by whoever serves an index).
fn serve_referrer(server: &TestServer, bundle: &[u8]) -> Vec<u8> {
    let manifest = serde_json::to_vec(&json!({
        "schemaVersion": 2, "mediaType": OCI_MANIFEST, "artifactType": BUNDLE_MEDIA_TYPE,
        "config": {"mediaType": "application/vnd.oci.empty.v1+json", "digest": digest_of(b"{}"), "size": 2},
        "layers": [{"mediaType": BUNDLE_MEDIA_TYPE, "digest": digest_of(bundle), "size": bundle.len()}],
        "subject": {"mediaType": OCI_MANIFEST, "digest": MANIFEST, "size": 100},
    }))
    .unwrap();
    server.route(
        &format!("/v2/{REPO}/manifests/{}", digest_of(&manifest)),
        Route::bytes(manifest.clone()).with_header("content-type", OCI_MANIFEST),
    );
    server.route(
        &format!("/v2/{REPO}/blobs/{}", digest_of(bundle)),
        Route::bytes(bundle.to_vec()),
    );
    manifest
}

fn index_of(referrers: &[&[u8]]) -> Vec<u8> {
    let mut entries = vec![json!({
        "mediaType": OCI_MANIFEST, "artifactType": "application/spdx+json",
        "digest": digest_of(b"an sbom"), "size": 7,
    })];
    entries.extend(referrers.iter().map(|m| {
        json!({"mediaType": OCI_MANIFEST, "artifactType": BUNDLE_MEDIA_TYPE, "digest": digest_of(m), "size": m.len()})
    }));
    serde_json::to_vec(&json!({"schemaVersion": 2, "mediaType": OCI_INDEX, "manifests": entries}))
        .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_referrers_api_is_asked_first_and_its_bundles_verify() {
    let server = TestServer::start(ServerOptions::plain());
    let key = cosign::generate_p256();
    let bundle = cosign::bundle_cosign_sign(&key, MANIFEST);
    let referrer = serve_referrer(&server, &bundle);
    let api = format!("/v2/{REPO}/referrers/{MANIFEST}");
    server.route(
        &api,
        Route::bytes(index_of(&[&referrer])).with_header("content-type", OCI_INDEX),
    );
    let digest = Sha256Digest::parse(MANIFEST).unwrap();
    let material = fetcher(&server)
        .signatures(&request(&server), &digest)
        .await
        .unwrap();
    let Signatures::Oci {
        cosign,
        bundles,
        notes,
    } = material
    else {
        panic!("{material:?}");
    };
    assert!(cosign.is_empty());
    assert_eq!(bundles, vec![bundle]);
    assert!(
        notes
            .iter()
            .any(|n| n.contains("no signature manifest at tag")),
        "{notes:?}"
    );
    assert_eq!(server.hits(&api), 1);
    // The API answered: the tag schema is not asked, the SBOM not fetched.
    assert_eq!(
        server.hits(&format!("/v2/{REPO}/manifests/sha256-{}", hex())),
        0
    );
    assert_eq!(
        server.hits(&format!("/v2/{REPO}/manifests/{}", digest_of(b"an sbom"))),
        0
    );
    let policy = TrustPolicy::new([key.public_key()]).unwrap();
    let subject = Subject {
        reference: "r/org/m",
        repository: None,
        digest: &digest,
    };
    let verified = policy
        .verify_oci(&subject, [], bundles.iter().map(Vec::as_slice), &notes)
        .unwrap();
    assert_eq!(verified.key, key.public_key().fingerprint());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_registry_refusing_the_route_falls_back_to_the_tag_schema() {
    let server = TestServer::start(ServerOptions::plain());
    let key = cosign::generate_ed25519();
    let bundle = cosign::bundle_cosign_sign(&key, MANIFEST);
    let referrer = serve_referrer(&server, &bundle);
    let api = format!("/v2/{REPO}/referrers/{MANIFEST}");
    let tag = format!("/v2/{REPO}/manifests/sha256-{}", hex());
    server.route(&api, Route::Status(405));
    server.route(
        &tag,
        Route::bytes(index_of(&[&referrer])).with_header("content-type", OCI_INDEX),
    );
    let digest = Sha256Digest::parse(MANIFEST).unwrap();
    let material = fetcher(&server)
        .signatures(&request(&server), &digest)
        .await
        .unwrap();
    assert!(
        matches!(&material, Signatures::Oci { bundles, .. } if *bundles == vec![bundle.clone()]),
        "{material:?}"
    );
    assert_eq!((server.hits(&api), server.hits(&tag)), (1, 1));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn referrers_material_is_capped_while_reading() {
    let server = TestServer::start(ServerOptions::plain());
    let digest = Sha256Digest::parse(MANIFEST).unwrap();
    let api = format!("/v2/{REPO}/referrers/{MANIFEST}");

    // An endless referrers index: a reason, no hang, no memory growth.
    server.route(&api, Route::Endless);
    let material = fetcher(&server)
        .signatures(&request(&server), &digest)
        .await
        .unwrap();
    let Signatures::Missing(reason) = material else {
        panic!("{material:?}");
    };
    assert!(
        reason.contains("more than the 262144 bytes allowed"),
        "{reason}"
    );

    // A referrer manifest longer than it was listed: refused at its size.
    let key = cosign::generate_p256();
    let bundle = cosign::bundle_cosign_sign(&key, MANIFEST);
    let referrer = serve_referrer(&server, &bundle);
    let mut listed = index_of(&[&referrer]);
    let size = format!("\"size\":{}", referrer.len());
    listed = String::from_utf8(listed)
        .unwrap()
        .replace(&size, &format!("\"size\":{}", referrer.len() - 10))
        .into_bytes();
    server.route(&api, Route::bytes(listed));
    let e = fetcher(&server)
        .signatures(&request(&server), &digest)
        .await
        .unwrap_err();
    assert!(e.to_string().contains("more than the"), "{e}");

    // A bundle blob that does not match its digest.
    server.route(
        &api,
        Route::bytes(index_of(&[&referrer])).with_header("content-type", OCI_INDEX),
    );
    let mut bad = bundle.clone();
    bad[10] ^= 1;
    server.route(
        &format!("/v2/{REPO}/blobs/{}", digest_of(&bundle)),
        Route::bytes(bad),
    );
    let e = fetcher(&server)
        .signatures(&request(&server), &digest)
        .await
        .unwrap_err();
    assert!(e.to_string().contains(&digest_of(&bundle)), "{e}");
}
