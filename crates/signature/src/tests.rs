//! Unit and property tests of keys, payload checks and the trust policy.

use proptest::prelude::*;
use wasm_cache_core::Sha256Digest;

use crate::*;

fn digest(byte: u8) -> Sha256Digest {
    Sha256Digest::from_bytes([byte; 32])
}

fn subject<'a>(digest: &'a Sha256Digest) -> Subject<'a> {
    Subject {
        reference: "127.0.0.1:5000/team/module:v1",
        repository: Some("127.0.0.1:5000/team/module"),
        digest,
    }
}

fn layer<'a>(payload: &'a [u8], signature: &'a str) -> CosignLayer<'a> {
    CosignLayer {
        media_type: SIMPLE_SIGNING_MEDIA_TYPE,
        payload,
        signature: Some(signature),
    }
}

fn p256(seed: &str) -> SigningKey {
    SigningKey::p256_from_seed(seed.as_bytes())
}

fn ed(seed: &str) -> SigningKey {
    SigningKey::ed25519_from_seed(seed.as_bytes())
}

// Fixtures made by OpenSSL 3.0, an implementation independent of ours:
// `openssl ecparam -name prime256v1 -genkey` / `openssl ec -pubout` (the
// SubjectPublicKeyInfo PEM `cosign generate-key-pair` writes as cosign.pub),
// `openssl dgst -sha256 -sign` over sigstore's test payload (ASN.1 DER, as Go's
// ecdsa.SignASN1), `openssl genpkey -algorithm ed25519` and
// `openssl pkeyutl -sign -rawin`, and `openssl pkey -pubin -outform der | sha256sum`.
const COSIGN_PUB: &str = "-----BEGIN PUBLIC KEY-----
MFkwEwYHKoZIzj0CAQYIKoZIzj0DAQcDQgAEPFIBoMkl4EWt8hYOXFcGu2+RgcUx
Sh2Jmnj+ZRq6Cj9j5XvFpQFs4R7HIneT1R4SVmxv72p75B61pNhHHuyGBQ==
-----END PUBLIC KEY-----
";
const COSIGN_PUB_SHA256: &str = "45b7a5bc11c04f8f3100dc6036c8d3afad4577b1319ca25df3758834c782ec82";
const OPENSSL_ED25519_PUB: &str = "-----BEGIN PUBLIC KEY-----
MCowBQYDK2VwAyEAZZLbE/9Qd4IYRXGlJKY+Xe9MZASBpvqKyJ9FV0y81zg=
-----END PUBLIC KEY-----
";
const SIGSTORE_PAYLOAD: &str = r#"{"critical":{"identity":{"docker-reference":"example.com/test/image"},"image":{"docker-manifest-digest":"sha256:d34db33fd34db33fd34db33fd34db33fd34db33fd34db33fd34db33fd34db33f"},"type":"cosign container image signature"},"optional":null}"#;
const OPENSSL_P256_SIG: &str = "MEQCIBULL4QKNNo1vymgyuKkvxvDdKsmXSEec2ZD89v4gn0LAiBAiKVHvdbjw7pc46fTMTI+3J3ihPmp3Wwqqs0SOgcIAA==";
const OPENSSL_ED25519_SIG: &str =
    "EE1Ypttl+G5AuDRbIjKcQWC+DNTJKTJpcoX19aof+sjKuc1mgLuuEiWu2QCeMbBhqMIQaAdBzWlRms4nK+gACw==";

#[test]
fn verifies_signatures_made_by_openssl() {
    let d = Sha256Digest::parse(
        "sha256:d34db33fd34db33fd34db33fd34db33fd34db33fd34db33fd34db33fd34db33f",
    )
    .unwrap();
    let subject = Subject {
        reference: "example.com/test/image",
        repository: Some("example.com/test/image"),
        digest: &d,
    };
    for (pem, sig) in [
        (COSIGN_PUB, OPENSSL_P256_SIG),
        (OPENSSL_ED25519_PUB, OPENSSL_ED25519_SIG),
    ] {
        let policy = TrustPolicy::new([PublicKey::from_pem(pem).unwrap()])
            .unwrap()
            .require_reference(true);
        let layer = layer(SIGSTORE_PAYLOAD.as_bytes(), sig);
        assert!(policy.verify_cosign(&subject, [layer]).is_ok(), "{pem}");
    }
    assert_eq!(
        PublicKey::from_pem(COSIGN_PUB)
            .unwrap()
            .fingerprint()
            .to_hex(),
        COSIGN_PUB_SHA256
    );
    // The same ECDSA signature, read as a blob signature over the payload's sha256.
    let payload_digest = Sha256Digest::from_bytes(
        sha2::Digest::finalize(<sha2::Sha256 as sha2::Digest>::new_with_prefix(
            SIGSTORE_PAYLOAD,
        ))
        .into(),
    );
    let blob = Subject {
        reference: "https://h/payload.json",
        repository: None,
        digest: &payload_digest,
    };
    let policy = TrustPolicy::new([PublicKey::from_pem(COSIGN_PUB).unwrap()]).unwrap();
    assert!(policy.verify_blob(&blob, OPENSSL_P256_SIG).is_ok());
}

