//! Sigstore bundles attached as OCI 1.1 referrers, checked with a configured
//! key (no Fulcio certificate, no Rekor entry is needed or checked).
//!
//! Byte-for-byte references: cosign's `specs/BUNDLE_SPEC.md` (the referrer
//! manifest: `artifactType` and one layer of media type
//! [`BUNDLE_MEDIA_TYPE`], the referrers API and its tag-schema fallback),
//! sigstore's `protobuf-specs` (`sigstore_bundle.proto`, `envelope.proto`,
//! `sigstore_common.proto`, in protobuf's JSON mapping: lowerCamelCase field
//! names, bytes as base64, enums by name) and the DSSE v1 protocol
//! (pre-authentication encoding).
//!
//! Two contents are accepted:
//! - `messageSignature`: a signature over the artifact, here the served
//!   manifest, so over its SHA-256 (`messageDigest` must be that digest);
//! - `dsseEnvelope` of type `application/vnd.in-toto+json`: a signature over
//!   the envelope's pre-authentication encoding, whose in-toto statement
//!   names the served digest among its subjects (what `cosign sign` writes
//!   with the new bundle format, predicate `https://sigstore.dev/cosign/sign/v1`).

use base64::Engine as _;
use serde::Deserialize;
use wasm_cache_core::{Sha256Digest, shorten};

use crate::policy::MAX_CANDIDATES;

/// Media type of a sigstore bundle v0.3: the referrer manifest's
/// `artifactType` and its layer's media type.
pub const BUNDLE_MEDIA_TYPE: &str = "application/vnd.dev.sigstore.bundle.v0.3+json";

/// Bundle media types accepted inside the bundle itself (`mediaType`).
const BUNDLE_MEDIA_TYPES: [&str; 3] = [
    BUNDLE_MEDIA_TYPE,
    "application/vnd.dev.sigstore.bundle+json;version=0.2",
    "application/vnd.dev.sigstore.bundle+json;version=0.1",
];

/// DSSE payload type of an in-toto statement.
pub const IN_TOTO_PAYLOAD_TYPE: &str = "application/vnd.in-toto+json";

/// in-toto statement types accepted (`_type`).
const STATEMENT_TYPES: [&str; 2] = [
    "https://in-toto.io/Statement/v1",
    "https://in-toto.io/Statement/v0.1",
];

/// Largest referrers index read (from the referrers API or the
/// `sha256-<hex>` tag); fetchers stop reading past it.
pub const MAX_REFERRERS_INDEX_LEN: u64 = 256 * 1024;

/// Largest bundle referrer manifest read.
pub const MAX_BUNDLE_MANIFEST_LEN: u64 = 64 * 1024;

/// Largest bundle read. A key-based bundle with a Rekor entry is a few KiB; a
/// keyless one with its certificate chain under 16 KiB.
pub const MAX_BUNDLE_LEN: u64 = 128 * 1024;

/// Most bundle referrers fetched per digest (each costs two requests).
pub const MAX_BUNDLES: usize = 16;

/// Largest DSSE payload (in-toto statement) accepted, decoded.
const MAX_DSSE_PAYLOAD_LEN: usize = 64 * 1024;

/// The tag of the referrers tag schema for `digest`: `sha256-<hex>`, an image
/// index listing the referrers, for registries without the referrers API.
pub fn referrers_tag(digest: &Sha256Digest) -> String {
    format!("sha256-{}", digest.to_hex())
}

#[derive(Deserialize)]
struct Index {
    #[serde(rename = "schemaVersion")]
    schema_version: u32,
    #[serde(default)]
    manifests: Vec<IndexEntry>,
}

#[derive(Deserialize)]
struct IndexEntry {
    digest: String,
    #[serde(default)]
    size: u64,
    #[serde(rename = "artifactType", default)]
    artifact_type: Option<String>,
}

