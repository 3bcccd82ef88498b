//! rustls client configurations, always on the ring provider.

use std::sync::{Arc, OnceLock};

use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::crypto::{CryptoProvider, WebPkiSupportedAlgorithms};
use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
use rustls::{ClientConfig, DigitallySignedStruct, RootCertStore, SignatureScheme};
use wasm_cache_core::Error;

/// The crypto provider of every TLS configuration here: ring, passed
/// explicitly. The process-wide default provider is never installed nor read,
/// so another crate's choice (or none) cannot change ours.
pub(crate) fn provider() -> Arc<CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

fn invalid(reason: String) -> Error {
    Error::InvalidConfig { reason }
}

/// How many times this process loaded the system's roots (tests).
#[cfg(test)]
pub(crate) static NATIVE_LOADS: std::sync::atomic::AtomicUsize =
    std::sync::atomic::AtomicUsize::new(0);

/// webpki's Mozilla roots, plus the system's when `native` (and readable):
/// loaded once per process (reading the system's store opens and parses
/// every certificate file in it), on first use.
fn base_roots(native: bool) -> &'static RootCertStore {
    static WEBPKI: OnceLock<RootCertStore> = OnceLock::new();
    static WITH_NATIVE: OnceLock<RootCertStore> = OnceLock::new();
    let webpki = || {
        let mut roots = RootCertStore::empty();
        roots.extend(webpki_roots::TLS_SERVER_ROOTS.iter().cloned());
        roots
    };
    if !native {
        return WEBPKI.get_or_init(webpki);
    }
    WITH_NATIVE.get_or_init(|| {
        #[cfg(test)]
        NATIVE_LOADS.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
        let mut roots = webpki();
        // Missing or unreadable system stores are not fatal: webpki roots remain.
        let found = rustls_native_certs::load_native_certs();
        let (added, ignored) = roots.add_parsable_certificates(found.certs);
        tracing::debug!(
            added,
            ignored,
            errors = found.errors.len(),
            "system root certificates (loaded once per process)"
        );
        roots
    })
}

/// The certificates of extra PEM bundles (`(origin, bytes)`, origin naming
/// the file for errors), each checked to be usable as a trust anchor.
pub(crate) fn extra_roots(
    extra: &[(String, Vec<u8>)],
) -> Result<Vec<CertificateDer<'static>>, Error> {
    let mut all = Vec::new();
    for (origin, pem) in extra {
        let certs: Vec<CertificateDer<'static>> = rustls_pemfile::certs(&mut pem.as_slice())
            .collect::<Result<_, _>>()
            .map_err(|e| invalid(format!("CA bundle {origin} is not valid PEM: {e}")))?;
        if certs.is_empty() {
            return Err(invalid(format!(
                "CA bundle {origin} holds no PEM certificate"
            )));
        }
        let mut check = RootCertStore::empty();
        for cert in certs {
            check
                .add(cert.clone())
                .map_err(|e| invalid(format!("CA bundle {origin}: unusable certificate: {e}")))?;
            all.push(cert);
        }
    }
    Ok(all)
}

/// A verifying client configuration: the process's base roots
/// ([`base_roots`]) plus `extra` (already checked by [`extra_roots`]).
pub(crate) fn verifying(
    native: bool,
    extra: &[CertificateDer<'static>],
) -> Result<ClientConfig, Error> {
    let mut roots = base_roots(native).clone();
    for cert in extra {
        roots
            .add(cert.clone())
            .map_err(|e| invalid(format!("CA bundle: unusable certificate: {e}")))?;
    }
    Ok(ClientConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()
        .map_err(|e| invalid(format!("TLS setup: {e}")))?
        .with_root_certificates(roots)
        .with_no_client_auth())
}

/// A client configuration that accepts any server certificate (insecure hosts
/// only). Handshake signatures are still checked, so the session is at least
/// bound to the certificate presented.
pub(crate) fn insecure() -> Result<ClientConfig, Error> {
    let provider = provider();
    let verifier = NoVerify(provider.signature_verification_algorithms);
    Ok(ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| invalid(format!("TLS setup: {e}")))?
        .dangerous()
        .with_custom_certificate_verifier(Arc::new(verifier))
        .with_no_client_auth())
}

#[derive(Debug)]
struct NoVerify(WebPkiSupportedAlgorithms);

impl ServerCertVerifier for NoVerify {
    fn verify_server_cert(
        &self,
        _end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp_response: &[u8],
        _now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        Ok(ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(message, cert, dss, &self.0)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(message, cert, dss, &self.0)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.0.supported_schemes()
    }
}
