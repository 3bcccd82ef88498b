//! Which layer of a manifest holds the module: a pure function of the manifest bytes.
//!
//! [`parse_manifest`] takes the manifest JSON exactly as the registry served it
//! and says either "this is an image index, fetch this child" ([`Parsed::Index`])
//! or "this layer holds the module, unbox it like this" ([`Parsed::Image`]), or
//! why the manifest fits none of the accepted layouts ([`LayoutError`]). It does
//! no I/O, so it is unit-tested here and can be fuzzed.
//!
//! Accepted layouts, tried in this order (REFERENCE.md §4):
//! 1. Docker image: manifest `application/vnd.docker.distribution.manifest.v2+json`,
//!    last layer `application/vnd.docker.image.rootfs.diff.tar.gzip`, tar entry `plugin.wasm`;
//! 2. OCI image: OCI manifest (or no media type), last layer
//!    `application/vnd.oci.image.layer.v1.tar+gzip`, tar entry `plugin.wasm`;
//! 3. Istio/Solo artifact: exactly two layers, one `application/vnd.module.wasm.content.layer.v1+wasm`
//!    holding the raw module;
//! 4. CNCF TAG-Runtime artifact: config `application/vnd.wasm.config.v0+json`,
//!    exactly one layer `application/wasm`.
//!
//! Manifests and indexes are read into oci-client's data model
//! (`OciImageManifest`, `OciImageIndex`, `Versioned`) and its media-type
//! constants; no manifest struct is written here.
//!
//! Every digest taken from a manifest must be `sha256:<64 lowercase hex>`: it
//! becomes part of a request path, so nothing else is let through.

use oci_client::manifest::{
    IMAGE_DOCKER_LAYER_GZIP_MEDIA_TYPE, IMAGE_LAYER_GZIP_MEDIA_TYPE,
    IMAGE_MANIFEST_LIST_MEDIA_TYPE, IMAGE_MANIFEST_MEDIA_TYPE, ImageIndexEntry,
    OCI_IMAGE_INDEX_MEDIA_TYPE, OCI_IMAGE_MEDIA_TYPE, OciDescriptor, OciImageIndex,
    OciImageManifest, Versioned,
};
use wasm_cache_core::Sha256Digest;
use wasm_cache_unbox::TarEntryRule;

/// Docker v2 image manifest (oci-client's `IMAGE_MANIFEST_MEDIA_TYPE`).
pub const DOCKER_MANIFEST: &str = IMAGE_MANIFEST_MEDIA_TYPE;
/// Docker manifest list, an index (oci-client's `IMAGE_MANIFEST_LIST_MEDIA_TYPE`).
pub const DOCKER_MANIFEST_LIST: &str = IMAGE_MANIFEST_LIST_MEDIA_TYPE;
/// OCI image manifest (oci-client's `OCI_IMAGE_MEDIA_TYPE`).
pub const OCI_MANIFEST: &str = OCI_IMAGE_MEDIA_TYPE;
/// OCI image index (oci-client's `OCI_IMAGE_INDEX_MEDIA_TYPE`).
pub const OCI_INDEX: &str = OCI_IMAGE_INDEX_MEDIA_TYPE;
/// The Docker image layer that holds `plugin.wasm`
/// (oci-client's `IMAGE_DOCKER_LAYER_GZIP_MEDIA_TYPE`).
pub const DOCKER_LAYER_GZIP: &str = IMAGE_DOCKER_LAYER_GZIP_MEDIA_TYPE;
/// The OCI image layer that holds `plugin.wasm` (oci-client's `IMAGE_LAYER_GZIP_MEDIA_TYPE`).
pub const OCI_LAYER_GZIP: &str = IMAGE_LAYER_GZIP_MEDIA_TYPE;
/// The Istio/Solo artifact layer holding the raw module (not in oci-client).
pub const SOLO_WASM_LAYER: &str = "application/vnd.module.wasm.content.layer.v1+wasm";
/// The CNCF artifact config media type (the TAG-Runtime draft's v0; not in oci-client).
pub const CNCF_CONFIG: &str = "application/vnd.wasm.config.v0+json";
/// The CNCF artifact layer holding the raw module (not in oci-client).
pub const CNCF_WASM_LAYER: &str = "application/wasm";

/// Every manifest media type the fetcher asks for.
pub const ACCEPTED_MANIFESTS: &[&str] = &[
    OCI_INDEX,
    OCI_MANIFEST,
    DOCKER_MANIFEST,
    DOCKER_MANIFEST_LIST,
];