/// A bundle referrer listed in a referrers index: its manifest's digest and
/// declared size.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ReferrerRef {
    /// The referrer manifest's digest.
    pub digest: Sha256Digest,
    /// Its declared size (at most [`MAX_BUNDLE_MANIFEST_LEN`]).
    pub size: u64,
}

fn sha256_field(what: &str, text: &str) -> Result<Sha256Digest, String> {
    if !text.starts_with(wasm_cache_core::digest::SHA256_PREFIX) {
        return Err(format!(
            "{what} {:?} is not a sha256: digest",
            shorten(text, 80)
        ));
    }
    Sha256Digest::parse(text).map_err(|e| format!("{what} {:?}: {e}", shorten(text, 80)))
}

/// The sigstore bundle referrers of a referrers index (the referrers API's
/// answer or the `sha256-<hex>` tag's index), in order, at most
/// [`MAX_BUNDLES`]; entries of other artifact types are skipped.
///
/// # Errors
/// A short reason when the index is too large or not an image index.
pub fn parse_referrers_index(bytes: &[u8]) -> Result<Vec<ReferrerRef>, String> {
    if bytes.len() as u64 > MAX_REFERRERS_INDEX_LEN {
        return Err(format!(
            "referrers index is {} bytes, more than the {MAX_REFERRERS_INDEX_LEN} allowed",
            bytes.len()
        ));
    }
    let index: Index = serde_json::from_slice(bytes)
        .map_err(|e| format!("referrers index is not an image index: {e}"))?;
    if index.schema_version != 2 {
        return Err(format!(
            "referrers index has schemaVersion {}, expected 2",
            index.schema_version
        ));
    }
    let mut out = Vec::new();
    for entry in index
        .manifests
        .into_iter()
        .filter(|m| m.artifact_type.as_deref() == Some(BUNDLE_MEDIA_TYPE))
        .take(MAX_BUNDLES)
    {
        let digest = sha256_field("referrer digest", &entry.digest)?;
        if entry.size > MAX_BUNDLE_MANIFEST_LEN {
            return Err(format!(
                "bundle referrer {} is {} bytes, more than the {MAX_BUNDLE_MANIFEST_LEN} allowed",
                digest.to_prefixed(),
                entry.size
            ));
        }
        out.push(ReferrerRef {
            digest,
            size: entry.size,
        });
    }
    Ok(out)
}

#[derive(Deserialize)]
struct ReferrerManifest {
    #[serde(rename = "schemaVersion")]
    schema_version: u32,
    #[serde(rename = "artifactType", default)]
    artifact_type: Option<String>,
    #[serde(default)]
    config: Option<Descriptor>,
    #[serde(default)]
    layers: Vec<Descriptor>,
    #[serde(default)]
    subject: Option<Descriptor>,
}

#[derive(Deserialize)]
struct Descriptor {
    #[serde(rename = "mediaType", default)]
    media_type: String,
    digest: String,
    #[serde(default)]
    size: u64,
}

/// Where a bundle referrer manifest keeps its bundle.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct BundleBlob {
    /// The bundle blob's digest (the fetcher checks the bytes against it).
    pub digest: Sha256Digest,
    /// Its declared size, at most [`MAX_BUNDLE_LEN`].
    pub size: u64,
}

