//! Credentials from Docker config bytes: pull secrets and the operator's docker config.
//!
//! Parsed here with serde_json. A pull secret is data only: its `credsStore`
//! and `credHelpers` entries are ignored, so a pull secret can never make this
//! process run a program. Only the operator's own docker config (the file
//! under [`default_docker_config_dir`] or the builder's directory) may name
//! credential helpers; [`crate::helper`] runs them.

use std::collections::HashMap;
use std::fmt;
use std::path::{Path, PathBuf};

use base64::Engine as _;
use serde::Deserialize;
use wasm_cache_core::{DOCKER_HUB_REGISTRY, Error};

/// Credentials for one registry. `Debug` never shows secret parts.
#[derive(Clone, PartialEq, Eq, Hash)]
pub(crate) enum Credentials {
    Anonymous,
    Basic {
        user: String,
        password: String,
    },
    /// A registry token (`registrytoken`), sent as `Authorization: Bearer`.
    Bearer(String),
    /// An OAuth2 refresh token (`identitytoken`, or a helper's answer with
    /// user `<token>`), exchanged at the Bearer realm for access tokens.
    IdentityToken(String),
}

impl fmt::Debug for Credentials {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Credentials::Anonymous => f.write_str("Anonymous"),
            Credentials::Basic { .. } => f.write_str("Basic(<redacted>)"),
            Credentials::Bearer(_) => f.write_str("Bearer(<redacted>)"),
            Credentials::IdentityToken(_) => f.write_str("IdentityToken(<redacted>)"),
        }
    }
}

impl Credentials {
    /// A sha256 over the registry and credentials, to key cached clients
    /// without keeping the secret itself as a key.
    pub(crate) fn cache_key(&self, registry: &str) -> [u8; 32] {
        let mut ctx = ring::digest::Context::new(&ring::digest::SHA256);
        ctx.update(registry.as_bytes());
        ctx.update(&[0]);
        match self {
            Credentials::Anonymous => ctx.update(b"anonymous"),
            Credentials::Basic { user, password } => {
                ctx.update(b"basic\0");
                ctx.update(user.as_bytes());
                ctx.update(&[0]);
                ctx.update(password.as_bytes());
            }
            Credentials::Bearer(t) => {
                ctx.update(b"bearer\0");
                ctx.update(t.as_bytes());
            }
            Credentials::IdentityToken(t) => {
                ctx.update(b"identity\0");
                ctx.update(t.as_bytes());
            }
        }
        let mut out = [0u8; 32];
        out.copy_from_slice(ctx.finish().as_ref());
        out
    }

    /// What kind of credential this is, for logs (never its content).
    pub(crate) fn kind(&self) -> &'static str {
        match self {
            Credentials::Anonymous => "anonymous",
            Credentials::Basic { .. } => "basic",
            Credentials::Bearer(_) => "registry token",
            Credentials::IdentityToken(_) => "identity token",
        }
    }
}

/// The operator's docker config: `auths` plus the helpers it names.
#[derive(Deserialize, Default)]
struct DockerConfig {
    #[serde(default)]
    auths: HashMap<String, AuthEntry>,
    #[serde(default, rename = "credsStore")]
    creds_store: Option<String>,
    #[serde(default, rename = "credHelpers")]
    cred_helpers: HashMap<String, String>,
}

#[derive(Deserialize, Default)]
struct AuthEntry {
    #[serde(default)]
    auth: Option<String>,
    #[serde(default)]
    username: Option<String>,
    #[serde(default)]
    password: Option<String>,
    #[serde(default)]
    identitytoken: Option<String>,
    #[serde(default)]
    registrytoken: Option<String>,
}

/// Normalises a registry key the way docker does: `https://host/v1/` ->
/// `host`; Docker Hub aliases (`docker.io`, `index.docker.io`,
/// `registry-1.docker.io`) -> `index.docker.io`.
pub(crate) fn normalise_key(key: &str) -> String {
    let k = key.trim();
    let k = k
        .strip_prefix("https://")
        .or_else(|| k.strip_prefix("http://"))
        .unwrap_or(k);
    let host = k.split('/').next().unwrap_or(k).to_ascii_lowercase();
    match host.as_str() {
        "docker.io" | "registry-1.docker.io" | "index.docker.io" => DOCKER_HUB_REGISTRY.to_owned(),
        _ => host,
    }
}

