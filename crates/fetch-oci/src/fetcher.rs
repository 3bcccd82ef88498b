//! [`OciFetcher`] and its builder.

use std::collections::HashMap;
use std::fmt;
use std::future::Future;
use std::path::PathBuf;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

use async_trait::async_trait;
use futures_util::StreamExt as _;
use oci_client::Reference;
use oci_client::client::{Certificate, CertificateEncoding, ClientConfig, ClientProtocol};
use oci_client::secrets::RegistryAuth;
use wasm_cache_core::retry::Backoff;
use wasm_cache_core::unbox::{UnboxError, Unboxer, boxed_limit};
use wasm_cache_core::{
    Error, FetchRequest, Fetched, Fetcher, ModuleSink, OciReference, Scheme, Sha256Digest,
    SignatureLayer, Signatures,
};
use wasm_cache_signature::{
    MAX_SIGNATURE_MANIFEST_LEN, PayloadRef, SIMPLE_SIGNING_MEDIA_TYPE, parse_signature_manifest,
    signature_tag,
};

use crate::auth::{self, Credentials, Source};
use crate::errors::{chain, is_tls_failure, map_oci, transport};
use crate::layout::{self, LayerChoice, LayoutError, Parsed};
use crate::realm;
use crate::verify::{BlobVerifier, sha256};

/// The `User-Agent` of every request.
const USER_AGENT: &str = concat!("wasm-cache/", env!("CARGO_PKG_VERSION"));
/// The largest manifest accepted (oci-client reads manifests into memory).
pub const MAX_MANIFEST_SIZE: usize = 4 * 1024 * 1024;
/// How long a registry's probe verdict (scheme, realm check) is reused.
const PROBE_TTL: Duration = Duration::from_secs(300);
/// Cached clients kept at most (one per registry, credential set and mode).
const MAX_CLIENTS: usize = 256;

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(PoisonError::into_inner)
}

/// How to reach a registry.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
enum Mode {
    /// HTTPS, verified against the system roots plus the extra CA bundle.
    Secure,
    /// HTTPS without certificate verification (insecure-listed registries only).
    InsecureTls,
    /// Plain HTTP (insecure-listed registries only).
    PlainHttp,
}

impl Mode {
    fn scheme(self) -> &'static str {
        match self {
            Mode::PlainHttp => "http",
            Mode::Secure | Mode::InsecureTls => "https",
        }
    }
}

/// Builds an [`OciFetcher`].
#[derive(Debug, Clone, Default)]
pub struct OciFetcherBuilder {
    insecure: Vec<String>,
    ca_files: Vec<PathBuf>,
    ca_pems: Vec<Vec<u8>>,
    backoff: Backoff,
    allow_private_realms: bool,
    docker_config_dir: Option<Option<PathBuf>>,
}

impl OciFetcherBuilder {
    /// Registries (`host:port`, as in the URL, or `*` for all) reached over plain
    /// HTTP or HTTPS without certificate verification. For a listed registry,
    /// HTTPS (unverified) is tried first and plain HTTP when TLS cannot be set
    /// up; every other registry gets verified HTTPS only.
    #[must_use]
    pub fn insecure_registries<I, S>(mut self, registries: I) -> Self
    where
        I: IntoIterator<Item = S>,
        S: Into<String>,
    {
        self.insecure.extend(registries.into_iter().map(Into::into));
        self
    }

    /// A PEM file of extra CA certificates trusted for registries that are not
    /// insecure-listed (added to the system roots). Read by [`build`](Self::build).
    #[must_use]
    pub fn ca_file(mut self, path: impl Into<PathBuf>) -> Self {
        self.ca_files.push(path.into());
        self
    }

    /// Extra CA certificates, PEM, like [`ca_file`](Self::ca_file).
    #[must_use]
    pub fn ca_pem(mut self, pem: impl Into<Vec<u8>>) -> Self {
        self.ca_pems.push(pem.into());
        self
    }

    /// The retry schedule for transient failures (default: the reference's).
    #[must_use]
    pub fn backoff(mut self, backoff: Backoff) -> Self {
        self.backoff = backoff;
        self
    }

    /// Allows token realms on loopback and private addresses for every registry
    /// (by default only insecure-listed registries may use them). Link-local and
    /// metadata addresses are refused regardless.
    #[must_use]
    pub fn allow_private_realms(mut self, allow: bool) -> Self {
        self.allow_private_realms = allow;
        self
    }

