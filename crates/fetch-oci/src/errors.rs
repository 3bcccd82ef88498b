//! Mapping oci-client and reqwest errors into [`wasm_cache_core::Error`].
//!
//! oci-client's messages embed request URLs; ours name the module URL, redacted,
//! instead. Registry error bodies are shortened: they are the server's words,
//! never our credentials.

use oci_client::errors::{OciDistributionError, OciErrorCode};
use wasm_cache_core::{BoxError, Error};

/// The error chain of `e` as one line, `a: b: c`, skipping repeated parts.
pub(crate) fn chain(e: &(dyn std::error::Error + 'static)) -> String {
    let mut parts: Vec<String> = Vec::new();
    let mut cur: Option<&(dyn std::error::Error + 'static)> = Some(e);
    while let Some(err) = cur {
        let s = err.to_string();
        if !parts.iter().any(|p| p.contains(&s)) {
            parts.push(s);
        }
        // `io::Error::source` skips the wrapped error itself; look inside.
        cur = match err
            .downcast_ref::<std::io::Error>()
            .and_then(|io| io.get_ref())
        {
            Some(inner) if inner.to_string() != err.to_string() => Some(inner),
            _ => err.source(),
        };
    }
    parts.join(": ")
}

/// Whether a TLS handshake failed (bad certificate, unknown CA, ...): retrying
/// cannot help.
pub(crate) fn is_tls_failure(e: &(dyn std::error::Error + 'static)) -> bool {
    let mut cur: Option<&(dyn std::error::Error + 'static)> = Some(e);
    while let Some(err) = cur {
        if err.downcast_ref::<rustls::Error>().is_some() {
            return true;
        }
        if let Some(inner) = err
            .downcast_ref::<std::io::Error>()
            .and_then(|io| io.get_ref())
            && inner.downcast_ref::<rustls::Error>().is_some()
        {
            return true;
        }
        cur = err.source();
    }
    // The connector may box the rustls error in a type we cannot name; its
    // message is stable ("invalid peer certificate: UnknownIssuer", ...).
    let text = chain(e);
    text.contains("invalid peer certificate") || text.contains("received fatal alert")
}

fn shorten(s: &str) -> String {
    wasm_cache_core::shorten(s.trim(), 200)
}

/// A transport error from reqwest, without its URL.
pub(crate) fn transport(url: &str, what: &str, e: reqwest::Error) -> Error {
    let e = e.without_url();
    let reason = format!("{what}: {}", chain(&e));
    Error::Transport {
        url: url.to_owned(),
        reason,
        source: Some(Box::new(e) as BoxError),
    }
}

/// Maps an oci-client error met while working on `url` (redacted).
pub(crate) fn map_oci(url: &str, e: OciDistributionError) -> Error {
    let url = url.to_owned();
    match e {
        OciDistributionError::RequestError(e) => transport(&url, "registry request failed", e),
        OciDistributionError::IoError(e) => Error::Transport {
            url,
            reason: format!("registry request failed: {}", chain(&e)),
            source: Some(Box::new(e)),
        },
        OciDistributionError::UnauthorizedError { .. } => Error::Unauthorized {
            url,
            reason: "the registry answered 401 Unauthorized".into(),
        },
        OciDistributionError::AuthenticationFailure(body) => Error::Unauthorized {
            url,
            reason: format!("the token service refused: {}", shorten(&body)),
        },
        OciDistributionError::ServerError { code, message, .. } => match code {
            404 => Error::NotFound { url },
            401 | 403 => Error::Unauthorized {
                url,
                reason: format!("the registry answered {code}: {}", shorten(&message)),
            },
            _ => Error::Status { url, code },
        },
        OciDistributionError::RegistryError { envelope, .. } => {
            let codes: Vec<&OciErrorCode> = envelope.errors.iter().map(|e| &e.code).collect();
            let messages: Vec<String> = envelope
                .errors
                .iter()
                .map(|e| shorten(&e.message))
                .collect();
            let any = |f: fn(&OciErrorCode) -> bool| codes.iter().any(|c| f(c));
            if any(|c| {
                matches!(
                    c,
                    OciErrorCode::ManifestUnknown
                        | OciErrorCode::NameUnknown
                        | OciErrorCode::BlobUnknown
                        | OciErrorCode::NotFound
                )
            }) {
                Error::NotFound { url }
            } else if any(|c| matches!(c, OciErrorCode::Unauthorized | OciErrorCode::Denied)) {
                Error::Unauthorized {
                    url,
                    reason: messages.join("; "),
                }
            } else if any(|c| matches!(c, OciErrorCode::Toomanyrequests)) {
                Error::Status { url, code: 429 }
            } else {
                Error::Manifest {
                    url,
                    reason: format!("the registry refused: {}", messages.join("; ")),
                    source: None,
                }
            }
        }
        OciDistributionError::DigestError(oci_client::errors::DigestError::VerificationError {
            expected,
            actual,
        }) => Error::DigestMismatch {
            url,
            expected,
            actual,
        },
        OciDistributionError::ImageManifestNotFoundError(_) => Error::NotFound { url },
        other => Error::Manifest {
            url,
            reason: shorten(&other.to_string()),
            source: None,
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn statuses_map_to_kinds() {
        let u = "oci://r/a:b";
        let se = |code| OciDistributionError::ServerError {
            code,
            url: "http://r/v2/a/manifests/b?token=SECRET".into(),
            message: "m".into(),
        };
        assert!(matches!(map_oci(u, se(404)), Error::NotFound { .. }));
        assert!(matches!(map_oci(u, se(403)), Error::Unauthorized { .. }));
        let e = map_oci(u, se(503));
        assert!(e.is_retryable(), "{e}");
        assert!(!map_oci(u, se(501)).is_retryable());
        for e in [se(404), se(503)] {
            assert!(!map_oci(u, e).to_string().contains("SECRET"));
        }
        let unauth = OciDistributionError::UnauthorizedError {
            url: "http://r/v2/?x=SECRET".into(),
        };
        let e = map_oci(u, unauth);
        assert!(matches!(e, Error::Unauthorized { .. }) && !e.to_string().contains("SECRET"));
    }

    #[test]
    fn chains_read_through_io_errors() {
        let inner = std::io::Error::other("certificate unknown");
        let outer = std::io::Error::other(inner);
        assert!(chain(&outer).contains("certificate unknown"));
        let tls = std::io::Error::other(rustls::Error::InvalidCertificate(
            rustls::CertificateError::UnknownIssuer,
        ));
        assert!(is_tls_failure(&tls));
        assert!(!is_tls_failure(&std::io::Error::other("refused")));
    }
}