/// The server address a credential helper is asked about: the registry host,
/// or docker's historical `https://index.docker.io/v1/` for Docker Hub.
pub(crate) fn helper_server(registry: &str) -> String {
    if normalise_key(registry) == DOCKER_HUB_REGISTRY {
        "https://index.docker.io/v1/".to_owned()
    } else {
        registry.to_owned()
    }
}

/// Where a config came from, for error messages (never its content).
#[derive(Debug, Clone, Copy)]
pub(crate) enum Source<'a> {
    PullSecret,
    File(&'a Path),
}

fn invalid(source: Source<'_>, reason: String) -> Error {
    match source {
        Source::PullSecret => Error::InvalidPullSecret { reason },
        Source::File(p) => Error::InvalidConfig {
            reason: format!("docker config {}: {reason}", p.display()),
        },
    }
}

/// A serde error as category and position only: its message can quote the input.
fn parse_error(source: Source<'_>, e: &serde_json::Error) -> Error {
    invalid(
        source,
        format!(
            "not a Docker config.json ({:?} error at line {} column {})",
            e.classify(),
            e.line(),
            e.column()
        ),
    )
}

/// The entry for `registry`: an exact key wins over a normalised match.
fn find<'m, T>(map: &'m HashMap<String, T>, registry: &str) -> Option<&'m T> {
    let wanted = normalise_key(registry);
    map.get(registry).or_else(|| {
        let mut keys: Vec<&String> = map.keys().filter(|k| normalise_key(k) == wanted).collect();
        // Deterministic among several aliases of one registry.
        keys.sort();
        keys.first().and_then(|k| map.get(*k))
    })
}

fn entry_credentials(
    entry: &AuthEntry,
    wanted: &str,
    source: Source<'_>,
) -> Result<Credentials, Error> {
    let non_empty = |s: &Option<String>| s.as_deref().filter(|s| !s.is_empty()).map(str::to_owned);
    if let Some(token) = non_empty(&entry.registrytoken) {
        return Ok(Credentials::Bearer(token));
    }
    // `az acr login` writes an `auth` of a placeholder user next to the
    // identity token: the token is the credential.
    if let Some(token) = non_empty(&entry.identitytoken) {
        return Ok(Credentials::IdentityToken(token));
    }
    if let Some(auth) = non_empty(&entry.auth) {
        let decoded = base64::engine::general_purpose::STANDARD
            .decode(auth.trim())
            .ok()
            .and_then(|b| String::from_utf8(b).ok())
            .ok_or_else(|| {
                invalid(
                    source,
                    format!("auths entry for {wanted}: auth is not base64 of user:password"),
                )
            })?;
        let Some((user, password)) = decoded.split_once(':') else {
            return Err(invalid(
                source,
                format!("auths entry for {wanted}: auth does not decode to user:password"),
            ));
        };
        return Ok(Credentials::Basic {
            user: user.to_owned(),
            password: password.to_owned(),
        });
    }
    if let (Some(user), Some(password)) = (non_empty(&entry.username), entry.password.clone()) {
        return Ok(Credentials::Basic { user, password });
    }
    Ok(Credentials::Anonymous)
}

/// The registry entries of a pull secret in either Kubernetes format:
/// `.dockerconfigjson` (`{"auths": {...}}`) or the legacy `.dockercfg`
/// (`{"<registry>": {"auth": ...}}`).
fn secret_entries(config: &[u8], source: Source<'_>) -> Result<HashMap<String, AuthEntry>, Error> {
    let value: serde_json::Value =
        serde_json::from_slice(config).map_err(|e| parse_error(source, &e))?;
    let serde_json::Value::Object(top) = value else {
        return Err(invalid(source, "not a JSON object".to_owned()));
    };
    let entry_error = |key: &str, e: &serde_json::Error| {
        invalid(
            source,
            format!(
                "the entry for {} is not a registry entry ({:?} error)",
                normalise_key(key),
                e.classify()
            ),
        )
    };
    if let Some(auths) = top.get("auths") {
        let serde_json::Value::Object(auths) = auths else {
            return Err(invalid(
                source,
                "auths is not a map of registry entries".to_owned(),
            ));
        };
        let mut out = HashMap::new();
        for (k, v) in auths {
            let entry = AuthEntry::deserialize(v).map_err(|e| entry_error(k, &e))?;
            out.insert(k.clone(), entry);
        }
        return Ok(out);
    }
    // Legacy `.dockercfg`: registries at the top level. Non-object values
    // (and `credsStore`/`credHelpers`) are not registry entries; skipped.
    let mut out = HashMap::new();
    for (k, v) in &top {
        if v.is_object() && k != "credHelpers" && k != "HttpHeaders" {
            let entry = AuthEntry::deserialize(v).map_err(|e| entry_error(k, &e))?;
            out.insert(k.clone(), entry);
        }
    }
    Ok(out)
}

