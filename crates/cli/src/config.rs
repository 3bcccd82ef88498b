//! The config file (`--config FILE` or `WASM_CACHE_CONFIG`): TOML with the
//! network settings of `fetch` and `resolve`, registry mirrors above all.
//! docs/CLI.md ("Config file") is the format's manual.
//!
//! ```toml
//! insecure_registries = ["registry.internal:5000"]
//! ca_file = "/etc/ssl/corp-ca.pem"
//!
//! [[registry."ghcr.io".mirrors]]
//! url = "https://mirror.local:5000"
//! ca_file = "mirror-ca.pem"          # relative to this file's directory
//!
//! [[registry."ghcr.io".mirrors]]
//! url = "http://10.0.0.5:5000"
//! credentials = { username = "node", password_file = "/run/secrets/mirror" }
//! ```
//!
//! Command-line flags add to the file: `--insecure-registry` entries join
//! its list, `--registry-mirror REGISTRY=URL` mirrors come before the file's
//! for that registry (a flag naming a URL the file configures keeps the
//! file's settings for it), and `--ca-file` replaces its `ca_file`.

use std::collections::BTreeMap;
use std::fmt;
use std::path::{Path, PathBuf};

use serde::Deserialize;
use wasm_cache::Mirror;

/// The parsed file, paths made absolute against its directory.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct Config {
    /// Registries and hosts reached without TLS verification.
    #[serde(default)]
    pub(crate) insecure_registries: Vec<String>,
    /// Extra PEM bundle of trusted CAs.
    #[serde(default)]
    pub(crate) ca_file: Option<PathBuf>,
    /// Per registry (as references write it): its settings.
    #[serde(default)]
    pub(crate) registry: BTreeMap<String, RegistryConfig>,
}

/// One registry's settings.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RegistryConfig {
    /// Its mirrors, in the order they are asked.
    #[serde(default)]
    pub(crate) mirrors: Vec<MirrorConfig>,
}

/// One mirror.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct MirrorConfig {
    /// `https://host[:port][/prefix]`, or `http://` for plain HTTP.
    pub(crate) url: String,
    /// Skip TLS certificate verification for this mirror.
    #[serde(default)]
    pub(crate) insecure: bool,
    /// Extra CA bundle trusted for this mirror only.
    #[serde(default)]
    pub(crate) ca_file: Option<PathBuf>,
    /// Credentials for this mirror.
    #[serde(default)]
    pub(crate) credentials: Option<CredentialsConfig>,
}

/// A mirror's user and password (inline, or read from `password_file`).
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct CredentialsConfig {
    pub(crate) username: String,
    #[serde(default)]
    pub(crate) password: Option<String>,
    #[serde(default)]
    pub(crate) password_file: Option<PathBuf>,
}

impl fmt::Debug for CredentialsConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Credentials")
            .field("username", &self.username)
            .field("password", &self.password.as_ref().map(|_| "<redacted>"))
            .field("password_file", &self.password_file)
            .finish()
    }
}

/// Reads and checks the config file; the error names the file and what is wrong.
pub(crate) fn load(path: &Path) -> Result<Config, String> {
    let text = std::fs::read_to_string(path)
        .map_err(|e| format!("reading config file {}: {e}", path.display()))?;
    let mut config: Config =
        toml::from_str(&text).map_err(|e| format!("config file {}: {e}", path.display()))?;
    let base = path.parent().unwrap_or_else(|| Path::new("."));
    let absolute = |p: &mut PathBuf| {
        if p.is_relative() {
            *p = base.join(&*p);
        }
    };
    if let Some(ca) = &mut config.ca_file {
        absolute(ca);
    }
    for (registry, r) in &mut config.registry {
        for (i, m) in r.mirrors.iter_mut().enumerate() {
            let field = format!("registry.\"{registry}\".mirrors[{i}]");
            Mirror::new(m.url.clone())
                .check(registry)
                .map_err(|e| format!("config file {}: {field}.url: {e}", path.display()))?;
            if let Some(ca) = &mut m.ca_file {
                absolute(ca);
            }
            if let Some(c) = &mut m.credentials {
                match (&c.password, &mut c.password_file) {
                    (Some(_), None) => {}
                    (None, Some(file)) => absolute(file),
                    _ => {
                        return Err(format!(
                            "config file {}: {field}.credentials: give exactly one of `password` and `password_file`",
                            path.display()
                        ));
                    }
                }
            }
        }
    }
    Ok(config)
}

/// `REGISTRY=URL` of `--registry-mirror`.
pub(crate) fn parse_mirror_flag(s: &str) -> Result<(String, String), String> {
    match s.split_once('=') {
        Some((r, u)) if !r.trim().is_empty() && !u.trim().is_empty() => {
            Ok((r.trim().to_owned(), u.trim().to_owned()))
        }
        _ => Err(format!(
            "{:?} is not REGISTRY=URL (e.g. ghcr.io=https://mirror.local:5000)",
            wasm_cache_core::redact_url(s)
        )),
    }
}