#[test]
fn parses_cosign_p256_and_ed25519_public_keys() {
    let key = PublicKey::from_pem(COSIGN_PUB).unwrap();
    assert_eq!(key.algorithm(), KeyAlgorithm::EcdsaP256Sha256);
    let ed_key = PublicKey::from_pem(ed("a").public_key_pem()).unwrap();
    assert_eq!(ed_key.algorithm(), KeyAlgorithm::Ed25519);
    // CRLF line endings and surrounding text are fine.
    let crlf = format!("a comment\r\n{}", COSIGN_PUB.replace('\n', "\r\n"));
    assert_eq!(PublicKey::from_pem(crlf).unwrap(), key);
}

#[test]
fn written_pem_is_cosigns_layout() {
    let pem = p256("layout").public_key_pem();
    let lines: Vec<&str> = pem.split('\n').collect();
    assert_eq!(lines[0], "-----BEGIN PUBLIC KEY-----");
    assert_eq!(lines[1].len(), 64);
    assert_eq!(lines[2].len(), 60, "91-byte SPKI is 124 base64 characters");
    assert_eq!(lines[3], "-----END PUBLIC KEY-----");
    assert_eq!(lines[4], "");
    assert!(!pem.contains('\r'));
}

#[test]
fn fingerprint_is_sha256_of_spki_der_and_shown_short() {
    let key = p256("fp");
    let der = key.public_key_der();
    let fp = key.public_key().fingerprint();
    let expected = Sha256Digest::from_bytes(
        sha2::Digest::finalize(<sha2::Sha256 as sha2::Digest>::new_with_prefix(&der)).into(),
    );
    assert_eq!(fp.digest(), &expected);
    let shown = fp.to_string();
    assert_eq!(shown, format!("sha256:{}", &expected.to_hex()[..16]));
    assert_eq!(fp.to_hex().parse::<KeyFingerprint>().unwrap(), fp);
    assert_ne!(fp, ed("fp").public_key().fingerprint());
}

#[test]
fn rejects_keys_that_are_not_supported_public_keys() {
    let cases: Vec<(String, &str)> = vec![
        (String::new(), "no PEM"),
        ("not a key".into(), "no PEM"),
        (
            COSIGN_PUB.replace("PUBLIC KEY", "ENCRYPTED SIGSTORE PRIVATE KEY"),
            "expected \"PUBLIC KEY\"",
        ),
        (
            "-----BEGIN PUBLIC KEY-----\nAAAA\n-----END PUBLIC KEY-----\n".into(),
            "malformed SubjectPublicKeyInfo",
        ),
        (format!("{COSIGN_PUB}{COSIGN_PUB}"), "found 2"),
        // OpenSSL-made RSA 1024 and P-384 public keys.
        (
            "-----BEGIN PUBLIC KEY-----\nMIGfMA0GCSqGSIb3DQEBAQUAA4GNADCBiQKBgQDKDga2h246kfs1H1/7Kx7cT3ft\nmEcH+wGiLhQ31N95g1CVYImP4Udb5N52nSK98MqxnCwtZTzeeDXL41AsZzvYeEqK\nmT1wXikmZuzEDf1+uptcCn03OBDnfxwq7mqJmS8ge7l6igjrJ0yPNxEa2Tu4x+zj\nTZX/6zC246ACqHaQ5wIDAQAB\n-----END PUBLIC KEY-----\n".into(),
            "unsupported key algorithm 1.2.840.113549.1.1.1",
        ),
        (
            "-----BEGIN PUBLIC KEY-----\nMHYwEAYHKoZIzj0CAQYFK4EEACIDYgAEcM7/GYN+xTMQevuk/hESBMN6XKZueyz1\nDTNcxAeXUtq74OJcI48PiinwE5bUll82c/tP9DT3pedDmZQlvWwNwRGoDmCyczSQ\nY8EBUGH9pnvyJ9OBgD9EJYdC82LuYUnq\n-----END PUBLIC KEY-----\n".into(),
            "only P-256",
        ),
    ];
    for (pem, want) in cases {
        let err = PublicKey::from_pem(&pem).unwrap_err();
        assert!(matches!(err, Error::InvalidPublicKey { .. }), "{err:?}");
        assert!(err.to_string().contains(want), "{pem:?}: {err}");
    }
    // Off-curve P-256 point: flip the last byte of the encoded point.
    let mut der = p256("offcurve").public_key_der();
    let last = der.len() - 1;
    der[last] ^= 1;
    assert!(PublicKey::from_spki_der(&der).is_err());
}