/// The credentials a pull secret (either format) holds for `registry`
/// (`host[:port]`), or anonymous. Helpers it names are never run.
///
/// # Errors
/// [`Error::InvalidPullSecret`] (or [`Error::InvalidConfig`] for a file) when the
/// bytes are not a Docker config or the matching entry is unusable; the message
/// never contains the bytes.
pub(crate) fn credentials_for(
    config: &[u8],
    registry: &str,
    source: Source<'_>,
) -> Result<Credentials, Error> {
    let entries = secret_entries(config, source)?;
    match find(&entries, registry) {
        Some(entry) => entry_credentials(entry, &normalise_key(registry), source),
        None => Ok(Credentials::Anonymous),
    }
}

/// What the operator's docker config says about one registry.
#[derive(Debug)]
pub(crate) struct Lookup {
    /// The helper to ask first (`credHelpers[registry]`, else `credsStore`),
    /// with whether it came from `credHelpers`.
    pub(crate) helper: Option<(String, bool)>,
    /// The `auths` entry's credentials (anonymous when there is none).
    pub(crate) auths: Credentials,
}

/// Reads the operator's docker config (`config.json` bytes) for `registry`.
///
/// # Errors
/// [`Error::InvalidConfig`] for a file that is not a docker config or an
/// unusable entry (never quoting the file).
pub(crate) fn lookup(config: &[u8], registry: &str, path: &Path) -> Result<Lookup, Error> {
    let source = Source::File(path);
    let parsed: DockerConfig =
        serde_json::from_slice(config).map_err(|e| parse_error(source, &e))?;
    let helper = find(&parsed.cred_helpers, registry)
        .filter(|h| !h.is_empty())
        .map(|h| (h.clone(), true))
        .or_else(|| {
            parsed
                .creds_store
                .clone()
                .filter(|h| !h.is_empty())
                .map(|h| (h, false))
        });
    let auths = match find(&parsed.auths, registry) {
        Some(entry) => entry_credentials(entry, &normalise_key(registry), source)?,
        None => Credentials::Anonymous,
    };
    Ok(Lookup { helper, auths })
}

/// The default docker config directory: `$DOCKER_CONFIG`, else `$HOME/.docker`.
pub(crate) fn default_docker_config_dir() -> Option<PathBuf> {
    if let Some(dir) = std::env::var_os("DOCKER_CONFIG").filter(|d| !d.is_empty()) {
        return Some(PathBuf::from(dir));
    }
    std::env::var_os("HOME")
        .filter(|h| !h.is_empty())
        .map(|h| PathBuf::from(h).join(".docker"))
}

#[cfg(test)]
mod tests {
    use super::*;

    const PW: &str = "hunter2-very-secret";

    fn b64(s: &str) -> String {
        base64::engine::general_purpose::STANDARD.encode(s)
    }

    fn creds(json: &str, registry: &str) -> Result<Credentials, Error> {
        credentials_for(json.as_bytes(), registry, Source::PullSecret)
    }

