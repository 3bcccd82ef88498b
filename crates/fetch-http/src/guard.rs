//! The SSRF guard and the connector that enforces it on every connection.

use std::fmt;
use std::future::Future;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use http::Uri;
use hyper_util::rt::TokioIo;
use ipnet::IpNet;
use tokio::net::TcpStream;

/// Which destination addresses the fetcher may connect to.
///
/// Always refused: link-local (`169.254.0.0/16`, `fe80::/10`) and cloud
/// metadata addresses (`100.100.100.200`, `fd00:ec2::/32`), in their IPv6
/// IPv4-mapped forms too. Loopback and private ranges are allowed unless
/// switched off; operator-configured CIDRs are refused.
#[derive(Debug, Clone)]
pub(crate) struct Guard {
    pub(crate) blocked: Vec<IpNet>,
    pub(crate) allow_private: bool,
    pub(crate) allow_loopback: bool,
}

/// Why an address was refused.
#[derive(Debug)]
pub(crate) struct BlockedAddr {
    pub(crate) host: String,
    pub(crate) addr: IpAddr,
    pub(crate) why: String,
}

impl fmt::Display for BlockedAddr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.host == self.addr.to_string() {
            write!(f, "address {} is {}", self.addr, self.why)
        } else {
            write!(
                f,
                "host {} resolves to {}, which is {}",
                self.host, self.addr, self.why
            )
        }
    }
}

impl std::error::Error for BlockedAddr {}

/// The IPv4 address an IPv4-mapped IPv6 address (`::ffff:a.b.c.d`) stands for.
fn canonical(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V6(v6) => v6.to_ipv4_mapped().map_or(ip, IpAddr::V4),
        v4 @ IpAddr::V4(_) => v4,
    }
}

fn v6_in(ip: Ipv6Addr, prefix: Ipv6Addr, len: u32) -> bool {
    let mask = if len == 0 {
        0
    } else {
        u128::MAX << (128 - len)
    };
    (u128::from(ip) & mask) == (u128::from(prefix) & mask)
}

impl Guard {
    /// `Err(why)` when `ip` must not be connected to.
    pub(crate) fn check(&self, ip: IpAddr) -> Result<(), String> {
        let c = canonical(ip);
        match c {
            IpAddr::V4(v4) => self.check_v4(v4)?,
            IpAddr::V6(v6) => self.check_v6(v6)?,
        }
        for net in &self.blocked {
            if net.contains(&ip) || net.contains(&c) {
                return Err(format!("in the blocked range {net}"));
            }
        }
        Ok(())
    }

    fn check_v4(&self, ip: Ipv4Addr) -> Result<(), String> {
        if ip == Ipv4Addr::new(100, 100, 100, 200) {
            return Err("a cloud metadata address".to_owned());
        }
        if ip.is_link_local() {
            return Err(
                "link-local (169.254.0.0/16, where cloud metadata services live)".to_owned(),
            );
        }
        if !self.allow_loopback && (ip.is_loopback() || ip.is_unspecified()) {
            return Err("loopback, which is not allowed".to_owned());
        }
        let o = ip.octets();
        let shared = o[0] == 100 && (64..128).contains(&o[1]); // 100.64.0.0/10
        if !self.allow_private && (ip.is_private() || shared) {
            return Err("a private address, which is not allowed".to_owned());
        }
        Ok(())
    }

    fn check_v6(&self, ip: Ipv6Addr) -> Result<(), String> {
        if v6_in(ip, Ipv6Addr::new(0xfd00, 0x0ec2, 0, 0, 0, 0, 0, 0), 32) {
            return Err("a cloud metadata address (fd00:ec2::/32)".to_owned());
        }
        if v6_in(ip, Ipv6Addr::new(0xfe80, 0, 0, 0, 0, 0, 0, 0), 10) {
            return Err("link-local (fe80::/10)".to_owned());
        }
        if !self.allow_loopback && (ip.is_loopback() || ip.is_unspecified()) {
            return Err("loopback, which is not allowed".to_owned());
        }
        if !self.allow_private && v6_in(ip, Ipv6Addr::new(0xfc00, 0, 0, 0, 0, 0, 0, 0), 7) {
            return Err("a private (unique local) address, which is not allowed".to_owned());
        }
        Ok(())
    }
}

/// A hyper-util connector that resolves the host itself (tokio's
/// `lookup_host`), checks every resolved address with the [`Guard`], and
/// connects to exactly the checked addresses: there is no second resolution
/// between check and connect, so DNS rebinding cannot slip past the guard.
#[derive(Clone)]
pub(crate) struct GuardedConnector {
    pub(crate) guard: Arc<Guard>,
    pub(crate) connect_timeout: Duration,
}

type BoxError = Box<dyn std::error::Error + Send + Sync>;

impl tower_service::Service<Uri> for GuardedConnector {
    type Response = TokioIo<TcpStream>;
    type Error = BoxError;
    type Future = Pin<Box<dyn Future<Output = Result<Self::Response, BoxError>> + Send>>;

