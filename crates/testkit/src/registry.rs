//! A real OCI registry on loopback: the CNCF distribution server (`docker-registry`).
//!
//! [`Registry::start`] runs Debian's `/usr/bin/docker-registry` (distribution 2.8;
//! `apt-get install docker-registry apache2-utils`) on `127.0.0.1` at a free port,
//! with a temporary YAML config and storage directory, in one of three flavours
//! ([`RegistryKind`]): plain HTTP, TLS with a freshly generated CA, or HTTP basic
//! auth from an htpasswd file (bcrypt, made by `htpasswd -nbB`).
//!
//! # Lifecycle
//! - Each call starts its own process on its own port, so parallel tests never
//!   share state. Starting takes well under a second. (A process shared through a
//!   `OnceLock` would never be killed: statics are not dropped. We do not do that.)
//! - Readiness is polled with `GET /v2/` until a deadline ([`START_TIMEOUT`]);
//!   there is no fixed sleep.
//! - If the registry cannot start, [`Registry::start`] panics with the registry's
//!   stderr: a test that needs a registry fails loudly instead of skipping.
//! - Dropping the [`Registry`] kills the process and deletes its storage.
//!
//! # Environment
//! - `WASM_CACHE_REGISTRY_BIN`: the registry binary (default `/usr/bin/docker-registry`).
//! - `WASM_CACHE_HTPASSWD_BIN`: the `htpasswd` binary (default `htpasswd` on `PATH`).
//!
//! # Observing requests
//! The registry writes an access log line per request to stderr
//! (`"GET /v2/<repo>/blobs/<digest> HTTP/1.1" 200 ...`). [`Registry::requests`]
//! returns the parsed lines seen so far; [`Registry::sync_requests`] first sends a
//! unique marker request and waits until its line shows up, so every request the
//! test made before the call is included (the registry logs a request right after
//! answering it, before it reads the next one from us).
//!
//! # Fault injection
//! [`Registry::corrupt_blob`] flips a byte of a stored blob in the storage
//! directory: the registry verifies digests on upload, not on download, so it then
//! serves bytes that do not match their digest, which is what a broken or malicious
//! registry does.
//!
//! ```no_run
//! use wasm_cache_testkit::registry::{Registry, RegistryKind};
//!
//! let registry = Registry::start(RegistryKind::Plain);
//! assert!(registry.host().starts_with("127.0.0.1:"));
//! // `registry.client()` is an oci-client `Client` configured to push to it.
//! ```

use std::collections::HashSet;
use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

use oci_client::client::{Certificate, CertificateEncoding, ClientConfig, ClientProtocol};

use crate::token::TokenServer;
use oci_client::secrets::RegistryAuth;

/// How long [`Registry::start`] waits for the registry to answer `GET /v2/`.
pub const START_TIMEOUT: Duration = Duration::from_secs(20);

/// The default registry binary (Debian's package `docker-registry`).
pub const DEFAULT_REGISTRY_BIN: &str = "/usr/bin/docker-registry";

/// The user name of [`RegistryKind::BasicAuth`] registries started with [`Registry::start`].
pub const TEST_USER: &str = "wasm-user";
/// The password of [`RegistryKind::BasicAuth`] registries started with [`Registry::start`].
pub const TEST_PASSWORD: &str = "s3cr3t-Pa55word";

/// Which registry to start.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum RegistryKind {
    /// Plain HTTP, anonymous pull and push.
    Plain,
    /// HTTPS with a certificate for `127.0.0.1`/`localhost` issued by a fresh test
    /// CA ([`Registry::ca_pem`], [`Registry::ca_file`]); anonymous.
    Tls,
    /// Plain HTTP with basic auth: [`TEST_USER`] / [`TEST_PASSWORD`] (or the
    /// credentials of [`RegistryKind::BasicAuthWith`]). Pull and push need them.
    BasicAuth,
    /// Plain HTTP with token auth (`auth: token`): a [`TokenServer`] on
    /// 127.0.0.1 issues tokens to [`TEST_USER`] / [`TEST_PASSWORD`]; its realm
    /// is plain http (the registry must be insecure-listed to use it).
    TokenAuth,
    /// Like [`RegistryKind::BasicAuth`] with the given user and password.
    BasicAuthWith {
        /// The user name.
        user: String,
        /// The password.
        password: String,
    },
    /// Plain HTTP, anonymous, configured as a pull-through cache (a mirror)
    /// of the registry at `remote_url` (`proxy: remoteurl:` in its config,
    /// e.g. `http://127.0.0.1:PORT` of another test registry). It fetches
    /// what it does not hold from there, keeps it, and serves it from its
    /// storage afterwards (tags are checked with the remote while it answers).
    /// Pushing to it is refused.
    PullThrough {
        /// The registry it mirrors.
        remote_url: String,
    },
}

