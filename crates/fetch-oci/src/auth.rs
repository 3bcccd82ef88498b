//! Credentials from Docker `config.json` bytes: pull secrets and the default docker config.
//!
//! Parsed here with serde_json, never by a tool: `credsStore` and `credHelpers`
//! entries are ignored, so a pull secret can never make this process run a
//! program. (The default docker config is parsed the same way; credential
//! helpers named there are not supported yet and are ignored too.)

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
}

impl fmt::Debug for Credentials {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Credentials::Anonymous => f.write_str("Anonymous"),
            Credentials::Basic { .. } => f.write_str("Basic(<redacted>)"),
            Credentials::Bearer(_) => f.write_str("Bearer(<redacted>)"),
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
        }
        let mut out = [0u8; 32];
        out.copy_from_slice(ctx.finish().as_ref());
        out
    }
}

#[derive(Deserialize, Default)]
struct DockerConfig {
    #[serde(default)]
    auths: HashMap<String, AuthEntry>,
    // `credsStore` / `credHelpers` are deliberately not read: helpers are never run.
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

/// Normalises an `auths` key: `https://host/v1/` -> `host`; Docker Hub aliases
/// -> `index.docker.io`.
fn normalise_key(key: &str) -> String {
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

/// The credentials `config` holds for `registry` (`host[:port]`), or anonymous.
///
/// # Errors
/// [`Error::InvalidPullSecret`] (or [`Error::InvalidConfig`] for a file) when the
/// bytes are not a Docker config or the matching entry is unusable; the message
/// never contains the bytes. [`Error::Unsupported`] for an entry that has only
/// an `identitytoken` (an OAuth2 refresh token, which oci-client cannot use).
pub(crate) fn credentials_for(
    config: &[u8],
    registry: &str,
    source: Source<'_>,
) -> Result<Credentials, Error> {
    let parsed: DockerConfig = serde_json::from_slice(config).map_err(|e| {
        // Category and position only: serde messages can quote the input.
        invalid(
            source,
            format!(
                "not a Docker config.json ({:?} error at line {} column {})",
                e.classify(),
                e.line(),
                e.column()
            ),
        )
    })?;
    let wanted = normalise_key(registry);
    // An exact key wins over a normalised match.
    let entry = parsed.auths.get(registry).or_else(|| {
        parsed
            .auths
            .iter()
            .find(|(k, _)| normalise_key(k) == wanted)
            .map(|(_, v)| v)
    });
    let Some(entry) = entry else {
        return Ok(Credentials::Anonymous);
    };
    let non_empty = |s: &Option<String>| s.as_deref().filter(|s| !s.is_empty()).map(str::to_owned);
    if let Some(token) = non_empty(&entry.registrytoken) {
        return Ok(Credentials::Bearer(token));
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
    if let (Some(user), Some(password)) = (non_empty(&entry.username), entry.password.clone())
        && entry.identitytoken.is_none()
    {
        return Ok(Credentials::Basic { user, password });
    }
    if non_empty(&entry.identitytoken).is_some() {
        return Err(Error::Unsupported {
            what: format!("an identitytoken (OAuth2 refresh token) credential for {wanted}"),
        });
    }
    Ok(Credentials::Anonymous)
}

/// The default docker config file: `$DOCKER_CONFIG/config.json`, else
/// `$HOME/.docker/config.json`.
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
        assert!(matches!(creds(j, "r.io"), Err(Error::Unsupported { .. })));
        assert_eq!(
            creds(r#"{"auths":{"r.io":{}}}"#, "r.io").unwrap(),
            Credentials::Anonymous
        );
        assert_eq!(creds("{}", "r.io").unwrap(), Credentials::Anonymous);
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
        let other = Credentials::Basic {
            user: "u".into(),
            password: "rotated".into(),
        };
        assert_ne!(c.cache_key("r.io"), other.cache_key("r.io"));
        assert_ne!(c.cache_key("r.io"), c.cache_key("s.io"));
    }
}
