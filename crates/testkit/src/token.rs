//! A small token server for `docker-registry` configured with `auth: token`
//! (the distribution token authentication spec), on 127.0.0.1.
//!
//! `GET /token?service=...&scope=repository:<name>:<actions>` answers
//! `{"token": "<JWT>", "access_token": "<JWT>", "expires_in": 300}`. The JWT is
//! ES256-signed by a fresh self-signed key whose certificate
//! ([`TokenServer::cert_pem`]) is the registry's `rootcertbundle`; the
//! certificate travels in the JWT header (`x5c`). With the right Basic
//! credentials the token grants the requested actions; anonymous requests
//! get a token granting nothing (as real token services do); wrong
//! credentials get `401`. Every request is recorded ([`TokenServer::requests`]).
//!
//! `POST /token` is the OAuth2 refresh-token exchange of the distribution
//! token spec (what an `identitytoken` in a docker config is for): a form
//! body with `grant_type=refresh_token`, `service`, `scope` and
//! `refresh_token`. With [`TEST_REFRESH_TOKEN`], this server's service and a
//! well-formed scope it answers `{"access_token": "<JWT>", ...}` granting the
//! scope; any other grant type, token, service or a missing scope gets `400`
//! (`unsupported_grant_type` / `invalid_grant` / `invalid_request`).

use std::io::{BufRead, BufReader, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use base64::Engine as _;

/// The refresh token (`identitytoken`) the token server accepts.
pub const TEST_REFRESH_TOKEN: &str = "wasm-cache-test-refresh-9f2e7a61c0";

/// One request the token server saw.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TokenRequest {
    /// `GET` or `POST`.
    pub method: String,
    /// The query string.
    pub query: String,
    /// The form body of a `POST` (empty for `GET`).
    pub form: String,
    /// The `Authorization` header, if any.
    pub authorization: Option<String>,
}

struct Shared {
    issuer: String,
    service: String,
    user: String,
    password: String,
    cert_der: Vec<u8>,
    key: ring::signature::EcdsaKeyPair,
    requests: Mutex<Vec<TokenRequest>>,
}

/// A running token server; stops when dropped.
pub struct TokenServer {
    addr: SocketAddr,
    cert_pem: String,
    shared: Arc<Shared>,
    stop: Arc<AtomicBool>,
}

impl std::fmt::Debug for TokenServer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TokenServer")
            .field("addr", &self.addr)
            .finish_non_exhaustive()
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(PoisonError::into_inner)
}

fn b64url(bytes: &[u8]) -> String {
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(bytes)
}

impl TokenServer {
    /// Starts a token server that issues tokens for `service` as `issuer`,
    /// granting what is asked to `user`/`password`.
    ///
    /// # Panics
    /// When the key, certificate or socket cannot be made.
    pub fn start(issuer: &str, service: &str, user: &str, password: &str) -> Self {
        let key = rcgen::KeyPair::generate().expect("generating the token signing key");
        let mut params = rcgen::CertificateParams::new(Vec::<String>::new())
            .expect("token certificate parameters");
        params
            .distinguished_name
            .push(rcgen::DnType::CommonName, "wasm-cache test token signer");
        let cert = params
            .self_signed(&key)
            .expect("self-signing the token certificate");
        let signing = ring::signature::EcdsaKeyPair::from_pkcs8(
            &ring::signature::ECDSA_P256_SHA256_FIXED_SIGNING,
            &key.serialize_der(),
            &ring::rand::SystemRandom::new(),
        )
        .expect("loading the token signing key");
        let listener = TcpListener::bind("127.0.0.1:0").expect("binding the token server");
        listener
            .set_nonblocking(true)
            .expect("non-blocking token listener");
        let addr = listener.local_addr().expect("token server address");
        let shared = Arc::new(Shared {
            issuer: issuer.to_owned(),
            service: service.to_owned(),
            user: user.to_owned(),
            password: password.to_owned(),
            cert_der: cert.der().to_vec(),
            key: signing,
            requests: Mutex::new(Vec::new()),
        });
        let stop = Arc::new(AtomicBool::new(false));
        let (s, st) = (Arc::clone(&shared), Arc::clone(&stop));
        std::thread::spawn(move || {
            while !st.load(Ordering::SeqCst) {
                match listener.accept() {
                    Ok((conn, _)) => {
                        let s = Arc::clone(&s);
                        std::thread::spawn(move || {
                            let _ = serve(&s, conn);
                        });
                    }
                    // Polling interval of the accept loop, so a drop stops it.
                    Err(_) => std::thread::sleep(Duration::from_millis(5)),
                }
            }
        });
        Self {
            addr,
            cert_pem: cert.pem(),
            shared,
            stop,
        }
    }

    /// The realm URL (`http://127.0.0.1:<port>/token`).
    pub fn realm(&self) -> String {
        format!("http://{}/token", self.addr)
    }

    /// The PEM of the certificate whose key signs the tokens.
    pub fn cert_pem(&self) -> &str {
        &self.cert_pem
    }

    /// The requests seen so far.
    pub fn requests(&self) -> Vec<TokenRequest> {
        lock(&self.shared.requests).clone()
    }

    /// A token granting `scope` (`repository:<name>:<actions>`), as the
    /// server would issue it: what a `registrytoken` entry holds.
    pub fn token_for(&self, scope: &str) -> String {
        sign(&self.shared, &grants(std::iter::once(scope.to_owned())))
    }
}

impl Drop for TokenServer {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
    }
}