/// One of the accepted image layouts.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum Layout {
    /// Docker image, `plugin.wasm` in the last (tar.gz) layer.
    DockerImage,
    /// OCI image, `plugin.wasm` in the last (tar+gzip) layer.
    OciImage,
    /// Istio/Solo artifact: two layers, one raw Wasm layer.
    SoloArtifact,
    /// CNCF TAG-Runtime artifact: one `application/wasm` layer.
    CncfArtifact,
}

impl Layout {
    /// All layouts, in the order they are tried.
    pub const ALL: [Layout; 4] = [
        Layout::DockerImage,
        Layout::OciImage,
        Layout::SoloArtifact,
        Layout::CncfArtifact,
    ];

    /// A short name used in error reasons.
    pub fn name(self) -> &'static str {
        match self {
            Layout::DockerImage => "docker image",
            Layout::OciImage => "oci image",
            Layout::SoloArtifact => "wasm artifact (istio/solo)",
            Layout::CncfArtifact => "wasm artifact (cncf)",
        }
    }

    /// Whether the layer holds the raw module (not a tar.gz).
    pub fn is_raw(self) -> bool {
        matches!(self, Layout::SoloArtifact | Layout::CncfArtifact)
    }
}

/// The layer that holds the module, and how to unbox it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LayerChoice {
    /// The layout the manifest fits.
    pub layout: Layout,
    /// The layer's media type.
    pub media_type: String,
    /// The layer's digest.
    pub digest: Sha256Digest,
    /// The layer's size in bytes, as the descriptor declares it.
    pub size: u64,
    /// Which tar entry holds the module, for tar layers.
    pub rule: TarEntryRule,
}

/// The index entry chosen for this platform.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct IndexChoice {
    /// The child manifest's digest.
    pub digest: Sha256Digest,
    /// The child manifest's media type, if given.
    pub media_type: Option<String>,
    /// `os/architecture` of the entry.
    pub platform: String,
}

/// What a manifest turned out to be.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum Parsed {
    /// An image index: fetch this child manifest and parse it.
    Index(IndexChoice),
    /// An image manifest: this layer holds the module.
    Image(LayerChoice),
}

/// Why a manifest cannot be used.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum LayoutError {
    /// Not a JSON object, or no `schemaVersion: 2`.
    Malformed(String),
    /// An index without an entry for a Wasm platform or linux/amd64.
    NoPlatform(String),
    /// An image manifest that fits no accepted layout: one reason per layout.
    NoLayout(Vec<String>),
}

impl std::fmt::Display for LayoutError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            LayoutError::Malformed(r) | LayoutError::NoPlatform(r) => f.write_str(r),
            LayoutError::NoLayout(reasons) => f.write_str(&reasons.join("; ")),
        }
    }
}

/// Parses manifest bytes and picks the index entry or the module's layer.
///
/// # Errors
/// A [`LayoutError`] saying what is wrong; for image manifests that fit no
/// layout, one reason per layout in [`Layout::ALL`] order.
pub fn parse_manifest(bytes: &[u8]) -> Result<Parsed, LayoutError> {
    let versioned: Versioned = serde_json::from_slice(bytes).map_err(|e| {
        use serde_json::error::Category;
        let first = bytes.iter().find(|b| !b.is_ascii_whitespace());
        LayoutError::Malformed(match e.classify() {
            Category::Data if first != Some(&b'{') => "manifest is not a JSON object".into(),
            Category::Data => {
                "manifest has no schemaVersion (or a mediaType that is not a string)".into()
            }
            // Position only: a serde message may quote the input.
            _ => format!(
                "manifest is not valid JSON ({:?} error at line {} column {})",
                e.classify(),
                e.line(),
                e.column()
            ),
        })
    })?;
    if versioned.schema_version != 2 {
        return Err(LayoutError::Malformed(format!(
            "unsupported manifest schemaVersion {}, expected 2",
            versioned.schema_version
        )));
    }
    let image = match versioned.media_type.as_deref() {
        Some(OCI_INDEX | DOCKER_MANIFEST_LIST) => {
            let index: OciImageIndex = serde_json::from_slice(bytes)
                .map_err(|e| LayoutError::Malformed(model_error("image index", &e)))?;
            return choose_platform(&index).map(Parsed::Index);
        }
        Some(_) => serde_json::from_slice::<OciImageManifest>(bytes),
        // No media type: an image manifest, or else an index by its shape.
        None => match serde_json::from_slice::<OciImageManifest>(bytes) {
            Ok(m) => Ok(m),
            Err(e) => match serde_json::from_slice::<OciImageIndex>(bytes) {
                Ok(index) => return choose_platform(&index).map(Parsed::Index),
                Err(_) => Err(e),
            },
        },
    };
    let manifest = image.map_err(|e| {
        let reason = model_error("not an image manifest", &e);
        LayoutError::NoLayout(
            Layout::ALL
                .iter()
                .map(|l| format!("{}: {reason}", l.name()))
                .collect(),
        )
    })?;
    let mut reasons = Vec::with_capacity(Layout::ALL.len());
    for layout in Layout::ALL {
        match try_layout(layout, &manifest) {
            Ok(choice) => return Ok(Parsed::Image(choice)),
            Err(reason) => reasons.push(format!("{}: {reason}", layout.name())),
        }
    }
    Err(LayoutError::NoLayout(reasons))
}