impl RegistryKind {
    /// A pull-through cache of `upstream` (see [`RegistryKind::PullThrough`]).
    pub fn mirror_of(upstream: &Registry) -> Self {
        let scheme = if upstream.is_tls() { "https" } else { "http" };
        Self::PullThrough {
            remote_url: format!("{scheme}://{}", upstream.host()),
        }
    }
}

/// One request from the registry's access log.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LoggedRequest {
    /// `GET`, `HEAD`, `PUT`, ...
    pub method: String,
    /// The request path with query (`/v2/repo/blobs/sha256:...`).
    pub path: String,
    /// The response status.
    pub status: u16,
}

impl LoggedRequest {
    /// Whether this is a blob download (`GET` of `/v2/<repo>/blobs/<digest>`).
    pub fn is_blob_get(&self) -> bool {
        self.method == "GET" && self.path.contains("/blobs/sha256:")
    }

    /// Whether this is a manifest request (`GET` or `HEAD` of `/v2/<repo>/manifests/<ref>`).
    pub fn is_manifest_read(&self) -> bool {
        matches!(self.method.as_str(), "GET" | "HEAD") && self.path.contains("/manifests/")
    }
}

struct Tls {
    ca_pem: String,
    ca_file: PathBuf,
    ca_der: Vec<u8>,
}

/// A running `docker-registry` process on 127.0.0.1, killed on drop.
pub struct Registry {
    child: Child,
    addr: SocketAddr,
    kind: RegistryKind,
    tls: Option<Tls>,
    credentials: Option<(String, String)>,
    token_server: Option<TokenServer>,
    log: Arc<Mutex<Vec<String>>>,
    markers: AtomicU64,
    // Dropped last: the storage and config live here.
    dir: tempfile::TempDir,
}

impl std::fmt::Debug for Registry {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // No password here: tests print registries in assertion messages.
        f.debug_struct("Registry")
            .field("addr", &self.addr)
            .field("kind", &self.kind_name())
            .field("storage", &self.dir.path())
            .finish_non_exhaustive()
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(PoisonError::into_inner)
}

/// Installs rustls' ring provider as the process default (once; later calls and
/// an already installed provider are fine). reqwest, under oci-client, is built
/// without a provider of its own in this workspace.
pub fn ensure_crypto_provider() {
    let _ = rustls::crypto::ring::default_provider().install_default();
}