    #[test]
    fn auth_forms() {
        let basic = Credentials::Basic {
            user: "u".into(),
            password: PW.into(),
        };
        let j = format!(
            r#"{{"auths":{{"127.0.0.1:5000":{{"auth":"{}"}}}}}}"#,
            b64(&format!("u:{PW}"))
        );
        assert_eq!(creds(&j, "127.0.0.1:5000").unwrap(), basic);
        assert_eq!(creds(&j, "127.0.0.1:5001").unwrap(), Credentials::Anonymous);
        let j =
            format!(r#"{{"auths":{{"https://ghcr.io/":{{"username":"u","password":"{PW}"}}}}}}"#);
        assert_eq!(creds(&j, "ghcr.io").unwrap(), basic);
        let j = format!(
            r#"{{"auths":{{"https://index.docker.io/v1/":{{"auth":"{}"}}}}}}"#,
            b64(&format!("u:{PW}"))
        );
        assert_eq!(creds(&j, DOCKER_HUB_REGISTRY).unwrap(), basic);
        let j = r#"{"auths":{"r.io":{"registrytoken":"tok"}}}"#;
        assert_eq!(creds(j, "r.io").unwrap(), Credentials::Bearer("tok".into()));
        let j = r#"{"auths":{"r.io":{"username":"<token>","identitytoken":"refresh"}}}"#;
        assert_eq!(
            creds(j, "r.io").unwrap(),
            Credentials::IdentityToken("refresh".into())
        );
        // `az acr login`'s form: a placeholder `auth` next to the identity token.
        let j = format!(
            r#"{{"auths":{{"r.io":{{"auth":"{}","identitytoken":"refresh"}}}}}}"#,
            b64("00000000-0000-0000-0000-000000000000:")
        );
        assert_eq!(
            creds(&j, "r.io").unwrap(),
            Credentials::IdentityToken("refresh".into())
        );
        assert_eq!(
            creds(r#"{"auths":{"r.io":{}}}"#, "r.io").unwrap(),
            Credentials::Anonymous
        );
        assert_eq!(creds("{}", "r.io").unwrap(), Credentials::Anonymous);
    }

    #[test]
    fn legacy_dockercfg_and_key_normalisation() {
        let basic = Credentials::Basic {
            user: "u".into(),
            password: PW.into(),
        };
        let auth = b64(&format!("u:{PW}"));
        let j = format!(r#"{{"https://r.io/v1/":{{"auth":"{auth}","email":"a@b"}}}}"#);
        assert_eq!(creds(&j, "r.io").unwrap(), basic);
        assert_eq!(creds(&j, "s.io").unwrap(), Credentials::Anonymous);
        for key in [
            "docker.io",
            "https://index.docker.io/v1/",
            "registry-1.docker.io",
            "http://docker.io/",
        ] {
            let j = format!(r#"{{"auths":{{"{key}":{{"auth":"{auth}"}}}}}}"#);
            assert_eq!(creds(&j, DOCKER_HUB_REGISTRY).unwrap(), basic, "{key}");
            assert_eq!(creds(&j, "docker.io").unwrap(), basic, "{key}");
        }
        // A legacy secret naming helpers runs nothing either.
        let j = r#"{"credsStore":"evil","credHelpers":{"r.io":"evil"}}"#;
        assert_eq!(creds(j, "r.io").unwrap(), Credentials::Anonymous);
    }

    #[test]
    fn credential_helpers_in_a_secret_are_ignored() {
        // A secret naming helpers must not run them: it is parsed as data only.
        let j = r#"{"credsStore":"evil","credHelpers":{"r.io":"evil"},"auths":{}}"#;
        assert_eq!(creds(j, "r.io").unwrap(), Credentials::Anonymous);
    }

    #[test]
    fn invalid_secrets_do_not_echo_content() {
        for bad in [
            format!(r#"{{"auths":{{"r.io":{{"auth":"{PW}"}}}}}}"#),
            format!(r#"{{"auths":"{PW}"}}"#),
            format!("{PW} not json"),
            format!(r#"{{"auths":{{"r.io":{{"auth":"{}"}}}}}}"#, b64(PW)),
        ] {
            let e = creds(&bad, "r.io").unwrap_err();
            assert!(matches!(e, Error::InvalidPullSecret { .. }), "{e:?}");
            for shown in [e.to_string(), format!("{e:?}")] {
                assert!(!shown.contains(PW) && !shown.contains(&b64(PW)), "{shown}");
            }
        }
    }

    #[test]
    fn debug_and_keys_hide_secrets() {
        let c = Credentials::Basic {
            user: "u".into(),
            password: PW.into(),
        };
        assert!(!format!("{c:?}").contains(PW));
        assert!(!format!("{:?}", Credentials::Bearer(PW.into())).contains(PW));
        assert!(!format!("{:?}", Credentials::IdentityToken(PW.into())).contains(PW));
        let other = Credentials::Basic {
            user: "u".into(),
            password: "rotated".into(),
        };
        assert_ne!(c.cache_key("r.io"), other.cache_key("r.io"));
        assert_ne!(c.cache_key("r.io"), c.cache_key("s.io"));
    }
}
