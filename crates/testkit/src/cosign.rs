//! Signing fixtures in cosign's formats, against the real test registry.
//!
//! Follows cosign byte for byte where it matters to a verifier:
//! - keys: ECDSA P-256 (what `cosign generate-key-pair` makes) or Ed25519,
//!   public halves written as PEM `PUBLIC KEY` (SubjectPublicKeyInfo), like `cosign.pub`;
//! - `cosign sign --key`: a simple-signing payload (sigstore's `payload.Cosign`
//!   JSON, `critical.identity.docker-reference` = `<registry>/<repo>`) pushed as
//!   a layer of media type `application/vnd.dev.cosign.simplesigning.v1+json`
//!   with the base64 signature in the `dev.cosignproject.cosign/signature`
//!   annotation, in an OCI image manifest (config as go-containerregistry
//!   writes it) tagged `sha256-<manifest hex>.sig` in the same repository;
//! - `cosign sign-blob --key`: base64 of an ECDSA P-256 signature over the
//!   blob's SHA-256;
//! - sigstore bundles (v0.3, protobuf JSON) signed by a key: a
//!   `messageSignature` over a manifest, or a DSSE envelope holding the
//!   in-toto statement `cosign sign` writes with the new bundle format
//!   (subject digest only, predicate `https://sigstore.dev/cosign/sign/v1`),
//!   attached as OCI 1.1 referrers as cosign's `specs/BUNDLE_SPEC.md` says:
//!   a manifest with `artifactType` and `subject`, and, because the test
//!   registry (distribution 2.8) has no referrers API, an index at the
//!   referrers tag `sha256-<hex>`.
//!
//! ```no_run
//! # async fn demo() {
//! use wasm_cache_testkit::{cosign, images, modules, registry::{Registry, RegistryKind}};
//!
//! let registry = Registry::start(RegistryKind::Plain);
//! let pushed = images::push_oci_image(&registry, "org/filter", "v1", &modules::sample_module(4096, 1)).await;
//! let key = cosign::generate_p256();
//! cosign::sign_image(&registry, "org/filter", &pushed.manifest_digest, &key).await;
//! std::fs::write("cosign.pub", key.public_key_pem()).unwrap();
//! # }
//! ```

use serde_json::{Value, json};
use wasm_cache_core::Sha256Digest;
pub use wasm_cache_signature::SigningKey;
use wasm_cache_signature::{SIGNATURE_ANNOTATION, SIMPLE_SIGNING_MEDIA_TYPE};

use crate::images::{
    OCI_CONFIG, OCI_INDEX, OCI_MANIFEST, Pushed, digest_of, push_blob, push_manifest_json,
};
use crate::registry::Registry;

fn random_seed() -> [u8; 32] {
    let mut seed = [0u8; 32];
    ring::rand::SecureRandom::fill(&ring::rand::SystemRandom::new(), &mut seed)
        .expect("the system random source works");
    seed
}

/// A fresh ECDSA P-256 key, as `cosign generate-key-pair` makes.
pub fn generate_p256() -> SigningKey {
    SigningKey::p256_from_seed(&random_seed())
}

/// A fresh Ed25519 key.
pub fn generate_ed25519() -> SigningKey {
    SigningKey::ed25519_from_seed(&random_seed())
}

/// `sha256:<hex>` parsed; panics on a malformed digest (a test bug).
fn parse_digest(digest: &str) -> Sha256Digest {
    Sha256Digest::parse(digest).unwrap_or_else(|e| panic!("{digest:?} is not a digest: {e}"))
}

/// The cosign signature tag for a manifest digest (`sha256-<hex>.sig`).
pub fn signature_tag(manifest_digest: &str) -> String {
    wasm_cache_signature::signature_tag(&parse_digest(manifest_digest))
}

/// One layer of a signature manifest; fields are public so tests can forge them.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SignatureLayer {
    /// The layer's media type (cosign: [`SIMPLE_SIGNING_MEDIA_TYPE`]).
    pub media_type: String,
    /// The payload bytes (pushed as the layer's blob).
    pub payload: Vec<u8>,
    /// The signature annotation, or `None` for a layer without one.
    pub signature: Option<String>,
}

impl SignatureLayer {
    /// What `cosign sign --key` makes for `manifest_digest` claimed at `docker_reference`.
    pub fn sign(key: &SigningKey, docker_reference: &str, manifest_digest: &str) -> Self {
        let (payload, signature) =
            key.sign_cosign_payload(docker_reference, &parse_digest(manifest_digest));
        Self {
            media_type: SIMPLE_SIGNING_MEDIA_TYPE.to_owned(),
            payload,
            signature: Some(signature),
        }
    }