/// The bundle layer of a referrer manifest for `subject`: the manifest must
/// be a sigstore bundle artifact (`artifactType`, or the config media type
/// for older writers) and, when it names a `subject`, name this one.
///
/// # Errors
/// A short reason naming what is wrong.
pub fn parse_bundle_manifest(bytes: &[u8], subject: &Sha256Digest) -> Result<BundleBlob, String> {
    if bytes.len() as u64 > MAX_BUNDLE_MANIFEST_LEN {
        return Err(format!(
            "bundle manifest is {} bytes, more than the {MAX_BUNDLE_MANIFEST_LEN} allowed",
            bytes.len()
        ));
    }
    let manifest: ReferrerManifest = serde_json::from_slice(bytes)
        .map_err(|e| format!("bundle manifest is not an image manifest: {e}"))?;
    if manifest.schema_version != 2 {
        return Err(format!(
            "bundle manifest has schemaVersion {}, expected 2",
            manifest.schema_version
        ));
    }
    let is_bundle = manifest.artifact_type.as_deref() == Some(BUNDLE_MEDIA_TYPE)
        || manifest
            .config
            .as_ref()
            .is_some_and(|c| c.media_type == BUNDLE_MEDIA_TYPE);
    if !is_bundle {
        return Err(format!(
            "manifest artifactType is {:?}, not {BUNDLE_MEDIA_TYPE:?}",
            shorten(manifest.artifact_type.as_deref().unwrap_or(""), 80)
        ));
    }
    if let Some(s) = &manifest.subject {
        let named = sha256_field("bundle manifest subject", &s.digest)?;
        if named != *subject {
            return Err(format!(
                "bundle manifest is for {}, not {}",
                named.to_prefixed(),
                subject.to_prefixed()
            ));
        }
    }
    let layer = manifest
        .layers
        .iter()
        .find(|l| l.media_type == BUNDLE_MEDIA_TYPE)
        .ok_or_else(|| {
            format!("bundle manifest has no layer of media type {BUNDLE_MEDIA_TYPE:?}")
        })?;
    let digest = sha256_field("bundle layer digest", &layer.digest)?;
    if layer.size > MAX_BUNDLE_LEN {
        return Err(format!(
            "bundle is {} bytes, more than the {MAX_BUNDLE_LEN} allowed",
            layer.size
        ));
    }
    Ok(BundleBlob {
        digest,
        size: layer.size,
    })
}

/// A bundle's content, parsed: what a key must have signed.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) enum Content {
    /// A signature over an artifact whose SHA-256 is `digest`.
    Message {
        digest: Vec<u8>,
        algorithm: String,
        signature: String,
    },
    /// A DSSE envelope: payload type, decoded payload, base64 signatures.
    Dsse {
        payload_type: String,
        payload: Vec<u8>,
        signatures: Vec<String>,
    },
}

/// What a parsed bundle holds.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct Bundle {
    pub(crate) content: Content,
    /// The bundle carries a certificate (keyless signing) and no public key hint.
    pub(crate) keyless: bool,
}

#[derive(Deserialize)]
struct RawBundle {
    #[serde(rename = "mediaType", alias = "media_type")]
    media_type: String,
    #[serde(
        rename = "verificationMaterial",
        alias = "verification_material",
        default
    )]
    verification_material: Option<RawMaterial>,
    #[serde(rename = "messageSignature", alias = "message_signature", default)]
    message_signature: Option<RawMessageSignature>,
    #[serde(rename = "dsseEnvelope", alias = "dsse_envelope", default)]
    dsse_envelope: Option<RawEnvelope>,
}

#[derive(Deserialize)]
struct RawMaterial {
    #[serde(rename = "publicKey", alias = "public_key", default)]
    public_key: Option<serde_json::Value>,
    #[serde(default)]
    certificate: Option<serde_json::Value>,
    #[serde(
        rename = "x509CertificateChain",
        alias = "x509_certificate_chain",
        default
    )]
    x509_certificate_chain: Option<serde_json::Value>,
}

#[derive(Deserialize)]
struct RawMessageSignature {
    #[serde(rename = "messageDigest", alias = "message_digest", default)]
    message_digest: Option<RawHash>,
    signature: String,
}

#[derive(Deserialize)]
struct RawHash {
    algorithm: String,
    digest: String,
}

#[derive(Deserialize)]
struct RawEnvelope {
    payload: String,
    #[serde(rename = "payloadType", alias = "payload_type")]
    payload_type: String,
    #[serde(default)]
    signatures: Vec<RawDsseSignature>,
}

#[derive(Deserialize)]
struct RawDsseSignature {
    sig: String,
}