#[test]
fn several_keys_in_one_file() {
    let text = format!(
        "{}{}",
        p256("one").public_key_pem(),
        ed("two").public_key_pem()
    );
    let keys = PublicKey::from_pem_many(text).unwrap();
    assert_eq!(keys.len(), 2);
    assert_eq!(keys[1].algorithm(), KeyAlgorithm::Ed25519);
}

#[test]
fn debug_shows_no_key_material() {
    let key = p256("debug");
    let debug = format!("{key:?} {:?}", key.public_key());
    assert!(debug.contains("EcdsaP256Sha256"), "{debug}");
    assert!(
        !debug.contains("secret") && !debug.contains("scalar"),
        "{debug}"
    );
}

#[test]
fn cosign_layer_verifies_for_both_key_types() {
    let d = digest(1);
    for signer in [p256("k"), ed("k")] {
        let (payload, sig) = signer.sign_cosign_payload("127.0.0.1:5000/team/module", &d);
        let policy = TrustPolicy::new([signer.public_key()]).unwrap();
        let verified = policy
            .verify_cosign(&subject(&d), [layer(&payload, &sig)])
            .unwrap();
        assert_eq!(verified.key, signer.public_key().fingerprint());
    }
}

#[test]
fn wrong_key_fails_with_the_documented_message() {
    let d = digest(2);
    let (payload, sig) = p256("signer").sign_cosign_payload("r.example/x", &d);
    let policy = TrustPolicy::new([p256("other").public_key(), ed("other").public_key()]).unwrap();
    let err = policy
        .verify_cosign(&subject(&d), [layer(&payload, &sig)])
        .unwrap_err();
    let fps = policy.fingerprints();
    assert_eq!(
        err.to_string(),
        format!(
            "no valid signature for 127.0.0.1:5000/team/module:v1@{} by any of {}, {}",
            d.to_prefixed(),
            fps[0],
            fps[1]
        )
    );
    assert_eq!(err.reasons().len(), 1);
    assert!(
        err.reasons()[0].contains("does not verify"),
        "{:?}",
        err.reasons()
    );
}

#[test]
fn payload_for_another_digest_fails() {
    let d = digest(3);
    let signer = p256("k");
    let (payload, sig) = signer.sign_cosign_payload("r.example/x", &digest(4));
    let policy = TrustPolicy::new([signer.public_key()]).unwrap();
    let err = policy
        .verify_cosign(&subject(&d), [layer(&payload, &sig)])
        .unwrap_err();
    assert!(
        err.reasons()[0].contains("the payload is for sha256:0404"),
        "{:?}",
        err.reasons()
    );
}

#[test]
fn other_repository_is_accepted_unless_required() {
    let d = digest(5);
    let signer = p256("k");
    let (payload, sig) = signer.sign_cosign_payload("elsewhere.example/copied/module:v9", &d);
    let policy = TrustPolicy::new([signer.public_key()]).unwrap();
    assert!(
        policy
            .verify_cosign(&subject(&d), [layer(&payload, &sig)])
            .is_ok()
    );
    let strict = policy.clone().require_reference(true);
    let err = strict
        .verify_cosign(&subject(&d), [layer(&payload, &sig)])
        .unwrap_err();
    assert!(
        err.reasons()[0].contains("elsewhere.example/copied/module:v9"),
        "{:?}",
        err.reasons()
    );
    let (payload, sig) = signer.sign_cosign_payload("127.0.0.1:5000/team/module:v1", &d);
    assert!(
        strict
            .verify_cosign(&subject(&d), [layer(&payload, &sig)])
            .is_ok()
    );
    // A blob subject has no repository: a strict policy cannot match it.
    let blob = Subject {
        repository: None,
        ..subject(&d)
    };
    assert!(
        strict
            .verify_cosign(&blob, [layer(&payload, &sig)])
            .is_err()
    );
}