    fn descriptor(&self) -> Value {
        let mut d = json!({
            "mediaType": self.media_type,
            "size": self.payload.len(),
            "digest": digest_of(&self.payload),
        });
        if let Some(sig) = &self.signature {
            d["annotations"] = json!({ SIGNATURE_ANNOTATION: sig });
        }
        d
    }
}

/// The signature manifest cosign pushes for `layers`: an OCI image manifest
/// whose config is go-containerregistry's empty image config with one diff
/// id per layer. Returns `(config bytes, manifest bytes)`.
pub fn signature_manifest(layers: &[SignatureLayer]) -> (Vec<u8>, Vec<u8>) {
    let diff_ids: Vec<String> = layers.iter().map(|l| digest_of(&l.payload)).collect();
    let config = serde_json::to_vec(&json!({
        "architecture": "",
        "created": "0001-01-01T00:00:00Z",
        "history": [{ "created": "0001-01-01T00:00:00Z" }],
        "os": "",
        "rootfs": { "type": "layers", "diff_ids": diff_ids },
        "config": {},
    }))
    .expect("a JSON value serializes");
    let manifest = serde_json::to_vec(&json!({
        "schemaVersion": 2,
        "mediaType": OCI_MANIFEST,
        "config": { "mediaType": OCI_CONFIG, "size": config.len(), "digest": digest_of(&config) },
        "layers": layers.iter().map(SignatureLayer::descriptor).collect::<Vec<_>>(),
    }))
    .expect("a JSON value serializes");
    (config, manifest)
}

/// Pushes a signature manifest with `layers` to `repo` at the cosign tag of
/// `manifest_digest`; returns what was pushed (`url` is the `.sig` tag).
///
/// # Panics
/// If the registry refuses a blob or the manifest.
pub async fn push_signatures(
    registry: &Registry,
    repo: &str,
    manifest_digest: &str,
    layers: &[SignatureLayer],
) -> Pushed {
    let tag = signature_tag(manifest_digest);
    let (config, manifest) = signature_manifest(layers);
    push_blob(registry, repo, &config).await;
    for layer in layers {
        push_blob(registry, repo, &layer.payload).await;
    }
    let digest = push_manifest_json(registry, repo, &tag, OCI_MANIFEST, &manifest).await;
    Pushed {
        url: registry.url(&format!("{repo}:{tag}")),
        digest_url: registry.url(&format!("{repo}@{digest}")),
        manifest_digest: digest,
        layer_digest: layers
            .first()
            .map(|l| digest_of(&l.payload))
            .unwrap_or_default(),
        manifest,
    }
}

/// `cosign sign --key` for `repo@manifest_digest` with one key: the
/// payload claims `<registry host>/<repo>`.
pub async fn sign_image(
    registry: &Registry,
    repo: &str,
    manifest_digest: &str,
    key: &SigningKey,
) -> Pushed {
    let reference = format!("{}/{repo}", registry.host());
    let layer = SignatureLayer::sign(key, &reference, manifest_digest);
    push_signatures(registry, repo, manifest_digest, &[layer]).await
}

/// `cosign sign-blob --key` output for `blob` (base64, no newline).
///
/// # Panics
/// For an Ed25519 key: cosign's pure-Ed25519 blob signatures cannot be
/// checked from a digest, so wasm-cache does not accept them.
pub fn sign_blob(key: &SigningKey, blob: &[u8]) -> String {
    let digest = parse_digest(&digest_of(blob));
    key.sign_blob_prehashed_base64(&digest)
        .expect("sign_blob needs an ECDSA P-256 key")
}

/// The in-toto predicate type `cosign sign` uses with the new bundle format.
pub const COSIGN_SIGN_PREDICATE: &str = "https://sigstore.dev/cosign/sign/v1";

/// Media type of the empty config of an artifact manifest (`{}`).
pub const EMPTY_CONFIG: &str = "application/vnd.oci.empty.v1+json";

fn b64(bytes: &[u8]) -> String {
    use base64::Engine as _;
    base64::engine::general_purpose::STANDARD.encode(bytes)
}

/// The verification material of a key-based bundle: a public key hint (the
/// key's fingerprint) and no transparency log entry.
fn key_material(key: &SigningKey) -> Value {
    json!({
        "publicKey": { "hint": b64(key.public_key().fingerprint().digest().as_bytes()) },
        "tlogEntries": [],
    })
}

/// A sigstore bundle whose `messageSignature` signs the artifact with this
/// SHA-256 (`digest`, e.g. a manifest digest) with an ECDSA P-256 key.
///
/// # Panics
/// For an Ed25519 key (pure Ed25519 signs the whole artifact).
pub fn bundle_message_signature(key: &SigningKey, digest: &str) -> Vec<u8> {
    let digest = parse_digest(digest);
    let signature = key
        .sign_blob_prehashed_base64(&digest)
        .expect("a messageSignature bundle needs an ECDSA P-256 key");
    serde_json::to_vec(&json!({
        "mediaType": wasm_cache_signature::BUNDLE_MEDIA_TYPE,
        "verificationMaterial": key_material(key),
        "messageSignature": {
            "messageDigest": { "algorithm": "SHA2_256", "digest": b64(digest.as_bytes()) },
            "signature": signature,
        },
    }))
    .expect("a JSON value serializes")
}