    /// The docker config directory used when a request has no pull secret
    /// (`<dir>/config.json`); `None` turns the default config off (anonymous).
    /// Default: `$DOCKER_CONFIG`, else `$HOME/.docker`.
    #[must_use]
    pub fn docker_config_dir(mut self, dir: Option<PathBuf>) -> Self {
        self.docker_config_dir = Some(dir);
        self
    }

    /// Builds the fetcher.
    ///
    /// Installs rustls' ring provider as the process default if none is
    /// installed yet (oci-client takes no TLS config of its own; see the crate docs).
    ///
    /// # Errors
    /// [`Error::InvalidConfig`] for an unreadable CA file, a bundle with no PEM
    /// certificate, a malformed insecure-registry entry, or a client that cannot
    /// be built.
    pub fn build(self) -> Result<OciFetcher, Error> {
        install_crypto_provider();
        let invalid = |reason: String| Error::InvalidConfig { reason };
        for entry in &self.insecure {
            let ok = entry == "*"
                || (!entry.is_empty()
                    && !entry.contains("://")
                    && !entry.contains('/')
                    && !entry.contains(char::is_whitespace));
            if !ok {
                return Err(invalid(format!(
                    "insecure registry {entry:?} must be host[:port] or *"
                )));
            }
        }
        let mut pems: Vec<(String, Vec<u8>)> = self
            .ca_pems
            .into_iter()
            .enumerate()
            .map(|(i, p)| (format!("CA PEM #{}", i + 1), p))
            .collect();
        for path in &self.ca_files {
            let bytes = std::fs::read(path)
                .map_err(|e| invalid(format!("reading CA file {}: {e}", path.display())))?;
            pems.push((format!("CA file {}", path.display()), bytes));
        }
        let mut ca_der = Vec::new();
        for (origin, pem) in &pems {
            use rustls::pki_types::CertificateDer;
            use rustls::pki_types::pem::PemObject as _;
            let before = ca_der.len();
            for cert in CertificateDer::pem_slice_iter(pem) {
                let cert = cert.map_err(|e| invalid(format!("{origin}: bad PEM: {e}")))?;
                ca_der.push(cert.to_vec());
            }
            if ca_der.len() == before {
                return Err(invalid(format!("{origin} holds no PEM certificate")));
            }
        }
        let docker_config_dir = self
            .docker_config_dir
            .unwrap_or_else(auth::default_docker_config_dir);
        let inner = Inner {
            insecure: self
                .insecure
                .iter()
                .map(|s| s.to_ascii_lowercase())
                .collect(),
            ca_der,
            backoff: self.backoff,
            allow_private_realms: self.allow_private_realms,
            docker_config_dir,
            probe_clients: HashMap::new(),
            clients: Mutex::new(HashMap::new()),
            probes: Mutex::new(HashMap::new()),
        };
        let mut probe_clients = HashMap::new();
        for mode in [Mode::Secure, Mode::InsecureTls, Mode::PlainHttp] {
            probe_clients.insert(mode, inner.probe_client(mode)?);
            // Fail now, not at the first fetch, if oci-client rejects the config.
            inner.build_client(mode)?;
        }
        Ok(OciFetcher {
            inner: Arc::new(Inner {
                probe_clients,
                ..inner
            }),
        })
    }
}

/// Installs rustls' ring provider as the process-wide default, once. Without a
/// default, reqwest (built with `rustls-no-provider`) panics when a client is
/// built. If the application installed another provider first, that one stays.
pub fn install_crypto_provider() {
    let _ = rustls::crypto::ring::default_provider().install_default();
}

/// A [`Fetcher`] for `oci://` URLs. Cheap to clone (shared state).
#[derive(Clone)]
pub struct OciFetcher {
    inner: Arc<Inner>,
}

struct Inner {
    insecure: Vec<String>,
    ca_der: Vec<Vec<u8>>,
    backoff: Backoff,
    allow_private_realms: bool,
    docker_config_dir: Option<PathBuf>,
    probe_clients: HashMap<Mode, reqwest::Client>,
    /// Keyed by a hash of (registry, credentials) and the mode; never the secret.
    clients: Mutex<HashMap<([u8; 32], Mode), oci_client::Client>>,
    probes: Mutex<HashMap<String, (Mode, Instant)>>,
}