impl Registry {
    /// Starts a registry of `kind` and waits until it answers.
    ///
    /// # Panics
    /// When the registry cannot start or does not answer within
    /// [`START_TIMEOUT`]; the message holds its stderr.
    #[allow(
        clippy::needless_pass_by_value,
        reason = "callers write `Registry::start(RegistryKind::Plain)`; a reference would only add noise"
    )]
    pub fn start(kind: RegistryKind) -> Self {
        let mut last_failure = String::new();
        // A free port is found by binding port 0 and releasing it; another
        // process may grab it in between, so retry on "address already in use".
        for _ in 0..5 {
            match Self::try_start(kind.clone()) {
                Ok(r) => return r,
                Err((retry, msg)) => {
                    last_failure = msg;
                    if !retry {
                        break;
                    }
                }
            }
        }
        panic!("could not start the test registry: {last_failure}");
    }

    fn try_start(kind: RegistryKind) -> Result<Self, (bool, String)> {
        let fail = |msg: String| (false, msg);
        let dir = tempfile::tempdir().map_err(|e| fail(format!("temp dir: {e}")))?;
        let port = TcpListener::bind("127.0.0.1:0")
            .and_then(|l| l.local_addr())
            .map_err(|e| fail(format!("finding a free port: {e}")))?
            .port();
        let addr = SocketAddr::from(([127, 0, 0, 1], port));
        let storage = dir.path().join("storage");
        std::fs::create_dir_all(&storage).map_err(|e| fail(format!("storage dir: {e}")))?;

        let mut config = format!(
            "version: 0.1\n\
             log:\n  level: info\n  formatter: text\n  accesslog:\n    disabled: false\n\
             storage:\n  filesystem:\n    rootdirectory: {storage}\n  delete:\n    enabled: true\n  \
             maintenance:\n    uploadpurging:\n      enabled: false\n  redirect:\n    disable: true\n\
             http:\n  addr: {addr}\n  secret: wasm-cache-test-{port}\n",
            storage = storage.display(),
        );
        let tls = if kind == RegistryKind::Tls {
            let (tls, cert_file, key_file) =
                make_tls(dir.path()).map_err(|e| fail(format!("making test certificates: {e}")))?;
            config.push_str(&format!(
                "  tls:\n    certificate: {}\n    key: {}\n",
                cert_file.display(),
                key_file.display()
            ));
            Some(tls)
        } else {
            None
        };
        let credentials = match &kind {
            RegistryKind::BasicAuth | RegistryKind::TokenAuth => {
                Some((TEST_USER.to_owned(), TEST_PASSWORD.to_owned()))
            }
            RegistryKind::BasicAuthWith { user, password } => {
                Some((user.clone(), password.clone()))
            }
            RegistryKind::Plain | RegistryKind::Tls | RegistryKind::PullThrough { .. } => None,
        };
        let token_server = if kind == RegistryKind::TokenAuth {
            let server = TokenServer::start(
                "wasm-cache-test-issuer",
                "wasm-cache-test",
                TEST_USER,
                TEST_PASSWORD,
            );
            let bundle = dir.path().join("token.pem");
            std::fs::write(&bundle, server.cert_pem())
                .map_err(|e| fail(format!("token cert bundle: {e}")))?;
            config.push_str(&format!(
                "auth:\n  token:\n    realm: {}\n    service: wasm-cache-test\n    issuer: wasm-cache-test-issuer\n    rootcertbundle: {}\n",
                server.realm(),
                bundle.display()
            ));
            Some(server)
        } else {
            None
        };
        if let Some((user, password)) = credentials.as_ref().filter(|_| token_server.is_none()) {
            let file = dir.path().join("htpasswd");
            write_htpasswd(&file, user, password).map_err(fail)?;
            config.push_str(&format!(
                "auth:\n  htpasswd:\n    realm: wasm-cache-test\n    path: {}\n",
                file.display()
            ));
        }
        if let RegistryKind::PullThrough { remote_url } = &kind {
            config.push_str(&format!("proxy:\n  remoteurl: {remote_url}\n"));
        }
        let config_file = dir.path().join("config.yml");
        std::fs::write(&config_file, config).map_err(|e| fail(format!("config: {e}")))?;

        let bin = std::env::var_os("WASM_CACHE_REGISTRY_BIN")
            .map_or_else(|| PathBuf::from(DEFAULT_REGISTRY_BIN), PathBuf::from);
        let mut command = Command::new(&bin);
        die_with_parent(&mut command);
        let mut child = command
            .arg("serve")
            .arg(&config_file)
            .env_remove("HTTP_PROXY")
            .env_remove("HTTPS_PROXY")
            .env_remove("http_proxy")
            .env_remove("https_proxy")
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .map_err(|e| {
                fail(format!(
                    "running {} (set WASM_CACHE_REGISTRY_BIN, or `apt-get install docker-registry`): {e}",
                    bin.display()
                ))
            })?;
        let log = Arc::new(Mutex::new(Vec::new()));
        for pipe in [
            child
                .stderr
                .take()
                .map(|p| Box::new(p) as Box<dyn Read + Send>),
            child
                .stdout
                .take()
                .map(|p| Box::new(p) as Box<dyn Read + Send>),
        ]
        .into_iter()
        .flatten()
        {
            let log = Arc::clone(&log);
            std::thread::spawn(move || {
                for line in BufReader::new(pipe).lines() {
                    let Ok(line) = line else { break };
                    lock(&log).push(line);
                }
            });
        }
        let registry = Self {
            child,
            addr,
            kind,
            tls,
            credentials,
            token_server,
            log,
            markers: AtomicU64::new(0),
            dir,
        };
        registry.wait_ready()
    }

    fn wait_ready(mut self) -> Result<Self, (bool, String)> {
        let deadline = Instant::now() + START_TIMEOUT;
        loop {
            if let Ok(Some(status)) = self.child.try_wait() {
                let log = self.log_text();
                let retry = log.contains("address already in use");
                return Err((
                    retry,
                    format!("the registry exited ({status}); its output:\n{log}"),
                ));
            }
            if self.get_status("/v2/").is_ok() {
                return Ok(self);
            }
            if Instant::now() > deadline {
                return Err((
                    false,
                    format!(
                        "the registry did not answer GET /v2/ on {} within {START_TIMEOUT:?}; its output:\n{}",
                        self.addr,
                        self.log_text()
                    ),
                ));
            }
            // Polling interval, not a wait for state: the loop checks readiness.
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// A synchronous `GET path` over plain TCP or TLS (trusting the test CA);
    /// returns the status code.
    fn get_status(&self, path: &str) -> std::io::Result<u16> {
        let mut tcp = TcpStream::connect_timeout(&self.addr, Duration::from_secs(2))?;
        tcp.set_read_timeout(Some(Duration::from_secs(5)))?;
        tcp.set_write_timeout(Some(Duration::from_secs(5)))?;
        let request = format!(
            "GET {path} HTTP/1.1\r\nHost: {}\r\nUser-Agent: wasm-cache-testkit\r\nConnection: close\r\n\r\n",
            self.addr
        );
        let mut response = Vec::new();
        match &self.tls {
            None => {
                tcp.write_all(request.as_bytes())?;
                tcp.read_to_end(&mut response)?;
            }
            Some(tls) => {
                ensure_crypto_provider();
                let mut roots = rustls::RootCertStore::empty();
                roots
                    .add(rustls::pki_types::CertificateDer::from(tls.ca_der.clone()))
                    .map_err(std::io::Error::other)?;
                let config = rustls::ClientConfig::builder()
                    .with_root_certificates(roots)
                    .with_no_client_auth();
                let name = rustls::pki_types::ServerName::from(self.addr.ip());
                let conn = rustls::ClientConnection::new(Arc::new(config), name)
                    .map_err(std::io::Error::other)?;
                let mut stream = rustls::StreamOwned::new(conn, tcp);
                stream.write_all(request.as_bytes())?;
                // The registry may close without close_notify; what we read is enough.
                let _ = stream.read_to_end(&mut response);
            }
        }
        let head = String::from_utf8_lossy(&response[..response.len().min(64)]).into_owned();
        head.split_whitespace()
            .nth(1)
            .and_then(|s| s.parse().ok())
            .ok_or_else(|| std::io::Error::other(format!("not an HTTP response: {head:?}")))
    }

    fn kind_name(&self) -> &'static str {
        match self.kind {
            RegistryKind::Plain => "plain",
            RegistryKind::Tls => "tls",
            RegistryKind::BasicAuth | RegistryKind::BasicAuthWith { .. } => "basic-auth",
            RegistryKind::TokenAuth => "token-auth",
            RegistryKind::PullThrough { .. } => "pull-through",
        }
    }

    /// The registry's address.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// `127.0.0.1:<port>`, the registry part of references.
    pub fn host(&self) -> String {
        self.addr.to_string()
    }

    /// Which kind of registry this is.
    pub fn kind(&self) -> &RegistryKind {
        &self.kind
    }

    /// Whether the registry speaks TLS.
    pub fn is_tls(&self) -> bool {
        self.tls.is_some()
    }

    /// `oci://127.0.0.1:<port>/<repo_and_reference>`, e.g. `url("org/m:v1")`.
    pub fn url(&self, repo_and_reference: &str) -> String {
        format!("oci://{}/{repo_and_reference}", self.addr)
    }

    /// The PEM of the CA that issued the TLS registry's certificate.
    pub fn ca_pem(&self) -> Option<&str> {
        self.tls.as_ref().map(|t| t.ca_pem.as_str())
    }

    /// A file holding [`Registry::ca_pem`].
    pub fn ca_file(&self) -> Option<&Path> {
        self.tls.as_ref().map(|t| t.ca_file.as_path())
    }

    /// The token server of a [`RegistryKind::TokenAuth`] registry.
    pub fn token_server(&self) -> Option<&TokenServer> {
        self.token_server.as_ref()
    }

    /// The basic-auth user and password, for auth registries.
    pub fn credentials(&self) -> Option<(&str, &str)> {
        self.credentials
            .as_ref()
            .map(|(u, p)| (u.as_str(), p.as_str()))
    }

    /// A Docker `config.json` (a pull secret) with this registry's credentials,
    /// in the `auth` (base64 `user:pass`) form. Anonymous registries get an empty `auths`.
    pub fn docker_config_json(&self) -> Vec<u8> {
        match self.credentials() {
            Some((user, password)) => docker_config_json(&self.host(), user, password),
            None => br#"{"auths":{}}"#.to_vec(),
        }
    }

    /// How oci-client should authenticate to push to this registry.
    pub fn push_auth(&self) -> RegistryAuth {
        match self.credentials() {
            Some((u, p)) => RegistryAuth::Basic(u.to_owned(), p.to_owned()),
            None => RegistryAuth::Anonymous,
        }
    }

    /// An oci-client [`Client`](oci_client::Client) configured to talk to this
    /// registry (HTTP or the test CA); use with [`Registry::push_auth`].
    ///
    /// # Panics
    /// If the client cannot be built (a bug in this harness).
    pub fn client(&self) -> oci_client::Client {
        ensure_crypto_provider();
        let mut config = ClientConfig {
            use_monolithic_push: true,
            platform_resolver: None,
            ..ClientConfig::default()
        };
        match &self.tls {
            Some(tls) => {
                config.protocol = ClientProtocol::Https;
                config.extra_root_certificates = vec![Certificate {
                    encoding: CertificateEncoding::Pem,
                    data: tls.ca_pem.clone().into_bytes(),
                }];
            }
            None => config.protocol = ClientProtocol::Http,
        }
        oci_client::Client::try_from(config).expect("the test registry client config is valid")
    }

    /// The registry's storage directory (`docker/registry/v2/...` inside).
    pub fn storage_dir(&self) -> PathBuf {
        self.dir.path().join("storage")
    }

    /// The file holding the blob `digest` (`sha256:<hex>`) in the storage directory.
    pub fn blob_data_path(&self, digest: &str) -> PathBuf {
        let hex = digest.strip_prefix("sha256:").unwrap_or(digest);
        self.storage_dir()
            .join("docker/registry/v2/blobs/sha256")
            .join(&hex[..2])
            .join(hex)
            .join("data")
    }

    /// Flips one byte in the middle of the stored blob `digest`, keeping its size,
    /// so the registry serves bytes that do not hash to their digest.
    ///
    /// # Panics
    /// If the blob is not stored or is empty.
    pub fn corrupt_blob(&self, digest: &str) {
        let path = self.blob_data_path(digest);
        let mut bytes = std::fs::read(&path)
            .unwrap_or_else(|e| panic!("reading blob {digest} at {}: {e}", path.display()));
        assert!(!bytes.is_empty(), "cannot corrupt the empty blob");
        let mid = bytes.len() / 2;
        bytes[mid] ^= 0xff;
        std::fs::write(&path, bytes)
            .unwrap_or_else(|e| panic!("writing blob {digest} at {}: {e}", path.display()));
    }

    /// Everything the registry printed so far (stderr and stdout lines).
    pub fn log_lines(&self) -> Vec<String> {
        lock(&self.log).clone()
    }

    fn log_text(&self) -> String {
        lock(&self.log).join("\n")
    }

    /// The requests in the access log so far. Lines of requests answered a
    /// moment ago may still be in flight; use [`Registry::sync_requests`] to be sure.
    pub fn requests(&self) -> Vec<LoggedRequest> {
        lock(&self.log)
            .iter()
            .filter_map(|l| parse_access_line(l))
            .collect()
    }

    /// Every request the registry has logged (markers left out), once the
    /// log is settled: a marker request sent now has been logged, and no
    /// line has been added for 50 ms after it.
    ///
    /// The registry writes a request's log line after its handler returns,
    /// which can be after the client has read the whole response, and after
    /// a marker sent next has been logged (CI saw a blob GET logged behind
    /// the marker on a loaded 2-core machine). Waiting for the marker bounds
    /// the log; waiting until it stops growing lets such a late line in.
    /// Callers run one operation at a time, so every line is theirs.
    ///
    /// # Panics
    /// If the marker never shows up (10 s).
    pub fn sync_requests(&self) -> Vec<LoggedRequest> {
        let n = self.markers.fetch_add(1, Ordering::SeqCst);
        let marker = format!("{MARKER_PREFIX}tags/list?n={n}");
        let deadline = Instant::now() + Duration::from_secs(10);
        let _ = self.get_status(&marker);
        // The log's length and since when it has had it, once the marker is in.
        let mut seen: Option<(usize, Instant)> = None;
        loop {
            let all = self.requests();
            let now = Instant::now();
            if all.iter().any(|r| r.path == marker) {
                let settled = match seen {
                    Some((count, since)) if count == all.len() => now >= since + LOG_SETTLE,
                    _ => {
                        seen = Some((all.len(), now));
                        false
                    }
                };
                // A log still growing at the deadline is taken as it is.
                if settled || now >= deadline {
                    return all
                        .into_iter()
                        .filter(|r| !r.path.starts_with(MARKER_PREFIX))
                        .collect();
                }
            } else {
                assert!(
                    now < deadline,
                    "the marker request never reached the registry's access log:\n{}",
                    self.log_text()
                );
            }
            std::thread::sleep(Duration::from_millis(10));
        }
    }

    /// The requests logged after the first `since` ones, once `done` holds
    /// for them (or 10 s passed), each look taken by
    /// [`Registry::sync_requests`]: for a test that counts an operation's
    /// requests and knows what it expects to see, should a late log line
    /// come even after the log seemed settled.
    pub fn requests_since(
        &self,
        since: usize,
        done: impl Fn(&[LoggedRequest]) -> bool,
    ) -> Vec<LoggedRequest> {
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            let mut all = self.sync_requests();
            let new = all.split_off(since.min(all.len()));
            if done(&new) || Instant::now() >= deadline {
                return new;
            }
            std::thread::sleep(Duration::from_millis(10));
        }
    }
}

