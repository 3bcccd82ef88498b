//! cosign's classic signature layout: the simple-signing payload and the
//! names a registry stores it under.
//!
//! Byte-for-byte reference: sigstore's `pkg/signature/payload` (payload JSON),
//! cosign's `pkg/types` (media type) and `pkg/oci/static` (annotation key),
//! and cosign's `specs/SIGNATURE_SPEC.md` (tag-based discovery).

use serde::{Deserialize, Serialize};
use wasm_cache_core::{Sha256Digest, shorten};

/// Media type of a layer holding a simple-signing payload.
pub const SIMPLE_SIGNING_MEDIA_TYPE: &str = "application/vnd.dev.cosign.simplesigning.v1+json";

/// Layer annotation holding the base64 signature over the payload bytes.
pub const SIGNATURE_ANNOTATION: &str = "dev.cosignproject.cosign/signature";

/// `critical.type` of a cosign container image signature.
pub const COSIGN_SIGNATURE_TYPE: &str = "cosign container image signature";

/// Largest simple-signing payload accepted. cosign's payloads are a few
/// hundred bytes; fetchers cap the payload blob download at this size.
pub const MAX_PAYLOAD_LEN: usize = 64 * 1024;

/// The tag cosign stores the signatures of `digest` under, in the same
/// repository: `sha256-<hex>.sig`.
pub fn signature_tag(digest: &Sha256Digest) -> String {
    format!("sha256-{}.sig", digest.to_hex())
}

#[derive(Serialize, Deserialize)]
struct SimpleContainerImage {
    critical: Critical,
    optional: Option<serde_json::Map<String, serde_json::Value>>,
}

#[derive(Serialize, Deserialize)]
struct Critical {
    identity: Identity,
    image: Image,
    #[serde(rename = "type")]
    kind: String,
}

#[derive(Serialize, Deserialize)]
struct Identity {
    #[serde(rename = "docker-reference")]
    docker_reference: String,
}

#[derive(Serialize, Deserialize)]
struct Image {
    #[serde(rename = "docker-manifest-digest")]
    docker_manifest_digest: String,
}

/// The fields of a simple-signing payload a verifier acts on.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SimpleSigningPayload {
    /// `critical.image.docker-manifest-digest`: the manifest the signature is for.
    pub docker_manifest_digest: Sha256Digest,
    /// `critical.identity.docker-reference`: where the signer says the image lives.
    pub docker_reference: String,
}

impl SimpleSigningPayload {
    /// Parses payload bytes. Field names are matched exactly, duplicates and
    /// a `critical.type` other than [`COSIGN_SIGNATURE_TYPE`] are rejected,
    /// unknown fields are ignored (as cosign does).
    ///
    /// # Errors
    /// A short reason naming what is wrong.
    pub fn parse(bytes: &[u8]) -> Result<Self, String> {
        if bytes.len() > MAX_PAYLOAD_LEN {
            return Err(format!(
                "payload is {} bytes, more than the {MAX_PAYLOAD_LEN} allowed",
                bytes.len()
            ));
        }
        let doc: SimpleContainerImage = serde_json::from_slice(bytes)
            .map_err(|e| format!("payload is not a simple-signing document: {e}"))?;
        if doc.critical.kind != COSIGN_SIGNATURE_TYPE {
            return Err(format!(
                "payload critical.type is {:?}, expected {COSIGN_SIGNATURE_TYPE:?}",
                shorten(&doc.critical.kind, 80)
            ));
        }
        let digest = &doc.critical.image.docker_manifest_digest;
        if !digest.starts_with(wasm_cache_core::digest::SHA256_PREFIX) {
            return Err(format!(
                "payload docker-manifest-digest {:?} is not a sha256: digest",
                shorten(digest, 80)
            ));
        }
        let docker_manifest_digest = Sha256Digest::parse(digest).map_err(|e| {
            format!(
                "payload docker-manifest-digest {:?} is invalid: {e}",
                shorten(digest, 80)
            )
        })?;
        Ok(Self {
            docker_manifest_digest,
            docker_reference: doc.critical.identity.docker_reference,
        })
    }