#[test]
fn garbage_annotations_and_layers_are_rejected_with_reasons() {
    let d = digest(6);
    let signer = p256("k");
    let (payload, sig) = signer.sign_cosign_payload("r.example/x", &d);
    let policy = TrustPolicy::new([signer.public_key()]).unwrap();
    let long = "A".repeat(MAX_SIGNATURE_BASE64_LEN + 4);
    let cases: Vec<(CosignLayer<'_>, &str)> = vec![
        (layer(&payload, "%%% not base64 %%%"), "not base64"),
        (layer(&payload, ""), "empty"),
        (layer(&payload, &long), "more than"),
        (layer(&payload, "AAAA"), "not an ASN.1 DER"),
        (
            CosignLayer {
                signature: None,
                ..layer(&payload, &sig)
            },
            "no \"dev.cosignproject.cosign/signature\" annotation",
        ),
        (
            CosignLayer {
                media_type: "application/octet-stream",
                ..layer(&payload, &sig)
            },
            "media type",
        ),
    ];
    for (candidate, want) in cases {
        let err = policy.verify_cosign(&subject(&d), [candidate]).unwrap_err();
        assert!(
            err.reasons()[0].contains(want),
            "{want}: {:?}",
            err.reasons()
        );
    }
    let err = policy.verify_cosign(&subject(&d), []).unwrap_err();
    assert!(err.reasons()[0].contains("no layers"));
}

#[test]
fn signed_payload_that_is_not_simple_signing_is_rejected() {
    let d = digest(7);
    let signer = p256("k");
    let payload = br#"{"critical":{"type":"cosign container image signature"}}"#;
    let sig = signer.sign_base64(payload);
    let policy = TrustPolicy::new([signer.public_key()]).unwrap();
    let err = policy
        .verify_cosign(&subject(&d), [layer(payload, &sig)])
        .unwrap_err();
    assert!(
        err.reasons()[0].contains("not a simple-signing document"),
        "{:?}",
        err.reasons()
    );
}

#[test]
fn any_one_valid_layer_and_any_one_key_suffice() {
    let d = digest(8);
    let first = p256("first");
    let second = ed("second");
    let (p1, s1) = first.sign_cosign_payload("r.example/x", &d);
    let (p2, s2) = second.sign_cosign_payload("r.example/x", &d);
    // Only the second key is trusted; the first layer is by an untrusted key.
    let policy = TrustPolicy::new([p256("untrusted").public_key(), second.public_key()]).unwrap();
    let verified = policy
        .verify_cosign(&subject(&d), [layer(&p1, &s1), layer(&p2, &s2)])
        .unwrap();
    assert_eq!(verified.key, second.public_key().fingerprint());
}

#[test]
fn policy_needs_a_key_and_drops_duplicates() {
    assert!(matches!(TrustPolicy::new([]), Err(Error::NoKeys)));
    let k = p256("dup").public_key();
    let policy = TrustPolicy::new([k.clone(), k.clone()]).unwrap();
    assert_eq!(policy.keys().len(), 1);
}

#[test]
fn recorded_verifications_are_accepted_only_for_trusted_keys() {
    let a = p256("a").public_key().fingerprint();
    let b = p256("b").public_key().fingerprint();
    let policy = TrustPolicy::new([p256("b").public_key()]).unwrap();
    assert_eq!(policy.accepts_recorded(&[a]), None);
    assert_eq!(policy.accepts_recorded(&[a, b]), Some(b));
    assert_eq!(
        policy
            .clone()
            .require_reference(true)
            .accepts_recorded(&[b]),
        None
    );
}

