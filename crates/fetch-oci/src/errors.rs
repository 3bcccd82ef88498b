//! Mapping registry answers into [`wasm_cache_core::Error`].
//!
//! Errors name the module URL, redacted, never a registry request URL (which
//! may carry a token in its query). Registry error bodies are shortened: they
//! are the server's words, never our credentials.

use oci_client::errors::{OciEnvelope, OciErrorCode};
use wasm_cache_core::Error;

/// How much of an error body is read to explain a refusal.
pub(crate) const MAX_ERROR_BODY: u64 = 64 * 1024;

pub(crate) fn shorten(s: &str) -> String {
    wasm_cache_core::shorten(s.trim(), 200)
}

/// The error for a registry answer `code` with (at most [`MAX_ERROR_BODY`]
/// bytes of) `body`, met while working on `url` (redacted).
pub(crate) fn registry_error(url: &str, code: u16, body: &[u8]) -> Error {
    let url = url.to_owned();
    if let Ok(envelope) = serde_json::from_slice::<OciEnvelope>(body)
        && !envelope.errors.is_empty()
    {
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
            return Error::NotFound { url };
        }
        if any(|c| matches!(c, OciErrorCode::Unauthorized | OciErrorCode::Denied)) {
            return Error::Unauthorized {
                url,
                reason: messages.join("; "),
            };
        }
        if any(|c| matches!(c, OciErrorCode::Toomanyrequests)) {
            return Error::Status { url, code: 429 };
        }
        if code < 500 {
            return Error::Manifest {
                url,
                reason: format!("the registry refused: {}", messages.join("; ")),
                source: None,
            };
        }
    }
    match code {
        404 => Error::NotFound { url },
        401 | 403 => Error::Unauthorized {
            url,
            reason: format!(
                "the registry answered {code}: {}",
                shorten(&String::from_utf8_lossy(body))
            ),
        },
        _ => Error::Status { url, code },
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use wasm_cache_core::ErrorKind;

    #[test]
    fn answers_map_to_kinds() {
        let u = "oci://r/a:b";
        assert!(matches!(
            registry_error(u, 404, b""),
            Error::NotFound { .. }
        ));
        assert_eq!(
            registry_error(u, 403, b"no").kind(),
            ErrorKind::Unauthorized
        );
        let e = registry_error(u, 503, b"busy");
        assert!(e.is_retryable(), "{e}");
        assert!(!registry_error(u, 501, b"").is_retryable());
        let env = br#"{"errors":[{"code":"MANIFEST_UNKNOWN","message":"manifest unknown"}]}"#;
        assert!(matches!(
            registry_error(u, 404, env),
            Error::NotFound { .. }
        ));
        let env = br#"{"errors":[{"code":"DENIED","message":"requested access to the resource is denied"}]}"#;
        let e = registry_error(u, 403, env);
        assert!(matches!(e, Error::Unauthorized { .. }) && e.to_string().contains("denied"));
        let env = br#"{"errors":[{"code":"TOOMANYREQUESTS","message":"slow down"}]}"#;
        assert!(matches!(
            registry_error(u, 429, env),
            Error::Status { code: 429, .. }
        ));
        let env = br#"{"errors":[{"code":"UNSUPPORTED","message":"nope"}]}"#;
        assert_eq!(registry_error(u, 400, env).kind(), ErrorKind::Manifest);
    }
}