impl fmt::Debug for OciFetcher {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let i = &self.inner;
        f.debug_struct("OciFetcher")
            .field("insecure_registries", &i.insecure)
            .field("extra_ca_certificates", &i.ca_der.len())
            .field("backoff", &i.backoff)
            .field("allow_private_realms", &i.allow_private_realms)
            .field("docker_config_dir", &i.docker_config_dir)
            .field("cached_clients", &lock(&i.clients).len())
            .finish()
    }
}

impl OciFetcher {
    /// A builder with the defaults: no insecure registries, system roots only,
    /// the reference's backoff, the default docker config.
    pub fn builder() -> OciFetcherBuilder {
        OciFetcherBuilder::default()
    }

    fn oci<'a>(&self, req: &'a FetchRequest) -> Result<&'a OciReference, Error> {
        match req.url.oci() {
            Some(r) if req.url.scheme() == Scheme::Oci => Ok(r),
            _ => Err(Error::UnsupportedScheme {
                scheme: req.url.scheme().as_str().to_owned(),
            }),
        }
    }

    /// Runs `op` before the request's deadline, or fails with [`Error::Timeout`].
    async fn before_deadline<T>(
        req: &FetchRequest,
        op: impl Future<Output = Result<T, Error>>,
    ) -> Result<T, Error> {
        let start = Instant::now();
        if req.remaining(start).is_zero() {
            return Err(req.timeout_error(Duration::ZERO));
        }
        match tokio::time::timeout_at(req.deadline.into(), op).await {
            Ok(r) => r,
            Err(_) => Err(req.timeout_error(req.deadline.saturating_duration_since(start))),
        }
    }
}

/// Whether another attempt could help.
fn worth_retrying(e: &Error) -> bool {
    match e {
        Error::Transport {
            source: Some(s), ..
        } => !is_tls_failure(s.as_ref()),
        other => other.is_retryable(),
    }
}

impl Inner {
    fn is_insecure(&self, registry: &str) -> bool {
        let registry = registry.to_ascii_lowercase();
        self.insecure.iter().any(|r| r == "*" || *r == registry)
    }

    fn reqwest_certs(&self) -> Result<Vec<reqwest::Certificate>, Error> {
        self.ca_der
            .iter()
            .map(|d| {
                reqwest::Certificate::from_der(d).map_err(|e| Error::InvalidConfig {
                    reason: format!("extra CA certificate: {}", chain(&e)),
                })
            })
            .collect()
    }

    fn probe_client(&self, mode: Mode) -> Result<reqwest::Client, Error> {
        let mut b = reqwest::Client::builder()
            .user_agent(USER_AGENT)
            .redirect(reqwest::redirect::Policy::none())
            .no_proxy();
        match mode {
            Mode::Secure => b = b.tls_certs_merge(self.reqwest_certs()?),
            Mode::InsecureTls => b = b.danger_accept_invalid_certs(true),
            Mode::PlainHttp => {}
        }
        b.build().map_err(|e| Error::InvalidConfig {
            reason: format!("building the registry probe client: {}", chain(&e)),
        })
    }

    fn build_client(&self, mode: Mode) -> Result<oci_client::Client, Error> {
        let config = ClientConfig {
            protocol: match mode {
                Mode::PlainHttp => ClientProtocol::Http,
                Mode::Secure | Mode::InsecureTls => ClientProtocol::Https,
            },
            accept_invalid_certificates: mode == Mode::InsecureTls,
            extra_root_certificates: if mode == Mode::Secure {
                self.ca_der
                    .iter()
                    .map(|d| Certificate {
                        encoding: CertificateEncoding::Der,
                        data: d.clone(),
                    })
                    .collect()
            } else {
                Vec::new()
            },
            // Indexes are resolved by `layout`, never by oci-client.
            platform_resolver: None,
            user_agent: USER_AGENT,
            ..ClientConfig::default()
        };
        oci_client::Client::try_from(config).map_err(|e| Error::InvalidConfig {
            reason: format!("building the OCI client: {}", chain(&e)),
        })
    }

