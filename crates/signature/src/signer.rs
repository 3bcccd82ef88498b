//! Signing in cosign's formats, for tests and fixtures (feature `signer`).
//!
//! Keys are derived from a seed so tests are reproducible; pass random
//! bytes for a fresh key.

use base64::Engine as _;
use p256::ecdsa::signature::Signer as _;
use p256::ecdsa::signature::hazmat::PrehashSigner as _;
use p256::pkcs8::EncodePublicKey as _;
use sha2::Digest as _;
use wasm_cache_core::Sha256Digest;

use crate::{KeyAlgorithm, PublicKey, SimpleSigningPayload};

enum Inner {
    P256(p256::ecdsa::SigningKey),
    Ed25519(ed25519_dalek::SigningKey),
}

/// A private key that signs as cosign does.
pub struct SigningKey {
    inner: Inner,
}

impl std::fmt::Debug for SigningKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SigningKey")
            .field("public", &self.public_key())
            .finish_non_exhaustive()
    }
}

impl SigningKey {
    /// An ECDSA P-256 key (what `cosign generate-key-pair` makes) derived from `seed`.
    pub fn p256_from_seed(seed: &[u8]) -> Self {
        let mut counter = 0u32;
        loop {
            let mut hasher = sha2::Sha256::new();
            hasher.update(seed);
            hasher.update(counter.to_be_bytes());
            let bytes: [u8; 32] = hasher.finalize().into();
            // Almost every 32-byte string is a valid scalar; retry the rare rest.
            if let Ok(key) = p256::ecdsa::SigningKey::from_slice(&bytes) {
                return Self {
                    inner: Inner::P256(key),
                };
            }
            counter += 1;
        }
    }

    /// An Ed25519 key derived from `seed`.
    pub fn ed25519_from_seed(seed: &[u8]) -> Self {
        let bytes: [u8; 32] = sha2::Sha256::digest(seed).into();
        Self {
            inner: Inner::Ed25519(ed25519_dalek::SigningKey::from_bytes(&bytes)),
        }
    }

    /// The key's scheme.
    pub fn algorithm(&self) -> KeyAlgorithm {
        match self.inner {
            Inner::P256(_) => KeyAlgorithm::EcdsaP256Sha256,
            Inner::Ed25519(_) => KeyAlgorithm::Ed25519,
        }
    }

    /// The public half as SubjectPublicKeyInfo DER.
    pub fn public_key_der(&self) -> Vec<u8> {
        let doc = match &self.inner {
            Inner::P256(key) => key.verifying_key().to_public_key_der(),
            Inner::Ed25519(key) => {
                ed25519_dalek::pkcs8::EncodePublicKey::to_public_key_der(&key.verifying_key())
            }
        };
        // Encoding a valid in-memory key to DER cannot fail.
        doc.map(|d| d.as_bytes().to_vec()).unwrap_or_default()
    }

    /// The public half as PEM, the way `cosign generate-key-pair` writes
    /// `cosign.pub` (`PUBLIC KEY` label, 64-column base64, LF line endings).
    pub fn public_key_pem(&self) -> String {
        pem::encode_config(
            &pem::Pem::new(crate::PUBLIC_KEY_PEM_LABEL, self.public_key_der()),
            pem::EncodeConfig::new().set_line_ending(pem::LineEnding::LF),
        )
    }

    /// The public half.
    pub fn public_key(&self) -> PublicKey {
        match PublicKey::from_spki_der(&self.public_key_der()) {
            Ok(key) => key,
            Err(e) => unreachable!("a generated key always parses: {e}"),
        }
    }

    /// A raw signature over `message`: ASN.1 DER ECDSA P-256 with SHA-256, or Ed25519.
    pub fn sign(&self, message: &[u8]) -> Vec<u8> {
        match &self.inner {
            Inner::P256(key) => {
                let sig: p256::ecdsa::Signature = key.sign(message);
                sig.to_der().as_bytes().to_vec()
            }
            Inner::Ed25519(key) => ed25519_dalek::Signer::sign(key, message)
                .to_bytes()
                .to_vec(),
        }
    }

    /// [`SigningKey::sign`] in base64, as cosign stores it in the annotation.
    pub fn sign_base64(&self, message: &[u8]) -> String {
        base64::engine::general_purpose::STANDARD.encode(self.sign(message))
    }

    /// What `cosign sign-blob --key` writes for a blob with this SHA-256
    /// (base64 of an ECDSA signature over the digest); `None` for Ed25519,
    /// which signs whole messages.
    pub fn sign_blob_prehashed_base64(&self, sha256: &Sha256Digest) -> Option<String> {
        match &self.inner {
            Inner::P256(key) => {
                let sig: p256::ecdsa::Signature = key.sign_prehash(sha256.as_bytes()).ok()?;
                Some(base64::engine::general_purpose::STANDARD.encode(sig.to_der().as_bytes()))
            }
            Inner::Ed25519(_) => None,
        }
    }

    /// The simple-signing payload for `digest` claimed at `docker_reference`
    /// and its base64 signature: one layer of a cosign signature manifest.
    pub fn sign_cosign_payload(
        &self,
        docker_reference: &str,
        digest: &Sha256Digest,
    ) -> (Vec<u8>, String) {
        let payload = SimpleSigningPayload::cosign_bytes(docker_reference, digest, None);
        let signature = self.sign_base64(&payload);
        (payload, signature)
    }
}
