//! Sigstore bundles attached to a manifest as OCI 1.1 referrers: the
//! referrers API (`GET /v2/<repo>/referrers/<digest>`), or, where a registry
//! answers 404 to it (no referrers API, e.g. distribution 2.x), the referrers
//! tag schema (an image index at tag `sha256-<hex>`). Every read is capped
//! while reading and goes through the session (guarded transport, auth,
//! retries, deadline).

use bytes::Bytes;
use http::StatusCode;
use wasm_cache_core::{Error, ErrorKind, Sha256Digest};
use wasm_cache_signature::{
    MAX_BUNDLE_MANIFEST_LEN, MAX_REFERRERS_INDEX_LEN, PayloadRef, ReferrerRef,
    parse_bundle_manifest, parse_referrers_index, referrers_tag,
};
use wasm_fetch_transport::ReadError;

use super::{Session, drop_body};
use crate::errors::shorten;
use crate::layout::{OCI_INDEX, OCI_MANIFEST};
use crate::verify::sha256;

/// Bundles found for a digest, and notes on what was not found or skipped.
pub(super) struct Found {
    pub(super) bundles: Vec<Vec<u8>>,
    pub(super) notes: Vec<String>,
}

impl Session<'_> {
    /// The sigstore bundles attached to `digest` as referrers, each checked
    /// against its descriptors. A referrer that is not a usable bundle is a
    /// note, not an error; transport failures are errors.
    pub(super) async fn bundles(&self, digest: &Sha256Digest) -> Result<Found, Error> {
        let mut notes = Vec::new();
        let index = match self.retrying(|| self.referrers_index_once(digest)).await? {
            Ok(index) => index,
            Err(reason) => {
                return Ok(Found {
                    bundles: Vec::new(),
                    notes: vec![reason],
                });
            }
        };
        let refs = match parse_referrers_index(&index) {
            Ok(refs) => refs,
            Err(reason) => {
                return Ok(Found {
                    bundles: Vec::new(),
                    notes: vec![format!("referrers of {}: {reason}", digest.to_prefixed())],
                });
            }
        };
        if refs.is_empty() {
            notes.push(format!(
                "no sigstore bundle among the referrers of {}",
                digest.to_prefixed()
            ));
        }
        let mut bundles = Vec::with_capacity(refs.len());
        for r in &refs {
            let manifest = match self.retrying(|| self.referrer_manifest_once(r)).await {
                Ok(m) => m,
                Err(e) if e.kind() == ErrorKind::NotFound => {
                    notes.push(format!("referrer {}: {e}", r.digest.to_prefixed()));
                    continue;
                }
                Err(e) => return Err(e),
            };
            let blob = match parse_bundle_manifest(&manifest, digest) {
                Ok(blob) => blob,
                Err(reason) => {
                    notes.push(format!("referrer {}: {reason}", r.digest.to_prefixed()));
                    continue;
                }
            };
            let payload = PayloadRef {
                digest: blob.digest,
                size: blob.size,
                signature: None,
            };
            match self.retrying(|| self.payload_once(&payload)).await {
                Ok(bundle) => bundles.push(bundle.to_vec()),
                Err(e) if e.kind() == ErrorKind::NotFound => {
                    notes.push(format!("referrer {}: {e}", r.digest.to_prefixed()));
                }
                Err(e) => return Err(e),
            }
        }
        Ok(Found { bundles, notes })
    }

    /// The referrers index of `digest`: from the referrers API, else from
    /// the referrers tag schema; `Ok(Err(reason))` when neither has one or
    /// it is over [`MAX_REFERRERS_INDEX_LEN`].
    async fn referrers_index_once(
        &self,
        digest: &Sha256Digest,
    ) -> Result<Result<Bytes, String>, Error> {
        let api = format!("referrers/{}", digest.to_prefixed());
        let mut response = self.get(&api, Some(OCI_INDEX)).await?;
        let what = if response.status == StatusCode::OK {
            format!("the referrers of {}", digest.to_prefixed())
        } else if matches!(
            response.status,
            StatusCode::NOT_FOUND
                | StatusCode::BAD_REQUEST
                | StatusCode::METHOD_NOT_ALLOWED
                | StatusCode::NOT_IMPLEMENTED
        ) {
            // No referrers API (the spec says 404; some registries answer
            // 400, 405 or 501 to a route they do not have): the tag schema.
            drop_body(&mut response).await;
            let tag = referrers_tag(digest);
            response = self
                .get(&format!("manifests/{tag}"), Some(OCI_INDEX))
                .await?;
            if response.status == StatusCode::NOT_FOUND {
                drop_body(&mut response).await;
                return Ok(Err(format!(
                    "no referrers of {} (no referrers API, no index at tag {tag})",
                    digest.to_prefixed()
                )));
            }
            if response.status != StatusCode::OK {
                return Err(self.refusal(&mut response).await);
            }
            format!("the referrers index at tag {tag}")
        } else {
            return Err(self.refusal(&mut response).await);
        };
        match response.bytes_limited(MAX_REFERRERS_INDEX_LEN).await {
            Ok(body) => Ok(Ok(body)),
            Err(ReadError::TooLarge { limit }) => Ok(Err(format!(
                "{what} is more than the {limit} bytes allowed"
            ))),
            Err(ReadError::Transport(e)) => Err(e),
        }
    }

    /// GETs a referrer manifest by digest, reading at most its declared size
    /// (capped at [`MAX_BUNDLE_MANIFEST_LEN`]) and checking it against its digest.
    async fn referrer_manifest_once(&self, r: &ReferrerRef) -> Result<Bytes, Error> {
        let digest = r.digest.to_prefixed();
        let mut response = self
            .get(&format!("manifests/{digest}"), Some(OCI_MANIFEST))
            .await?;
        if response.status != StatusCode::OK {
            return Err(self.refusal(&mut response).await);
        }
        let limit = if r.size == 0 {
            MAX_BUNDLE_MANIFEST_LEN
        } else {
            r.size.min(MAX_BUNDLE_MANIFEST_LEN)
        };
        let body = response.bytes_limited(limit).await.map_err(|e| match e {
            ReadError::TooLarge { limit } => Error::Manifest {
                url: self.url.clone(),
                reason: format!(
                    "referrer manifest {} is more than the {limit} bytes allowed",
                    shorten(&digest)
                ),
                source: None,
            },
            ReadError::Transport(e) => e,
        })?;
        let actual = sha256(&body);
        if actual != r.digest {
            return Err(Error::DigestMismatch {
                url: self.url.clone(),
                expected: digest,
                actual: actual.to_prefixed(),
            });
        }
        Ok(body)
    }
}
