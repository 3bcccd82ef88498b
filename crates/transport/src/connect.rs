//! The connector: resolves, guards and connects every connection, directly or
//! through a proxy.

use std::future::Future;
use std::net::{IpAddr, SocketAddr};
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use http::Uri;
use hyper_util::client::legacy::connect::{Connected, Connection};
use hyper_util::rt::TokioIo;
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
use tokio::net::TcpStream;

use crate::guard::{BlockedAddr, Guard};
use crate::proxy::{Proxy, ProxyConfig, authority};

type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// Names that reach cloud metadata services through the platform's resolver;
/// refused by name before a proxy, which resolves names itself, sees them.
const METADATA_NAMES: &[&str] = &[
    "metadata",
    "metadata.google.internal",
    "metadata.goog",
    "instance-data",
    "instance-data.ec2.internal",
];

/// A hyper-util connector that resolves the host itself (tokio's
/// `lookup_host`), checks every resolved address with the [`Guard`], and
/// connects to exactly the checked addresses: there is no second resolution
/// between check and connect, so DNS rebinding cannot slip past the guard.
///
/// With a proxy for the target, the target is checked as far as this side
/// can see it (a literal address, a metadata name, and what the local
/// resolver says of the name), then the connector opens a `CONNECT` tunnel
/// (https targets) or hands the proxy connection to the client for an
/// absolute-form request (http targets).
#[derive(Clone)]
pub(crate) struct GuardedConnector {
    pub(crate) guard: Arc<Guard>,
    pub(crate) connect_timeout: Duration,
    pub(crate) proxy: Arc<ProxyConfig>,
}

impl tower_service::Service<Uri> for GuardedConnector {
    type Response = Conn;
    type Error = BoxError;
    type Future = Pin<Box<dyn Future<Output = Result<Conn, BoxError>> + Send>>;

    fn poll_ready(&mut self, _cx: &mut Context<'_>) -> Poll<Result<(), BoxError>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, uri: Uri) -> Self::Future {
        let me = self.clone();
        Box::pin(async move { me.connect(&uri).await })
    }
}

fn target(uri: &Uri) -> Result<(String, u16, &'static str), BoxError> {
    let host = uri.host().ok_or("URL has no host")?;
    let host = host
        .strip_prefix('[')
        .and_then(|h| h.strip_suffix(']'))
        .unwrap_or(host)
        .to_owned();
    let scheme = match uri.scheme_str() {
        Some("https") => "https",
        _ => "http",
    };
    let port = uri
        .port_u16()
        .unwrap_or(if scheme == "https" { 443 } else { 80 });
    Ok((host, port, scheme))
}

impl GuardedConnector {
    async fn connect(&self, uri: &Uri) -> Result<Conn, BoxError> {
        let (host, port, scheme) = target(uri)?;
        match self.proxy.for_target(scheme, &host, port) {
            None => {
                let addrs = self.resolve_checked(&host, port).await?;
                let stream = dial(&host, addrs, self.connect_timeout).await?;
                let peer = stream.peer_addr().ok().map(|a| a.ip());
                let mut conn = Conn::new(stream, false);
                conn.peer = peer;
                Ok(conn)
            }
            Some(proxy) => {
                self.precheck(&host, port).await?;
                let addrs = resolve(&proxy.host, proxy.port).await?;
                let mut stream = dial(&proxy.host, addrs, self.connect_timeout).await?;
                if scheme == "https" {
                    tokio::time::timeout(
                        self.connect_timeout,
                        tunnel(&mut stream, proxy, &host, port),
                    )
                    .await
                    .map_err(|_| {
                        format!(
                            "proxy {} did not open a tunnel within {:?}",
                            proxy.authority(),
                            self.connect_timeout
                        )
                    })??;
                    Ok(Conn::new(stream, false))
                } else {
                    Ok(Conn::new(stream, true))
                }
            }
        }
    }

    /// Resolves `host` and checks every address; a name with any refused
    /// address is refused as a whole (a name that mixes a public address
    /// with a metadata one is an attack, not an accident).
    async fn resolve_checked(&self, host: &str, port: u16) -> Result<Vec<SocketAddr>, BoxError> {
        let addrs = resolve(host, port).await?;
        for a in &addrs {
            if let Err(why) = self.guard.check(a.ip()) {
                return Err(Box::new(BlockedAddr {
                    host: host.to_owned(),
                    addr: a.ip(),
                    why,
                }));
            }
        }
        Ok(addrs)
    }

