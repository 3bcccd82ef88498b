//! Which key verified which digest is journaled with its evidence: a new
//! process (a restart, the CLI) serves a verified digest without a request,
//! and a record is trusted only when its evidence verifies again.

mod common;

use std::sync::Arc;
use std::time::Duration;

use common::{assert_module_at, builder, clock, req};
use wasm_cache::{Cache, ManualClock, Scheme, Sha256Digest, TrustPolicy};
use wasm_cache_conformance::MemoryFetcher;
use wasm_cache_core::{ErrorKind, IndexEvent, SignatureLayer, Signatures};
use wasm_cache_testkit::cosign::{self, SigningKey};
use wasm_cache_testkit::modules::{sample_module, sha256_hex};
use wasm_store_fs::Journal;

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

/// A cache on `dir` as a new process would open it: nothing shared in
/// memory but the fetcher (whose counters tell what was asked).
async fn open(fetcher: &Arc<MemoryFetcher>, dir: &std::path::Path, clock: &ManualClock) -> Cache {
    builder(dir, clock)
        .default_fetchers(false)
        .fetcher(Scheme::Http, fetcher.clone())
        .fetcher(Scheme::Oci, fetcher.clone())
        .build()
        .await
        .unwrap()
}

fn counts(f: &MemoryFetcher) -> (usize, usize, usize) {
    (
        f.resolve_count(),
        f.fetch_count(),
        f.signature_fetch_count(),
    )
}

/// A signed OCI module: (fetcher, module, manifest digest).
fn signed_oci(key: &SigningKey) -> (Arc<MemoryFetcher>, Vec<u8>, Sha256Digest) {
    let fetcher = Arc::new(MemoryFetcher::new());
    let module = sample_module(3_000, 11);
    let manifest = digest_of(b"manifest 11");
    fetcher.insert(OCI_URL, module.clone(), Some(manifest));
    fetcher.set_signatures(
        OCI_URL,
        manifest,
        Signatures::Cosign(vec![layer(key, "registry.example/team/filter", &manifest)]),
    );
    (fetcher, module, manifest)
}

fn journal_records(dir: &std::path::Path) -> Vec<IndexEvent> {
    Journal::<IndexEvent>::open(dir.join("index.journal"))
        .unwrap()
        .replay_report()
        .unwrap()
        .records
}

#[tokio::test]
async fn a_verification_survives_a_restart_and_the_next_hit_makes_no_request() {
    let key = cosign::generate_p256();
    let (fetcher, module, manifest) = signed_oci(&key);
    let dir = tempfile::tempdir().unwrap();
    let clock = clock();
    let first = open(&fetcher, dir.path(), &clock).await;
    let r = req(OCI_URL, "1").verify_with(policy(&[&key]));
    let path = first.get(&r).await.unwrap();
    assert_module_at(&path, &module);
    assert_eq!(counts(&fetcher), (1, 1, 1));
    first.shutdown().await.unwrap();
    let signed: Vec<_> = journal_records(dir.path())
        .into_iter()
        .filter(|e| matches!(e, IndexEvent::Signed { checksum, .. } if *checksum == manifest))
        .collect();
    assert_eq!(signed.len(), 1, "one signature record: {signed:?}");

    // A new process, same policy: a hit, no request of any kind.
    let second = open(&fetcher, dir.path(), &clock).await;
    assert_eq!(second.get(&r).await.unwrap(), path);
    assert_eq!(
        counts(&fetcher),
        (1, 1, 1),
        "a verified hit makes no request"
    );
    // The record keeps the payload, so a policy requiring the payload to
    // name the repository is satisfied offline too.
    let strict = req(OCI_URL, "1").verify_with(policy(&[&key]).require_reference(true));
    assert_eq!(second.get(&strict).await.unwrap(), path);
    assert_eq!(counts(&fetcher), (1, 1, 1));
    second.shutdown().await.unwrap();

    // A policy of another key has no record: the signature is fetched (and
    // does not verify); the module is not downloaded again.
    let third = open(&fetcher, dir.path(), &clock).await;
    let other = cosign::generate_p256();
    let err = third
        .get(&req(OCI_URL, "1").verify_with(policy(&[&other])))
        .await
        .unwrap_err();
    assert_eq!(err.kind(), ErrorKind::Integrity, "{err}");
    assert_eq!(counts(&fetcher), (1, 1, 2));
    third.shutdown().await.unwrap();
}

#[tokio::test]
async fn an_http_verification_is_journaled_and_a_module_cached_before_gets_one() {
    let fetcher = Arc::new(MemoryFetcher::new());
    let module = sample_module(4_000, 12);
    let key = cosign::generate_p256();
    fetcher.insert(HTTP_URL, module.clone(), None);
    fetcher.set_signatures(
        HTTP_URL,
        digest_of(&module),
        Signatures::Detached(cosign::sign_blob(&key, &module)),
    );
    let dir = tempfile::tempdir().unwrap();
    let clock = clock();
    // Cached without a policy: the journal has no signature record, as
    // journals written before records existed.
    let plain = open(&fetcher, dir.path(), &clock).await;
    let path = plain.get(&req(HTTP_URL, "1")).await.unwrap();
    plain.shutdown().await.unwrap();
    assert!(
        !journal_records(dir.path())
            .iter()
            .any(|e| matches!(e, IndexEvent::Signed { .. }))
    );
    assert_eq!(counts(&fetcher), (1, 1, 0));

    // Such a journal loads; under a policy the signature alone is fetched.
    let r = req(HTTP_URL, "1").verify_with(policy(&[&key]));
    let second = open(&fetcher, dir.path(), &clock).await;
    assert_eq!(second.get(&r).await.unwrap(), path);
    assert_eq!(counts(&fetcher), (1, 1, 1));
    second.shutdown().await.unwrap();

    // And from then on, in any process, nothing.
    let third = open(&fetcher, dir.path(), &clock).await;
    assert_eq!(third.get(&r).await.unwrap(), path);
    assert_eq!(counts(&fetcher), (1, 1, 1));
    third.shutdown().await.unwrap();
}