    /// The payload `cosign sign` writes for `digest` claimed at
    /// `docker_reference`, byte for byte (Go's `encoding/json` output of
    /// sigstore's `payload.Cosign`, `"optional":null` without annotations,
    /// annotation keys sorted).
    pub fn cosign_bytes(
        docker_reference: &str,
        digest: &Sha256Digest,
        annotations: Option<&serde_json::Map<String, serde_json::Value>>,
    ) -> Vec<u8> {
        let doc = SimpleContainerImage {
            critical: Critical {
                identity: Identity {
                    docker_reference: docker_reference.to_owned(),
                },
                image: Image {
                    docker_manifest_digest: digest.to_prefixed(),
                },
                kind: COSIGN_SIGNATURE_TYPE.to_owned(),
            },
            optional: annotations.cloned(),
        };
        // Serialising owned strings and a JSON map cannot fail.
        serde_json::to_vec(&doc).unwrap_or_default()
    }
}

/// Whether a payload's `docker-reference` names `repository`
/// (`registry[:port]/path`): a tag or digest on the claimed reference is
/// ignored, the registry host is compared case-insensitively, the path exactly.
pub fn reference_names_repository(docker_reference: &str, repository: &str) -> bool {
    let without_digest = docker_reference
        .split_once('@')
        .map_or(docker_reference, |(name, _)| name);
    let last_slash = without_digest.rfind('/').unwrap_or(0);
    let name = match without_digest[last_slash..].rfind(':') {
        Some(colon) => &without_digest[..last_slash + colon],
        None => without_digest,
    };
    let split = |s: &str| -> Option<(String, String)> {
        s.split_once('/')
            .map(|(host, path)| (host.to_ascii_lowercase(), path.to_owned()))
    };
    match (split(name), split(repository)) {
        (Some(a), Some(b)) => a == b,
        _ => false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const D: &str = "sha256:d34db33fd34db33fd34db33fd34db33fd34db33fd34db33fd34db33fd34db33f";

    fn digest() -> Sha256Digest {
        Sha256Digest::parse(D).unwrap()
    }

    #[test]
    fn payload_bytes_match_sigstore_go_output() {
        // Expected strings copied from sigstore's payload_test.go.
        assert_eq!(
            String::from_utf8(SimpleSigningPayload::cosign_bytes(
                "example.com/test/image",
                &digest(),
                None
            ))
            .unwrap(),
            r#"{"critical":{"identity":{"docker-reference":"example.com/test/image"},"image":{"docker-manifest-digest":"sha256:d34db33fd34db33fd34db33fd34db33fd34db33fd34db33fd34db33fd34db33f"},"type":"cosign container image signature"},"optional":null}"#
        );
        let annotations: serde_json::Map<String, serde_json::Value> =
            serde_json::from_str(r#"{"timestamp":1458239713,"creator":"atomic"}"#).unwrap();
        assert_eq!(
            String::from_utf8(SimpleSigningPayload::cosign_bytes(
                "example.com/atomic/test/image",
                &digest(),
                Some(&annotations)
            ))
            .unwrap(),
            r#"{"critical":{"identity":{"docker-reference":"example.com/atomic/test/image"},"image":{"docker-manifest-digest":"sha256:d34db33fd34db33fd34db33fd34db33fd34db33fd34db33fd34db33fd34db33f"},"type":"cosign container image signature"},"optional":{"creator":"atomic","timestamp":1458239713}}"#
        );
    }

    #[test]
    fn parses_what_it_builds_and_sigstore_fixtures() {
        let bytes = SimpleSigningPayload::cosign_bytes("reg.example/a/b:v1", &digest(), None);
        let parsed = SimpleSigningPayload::parse(&bytes).unwrap();
        assert_eq!(parsed.docker_manifest_digest, digest());
        assert_eq!(parsed.docker_reference, "reg.example/a/b:v1");
        let fixture = r#"{"critical":{"identity":{"docker-reference":"example.com/cosign/test/image"},"image":{"docker-manifest-digest":"sha256:d34db33fd34db33fd34db33fd34db33fd34db33fd34db33fd34db33fd34db33f"},"type":"cosign container image signature"},"optional":{"CamelCase WithSpace":8.314,"creator":"anyone","some_struct":{"false":true,"foo":"bar","nothing":null}}}"#;
        let parsed = SimpleSigningPayload::parse(fixture.as_bytes()).unwrap();
        assert_eq!(parsed.docker_reference, "example.com/cosign/test/image");
    }

    #[test]
    fn rejects_wrong_type_bad_digest_duplicates_and_junk() {
        let atomic = r#"{"critical":{"identity":{"docker-reference":"example.com/atomic/test/image"},"image":{"docker-manifest-digest":"sha256:d34db33fd34db33fd34db33fd34db33fd34db33fd34db33fd34db33fd34db33f"},"type":"atomic container signature"},"optional":{}}"#;
        let err = SimpleSigningPayload::parse(atomic.as_bytes()).unwrap_err();
        assert!(err.contains("critical.type"), "{err}");

        let sha512 = String::from_utf8(SimpleSigningPayload::cosign_bytes("r/x", &digest(), None))
            .unwrap()
            .replace("sha256:d34d", "sha512:d34d");
        let err = SimpleSigningPayload::parse(sha512.as_bytes()).unwrap_err();
        assert!(err.contains("not a sha256: digest"), "{err}");

        let upper = String::from_utf8(SimpleSigningPayload::cosign_bytes("r/x", &digest(), None))
            .unwrap()
            .replace("d34db33f\"", "D34DB33F\"");
        assert!(SimpleSigningPayload::parse(upper.as_bytes()).is_err());

        let dup = r#"{"critical":{"identity":{"docker-reference":"r/x"},"image":{"docker-manifest-digest":"sha256:d34db33fd34db33fd34db33fd34db33fd34db33fd34db33fd34db33fd34db33f","docker-manifest-digest":"sha256:0000000000000000000000000000000000000000000000000000000000000000"},"type":"cosign container image signature"},"optional":null}"#;
        let err = SimpleSigningPayload::parse(dup.as_bytes()).unwrap_err();
        assert!(err.contains("duplicate"), "{err}");

        // Go matches keys case-insensitively; we match exactly, so a key
        // spelled differently is simply missing.
        let cased = r#"{"critical":{"identity":{"docker-reference":"r/x"},"image":{"Docker-manifest-digest":"sha256:d34db33fd34db33fd34db33fd34db33fd34db33fd34db33fd34db33fd34db33f"},"type":"cosign container image signature"}}"#;
        assert!(SimpleSigningPayload::parse(cased.as_bytes()).is_err());

        assert!(SimpleSigningPayload::parse(b"").is_err());
        assert!(SimpleSigningPayload::parse(b"\xff\xfe").is_err());
        assert!(SimpleSigningPayload::parse(&vec![b' '; MAX_PAYLOAD_LEN + 1]).is_err());
    }

    #[test]
    fn signature_tag_is_cosigns() {
        assert_eq!(
            signature_tag(&digest()),
            "sha256-d34db33fd34db33fd34db33fd34db33fd34db33fd34db33fd34db33fd34db33f.sig"
        );
    }

    #[test]
    fn reference_matching_ignores_tag_and_digest() {
        let repo = "127.0.0.1:5000/team/module";
        assert!(reference_names_repository(
            "127.0.0.1:5000/team/module",
            repo
        ));
        assert!(reference_names_repository(
            "127.0.0.1:5000/team/module:v1",
            repo
        ));
        assert!(reference_names_repository(
            &format!("127.0.0.1:5000/team/module@{D}"),
            repo
        ));
        assert!(reference_names_repository(
            &format!("127.0.0.1:5000/team/module:v1@{D}"),
            repo
        ));
        assert!(reference_names_repository(
            "LOCALHOST:5000/a",
            "localhost:5000/a"
        ));
        assert!(!reference_names_repository(
            "127.0.0.1:5000/team/other",
            repo
        ));
        assert!(!reference_names_repository(
            "127.0.0.1:5001/team/module",
            repo
        ));
        assert!(!reference_names_repository(
            "127.0.0.1:5000/team/module/sub",
            repo
        ));
        assert!(!reference_names_repository(
            "127.0.0.1:5000/Team/module",
            repo
        ));
        assert!(!reference_names_repository("", repo));
        assert!(!reference_names_repository("module", repo));
    }
}
