//! A real HTTP(S) server on 127.0.0.1 with a route table tests change at runtime.
//!
//! [`TestServer::start`] binds `127.0.0.1:0` and serves HTTP/1.1 (optionally over
//! TLS, with a fresh test CA and a certificate for `localhost` and `127.0.0.1`)
//! from its own thread and tokio runtime, so it works from `#[tokio::test]`s and
//! from plain `#[test]`s that run a CLI alike. Dropping the server stops it and
//! every connection it holds (stalled ones included).
//!
//! Routes ([`Route`]) cover what fetchers must survive: fixed bodies with any
//! header (content type, content encoding), generated modules of any size
//! streamed in chunks (never held in memory whole), scripted status sequences,
//! redirects, responses that hang before the headers or in the middle of the
//! body, bodies shorter than their `Content-Length`, and connections reset
//! mid-body. Every request is counted per path ([`TestServer::hits`]).
//!
//! ```
//! use wasm_cache_testkit::http::{Route, ServerOptions, TestServer};
//!
//! let server = TestServer::start(ServerOptions::plain());
//! server.route("/m.wasm", Route::script([500, 503], Route::bytes(&b"\0asm\x01\0\0\0"[..])));
//! let url = server.url("/m.wasm");
//! assert!(url.starts_with("http://127.0.0.1:"));
//! assert_eq!(server.hits("/m.wasm"), 0);
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```

use std::collections::HashMap;
use std::convert::Infallible;
use std::fmt;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::task::{Context, Poll};

use bytes::{Bytes, BytesMut};
use http::{HeaderMap, HeaderName, HeaderValue, Method, Request, Response, StatusCode, Uri};
use hyper::body::{Body, Frame, Incoming, SizeHint};
use hyper_util::rt::TokioIo;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::{TcpListener, TcpStream};

/// The size of the chunks the server writes bodies in.
pub const SERVER_CHUNK: usize = 64 * 1024;

/// How to start a [`TestServer`].
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct ServerOptions {
    /// Serve HTTPS with a freshly generated test CA ([`TestServer::ca_pem`]).
    pub tls: bool,
    /// The address to listen on (default `127.0.0.1`); another address is
    /// for tests in a network namespace of their own
    /// ([`crate::netns`]), where they may add any address to `lo`.
    pub bind: Option<std::net::IpAddr>,
}

impl ServerOptions {
    /// Plain HTTP.
    pub fn plain() -> Self {
        Self {
            tls: false,
            bind: None,
        }
    }

    /// HTTPS with a test CA.
    pub fn tls() -> Self {
        Self {
            tls: true,
            bind: None,
        }
    }

    /// Listens on `ip`, port 80 (plain) or 443 (TLS), instead of 127.0.0.1
    /// on a free port: URLs then need no port, as for a real server.
    #[must_use]
    pub fn bind(mut self, ip: std::net::IpAddr) -> Self {
        self.bind = Some(ip);
        self
    }
}

/// What the server answers on one path.
#[derive(Debug, Clone)]
#[non_exhaustive]
pub enum Route {
    /// `200 OK` with these bytes (streamed in [`SERVER_CHUNK`] slices, not copied).
    Bytes(Bytes),
    /// `200 OK` with `size` bytes of
    /// [`sample_module(size, seed)`](crate::modules::sample_module), generated
    /// chunk by chunk while sending: a 256 MiB module costs no 256 MiB buffer.
    Generated {
        /// Body size in bytes.
        size: u64,
        /// The module's seed.
        seed: u64,
    },
    /// `200 OK` with an endless body (generated module bytes, sent chunked,
    /// without a `Content-Length`): for clients that must stop reading at a cap.
    Endless,
    /// This status, with a short text body.
    Status(u16),
    /// The first `statuses.len()` requests get those statuses in order; later
    /// ones get `then`.
    Script {
        /// The statuses to answer first.
        statuses: Vec<u16>,
        /// What comes after.
        then: Box<Route>,
    },
    /// A redirect (`status` 301, 302, 303, 307 or 308) to `location`, which may be any URL.
    Redirect {
        /// The redirect status.
        status: u16,
        /// The `Location` header.
        location: String,
    },
    /// Never answers: the request hangs before any header is sent.
    Hang,
    /// Sends the headers (with `Content-Length: declared_len`) and `prefix`,
    /// then stalls forever.
    Stall {
        /// The bytes sent before stalling.
        prefix: Bytes,
        /// The announced length.
        declared_len: u64,
    },
    /// Announces `Content-Length: declared_len`, sends `body` (shorter), then
    /// closes the connection.
    Truncated {
        /// What is actually sent.
        body: Bytes,
        /// The announced length.
        declared_len: u64,
    },
    /// Announces the full length of `body`, sends its first `after` bytes, then
    /// resets the TCP connection (RST).
    Reset {
        /// The body that was promised.
        body: Bytes,
        /// How many bytes are sent before the reset.
        after: usize,
    },
    /// `200 OK` with `body` sent chunked, without a `Content-Length`.
    Chunked(Bytes),
    /// Another route, answered only after `delay` (a slow upstream: the
    /// request hangs that long before its headers).
    Delayed {
        /// How long to wait before answering.
        delay: std::time::Duration,
        /// The route that answers then.
        route: Box<Route>,
    },
    /// Another route, with extra response headers (e.g. `content-type`,
    /// `content-encoding`).
    WithHeaders {
        /// The route that makes the response.
        route: Box<Route>,
        /// Headers added to (or replacing those of) the response.
        headers: Vec<(String, String)>,
    },
}

impl Route {
    /// [`Route::Bytes`] from anything that becomes [`Bytes`].
    pub fn bytes(body: impl Into<Bytes>) -> Self {
        Self::Bytes(body.into())
    }

    /// [`Route::Script`]: `statuses` first, then `then`.
    pub fn script(statuses: impl IntoIterator<Item = u16>, then: Route) -> Self {
        Self::Script {
            statuses: statuses.into_iter().collect(),
            then: Box::new(then),
        }
    }

    /// A `302 Found` redirect to `location`.
    pub fn redirect(location: impl Into<String>) -> Self {
        Self::Redirect {
            status: 302,
            location: location.into(),
        }
    }

    /// [`Route::Delayed`]: `route`, answered after `delay`.
    pub fn delayed(delay: std::time::Duration, route: Route) -> Self {
        Self::Delayed {
            delay,
            route: Box::new(route),
        }
    }

    /// This route with one more response header.
    #[must_use]
    pub fn with_header(self, name: &str, value: &str) -> Self {
        match self {
            Self::WithHeaders { route, mut headers } => {
                headers.push((name.to_owned(), value.to_owned()));
                Self::WithHeaders { route, headers }
            }
            other => Self::WithHeaders {
                route: Box::new(other),
                headers: vec![(name.to_owned(), value.to_owned())],
            },
        }
    }
}

/// One request the server saw.
#[derive(Debug, Clone)]
pub struct SeenRequest {
    /// The method.
    pub method: Method,
    /// The request target (path and query).
    pub uri: Uri,
    /// The request headers.
    pub headers: HeaderMap,
}

#[derive(Default)]
struct PathState {
    route: Option<Route>,
    hits: usize,
    requests: Vec<SeenRequest>,
}

type Routes = Arc<Mutex<HashMap<String, PathState>>>;

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(PoisonError::into_inner)
}

/// A running HTTP(S) server on `127.0.0.1`; stops when dropped.
pub struct TestServer {
    addr: SocketAddr,
    tls: Option<TestCa>,
    routes: Routes,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl fmt::Debug for TestServer {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("TestServer")
            .field("addr", &self.addr)
            .field("tls", &self.tls.is_some())
            .finish_non_exhaustive()
    }
}

/// The requests kept per path for [`TestServer::requests`] (the oldest are dropped).
const KEEP_REQUESTS: usize = 64;

impl TestServer {
    /// Starts a server on `127.0.0.1:0` in a thread of its own.
    ///
    /// # Panics
    /// When the port cannot be bound, the runtime cannot start or the test
    /// certificates cannot be made: a test must fail loudly, never skip.
    pub fn start(options: ServerOptions) -> Self {
        let tls = options
            .tls
            .then(|| TestCa::new().expect("generating the test CA and server certificate"));
        let acceptor = tls.as_ref().map(|ca| ca.acceptor.clone());
        let routes: Routes = Arc::default();
        let bind = match options.bind {
            Some(ip) => SocketAddr::new(ip, if options.tls { 443 } else { 80 }),
            None => SocketAddr::from(([127, 0, 0, 1], 0)),
        };
        let std_listener = std::net::TcpListener::bind(bind)
            .unwrap_or_else(|e| panic!("binding {bind} for the test server: {e}"));
        std_listener
            .set_nonblocking(true)
            .expect("setting the test server's socket non-blocking");
        let addr = std_listener
            .local_addr()
            .expect("the test server's address");
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        let served = routes.clone();
        let thread = std::thread::Builder::new()
            .name(format!("test-http-server-{}", addr.port()))
            .spawn(move || {
                let rt = tokio::runtime::Builder::new_multi_thread()
                    .worker_threads(2)
                    .enable_all()
                    .build()
                    .expect("starting the test server's runtime");
                rt.block_on(async move {
                    let listener = TcpListener::from_std(std_listener)
                        .expect("registering the test server's socket");
                    tokio::select! {
                        () = accept_loop(listener, acceptor, served) => {}
                        _ = stopped => {}
                    }
                });
                // Dropping the runtime cancels every connection task, stalled ones too.
                rt.shutdown_background();
            })
            .expect("spawning the test server thread");
        Self {
            addr,
            tls,
            routes,
            stop: Some(stop),
            thread: Some(thread),
        }
    }

    /// The address the server listens on.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// `127.0.0.1:<port>`, as an insecure-hosts list names it.
    pub fn host_port(&self) -> String {
        self.addr.to_string()
    }

    /// Whether the server speaks TLS.
    pub fn is_tls(&self) -> bool {
        self.tls.is_some()
    }

    /// The URL of `path` (which starts with `/`) on this server.
    pub fn url(&self, path: &str) -> String {
        let scheme = if self.is_tls() { "https" } else { "http" };
        format!("{scheme}://{}{path}", self.addr)
    }

    /// The PEM of the test CA that signed the server's certificate (TLS only).
    pub fn ca_pem(&self) -> Option<String> {
        self.tls.as_ref().map(|ca| ca.ca_pem.clone())
    }

    /// Writes the CA PEM to `dir/ca.pem` and returns the path (TLS only).
    ///
    /// # Panics
    /// When the file cannot be written.
    pub fn write_ca_file(&self, dir: &Path) -> Option<PathBuf> {
        let pem = self.ca_pem()?;
        let path = dir.join("ca.pem");
        std::fs::write(&path, pem).expect("writing the test CA file");
        Some(path)
    }

    /// Serves `route` at `path` (exact match, query ignored) and resets the
    /// path's request counter. Unknown paths answer `404`.
    pub fn route(&self, path: &str, route: Route) {
        let mut routes = lock(&self.routes);
        let state = routes.entry(path.to_owned()).or_default();
        *state = PathState {
            route: Some(route),
            ..PathState::default()
        };
    }

    /// Stops serving `path` (it answers `404` from now on).
    pub fn remove(&self, path: &str) {
        if let Some(state) = lock(&self.routes).get_mut(path) {
            state.route = None;
        }
    }

    /// Requests received for `path` since its route was last set.
    pub fn hits(&self, path: &str) -> usize {
        lock(&self.routes).get(path).map_or(0, |s| s.hits)
    }

    /// The last requests received for `path` (at most 64), oldest first.
    pub fn requests(&self, path: &str) -> Vec<SeenRequest> {
        lock(&self.routes)
            .get(path)
            .map(|s| s.requests.clone())
            .unwrap_or_default()
    }
}

impl Drop for TestServer {
    fn drop(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

async fn accept_loop(
    listener: TcpListener,
    acceptor: Option<tokio_rustls::TlsAcceptor>,
    routes: Routes,
) {
    loop {
        let Ok((tcp, _)) = listener.accept().await else {
            continue;
        };
        let _ = tcp.set_nodelay(true);
        let reset = Arc::new(AtomicBool::new(false));
        let io = ResetOnDrop {
            inner: tcp,
            reset: reset.clone(),
        };
        let routes = routes.clone();
        let acceptor = acceptor.clone();
        tokio::spawn(async move {
            let service = hyper::service::service_fn(move |req| respond(&routes, &reset, &req));
            let http = hyper::server::conn::http1::Builder::new();
            match acceptor {
                Some(acceptor) => {
                    let Ok(tls) = acceptor.accept(io).await else {
                        return;
                    };
                    let _ = http.serve_connection(TokioIo::new(tls), service).await;
                }
                None => {
                    let _ = http.serve_connection(TokioIo::new(io), service).await;
                }
            }
        });
    }
}

/// Records the request and builds the response (a future, so `Hang` can hang).
fn respond(
    routes: &Routes,
    reset: &Arc<AtomicBool>,
    req: &Request<Incoming>,
) -> Pin<Box<dyn Future<Output = Result<Response<ServerBody>, Infallible>> + Send>> {
    let path = req.uri().path().to_owned();
    let route = {
        let mut routes = lock(routes);
        let state = routes.entry(path).or_default();
        let nth = state.hits;
        state.hits += 1;
        if state.requests.len() == KEEP_REQUESTS {
            state.requests.remove(0);
        }
        state.requests.push(SeenRequest {
            method: req.method().clone(),
            uri: req.uri().clone(),
            headers: req.headers().clone(),
        });
        state.route.as_ref().map(|r| pick(r, nth))
    };
    let Some(route) = route else {
        return Box::pin(async { Ok(status_response(404)) });
    };
    if matches!(route, Route::Hang) {
        return Box::pin(std::future::pending());
    }
    if let Route::Delayed { delay, route } = route {
        let reset = Arc::clone(reset);
        return Box::pin(async move {
            tokio::time::sleep(delay).await;
            Ok(build(*route, &reset))
        });
    }
    let response = build(route, reset);
    Box::pin(async move { Ok(response) })
}

/// Resolves scripts: the route that answers the `nth` request (0-based).
fn pick(route: &Route, nth: usize) -> Route {
    match route {
        Route::Script { statuses, then } => match statuses.get(nth) {
            Some(&code) => Route::Status(code),
            None => pick(then, nth - statuses.len()),
        },
        Route::WithHeaders { route, headers } => Route::WithHeaders {
            route: Box::new(pick(route, nth)),
            headers: headers.clone(),
        },
        Route::Delayed { delay, route } => Route::Delayed {
            delay: *delay,
            route: Box::new(pick(route, nth)),
        },
        other => other.clone(),
    }
}

fn status_response(code: u16) -> Response<ServerBody> {
    let status = StatusCode::from_u16(code).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
    let mut r = Response::new(ServerBody::bytes(Bytes::from(format!("status {code}\n"))));
    *r.status_mut() = status;
    r
}

fn content_length(r: &mut Response<ServerBody>, len: u64) {
    r.headers_mut()
        .insert(http::header::CONTENT_LENGTH, HeaderValue::from(len));
}

fn build(route: Route, reset: &Arc<AtomicBool>) -> Response<ServerBody> {
    match route {
        Route::Bytes(b) => Response::new(ServerBody::bytes(b)),
        Route::Generated { size, seed } => Response::new(ServerBody {
            kind: BodyKind::Generated(ModuleGen::new(size, seed)),
        }),
        Route::Endless => Response::new(ServerBody {
            kind: BodyKind::Endless(ModuleGen::new(u64::MAX, 1)),
        }),
        Route::Status(code) => status_response(code),
        Route::Redirect { status, location } => {
            let mut r = status_response(status);
            if let Ok(v) = HeaderValue::from_str(&location) {
                r.headers_mut().insert(http::header::LOCATION, v);
            }
            r
        }
        Route::Stall {
            prefix,
            declared_len,
        } => {
            let mut r = Response::new(ServerBody {
                kind: BodyKind::Stall(Some(prefix)),
            });
            content_length(&mut r, declared_len);
            r
        }
        Route::Truncated { body, declared_len } => {
            let mut r = Response::new(ServerBody {
                kind: BodyKind::Unsized {
                    data: body,
                    paused: false,
                },
            });
            content_length(&mut r, declared_len);
            r
        }
        Route::Reset { body, after } => {
            let len = body.len() as u64;
            let sent = body.slice(..after.min(body.len()));
            let mut r = Response::new(ServerBody {
                kind: BodyKind::Fail {
                    prefix: Some(sent),
                    paused: false,
                    reset: reset.clone(),
                },
            });
            content_length(&mut r, len);
            r
        }
        Route::Chunked(b) => Response::new(ServerBody {
            kind: BodyKind::Unsized {
                data: b,
                paused: false,
            },
        }),
        Route::WithHeaders { route, headers } => {
            let mut r = build(*route, reset);
            for (name, value) in headers {
                if let (Ok(n), Ok(v)) = (
                    HeaderName::from_bytes(name.as_bytes()),
                    HeaderValue::from_str(&value),
                ) {
                    r.headers_mut().insert(n, v);
                }
            }
            r
        }
        // `respond` waits out a top-level delay; a nested one is not delayed.
        Route::Delayed { route, .. } => build(*route, reset),
        // `respond` handles Hang and `pick` resolves scripts.
        Route::Hang | Route::Script { .. } => status_response(500),
    }
}

/// The response body: every variant streams in [`SERVER_CHUNK`] pieces.
struct ServerBody {
    kind: BodyKind,
}

enum BodyKind {
    /// Slices of one buffer, with an exact size hint.
    Chunks {
        data: Bytes,
    },
    /// The same without a size hint (chunked encoding, or a lying length).
    Unsized {
        data: Bytes,
        paused: bool,
    },
    Generated(ModuleGen),
    /// Never ends; no size hint, so hyper sends it chunked.
    Endless(ModuleGen),
    Stall(Option<Bytes>),
    Fail {
        prefix: Option<Bytes>,
        paused: bool,
        reset: Arc<AtomicBool>,
    },
}

impl ServerBody {
    fn bytes(data: Bytes) -> Self {
        Self {
            kind: BodyKind::Chunks { data },
        }
    }
}

fn next_slice(data: &mut Bytes) -> Option<Bytes> {
    if data.is_empty() {
        return None;
    }
    let n = data.len().min(SERVER_CHUNK);
    Some(data.split_to(n))
}

impl Body for ServerBody {
    type Data = Bytes;
    type Error = std::io::Error;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, std::io::Error>>> {
        let this = self.get_mut();
        match &mut this.kind {
            BodyKind::Chunks { data } => Poll::Ready(next_slice(data).map(|b| Ok(Frame::data(b)))),
            BodyKind::Unsized { data, paused } => match next_slice(data) {
                Some(b) => Poll::Ready(Some(Ok(Frame::data(b)))),
                // Pause once before the end so hyper flushes what was sent: a
                // body that ends short of its Content-Length makes hyper close
                // the connection without flushing its buffer.
                None if !*paused => {
                    *paused = true;
                    cx.waker().wake_by_ref();
                    Poll::Pending
                }
                None => Poll::Ready(None),
            },
            BodyKind::Generated(g) | BodyKind::Endless(g) => {
                Poll::Ready(g.next_chunk().map(|b| Ok(Frame::data(b))))
            }
            BodyKind::Stall(prefix) => match prefix.take() {
                Some(p) if !p.is_empty() => Poll::Ready(Some(Ok(Frame::data(p)))),
                // Never woken: the connection stays open until the client gives up
                // or the server stops.
                _ => Poll::Pending,
            },
            BodyKind::Fail {
                prefix,
                paused,
                reset,
            } => match prefix.take() {
                Some(p) if !p.is_empty() => Poll::Ready(Some(Ok(Frame::data(p)))),
                // As above: let hyper flush the prefix before the reset.
                _ if !*paused => {
                    *paused = true;
                    cx.waker().wake_by_ref();
                    Poll::Pending
                }
                _ => {
                    reset.store(true, Ordering::SeqCst);
                    Poll::Ready(Some(Err(std::io::Error::new(
                        std::io::ErrorKind::ConnectionReset,
                        "test server resets the connection",
                    ))))
                }
            },
        }
    }

    fn is_end_stream(&self) -> bool {
        match &self.kind {
            BodyKind::Chunks { data } => data.is_empty(),
            BodyKind::Generated(g) => g.left() == 0,
            _ => false,
        }
    }

    fn size_hint(&self) -> SizeHint {
        match &self.kind {
            BodyKind::Chunks { data } => SizeHint::with_exact(data.len() as u64),
            BodyKind::Generated(g) => SizeHint::with_exact(g.left()),
            _ => SizeHint::default(),
        }
    }
}

/// Generates the bytes of [`sample_module`](crate::modules::sample_module)
/// chunk by chunk.
#[derive(Debug, Clone)]
pub struct ModuleGen {
    size: u64,
    done: u64,
    x: u64,
}

impl ModuleGen {
    /// A generator of `sample_module(size, seed)`.
    pub fn new(size: u64, seed: u64) -> Self {
        Self {
            size,
            done: 0,
            x: seed ^ 0x9e37_79b9_7f4a_7c15,
        }
    }

    /// Bytes not generated yet.
    pub fn left(&self) -> u64 {
        self.size - self.done
    }

    /// The next chunk (at most [`SERVER_CHUNK`] bytes), or `None` at the end.
    pub fn next_chunk(&mut self) -> Option<Bytes> {
        if self.left() == 0 {
            return None;
        }
        let n = usize::try_from(self.left())
            .unwrap_or(usize::MAX)
            .min(SERVER_CHUNK);
        let mut out = BytesMut::with_capacity(n);
        const HEADER: &[u8; 8] = b"\0asm\x01\0\0\0";
        if self.done < 8 {
            let start = usize::try_from(self.done).unwrap_or(8);
            let take = (8 - start).min(n);
            out.extend_from_slice(&HEADER[start..start + take]);
        }
        while out.len() < n {
            // Words start at offsets 8, 16, ...; chunks are multiples of 8
            // (SERVER_CHUNK is), so a word is never split between chunks
            // except the very last one.
            let mut x = self.x;
            x ^= x >> 12;
            x ^= x << 25;
            x ^= x >> 27;
            self.x = x;
            let v = x.wrapping_mul(0x2545_f491_4f6c_dd1d).to_le_bytes();
            let take = (n - out.len()).min(8);
            out.extend_from_slice(&v[..take]);
        }
        self.done += n as u64;
        Some(out.freeze())
    }
}

impl Iterator for ModuleGen {
    type Item = Bytes;
    fn next(&mut self) -> Option<Bytes> {
        self.next_chunk()
    }
}

/// A TCP stream that resets (RST) instead of closing when its connection ended
/// by a [`Route::Reset`].
struct ResetOnDrop {
    inner: TcpStream,
    reset: Arc<AtomicBool>,
}

impl Drop for ResetOnDrop {
    fn drop(&mut self) {
        if self.reset.load(Ordering::SeqCst) {
            let _ = self.inner.set_zero_linger();
        }
    }
}

impl AsyncRead for ResetOnDrop {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.get_mut().inner).poll_read(cx, buf)
    }
}

impl AsyncWrite for ResetOnDrop {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        Pin::new(&mut self.get_mut().inner).poll_write(cx, buf)
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[std::io::IoSlice<'_>],
    ) -> Poll<std::io::Result<usize>> {
        Pin::new(&mut self.get_mut().inner).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.get_mut().inner).poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        let this = self.get_mut();
        if this.reset.load(Ordering::SeqCst) {
            // A graceful FIN would let the client see a clean end; the RST
            // happens on drop.
            return Poll::Ready(Ok(()));
        }
        Pin::new(&mut this.inner).poll_shutdown(cx)
    }
}

/// The test CA and the TLS acceptor using a leaf certificate it signed.
struct TestCa {
    ca_pem: String,
    acceptor: tokio_rustls::TlsAcceptor,
}

impl TestCa {
    fn new() -> Result<Self, Box<dyn std::error::Error>> {
        let certs = crate::certs::issue("wasm-cache test HTTP CA", "wasm-cache test HTTP server")?;
        let key = rustls::pki_types::PrivateKeyDer::Pkcs8(
            rustls::pki_types::PrivatePkcs8KeyDer::from(certs.key_der),
        );
        let chain = vec![rustls::pki_types::CertificateDer::from(certs.leaf_der)];
        let mut config = rustls::ServerConfig::builder_with_provider(Arc::new(
            rustls::crypto::ring::default_provider(),
        ))
        .with_safe_default_protocol_versions()?
        .with_no_client_auth()
        .with_single_cert(chain, key)?;
        config.alpn_protocols = vec![b"http/1.1".to_vec()];
        Ok(Self {
            ca_pem: certs.ca_pem,
            acceptor: tokio_rustls::TlsAcceptor::from(Arc::new(config)),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::modules::sample_module;

    #[test]
    fn generator_matches_sample_module() {
        for size in [8u64, 9, 15, 16, 1000, SERVER_CHUNK as u64 * 2 + 13] {
            let got: Vec<u8> = ModuleGen::new(size, 42).flat_map(|b| b.to_vec()).collect();
            assert_eq!(
                got,
                sample_module(usize::try_from(size).unwrap(), 42),
                "{size}"
            );
        }
        let chunks: Vec<Bytes> = ModuleGen::new(SERVER_CHUNK as u64 * 3, 1).collect();
        assert_eq!(chunks.len(), 3);
    }

    #[test]
    fn scripts_resolve_in_order() {
        let r = Route::script([500, 502], Route::bytes(&b"ok"[..])).with_header("x-a", "b");
        let codes: Vec<String> = (0..4)
            .map(|n| match pick(&r, n) {
                Route::WithHeaders { route, .. } => match *route {
                    Route::Status(c) => c.to_string(),
                    Route::Bytes(_) => "body".to_owned(),
                    other => format!("{other:?}"),
                },
                other => format!("{other:?}"),
            })
            .collect();
        assert_eq!(codes, ["500", "502", "body", "body"]);
    }

    /// A minimal HTTP/1.1 exchange over a raw socket, to test the server
    /// without depending on a client crate.
    fn raw_get(server: &TestServer, path: &str) -> (String, Vec<u8>, Option<std::io::Error>) {
        use std::io::{Read, Write};
        let mut s = std::net::TcpStream::connect(server.addr()).unwrap();
        s.set_read_timeout(Some(std::time::Duration::from_secs(10)))
            .unwrap();
        write!(
            s,
            "GET {path} HTTP/1.1\r\nhost: 127.0.0.1\r\nconnection: close\r\n\r\n"
        )
        .unwrap();
        let mut all = Vec::new();
        let mut buf = [0u8; 65536];
        let err = loop {
            match s.read(&mut buf) {
                Ok(0) => break None,
                Ok(n) => all.extend_from_slice(&buf[..n]),
                Err(e) => break Some(e),
            }
        };
        let split = all
            .windows(4)
            .position(|w| w == b"\r\n\r\n")
            .map_or(all.len(), |i| i + 4);
        let head = String::from_utf8_lossy(&all[..split]).into_owned();
        (head, all[split..].to_vec(), err)
    }

    #[test]
    fn routes_answer_and_count() {
        let server = TestServer::start(ServerOptions::plain());
        server.route("/a", Route::script([503], Route::bytes(&b"hello"[..])));
        let (head, _, _) = raw_get(&server, "/a");
        assert!(head.starts_with("HTTP/1.1 503"), "{head}");
        let (head, body, _) = raw_get(&server, "/a?x=1");
        assert!(head.starts_with("HTTP/1.1 200"), "{head}");
        assert!(
            head.to_ascii_lowercase().contains("content-length: 5"),
            "{head}"
        );
        assert_eq!(body, b"hello");
        assert_eq!(server.hits("/a"), 2);
        assert_eq!(server.requests("/a")[1].uri.query(), Some("x=1"));

        let (head, _, _) = raw_get(&server, "/missing");
        assert!(head.starts_with("HTTP/1.1 404"), "{head}");

        server.route(
            "/r",
            Route::redirect("http://169.254.169.254/latest").with_header("x-test", "1"),
        );
        let (head, _, _) = raw_get(&server, "/r");
        assert!(head.starts_with("HTTP/1.1 302"), "{head}");
        assert!(head.contains("169.254.169.254/latest"), "{head}");

        server.route(
            "/g",
            Route::Generated {
                size: 200_000,
                seed: 9,
            },
        );
        let (_, body, _) = raw_get(&server, "/g");
        assert_eq!(body, sample_module(200_000, 9));

        server.route("/c", Route::Chunked(Bytes::from_static(b"chunky")));
        let (head, _, _) = raw_get(&server, "/c");
        assert!(
            head.to_ascii_lowercase()
                .contains("transfer-encoding: chunked"),
            "{head}"
        );
    }

    #[test]
    fn broken_bodies_break() {
        let server = TestServer::start(ServerOptions::plain());
        server.route(
            "/t",
            Route::Truncated {
                body: Bytes::from_static(b"12345"),
                declared_len: 100,
            },
        );
        let (head, body, _) = raw_get(&server, "/t");
        assert!(
            head.to_ascii_lowercase().contains("content-length: 100"),
            "{head}"
        );
        assert_eq!(body, b"12345");

        server.route(
            "/x",
            Route::Reset {
                body: Bytes::from(vec![7u8; 100_000]),
                after: 1000,
            },
        );
        let (_, body, _err) = raw_get(&server, "/x");
        assert!(body.len() < 100_000);
    }

    #[test]
    fn tls_server_has_a_ca() {
        let server = TestServer::start(ServerOptions::tls());
        assert!(server.url("/m").starts_with("https://127.0.0.1:"));
        let pem = server.ca_pem().unwrap();
        assert!(pem.starts_with("-----BEGIN CERTIFICATE-----"));
        let dir = tempfile::tempdir().unwrap();
        let path = server.write_ca_file(dir.path()).unwrap();
        assert_eq!(std::fs::read_to_string(path).unwrap(), pem);
        assert!(TestServer::start(ServerOptions::plain()).ca_pem().is_none());
    }
}