    fn client(
        &self,
        registry: &str,
        creds: &Credentials,
        mode: Mode,
    ) -> Result<oci_client::Client, Error> {
        let key = (creds.cache_key(registry), mode);
        if let Some(c) = lock(&self.clients).get(&key) {
            return Ok(c.clone());
        }
        let client = self.build_client(mode)?;
        let mut clients = lock(&self.clients);
        if clients.len() >= MAX_CLIENTS {
            clients.clear();
        }
        Ok(clients.entry(key).or_insert(client).clone())
    }

    /// The credentials for `registry`: the pull secret, else the default docker
    /// config, else anonymous.
    async fn credentials(&self, req: &FetchRequest, registry: &str) -> Result<Credentials, Error> {
        if let Some(secret) = req.pull_secret.as_ref().filter(|s| !s.expose().is_empty()) {
            return auth::credentials_for(secret.expose(), registry, Source::PullSecret);
        }
        let Some(dir) = &self.docker_config_dir else {
            return Ok(Credentials::Anonymous);
        };
        let path = dir.join("config.json");
        match tokio::fs::read(&path).await {
            Ok(bytes) => auth::credentials_for(&bytes, registry, Source::File(&path)),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(Credentials::Anonymous),
            Err(e) => Err(Error::InvalidConfig {
                reason: format!("reading docker config {}: {e}", path.display()),
            }),
        }
    }

    /// Sends an anonymous `GET /v2/`, picks the scheme (for insecure-listed
    /// registries) and checks every bearer realm; the verdict is cached.
    async fn probe(&self, url: &str, registry: &str) -> Result<Mode, Error> {
        if let Some((mode, at)) = lock(&self.probes).get(registry)
            && at.elapsed() < PROBE_TTL
        {
            return Ok(*mode);
        }
        let insecure = self.is_insecure(registry);
        let get = |mode: Mode| {
            let client = &self.probe_clients[&mode];
            client
                .get(format!("{}://{registry}/v2/", mode.scheme()))
                .send()
        };
        let (mode, response) = if insecure {
            match get(Mode::InsecureTls).await {
                Ok(r) => (Mode::InsecureTls, r),
                Err(tls_err) if tls_err.is_connect() || tls_err.is_request() => {
                    match get(Mode::PlainHttp).await {
                        Ok(r) => (Mode::PlainHttp, r),
                        Err(e) => {
                            return Err(transport(
                                url,
                                "registry unreachable over https and http",
                                e,
                            ));
                        }
                    }
                }
                Err(e) => return Err(transport(url, "registry probe failed", e)),
            }
        } else {
            match get(Mode::Secure).await {
                Ok(r) => (Mode::Secure, r),
                Err(e) => return Err(transport(url, "registry probe failed", e)),
            }
        };
        let challenges: Vec<String> = response
            .headers()
            .get_all(reqwest::header::WWW_AUTHENTICATE)
            .iter()
            .filter_map(|v| v.to_str().ok().map(str::to_owned))
            .collect();
        drop(response);
        for realm in realm::bearer_realms(challenges.iter().map(String::as_str)) {
            realm::check_realm(&realm, insecure || self.allow_private_realms)
                .await
                .map_err(|reason| Error::Blocked {
                    url: url.to_owned(),
                    reason: format!("registry {registry} names a refused token realm: {reason}"),
                })?;
        }
        lock(&self.probes).insert(registry.to_owned(), (mode, Instant::now()));
        Ok(mode)
    }

    /// Runs `op` with retries for transient failures, backoff clamped to the deadline.
    async fn retrying<T, F, Fut>(&self, req: &FetchRequest, mut op: F) -> Result<T, Error>
    where
        F: FnMut() -> Fut,
        Fut: Future<Output = Result<T, Error>>,
    {
        let mut attempt = 1;
        loop {
            let e = match op().await {
                Ok(v) => return Ok(v),
                Err(e) => e,
            };
            let delay = worth_retrying(&e)
                .then(|| {
                    self.backoff.delay_within(
                        attempt,
                        rand::random::<f64>(),
                        req.remaining(Instant::now()),
                    )
                })
                .flatten();
            match delay {
                Some(d) => {
                    tracing::debug!(url = %req.url, attempt, error = %e, "retrying after {d:?}");
                    tokio::time::sleep(d).await;
                    attempt += 1;
                }
                None if attempt > 1 => {
                    return Err(Error::DownloadFailed {
                        attempts: attempt,
                        last: Box::new(e),
                    });
                }
                None => return Err(e),
            }
        }
    }
}