/// Why bytes do not deserialize into oci-client's model: a missing field by
/// name, otherwise the position only (serde's messages may quote the input).
fn model_error(what: &str, e: &serde_json::Error) -> String {
    let text = e.to_string();
    match text.strip_prefix("missing field ") {
        Some(rest) => format!(
            "{what}: missing field {}",
            rest.split(" at line").next().unwrap_or(rest)
        ),
        None => format!(
            "{what}: a field has the wrong type or value (line {} column {})",
            e.line(),
            e.column()
        ),
    }
}

fn is_wasm_platform(os: &str, arch: &str) -> bool {
    matches!(os, "wasip1" | "wasip2" | "wasm" | "wasi") || arch == "wasm"
}

/// `(os, architecture)` of an index entry, empty when it names no platform.
fn platform_of(e: &ImageIndexEntry) -> (String, String) {
    e.platform.as_ref().map_or_else(Default::default, |p| {
        (p.os.to_string(), p.architecture.to_string())
    })
}

/// Picks an index entry: the first Wasm platform (`os` wasip1/wasip2/wasm/wasi
/// or `architecture` wasm), else the first linux/amd64.
fn choose_platform(index: &OciImageIndex) -> Result<IndexChoice, LayoutError> {
    let entries = &index.manifests;
    let pick = entries
        .iter()
        .find(|e| {
            let (os, arch) = platform_of(e);
            is_wasm_platform(&os, &arch)
        })
        .or_else(|| {
            entries.iter().find(|e| {
                let (os, arch) = platform_of(e);
                os == "linux" && arch == "amd64"
            })
        });
    let Some(entry) = pick else {
        let seen: Vec<String> = entries
            .iter()
            .map(|e| {
                let (os, arch) = platform_of(e);
                format!("{os}/{arch}")
            })
            .collect();
        return Err(LayoutError::NoPlatform(format!(
            "image index has no entry for a wasm platform or linux/amd64 (platforms: [{}])",
            seen.join(", ")
        )));
    };
    let (os, arch) = platform_of(entry);
    let digest = digest_of(&entry.digest)
        .map_err(|r| LayoutError::Malformed(format!("image index entry {os}/{arch}: {r}")))?;
    Ok(IndexChoice {
        digest,
        media_type: Some(entry.media_type.clone()).filter(|t| !t.is_empty()),
        platform: format!("{os}/{arch}"),
    })
}

/// A descriptor's digest, if it is `sha256:<64 lowercase hex>` (it becomes
/// part of a request path).
fn digest_of(digest: &str) -> Result<Sha256Digest, String> {
    if digest.is_empty() {
        return Err("descriptor has no digest".into());
    }
    if !digest.starts_with(wasm_cache_core::digest::SHA256_PREFIX) {
        return Err("descriptor digest is not sha256:<hex>".into());
    }
    Sha256Digest::parse(digest)
        .map_err(|_| "descriptor digest is not sha256:<64 lowercase hex>".into())
}

fn layer_choice(
    layout: Layout,
    layer: &OciDescriptor,
    rule: TarEntryRule,
) -> Result<LayerChoice, String> {
    let media_type = layer.media_type.clone();
    let digest = digest_of(&layer.digest).map_err(|r| format!("layer {media_type}: {r}"))?;
    let size = u64::try_from(layer.size)
        .map_err(|_| format!("layer {media_type}: size is missing or negative"))?;
    Ok(LayerChoice {
        layout,
        media_type,
        digest,
        size,
        rule,
    })
}