/// The in-toto statement `cosign sign --new-bundle-format` signs for
/// `digest` (protobuf JSON of `intotov1.Statement`: a subject with the
/// digest only, the cosign sign predicate, an empty predicate).
pub fn cosign_sign_statement(digest: &str) -> Vec<u8> {
    let digest = parse_digest(digest);
    serde_json::to_vec(&json!({
        "_type": "https://in-toto.io/Statement/v1",
        "subject": [{ "digest": { "sha256": digest.to_hex() } }],
        "predicateType": COSIGN_SIGN_PREDICATE,
        "predicate": {},
    }))
    .expect("a JSON value serializes")
}

/// A sigstore bundle holding a DSSE envelope of `statement` (an in-toto
/// statement), signed by `key` over the DSSE pre-authentication encoding.
pub fn bundle_dsse(key: &SigningKey, statement: &[u8]) -> Vec<u8> {
    let payload_type = wasm_cache_signature::IN_TOTO_PAYLOAD_TYPE;
    let mut pae = format!(
        "DSSEv1 {} {payload_type} {} ",
        payload_type.len(),
        statement.len()
    )
    .into_bytes();
    pae.extend_from_slice(statement);
    serde_json::to_vec(&json!({
        "mediaType": wasm_cache_signature::BUNDLE_MEDIA_TYPE,
        "verificationMaterial": key_material(key),
        "dsseEnvelope": {
            "payload": b64(statement),
            "payloadType": payload_type,
            "signatures": [{ "sig": key.sign_base64(&pae), "keyid": "" }],
        },
    }))
    .expect("a JSON value serializes")
}

/// What `cosign sign --key --new-bundle-format` attaches for `digest`: a
/// DSSE bundle of [`cosign_sign_statement`].
pub fn bundle_cosign_sign(key: &SigningKey, digest: &str) -> Vec<u8> {
    bundle_dsse(key, &cosign_sign_statement(digest))
}

/// Attaches `bundles` to `repo@manifest_digest` as OCI 1.1 referrers: per
/// bundle, its blob, the empty config and a manifest (`artifactType` the
/// bundle media type, `subject` the manifest) pushed by digest; then the
/// referrers tag schema's index at `sha256-<hex>` listing them (the test
/// registry has no referrers API). `subject_media_type` is the subject
/// manifest's media type. Returns the index's push.
///
/// # Panics
/// If the registry refuses a blob or a manifest.
pub async fn attach_bundles(
    registry: &Registry,
    repo: &str,
    manifest_digest: &str,
    subject_media_type: &str,
    subject_size: usize,
    bundles: &[Vec<u8>],
) -> Pushed {
    let bundle_type = wasm_cache_signature::BUNDLE_MEDIA_TYPE;
    let empty = b"{}".to_vec();
    push_blob(registry, repo, &empty).await;
    let mut entries = Vec::new();
    for bundle in bundles {
        push_blob(registry, repo, bundle).await;
        let manifest = serde_json::to_vec(&json!({
            "schemaVersion": 2,
            "mediaType": OCI_MANIFEST,
            "artifactType": bundle_type,
            "config": { "mediaType": EMPTY_CONFIG, "digest": digest_of(&empty), "size": empty.len() },
            "layers": [{ "mediaType": bundle_type, "digest": digest_of(bundle), "size": bundle.len() }],
            "subject": { "mediaType": subject_media_type, "digest": manifest_digest, "size": subject_size },
            "annotations": { "dev.sigstore.bundle.content": "dsse-envelope" },
        }))
        .expect("a JSON value serializes");
        let digest = digest_of(&manifest);
        push_manifest_json(registry, repo, &digest, OCI_MANIFEST, &manifest).await;
        entries.push(json!({
            "mediaType": OCI_MANIFEST,
            "digest": digest,
            "size": manifest.len(),
            "artifactType": bundle_type,
        }));
    }
    let tag = wasm_cache_signature::referrers_tag(&parse_digest(manifest_digest));
    let index = serde_json::to_vec(&json!({
        "schemaVersion": 2,
        "mediaType": OCI_INDEX,
        "manifests": entries,
    }))
    .expect("a JSON value serializes");
    let digest = push_manifest_json(registry, repo, &tag, OCI_INDEX, &index).await;
    Pushed {
        url: registry.url(&format!("{repo}:{tag}")),
        digest_url: registry.url(&format!("{repo}@{digest}")),
        manifest_digest: digest,
        layer_digest: bundles.first().map(|b| digest_of(b)).unwrap_or_default(),
        manifest: index,
    }
}

