//! Public keys: PEM SubjectPublicKeyInfo parsing, fingerprints, raw checks.

use std::fmt;
use std::str::FromStr;

use base64::Engine as _;
use p256::ecdsa::signature::Verifier as _;
use p256::ecdsa::signature::hazmat::PrehashVerifier as _;
use sha2::Digest as _;
use spki::der::Decode as _;
use wasm_cache_core::Sha256Digest;

use crate::Error;

/// The PEM label of a SubjectPublicKeyInfo, as `cosign generate-key-pair` writes it.
pub const PUBLIC_KEY_PEM_LABEL: &str = "PUBLIC KEY";

/// Longest base64 signature text accepted (an ECDSA P-256 DER signature is at
/// most 72 bytes, an Ed25519 one 64); longer input is rejected before decoding.
pub const MAX_SIGNATURE_BASE64_LEN: usize = 512;

const OID_EC_PUBLIC_KEY: &str = "1.2.840.10045.2.1";
const OID_ED25519: &str = "1.3.101.112";

/// The signature scheme a key verifies, fixed by its SubjectPublicKeyInfo.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum KeyAlgorithm {
    /// ECDSA over NIST P-256 with SHA-256, ASN.1 DER signatures (cosign's default).
    EcdsaP256Sha256,
    /// Pure Ed25519 (RFC 8032).
    Ed25519,
}

impl fmt::Display for KeyAlgorithm {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            KeyAlgorithm::EcdsaP256Sha256 => "ecdsa-p256-sha256",
            KeyAlgorithm::Ed25519 => "ed25519",
        })
    }
}

/// A public key's identity: SHA-256 of its SubjectPublicKeyInfo DER.
///
/// `Display` shows it shortened (`sha256:` and 16 hex digits), enough to tell
/// keys apart in messages; [`KeyFingerprint::to_hex`] gives all 64 digits for
/// records that must match exactly (the journal).
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct KeyFingerprint(Sha256Digest);

impl KeyFingerprint {
    /// The fingerprint of a SubjectPublicKeyInfo DER encoding.
    pub fn of_spki_der(der: &[u8]) -> Self {
        Self(Sha256Digest::from_bytes(sha2::Sha256::digest(der).into()))
    }

    /// Wraps a digest already known to be a key fingerprint.
    pub const fn from_digest(digest: Sha256Digest) -> Self {
        Self(digest)
    }

    /// The underlying SHA-256 digest.
    pub const fn digest(&self) -> &Sha256Digest {
        &self.0
    }

    /// All 64 lowercase hex digits.
    pub fn to_hex(&self) -> String {
        self.0.to_hex()
    }
}

impl fmt::Display for KeyFingerprint {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let hex = self.0.to_hex();
        write!(f, "sha256:{}", &hex[..16])
    }
}

impl fmt::Debug for KeyFingerprint {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "KeyFingerprint({})", self.0.to_hex())
    }
}

impl FromStr for KeyFingerprint {
    type Err = wasm_cache_core::Error;

    /// Parses the full form: 64 lowercase hex digits, optionally `sha256:`-prefixed.
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Sha256Digest::parse(s).map(Self)
    }
}

#[derive(Clone)]
enum Inner {
    P256(p256::ecdsa::VerifyingKey),
    Ed25519(ed25519_dalek::VerifyingKey),
}

/// A public key trusted to sign modules: ECDSA P-256 or Ed25519.
#[derive(Clone)]
pub struct PublicKey {
    inner: Inner,
    fingerprint: KeyFingerprint,
}

impl fmt::Debug for PublicKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("PublicKey")
            .field("algorithm", &self.algorithm())
            .field("fingerprint", &self.fingerprint)
            .finish()
    }
}

impl PartialEq for PublicKey {
    fn eq(&self, other: &Self) -> bool {
        self.fingerprint == other.fingerprint
    }
}

impl Eq for PublicKey {}

fn invalid(reason: impl Into<String>) -> Error {
    Error::InvalidPublicKey {
        reason: reason.into(),
    }
}

impl PublicKey {
    /// Parses exactly one PEM `PUBLIC KEY` block (SubjectPublicKeyInfo), as
    /// `cosign generate-key-pair` writes to `cosign.pub`.
    ///
    /// # Errors
    /// [`Error::InvalidPublicKey`] when the text holds no block, several
    /// blocks, a block with another label (a private key, a certificate), or
    /// a key of an unsupported type.
    pub fn from_pem(text: impl AsRef<[u8]>) -> Result<Self, Error> {
        let mut keys = Self::from_pem_many(text)?;
        if keys.len() != 1 {
            return Err(invalid(format!(
                "expected one PEM \"{PUBLIC_KEY_PEM_LABEL}\" block, found {}",
                keys.len()
            )));
        }
        Ok(keys.remove(0))
    }

    /// Parses every PEM block in the text; each must be a supported `PUBLIC KEY`.
    ///
    /// # Errors
    /// [`Error::InvalidPublicKey`] when there is no block or any block is not
    /// a supported public key.
    pub fn from_pem_many(text: impl AsRef<[u8]>) -> Result<Vec<Self>, Error> {
        let blocks =
            pem::parse_many(text.as_ref()).map_err(|e| invalid(format!("not PEM: {e}")))?;
        if blocks.is_empty() {
            return Err(invalid(format!(
                "no PEM \"{PUBLIC_KEY_PEM_LABEL}\" block found"
            )));
        }
        blocks
            .iter()
            .map(|block| {
                if block.tag() != PUBLIC_KEY_PEM_LABEL {
                    return Err(invalid(format!(
                        "PEM label is {:?}, expected {PUBLIC_KEY_PEM_LABEL:?}",
                        wasm_cache_core::shorten(block.tag(), 40)
                    )));
                }
                Self::from_spki_der(block.contents())
            })
            .collect()
    }