#[test]
fn blob_signature_verifies_from_the_digest_alone() {
    let blob = b"\0asm\x01\0\0\0 a module";
    let d = Sha256Digest::from_bytes(
        sha2::Digest::finalize(<sha2::Sha256 as sha2::Digest>::new_with_prefix(blob)).into(),
    );
    let signer = p256("blob");
    let sig = signer.sign_blob_prehashed_base64(&d).unwrap();
    // Same as signing the whole blob with SHA-256: what cosign sign-blob does.
    let whole = signer.sign(blob);
    let whole_b64 = base64::Engine::encode(&base64::engine::general_purpose::STANDARD, &whole);
    let blob_subject = Subject {
        reference: "https://h/m.wasm",
        repository: None,
        digest: &d,
    };
    let policy = TrustPolicy::new([ed("ed").public_key(), signer.public_key()]).unwrap();
    assert_eq!(
        policy.verify_blob(&blob_subject, &sig).unwrap().key,
        signer.public_key().fingerprint()
    );
    assert!(
        policy
            .verify_blob(&blob_subject, &format!("{whole_b64}\n"))
            .is_ok()
    );
    let other = digest(9);
    let err = policy
        .verify_blob(
            &Subject {
                digest: &other,
                ..blob_subject
            },
            &sig,
        )
        .unwrap_err();
    assert!(
        err.to_string()
            .starts_with("no valid signature for https://h/m.wasm@sha256:0909")
    );
    assert!(
        err.reasons()[0].contains("Ed25519 signs the whole blob"),
        "{:?}",
        err.reasons()
    );
    assert!(ed("x").sign_blob_prehashed_base64(&d).is_none());
}

#[test]
fn high_s_ecdsa_signatures_verify_as_in_go() {
    // Go's ecdsa.VerifyASN1 accepts both s and n-s; cosign signatures made by
    // Go may carry either, so we must too.
    use p256::ecdsa::signature::hazmat::PrehashSigner as _;
    let key = p256::ecdsa::SigningKey::from_slice(&[7u8; 32]).unwrap();
    let d = digest(10);
    let sig: p256::ecdsa::Signature = key.sign_prehash(d.as_bytes()).unwrap();
    let (r, s) = sig.split_scalars();
    let flipped = p256::ecdsa::Signature::from_scalars(r, -*s.as_ref()).unwrap();
    let public = PublicKey::from_spki_der(
        p256::pkcs8::EncodePublicKey::to_public_key_der(key.verifying_key())
            .unwrap()
            .as_bytes(),
    )
    .unwrap();
    for sig in [sig, flipped] {
        public
            .verify_sha256_prehashed(&d, sig.to_der().as_bytes())
            .unwrap();
    }
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 48, ..ProptestConfig::default() })]

    #[test]
    fn tampered_payload_never_verifies(pos in any::<prop::sample::Index>(), bit in 0u8..8, use_ed in any::<bool>()) {
        let d = digest(11);
        let signer = if use_ed { ed("tamper") } else { p256("tamper") };
        let (mut payload, sig) = signer.sign_cosign_payload("r.example/x", &d);
        let i = pos.index(payload.len());
        payload[i] ^= 1 << bit;
        let policy = TrustPolicy::new([signer.public_key()]).unwrap();
        prop_assert!(policy.verify_cosign(&subject(&d), [layer(&payload, &sig)]).is_err());
    }

    #[test]
    fn tampered_signature_never_verifies(pos in any::<prop::sample::Index>(), bit in 0u8..8, use_ed in any::<bool>()) {
        let d = digest(12);
        let signer = if use_ed { ed("tamper") } else { p256("tamper") };
        let payload = SimpleSigningPayload::cosign_bytes("r.example/x", &d, None);
        let mut raw = signer.sign(&payload);
        let i = pos.index(raw.len());
        raw[i] ^= 1 << bit;
        let sig = base64::Engine::encode(&base64::engine::general_purpose::STANDARD, &raw);
        let policy = TrustPolicy::new([signer.public_key()]).unwrap();
        prop_assert!(policy.verify_cosign(&subject(&d), [layer(&payload, &sig)]).is_err());
        let blob_sig = signer.sign_blob_prehashed_base64(&d);
        if let Some(b64) = blob_sig {
            let mut raw = base64::Engine::decode(&base64::engine::general_purpose::STANDARD, b64).unwrap();
            let i = pos.index(raw.len());
            raw[i] ^= 1 << bit;
            let sig = base64::Engine::encode(&base64::engine::general_purpose::STANDARD, &raw);
            let blob = Subject { repository: None, ..subject(&d) };
            prop_assert!(policy.verify_blob(&blob, &sig).is_err());
        }
    }

    #[test]
    fn arbitrary_bytes_never_verify_or_panic(payload in prop::collection::vec(any::<u8>(), 0..300), sig in "[A-Za-z0-9+/=]{0,120}") {
        let d = digest(13);
        let policy = TrustPolicy::new([p256("fuzz").public_key(), ed("fuzz").public_key()]).unwrap();
        prop_assert!(policy.verify_cosign(&subject(&d), [layer(&payload, &sig)]).is_err());
        prop_assert!(policy.verify_blob(&subject(&d), &sig).is_err());
        let _ = PublicKey::from_spki_der(&payload);
    }
}