    /// The guard's check of a target reached through a proxy: the proxy
    /// resolves the name, so this is what can be known here.
    async fn precheck(&self, host: &str, port: u16) -> Result<(), BoxError> {
        if let Ok(ip) = host.parse::<IpAddr>() {
            return self.check_one(host, ip);
        }
        let lower = host.trim_end_matches('.').to_ascii_lowercase();
        if METADATA_NAMES.contains(&lower.as_str()) {
            return Err(Box::new(BlockedAddr {
                host: host.to_owned(),
                addr: IpAddr::from([169, 254, 169, 254]),
                why: "a cloud metadata service name".to_owned(),
            }));
        }
        // What the local resolver says, if it answers quickly; a name only the
        // proxy can resolve is left to the proxy.
        let local = tokio::time::timeout(
            Duration::from_secs(2).min(self.connect_timeout),
            tokio::net::lookup_host((host, port)),
        )
        .await;
        if let Ok(Ok(addrs)) = local {
            for a in addrs {
                self.check_one(host, a.ip())?;
            }
        }
        Ok(())
    }

    fn check_one(&self, host: &str, ip: IpAddr) -> Result<(), BoxError> {
        self.guard.check(ip).map_err(|why| {
            Box::new(BlockedAddr {
                host: host.to_owned(),
                addr: ip,
                why,
            }) as BoxError
        })
    }
}

async fn resolve(host: &str, port: u16) -> Result<Vec<SocketAddr>, BoxError> {
    let addrs: Vec<SocketAddr> = match host.parse::<IpAddr>() {
        Ok(ip) => vec![SocketAddr::new(ip, port)],
        Err(_) => tokio::net::lookup_host((host, port))
            .await
            .map_err(|e| format!("resolving {host}: {e}"))?
            .collect(),
    };
    if addrs.is_empty() {
        return Err(format!("resolving {host}: no addresses").into());
    }
    Ok(addrs)
}

async fn dial(
    host: &str,
    addrs: Vec<SocketAddr>,
    timeout: Duration,
) -> Result<TcpStream, BoxError> {
    let mut last: Option<std::io::Error> = None;
    for addr in addrs {
        match tokio::time::timeout(timeout, TcpStream::connect(addr)).await {
            Ok(Ok(stream)) => {
                let _ = stream.set_nodelay(true);
                return Ok(stream);
            }
            Ok(Err(e)) => last = Some(e),
            Err(_) => {
                last = Some(std::io::Error::new(
                    std::io::ErrorKind::TimedOut,
                    format!("connecting to {addr} timed out after {timeout:?}"),
                ));
            }
        }
    }
    Err(Box::new(last.unwrap_or_else(|| {
        std::io::Error::other(format!("could not connect to {host}"))
    })))
}

/// The largest `CONNECT` response head read from a proxy.
const MAX_CONNECT_HEAD: usize = 16 * 1024;

/// Opens a `CONNECT host:port` tunnel through `proxy` on `stream`.
async fn tunnel(
    stream: &mut TcpStream,
    proxy: &Proxy,
    host: &str,
    port: u16,
) -> Result<(), BoxError> {
    let target = authority(host, port);
    let mut head = format!("CONNECT {target} HTTP/1.1\r\nHost: {target}\r\n");
    if let Some(auth) = &proxy.authorization {
        head.push_str(&format!("Proxy-Authorization: {auth}\r\n"));
    }
    head.push_str("\r\n");
    stream.write_all(head.as_bytes()).await?;
    // Read byte-wise up to the end of the head: the target's TLS bytes follow.
    let mut buf = Vec::with_capacity(256);
    let mut byte = [0u8; 1];
    while !buf.ends_with(b"\r\n\r\n") {
        if buf.len() >= MAX_CONNECT_HEAD {
            return Err(format!(
                "proxy {} sent a CONNECT response head over {MAX_CONNECT_HEAD} bytes",
                proxy.authority()
            )
            .into());
        }
        if stream.read(&mut byte).await? == 0 {
            return Err(format!(
                "proxy {} closed the connection during CONNECT",
                proxy.authority()
            )
            .into());
        }
        buf.push(byte[0]);
    }
    let status_line = String::from_utf8_lossy(&buf);
    let status = status_line
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse::<u16>().ok());
    match status {
        Some(200..=299) => Ok(()),
        Some(code) => Err(format!(
            "proxy {} refused to CONNECT to {target}: status {code}",
            proxy.authority()
        )
        .into()),
        None => Err(format!(
            "proxy {} sent no HTTP response to CONNECT",
            proxy.authority()
        )
        .into()),
    }
}

