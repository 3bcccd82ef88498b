//! The evidence a verification rested on, kept so that it can be checked
//! again later without the network (the cache journals it).

use base64::Engine as _;
use serde::{Deserialize, Serialize};

/// Largest evidence record [`Evidence::to_record`] writes and
/// [`Evidence::from_record`] reads.
pub const MAX_EVIDENCE_RECORD_LEN: usize = 96 * 1024;

/// What a trusted key signed, in the smallest form that can be verified
/// again for the same subject: a record of it proves nothing by itself, it
/// is re-checked with [`TrustPolicy::verify_evidence`](crate::TrustPolicy::verify_evidence).
#[derive(Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case", deny_unknown_fields)]
#[non_exhaustive]
pub enum Evidence {
    /// A cosign simple-signing payload and its base64 signature.
    Cosign {
        /// The payload bytes, base64.
        payload: String,
        /// The signature annotation.
        signature: String,
    },
    /// A base64 ECDSA signature over the subject's SHA-256 (`cosign
    /// sign-blob`, or a bundle's `messageSignature` over a manifest).
    Digest {
        /// The signature.
        signature: String,
    },
    /// A DSSE envelope's payload type, payload (base64) and one base64
    /// signature over its pre-authentication encoding.
    Dsse {
        /// The payload type (`application/vnd.in-toto+json`).
        payload_type: String,
        /// The payload (an in-toto statement), base64.
        payload: String,
        /// The signature.
        signature: String,
    },
}

impl std::fmt::Debug for Evidence {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let (kind, len) = match self {
            Evidence::Cosign { payload, .. } => ("Cosign", payload.len()),
            Evidence::Digest { signature } => ("Digest", signature.len()),
            Evidence::Dsse { payload, .. } => ("Dsse", payload.len()),
        };
        f.debug_struct("Evidence")
            .field("kind", &kind)
            .field("len", &len)
            .finish()
    }
}

pub(crate) fn b64(bytes: &[u8]) -> String {
    base64::engine::general_purpose::STANDARD.encode(bytes)
}

impl Evidence {
    /// The evidence as one line of JSON for a journal, or `None` when it is
    /// larger than [`MAX_EVIDENCE_RECORD_LEN`].
    pub fn to_record(&self) -> Option<String> {
        serde_json::to_string(self)
            .ok()
            .filter(|s| s.len() <= MAX_EVIDENCE_RECORD_LEN)
    }

    /// Reads what [`Evidence::to_record`] wrote.
    ///
    /// # Errors
    /// A short reason when the text is too long or not an evidence record.
    pub fn from_record(text: &str) -> Result<Self, String> {
        if text.len() > MAX_EVIDENCE_RECORD_LEN {
            return Err(format!(
                "signature record is {} bytes, more than the {MAX_EVIDENCE_RECORD_LEN} allowed",
                text.len()
            ));
        }
        serde_json::from_str(text).map_err(|e| format!("not a signature record: {e}"))
    }
}