/// Decodes protobuf-JSON bytes (standard base64; the URL-safe alphabet is
/// accepted too, as protobuf's JSON mapping requires).
pub(crate) fn decode_bytes(what: &str, text: &str, max: usize) -> Result<Vec<u8>, String> {
    if text.len() > max.saturating_mul(4) / 3 + 4 {
        return Err(format!("{what} is longer than the {max} bytes allowed"));
    }
    base64::engine::general_purpose::STANDARD
        .decode(text)
        .or_else(|_| base64::engine::general_purpose::URL_SAFE.decode(text))
        .map_err(|e| format!("{what} is not base64: {e}"))
}

impl Bundle {
    /// Parses a bundle's JSON (protobuf's JSON mapping).
    pub(crate) fn parse(bytes: &[u8]) -> Result<Self, String> {
        if bytes.len() as u64 > MAX_BUNDLE_LEN {
            return Err(format!(
                "bundle is {} bytes, more than the {MAX_BUNDLE_LEN} allowed",
                bytes.len()
            ));
        }
        let raw: RawBundle = serde_json::from_slice(bytes)
            .map_err(|e| format!("bundle is not a sigstore bundle: {e}"))?;
        if !BUNDLE_MEDIA_TYPES.contains(&raw.media_type.as_str()) {
            return Err(format!(
                "bundle mediaType is {:?}, not a sigstore bundle",
                shorten(&raw.media_type, 80)
            ));
        }
        let keyless = raw.verification_material.as_ref().is_some_and(|m| {
            m.public_key.is_none()
                && (m.certificate.is_some() || m.x509_certificate_chain.is_some())
        });
        let content = match (raw.message_signature, raw.dsse_envelope) {
            (Some(m), None) => {
                let hash = m
                    .message_digest
                    .ok_or("bundle messageSignature has no messageDigest")?;
                Content::Message {
                    digest: decode_bytes("bundle messageDigest", &hash.digest, 64)?,
                    algorithm: hash.algorithm,
                    signature: m.signature,
                }
            }
            (None, Some(e)) => Content::Dsse {
                payload: decode_bytes("DSSE payload", &e.payload, MAX_DSSE_PAYLOAD_LEN)?,
                payload_type: e.payload_type,
                signatures: e
                    .signatures
                    .into_iter()
                    .take(MAX_CANDIDATES)
                    .map(|s| s.sig)
                    .collect(),
            },
            (Some(_), Some(_)) => {
                return Err("bundle has both a messageSignature and a dsseEnvelope".to_owned());
            }
            (None, None) => {
                return Err("bundle has neither a messageSignature nor a dsseEnvelope".to_owned());
            }
        };
        Ok(Self { content, keyless })
    }
}

/// DSSE v1 pre-authentication encoding: what a DSSE signature signs.
pub(crate) fn pae(payload_type: &str, payload: &[u8]) -> Vec<u8> {
    let mut out = format!(
        "DSSEv1 {} {payload_type} {} ",
        payload_type.len(),
        payload.len()
    )
    .into_bytes();
    out.extend_from_slice(payload);
    out
}

#[derive(Deserialize)]
struct Statement {
    #[serde(rename = "_type")]
    kind: String,
    #[serde(default)]
    subject: Vec<StatementSubject>,
}

#[derive(Deserialize)]
struct StatementSubject {
    #[serde(default)]
    name: String,
    #[serde(default)]
    digest: std::collections::BTreeMap<String, String>,
}

/// The names of the statement's subjects whose `sha256` is `digest`, or why
/// the statement is not one.
pub(crate) fn statement_subjects(
    payload: &[u8],
    digest: &Sha256Digest,
) -> Result<Vec<String>, String> {
    let statement: Statement = serde_json::from_slice(payload)
        .map_err(|e| format!("DSSE payload is not an in-toto statement: {e}"))?;
    if !STATEMENT_TYPES.contains(&statement.kind.as_str()) {
        return Err(format!(
            "in-toto statement _type is {:?}, not an in-toto statement",
            shorten(&statement.kind, 80)
        ));
    }
    let hex = digest.to_hex();
    let names: Vec<String> = statement
        .subject
        .iter()
        .take(MAX_CANDIDATES)
        .filter(|s| s.digest.get("sha256").is_some_and(|d| *d == hex))
        .map(|s| s.name.clone())
        .collect();
    if names.is_empty() {
        let named: Vec<String> = statement
            .subject
            .iter()
            .take(4)
            .filter_map(|s| s.digest.get("sha256"))
            .map(|d| format!("sha256:{}", shorten(d, 64)))
            .collect();
        return Err(format!(
            "the in-toto statement is for [{}], not {}",
            named.join(", "),
            digest.to_prefixed()
        ));
    }
    Ok(names)
}