// ---- Sigstore bundles -------------------------------------------------------

// Made by OpenSSL 3.0 (independent of our PAE and signer): a fresh P-256 key;
// the in-toto statement `cosign sign --new-bundle-format` writes for
// sha256:d34db33f...; `openssl dgst -sha256 -sign` over its DSSE v1
// pre-authentication encoding ("DSSEv1 28 application/vnd.in-toto+json <len> "
// + statement); `openssl pkeyutl -sign` over the raw digest bytes (what a
// bundle's messageSignature over that manifest is).
const BUNDLE_PUB: &str = "-----BEGIN PUBLIC KEY-----
MFkwEwYHKoZIzj0CAQYIKoZIzj0DAQcDQgAEKV2AhExoGJgDpgMbyNY9qj1BO0sT
8dM8GoljpU7WsU5E0d54I7eaX9TpPxbKW+a0tf2q4XhNvUsmc45THf1kfA==
-----END PUBLIC KEY-----
";
const BUNDLE_STATEMENT_B64: &str = "eyJfdHlwZSI6Imh0dHBzOi8vaW4tdG90by5pby9TdGF0ZW1lbnQvdjEiLCJzdWJqZWN0IjpbeyJkaWdlc3QiOnsic2hhMjU2IjoiZDM0ZGIzM2ZkMzRkYjMzZmQzNGRiMzNmZDM0ZGIzM2ZkMzRkYjMzZmQzNGRiMzNmZDM0ZGIzM2ZkMzRkYjMzZiJ9fV0sInByZWRpY2F0ZVR5cGUiOiJodHRwczovL3NpZ3N0b3JlLmRldi9jb3NpZ24vc2lnbi92MSIsInByZWRpY2F0ZSI6e319";
const BUNDLE_DSSE_SIG: &str = "MEUCIAZhelc6cYWqvUrEQodg82o1jjpEpVjw8zBXGSEMLzIQAiEApVb4o7Kaa6Gv05ArdYVah31fThAjunKRPlrzisqc8SM=";
const BUNDLE_MESSAGE_SIG: &str = "MEQCIHd6pxk5IxRv6a2iTJ+puwoDSZsYRQ03esIe4nLJGOLsAiA3VIbFtLm0YLWdiC+g7OLp3MXg8Zts9Ip0a2xl+FcV0A==";
const D34DB33F: &str = "sha256:d34db33fd34db33fd34db33fd34db33fd34db33fd34db33fd34db33fd34db33f";

fn b64(bytes: &[u8]) -> String {
    use base64::Engine as _;
    base64::engine::general_purpose::STANDARD.encode(bytes)
}

fn dsse_bundle(payload_b64: &str, sig: &str) -> Vec<u8> {
    serde_json::to_vec(&serde_json::json!({
        "mediaType": BUNDLE_MEDIA_TYPE,
        "verificationMaterial": {"publicKey": {"hint": "k"}, "tlogEntries": []},
        "dsseEnvelope": {
            "payload": payload_b64,
            "payloadType": IN_TOTO_PAYLOAD_TYPE,
            "signatures": [{"sig": sig, "keyid": ""}],
        },
    }))
    .unwrap()
}

fn message_bundle(digest: &Sha256Digest, sig: &str) -> Vec<u8> {
    serde_json::to_vec(&serde_json::json!({
        "mediaType": BUNDLE_MEDIA_TYPE,
        "verificationMaterial": {"publicKey": {"hint": "k"}},
        "messageSignature": {
            "messageDigest": {"algorithm": "SHA2_256", "digest": b64(digest.as_bytes())},
            "signature": sig,
        },
    }))
    .unwrap()
}