/// Writes `key`'s public half as `<dir>/<name>` (PEM, like `cosign.pub`).
///
/// # Panics
/// If the file cannot be written.
pub fn write_public_key(dir: &std::path::Path, name: &str, key: &SigningKey) -> std::path::PathBuf {
    let path = dir.join(name);
    std::fs::write(&path, key.public_key_pem())
        .unwrap_or_else(|e| panic!("writing {}: {e}", path.display()));
    path
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::images::push_cncf_artifact;
    use crate::modules::sample_module;
    use crate::registry::RegistryKind;
    use oci_client::Reference;
    use wasm_cache_signature::{CosignLayer, Subject, TrustPolicy};

    #[tokio::test]
    async fn pushed_signature_verifies_after_a_round_trip_through_the_registry() {
        let registry = Registry::start(RegistryKind::BasicAuth);
        let pushed = push_cncf_artifact(&registry, "t/signed", "v1", &sample_module(2000, 3)).await;
        let key = generate_p256();
        let sig = sign_image(&registry, "t/signed", &pushed.manifest_digest, &key).await;
        assert!(sig.url.ends_with(&format!(
            "t/signed:sha256-{}.sig",
            pushed.manifest_digest.trim_start_matches("sha256:")
        )));

        // Read it back as a verifier would: manifest by tag, payload blob by digest.
        let client = registry.client();
        let auth = registry.push_auth();
        let tag = signature_tag(&pushed.manifest_digest);
        let reference = Reference::with_tag(registry.host(), "t/signed".into(), tag);
        let (body, _) = client
            .pull_manifest_raw(&reference, &auth, &[OCI_MANIFEST])
            .await
            .unwrap();
        let manifest: Value = serde_json::from_slice(&body).unwrap();
        let layer = &manifest["layers"][0];
        assert_eq!(layer["mediaType"], SIMPLE_SIGNING_MEDIA_TYPE);
        let refs = wasm_cache_signature::parse_signature_manifest(&body).unwrap();
        assert_eq!(refs.len(), 1);
        assert_eq!(
            refs[0].digest.to_prefixed(),
            layer["digest"].as_str().unwrap()
        );
        assert_eq!(
            refs[0].signature.as_deref(),
            layer["annotations"][SIGNATURE_ANNOTATION].as_str()
        );
        let mut payload = Vec::new();
        client
            .pull_blob(
                &reference,
                &oci_client::manifest::OciDescriptor {
                    media_type: SIMPLE_SIGNING_MEDIA_TYPE.into(),
                    digest: layer["digest"].as_str().unwrap().into(),
                    size: layer["size"].as_i64().unwrap(),
                    ..Default::default()
                },
                &mut payload,
            )
            .await
            .unwrap();
        let digest = Sha256Digest::parse(&pushed.manifest_digest).unwrap();
        let repository = format!("{}/t/signed", registry.host());
        let subject = Subject {
            reference: &pushed.url,
            repository: Some(&repository),
            digest: &digest,
        };
        let policy = TrustPolicy::new([key.public_key()])
            .unwrap()
            .require_reference(true);
        let signature = layer["annotations"][SIGNATURE_ANNOTATION].as_str();
        let layers = [CosignLayer {
            media_type: SIMPLE_SIGNING_MEDIA_TYPE,
            payload: &payload,
            signature,
        }];
        assert_eq!(
            policy.verify_cosign(&subject, layers).unwrap().key,
            key.public_key().fingerprint()
        );
    }

    #[test]
    fn blob_signature_verifies_and_public_key_file_parses() {
        let dir = tempfile::tempdir().unwrap();
        let key = generate_p256();
        let path = write_public_key(dir.path(), "cosign.pub", &key);
        let parsed =
            wasm_cache_signature::PublicKey::from_pem(std::fs::read(path).unwrap()).unwrap();
        assert_eq!(parsed.fingerprint(), key.public_key().fingerprint());
        let blob = sample_module(5000, 4);
        let digest = Sha256Digest::parse(&digest_of(&blob)).unwrap();
        let subject = Subject {
            reference: "http://h/m.wasm",
            repository: None,
            digest: &digest,
        };
        let policy = TrustPolicy::new([parsed]).unwrap();
        assert!(
            policy
                .verify_blob(&subject, &sign_blob(&key, &blob))
                .is_ok()
        );
        assert_ne!(
            generate_p256().public_key(),
            key.public_key(),
            "keys are fresh"
        );
        assert_eq!(
            generate_ed25519().algorithm(),
            wasm_cache_signature::KeyAlgorithm::Ed25519
        );
    }
}