    fn poll_ready(&mut self, _cx: &mut Context<'_>) -> Poll<Result<(), BoxError>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, uri: Uri) -> Self::Future {
        let guard = self.guard.clone();
        let timeout = self.connect_timeout;
        Box::pin(async move { connect(&guard, &uri, timeout).await })
    }
}

async fn connect(
    guard: &Guard,
    uri: &Uri,
    timeout: Duration,
) -> Result<TokioIo<TcpStream>, BoxError> {
    let host = uri.host().ok_or("URL has no host")?;
    let host = host
        .strip_prefix('[')
        .and_then(|h| h.strip_suffix(']'))
        .unwrap_or(host);
    let port = uri.port_u16().unwrap_or(match uri.scheme_str() {
        Some("https") => 443,
        _ => 80,
    });
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
    // A name with any refused address is refused as a whole: a name that mixes
    // a public address with a metadata one is an attack, not an accident.
    for a in &addrs {
        if let Err(why) = guard.check(a.ip()) {
            return Err(Box::new(BlockedAddr {
                host: host.to_owned(),
                addr: a.ip(),
                why,
            }));
        }
    }
    let mut last: Option<std::io::Error> = None;
    for addr in addrs {
        match tokio::time::timeout(timeout, TcpStream::connect(addr)).await {
            Ok(Ok(stream)) => {
                let _ = stream.set_nodelay(true);
                return Ok(TokioIo::new(stream));
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

#[cfg(test)]
mod tests {
    use super::*;

    fn guard() -> Guard {
        Guard {
            blocked: vec![],
            allow_private: true,
            allow_loopback: true,
        }
    }

    #[test]
    fn builtin_blocks() {
        let g = guard();
        for bad in [
            "169.254.169.254",
            "169.254.0.1",
            "100.100.100.200",
            "fe80::1",
            "febf::1",
            "fd00:ec2::254",
            "::ffff:169.254.169.254",
            "::ffff:100.100.100.200",
        ] {
            let ip: IpAddr = bad.parse().unwrap();
            assert!(g.check(ip).is_err(), "{bad}");
        }
        for ok in [
            "127.0.0.1",
            "::1",
            "10.0.0.1",
            "192.168.1.1",
            "fd00::1",
            "8.8.8.8",
            "2001:db8::1",
            "100.64.0.1",
            "::ffff:127.0.0.1",
        ] {
            let ip: IpAddr = ok.parse().unwrap();
            assert!(g.check(ip).is_ok(), "{ok}");
        }
    }

    #[test]
    fn switches_and_cidrs() {
        let g = Guard {
            blocked: vec![
                "203.0.113.0/24".parse().unwrap(),
                "2001:db8::/32".parse().unwrap(),
            ],
            allow_private: false,
            allow_loopback: false,
        };
        for bad in [
            "127.0.0.1",
            "::1",
            "0.0.0.0",
            "::ffff:127.0.0.1",
            "10.1.2.3",
            "172.16.0.1",
            "192.168.0.1",
            "100.64.0.1",
            "fd12::1",
            "203.0.113.7",
            "::ffff:203.0.113.7",
            "2001:db8::1",
        ] {
            let ip: IpAddr = bad.parse().unwrap();
            assert!(g.check(ip).is_err(), "{bad}");
        }
        assert!(g.check("8.8.8.8".parse().unwrap()).is_ok());
        let e = g.check("203.0.113.7".parse().unwrap()).unwrap_err();
        assert_eq!(e, "in the blocked range 203.0.113.0/24");
    }

    #[tokio::test]
    async fn connector_refuses_before_connecting() {
        let g = Arc::new(guard());
        let uri: Uri = "http://169.254.169.254/latest/meta-data".parse().unwrap();
        let e = connect(&g, &uri, Duration::from_secs(1)).await.unwrap_err();
        let b = e.downcast_ref::<BlockedAddr>().unwrap();
        assert_eq!(b.addr, "169.254.169.254".parse::<IpAddr>().unwrap());
        assert!(b.to_string().contains("link-local"), "{b}");
        let uri: Uri = "http://[::ffff:a9fe:a9fe]/".parse().unwrap();
        let e = connect(&g, &uri, Duration::from_secs(1)).await.unwrap_err();
        assert!(e.downcast_ref::<BlockedAddr>().is_some(), "{e}");
        // Names are checked after resolution.
        let g = Arc::new(Guard {
            allow_loopback: false,
            ..guard()
        });
        let uri: Uri = "http://localhost:9/".parse().unwrap();
        let e = connect(&g, &uri, Duration::from_secs(1)).await.unwrap_err();
        let b = e.downcast_ref::<BlockedAddr>().unwrap();
        assert!(
            b.to_string().starts_with("host localhost resolves to"),
            "{b}"
        );
    }
}
