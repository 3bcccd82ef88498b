//! [`OciFetcher`] and its builder: the distribution pull protocol over the
//! guarded transport.

use std::collections::HashMap;
use std::ffi::OsString;
use std::fmt;
use std::future::Future;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

use async_trait::async_trait;
use bytes::Bytes;
use http::header::{ACCEPT, AUTHORIZATION, WWW_AUTHENTICATE};
use http::{HeaderValue, StatusCode};
use url::Url;
use wasm_cache_core::retry::Backoff;
use wasm_cache_core::{
    Error, FetchRequest, Fetched, Fetcher, ModuleSink, OciReference, Scheme, Sha256Digest,
    SignatureLayer, Signatures, WASM_MAGIC,
};
use wasm_cache_signature::{
    MAX_SIGNATURE_MANIFEST_LEN, PayloadRef, SIMPLE_SIGNING_MEDIA_TYPE, parse_signature_manifest,
    signature_tag,
};
use wasm_cache_unbox::{UnboxError, Unboxer, boxed_limit};
use wasm_fetch_transport::{
    ProxyConfig, ReadError, Request, Response, RetryDriver, Transport, TransportBuilder,
    is_retryable,
};

use crate::auth::{self, Credentials, Source};
use crate::errors::{MAX_ERROR_BODY, registry_error, shorten};
use crate::layout::{self, LayerChoice, LayoutError, Parsed};
use crate::mirror::{Chain, Mirror, MirrorTarget, Mirrors};
use crate::realm::{self, Challenge};
use crate::verify::{BlobVerifier, sha256};

/// The largest manifest accepted; reading stops at this size.
pub const MAX_MANIFEST_SIZE: usize = 4 * 1024 * 1024;
/// The largest token-service response accepted; reading stops at this size.
pub const MAX_TOKEN_RESPONSE: u64 = 1024 * 1024;
/// How long a registry's scheme (https or, insecure-listed, http) is reused.
const MODE_TTL: Duration = Duration::from_secs(300);
/// How long a token is reused when the token service gives no `expires_in`.
const DEFAULT_TOKEN_TTL: Duration = Duration::from_secs(60);
/// The longest a token is reused.
const MAX_TOKEN_TTL: Duration = Duration::from_secs(300);
/// Entries kept at most in each small cache (modes, tokens).
const MAX_ENTRIES: usize = 256;
/// Manifest bytes kept for a following fetch (`resolve` then `fetch`).
const MEMO_BYTES: usize = 8 * 1024 * 1024;
/// How long a resolved manifest is kept for the fetch that follows.
const MEMO_TTL: Duration = Duration::from_secs(60);

mod referrers;

pub(crate) fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(PoisonError::into_inner)
}

/// Builds an [`OciFetcher`].
#[derive(Debug, Clone)]
pub struct OciFetcherBuilder {
    transport: TransportBuilder,
    backoff: Backoff,
    allow_private_realms: bool,
    docker_config_dir: Option<Option<PathBuf>>,
    credential_helper_path: Option<OsString>,
    mirrors: Vec<(String, Mirror)>,
}

impl Default for OciFetcherBuilder {
    fn default() -> Self {
        Self {
            transport: Transport::builder(),
            backoff: Backoff::default(),
            allow_private_realms: false,
            docker_config_dir: None,
            credential_helper_path: None,
            mirrors: Vec::new(),
        }
    }
}

impl OciFetcherBuilder {
    /// Registries reached over plain HTTP or HTTPS without certificate
    /// verification, in the transport's one syntax
    /// ([`InsecureHosts`](wasm_fetch_transport::InsecureHosts)): `host:port`,
    /// `host` for any port, or `*` for all. For a listed registry, HTTPS
    /// (unverified) is tried first and plain HTTP when TLS cannot be set up;
    /// every other registry gets verified HTTPS only. A listed registry named
    /// with a port other than 443 (`localhost:5000`) is asked in plain HTTP first, without
    /// credentials, and over HTTPS when that gets no HTTP answer or a `400`.
    /// Adds to the list.
    #[must_use]
    pub fn insecure_hosts<I, S>(mut self, registries: I) -> Self
    where
        I: IntoIterator<Item = S>,
        S: Into<String>,
    {
        self.transport = self.transport.insecure_hosts(registries);
        self
    }