fn serve(s: &Shared, mut conn: TcpStream) -> std::io::Result<()> {
    conn.set_nonblocking(false)?;
    conn.set_read_timeout(Some(Duration::from_secs(10)))?;
    let mut reader = BufReader::new(conn.try_clone()?);
    let mut line = String::new();
    reader.read_line(&mut line)?;
    let method = line.split_whitespace().next().unwrap_or("").to_owned();
    let target = line.split_whitespace().nth(1).unwrap_or("").to_owned();
    let mut authorization = None;
    let mut content_length = 0usize;
    loop {
        let mut h = String::new();
        if reader.read_line(&mut h)? == 0 || h.trim().is_empty() {
            break;
        }
        if let Some((k, v)) = h.split_once(':') {
            if k.trim().eq_ignore_ascii_case("authorization") {
                authorization = Some(v.trim().to_owned());
            } else if k.trim().eq_ignore_ascii_case("content-length") {
                content_length = v.trim().parse().unwrap_or(0).min(64 * 1024);
            }
        }
    }
    let mut body = vec![0u8; content_length];
    std::io::Read::read_exact(&mut reader, &mut body)?;
    let form = String::from_utf8_lossy(&body).into_owned();
    let query = target
        .split_once('?')
        .map(|(_, q)| q.to_owned())
        .unwrap_or_default();
    lock(&s.requests).push(TokenRequest {
        method: method.clone(),
        query: query.clone(),
        form: form.clone(),
        authorization: authorization.clone(),
    });
    if method == "POST" {
        return refresh_exchange(s, &mut conn, &form);
    }
    let granted = match authorization
        .as_deref()
        .and_then(|a| a.strip_prefix("Basic "))
    {
        None => false,
        Some(b) => {
            let want = format!("{}:{}", s.user, s.password);
            let ok = base64::engine::general_purpose::STANDARD
                .decode(b.trim())
                .is_ok_and(|d| d == want.as_bytes());
            if !ok {
                let body = r#"{"details":"invalid credentials"}"#;
                write!(
                    conn,
                    "HTTP/1.1 401 Unauthorized\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
                    body.len()
                )?;
                return Ok(());
            }
            true
        }
    };
    let access = if granted {
        grants(
            query
                .split('&')
                .filter_map(|p| p.strip_prefix("scope="))
                .map(percent_decode),
        )
    } else {
        Vec::new()
    };
    let jwt = sign(s, &access);
    let body =
        serde_json::json!({"token": jwt, "access_token": jwt, "expires_in": 300}).to_string();
    write!(
        conn,
        "HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    )?;
    conn.flush()
}

/// The JWT `access` claims for `repository:<name>:<actions>` scopes.
fn grants(scopes: impl Iterator<Item = String>) -> Vec<serde_json::Value> {
    let mut access = Vec::new();
    for scope in scopes {
        let parts: Vec<&str> = scope.split(':').collect();
        if let [kind, name, actions] = parts.as_slice() {
            access.push(serde_json::json!({
                "type": kind, "name": name,
                "actions": actions.split(',').collect::<Vec<_>>(),
            }));
        }
    }
    access
}

/// `POST /token`: the OAuth2 refresh-token grant.
fn refresh_exchange(s: &Shared, conn: &mut TcpStream, form: &str) -> std::io::Result<()> {
    let field = |name: &str| {
        form.split('&')
            .filter_map(|p| p.split_once('='))
            .find(|(k, _)| *k == name)
            .map(|(_, v)| percent_decode(v))
    };
    let scope = field("scope").filter(|sc| sc.split(':').count() == 3);
    let failure = if field("grant_type").as_deref() != Some("refresh_token") {
        Some("unsupported_grant_type")
    } else if field("refresh_token").as_deref() != Some(TEST_REFRESH_TOKEN)
        || field("service").as_deref() != Some(s.service.as_str())
    {
        Some("invalid_grant")
    } else if scope.is_none() {
        Some("invalid_request")
    } else {
        None
    };
    let (status, body) = match failure {
        Some(error) => (
            "400 Bad Request",
            serde_json::json!({ "error": error }).to_string(),
        ),
        None => {
            let jwt = sign(s, &grants(scope.into_iter()));
            (
                "200 OK",
                serde_json::json!({
                    "access_token": jwt, "expires_in": 300,
                    "refresh_token": TEST_REFRESH_TOKEN, "scope": field("scope"),
                })
                .to_string(),
            )
        }
    };
    write!(
        conn,
        "HTTP/1.1 {status}\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    )?;
    conn.flush()
}

fn sign(s: &Shared, access: &[serde_json::Value]) -> String {
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs());
    let header = serde_json::json!({
        "typ": "JWT", "alg": "ES256",
        "x5c": [base64::engine::general_purpose::STANDARD.encode(&s.cert_der)],
    });
    let claims = serde_json::json!({
        "iss": s.issuer, "sub": s.user, "aud": s.service,
        "exp": now + 300, "nbf": now.saturating_sub(10), "iat": now,
        "jti": format!("{now}-{}", access.len()),
        "access": access,
    });
    let signing_input = format!(
        "{}.{}",
        b64url(header.to_string().as_bytes()),
        b64url(claims.to_string().as_bytes())
    );
    let sig = s
        .key
        .sign(&ring::rand::SystemRandom::new(), signing_input.as_bytes())
        .expect("signing a token");
    format!("{signing_input}.{}", b64url(sig.as_ref()))
}

fn percent_decode(s: &str) -> String {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        let hex = |c: u8| char::from(c).to_digit(16);
        if b[i] == b'%'
            && i + 2 < b.len()
            && let (Some(h), Some(l)) = (hex(b[i + 1]), hex(b[i + 2]))
        {
            out.push(u8::try_from(h * 16 + l).unwrap_or(b'?'));
            i += 3;
        } else {
            out.push(if b[i] == b'+' { b' ' } else { b[i] });
            i += 1;
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}
