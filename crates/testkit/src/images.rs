//! Pushing Wasm images to a test [`Registry`] in every layout the OCI fetcher accepts.
//!
//! Each `push_*` function uploads the blobs and the manifest with oci-client (the
//! registry verifies every digest on upload) and returns a [`Pushed`] naming the
//! manifest digest and the `oci://` URLs to pull it by. The raw helpers
//! ([`push_blob`], [`push_manifest_json`]) push arbitrary bytes and JSON, for
//! invalid layouts; [`Registry::corrupt_blob`] then makes a stored blob lie.
//!
//! Layouts (see REFERENCE.md §4):
//! - [`push_docker_image`]: Docker v2 manifest, last layer
//!   `application/vnd.docker.image.rootfs.diff.tar.gzip` holding `plugin.wasm`;
//! - [`push_oci_image`]: OCI manifest, last layer `application/vnd.oci.image.layer.v1.tar+gzip`;
//! - [`push_solo_artifact`]: two layers, one `application/vnd.module.wasm.content.layer.v1+wasm`
//!   with the raw module;
//! - [`push_cncf_artifact`]: config `application/vnd.wasm.config.v0+json`, one
//!   `application/wasm` layer;
//! - [`push_index`]: an OCI image index with entries for given platforms.
//!
//! ```no_run
//! # async fn demo() {
//! use wasm_cache_testkit::{images, modules, registry::{Registry, RegistryKind}};
//!
//! let registry = Registry::start(RegistryKind::Plain);
//! let module = modules::sample_module(4096, 1);
//! let pushed = images::push_oci_image(&registry, "org/filter", "v1", &module).await;
//! assert!(pushed.manifest_digest.starts_with("sha256:"));
//! # }
//! ```

use oci_client::Reference;
use serde_json::{Value, json};

use crate::modules::{plugin_tar_gz, sha256_hex};
use crate::registry::Registry;

/// Docker v2 image manifest media type.
pub const DOCKER_MANIFEST: &str = "application/vnd.docker.distribution.manifest.v2+json";
/// Docker image config media type.
pub const DOCKER_CONFIG: &str = "application/vnd.docker.container.image.v1+json";
/// Docker gzip layer media type.
pub const DOCKER_LAYER_GZIP: &str = "application/vnd.docker.image.rootfs.diff.tar.gzip";
/// OCI image manifest media type.
pub const OCI_MANIFEST: &str = "application/vnd.oci.image.manifest.v1+json";
/// OCI image index media type.
pub const OCI_INDEX: &str = "application/vnd.oci.image.index.v1+json";
/// OCI image config media type.
pub const OCI_CONFIG: &str = "application/vnd.oci.image.config.v1+json";
/// OCI gzip layer media type.
pub const OCI_LAYER_GZIP: &str = "application/vnd.oci.image.layer.v1.tar+gzip";
/// Istio/Solo Wasm artifact layer media type (raw module).
pub const SOLO_WASM_LAYER: &str = "application/vnd.module.wasm.content.layer.v1+wasm";
/// Istio/Solo Wasm artifact config media type.
pub const SOLO_CONFIG: &str = "application/vnd.module.wasm.config.v1+json";
/// CNCF TAG-Runtime Wasm artifact config media type.
pub const CNCF_CONFIG: &str = "application/vnd.wasm.config.v0+json";
/// CNCF TAG-Runtime Wasm layer media type.
pub const CNCF_WASM_LAYER: &str = "application/wasm";

/// What a push produced.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Pushed {
    /// The manifest digest, `sha256:<hex>` (what the fetcher's checksum must be).
    pub manifest_digest: String,
    /// `oci://<host>/<repo>:<tag>`.
    pub url: String,
    /// `oci://<host>/<repo>@<manifest_digest>`.
    pub digest_url: String,
    /// The digest of the layer holding the module (for an index: of the first entry).
    pub layer_digest: String,
    /// The manifest bytes as pushed.
    pub manifest: Vec<u8>,
}

/// `sha256:<hex>` of `bytes`.
pub fn digest_of(bytes: &[u8]) -> String {
    format!("sha256:{}", sha256_hex(bytes))
}

fn reference(registry: &Registry, repo: &str, reference: &str) -> Reference {
    if reference.starts_with("sha256:") {
        Reference::with_digest(registry.host(), repo.to_owned(), reference.to_owned())
    } else {
        Reference::with_tag(registry.host(), repo.to_owned(), reference.to_owned())
    }
}

fn descriptor(media_type: &str, bytes: &[u8]) -> Value {
    json!({ "mediaType": media_type, "digest": digest_of(bytes), "size": bytes.len() })
}

