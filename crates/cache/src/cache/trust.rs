//! Signature checks under a trust policy, and which key verified which digest.

use std::time::Instant;

use tracing::{debug, info};
use wasm_cache_core::{FetchRequest, ModuleUrl, Sha256Digest, Signatures};
use wasm_cache_signature::{CosignLayer, Subject, TrustPolicy};

use super::Inner;
use super::fetch::result_label;
use crate::metrics::FetchResult;
use crate::{Error, GetRequest};

/// The signature crate's failure in the fetch error enum's terms.
pub(super) fn signature_error(e: wasm_cache_signature::Error) -> wasm_cache_core::Error {
    match e {
        wasm_cache_signature::Error::NoValidSignature {
            reference,
            digest,
            keys,
            reasons,
        } => wasm_cache_core::Error::NoValidSignature {
            reference,
            digest,
            keys: keys
                .iter()
                .map(ToString::to_string)
                .collect::<Vec<_>>()
                .join(", "),
            reasons,
        },
        other => wasm_cache_core::Error::InvalidConfig {
            reason: other.to_string(),
        },
    }
}

impl Inner {
    /// Checks that `digest` of `url` is signed by a key of `policy`: free when
    /// a key of the policy verified it before, otherwise the signature alone
    /// is fetched (never the module) and checked, and the key remembered.
    ///
    /// # Errors
    /// [`wasm_cache_core::Error::NoValidSignature`] (metric `signature`), or
    /// the error fetching the signature material.
    pub(super) async fn ensure_verified(
        &self,
        url: &ModuleUrl,
        digest: Sha256Digest,
        policy: &TrustPolicy,
        req: &GetRequest,
        deadline: Instant,
    ) -> Result<(), Error> {
        if let Some(keys) = self.verified.get(&digest)
            && policy.accepts_recorded(keys.iter()).is_some()
        {
            return Ok(());
        }
        let fetcher = self.fetcher_for(url)?;
        let signature_url = req
            .signature_url
            .as_deref()
            .map(ModuleUrl::parse)
            .transpose()?;
        let freq = FetchRequest::new(url.clone(), deadline)
            .with_pull_secret(req.pull_secret.clone())
            .with_max_size(self.opts.max_module_size)
            .with_digest(Some(digest))
            .with_signature_url(signature_url);
        let material = match fetcher.signatures(&freq, &digest).await {
            Ok(m) => m,
            Err(e) if e.kind() == wasm_cache_core::ErrorKind::NotFound => {
                Signatures::Missing(e.to_string())
            }
            Err(e) => {
                self.meters.fetch(result_label(&e));
                debug!(url = %url, error = %e, "fetching signatures failed");
                return Err(e.into());
            }
        };
        let reference = url.redacted();
        let repository = url
            .oci()
            .map(|o| format!("{}/{}", o.registry(), o.repository()));
        let subject = Subject {
            reference: &reference,
            repository: repository.as_deref(),
            digest: &digest,
        };
        let verdict = match &material {
            Signatures::Cosign(layers) => policy.verify_cosign(
                &subject,
                layers.iter().map(|l| CosignLayer {
                    media_type: &l.media_type,
                    payload: &l.payload,
                    signature: l.signature.as_deref(),
                }),
            ),
            Signatures::Detached(signature) => policy.verify_blob(&subject, signature),
            Signatures::Missing(reason) => Err(policy.rejection(&subject, vec![reason.clone()])),
            _ => Err(policy.rejection(
                &subject,
                vec!["the fetcher returned signature material of an unknown kind".to_owned()],
            )),
        };
        match verdict {
            Ok(verified) => {
                info!(url = %url, digest = %digest.to_prefixed(), key = %verified.key, "signature verified");
                let mut keys = self.verified.entry(digest).or_default();
                if !keys.contains(&verified.key) {
                    keys.push(verified.key);
                }
                Ok(())
            }
            Err(e) => {
                self.meters.fetch(FetchResult::Signature);
                debug!(url = %url, digest = %digest.to_prefixed(), reasons = ?e.reasons(), "signature verification failed");
                Err(signature_error(e).into())
            }
        }
    }
}