/// Path prefix of the requests [`Registry::sync_requests`] sends to mark
/// the access log; never a repository a test pushes.
const MARKER_PREFIX: &str = "/v2/wasm-cache-testkit-marker/";

/// How long the access log must stay unchanged after the marker before
/// [`Registry::sync_requests`] takes it as complete.
const LOG_SETTLE: Duration = Duration::from_millis(50);

impl Drop for Registry {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A Docker `config.json` with `auths.<host>.auth = base64(user:password)`.
pub fn docker_config_json(host: &str, user: &str, password: &str) -> Vec<u8> {
    use base64::Engine as _;
    let auth = base64::engine::general_purpose::STANDARD.encode(format!("{user}:{password}"));
    serde_json::to_vec(&serde_json::json!({ "auths": { host: { "auth": auth } } }))
        .expect("a JSON value serializes")
}

/// Parses a combined-log-format line:
/// `127.0.0.1 - - [date] "GET /v2/ HTTP/1.1" 200 2 "" "ua"`.
fn parse_access_line(line: &str) -> Option<LoggedRequest> {
    if line.starts_with("time=") {
        return None;
    }
    let start = line.find("] \"")? + 3;
    let rest = &line[start..];
    let end = rest.find('"')?;
    let mut request = rest[..end].split(' ');
    let method = request.next()?.to_owned();
    let path = request.next()?.to_owned();
    let status = rest[end + 1..].split_whitespace().next()?.parse().ok()?;
    Some(LoggedRequest {
        method,
        path,
        status,
    })
}

fn write_htpasswd(file: &Path, user: &str, password: &str) -> Result<(), String> {
    let bin = std::env::var_os("WASM_CACHE_HTPASSWD_BIN").unwrap_or_else(|| "htpasswd".into());
    let out = Command::new(&bin)
        .args(["-nbB", user, password])
        .stdin(Stdio::null())
        .output()
        .map_err(|e| {
            format!(
                "running {} (set WASM_CACHE_HTPASSWD_BIN, or `apt-get install apache2-utils`): {e}",
                bin.to_string_lossy()
            )
        })?;
    if !out.status.success() {
        return Err(format!(
            "htpasswd failed ({}): {}",
            out.status,
            String::from_utf8_lossy(&out.stderr)
        ));
    }
    let line = String::from_utf8_lossy(&out.stdout).trim().to_owned();
    std::fs::write(file, format!("{line}\n")).map_err(|e| format!("writing htpasswd: {e}"))
}

/// Makes the registry die when the thread that started it does, so a test
/// process killed by Ctrl-C or SIGKILL (where `Drop` never runs) leaves no
/// registry behind. Registries are started by the thread that owns them.
#[allow(
    unsafe_code,
    reason = "prctl(PR_SET_PDEATHSIG) in the child before exec; async-signal-safe"
)]
fn die_with_parent(command: &mut Command) {
    use std::os::unix::process::CommandExt as _;
    // SAFETY: the closure runs in the forked child before exec and only makes
    // one async-signal-safe system call.
    unsafe {
        command.pre_exec(|| {
            if libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL) == 0 {
                Ok(())
            } else {
                Err(std::io::Error::last_os_error())
            }
        });
    }
}