fn statement(digest: &Sha256Digest, name: Option<&str>) -> Vec<u8> {
    let mut subject = serde_json::json!({"digest": {"sha256": digest.to_hex()}});
    if let Some(name) = name {
        subject["name"] = name.into();
    }
    serde_json::to_vec(&serde_json::json!({
        "_type": "https://in-toto.io/Statement/v1",
        "subject": [subject],
        "predicateType": "https://sigstore.dev/cosign/sign/v1",
        "predicate": {},
    }))
    .unwrap()
}

fn sign_dsse(key: &SigningKey, statement: &[u8]) -> String {
    let mut pae = format!(
        "DSSEv1 {} {IN_TOTO_PAYLOAD_TYPE} {} ",
        IN_TOTO_PAYLOAD_TYPE.len(),
        statement.len()
    )
    .into_bytes();
    pae.extend_from_slice(statement);
    key.sign_base64(&pae)
}

fn reasons(e: &Error) -> String {
    e.reasons().join("; ")
}

#[test]
fn verifies_bundles_made_by_openssl() {
    let d = Sha256Digest::parse(D34DB33F).unwrap();
    let policy = TrustPolicy::new([PublicKey::from_pem(BUNDLE_PUB).unwrap()]).unwrap();
    let key = policy.fingerprints()[0];
    let dsse = dsse_bundle(BUNDLE_STATEMENT_B64, BUNDLE_DSSE_SIG);
    let verified = policy.verify_bundle(&subject(&d), &dsse).unwrap();
    assert_eq!(verified.key, key);
    let message = message_bundle(&d, BUNDLE_MESSAGE_SIG);
    assert_eq!(
        policy.verify_bundle(&subject(&d), &message).unwrap().key,
        key
    );
    // The same bytes for another digest: refused, saying why.
    let other = digest(7);
    let e = policy.verify_bundle(&subject(&other), &dsse).unwrap_err();
    assert!(
        reasons(&e).contains("the in-toto statement is for"),
        "{e:?}"
    );
    let e = policy
        .verify_bundle(&subject(&other), &message)
        .unwrap_err();
    assert!(reasons(&e).contains("signs another digest"), "{e:?}");
    // Swapped signatures (each valid, over something else) do not verify.
    let swapped = dsse_bundle(BUNDLE_STATEMENT_B64, BUNDLE_MESSAGE_SIG);
    assert!(
        reasons(&policy.verify_bundle(&subject(&d), &swapped).unwrap_err())
            .contains("does not verify")
    );
}

#[test]
fn bundles_by_other_keys_or_tampered_never_verify() {
    let d = digest(3);
    let signer = p256("bundle signer");
    let policy = TrustPolicy::new([signer.public_key()]).unwrap();
    let other = TrustPolicy::new([p256("someone else").public_key()]).unwrap();
    let st = statement(&d, None);
    let good = dsse_bundle(&b64(&st), &sign_dsse(&signer, &st));
    assert!(policy.verify_bundle(&subject(&d), &good).is_ok());
    assert!(
        reasons(&other.verify_bundle(&subject(&d), &good).unwrap_err()).contains("does not verify")
    );
    // A statement edited after signing.
    let edited = statement(&digest(4), None);
    let tampered = dsse_bundle(&b64(&edited), &sign_dsse(&signer, &st));
    assert!(
        policy
            .verify_bundle(&subject(&digest(4)), &tampered)
            .is_err()
    );
    // Another payload type, a statement that is not in-toto.
    let wrong_type = String::from_utf8(good.clone())
        .unwrap()
        .replace(IN_TOTO_PAYLOAD_TYPE, "application/json");
    assert!(
        reasons(
            &policy
                .verify_bundle(&subject(&d), wrong_type.as_bytes())
                .unwrap_err()
        )
        .contains("payloadType")
    );
    let not_statement = br#"{"_type":"https://example.com/x","subject":[]}"#;
    let e = policy
        .verify_bundle(
            &subject(&d),
            &dsse_bundle(&b64(not_statement), &sign_dsse(&signer, not_statement)),
        )
        .unwrap_err();
    assert!(reasons(&e).contains("not an in-toto statement"), "{e:?}");
    // Ed25519 signs DSSE envelopes, but not a messageSignature from a digest.
    let ed_key = ed("bundle ed25519");
    let ed_policy = TrustPolicy::new([ed_key.public_key()]).unwrap();
    let ed_good = dsse_bundle(&b64(&st), &sign_dsse(&ed_key, &st));
    assert!(ed_policy.verify_bundle(&subject(&d), &ed_good).is_ok());
    let e = ed_policy
        .verify_bundle(&subject(&d), &message_bundle(&d, &b64(&[0u8; 64])))
        .unwrap_err();
    assert!(reasons(&e).contains("Ed25519"), "{e:?}");
    // Keyless bundles say so.
    let keyless = String::from_utf8(good).unwrap().replace(
        r#""publicKey":{"hint":"k"}"#,
        r#""certificate":{"rawBytes":"AA=="}"#,
    );
    let e = other
        .verify_bundle(&subject(&d), keyless.as_bytes())
        .unwrap_err();
    assert!(reasons(&e).contains("keyless"), "{e:?}");
}

