//! Detached `cosign sign-blob` signatures on http(s) modules, against a real
//! HTTP server on loopback: verified on the streamed digest before the
//! module is stored.

mod common;

use common::{assert_module_at, builder, clock, module_files, req};
use wasm_cache::{ErrorKind, TrustPolicy};
use wasm_cache_testkit::cosign::{self, SigningKey};
use wasm_cache_testkit::http::{Route, ServerOptions, TestServer};
use wasm_cache_testkit::modules::{gzip, sample_module, sha256_hex};

fn policy(keys: &[&SigningKey]) -> TrustPolicy {
    TrustPolicy::new(keys.iter().map(|k| k.public_key())).unwrap()
}

#[tokio::test]
async fn signed_module_is_served_and_a_verified_hit_makes_no_request() {
    let s = TestServer::start(ServerOptions::plain());
    let module = sample_module(50_000, 1);
    let key = cosign::generate_p256();
    s.route("/m.wasm", Route::bytes(module.clone()));
    s.route(
        "/m.wasm.sig",
        Route::bytes(cosign::sign_blob(&key, &module)),
    );
    let dir = tempfile::tempdir().unwrap();
    let cache = builder(dir.path(), &clock()).build().await.unwrap();
    let r = req(&s.url("/m.wasm"), "1").verify_with(policy(&[&key]));
    let path = cache.get(&r).await.unwrap();
    assert_module_at(&path, &module);
    assert_eq!((s.hits("/m.wasm"), s.hits("/m.wasm.sig")), (1, 1));
    assert_eq!(cache.get(&r).await.unwrap(), path);
    assert_eq!((s.hits("/m.wasm"), s.hits("/m.wasm.sig")), (1, 1));
    cache.shutdown().await.unwrap();
}

#[tokio::test]
async fn gzipped_module_verifies_on_the_digest_of_the_unboxed_module() {
    // What is signed is the module (`cosign sign-blob plugin.wasm`), what is
    // served may be boxed: the check is on the bytes the cache stores.
    let s = TestServer::start(ServerOptions::plain());
    let module = sample_module(30_000, 2);
    let key = cosign::generate_p256();
    s.route("/m.wasm.gz", Route::bytes(gzip(&module)));
    s.route(
        "/sigs/m",
        Route::bytes(format!("{}\n", cosign::sign_blob(&key, &module))),
    );
    let dir = tempfile::tempdir().unwrap();
    let cache = builder(dir.path(), &clock()).build().await.unwrap();
    let r = req(&s.url("/m.wasm.gz"), "1")
        .verify_with(policy(&[&key]))
        .signature_url(s.url("/sigs/m"));
    assert_module_at(&cache.get(&r).await.unwrap(), &module);
    cache.shutdown().await.unwrap();
}

#[tokio::test]
async fn failures_store_nothing_and_record_nothing() {
    let s = TestServer::start(ServerOptions::plain());
    let module = sample_module(20_000, 3);
    let key = cosign::generate_p256();
    let other = cosign::generate_p256();
    s.route("/wrong-key.wasm", Route::bytes(module.clone()));
    s.route(
        "/wrong-key.wasm.sig",
        Route::bytes(cosign::sign_blob(&other, &module)),
    );
    s.route("/unsigned.wasm", Route::bytes(module.clone()));
    s.route("/garbage.wasm", Route::bytes(module.clone()));
    s.route("/garbage.wasm.sig", Route::bytes("%%% not a signature %%%"));
    s.route("/huge.wasm", Route::bytes(module.clone()));
    s.route("/huge.wasm.sig", Route::bytes(vec![b'A'; 100_000]));
    let dir = tempfile::tempdir().unwrap();
    let cache = builder(dir.path(), &clock()).build().await.unwrap();
    let p = policy(&[&key]);
    for (path, reason) in [
        ("/wrong-key.wasm", "does not verify"),
        ("/unsigned.wasm", "404"),
        ("/garbage.wasm", "not base64"),
        ("/huge.wasm", "larger than 4096 bytes"),
    ] {
        let url = s.url(path);
        let err = cache
            .get(&req(&url, "1").verify_with(p.clone()))
            .await
            .unwrap_err();
        assert_eq!(err.kind(), ErrorKind::Integrity, "{path}: {err}");
        assert_eq!(
            err.to_string(),
            format!(
                "no valid signature for {url}@sha256:{} by any of {}",
                sha256_hex(&module),
                p.fingerprints()[0]
            )
        );
        let reasons = match err.as_fetch() {
            Some(wasm_cache_core::Error::NoValidSignature { reasons, .. }) => reasons.join("; "),
            other => panic!("{path}: {other:?}"),
        };
        assert!(reasons.contains(reason), "{path}: {reasons}");
        assert!(cache.checksum_record(&url).is_none(), "{path}");
    }
    assert!(cache.entries().is_empty());
    assert!(
        module_files(dir.path()).is_empty(),
        "{:?}",
        module_files(dir.path())
    );
    cache.shutdown().await.unwrap();
}

#[tokio::test]
async fn a_policy_added_to_a_cached_module_fetches_only_the_signature() {
    let s = TestServer::start(ServerOptions::plain());
    let module = sample_module(40_000, 4);
    let key = cosign::generate_p256();
    s.route("/m.wasm", Route::bytes(module.clone()));
    let dir = tempfile::tempdir().unwrap();
    let cache = builder(dir.path(), &clock()).build().await.unwrap();
    let url = s.url("/m.wasm");
    let path = cache.get(&req(&url, "1")).await.unwrap();
    s.route(
        "/m.wasm.sig",
        Route::bytes(cosign::sign_blob(&key, &module)),
    );
    let r = req(&url, "1").verify_with(policy(&[&key]));
    assert_eq!(cache.get(&r).await.unwrap(), path);
    assert_eq!((s.hits("/m.wasm"), s.hits("/m.wasm.sig")), (1, 1));
    cache.shutdown().await.unwrap();
}