    /// The former name of [`insecure_hosts`](Self::insecure_hosts).
    #[must_use]
    #[deprecated(
        since = "0.1.0",
        note = "use `insecure_hosts` (one name across the builders)"
    )]
    pub fn insecure_registries<I, S>(self, registries: I) -> Self
    where
        I: IntoIterator<Item = S>,
        S: Into<String>,
    {
        self.insecure_hosts(registries)
    }

    /// A PEM file of extra CA certificates trusted for registries that are not
    /// insecure-listed (added to the system roots). Read once, by
    /// [`build`](Self::build). Adds to the trusted set.
    #[must_use]
    pub fn ca_file(mut self, path: impl AsRef<Path>) -> Self {
        self.transport = self.transport.ca_file(path);
        self
    }

    /// Extra CA certificates, PEM, like [`ca_file`](Self::ca_file).
    #[must_use]
    pub fn ca_pem(mut self, pem: impl Into<Vec<u8>>) -> Self {
        self.transport = self.transport.ca_pem(pem);
        self
    }

    /// Whether the system's root certificates are trusted (default true).
    #[must_use]
    pub fn native_roots(mut self, enabled: bool) -> Self {
        self.transport = self.transport.native_roots(enabled);
        self
    }

    /// Address ranges never to connect to (CIDRs or addresses), for
    /// registries, blob redirects and token realms alike.
    #[must_use]
    pub fn blocked_cidrs<I, S>(mut self, cidrs: I) -> Self
    where
        I: IntoIterator<Item = S>,
        S: AsRef<str>,
    {
        self.transport = self.transport.blocked_cidrs(cidrs);
        self
    }

    /// The proxy configuration (default: `HTTP_PROXY`, `HTTPS_PROXY` and
    /// `NO_PROXY` from the environment).
    #[must_use]
    pub fn proxy(mut self, proxy: ProxyConfig) -> Self {
        self.transport = self.transport.proxy(proxy);
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

    /// The directories searched for `docker-credential-<name>` helpers, in
    /// `PATH` syntax (default: the process's `PATH` when a helper is run).
    /// Only the docker config's `credHelpers` / `credsStore` name helpers;
    /// a pull secret never does.
    #[must_use]
    pub fn credential_helper_path(mut self, path: impl Into<OsString>) -> Self {
        self.credential_helper_path = Some(path.into());
        self
    }

    /// Adds a mirror of `registry` (as written in references: `ghcr.io`,
    /// `127.0.0.1:5000`), tried after the mirrors added before it for that
    /// registry and before the registry itself. See [`Mirror`] for what a
    /// mirror is trusted with (nothing a digest does not check).
    #[must_use]
    pub fn mirror(mut self, registry: impl Into<String>, mirror: Mirror) -> Self {
        self.mirrors.push((registry.into(), mirror));
        self
    }

    /// Checks the options as [`build`](Self::build) would (the transport's,
    /// see [`TransportBuilder::check`], and the mirrors'), building no
    /// fetcher: a caller that builds it on first use can report a bad option
    /// at once.
    ///
    /// # Errors
    /// As [`build`](Self::build).
    pub fn check(&self) -> Result<(), Error> {
        self.transport.check()?;
        crate::mirror::endpoints(&self.transport, &self.mirrors).map(drop)
    }

    /// Builds the fetcher: reads the CA bundles; the system's trust roots
    /// are loaded once per process, by the first HTTPS request that verifies
    /// a certificate.
    ///
    /// # Errors
    /// [`Error::InvalidConfig`] for an unreadable CA file, a bundle with no PEM
    /// certificate, a malformed insecure-registry entry or proxy variable, a
    /// mirror whose URL or registry is not usable.
    pub fn build(self) -> Result<OciFetcher, Error> {
        let mirrors = crate::mirror::endpoints(&self.transport, &self.mirrors)?;
        let transport = self.transport.build()?;
        let mirrors = crate::mirror::with_shared(mirrors, &transport);
        let docker_config_dir = self
            .docker_config_dir
            .unwrap_or_else(auth::default_docker_config_dir);
        Ok(OciFetcher {
            inner: Arc::new(Inner {
                transport,
                backoff: self.backoff,
                allow_private_realms: self.allow_private_realms,
                docker_config_dir,
                helper_path: self.credential_helper_path,
                helper_cache: Mutex::new(HashMap::new()),
                modes: Mutex::new(HashMap::new()),
                auth: Mutex::new(HashMap::new()),
                memo: Mutex::new(Memo::default()),
                mirrors,
            }),
        })
    }
}

/// A [`Fetcher`] for `oci://` URLs. Cheap to clone (shared state).
#[derive(Clone)]
pub struct OciFetcher {
    pub(crate) inner: Arc<Inner>,
}

/// How a registry's requests are authorized, once learnt.
#[derive(Clone)]
enum Authz {
    /// A bearer token from the realm, until `until`.
    Token(HeaderValue, Instant),
    /// Basic credentials (the registry asked for them).
    Basic(HeaderValue),
}

/// Manifests read by `resolve`, kept briefly for the `fetch` that follows,
/// keyed by (registry, repository, credentials hash, digest). Content-addressed:
/// an entry is the bytes that hash to its digest.
#[derive(Default)]
struct Memo {
    entries: Vec<(MemoKey, Bytes, Instant)>,
}

type MemoKey = (String, String, [u8; 32], Sha256Digest);

impl Memo {
    fn get(&mut self, key: &MemoKey) -> Option<Bytes> {
        self.entries.retain(|(_, _, at)| at.elapsed() < MEMO_TTL);
        self.entries
            .iter()
            .find(|(k, _, _)| k == key)
            .map(|(_, b, _)| b.clone())
    }

    fn put(&mut self, key: MemoKey, bytes: Bytes) {
        self.entries.retain(|(k, _, _)| *k != key);
        self.entries.push((key, bytes, Instant::now()));
        while self.entries.iter().map(|(_, b, _)| b.len()).sum::<usize>() > MEMO_BYTES {
            self.entries.remove(0);
        }
    }
}

pub(crate) struct Inner {
    pub(crate) transport: Transport,
    pub(crate) backoff: Backoff,
    allow_private_realms: bool,
    docker_config_dir: Option<PathBuf>,
    helper_path: Option<OsString>,
    /// Credential helpers' answers, keyed by (helper, registry), for the
    /// process's life; memory only.
    helper_cache: Mutex<HashMap<(String, String), Credentials>>,
    /// Registries found to speak plain HTTP (insecure-listed only), with when.
    modes: Mutex<HashMap<String, (Mode, Instant)>>,
    /// Keyed by a hash of (registry, repository, credentials); never the secret.
    auth: Mutex<HashMap<[u8; 32], Authz>>,
    memo: Mutex<Memo>,
    /// Each registry's mirrors, in order (keys lower-cased).
    pub(crate) mirrors: Mirrors,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Mode {
    Https,
    Http,
}

impl fmt::Debug for OciFetcher {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let i = &self.inner;
        f.debug_struct("OciFetcher")
            .field("transport", &i.transport)
            .field("backoff", &i.backoff)
            .field("allow_private_realms", &i.allow_private_realms)
            .field("docker_config_dir", &i.docker_config_dir)
            .field("mirrors", &i.mirrors)
            .field("cached_authorizations", &lock(&i.auth).len())
            .finish()
    }
}