#[cfg(test)]
mod tests {
    use super::*;

    const D: &str = "sha256:1119abab63e605dcc281019bad0424744178b6f61ba57378701fe7391994c999";
    const E: &str = "sha256:44136fa355b3678a1146ad16f7e8649e94fb4fc21fe77e8310c060f61caaff8a";

    fn d(s: &str) -> Sha256Digest {
        Sha256Digest::parse(s).unwrap()
    }

    #[test]
    fn referrers_index_keeps_bundles_only() {
        let index = format!(
            r#"{{"schemaVersion":2,"mediaType":"application/vnd.oci.image.index.v1+json","manifests":[
            {{"mediaType":"application/vnd.oci.image.manifest.v1+json","digest":"{D}","size":500,"artifactType":"application/spdx+json"}},
            {{"mediaType":"application/vnd.oci.image.manifest.v1+json","digest":"{E}","size":600,"artifactType":"{BUNDLE_MEDIA_TYPE}"}}]}}"#
        );
        let refs = parse_referrers_index(index.as_bytes()).unwrap();
        assert_eq!(
            refs,
            vec![ReferrerRef {
                digest: d(E),
                size: 600
            }]
        );
        assert!(
            parse_referrers_index(br#"{"schemaVersion":2,"manifests":[]}"#)
                .unwrap()
                .is_empty()
        );
        assert!(
            parse_referrers_index(b"{}")
                .unwrap_err()
                .contains("not an image index")
        );
        let big = vec![b' '; MAX_REFERRERS_INDEX_LEN as usize + 1];
        assert!(
            parse_referrers_index(&big)
                .unwrap_err()
                .contains("more than")
        );
        let path = format!(
            r#"{{"schemaVersion":2,"manifests":[{{"digest":"sha256:../x","size":1,"artifactType":"{BUNDLE_MEDIA_TYPE}"}}]}}"#
        );
        assert!(parse_referrers_index(path.as_bytes()).is_err());
        let many =
            vec![
                format!(r#"{{"digest":"{D}","size":1,"artifactType":"{BUNDLE_MEDIA_TYPE}"}}"#);
                MAX_BUNDLES + 5
            ]
            .join(",");
        let many = format!(r#"{{"schemaVersion":2,"manifests":[{many}]}}"#);
        assert_eq!(
            parse_referrers_index(many.as_bytes()).unwrap().len(),
            MAX_BUNDLES
        );
    }

    #[test]
    fn bundle_manifest_must_be_a_bundle_for_the_subject() {
        let manifest = |artifact: &str, subject: &str, size: u64| {
            format!(
                r#"{{"schemaVersion":2,"mediaType":"application/vnd.oci.image.manifest.v1+json","artifactType":"{artifact}",
                "config":{{"mediaType":"application/vnd.oci.empty.v1+json","digest":"{E}","size":2}},
                "layers":[{{"mediaType":"{BUNDLE_MEDIA_TYPE}","digest":"{D}","size":{size}}}],
                "subject":{{"mediaType":"application/vnd.oci.image.manifest.v1+json","digest":"{subject}","size":9}}}}"#
            )
        };
        let ok = parse_bundle_manifest(manifest(BUNDLE_MEDIA_TYPE, E, 900).as_bytes(), &d(E));
        assert_eq!(
            ok.unwrap(),
            BundleBlob {
                digest: d(D),
                size: 900
            }
        );
        let other = parse_bundle_manifest(manifest(BUNDLE_MEDIA_TYPE, D, 900).as_bytes(), &d(E));
        assert!(other.unwrap_err().contains("is for"));
        let sbom = parse_bundle_manifest(manifest("application/spdx+json", E, 9).as_bytes(), &d(E));
        assert!(sbom.unwrap_err().contains("artifactType"));
        let huge = parse_bundle_manifest(
            manifest(BUNDLE_MEDIA_TYPE, E, MAX_BUNDLE_LEN + 1).as_bytes(),
            &d(E),
        );
        assert!(huge.unwrap_err().contains("more than"));
    }

    #[test]
    fn bundles_parse_in_both_contents_and_refuse_the_rest() {
        // cosign's own test fixture shape (pkg/cosign/testdata), shortened.
        let dsse = r#"{"mediaType":"application/vnd.dev.sigstore.bundle.v0.3+json","verificationMaterial":{"certificate":{"rawBytes":"AA=="},"tlogEntries":[]},"dsseEnvelope":{"payload":"e30=","payloadType":"application/vnd.in-toto+json","signatures":[{"sig":"MEQ="}]}}"#;
        let b = Bundle::parse(dsse.as_bytes()).unwrap();
        assert!(b.keyless);
        assert_eq!(
            b.content,
            Content::Dsse {
                payload_type: IN_TOTO_PAYLOAD_TYPE.to_owned(),
                payload: b"{}".to_vec(),
                signatures: vec!["MEQ=".to_owned()]
            }
        );
        let message = r#"{"media_type":"application/vnd.dev.sigstore.bundle.v0.3+json","verification_material":{"public_key":{"hint":"k"}},"message_signature":{"message_digest":{"algorithm":"SHA2_256","digest":"AAEC"},"signature":"MEQ="}}"#;
        let b = Bundle::parse(message.as_bytes()).unwrap();
        assert!(!b.keyless);
        assert!(matches!(b.content, Content::Message { ref digest, .. } if digest == &[0, 1, 2]));
        for bad in [
            r#"{"mediaType":"application/json","messageSignature":{"messageDigest":{"algorithm":"SHA2_256","digest":"AA=="},"signature":"AA=="}}"#,
            r#"{"mediaType":"application/vnd.dev.sigstore.bundle.v0.3+json"}"#,
            r#"{"mediaType":"application/vnd.dev.sigstore.bundle.v0.3+json","messageSignature":{"signature":"AA=="}}"#,
            r#"{"mediaType":"application/vnd.dev.sigstore.bundle.v0.3+json","dsseEnvelope":{"payload":"!!","payloadType":"x","signatures":[]}}"#,
            "[]",
        ] {
            assert!(Bundle::parse(bad.as_bytes()).is_err(), "{bad}");
        }
    }

    #[test]
    fn pae_is_dsse_v1() {
        // The example from the DSSE protocol document.
        assert_eq!(
            pae("http://example.com/HelloWorld", b"hello world"),
            b"DSSEv1 29 http://example.com/HelloWorld 11 hello world".to_vec()
        );
    }

    #[test]
    fn statement_subjects_match_by_sha256() {
        let hex = d(E).to_hex();
        let s = format!(
            r#"{{"_type":"https://in-toto.io/Statement/v1","subject":[{{"name":"a","digest":{{"sha512":"{hex}"}}}},{{"name":"r/x","digest":{{"sha256":"{hex}"}}}}],"predicateType":"https://sigstore.dev/cosign/sign/v1","predicate":{{}}}}"#
        );
        assert_eq!(statement_subjects(s.as_bytes(), &d(E)).unwrap(), ["r/x"]);
        assert!(
            statement_subjects(s.as_bytes(), &d(D))
                .unwrap_err()
                .contains("is for")
        );
        let other = s.replace("in-toto.io/Statement/v1", "example.com/Statement");
        assert!(statement_subjects(other.as_bytes(), &d(E)).is_err());
    }
}