    /// Parses a DER SubjectPublicKeyInfo.
    ///
    /// # Errors
    /// [`Error::InvalidPublicKey`] when the DER is malformed or the key is
    /// neither ECDSA P-256 nor Ed25519.
    pub fn from_spki_der(der: &[u8]) -> Result<Self, Error> {
        let spki = spki::SubjectPublicKeyInfoRef::from_der(der)
            .map_err(|e| invalid(format!("malformed SubjectPublicKeyInfo: {e}")))?;
        let oid = spki.algorithm.oid.to_string();
        let inner = match oid.as_str() {
            OID_EC_PUBLIC_KEY => p256::ecdsa::VerifyingKey::try_from(spki)
                .map(Inner::P256)
                .map_err(|e| {
                    invalid(format!(
                        "EC key is not a valid NIST P-256 key (only P-256 is supported): {e}"
                    ))
                })?,
            OID_ED25519 => ed25519_dalek::VerifyingKey::try_from(spki)
                .map(Inner::Ed25519)
                .map_err(|e| invalid(format!("invalid Ed25519 key: {e}")))?,
            other => {
                return Err(invalid(format!(
                    "unsupported key algorithm {other} (supported: ECDSA P-256, Ed25519)"
                )));
            }
        };
        Ok(Self {
            inner,
            fingerprint: KeyFingerprint::of_spki_der(der),
        })
    }

    /// The scheme this key verifies.
    pub fn algorithm(&self) -> KeyAlgorithm {
        match self.inner {
            Inner::P256(_) => KeyAlgorithm::EcdsaP256Sha256,
            Inner::Ed25519(_) => KeyAlgorithm::Ed25519,
        }
    }

    /// SHA-256 of the SubjectPublicKeyInfo DER.
    pub fn fingerprint(&self) -> KeyFingerprint {
        self.fingerprint
    }

    /// Checks a raw (already base64-decoded) signature over `message`:
    /// ECDSA P-256 with SHA-256 (ASN.1 DER signature, as cosign and Go's
    /// `ecdsa.SignASN1` produce) or pure Ed25519 (strict verification).
    ///
    /// # Errors
    /// A short reason when the signature is malformed or does not verify.
    pub fn verify(&self, message: &[u8], signature: &[u8]) -> Result<(), String> {
        match &self.inner {
            Inner::P256(key) => {
                let sig = p256::ecdsa::Signature::from_der(signature).map_err(|_| {
                    "signature is not an ASN.1 DER ECDSA P-256 signature".to_owned()
                })?;
                key.verify(message, &sig)
                    .map_err(|_| "ECDSA P-256 signature does not verify".to_owned())
            }
            Inner::Ed25519(key) => {
                let sig = ed25519_dalek::Signature::from_slice(signature)
                    .map_err(|_| "signature is not a 64-byte Ed25519 signature".to_owned())?;
                key.verify_strict(message, &sig)
                    .map_err(|_| "Ed25519 signature does not verify".to_owned())
            }
        }
    }

    /// Checks a raw signature made over a message whose SHA-256 is `sha256`,
    /// without the message: what `cosign sign-blob --key` produces with an
    /// ECDSA P-256 key (the signature is over the SHA-256 of the blob).
    ///
    /// # Errors
    /// A short reason when the signature is malformed or does not verify, or
    /// when the key is Ed25519: pure Ed25519 signs the whole message, so it
    /// cannot be checked from a SHA-256 digest.
    pub fn verify_sha256_prehashed(
        &self,
        sha256: &Sha256Digest,
        signature: &[u8],
    ) -> Result<(), String> {
        match &self.inner {
            Inner::P256(key) => {
                let sig = p256::ecdsa::Signature::from_der(signature).map_err(|_| {
                    "signature is not an ASN.1 DER ECDSA P-256 signature".to_owned()
                })?;
                key.verify_prehash(sha256.as_bytes(), &sig)
                    .map_err(|_| "ECDSA P-256 signature does not verify".to_owned())
            }
            Inner::Ed25519(_) => Err(
                "an Ed25519 key cannot verify a detached blob signature from the blob's sha256 \
                 (Ed25519 signs the whole blob)"
                    .to_owned(),
            ),
        }
    }
}

/// Decodes a base64 signature as cosign stores it (standard alphabet, with
/// padding; surrounding ASCII whitespace such as a trailing newline in a
/// `.sig` file is ignored).
///
/// # Errors
/// A short reason when the text is too long or not base64.
pub fn decode_signature_base64(text: &str) -> Result<Vec<u8>, String> {
    let text = text.trim_ascii();
    if text.len() > MAX_SIGNATURE_BASE64_LEN {
        return Err(format!(
            "signature is {} characters of base64, more than the {MAX_SIGNATURE_BASE64_LEN} allowed",
            text.len()
        ));
    }
    if text.is_empty() {
        return Err("signature is empty".to_owned());
    }
    base64::engine::general_purpose::STANDARD
        .decode(text)
        .map_err(|e| format!("signature is not base64: {e}"))
}