/// A registry session: the client for this registry, credentials and mode.
struct Session {
    client: oci_client::Client,
    auth: RegistryAuth,
    url: String,
}

impl Session {
    /// GETs a manifest; checks its sha256 against `expected` when given.
    async fn manifest(
        &self,
        reference: &Reference,
        expected: Option<Sha256Digest>,
    ) -> Result<(bytes::Bytes, Sha256Digest), Error> {
        let (body, _) = self
            .client
            .pull_manifest_raw(reference, &self.auth, layout::ACCEPTED_MANIFESTS)
            .await
            .map_err(|e| map_oci(&self.url, e))?;
        if body.len() > MAX_MANIFEST_SIZE {
            return Err(Error::Manifest {
                url: self.url.clone(),
                reason: format!(
                    "manifest of {} bytes exceeds the limit of {MAX_MANIFEST_SIZE}",
                    body.len()
                ),
                source: None,
            });
        }
        let actual = sha256(&body);
        if let Some(want) = expected
            && want != actual
        {
            return Err(Error::DigestMismatch {
                url: self.url.clone(),
                expected: want.to_prefixed(),
                actual: actual.to_prefixed(),
            });
        }
        Ok((body, actual))
    }
}

fn layout_error(url: &str, e: LayoutError) -> Error {
    match e {
        LayoutError::NoLayout(reasons) => Error::InvalidLayout {
            url: url.to_owned(),
            reasons,
        },
        other => Error::Manifest {
            url: url.to_owned(),
            reason: other.to_string(),
            source: None,
        },
    }
}

impl OciFetcher {
    async fn session(&self, req: &FetchRequest, oci: &OciReference) -> Result<Session, Error> {
        let url = req.url.redacted();
        let registry = oci.registry();
        let creds = self.inner.credentials(req, registry).await?;
        let mode = self
            .inner
            .retrying(req, || self.inner.probe(&url, registry))
            .await?;
        Ok(Session {
            client: self.inner.client(registry, &creds, mode)?,
            auth: creds.to_registry_auth(),
            url,
        })
    }

    async fn resolve_inner(
        &self,
        req: &FetchRequest,
        oci: &OciReference,
    ) -> Result<Sha256Digest, Error> {
        let session = self.session(req, oci).await?;
        let reference = reference_of(oci, None);
        let reported = self
            .inner
            .retrying(req, || async {
                session
                    .client
                    .fetch_manifest_digest(&reference, &session.auth)
                    .await
                    .map_err(|e| map_oci(&session.url, e))
            })
            .await?;
        let digest = match reported.strip_prefix(wasm_cache_core::digest::SHA256_PREFIX) {
            Some(_) => Sha256Digest::parse(&reported).map_err(|_| Error::Manifest {
                url: session.url.clone(),
                reason: "the registry reported a malformed manifest digest".into(),
                source: None,
            })?,
            // Another algorithm: the checksum is still the sha256 of the bytes.
            None => {
                self.inner
                    .retrying(req, || session.manifest(&reference, None))
                    .await?
                    .1
            }
        };
        if let Some(pinned) = oci.sha256_digest()
            && pinned != digest
        {
            return Err(Error::DigestMismatch {
                url: session.url.clone(),
                expected: pinned.to_prefixed(),
                actual: digest.to_prefixed(),
            });
        }
        Ok(digest)
    }