/// Pushes `bytes` as a blob of `repo`; returns its digest.
///
/// # Panics
/// If the registry refuses it.
pub async fn push_blob(registry: &Registry, repo: &str, bytes: &[u8]) -> String {
    let digest = digest_of(bytes);
    let client = registry.client();
    let image = reference(registry, repo, "latest");
    client
        .store_auth_if_needed(&registry.host(), &registry.push_auth())
        .await;
    client
        .push_blob(&image, bytes.to_vec(), &digest)
        .await
        .unwrap_or_else(|e| panic!("pushing blob {digest} to {registry:?}: {e}"));
    digest
}

/// Pushes `manifest` (any JSON bytes) with `content_type` to `repo` under
/// `reference` (a tag, or `sha256:...`); returns the manifest digest.
///
/// # Panics
/// If the registry refuses it (it checks that referenced blobs exist).
pub async fn push_manifest_json(
    registry: &Registry,
    repo: &str,
    reference_: &str,
    content_type: &str,
    manifest: &[u8],
) -> String {
    let client = registry.client();
    let image = reference(registry, repo, reference_);
    client
        .store_auth_if_needed(&registry.host(), &registry.push_auth())
        .await;
    client
        .push_manifest_raw(
            &image,
            manifest.to_vec(),
            content_type.parse().expect("a valid content type"),
        )
        .await
        .unwrap_or_else(|e| panic!("pushing manifest {repo}:{reference_} to {registry:?}: {e}"));
    digest_of(manifest)
}

async fn finish(
    registry: &Registry,
    repo: &str,
    tag: &str,
    media_type: &str,
    manifest: &Value,
    layer_digest: String,
) -> Pushed {
    let bytes = serde_json::to_vec_pretty(manifest).expect("a JSON value serializes");
    let digest = push_manifest_json(registry, repo, tag, media_type, &bytes).await;
    Pushed {
        url: registry.url(&format!("{repo}:{tag}")),
        digest_url: registry.url(&format!("{repo}@{digest}")),
        manifest_digest: digest,
        layer_digest,
        manifest: bytes,
    }
}

/// A Docker image: Docker v2 manifest, a Docker config, and one gzip layer
/// holding a tar with `plugin.wasm`.
pub async fn push_docker_image(
    registry: &Registry,
    repo: &str,
    tag: &str,
    module: &[u8],
) -> Pushed {
    let layer = plugin_tar_gz(module);
    let config =
        br#"{"architecture":"amd64","os":"linux","rootfs":{"type":"layers","diff_ids":[]}}"#;
    push_blob(registry, repo, config).await;
    let layer_digest = push_blob(registry, repo, &layer).await;
    let manifest = json!({
        "schemaVersion": 2,
        "mediaType": DOCKER_MANIFEST,
        "config": descriptor(DOCKER_CONFIG, config),
        "layers": [descriptor(DOCKER_LAYER_GZIP, &layer)],
    });
    finish(
        registry,
        repo,
        tag,
        DOCKER_MANIFEST,
        &manifest,
        layer_digest,
    )
    .await
}

/// An OCI image: OCI manifest, OCI config, and one gzip layer holding a tar
/// with `plugin.wasm`.
pub async fn push_oci_image(registry: &Registry, repo: &str, tag: &str, module: &[u8]) -> Pushed {
    push_oci_image_with_layer(registry, repo, tag, &plugin_tar_gz(module)).await
}

/// An OCI image whose last (only) layer is `layer`, declared as
/// `application/vnd.oci.image.layer.v1.tar+gzip` whatever it holds.
pub async fn push_oci_image_with_layer(
    registry: &Registry,
    repo: &str,
    tag: &str,
    layer: &[u8],
) -> Pushed {
    let config =
        br#"{"architecture":"amd64","os":"linux","rootfs":{"type":"layers","diff_ids":[]}}"#;
    push_blob(registry, repo, config).await;
    let layer_digest = push_blob(registry, repo, layer).await;
    let manifest = json!({
        "schemaVersion": 2,
        "mediaType": OCI_MANIFEST,
        "config": descriptor(OCI_CONFIG, config),
        "layers": [descriptor(OCI_LAYER_GZIP, layer)],
    });
    finish(registry, repo, tag, OCI_MANIFEST, &manifest, layer_digest).await
}

