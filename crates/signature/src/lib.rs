//! Signature checks for wasm-cache: given bytes, decide whether a trusted key
//! signed them. Nothing here fetches; fetchers hand in what they downloaded.
//!
//! - [`PublicKey`]: PEM SubjectPublicKeyInfo keys, ECDSA P-256 (as
//!   `cosign generate-key-pair` writes `cosign.pub`) and Ed25519, each
//!   identified by a [`KeyFingerprint`] (SHA-256 of the key's DER).
//! - [`SimpleSigningPayload`] and [`signature_tag`]: cosign's classic OCI
//!   layout (a `sha256-<hex>.sig` tag whose layers are simple-signing payloads
//!   with a base64 signature annotation).
//! - Sigstore bundles attached as OCI 1.1 referrers: [`parse_referrers_index`],
//!   [`parse_bundle_manifest`] and [`referrers_tag`] (the tag schema of
//!   registries without the referrers API).
//! - [`TrustPolicy`]: one or more keys; one valid signature by any of them
//!   suffices. [`TrustPolicy::verify_cosign`] checks signature-manifest
//!   layers, [`TrustPolicy::verify_bundle`] a sigstore bundle (key-based:
//!   `messageSignature` or DSSE in-toto statement), [`TrustPolicy::verify_oci`]
//!   both together, [`TrustPolicy::verify_blob`] a detached `cosign sign-blob`
//!   signature from the blob's SHA-256 alone, so a module is never buffered.
//! - [`Evidence`]: what a key signed, returned with every success; checked
//!   again later, without the network, by [`TrustPolicy::verify_evidence`].
//!
//! The cryptography is RustCrypto's `p256` (ECDSA, with prehash verification
//! for blob signatures) and `ed25519-dalek` (strict verification); SPKI and PEM
//! parsing are `spki` and `pem`. No ASN.1 is parsed by hand.
//!
//! ```
//! use wasm_cache_core::Sha256Digest;
//! use wasm_cache_signature::{PublicKey, Subject, TrustPolicy};
//!
//! let pem = "-----BEGIN PUBLIC KEY-----
//! MFkwEwYHKoZIzj0CAQYIKoZIzj0DAQcDQgAE4j0kZ97xW731UFkRVM3E+pRVgd9k
//! ZhcaKGCoNjJJDlw0tCsiqgqfg6fWWn7KBzNGlCImzV2o2/B8gJMwYtECsw==
//! -----END PUBLIC KEY-----
//! ";
//! let key = PublicKey::from_pem(pem)?;
//! let policy = TrustPolicy::new([key])?;
//! let digest = Sha256Digest::parse(
//!     "sha256:2cf24dba5fb0a30e26e83b2ac5b9e29e1b161e5c1fa7425e73043362938b9824",
//! )?;
//! let subject = Subject { reference: "https://example.com/hello", repository: None, digest: &digest };
//! let signature = "MEUCIQCGAAqYXe9vS4jhMZobvXHM+GF2r/3fUXlsli4ZhvFbVwIgBajlZpSrSXco27XNwXCXpMNpQYW/sQsYibjmnemJvRc=";
//! let verified = policy.verify_blob(&subject, signature)?;
//! assert_eq!(verified.key, policy.fingerprints()[0]);
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```

mod bundle;
mod error;
mod evidence;
mod key;
mod manifest;
mod payload;
mod policy;
#[cfg(any(test, feature = "signer"))]
mod signer;

pub use crate::bundle::{
    BUNDLE_MEDIA_TYPE, BundleBlob, IN_TOTO_PAYLOAD_TYPE, MAX_BUNDLE_LEN, MAX_BUNDLE_MANIFEST_LEN,
    MAX_BUNDLES, MAX_REFERRERS_INDEX_LEN, ReferrerRef, parse_bundle_manifest,
    parse_referrers_index, referrers_tag,
};
pub use crate::error::Error;
pub use crate::evidence::{Evidence, MAX_EVIDENCE_RECORD_LEN};
pub use crate::key::{
    KeyAlgorithm, KeyFingerprint, MAX_SIGNATURE_BASE64_LEN, PUBLIC_KEY_PEM_LABEL, PublicKey,
    decode_signature_base64,
};
pub use crate::manifest::{MAX_SIGNATURE_MANIFEST_LEN, PayloadRef, parse_signature_manifest};
pub use crate::payload::{
    COSIGN_SIGNATURE_TYPE, MAX_PAYLOAD_LEN, SIGNATURE_ANNOTATION, SIMPLE_SIGNING_MEDIA_TYPE,
    SimpleSigningPayload, reference_names_repository, signature_tag,
};
pub use crate::policy::{CosignLayer, MAX_CANDIDATES, Subject, TrustPolicy, Verified};
#[cfg(any(test, feature = "signer"))]
pub use crate::signer::SigningKey;

#[cfg(test)]
mod tests;