/// Everything one operation (resolve or fetch) needs to talk to one host:
/// the registry itself, or one of its mirrors.
pub(crate) struct Session<'a> {
    pub(crate) inner: &'a Inner,
    /// The module URL, redacted: what errors name.
    pub(crate) url: String,
    /// The host talked to (`host[:port]`): the registry, or a mirror.
    pub(crate) registry: String,
    /// For a mirror: the registry it mirrors (sent as `ns=`), its fixed
    /// scheme and path prefix.
    pub(crate) mirror: Option<MirrorTarget>,
    /// The transport of this host (a mirror with its own CA or insecure
    /// setting has its own, built by the same transport code).
    pub(crate) transport: Transport,
    /// The retry schedule: a mirror gets one attempt per operation, the next
    /// source being the retry.
    pub(crate) backoff: Backoff,
    pub(crate) repository: String,
    pub(crate) creds: Credentials,
    pub(crate) creds_key: [u8; 32],
    /// The helper-cache entry the credentials came from, if any: dropped
    /// when the registry refuses them (a rotated or expired credential), so
    /// the next operation asks the helper again.
    pub(crate) helper_key: Option<(String, String)>,
    pub(crate) insecure: bool,
    pub(crate) deadline: Instant,
}

fn header(value: &str) -> Option<HeaderValue> {
    let mut v = HeaderValue::from_str(value).ok()?;
    v.set_sensitive(true);
    Some(v)
}

fn basic_header(user: &str, password: &str) -> Option<HeaderValue> {
    use base64::Engine as _;
    header(&format!(
        "Basic {}",
        base64::engine::general_purpose::STANDARD.encode(format!("{user}:{password}"))
    ))
}

