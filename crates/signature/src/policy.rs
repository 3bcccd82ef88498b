//! The trust policy: which keys a module must be signed by, and the checks.

use wasm_cache_core::{Sha256Digest, shorten};

use crate::bundle::{Bundle, Content, IN_TOTO_PAYLOAD_TYPE, decode_bytes, pae, statement_subjects};
use crate::evidence::{Evidence, b64};
use crate::key::decode_signature_base64;
use crate::payload::{
    MAX_PAYLOAD_LEN, SIMPLE_SIGNING_MEDIA_TYPE, SimpleSigningPayload, reference_names_repository,
};
use crate::{Error, KeyFingerprint, PublicKey};

/// Most signature candidates considered per subject; the rest are ignored
/// (a signature manifest is size-capped by the fetcher anyway).
pub const MAX_CANDIDATES: usize = 64;

/// Which keys a served module must carry a signature from.
///
/// One valid signature by any one key suffices. With
/// [`TrustPolicy::require_reference`], a cosign payload must also name the
/// repository being fetched; by default it need not, as with cosign, so a
/// module copied to another registry together with its signature verifies.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TrustPolicy {
    keys: Vec<PublicKey>,
    require_reference: bool,
}

/// What is being verified: the reference as the user named it and the
/// digest being served.
#[derive(Clone, Copy, Debug)]
pub struct Subject<'a> {
    /// The reference for messages (`registry/repo:tag`, a URL), without digest.
    pub reference: &'a str,
    /// For OCI: `registry[:port]/repository`, compared with a payload's
    /// `docker-reference` when the policy requires it; `None` for HTTP blobs.
    pub repository: Option<&'a str>,
    /// The digest being served: the manifest digest for OCI, the module's
    /// sha256 for a detached blob signature.
    pub digest: &'a Sha256Digest,
}

/// One layer of a cosign signature manifest.
#[derive(Clone, Copy, Debug)]
pub struct CosignLayer<'a> {
    /// The layer's media type.
    pub media_type: &'a str,
    /// The layer's bytes (fetched and checked against its descriptor digest).
    pub payload: &'a [u8],
    /// The layer's `dev.cosignproject.cosign/signature` annotation, if any.
    pub signature: Option<&'a str>,
}

/// A successful check: which key verified the subject, and on what.
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub struct Verified {
    /// The fingerprint of the key whose signature verified.
    pub key: KeyFingerprint,
    /// What that key signed, enough to check again offline
    /// ([`TrustPolicy::verify_evidence`]).
    pub evidence: Evidence,
}

impl TrustPolicy {
    /// A policy trusting `keys` (duplicates by fingerprint are dropped).
    ///
    /// # Errors
    /// [`Error::NoKeys`] when `keys` is empty.
    pub fn new(keys: impl IntoIterator<Item = PublicKey>) -> Result<Self, Error> {
        let mut unique: Vec<PublicKey> = Vec::new();
        for key in keys {
            if !unique.iter().any(|k| k.fingerprint() == key.fingerprint()) {
                unique.push(key);
            }
        }
        if unique.is_empty() {
            return Err(Error::NoKeys);
        }
        Ok(Self {
            keys: unique,
            require_reference: false,
        })
    }

    /// Requires (or not) that a cosign payload's
    /// `critical.identity.docker-reference` names the repository fetched.
    #[must_use]
    pub fn require_reference(mut self, require: bool) -> Self {
        self.require_reference = require;
        self
    }

    /// Whether payloads must name the repository fetched.
    pub fn requires_reference(&self) -> bool {
        self.require_reference
    }

    /// The trusted keys, in the order given.
    pub fn keys(&self) -> &[PublicKey] {
        &self.keys
    }

    /// The trusted keys' fingerprints, in the order given.
    pub fn fingerprints(&self) -> Vec<KeyFingerprint> {
        self.keys.iter().map(PublicKey::fingerprint).collect()
    }