/// A connection: TCP to the target, to a tunnel through a proxy, or to a
/// proxy that takes absolute-form requests (`proxied`).
pub(crate) struct Conn {
    io: TokioIo<TcpStream>,
    proxied: bool,
    /// The target's address, for direct connections (not through a proxy).
    peer: Option<IpAddr>,
}

impl Conn {
    fn new(stream: TcpStream, proxied: bool) -> Self {
        Self {
            io: TokioIo::new(stream),
            proxied,
            peer: None,
        }
    }
}

/// The address a response came from (direct connections only), in the
/// response's extensions.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Peer(pub(crate) IpAddr);

impl Connection for Conn {
    fn connected(&self) -> Connected {
        let c = Connected::new().proxy(self.proxied);
        match self.peer {
            Some(ip) => c.extra(Peer(ip)),
            None => c,
        }
    }
}

impl hyper::rt::Read for Conn {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: hyper::rt::ReadBufCursor<'_>,
    ) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.io).poll_read(cx, buf)
    }
}

impl hyper::rt::Write for Conn {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        Pin::new(&mut self.io).poll_write(cx, buf)
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.io).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.io).poll_shutdown(cx)
    }

    fn is_write_vectored(&self) -> bool {
        self.io.is_write_vectored()
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[std::io::IoSlice<'_>],
    ) -> Poll<std::io::Result<usize>> {
        Pin::new(&mut self.io).poll_write_vectored(cx, bufs)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn connector(guard: Guard, proxy: ProxyConfig) -> GuardedConnector {
        GuardedConnector {
            guard: Arc::new(guard),
            connect_timeout: Duration::from_secs(1),
            proxy: Arc::new(proxy),
        }
    }

    async fn blocked(c: &GuardedConnector, uri: &str) -> BlockedAddr {
        let uri: Uri = uri.parse().unwrap();
        match c.connect(&uri).await {
            Ok(_) => panic!("{uri} was connected"),
            Err(e) => e
                .downcast_ref::<BlockedAddr>()
                .unwrap_or_else(|| panic!("{uri}: not refused by the guard: {e}"))
                .clone(),
        }
    }

    #[tokio::test]
    async fn connector_refuses_before_connecting() {
        let c = connector(Guard::default(), ProxyConfig::none());
        let b = blocked(&c, "http://169.254.169.254/latest/meta-data").await;
        assert_eq!(b.addr, "169.254.169.254".parse::<IpAddr>().unwrap());
        assert!(b.to_string().contains("link-local"), "{b}");
        for uri in [
            "http://[::ffff:a9fe:a9fe]/",
            "http://[64:ff9b::a9fe:a9fe]/",
            "https://[64:ff9b::6464:64c8]/",
        ] {
            blocked(&c, uri).await;
        }
        // Names are checked after resolution.
        let c = connector(
            Guard {
                allow_loopback: false,
                ..Guard::default()
            },
            ProxyConfig::none(),
        );
        let b = blocked(&c, "http://localhost:9/").await;
        assert!(
            b.to_string().starts_with("host localhost resolves to"),
            "{b}"
        );
    }

    #[tokio::test]
    async fn blocked_targets_are_refused_before_the_proxy_is_contacted() {
        // A proxy that counts connections.
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let proxy = ProxyConfig::none()
            .with_https(Some(Proxy::parse(&addr.to_string()).unwrap()))
            .with_http(Some(Proxy::parse(&addr.to_string()).unwrap()));
        let c = connector(Guard::default(), proxy);
        for uri in [
            "https://169.254.169.254/",
            "http://[64:ff9b::a9fe:a9fe]/",
            "http://metadata.google.internal/computeMetadata/v1/",
            "https://100.100.100.200/",
        ] {
            blocked(&c, uri).await;
        }
        let accepted = tokio::time::timeout(Duration::from_millis(50), listener.accept()).await;
        assert!(accepted.is_err(), "the proxy was contacted");
    }
}