impl MirrorConfig {
    /// The library's mirror, reading a password file.
    fn to_mirror(&self, file: &Path, field: &str) -> Result<Mirror, String> {
        let mut m = Mirror::new(self.url.clone()).insecure(self.insecure);
        if let Some(ca) = &self.ca_file {
            m = m.ca_file(ca);
        }
        if let Some(c) = &self.credentials {
            let password = match (&c.password, &c.password_file) {
                (Some(p), _) => p.clone(),
                (None, Some(pf)) => std::fs::read_to_string(pf)
                    .map_err(|e| {
                        format!(
                            "config file {}: {field}.credentials.password_file {}: {e}",
                            file.display(),
                            pf.display()
                        )
                    })?
                    .trim_end_matches(['\r', '\n'])
                    .to_owned(),
                (None, None) => String::new(),
            };
            m = m.credentials(c.username.clone(), password);
        }
        Ok(m)
    }
}

/// The mirrors to configure, in order per registry: the flags' first (with
/// the file's settings when the file names the same URL), then the file's.
pub(crate) fn mirrors(
    config: Option<(&Path, &Config)>,
    flags: &[(String, String)],
) -> Result<Vec<(String, Mirror)>, String> {
    let mut out: Vec<(String, Mirror)> = Vec::new();
    let from_file = |registry: &str, url: &str| -> Option<(String, &MirrorConfig, usize)> {
        let (_, c) = config?;
        let (name, r) = c
            .registry
            .iter()
            .find(|(name, _)| name.eq_ignore_ascii_case(registry))?;
        let i = r.mirrors.iter().position(|m| m.url == url)?;
        Some((name.clone(), &r.mirrors[i], i))
    };
    let mut used: Vec<(String, usize)> = Vec::new();
    for (registry, url) in flags {
        match (from_file(registry, url), config) {
            (Some((name, m, i)), Some((file, _))) => {
                let field = format!("registry.\"{name}\".mirrors[{i}]");
                out.push((registry.clone(), m.to_mirror(file, &field)?));
                used.push((name, i));
            }
            _ => out.push((registry.clone(), Mirror::new(url.clone()))),
        }
    }
    if let Some((file, c)) = config {
        for (name, r) in &c.registry {
            for (i, m) in r.mirrors.iter().enumerate() {
                if used.iter().any(|(n, j)| n == name && *j == i) {
                    continue;
                }
                let field = format!("registry.\"{name}\".mirrors[{i}]");
                out.push((name.clone(), m.to_mirror(file, &field)?));
            }
        }
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn write(text: &str) -> (tempfile::TempDir, PathBuf) {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("wasm-cache.toml");
        std::fs::write(&path, text).unwrap();
        (dir, path)
    }

    #[test]
    fn the_documented_example_parses() {
        let (dir, path) = write(
            r#"
insecure_registries = ["registry.internal:5000"]
ca_file = "/etc/ssl/corp-ca.pem"

[[registry."ghcr.io".mirrors]]
url = "https://mirror.local:5000"
ca_file = "mirror-ca.pem"

[[registry."ghcr.io".mirrors]]
url = "http://10.0.0.5:5000"
credentials = { username = "node", password_file = "pw" }
"#,
        );
        std::fs::write(dir.path().join("pw"), "s3cret\n").unwrap();
        let c = load(&path).unwrap();
        assert_eq!(c.insecure_registries, ["registry.internal:5000"]);
        let ms = &c.registry["ghcr.io"].mirrors;
        assert_eq!(
            ms[0].ca_file.as_deref(),
            Some(&*dir.path().join("mirror-ca.pem"))
        );
        assert!(!format!("{c:?}").contains("s3cret"));
        let flags = [
            ("ghcr.io".to_owned(), "https://flag.local".to_owned()),
            ("ghcr.io".to_owned(), "http://10.0.0.5:5000".to_owned()),
        ];
        let got = mirrors(Some((&path, &c)), &flags).unwrap();
        let urls: Vec<&str> = got.iter().map(|(_, m)| m.url()).collect();
        assert_eq!(
            urls,
            [
                "https://flag.local",
                "http://10.0.0.5:5000",
                "https://mirror.local:5000"
            ]
        );
        assert!(!format!("{got:?}").contains("s3cret"));
    }

    #[test]
    fn errors_name_the_file_and_the_field() {
        let (_d, path) =
            write("[[registry.\"ghcr.io\".mirrors]]\nurl = \"https://m\"\ninsecur = true\n");
        let e = load(&path).unwrap_err();
        assert!(
            e.contains(&path.display().to_string()) && e.contains("insecur"),
            "{e}"
        );
        let (_d, path) = write("[[registry.\"ghcr.io\".mirrors]]\ninsecure = true\n");
        let e = load(&path).unwrap_err();
        assert!(e.contains("url"), "{e}");
        let (_d, path) = write(
            "[[registry.\"ghcr.io\".mirrors]]\nurl = \"https://m\"\ncredentials = { username = \"u\" }\n",
        );
        let e = load(&path).unwrap_err();
        assert!(
            e.contains("registry.\"ghcr.io\".mirrors[0].credentials"),
            "{e}"
        );
        assert!(parse_mirror_flag("ghcr.io").is_err());
        assert!(parse_mirror_flag("=https://m").is_err());
        assert_eq!(
            parse_mirror_flag("ghcr.io=https://m").unwrap(),
            ("ghcr.io".to_owned(), "https://m".to_owned())
        );
    }
}