    /// Whether `key` is one of the trusted keys.
    pub fn trusts(&self, key: &KeyFingerprint) -> bool {
        self.keys.iter().any(|k| k.fingerprint() == *key)
    }

    /// The first of `recorded` (keys that verified a digest earlier, say from
    /// a journal) this policy trusts: such a digest needs no new check.
    ///
    /// Not usable when the policy requires a reference, since a record keeps
    /// only the key; callers then verify again.
    pub fn accepts_recorded<'a>(
        &self,
        recorded: impl IntoIterator<Item = &'a KeyFingerprint>,
    ) -> Option<KeyFingerprint> {
        if self.require_reference {
            return None;
        }
        recorded.into_iter().find(|k| self.trusts(k)).copied()
    }

    /// The failure for `subject` with the given rejection reasons, for a
    /// fetcher that found no candidate at all (no `.sig` tag, no `.sig` file).
    pub fn rejection(&self, subject: &Subject<'_>, reasons: Vec<String>) -> Error {
        Error::NoValidSignature {
            reference: shorten(subject.reference, 200),
            digest: subject.digest.to_prefixed(),
            keys: self.fingerprints(),
            reasons,
        }
    }

    /// Checks cosign's classic layout: some layer of media type
    /// [`SIMPLE_SIGNING_MEDIA_TYPE`] carries a signature by a trusted key over
    /// its payload, and that payload names `subject.digest` (and, when
    /// required, `subject.repository`).
    ///
    /// # Errors
    /// [`Error::NoValidSignature`] with a reason per rejected layer.
    pub fn verify_cosign<'a>(
        &self,
        subject: &Subject<'_>,
        layers: impl IntoIterator<Item = CosignLayer<'a>>,
    ) -> Result<Verified, Error> {
        let mut reasons = Vec::new();
        for (index, layer) in layers.into_iter().take(MAX_CANDIDATES).enumerate() {
            match self.check_layer(subject, &layer) {
                Ok(verified) => return Ok(verified),
                Err(reason) => reasons.push(format!("layer {index}: {reason}")),
            }
        }
        if reasons.is_empty() {
            reasons.push("the signature manifest has no layers".to_owned());
        }
        Err(self.rejection(subject, reasons))
    }

    fn check_layer(
        &self,
        subject: &Subject<'_>,
        layer: &CosignLayer<'_>,
    ) -> Result<Verified, String> {
        if layer.media_type != SIMPLE_SIGNING_MEDIA_TYPE {
            return Err(format!(
                "media type {:?} is not {SIMPLE_SIGNING_MEDIA_TYPE:?}",
                shorten(layer.media_type, 80)
            ));
        }
        let text = layer
            .signature
            .ok_or_else(|| format!("no {:?} annotation", crate::SIGNATURE_ANNOTATION))?;
        let signature = decode_signature_base64(text)?;
        let key = self.verifying_key(|key| key.verify(layer.payload, &signature))?;
        let payload = SimpleSigningPayload::parse(layer.payload)?;
        if payload.docker_manifest_digest != *subject.digest {
            return Err(format!(
                "signed by {key}, but the payload is for {}, not {}",
                payload.docker_manifest_digest.to_prefixed(),
                subject.digest.to_prefixed()
            ));
        }
        if self.require_reference {
            let matches = subject
                .repository
                .is_some_and(|repo| reference_names_repository(&payload.docker_reference, repo));
            if !matches {
                return Err(format!(
                    "signed by {key}, but the payload names {:?}, not {:?}",
                    shorten(&payload.docker_reference, 120),
                    subject.repository.unwrap_or("")
                ));
            }
        }
        Ok(Verified {
            key,
            evidence: Evidence::Cosign {
                payload: b64(layer.payload),
                signature: text.trim_ascii().to_owned(),
            },
        })
    }

    /// Checks a detached `cosign sign-blob` signature (base64 text) over a
    /// blob whose SHA-256 is `subject.digest`, without the blob.
    ///
    /// # Errors
    /// [`Error::NoValidSignature`] when no key verifies it.
    pub fn verify_blob(&self, subject: &Subject<'_>, signature: &str) -> Result<Verified, Error> {
        let blob = Subject {
            repository: None,
            ..*subject
        };
        self.check_digest_signature(&blob, signature)
            .map_err(|reason| self.rejection(subject, vec![reason]))
    }

    /// Checks the OCI signature material of `subject`: cosign's classic
    /// layers and sigstore bundles (JSON bytes, from OCI 1.1 referrers); one
    /// valid signature among them suffices. `notes` say why a discovery
    /// method found nothing; they join the reasons of a failure.
    ///
    /// # Errors
    /// [`Error::NoValidSignature`] with a reason per rejected candidate.
    pub fn verify_oci<'a>(
        &self,
        subject: &Subject<'_>,
        layers: impl IntoIterator<Item = CosignLayer<'a>>,
        bundles: impl IntoIterator<Item = &'a [u8]>,
        notes: &[String],
    ) -> Result<Verified, Error> {
        let mut reasons = Vec::new();
        for (index, layer) in layers.into_iter().take(MAX_CANDIDATES).enumerate() {
            match self.check_layer(subject, &layer) {
                Ok(verified) => return Ok(verified),
                Err(reason) => reasons.push(format!("layer {index}: {reason}")),
            }
        }
        for (index, bundle) in bundles.into_iter().take(MAX_CANDIDATES).enumerate() {
            match self.check_bundle(subject, bundle) {
                Ok(verified) => return Ok(verified),
                Err(reason) => reasons.push(format!("bundle {index}: {reason}")),
            }
        }
        reasons.extend(notes.iter().cloned());
        if reasons.is_empty() {
            reasons.push("no signature was found".to_owned());
        }
        Err(self.rejection(subject, reasons))
    }

    /// Checks one sigstore bundle (its JSON) for `subject` with the policy's
    /// keys: a `messageSignature` over the subject digest, or a DSSE
    /// envelope whose in-toto statement names the subject digest.
    ///
    /// # Errors
    /// [`Error::NoValidSignature`] saying why the bundle was rejected.
    pub fn verify_bundle(&self, subject: &Subject<'_>, bundle: &[u8]) -> Result<Verified, Error> {
        self.check_bundle(subject, bundle)
            .map_err(|reason| self.rejection(subject, vec![reason]))
    }

    fn check_bundle(&self, subject: &Subject<'_>, bytes: &[u8]) -> Result<Verified, String> {
        let bundle = Bundle::parse(bytes)?;
        let checked = match &bundle.content {
            Content::Message {
                digest,
                algorithm,
                signature,
            } => {
                if algorithm != "SHA2_256" {
                    return Err(format!(
                        "bundle messageDigest algorithm is {:?}, not \"SHA2_256\"",
                        shorten(algorithm, 40)
                    ));
                }
                if digest.as_slice() != subject.digest.as_bytes() {
                    return Err(format!(
                        "the bundle signs another digest, not {}",
                        subject.digest.to_prefixed()
                    ));
                }
                self.check_digest_signature(subject, signature)
            }
            Content::Dsse {
                payload_type,
                payload,
                signatures,
            } => self.check_dsse(subject, payload_type, payload, signatures),
        };
        checked.map_err(|reason| {
            if bundle.keyless {
                format!(
                    "{reason} (the bundle carries a certificate: keyless signatures are not \
                     supported, only signatures by a configured key)"
                )
            } else {
                reason
            }
        })
    }

    /// A signature over a message whose SHA-256 is the subject digest. It
    /// names no repository, so a policy requiring one refuses it for an OCI
    /// subject (an http(s) blob has no repository to name).
    fn check_digest_signature(
        &self,
        subject: &Subject<'_>,
        signature: &str,
    ) -> Result<Verified, String> {
        if self.require_reference && subject.repository.is_some() {
            return Err(
                "the signature names no repository, and the policy requires one".to_owned(),
            );
        }
        let raw = decode_signature_base64(signature)?;
        let key = self.verifying_key(|key| key.verify_sha256_prehashed(subject.digest, &raw))?;
        Ok(Verified {
            key,
            evidence: Evidence::Digest {
                signature: signature.trim_ascii().to_owned(),
            },
        })
    }

    /// A DSSE envelope: some signature verifies over the pre-authentication
    /// encoding, and the in-toto statement names the subject digest.
    fn check_dsse(
        &self,
        subject: &Subject<'_>,
        payload_type: &str,
        payload: &[u8],
        signatures: &[String],
    ) -> Result<Verified, String> {
        if payload_type != IN_TOTO_PAYLOAD_TYPE {
            return Err(format!(
                "DSSE payloadType is {:?}, not {IN_TOTO_PAYLOAD_TYPE:?}",
                shorten(payload_type, 80)
            ));
        }
        let message = pae(payload_type, payload);
        let mut failures = Vec::new();
        for (i, text) in signatures.iter().take(MAX_CANDIDATES).enumerate() {
            let checked = decode_signature_base64(text)
                .and_then(|raw| self.verifying_key(|key| key.verify(&message, &raw)));
            let key = match checked {
                Ok(key) => key,
                Err(reason) => {
                    failures.push(format!("DSSE signature {i}: {reason}"));
                    continue;
                }
            };
            let names = statement_subjects(payload, subject.digest)
                .map_err(|reason| format!("signed by {key}, but {reason}"))?;
            if self.require_reference {
                let repo = subject.repository.unwrap_or("");
                if !names.iter().any(|n| reference_names_repository(n, repo)) {
                    return Err(format!(
                        "signed by {key}, but the in-toto statement names no subject in {repo:?}"
                    ));
                }
            }
            return Ok(Verified {
                key,
                evidence: Evidence::Dsse {
                    payload_type: payload_type.to_owned(),
                    payload: b64(payload),
                    signature: text.trim_ascii().to_owned(),
                },
            });
        }
        if failures.is_empty() {
            failures.push("the DSSE envelope has no signatures".to_owned());
        }
        Err(failures.join("; "))
    }

    /// Checks `evidence` (from an earlier [`Verified`], say read back from a
    /// journal) again for `subject`, with this policy's keys and rules: no
    /// network, the same checks as the first time.
    ///
    /// # Errors
    /// [`Error::NoValidSignature`] when it does not verify (a forged or
    /// corrupted record, another digest, a key this policy does not trust).
    pub fn verify_evidence(
        &self,
        subject: &Subject<'_>,
        evidence: &Evidence,
    ) -> Result<Verified, Error> {
        let checked = match evidence {
            Evidence::Cosign { payload, signature } => {
                decode_bytes("recorded payload", payload, MAX_PAYLOAD_LEN).and_then(|payload| {
                    self.check_layer(
                        subject,
                        &CosignLayer {
                            media_type: SIMPLE_SIGNING_MEDIA_TYPE,
                            payload: &payload,
                            signature: Some(signature),
                        },
                    )
                })
            }
            Evidence::Digest { signature } => self.check_digest_signature(subject, signature),
            Evidence::Dsse {
                payload_type,
                payload,
                signature,
            } => decode_bytes("recorded DSSE payload", payload, 64 * 1024).and_then(|payload| {
                self.check_dsse(
                    subject,
                    payload_type,
                    &payload,
                    std::slice::from_ref(signature),
                )
            }),
        };
        checked.map_err(|reason| self.rejection(subject, vec![reason]))
    }

    /// The first key for which `check` succeeds, or the reasons they all failed.
    fn verifying_key(
        &self,
        check: impl Fn(&PublicKey) -> Result<(), String>,
    ) -> Result<KeyFingerprint, String> {
        let mut failures = Vec::new();
        for key in &self.keys {
            match check(key) {
                Ok(()) => return Ok(key.fingerprint()),
                Err(reason) => failures.push(format!("{}: {reason}", key.fingerprint())),
            }
        }
        Err(failures.join("; "))
    }
}