/// An Istio/Solo Wasm artifact: two layers, a small JSON layer and the raw
/// module as `application/vnd.module.wasm.content.layer.v1+wasm`.
pub async fn push_solo_artifact(
    registry: &Registry,
    repo: &str,
    tag: &str,
    module: &[u8],
) -> Pushed {
    let config = br#"{}"#;
    let meta =
        br#"{"type":"envoy_proxy","abiVersions":["v0-097b7f2e4cc1fb490cc1943d0d633655ac3c522f"]}"#;
    push_blob(registry, repo, config).await;
    push_blob(registry, repo, meta).await;
    let layer_digest = push_blob(registry, repo, module).await;
    let manifest = json!({
        "schemaVersion": 2,
        "mediaType": OCI_MANIFEST,
        "config": descriptor(SOLO_CONFIG, config),
        "layers": [
            descriptor("application/vnd.module.wasm.config.v1+json", meta),
            descriptor(SOLO_WASM_LAYER, module),
        ],
    });
    finish(registry, repo, tag, OCI_MANIFEST, &manifest, layer_digest).await
}

/// A CNCF TAG-Runtime Wasm artifact: config `application/vnd.wasm.config.v0+json`
/// and one `application/wasm` layer with the raw module.
pub async fn push_cncf_artifact(
    registry: &Registry,
    repo: &str,
    tag: &str,
    module: &[u8],
) -> Pushed {
    let config = br#"{"architecture":"wasm","os":"wasip1","layerDigests":[]}"#;
    push_blob(registry, repo, config).await;
    let layer_digest = push_blob(registry, repo, module).await;
    let manifest = json!({
        "schemaVersion": 2,
        "mediaType": OCI_MANIFEST,
        "artifactType": CNCF_CONFIG,
        "config": descriptor(CNCF_CONFIG, config),
        "layers": [descriptor(CNCF_WASM_LAYER, module)],
    });
    finish(registry, repo, tag, OCI_MANIFEST, &manifest, layer_digest).await
}

/// A platform of an index entry.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Platform {
    /// `os`, e.g. `wasip1` or `linux`.
    pub os: &'static str,
    /// `architecture`, e.g. `wasm` or `amd64`.
    pub architecture: &'static str,
}

impl Platform {
    /// `wasip1/wasm`.
    pub const WASIP1: Platform = Platform {
        os: "wasip1",
        architecture: "wasm",
    };
    /// `linux/amd64`.
    pub const LINUX_AMD64: Platform = Platform {
        os: "linux",
        architecture: "amd64",
    };
    /// `linux/arm64`.
    pub const LINUX_ARM64: Platform = Platform {
        os: "linux",
        architecture: "arm64",
    };
}

/// An OCI image index under `repo:tag` with one entry per `(platform, module)`:
/// each module is pushed as an OCI image (untagged, by digest). The result's
/// `layer_digest` is the first entry's layer.
pub async fn push_index(
    registry: &Registry,
    repo: &str,
    tag: &str,
    entries: &[(Platform, &[u8])],
) -> Pushed {
    let mut descriptors = Vec::new();
    let mut first_layer = None;
    for (i, (platform, module)) in entries.iter().enumerate() {
        // Push each child under a scratch tag, then refer to it by digest.
        let child = push_oci_image(registry, repo, &format!("{tag}-entry{i}"), module).await;
        first_layer.get_or_insert(child.layer_digest.clone());
        descriptors.push(json!({
            "mediaType": OCI_MANIFEST,
            "digest": child.manifest_digest,
            "size": child.manifest.len(),
            "platform": { "os": platform.os, "architecture": platform.architecture },
        }));
    }
    let index = json!({
        "schemaVersion": 2,
        "mediaType": OCI_INDEX,
        "manifests": descriptors,
    });
    finish(
        registry,
        repo,
        tag,
        OCI_INDEX,
        &index,
        first_layer.unwrap_or_default(),
    )
    .await
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::modules::sample_module;
    use crate::registry::RegistryKind;
    use oci_client::secrets::RegistryAuth;

    #[tokio::test]
    async fn pushed_manifests_are_served_by_digest() {
        let registry = Registry::start(RegistryKind::BasicAuth);
        let module = sample_module(3000, 9);
        let pushed = push_cncf_artifact(&registry, "t/cncf", "v1", &module).await;
        let client = registry.client();
        let (body, digest) = client
            .pull_manifest_raw(
                &reference(&registry, "t/cncf", &pushed.manifest_digest),
                &RegistryAuth::Basic(
                    crate::registry::TEST_USER.into(),
                    crate::registry::TEST_PASSWORD.into(),
                ),
                &[OCI_MANIFEST],
            )
            .await
            .unwrap();
        assert_eq!(digest, pushed.manifest_digest);
        assert_eq!(body.as_ref(), pushed.manifest.as_slice());
        assert_eq!(pushed.layer_digest, digest_of(&module));
    }
}
