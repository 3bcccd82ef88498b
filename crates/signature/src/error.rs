//! The signature crate's one error enum.

use crate::KeyFingerprint;

/// Why a key could not be loaded or a signature did not verify.
///
/// Messages quote untrusted input only shortened, and never contain key
/// material beyond a public key's fingerprint.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// The text is not a PEM `PUBLIC KEY` block or its contents are not a
    /// supported SubjectPublicKeyInfo.
    #[error("invalid public key: {reason}")]
    InvalidPublicKey {
        /// What was wrong, for example "PEM label is \"PRIVATE KEY\", expected \"PUBLIC KEY\"".
        reason: String,
    },
    /// A trust policy was built without any key.
    #[error("a trust policy needs at least one public key")]
    NoKeys,
    /// No signature verified under any key of the policy.
    ///
    /// `reasons` keeps, per signature candidate and key, why it was rejected,
    /// for logs and `--verbose` output; the message itself stays short and
    /// greppable.
    #[error(
        "no valid signature for {reference}@{digest} by any of {}",
        FingerprintList(keys)
    )]
    NoValidSignature {
        /// The reference being served, as the user named it (without digest).
        reference: String,
        /// The digest being served, `sha256:<hex>`.
        digest: String,
        /// The fingerprints of the policy's keys.
        keys: Vec<KeyFingerprint>,
        /// Why each candidate was rejected (shortened, untrusted text quoted).
        reasons: Vec<String>,
    },
}

impl Error {
    /// Why each signature candidate was rejected, when this is
    /// [`Error::NoValidSignature`]; empty otherwise.
    pub fn reasons(&self) -> &[String] {
        match self {
            Error::NoValidSignature { reasons, .. } => reasons,
            _ => &[],
        }
    }
}

/// Prints fingerprints as `sha256:0123456789abcdef, sha256:...`.
pub(crate) struct FingerprintList<'a>(pub(crate) &'a [KeyFingerprint]);

impl std::fmt::Display for FingerprintList<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        for (i, key) in self.0.iter().enumerate() {
            if i > 0 {
                f.write_str(", ")?;
            }
            write!(f, "{key}")?;
        }
        Ok(())
    }
}