    async fn fetch_inner(
        &self,
        req: &FetchRequest,
        oci: &OciReference,
        sink: &mut dyn ModuleSink,
    ) -> Result<Fetched, Error> {
        let session = self.session(req, oci).await?;
        let url = session.url.clone();
        let reference = reference_of(oci, req.digest);
        let expected = req.digest.or_else(|| oci.sha256_digest());
        let (body, top_digest) = self
            .inner
            .retrying(req, || session.manifest(&reference, expected))
            .await?;
        let choice = match layout::parse_manifest(&body).map_err(|e| layout_error(&url, e))? {
            Parsed::Image(choice) => choice,
            Parsed::Index(entry) => {
                let child = reference.clone_with_digest(entry.digest.to_prefixed());
                let (child_body, _) = self
                    .inner
                    .retrying(req, || session.manifest(&child, Some(entry.digest)))
                    .await?;
                match layout::parse_manifest(&child_body).map_err(|e| layout_error(&url, e))? {
                    Parsed::Image(choice) => choice,
                    Parsed::Index(_) => {
                        return Err(Error::Manifest {
                            url,
                            reason: format!(
                                "the image index entry for {} is itself an index",
                                entry.platform
                            ),
                            source: None,
                        });
                    }
                }
            }
        };
        tracing::debug!(url = %url, layout = ?choice.layout, layer = %choice.digest, size = choice.size, "pulling layer");
        // A layer that cannot possibly fit is refused before downloading it.
        let bound = if choice.layout.is_raw() {
            req.max_size
        } else {
            boxed_limit(req.max_size)
        };
        if choice.size > bound {
            return Err(Error::TooLarge {
                url,
                limit: req.max_size,
            });
        }
        let written = self
            .stream_layer(req, &session, &reference, &choice, sink)
            .await?;
        Ok(Fetched::new(written, Some(top_digest)))
    }

    /// Streams the layer: digest/size verification, then unboxing into `sink`.
    async fn stream_layer(
        &self,
        req: &FetchRequest,
        session: &Session,
        reference: &Reference,
        choice: &LayerChoice,
        sink: &mut dyn ModuleSink,
    ) -> Result<u64, Error> {
        let url = &session.url;
        let digest = choice.digest.to_prefixed();
        // The digest alone (no `urls` of the descriptor): only the registry is asked.
        let mut stream = self
            .inner
            .retrying(req, || async {
                session
                    .client
                    .pull_blob_stream(reference, digest.as_str())
                    .await
                    .map_err(|e| map_oci(url, e))
            })
            .await?;
        let mut verifier = BlobVerifier::new(choice.digest, choice.size, url.clone());
        if let Some(len) = stream.content_length
            && len > choice.size
        {
            return Err(Error::DigestMismatch {
                url: url.clone(),
                expected: format!("{digest} ({} bytes)", choice.size),
                actual: format!("a blob announced as {len} bytes"),
            });
        }
        let mut unboxer = Unboxer::new(sink, req.max_size, choice.rule);
        unboxer.announce_len(Some(choice.size));
        let mut unbox_failure: Option<UnboxError> = None;
        while let Some(item) = stream.next().await {
            match item {
                Ok(bytes) => {
                    verifier.update(&bytes)?;
                    if unbox_failure.is_none()
                        && let Err(e) = unboxer.push(&bytes)
                    {
                        match e {
                            // Keep reading to verify the digest: a corrupted
                            // blob is the better explanation of bad content.
                            UnboxError::Invalid { .. } => unbox_failure = Some(e),
                            other => return Err(other.into_error(&req.url)),
                        }
                    }
                }
                Err(e) => {
                    let digest_error = e
                        .get_ref()
                        .is_some_and(|i| i.is::<oci_client::errors::DigestError>());
                    if digest_error {
                        // oci-client's own check failed at the end of the body; ours
                        // saw the same bytes and names the actual digest.
                        verifier.finish()?;
                        return Err(Error::DigestMismatch {
                            url: url.clone(),
                            expected: digest,
                            actual: "content not matching the registry's Docker-Content-Digest"
                                .into(),
                        });
                    }
                    return Err(Error::Transport {
                        url: url.clone(),
                        reason: format!("reading the layer failed: {}", chain(&e)),
                        source: Some(Box::new(e)),
                    });
                }
            }
        }
        verifier.finish()?;
        if let Some(e) = unbox_failure {
            return Err(e.into_error(&req.url));
        }
        let (_, written) = unboxer.finish().map_err(|e| e.into_error(&req.url))?;
        Ok(written)
    }
}

/// The oci-client reference: by `digest` when given, else as the URL names it.
fn reference_of(oci: &OciReference, digest: Option<Sha256Digest>) -> Reference {
    let registry = oci.registry().to_owned();
    let repository = oci.repository().to_owned();
    match (digest, oci.digest(), oci.tag()) {
        (Some(d), _, _) => Reference::with_digest(registry, repository, d.to_prefixed()),
        (None, Some(d), _) => Reference::with_digest(registry, repository, d.to_owned()),
        (None, None, tag) => {
            Reference::with_tag(registry, repository, tag.unwrap_or("latest").to_owned())
        }
    }
}

