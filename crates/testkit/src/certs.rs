//! Test certificates: a fresh CA and a server certificate for
//! `localhost`/`127.0.0.1` signed by it, shared by the HTTP server and the registry.

use rcgen::{BasicConstraints, CertificateParams, CertifiedIssuer, IsCa, KeyPair};

/// A CA and the leaf it signed.
pub(crate) struct TestCerts {
    /// The CA certificate, PEM.
    pub(crate) ca_pem: String,
    /// The CA certificate, DER.
    pub(crate) ca_der: Vec<u8>,
    /// The leaf certificate, PEM.
    pub(crate) leaf_pem: String,
    /// The leaf certificate, DER.
    pub(crate) leaf_der: Vec<u8>,
    /// The leaf's private key, PKCS#8 PEM.
    pub(crate) key_pem: String,
    /// The leaf's private key, PKCS#8 DER.
    pub(crate) key_der: Vec<u8>,
}

/// A new CA named `ca_name` and a server certificate (`leaf_name`) for
/// `localhost` and `127.0.0.1`.
pub(crate) fn issue(ca_name: &str, leaf_name: &str) -> Result<TestCerts, rcgen::Error> {
    let mut ca_params = CertificateParams::new(Vec::<String>::new())?;
    ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    ca_params
        .distinguished_name
        .push(rcgen::DnType::CommonName, ca_name);
    ca_params.key_usages = vec![
        rcgen::KeyUsagePurpose::KeyCertSign,
        rcgen::KeyUsagePurpose::CrlSign,
        rcgen::KeyUsagePurpose::DigitalSignature,
    ];
    let ca = CertifiedIssuer::self_signed(ca_params, KeyPair::generate()?)?;
    let mut leaf_params =
        CertificateParams::new(vec!["localhost".to_owned(), "127.0.0.1".to_owned()])?;
    leaf_params
        .distinguished_name
        .push(rcgen::DnType::CommonName, leaf_name);
    leaf_params.extended_key_usages = vec![rcgen::ExtendedKeyUsagePurpose::ServerAuth];
    let leaf_key = KeyPair::generate()?;
    let leaf = leaf_params.signed_by(&leaf_key, &ca)?;
    Ok(TestCerts {
        ca_pem: ca.pem(),
        ca_der: ca.der().to_vec(),
        leaf_pem: leaf.pem(),
        leaf_der: leaf.der().to_vec(),
        key_pem: leaf_key.serialize_pem(),
        key_der: leaf_key.serialize_der(),
    })
}