impl Session<'_> {
    fn auth_key(&self) -> [u8; 32] {
        let mut ctx = ring::digest::Context::new(&ring::digest::SHA256);
        ctx.update(&self.creds_key);
        ctx.update(self.repository.as_bytes());
        let mut out = [0u8; 32];
        out.copy_from_slice(ctx.finish().as_ref());
        out
    }

    fn mode(&self) -> Option<Mode> {
        if let Some(m) = &self.mirror {
            return Some(m.mode);
        }
        lock(&self.inner.modes)
            .get(&self.registry)
            .filter(|(_, at)| at.elapsed() < MODE_TTL)
            .map(|(m, _)| *m)
    }

    fn remember_mode(&self, mode: Mode) {
        let mut modes = lock(&self.inner.modes);
        if modes.len() >= MAX_ENTRIES {
            modes.clear();
        }
        modes.insert(self.registry.clone(), (mode, Instant::now()));
    }

    /// The `Authorization` to send up front: a registry token from the
    /// secret, or what this registry asked for before.
    fn authorization(&self) -> Option<HeaderValue> {
        if let Credentials::Bearer(t) = &self.creds {
            return header(&format!("Bearer {t}"));
        }
        match lock(&self.inner.auth).get(&self.auth_key())? {
            Authz::Token(v, until) if Instant::now() < *until => Some(v.clone()),
            Authz::Token(..) => None,
            Authz::Basic(v) => Some(v.clone()),
        }
    }

    fn remember(&self, authz: Authz) {
        let mut map = lock(&self.inner.auth);
        if map.len() >= MAX_ENTRIES {
            map.clear();
        }
        map.insert(self.auth_key(), authz);
    }

    fn forget_helper_answer(&self) {
        if let Some(key) = &self.helper_key
            && lock(&self.inner.helper_cache).remove(key).is_some()
        {
            tracing::info!(registry = %self.registry, helper = %format!("docker-credential-{}", key.0), "credentials refused; the helper will be asked again");
        }
    }

    fn forget_authorization(&self) {
        self.forget_helper_answer();
        lock(&self.inner.auth).remove(&self.auth_key());
    }

    fn endpoint(&self, mode: Mode, path: &str) -> Result<Url, Error> {
        let scheme = match mode {
            Mode::Https => "https",
            Mode::Http => "http",
        };
        let prefix = self.mirror.as_ref().map_or("", |m| m.prefix.as_str());
        let mut url = Url::parse(&format!(
            "{scheme}://{}{prefix}/v2/{}/{path}",
            self.registry, self.repository
        ))
        .map_err(|e| Error::InvalidUrl {
            url: self.url.clone(),
            reason: format!("cannot form a registry URL: {e}"),
        })?;
        // As containerd asks a mirror: the upstream's repository path, and the
        // upstream named by `ns`, for mirrors serving several registries.
        if let Some(m) = &self.mirror {
            url.query_pairs_mut().append_pair("ns", &m.ns);
        }
        Ok(url)
    }

    /// One request to the registry: over the known scheme (for an
    /// insecure-listed registry, https first and then http), with the
    /// authorization known so far; a 401 is answered once (token or basic)
    /// and the request sent again.
    async fn get(&self, path: &str, accept: Option<&str>) -> Result<Response, Error> {
        let mut response = self.send_once(path, accept, self.authorization()).await?;
        if response.status != StatusCode::UNAUTHORIZED {
            return Ok(response);
        }
        let challenges: Vec<Challenge> = realm::challenges(
            response
                .headers
                .get_all(WWW_AUTHENTICATE)
                .iter()
                .filter_map(|v| v.to_str().ok()),
        );
        drop_body(&mut response).await;
        let authz = self.answer(&challenges).await?;
        let Some(authz) = authz else {
            return Err(self.unauthorized(
                "the registry answered 401 Unauthorized and no credentials were given for it",
            ));
        };
        let value = match &authz {
            Authz::Token(v, _) | Authz::Basic(v) => v.clone(),
        };
        self.remember(authz);
        let response = self.send_once(path, accept, Some(value)).await?;
        if response.status == StatusCode::UNAUTHORIZED {
            self.forget_authorization();
        }
        Ok(response)
    }

    fn unauthorized(&self, reason: &str) -> Error {
        self.forget_helper_answer();
        Error::Unauthorized {
            url: self.url.clone(),
            reason: reason.to_owned(),
        }
    }

    async fn send_once(
        &self,
        path: &str,
        accept: Option<&str>,
        authorization: Option<HeaderValue>,
    ) -> Result<Response, Error> {
        let request = |mode: Mode| -> Result<Request, Error> {
            let mut r = Request::get(self.endpoint(mode, path)?).label(self.url.clone());
            if let Some(a) = accept.and_then(|a| HeaderValue::from_str(a).ok()) {
                r = r.header(ACCEPT, a);
            }
            if let Some(v) = &authorization {
                r = r.header(AUTHORIZATION, v.clone());
            }
            Ok(r)
        };
        match self.mode() {
            Some(mode) => self.transport.send(request(mode)?).await,
            None if !self.insecure => self.transport.send(request(Mode::Https)?).await,
            // Boxed: its futures would otherwise make every request's future
            // (and so resolve's and fetch's) larger for a first request only.
            None if plain_first(&self.registry) => {
                Box::pin(self.plain_first(path, accept, authorization)).await
            }
            None => match self.transport.send(request(Mode::Https)?).await {
                Ok(r) => {
                    self.remember_mode(Mode::Https);
                    Ok(r)
                }
                // TLS cannot be set up with this registry: plain HTTP (listed registries only).
                Err(e @ Error::Transport { .. }) => {
                    tracing::debug!(registry = %self.registry, error = %e, "https failed; trying http");
                    let r = self.transport.send(request(Mode::Http)?).await?;
                    self.remember_mode(Mode::Http);
                    Ok(r)
                }
                Err(e) => Err(e),
            },
        }
    }

    /// The first request to an insecure-listed registry named with its port
    /// (`localhost:5000`, not 443), whose scheme is not known yet: one port serves
    /// either TLS or plain HTTP, and such registries are nearly always plain
    /// (a local or test registry), so the request goes in plain HTTP first,
    /// without any `Authorization` (credentials never go in clear to a port
    /// that may be TLS). An HTTP answer settles it (a 401 is then asked again
    /// with the authorization we had); a transport failure or a `400` (what
    /// a TLS server answers to plain HTTP) moves to HTTPS, unverified. A
    /// plain registry thus costs one connection and no failed TLS handshake.
    /// Registries named without a port keep HTTPS first: port 80 may be
    /// filtered, and a connect timeout there would cost every pull.
    async fn plain_first(
        &self,
        path: &str,
        accept: Option<&str>,
        authorization: Option<HeaderValue>,
    ) -> Result<Response, Error> {
        let request = |mode: Mode, authorization: Option<&HeaderValue>| -> Result<Request, Error> {
            let mut r = Request::get(self.endpoint(mode, path)?).label(self.url.clone());
            if let Some(a) = accept.and_then(|a| HeaderValue::from_str(a).ok()) {
                r = r.header(ACCEPT, a);
            }
            if let Some(v) = authorization {
                r = r.header(AUTHORIZATION, v.clone());
            }
            Ok(r)
        };
        let plain = match self.transport.send(request(Mode::Http, None)?).await {
            Ok(r) if r.status == StatusCode::BAD_REQUEST => Some(r),
            Ok(mut r) => {
                self.remember_mode(Mode::Http);
                if r.status == StatusCode::UNAUTHORIZED && authorization.is_some() {
                    drop_body(&mut r).await;
                    return self
                        .transport
                        .send(request(Mode::Http, authorization.as_ref())?)
                        .await;
                }
                return Ok(r);
            }
            Err(Error::Transport { .. }) => None,
            Err(e) => return Err(e),
        };
        tracing::debug!(registry = %self.registry, "no plain HTTP answer; trying https");
        match self
            .transport
            .send(request(Mode::Https, authorization.as_ref())?)
            .await
        {
            Ok(r) => {
                self.remember_mode(Mode::Https);
                Ok(r)
            }
            // Not TLS either: the plain answer was the registry's own 400.
            Err(Error::Transport { .. }) if plain.is_some() => {
                self.remember_mode(Mode::Http);
                Ok(plain.expect("checked just above"))
            }
            Err(e) => Err(e),
        }
    }

    /// Answers the challenges of a 401: a token from a Bearer realm, or Basic
    /// credentials; `None` when we have nothing to answer with.
    async fn answer(&self, challenges: &[Challenge]) -> Result<Option<Authz>, Error> {
        if let Some(bearer) = challenges.iter().find(|c| c.scheme == "bearer") {
            return self.token(bearer).await.map(Some);
        }
        if challenges.iter().any(|c| c.scheme == "basic")
            && let Credentials::Basic { user, password } = &self.creds
        {
            return Ok(basic_header(user, password).map(Authz::Basic));
        }
        Ok(None)
    }

    fn refused_realm(&self, reason: &str) -> Error {
        Error::Blocked {
            url: self.url.clone(),
            reason: format!(
                "registry {} names a refused token realm: {reason}",
                self.registry
            ),
        }
    }

    /// The Bearer token flow: the realm is checked (https unless the registry
    /// is insecure-listed), then asked through the guarded transport (strict
    /// unless insecure-listed or private realms are allowed), with our Basic
    /// credentials if any; its answer is read up to [`MAX_TOKEN_RESPONSE`].
    ///
    /// With an identity token the realm is asked by `POST` instead: the
    /// OAuth2 refresh-token grant (`grant_type=refresh_token`, `service`,
    /// `scope`, `refresh_token`, `client_id`) of the distribution token spec.
    async fn token(&self, challenge: &Challenge) -> Result<Authz, Error> {
        let raw = challenge
            .param("realm")
            .ok_or_else(|| self.refused_realm("the Bearer challenge names no realm"))?;
        let mut url = realm::realm_url(raw, self.insecure).map_err(|r| self.refused_realm(&r))?;
        let scope = challenge.param("scope").map_or_else(
            || format!("repository:{}:pull", self.repository),
            str::to_owned,
        );
        let strict = !(self.insecure || self.inner.allow_private_realms);
        let mut request = if let Credentials::IdentityToken(refresh) = &self.creds {
            let mut form = url::form_urlencoded::Serializer::new(String::new());
            form.append_pair("grant_type", "refresh_token");
            if let Some(service) = challenge.param("service") {
                form.append_pair("service", service);
            }
            form.append_pair("scope", &scope);
            form.append_pair("refresh_token", refresh);
            form.append_pair("client_id", "wasm-cache");
            Request::post_form(url, form.finish())
        } else {
            {
                let mut q = url.query_pairs_mut();
                if let Some(service) = challenge.param("service") {
                    q.append_pair("service", service);
                }
                q.append_pair("scope", &scope);
            }
            Request::get(url)
        };
        request = request.label(self.url.clone()).strict(strict);
        if let Credentials::Basic { user, password } = &self.creds
            && let Some(v) = basic_header(user, password)
        {
            request = request.header(AUTHORIZATION, v);
        }
        let response = self.transport.send(request).await.map_err(|e| match e {
            Error::Blocked { reason, .. } => self.refused_realm(&reason),
            other => other,
        })?;
        let status = response.status;
        let body = match response.bytes_limited(MAX_TOKEN_RESPONSE).await {
            Ok(b) => b,
            Err(ReadError::TooLarge { limit }) => {
                return Err(self.unauthorized(&format!(
                    "the token service's answer exceeds the limit of {limit} bytes"
                )));
            }
            Err(ReadError::Transport(e)) => return Err(e),
        };
        if !status.is_success() {
            let text = String::from_utf8_lossy(&body[..body.len().min(512)]).into_owned();
            return Err(if status.is_server_error() {
                Error::Status {
                    url: self.url.clone(),
                    code: status.as_u16(),
                }
            } else {
                self.unauthorized(&format!(
                    "the token service refused ({}): {}",
                    status.as_u16(),
                    shorten(&text)
                ))
            });
        }
        #[derive(serde::Deserialize)]
        struct TokenAnswer {
            #[serde(default)]
            token: Option<String>,
            #[serde(default)]
            access_token: Option<String>,
            #[serde(default)]
            expires_in: Option<u64>,
        }
        let answer: TokenAnswer = serde_json::from_slice(&body)
            .map_err(|_| self.unauthorized("the token service's answer is not a JSON token"))?;
        let token = answer
            .token
            .filter(|t| !t.is_empty())
            .or(answer.access_token.filter(|t| !t.is_empty()))
            .ok_or_else(|| self.unauthorized("the token service's answer holds no token"))?;
        let value = header(&format!("Bearer {token}"))
            .ok_or_else(|| self.unauthorized("the token service's token is not a valid header"))?;
        let ttl = answer
            .expires_in
            .map_or(DEFAULT_TOKEN_TTL, Duration::from_secs)
            .min(MAX_TOKEN_TTL);
        // Renew a little early so a token never expires mid-pull.
        let until = Instant::now() + ttl.saturating_sub(Duration::from_secs(5));
        Ok(Authz::Token(value, until))
    }

    /// Runs `op` with retries for transient failures, backoff clamped to the deadline.
    async fn retrying<T, F, Fut>(&self, mut op: F) -> Result<T, Error>
    where
        F: FnMut() -> Fut,
        Fut: Future<Output = Result<T, Error>>,
    {
        let mut retry = RetryDriver::new(self.backoff, self.deadline);
        loop {
            let attempt = retry.start();
            let e = match op().await {
                Ok(v) => return Ok(v),
                Err(e) => e,
            };
            if is_retryable(&e) && retry.backoff().await {
                tracing::debug!(url = %self.url, attempt, error = %e, "retrying");
                continue;
            }
            return Err(if attempt > 1 {
                Error::DownloadFailed {
                    attempts: attempt,
                    last: Box::new(e),
                }
            } else {
                e
            });
        }
    }

    /// GETs a manifest by tag or digest, reading at most [`MAX_MANIFEST_SIZE`]
    /// bytes; the digest is computed from the bytes read and checked against
    /// `Docker-Content-Digest` (when given) and `expected` (when given).
    async fn manifest_once(
        &self,
        reference: &str,
        expected: Option<Sha256Digest>,
    ) -> Result<(Bytes, Sha256Digest), Error> {
        let accept = layout::ACCEPTED_MANIFESTS.join(", ");
        let mut response = self
            .get(&format!("manifests/{reference}"), Some(&accept))
            .await?;
        if response.status != StatusCode::OK {
            return Err(self.refusal(&mut response).await);
        }
        let reported = response
            .headers
            .get("docker-content-digest")
            .and_then(|v| v.to_str().ok())
            .map(str::to_owned);
        let body = response
            .bytes_limited(MAX_MANIFEST_SIZE as u64)
            .await
            .map_err(|e| match e {
                ReadError::TooLarge { limit } => Error::Manifest {
                    url: self.url.clone(),
                    reason: format!("manifest exceeds the limit of {limit} bytes"),
                    source: None,
                },
                ReadError::Transport(e) => e,
            })?;
        let actual = sha256(&body);
        if let Some(reported) = reported.as_deref()
            && reported.starts_with(wasm_cache_core::digest::SHA256_PREFIX)
            && reported != actual.to_prefixed()
        {
            return Err(Error::DigestMismatch {
                url: self.url.clone(),
                expected: format!("{} (Docker-Content-Digest)", shorten(reported)),
                actual: actual.to_prefixed(),
            });
        }
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

    fn memo_key(&self, digest: Sha256Digest) -> MemoKey {
        (
            self.registry.clone(),
            self.repository.clone(),
            self.creds_key,
            digest,
        )
    }

    /// The manifest `digest` from the memo, or from the registry.
    async fn manifest_by_digest(&self, digest: Sha256Digest) -> Result<Bytes, Error> {
        if let Some(b) = lock(&self.inner.memo).get(&self.memo_key(digest)) {
            return Ok(b);
        }
        let reference = digest.to_prefixed();
        let (body, _) = self
            .retrying(|| self.manifest_once(&reference, Some(digest)))
            .await?;
        Ok(body)
    }

    /// The manifest a reference names (by tag, or by digest when pinned).
    async fn manifest(
        &self,
        reference: &str,
        expected: Option<Sha256Digest>,
    ) -> Result<(Bytes, Sha256Digest), Error> {
        if let Some(d) = expected {
            return Ok((self.manifest_by_digest(d).await?, d));
        }
        let (body, digest) = self
            .retrying(|| self.manifest_once(reference, None))
            .await?;
        Ok((body, digest))
    }

    /// The error for a non-success answer (reading at most a little of its body).
    async fn refusal(&self, response: &mut Response) -> Error {
        let code = response.status.as_u16();
        let mut body = Vec::new();
        while let Ok(Some(chunk)) = response.chunk().await {
            body.extend_from_slice(&chunk);
            if body.len() as u64 >= MAX_ERROR_BODY {
                break;
            }
        }
        registry_error(&self.url, code, &body)
    }

    /// GETs cosign's signature manifest at `tag`, reading at most
    /// [`MAX_SIGNATURE_MANIFEST_LEN`] bytes; `Ok(Err(reason))` when there is
    /// none (404) or it is over the cap.
    async fn signature_manifest_once(&self, tag: &str) -> Result<Result<Bytes, String>, Error> {
        let accept = layout::ACCEPTED_MANIFESTS.join(", ");
        let mut response = self.get(&format!("manifests/{tag}"), Some(&accept)).await?;
        if response.status == StatusCode::NOT_FOUND {
            drop_body(&mut response).await;
            return Ok(Err(format!("no signature manifest at tag {tag}")));
        }
        if response.status != StatusCode::OK {
            return Err(self.refusal(&mut response).await);
        }
        match response.bytes_limited(MAX_SIGNATURE_MANIFEST_LEN).await {
            Ok(body) => Ok(Ok(body)),
            Err(ReadError::TooLarge { limit }) => Ok(Err(format!(
                "the signature manifest at tag {tag} is more than the {limit} allowed"
            ))),
            Err(ReadError::Transport(e)) => Err(e),
        }
    }

    /// GETs a signature payload blob: at most its declared size, checked
    /// against its digest.
    async fn payload_once(&self, r: &PayloadRef) -> Result<Bytes, Error> {
        let digest = r.digest.to_prefixed();
        let mut response = self.get(&format!("blobs/{digest}"), None).await?;
        if response.status != StatusCode::OK {
            return Err(self.refusal(&mut response).await);
        }
        let body = response.bytes_limited(r.size).await.map_err(|e| match e {
            ReadError::TooLarge { .. } => Error::DigestMismatch {
                url: self.url.clone(),
                expected: format!("{digest} ({} bytes)", r.size),
                actual: "a longer blob".to_owned(),
            },
            ReadError::Transport(e) => e,
        })?;
        let actual = sha256(&body);
        if actual != r.digest || body.len() as u64 != r.size {
            return Err(Error::DigestMismatch {
                url: self.url.clone(),
                expected: digest,
                actual: actual.to_prefixed(),
            });
        }
        Ok(body)
    }
}