fn try_layout(layout: Layout, m: &OciImageManifest) -> Result<LayerChoice, String> {
    let media_type = m.media_type.as_deref();
    let layers = &m.layers;
    let layer_type = |l: &OciDescriptor| {
        if l.media_type.is_empty() {
            "<none>".to_owned()
        } else {
            l.media_type.clone()
        }
    };
    match layout {
        Layout::DockerImage | Layout::OciImage => {
            let (want_manifest, want_layer) = if layout == Layout::DockerImage {
                (DOCKER_MANIFEST, DOCKER_LAYER_GZIP)
            } else {
                (OCI_MANIFEST, OCI_LAYER_GZIP)
            };
            let manifest_ok = match media_type {
                Some(t) => t == want_manifest,
                None => layout == Layout::OciImage,
            };
            if !manifest_ok {
                return Err(format!(
                    "manifest media type is {}, expected {want_manifest}",
                    media_type.unwrap_or("<none>")
                ));
            }
            let last = layers.last().ok_or("the manifest has no layers")?;
            let t = layer_type(last);
            if t != want_layer {
                return Err(format!(
                    "last layer media type is {t}, expected {want_layer}"
                ));
            }
            layer_choice(layout, last, TarEntryRule::PluginWasm)
        }
        Layout::SoloArtifact => {
            if layers.len() != 2 {
                return Err(format!("{} layers, expected exactly 2", layers.len()));
            }
            let layer = layers
                .iter()
                .find(|l| layer_type(l) == SOLO_WASM_LAYER)
                .ok_or_else(|| format!("no layer of media type {SOLO_WASM_LAYER}"))?;
            layer_choice(layout, layer, TarEntryRule::PluginWasmOrFirstWasm)
        }
        Layout::CncfArtifact => {
            let config_type = if m.config.media_type.is_empty() {
                "<none>"
            } else {
                m.config.media_type.as_str()
            };
            if config_type != CNCF_CONFIG {
                return Err(format!(
                    "config media type is {config_type}, expected {CNCF_CONFIG}"
                ));
            }
            let [layer] = layers.as_slice() else {
                return Err(format!("{} layers, expected exactly 1", layers.len()));
            };
            let t = layer_type(layer);
            if t != CNCF_WASM_LAYER {
                return Err(format!(
                    "layer media type is {t}, expected {CNCF_WASM_LAYER}"
                ));
            }
            layer_choice(layout, layer, TarEntryRule::PluginWasmOrFirstWasm)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::{Value, json};

    const D1: &str = "sha256:1111111111111111111111111111111111111111111111111111111111111111";
    const D2: &str = "sha256:2222222222222222222222222222222222222222222222222222222222222222";

    fn desc(mt: &str, d: &str, size: u64) -> Value {
        json!({"mediaType": mt, "digest": d, "size": size})
    }

    fn parse(v: &Value) -> Result<Parsed, LayoutError> {
        parse_manifest(&serde_json::to_vec(v).unwrap())
    }

    fn image(v: &Value) -> LayerChoice {
        match parse(v).unwrap() {
            Parsed::Image(c) => c,
            other => panic!("not an image: {other:?}"),
        }
    }

    #[test]
    fn each_layout_is_recognised() {
        let docker = json!({"schemaVersion": 2, "mediaType": DOCKER_MANIFEST,
            "config": desc("application/vnd.docker.container.image.v1+json", D1, 1),
            "layers": [desc(DOCKER_LAYER_GZIP, D1, 5), desc(DOCKER_LAYER_GZIP, D2, 7)]});
        let c = image(&docker);
        assert_eq!(
            (c.layout, c.digest.to_prefixed(), c.size),
            (Layout::DockerImage, D2.into(), 7)
        );
        assert_eq!(c.rule, TarEntryRule::PluginWasm);

        let oci = json!({"schemaVersion": 2,
            "config": desc("application/vnd.oci.image.config.v1+json", D1, 1),
            "layers": [desc(OCI_LAYER_GZIP, D2, 9)]});
        assert_eq!(image(&oci).layout, Layout::OciImage);

        let solo = json!({"schemaVersion": 2, "mediaType": OCI_MANIFEST,
            "config": desc("application/vnd.module.wasm.config.v1+json", D1, 1),
            "layers": [desc(SOLO_WASM_LAYER, D2, 3), desc("application/vnd.module.wasm.config.v1+json", D1, 1)]});
        let c = image(&solo);
        assert_eq!(
            (c.layout, c.digest.to_prefixed()),
            (Layout::SoloArtifact, D2.into())
        );
        assert!(c.layout.is_raw());

        let cncf = json!({"schemaVersion": 2, "mediaType": OCI_MANIFEST,
            "config": desc(CNCF_CONFIG, D1, 1), "layers": [desc(CNCF_WASM_LAYER, D2, 4)]});
        assert_eq!(image(&cncf).layout, Layout::CncfArtifact);
    }

    #[test]
    fn a_misfit_lists_one_reason_per_layout() {
        let m = json!({"schemaVersion": 2, "mediaType": OCI_MANIFEST,
            "config": desc("application/vnd.oci.image.config.v1+json", D1, 1),
            "layers": [desc("application/x-tar", D2, 3)]});
        let Err(LayoutError::NoLayout(reasons)) = parse(&m) else {
            panic!("accepted")
        };
        assert_eq!(reasons.len(), 4, "{reasons:?}");
        assert!(
            reasons[0].starts_with("docker image: manifest media type"),
            "{reasons:?}"
        );
        assert!(
            reasons[1].contains("last layer media type is application/x-tar"),
            "{reasons:?}"
        );
        assert!(
            reasons[2].contains("1 layers, expected exactly 2"),
            "{reasons:?}"
        );
        assert!(reasons[3].contains("config media type"), "{reasons:?}");
    }

    #[test]
    fn unsafe_digests_and_sizes_are_refused() {
        for bad in ["sha256:../../x", "sha512:abcd", "sha256:ABCDEF", ""] {
            let m = json!({"schemaVersion": 2, "mediaType": OCI_MANIFEST,
                "config": desc(CNCF_CONFIG, D1, 1), "layers": [desc(CNCF_WASM_LAYER, bad, 4)]});
            let Err(LayoutError::NoLayout(r)) = parse(&m) else {
                panic!("accepted {bad:?}")
            };
            assert!(r[3].contains("digest"), "{r:?}");
        }
        let m = json!({"schemaVersion": 2, "config": desc(CNCF_CONFIG, D1, 1),
            "layers": [{"mediaType": CNCF_WASM_LAYER, "digest": D2, "size": -1}]});
        assert!(
            parse(&m)
                .unwrap_err()
                .to_string()
                .contains("size is missing or negative")
        );
    }

    #[test]
    fn malformed_manifests_do_not_echo_content() {
        let e = parse_manifest(b"{\"auth\": \"hunter2\" oops")
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("not valid JSON") && !e.contains("hunter2"),
            "{e}"
        );
        assert!(
            parse(&json!([1]))
                .unwrap_err()
                .to_string()
                .contains("not a JSON object")
        );
        assert!(
            parse(&json!({"schemaVersion": 1}))
                .unwrap_err()
                .to_string()
                .contains("schemaVersion 1")
        );
    }

    #[test]
    fn index_prefers_wasm_then_linux_amd64() {
        let entry = |os: &str, arch: &str, d: &str| json!({"mediaType": OCI_MANIFEST, "digest": d, "size": 10, "platform": {"os": os, "architecture": arch}});
        let idx = |entries: Vec<Value>| json!({"schemaVersion": 2, "mediaType": OCI_INDEX, "manifests": entries});
        let Parsed::Index(c) = parse(&idx(vec![
            entry("linux", "amd64", D1),
            entry("wasip1", "wasm", D2),
        ]))
        .unwrap() else {
            panic!()
        };
        assert_eq!(
            (c.digest.to_prefixed(), c.platform.as_str()),
            (D2.to_owned(), "wasip1/wasm")
        );
        let Parsed::Index(c) = parse(&idx(vec![
            entry("linux", "arm64", D2),
            entry("linux", "amd64", D1),
        ]))
        .unwrap() else {
            panic!()
        };
        assert_eq!(c.digest.to_prefixed(), D1);
        let e = parse(&idx(vec![entry("linux", "arm64", D2)]))
            .unwrap_err()
            .to_string();
        assert!(e.contains("linux/arm64") && e.contains("no entry"), "{e}");
        // An index without a media type is recognised by its shape.
        let bare = json!({"schemaVersion": 2, "manifests": [entry("wasm", "wasm", D1)]});
        assert!(matches!(parse(&bare).unwrap(), Parsed::Index(_)));
    }
}
