//! Signature checks under a trust policy, and which key verified which digest:
//! remembered in memory for this process, and in the journal (with what the
//! key signed) for the next processes.
//!
//! A journal record proves nothing by itself: anyone who can write the cache
//! directory can write one. So a record is trusted only after its evidence
//! (the signed payload or statement and the signature) verifies again, here
//! and now, under the asking policy's keys and rules; that costs one
//! signature check per digest and process, and no request. A record that
//! does not verify (forged, corrupted, for another digest) is ignored and
//! the signature is fetched as if there were none.

use std::time::Instant;

use dashmap::DashMap;
use tracing::{debug, info, warn};
use wasm_cache_core::{FetchRequest, Index, IndexEvent, ModuleUrl, Sha256Digest, Signatures};
use wasm_cache_signature::{CosignLayer, Evidence, KeyFingerprint, Subject, TrustPolicy, Verified};

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
        if self.verified.seen(policy, &digest) {
            return Ok(());
        }
        let reference = url.redacted();
        let repository = url
            .oci()
            .map(|o| format!("{}/{}", o.registry(), o.repository()));
        let subject = Subject {
            reference: &reference,
            repository: repository.as_deref(),
            digest: &digest,
        };
        if self.verified.known(&self.index, policy, &subject) {
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
        let verdict = match &material {
            Signatures::Cosign(layers) => policy.verify_cosign(
                &subject,
                layers.iter().map(|l| CosignLayer {
                    media_type: &l.media_type,
                    payload: &l.payload,
                    signature: l.signature.as_deref(),
                }),
            ),
            Signatures::Oci {
                cosign,
                bundles,
                notes,
            } => policy.verify_oci(
                &subject,
                cosign.iter().map(|l| CosignLayer {
                    media_type: &l.media_type,
                    payload: &l.payload,
                    signature: l.signature.as_deref(),
                }),
                bundles.iter().map(Vec::as_slice),
                notes,
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
                if let Some(event) =
                    self.verified
                        .remember(&self.index, policy, &subject, &verified)
                {
                    self.journal_append(&event);
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

/// Verifications known to this process.
#[derive(Default)]
pub(super) struct Verifications {
    /// Keys that verified a digest in this process, each with the repository
    /// a payload was checked to name (only when the policy required it).
    seen: DashMap<Sha256Digest, Vec<(KeyFingerprint, Option<String>)>>,
}

impl Verifications {
    /// The hit path's check, without allocating: a key of `policy` verified
    /// `digest` in this process and the policy needs no repository check.
    pub(super) fn seen(&self, policy: &TrustPolicy, digest: &Sha256Digest) -> bool {
        !policy.requires_reference()
            && self
                .seen
                .get(digest)
                .is_some_and(|seen| seen.iter().any(|(key, _)| policy.trusts(key)))
    }

    /// Whether `subject.digest` is verified for `policy` without a request:
    /// a key of the policy verified it in this process (for the same
    /// repository, when the policy requires the payload to name it), or the
    /// index holds a record of such a key whose evidence verifies again.
    pub(super) fn known(&self, index: &Index, policy: &TrustPolicy, subject: &Subject<'_>) -> bool {
        // An http(s) blob has no repository to name.
        let needs_repository = policy.requires_reference() && subject.repository.is_some();
        if let Some(seen) = self.seen.get(subject.digest) {
            let ok = seen.iter().any(|(key, repository)| {
                policy.trusts(key)
                    && (!needs_repository || repository.as_deref() == subject.repository)
            });
            if ok {
                return true;
            }
        }
        for record in index.signatures(subject.digest) {
            let key = KeyFingerprint::from_digest(record.key);
            if !policy.trusts(&key) {
                continue;
            }
            let checked = Evidence::from_record(&record.evidence).and_then(|evidence| {
                policy
                    .verify_evidence(subject, &evidence)
                    .map_err(|e| e.reasons().join("; "))
            });
            match checked {
                Ok(verified) if verified.key == key => {
                    debug!(digest = %subject.digest.to_prefixed(), %key, "signature verified from the journal's record");
                    self.note(policy, subject, key);
                    return true;
                }
                Ok(verified) => warn!(
                    digest = %subject.digest.to_prefixed(),
                    recorded = %key,
                    verified = %verified.key,
                    "ignoring a journal signature record that names another key"
                ),
                Err(reason) if genuine_elsewhere(policy, subject, &record.evidence) => debug!(
                    digest = %subject.digest.to_prefixed(),
                    %key,
                    reason = %reason,
                    "a journal signature record does not name this repository; fetching the signature"
                ),
                Err(reason) => warn!(
                    digest = %subject.digest.to_prefixed(),
                    %key,
                    reason = %reason,
                    "ignoring a journal signature record that does not verify; fetching the signature"
                ),
            }
        }
        false
    }

    /// Remembers a verification; returns the journal record to append when
    /// the index's records changed (`None` also when the evidence is too
    /// large to journal: it is then remembered for this process only).
    pub(super) fn remember(
        &self,
        index: &Index,
        policy: &TrustPolicy,
        subject: &Subject<'_>,
        verified: &Verified,
    ) -> Option<IndexEvent> {
        self.note(policy, subject, verified.key);
        let evidence = verified.evidence.to_record()?;
        let key = *verified.key.digest();
        let checksum = *subject.digest;
        index
            .record_signature(checksum, key, &evidence)
            .then_some(IndexEvent::Signed {
                checksum,
                key,
                evidence,
            })
    }

    fn note(&self, policy: &TrustPolicy, subject: &Subject<'_>, key: KeyFingerprint) {
        let repository = policy
            .requires_reference()
            .then(|| subject.repository.map(str::to_owned))
            .flatten();
        let mut seen = self.seen.entry(*subject.digest).or_default();
        if !seen.iter().any(|(k, r)| *k == key && *r == repository) {
            seen.push((key, repository));
        }
    }
}

/// Whether a record that failed only a policy's repository requirement is
/// otherwise genuine (then it is no sign of tampering, just not enough).
fn genuine_elsewhere(policy: &TrustPolicy, subject: &Subject<'_>, evidence: &str) -> bool {
    policy.requires_reference()
        && Evidence::from_record(evidence).is_ok_and(|evidence| {
            policy
                .clone()
                .require_reference(false)
                .verify_evidence(subject, &evidence)
                .is_ok()
        })
}
