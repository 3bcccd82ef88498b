//! cosign's signature manifest (the image manifest at `sha256-<hex>.sig`),
//! read from bytes a fetcher downloaded under [`MAX_SIGNATURE_MANIFEST_LEN`].

use serde::Deserialize;
use wasm_cache_core::{Sha256Digest, shorten};

use crate::payload::{MAX_PAYLOAD_LEN, SIGNATURE_ANNOTATION, SIMPLE_SIGNING_MEDIA_TYPE};
use crate::policy::MAX_CANDIDATES;

/// Largest signature manifest read (one signature with a certificate chain
/// and a Rekor bundle in its annotations is a few KiB); fetchers stop reading
/// past it.
pub const MAX_SIGNATURE_MANIFEST_LEN: u64 = 256 * 1024;

/// A simple-signing layer of a signature manifest: where its payload is and
/// its signature annotation.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PayloadRef {
    /// The payload blob's digest (the fetcher checks the bytes against it).
    pub digest: Sha256Digest,
    /// The payload's declared size, at most [`MAX_PAYLOAD_LEN`].
    pub size: u64,
    /// The `dev.cosignproject.cosign/signature` annotation, if present.
    pub signature: Option<String>,
}

#[derive(Deserialize)]
struct Manifest {
    #[serde(rename = "schemaVersion")]
    schema_version: u32,
    #[serde(default)]
    layers: Vec<Layer>,
}

#[derive(Deserialize)]
struct Layer {
    #[serde(rename = "mediaType")]
    media_type: String,
    digest: String,
    size: u64,
    #[serde(default)]
    annotations: std::collections::BTreeMap<String, String>,
}

/// The simple-signing layers of a cosign signature manifest, in order (at
/// most [`MAX_CANDIDATES`]); layers of other media types are skipped.
///
/// # Errors
/// A short reason when the manifest is too large, not an image manifest, or
/// names a payload by anything but a `sha256:` digest or larger than
/// [`MAX_PAYLOAD_LEN`].
pub fn parse_signature_manifest(bytes: &[u8]) -> Result<Vec<PayloadRef>, String> {
    if bytes.len() as u64 > MAX_SIGNATURE_MANIFEST_LEN {
        return Err(format!(
            "signature manifest is {} bytes, more than the {MAX_SIGNATURE_MANIFEST_LEN} allowed",
            bytes.len()
        ));
    }
    let manifest: Manifest = serde_json::from_slice(bytes)
        .map_err(|e| format!("signature manifest is not an image manifest: {e}"))?;
    if manifest.schema_version != 2 {
        return Err(format!(
            "signature manifest has schemaVersion {}, expected 2",
            manifest.schema_version
        ));
    }
    let mut refs = Vec::new();
    for (i, layer) in manifest
        .layers
        .into_iter()
        .filter(|l| l.media_type == SIMPLE_SIGNING_MEDIA_TYPE)
        .take(MAX_CANDIDATES)
        .enumerate()
    {
        if !layer
            .digest
            .starts_with(wasm_cache_core::digest::SHA256_PREFIX)
        {
            return Err(format!(
                "signature layer {i} digest {:?} is not a sha256: digest",
                shorten(&layer.digest, 80)
            ));
        }
        let digest = Sha256Digest::parse(&layer.digest).map_err(|e| {
            format!(
                "signature layer {i} digest {:?}: {e}",
                shorten(&layer.digest, 80)
            )
        })?;
        if layer.size > MAX_PAYLOAD_LEN as u64 {
            return Err(format!(
                "signature layer {i} payload is {} bytes, more than the {MAX_PAYLOAD_LEN} allowed",
                layer.size
            ));
        }
        let mut annotations = layer.annotations;
        refs.push(PayloadRef {
            digest,
            size: layer.size,
            signature: annotations.remove(SIGNATURE_ANNOTATION),
        });
    }
    Ok(refs)
}

#[cfg(test)]
mod tests {
    use super::*;

    const D: &str = "sha256:1119abab63e605dcc281019bad0424744178b6f61ba57378701fe7391994c999";

    fn manifest(layers: &str) -> String {
        format!(
            r#"{{"schemaVersion":2,"mediaType":"application/vnd.oci.image.manifest.v1+json","config":{{"mediaType":"application/vnd.oci.image.config.v1+json","size":233,"digest":"{D}"}},"layers":[{layers}]}}"#
        )
    }

    #[test]
    fn reads_cosign_layers_and_skips_others() {
        let m = manifest(&format!(
            r#"{{"mediaType":"application/octet-stream","size":3,"digest":"{D}"}},{{"mediaType":"{SIMPLE_SIGNING_MEDIA_TYPE}","size":210,"digest":"{D}","annotations":{{"{SIGNATURE_ANNOTATION}":"MEUCIQ==","dev.sigstore.cosign/bundle":"{{}}"}}}},{{"mediaType":"{SIMPLE_SIGNING_MEDIA_TYPE}","size":210,"digest":"{D}"}}"#
        ));
        let refs = parse_signature_manifest(m.as_bytes()).unwrap();
        assert_eq!(refs.len(), 2);
        assert_eq!(refs[0].signature.as_deref(), Some("MEUCIQ=="));
        assert_eq!(refs[0].size, 210);
        assert_eq!(refs[0].digest.to_prefixed(), D);
        assert_eq!(refs[1].signature, None);
    }

    #[test]
    fn refuses_oversized_odd_and_malformed_manifests() {
        let big = vec![b' '; MAX_SIGNATURE_MANIFEST_LEN as usize + 1];
        assert!(
            parse_signature_manifest(&big)
                .unwrap_err()
                .contains("more than")
        );
        assert!(
            parse_signature_manifest(b"[]")
                .unwrap_err()
                .contains("not an image manifest")
        );
        assert!(
            parse_signature_manifest(br#"{"schemaVersion":1,"layers":[]}"#)
                .unwrap_err()
                .contains("schemaVersion 1")
        );
        let sha512 = manifest(&format!(
            r#"{{"mediaType":"{SIMPLE_SIGNING_MEDIA_TYPE}","size":1,"digest":"sha512:{}"}}"#,
            "ab".repeat(64)
        ));
        assert!(
            parse_signature_manifest(sha512.as_bytes())
                .unwrap_err()
                .contains("not a sha256")
        );
        let path = manifest(&format!(
            r#"{{"mediaType":"{SIMPLE_SIGNING_MEDIA_TYPE}","size":1,"digest":"sha256:../../etc/passwd"}}"#
        ));
        assert!(parse_signature_manifest(path.as_bytes()).is_err());
        let huge = manifest(&format!(
            r#"{{"mediaType":"{SIMPLE_SIGNING_MEDIA_TYPE}","size":{},"digest":"{D}"}}"#,
            MAX_PAYLOAD_LEN + 1
        ));
        assert!(
            parse_signature_manifest(huge.as_bytes())
                .unwrap_err()
                .contains("more than")
        );
        let layers =
            vec![
                format!(r#"{{"mediaType":"{SIMPLE_SIGNING_MEDIA_TYPE}","size":1,"digest":"{D}"}}"#);
                MAX_CANDIDATES + 10
            ]
            .join(",");
        assert_eq!(
            parse_signature_manifest(manifest(&layers).as_bytes())
                .unwrap()
                .len(),
            MAX_CANDIDATES
        );
        assert!(
            parse_signature_manifest(br#"{"schemaVersion":2}"#)
                .unwrap()
                .is_empty()
        );
    }
}