#[async_trait]
impl Fetcher for OciFetcher {
    async fn resolve(&self, req: &FetchRequest) -> Result<Option<Sha256Digest>, Error> {
        let oci = self.oci(req)?;
        Self::before_deadline(req, self.resolve_inner(req, oci))
            .await
            .map(Some)
    }

    async fn fetch(&self, req: &FetchRequest, sink: &mut dyn ModuleSink) -> Result<Fetched, Error> {
        let oci = self.oci(req)?;
        Self::before_deadline(req, self.fetch_inner(req, oci, sink)).await
    }

    /// cosign's classic layout: the manifest at `sha256-<hex>.sig` in the same
    /// repository (capped at [`MAX_SIGNATURE_MANIFEST_LEN`]) and each
    /// simple-signing payload it names (capped at its declared size, checked
    /// against its digest). No tag, a manifest over the cap or one that is
    /// not a signature manifest is [`Signatures::Missing`] with the reason.
    async fn signatures(
        &self,
        req: &FetchRequest,
        digest: &Sha256Digest,
    ) -> Result<Signatures, Error> {
        let oci = self.oci(req)?;
        Self::before_deadline(req, self.signatures_inner(req, oci, digest)).await
    }
}

impl OciFetcher {
    async fn signatures_inner(
        &self,
        req: &FetchRequest,
        oci: &OciReference,
        digest: &Sha256Digest,
    ) -> Result<Signatures, Error> {
        let session = self.session(req, oci).await?;
        let tag = signature_tag(digest);
        let reference = Reference::with_tag(
            oci.registry().to_owned(),
            oci.repository().to_owned(),
            tag.clone(),
        );
        let pulled = self
            .inner
            .retrying(req, || async {
                session
                    .client
                    .pull_manifest_raw(&reference, &session.auth, layout::ACCEPTED_MANIFESTS)
                    .await
                    .map_err(|e| map_oci(&session.url, e))
            })
            .await;
        let body = match pulled {
            Ok((body, _)) => body,
            Err(Error::NotFound { .. }) => {
                return Ok(Signatures::Missing(format!(
                    "no signature manifest at tag {tag}"
                )));
            }
            Err(e) => return Err(e),
        };
        // oci-client has read it whole by now; the cap still keeps what is
        // parsed and fetched next small.
        if body.len() as u64 > MAX_SIGNATURE_MANIFEST_LEN {
            return Ok(Signatures::Missing(format!(
                "the signature manifest at tag {tag} is {} bytes, more than the {MAX_SIGNATURE_MANIFEST_LEN} allowed",
                body.len()
            )));
        }
        let refs = match parse_signature_manifest(&body) {
            Ok(refs) => refs,
            Err(reason) => return Ok(Signatures::Missing(format!("tag {tag}: {reason}"))),
        };
        let mut layers = Vec::with_capacity(refs.len());
        for r in &refs {
            let payload = self
                .inner
                .retrying(req, || self.signature_payload(&session, &reference, r))
                .await?;
            layers.push(SignatureLayer {
                media_type: SIMPLE_SIGNING_MEDIA_TYPE.to_owned(),
                payload,
                signature: r.signature.clone(),
            });
        }
        Ok(Signatures::Cosign(layers))
    }

    /// One payload blob, read up to its declared size and checked against its digest.
    async fn signature_payload(
        &self,
        session: &Session,
        reference: &Reference,
        r: &PayloadRef,
    ) -> Result<Vec<u8>, Error> {
        let url = &session.url;
        let digest = r.digest.to_prefixed();
        let mut stream = session
            .client
            .pull_blob_stream(reference, digest.as_str())
            .await
            .map_err(|e| map_oci(url, e))?;
        let mut verifier = BlobVerifier::new(r.digest, r.size, url.clone());
        let mut payload = Vec::new();
        while let Some(item) = stream.next().await {
            let bytes = item.map_err(|e| Error::Transport {
                url: url.clone(),
                reason: format!("reading a signature payload failed: {}", chain(&e)),
                source: Some(Box::new(e)),
            })?;
            // Fails as soon as more than the declared size arrives.
            verifier.update(&bytes)?;
            payload.extend_from_slice(&bytes);
        }
        verifier.finish()?;
        Ok(payload)
    }
}