#[test]
fn require_reference_needs_a_statement_subject_naming_the_repository() {
    let d = digest(5);
    let signer = p256("strict bundle signer");
    let strict = TrustPolicy::new([signer.public_key()])
        .unwrap()
        .require_reference(true);
    let named = statement(&d, Some("127.0.0.1:5000/team/module"));
    let bundle = dsse_bundle(&b64(&named), &sign_dsse(&signer, &named));
    assert!(strict.verify_bundle(&subject(&d), &bundle).is_ok());
    let unnamed = statement(&d, None);
    let bundle = dsse_bundle(&b64(&unnamed), &sign_dsse(&signer, &unnamed));
    assert!(
        reasons(&strict.verify_bundle(&subject(&d), &bundle).unwrap_err())
            .contains("names no subject")
    );
    let message = message_bundle(&d, &signer.sign_blob_prehashed_base64(&d).unwrap());
    assert!(
        reasons(&strict.verify_bundle(&subject(&d), &message).unwrap_err())
            .contains("names no repository")
    );
}

#[test]
fn evidence_verifies_again_only_for_its_subject_and_keys() {
    let d = digest(6);
    let signer = p256("evidence signer");
    let policy = TrustPolicy::new([signer.public_key()]).unwrap();
    let other = TrustPolicy::new([p256("evidence other").public_key()]).unwrap();
    let (payload, sig) = signer.sign_cosign_payload("127.0.0.1:5000/team/module", &d);
    let st = statement(&d, None);
    let candidates = [
        policy
            .verify_cosign(&subject(&d), [layer(&payload, &sig)])
            .unwrap(),
        policy
            .verify_bundle(
                &subject(&d),
                &dsse_bundle(&b64(&st), &sign_dsse(&signer, &st)),
            )
            .unwrap(),
        policy
            .verify_bundle(
                &subject(&d),
                &message_bundle(&d, &signer.sign_blob_prehashed_base64(&d).unwrap()),
            )
            .unwrap(),
    ];
    for verified in candidates {
        let record = verified.evidence.to_record().unwrap();
        let evidence = Evidence::from_record(&record).unwrap();
        assert_eq!(evidence, verified.evidence);
        assert_eq!(
            policy.verify_evidence(&subject(&d), &evidence).unwrap(),
            verified
        );
        assert!(
            policy
                .verify_evidence(&subject(&digest(9)), &evidence)
                .is_err()
        );
        assert!(other.verify_evidence(&subject(&d), &evidence).is_err());
        // Debug shows no payload.
        assert!(!format!("{evidence:?}").contains(&record[20..40]));
    }
    // A record that is not evidence, or too long, is refused with a reason.
    assert!(Evidence::from_record("{}").is_err());
    assert!(Evidence::from_record(r#"{"kind":"digest","signature":"x","extra":1}"#).is_err());
    assert!(
        Evidence::from_record(&" ".repeat(MAX_EVIDENCE_RECORD_LEN + 1))
            .unwrap_err()
            .contains("more than")
    );
}

proptest! {
    #[test]
    fn arbitrary_bundles_never_verify_or_panic(bytes in proptest::collection::vec(any::<u8>(), 0..2048)) {
        let d = digest(8);
        let policy = TrustPolicy::new([p256("fuzz").public_key()]).unwrap();
        prop_assert!(policy.verify_bundle(&subject(&d), &bytes).is_err());
        let text = String::from_utf8_lossy(&bytes);
        let _ = Evidence::from_record(&text);
        let _ = parse_referrers_index(&bytes);
        let _ = parse_bundle_manifest(&bytes, &d);
    }
}