#[tokio::test]
async fn forged_and_corrupt_records_are_ignored_not_trusted() {
    let key = cosign::generate_p256();
    let (fetcher, _module, manifest) = signed_oci(&key);
    let dir = tempfile::tempdir().unwrap();
    let clock = clock();
    let first = open(&fetcher, dir.path(), &clock).await;
    first
        .get(&req(OCI_URL, "1").verify_with(policy(&[&key])))
        .await
        .unwrap();
    first.shutdown().await.unwrap();
    let genuine = journal_records(dir.path())
        .into_iter()
        .find_map(|e| match e {
            IndexEvent::Signed { evidence, .. } => Some(evidence),
            _ => None,
        })
        .expect("a signature record");

    // A local user claims that the attacker's key verified the digest:
    // with the genuine evidence (signed by another key), with evidence of
    // another kind, with garbage, and in a line whose checksum is wrong.
    let attacker = cosign::generate_p256();
    let claimed = Sha256Digest::parse(&attacker.public_key().fingerprint().to_hex()).unwrap();
    // The attacker's own valid signature, but over another digest.
    let elsewhere = digest_of(b"another manifest");
    let subject = wasm_cache_signature::Subject {
        reference: OCI_URL,
        repository: None,
        digest: &elsewhere,
    };
    let own = layer(&attacker, "registry.example/team/filter", &elsewhere);
    let forged_other_digest = policy(&[&attacker])
        .verify_cosign(
            &subject,
            [wasm_cache_signature::CosignLayer {
                media_type: &own.media_type,
                payload: &own.payload,
                signature: own.signature.as_deref(),
            }],
        )
        .unwrap()
        .evidence
        .to_record()
        .unwrap();
    let journal = Journal::<IndexEvent>::open(dir.path().join("index.journal")).unwrap();
    for evidence in [
        genuine.clone(),
        forged_other_digest,
        r#"{"kind":"digest","signature":"MEUCIQ=="}"#.to_owned(),
        "not json".to_owned(),
    ] {
        journal
            .append(&IndexEvent::Signed {
                checksum: manifest,
                key: claimed,
                evidence,
            })
            .unwrap();
    }
    drop(journal);
    let mut text = std::fs::read_to_string(dir.path().join("index.journal")).unwrap();
    let line = text.lines().last().unwrap().to_owned();
    // The same record with one character changed: its CRC no longer matches.
    text.push_str(&line.replacen("not json", "not jsox", 1));
    text.push('\n');
    std::fs::write(dir.path().join("index.journal"), text).unwrap();

    let second = open(&fetcher, dir.path(), &clock).await;
    let err = second
        .get(&req(OCI_URL, "1").verify_with(policy(&[&attacker])))
        .await
        .unwrap_err();
    assert!(
        err.to_string().starts_with("no valid signature for"),
        "{err}"
    );
    assert_eq!(
        counts(&fetcher),
        (1, 1, 2),
        "the signature was fetched, not taken from the forged records"
    );
    // The genuine key's record still serves without a request.
    second
        .get(&req(OCI_URL, "1").verify_with(policy(&[&key])))
        .await
        .unwrap();
    assert_eq!(counts(&fetcher), (1, 1, 2));
    second.shutdown().await.unwrap();
}

#[tokio::test]
async fn records_go_with_the_purged_module() {
    let key = cosign::generate_p256();
    let (fetcher, _module, manifest) = signed_oci(&key);
    let dir = tempfile::tempdir().unwrap();
    let clock = clock();
    let r = req(OCI_URL, "1").verify_with(policy(&[&key]));
    let first = open(&fetcher, dir.path(), &clock).await;
    first.get(&r).await.unwrap();
    clock.advance(wasm_cache::DEFAULT_EXPIRY + Duration::from_secs(60));
    let report = first.purge().await.unwrap();
    assert_eq!(report.expired.len(), 1, "{report:?}");
    first.shutdown().await.unwrap();

    // The journal still holds the record line (until a compaction), but
    // replaying the removal drops it: a new process verifies again.
    let second = open(&fetcher, dir.path(), &clock).await;
    second.get(&r).await.unwrap();
    assert_eq!(counts(&fetcher), (2, 2, 2));
    second.shutdown().await.unwrap();
    let records = journal_records(dir.path());
    assert!(
        records
            .iter()
            .any(|e| matches!(e, IndexEvent::Signed { checksum, .. } if *checksum == manifest))
    );
}