/// Whether an insecure-listed registry is asked in plain HTTP first: it is
/// named with its port (`host:port`, `[v6]:port`), and that port is not 443
/// (HTTPS's own).
fn plain_first(registry: &str) -> bool {
    let named = match registry.strip_prefix('[') {
        Some(rest) => rest
            .split_once(']')
            .is_some_and(|(_, p)| p.starts_with(':')),
        None => registry
            .rsplit_once(':')
            .is_some_and(|(h, _)| !h.contains(':')),
    };
    named && wasm_fetch_transport::split_registry(registry).1 != 443
}

/// Reads and discards what is left of a small body (a 401's), so the
/// connection can be reused; gives up after a little.
async fn drop_body(response: &mut Response) {
    let mut seen = 0usize;
    while let Ok(Some(chunk)) = response.chunk().await {
        seen += chunk.len();
        if seen as u64 > MAX_ERROR_BODY {
            break;
        }
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
    /// A builder with the defaults: no insecure registries, system roots only,
    /// the reference's backoff, the default docker config, proxies from the
    /// environment.
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

    pub(crate) async fn session<'a>(
        &'a self,
        req: &FetchRequest,
        oci: &OciReference,
    ) -> Result<Session<'a>, Error> {
        let registry = oci.registry().to_owned();
        let (creds, helper_key) = self.credentials(req, &registry).await?;
        Ok(Session {
            inner: &self.inner,
            url: req.url.redacted(),
            creds_key: creds.cache_key(&registry),
            helper_key,
            creds,
            insecure: self.inner.transport.insecure().matches_registry(&registry),
            repository: oci.repository().to_owned(),
            registry,
            mirror: None,
            transport: self.inner.transport.clone(),
            backoff: self.inner.backoff,
            deadline: req.deadline,
        })
    }

    /// The credentials for `registry`: the pull secret (never a source of
    /// helpers), else the operator's docker config as docker resolves it
    /// (`credHelpers[registry]`, else `credsStore`, else `auths`), else
    /// anonymous. Logs which source answered, never the credentials.
    /// With the credentials comes the helper-cache key they were kept under.
    pub(crate) async fn credentials(
        &self,
        req: &FetchRequest,
        registry: &str,
    ) -> Result<(Credentials, Option<(String, String)>), Error> {
        if let Some(secret) = req.pull_secret.as_ref().filter(|s| !s.expose().is_empty()) {
            let creds = auth::credentials_for(secret.expose(), registry, Source::PullSecret)?;
            tracing::info!(
                registry,
                source = "pull secret",
                kind = creds.kind(),
                "registry credentials"
            );
            return Ok((creds, None));
        }
        let Some(dir) = &self.inner.docker_config_dir else {
            tracing::debug!(registry, "no docker config: anonymous");
            return Ok((Credentials::Anonymous, None));
        };
        let path = dir.join("config.json");
        let bytes = match tokio::fs::read(&path).await {
            Ok(bytes) => bytes,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                tracing::debug!(registry, config = %path.display(), "no docker config file: anonymous");
                return Ok((Credentials::Anonymous, None));
            }
            Err(e) => {
                return Err(Error::InvalidConfig {
                    reason: format!("reading docker config {}: {e}", path.display()),
                });
            }
        };
        let lookup = auth::lookup(&bytes, registry, &path)?;
        if let Some((helper, per_registry)) = &lookup.helper {
            let key = (helper.clone(), auth::normalise_key(registry));
            let cached = lock(&self.inner.helper_cache).get(&key).cloned();
            let found = match cached {
                Some(c) => Some(c),
                None => {
                    let got = Box::pin(crate::helper::run(
                        helper,
                        &auth::helper_server(registry),
                        self.inner.helper_path.as_deref(),
                        req.deadline,
                        &req.url.redacted(),
                    ))
                    .await?;
                    if let Some(c) = &got {
                        let mut cache = lock(&self.inner.helper_cache);
                        if cache.len() >= MAX_ENTRIES {
                            cache.clear();
                        }
                        cache.insert(key.clone(), c.clone());
                    }
                    got
                }
            };
            if let Some(creds) = found {
                tracing::info!(
                    registry,
                    source = if *per_registry { "credHelpers" } else { "credsStore" },
                    helper = %format!("docker-credential-{helper}"),
                    kind = creds.kind(),
                    "registry credentials"
                );
                return Ok((creds, Some(key)));
            }
            tracing::info!(registry, helper = %format!("docker-credential-{helper}"), "the credential helper has no credentials for this registry");
        }
        tracing::info!(registry, source = "docker config auths", config = %path.display(), kind = lookup.auths.kind(), "registry credentials");
        Ok((lookup.auths, None))
    }

    async fn resolve_inner(
        &self,
        req: &FetchRequest,
        oci: &OciReference,
    ) -> Result<Sha256Digest, Error> {
        let reference = oci
            .digest()
            .map_or_else(|| oci.tag().unwrap_or("latest").to_owned(), str::to_owned);
        let pinned = oci.sha256_digest();
        // The registry's mirrors first, then the registry (see `mirror`).
        let mut chain = Chain::new(self, req, oci, "manifest");
        loop {
            let s = chain.next().await?;
            // One GET: the bytes are kept for the fetch that follows, so a
            // cold pull reads the manifest once (no HEAD, then GET). A pinned
            // digest is checked against the bytes, whoever served them.
            match chain
                .attempt(s.retrying(|| s.manifest_once(&reference, pinned)))
                .await
            {
                Ok((body, digest)) => {
                    chain.served();
                    lock(&self.inner.memo).put(s.memo_key(digest), body);
                    return Ok(digest);
                }
                Err(e) => chain.failed(e)?,
            }
        }
    }

    async fn fetch_inner(
        &self,
        req: &FetchRequest,
        oci: &OciReference,
        sink: &mut dyn ModuleSink,
    ) -> Result<Fetched, Error> {
        // The registry's mirrors first, then the registry: everything is
        // asked by digest and checked, so any source may serve it; one that
        // fails (or serves wrong bytes) hands over to the next, the sink
        // restarted if it had received bytes.
        let mut chain = Chain::new(self, req, oci, "module");
        loop {
            let s = chain.next().await?;
            let mut touched = false;
            match chain
                .attempt(Box::pin(self.fetch_at(
                    req,
                    oci,
                    &s,
                    &mut *sink,
                    &mut touched,
                )))
                .await
            {
                Ok((written, top_digest)) => {
                    let source = chain.served();
                    return Ok(Fetched::new(written, Some(top_digest)).with_source(source));
                }
                Err(e) => {
                    if touched && !sink.restart() {
                        // The sink cannot take the module again: no other source.
                        return Err(e);
                    }
                    chain.failed(e)?;
                }
            }
        }
    }

    /// The whole fetch from one source: manifest, index entry, layer.
    async fn fetch_at(
        &self,
        req: &FetchRequest,
        oci: &OciReference,
        s: &Session<'_>,
        sink: &mut dyn ModuleSink,
        touched: &mut bool,
    ) -> Result<(u64, Sha256Digest), Error> {
        let url = s.url.clone();
        let expected = req.digest.or_else(|| oci.sha256_digest());
        let reference = oci
            .digest()
            .map_or_else(|| oci.tag().unwrap_or("latest").to_owned(), str::to_owned);
        let (body, top_digest) = s.manifest(&reference, expected).await?;
        let choice = match layout::parse_manifest(&body).map_err(|e| layout_error(&url, e))? {
            Parsed::Image(choice) => choice,
            Parsed::Index(entry) => {
                let child_body = s.manifest_by_digest(entry.digest).await?;
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
        let written = self.stream_layer(req, s, &choice, sink, touched).await?;
        Ok((written, top_digest))
    }

    /// Streams the layer: size (and, unless the sink checks it, digest)
    /// verification, then unboxing into `sink`.
    async fn stream_layer(
        &self,
        req: &FetchRequest,
        s: &Session<'_>,
        choice: &LayerChoice,
        sink: &mut dyn ModuleSink,
        touched: &mut bool,
    ) -> Result<u64, Error> {
        let url = &s.url;
        let digest = choice.digest.to_prefixed();
        let path = format!("blobs/{digest}");
        let mut response = s
            .retrying(|| async {
                let mut r = s.get(&path, None).await?;
                if r.status != StatusCode::OK {
                    return Err(s.refusal(&mut r).await);
                }
                Ok(r)
            })
            .await?;
        if let Some(len) = response.content_length()
            && len > choice.size
        {
            return Err(Error::DigestMismatch {
                url: url.clone(),
                expected: format!("{digest} ({} bytes)", choice.size),
                actual: format!("a blob announced as {len} bytes"),
            });
        }
        let mut verifier = BlobVerifier::new(choice.digest, choice.size, url.clone());
        let mut unboxer: Option<Unboxer<&mut dyn ModuleSink>> = None;
        let mut sink = Some(sink);
        let mut unbox_failure: Option<UnboxError> = None;
        while let Some(bytes) = response.chunk().await? {
            if unboxer.is_none()
                && let Some(sink) = sink.take()
            {
                *touched = true;
                // A raw Wasm layer goes to the sink byte for byte: its digest
                // is the module's, so the sink's own hash can verify it (and
                // the verifier hashes nothing, not even this first chunk). Not
                // from a mirror: its bytes are checked here, before the fetch
                // returns, so that wrong ones can go to the next source.
                if s.mirror.is_none()
                    && choice.layout.is_raw()
                    && bytes.starts_with(&WASM_MAGIC)
                    && sink.verify_sha256(choice.digest)
                {
                    verifier.hand_over();
                }
                let mut u = Unboxer::new(sink, req.max_size, choice.rule);
                // The progress display's total, for an unboxed module only.
                u.announce_len(Some(choice.size));
                unboxer = Some(u);
            }
            verifier.update(&bytes)?;
            if unbox_failure.is_none()
                && let Some(u) = unboxer.as_mut()
                && let Err(e) = u.push(&bytes)
            {
                match e {
                    // Keep reading to verify the digest: a corrupted
                    // blob is the better explanation of bad content.
                    UnboxError::Invalid { .. } => unbox_failure = Some(e),
                    other => return Err(other.into_error(&req.url)),
                }
            }
        }
        verifier.finish()?;
        if let Some(e) = unbox_failure {
            return Err(e.into_error(&req.url));
        }
        let unboxer = match unboxer {
            Some(u) => u,
            None => Unboxer::new(
                sink.take().expect("the sink is unused when no chunk came"),
                req.max_size,
                choice.rule,
            ),
        };
        let (_, written) = unboxer.finish().map_err(|e| e.into_error(&req.url))?;
        Ok(written)
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
    /// repository (read up to [`MAX_SIGNATURE_MANIFEST_LEN`]) and each
    /// simple-signing payload it names (read up to its declared size, checked
    /// against its digest); and sigstore bundles attached as OCI 1.1
    /// referrers (the referrers API, or the `sha256-<hex>` tag schema where
    /// the registry has none; indexes, manifests and bundles capped while
    /// reading). All through the same session, retries and deadline.
    /// Neither found is [`Signatures::Missing`] with the reasons; otherwise
    /// [`Signatures::Oci`].
    async fn signatures(
        &self,
        req: &FetchRequest,
        digest: &Sha256Digest,
    ) -> Result<Signatures, Error> {
        let oci = self.oci(req)?;
        // Boxed: the signature flow (classic tag and referrers, per source)
        // is a large future, and this one runs once per verified digest.
        Box::pin(Self::before_deadline(
            req,
            self.signatures_inner(req, oci, digest),
        ))
        .await
    }
}

impl OciFetcher {
    /// The signature material from the registry's mirrors, then the
    /// registry (like the module: a mirror that has none, or fails, hands
    /// over to the next source; what any source serves is verified by the
    /// caller's policy against the digest).
    async fn signatures_inner(
        &self,
        req: &FetchRequest,
        oci: &OciReference,
        digest: &Sha256Digest,
    ) -> Result<Signatures, Error> {
        let mut chain = Chain::new(self, req, oci, "signatures");
        let mut missing_at_mirror = None;
        loop {
            let s = match chain.next().await {
                Ok(s) => s,
                // Nothing left: a mirror's "none" says more than the
                // registry's failure (and fails closed all the same).
                Err(e) => return missing_at_mirror.ok_or(e),
            };
            let at_mirror = s.mirror.is_some();
            let failure = match chain.attempt(self.signatures_at(&s, digest)).await {
                Ok(Signatures::Missing(reason)) if at_mirror => {
                    let e = Error::Manifest {
                        url: s.url.clone(),
                        reason: reason.clone(),
                        source: None,
                    };
                    missing_at_mirror = Some(Signatures::Missing(reason));
                    e
                }
                Ok(found) => {
                    chain.served();
                    return Ok(found);
                }
                Err(e) => e,
            };
            if let Err(e) = chain.failed(failure) {
                return match (e, missing_at_mirror) {
                    (e @ (Error::Timeout { .. } | Error::Sink { .. }), _) | (e, None) => Err(e),
                    (_, Some(missing)) => Ok(missing),
                };
            }
        }
    }

    /// cosign's signature manifest for `digest` and its payloads, from one source.
    async fn signatures_at(
        &self,
        s: &Session<'_>,
        digest: &Sha256Digest,
    ) -> Result<Signatures, Error> {
        let mut notes = Vec::new();
        let cosign = match Self::cosign_layers(s, digest).await? {
            Ok(layers) => layers,
            Err(reason) => {
                notes.push(reason);
                Vec::new()
            }
        };
        let bundles = match s.bundles(digest).await {
            Ok(found) => {
                notes.extend(found.notes);
                found.bundles
            }
            // With a classic signature in hand, a failing referrers lookup
            // only loses a candidate; without one, it is the error.
            Err(e) if !cosign.is_empty() => {
                notes.push(format!("referrers: {e}"));
                Vec::new()
            }
            Err(e) => return Err(e),
        };
        if cosign.is_empty() && bundles.is_empty() {
            return Ok(Signatures::Missing(notes.join("; ")));
        }
        Ok(Signatures::Oci {
            cosign,
            bundles,
            notes,
        })
    }

    /// cosign's classic layout: the layers of the `sha256-<hex>.sig`
    /// manifest with their payloads; `Ok(Err(reason))` when there is none.
    async fn cosign_layers(
        s: &Session<'_>,
        digest: &Sha256Digest,
    ) -> Result<Result<Vec<SignatureLayer>, String>, Error> {
        let tag = signature_tag(digest);
        let body = match s.retrying(|| s.signature_manifest_once(&tag)).await? {
            Ok(body) => body,
            Err(reason) => return Ok(Err(reason)),
        };
        let refs = match parse_signature_manifest(&body) {
            Ok(refs) => refs,
            Err(reason) => return Ok(Err(format!("tag {tag}: {reason}"))),
        };
        let mut layers = Vec::with_capacity(refs.len());
        for r in &refs {
            let payload = s.retrying(|| s.payload_once(r)).await?;
            layers.push(SignatureLayer {
                media_type: SIMPLE_SIGNING_MEDIA_TYPE.to_owned(),
                payload: payload.to_vec(),
                signature: r.signature.clone(),
            });
        }
        if layers.is_empty() {
            return Ok(Err(format!(
                "tag {tag}: the signature manifest has no layers"
            )));
        }
        Ok(Ok(layers))
    }
}

#[cfg(test)]
mod tests {
    use super::plain_first;

    #[test]
    fn which_insecure_registries_are_asked_in_plain_http_first() {
        for yes in [
            "localhost:5000",
            "127.0.0.1:5000",
            "[::1]:5000",
            "r.example:80",
        ] {
            assert!(plain_first(yes), "{yes}");
        }
        // No port (port 80 may be filtered: a connect timeout on every
        // pull), or HTTPS's own port: HTTPS first.
        for no in [
            "r.example",
            "r.example:443",
            "[::1]",
            "[::1]:443",
            "10.0.0.1",
        ] {
            assert!(!plain_first(no), "{no}");
        }
    }
}