/// A test CA and a server certificate for 127.0.0.1 / localhost signed by it.
fn make_tls(dir: &Path) -> Result<(Tls, PathBuf, PathBuf), rcgen::Error> {
    let certs = crate::certs::issue("wasm-cache test CA", "wasm-cache test registry")?;
    let write = |name: &str, content: &str| -> Result<PathBuf, rcgen::Error> {
        let p = dir.join(name);
        std::fs::write(&p, content).map_err(|_| rcgen::Error::CouldNotParseCertificate)?;
        Ok(p)
    };
    let ca_file = write("ca.pem", &certs.ca_pem)?;
    // The registry serves the chain it is given; the leaf alone is enough.
    let cert_file = write("server.pem", &certs.leaf_pem)?;
    let key_file = write("server.key", &certs.key_pem)?;
    Ok((
        Tls {
            ca_der: certs.ca_der,
            ca_pem: certs.ca_pem,
            ca_file,
        },
        cert_file,
        key_file,
    ))
}

/// The set of blob digests requested with `GET` in `requests`.
pub fn blob_gets(requests: &[LoggedRequest]) -> HashSet<String> {
    requests
        .iter()
        .filter(|r| r.is_blob_get())
        .filter_map(|r| r.path.rsplit('/').next().map(str::to_owned))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn access_lines_parse() {
        let l = r#"127.0.0.1 - - [25/Nov/2026:03:34:27 +0000] "HEAD /v2/x/blobs/sha256:ab HTTP/1.1" 404 157 "" "curl/7.88.1""#;
        assert_eq!(
            parse_access_line(l),
            Some(LoggedRequest {
                method: "HEAD".into(),
                path: "/v2/x/blobs/sha256:ab".into(),
                status: 404
            })
        );
        assert_eq!(
            parse_access_line(r#"time="x" level=info msg="listening""#),
            None
        );
    }

    #[test]
    fn plain_registry_starts_logs_and_stops() {
        let r = Registry::start(RegistryKind::Plain);
        assert_eq!(r.get_status("/v2/").unwrap(), 200);
        let reqs = r.sync_requests();
        assert!(
            reqs.iter().any(|q| q.path == "/v2/" && q.status == 200),
            "{reqs:?}"
        );
        let addr = r.addr();
        drop(r);
        // Drop killed and reaped the process: nothing listens on its port any more.
        assert!(TcpStream::connect_timeout(&addr, Duration::from_secs(1)).is_err());
    }

    #[test]
    fn tls_and_auth_registries_start() {
        let tls = Registry::start(RegistryKind::Tls);
        assert!(tls.ca_pem().unwrap().contains("BEGIN CERTIFICATE"));
        assert_eq!(tls.get_status("/v2/").unwrap(), 200);
        let auth = Registry::start(RegistryKind::BasicAuth);
        assert_eq!(auth.get_status("/v2/").unwrap(), 401);
        assert!(!format!("{auth:?}").contains(TEST_PASSWORD));
    }
}
