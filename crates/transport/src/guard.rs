//! The address guard: which destination addresses may be connected to.
//!
//! This is the only place these rules exist. The connector
//! ([`crate::connect`]) applies them to every address it is about to connect
//! to, after it resolved the name itself, so there is no window between the
//! check and the connection (DNS rebinding cannot slip past).

use std::fmt;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use ipnet::IpNet;

/// Which destination addresses may be connected to.
///
/// Always refused, whatever the configuration:
/// - link-local `169.254.0.0/16` (where cloud metadata services live) and
///   `fe80::/10`;
/// - the metadata addresses `100.100.100.200` (Alibaba) and `fd00:ec2::/32`
///   (AWS IPv6);
/// - any IPv6 form that embeds a refused IPv4 address: IPv4-mapped
///   (`::ffff:a.b.c.d`), IPv4-compatible (`::a.b.c.d`), NAT64 (`64:ff9b::/96`
///   and the local-use `64:ff9b:1::/48`) and 6to4 (`2002::/16`). An embedded
///   IPv4 address is judged by every IPv4 rule, including the switches below.
///
/// Also refused: operator CIDRs ([`Guard::blocked`]), loopback and the
/// unspecified address when [`Guard::allow_loopback`] is off, private ranges
/// (RFC 1918, `100.64.0.0/10`, `fc00::/7`) when [`Guard::allow_private`] is
/// off. Both switches are on by default: a cache on a developer machine or in
/// a cluster fetches from local registries.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Guard {
    /// Operator-configured ranges never to connect to.
    pub blocked: Vec<IpNet>,
    /// Whether private addresses may be connected to.
    pub allow_private: bool,
    /// Whether loopback (and the unspecified address) may be connected to.
    pub allow_loopback: bool,
}

impl Default for Guard {
    fn default() -> Self {
        Self {
            blocked: Vec::new(),
            allow_private: true,
            allow_loopback: true,
        }
    }
}

/// Why a connection was refused: the host as named, the address it
/// resolved to, and the rule.
#[derive(Debug, Clone)]
pub struct BlockedAddr {
    /// The host as the URL named it.
    pub host: String,
    /// The refused address.
    pub addr: IpAddr,
    /// Which rule refused it.
    pub why: String,
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

fn v6_in(ip: Ipv6Addr, prefix: Ipv6Addr, len: u32) -> bool {
    let mask = if len == 0 {
        0
    } else {
        u128::MAX << (128 - len)
    };
    (u128::from(ip) & mask) == (u128::from(prefix) & mask)
}

fn low_v4(ip: Ipv6Addr) -> Ipv4Addr {
    Ipv4Addr::from((u128::from(ip) & 0xffff_ffff) as u32)
}

/// The IPv4 address an IPv6 address carries, for the forms that route to it:
/// IPv4-mapped, IPv4-compatible (not `::` or `::1`), NAT64 (well-known and
/// local-use prefixes) and 6to4.
pub fn embedded_v4(ip: Ipv6Addr) -> Option<Ipv4Addr> {
    if let Some(v4) = ip.to_ipv4_mapped() {
        return Some(v4);
    }
    let bits = u128::from(ip);
    if bits >> 32 == 0 && bits > 1 {
        return Some(low_v4(ip)); // ::a.b.c.d (deprecated IPv4-compatible)
    }
    if v6_in(ip, Ipv6Addr::new(0x64, 0xff9b, 0, 0, 0, 0, 0, 0), 96)
        || v6_in(ip, Ipv6Addr::new(0x64, 0xff9b, 1, 0, 0, 0, 0, 0), 48)
    {
        return Some(low_v4(ip));
    }
    if v6_in(ip, Ipv6Addr::new(0x2002, 0, 0, 0, 0, 0, 0, 0), 16) {
        return Some(Ipv4Addr::from(((bits >> 80) & 0xffff_ffff) as u32));
    }
    None
}

impl Guard {
    /// `Err(why)` when `ip` must not be connected to.
    ///
    /// # Errors
    /// The rule that refuses `ip`, in words.
    pub fn check(&self, ip: IpAddr) -> Result<(), String> {
        match ip {
            IpAddr::V4(v4) => self.check_v4(v4)?,
            IpAddr::V6(v6) => {
                if let Some(v4) = embedded_v4(v6) {
                    self.check_v4(v4)
                        .map_err(|why| format!("an IPv6 form of {v4}, which is {why}"))?;
                } else {
                    self.check_v6(v6)?;
                }
            }
        }
        let embedded = match ip {
            IpAddr::V6(v6) => embedded_v4(v6).map(IpAddr::V4),
            IpAddr::V4(_) => None,
        };
        for net in &self.blocked {
            if net.contains(&ip) || embedded.is_some_and(|e| net.contains(&e)) {
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

    /// The same guard with loopback and private addresses refused too (for
    /// token realms of registries that are not insecure-listed).
    #[must_use]
    pub fn strict(&self) -> Self {
        Self {
            blocked: self.blocked.clone(),
            allow_private: false,
            allow_loopback: false,
        }
    }
}

/// Whether `ip` is a public address: not loopback, unspecified, private,
/// shared (`100.64.0.0/10`), unique local or link-local, in any IPv6 form.
/// A redirect from a public address may not lead inwards (to loopback or
/// private addresses).
pub fn is_public(ip: IpAddr) -> bool {
    let strict = Guard {
        blocked: Vec::new(),
        allow_private: false,
        allow_loopback: false,
    };
    strict.check(ip).is_ok()
}

/// Parses an operator CIDR (`10.0.0.0/8`, `2001:db8::/32`) or a single address.
pub fn parse_cidr(s: &str) -> Option<IpNet> {
    let s = s.trim();
    s.parse::<IpNet>()
        .ok()
        .or_else(|| s.parse::<IpAddr>().ok().map(IpNet::from))
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    #[test]
    fn builtin_blocks() {
        let g = Guard::default();
        for bad in [
            "169.254.169.254",
            "169.254.0.1",
            "100.100.100.200",
            "fe80::1",
            "febf::1",
            "fd00:ec2::254",
            "::ffff:169.254.169.254",
            "::ffff:100.100.100.200",
            "::169.254.169.254",
            "64:ff9b::a9fe:a9fe",
            "64:ff9b::169.254.169.254",
            "64:ff9b:1::a9fe:a9fe",
            "64:ff9b::6464:64c8",
            "2002:a9fe:a9fe::1",
        ] {
            assert!(g.check(ip(bad)).is_err(), "{bad}");
        }
        for ok in [
            "127.0.0.1",
            "::1",
            "::",
            "10.0.0.1",
            "192.168.1.1",
            "fd00::1",
            "8.8.8.8",
            "2001:db8::1",
            "100.64.0.1",
            "::ffff:127.0.0.1",
            "64:ff9b::808:808",
            "2002:808:808::1",
        ] {
            assert!(g.check(ip(ok)).is_ok(), "{ok}");
        }
        let e = g.check(ip("64:ff9b::a9fe:a9fe")).unwrap_err();
        assert!(
            e.contains("169.254.169.254") && e.contains("link-local"),
            "{e}"
        );
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
            "::",
            "::ffff:127.0.0.1",
            "64:ff9b::7f00:1",
            "10.1.2.3",
            "172.16.0.1",
            "192.168.0.1",
            "100.64.0.1",
            "fd12::1",
            "203.0.113.7",
            "::ffff:203.0.113.7",
            "64:ff9b::cb00:7107",
            "2001:db8::1",
        ] {
            assert!(g.check(ip(bad)).is_err(), "{bad}");
        }
        assert!(g.check(ip("8.8.8.8")).is_ok());
        let e = g.check(ip("203.0.113.7")).unwrap_err();
        assert_eq!(e, "in the blocked range 203.0.113.0/24");
        assert!(!Guard::default().strict().allow_loopback);
        assert!(is_public(ip("8.8.8.8")) && is_public(ip("2001:4860::8888")));
        for inner in [
            "127.0.0.1",
            "10.0.0.1",
            "::1",
            "fd00::1",
            "169.254.1.1",
            "::ffff:192.168.0.1",
        ] {
            assert!(!is_public(ip(inner)), "{inner}");
        }
    }

    #[test]
    fn cidrs_parse() {
        assert_eq!(
            parse_cidr(" 192.0.2.1 ").unwrap().to_string(),
            "192.0.2.1/32"
        );
        assert!(parse_cidr("10.0.0.0/33").is_none());
        assert!(parse_cidr("2001:db8::/32").is_some());
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(512))]

        /// Every IPv6 form of a link-local or metadata IPv4 address is refused.
        #[test]
        fn every_v6_form_of_a_blocked_v4_is_blocked(
            last in any::<u16>(),
            pick in 0usize..6,
            metadata in any::<bool>(),
        ) {
            let g = Guard::default();
            let v4 = if metadata {
                Ipv4Addr::new(100, 100, 100, 200)
            } else {
                Ipv4Addr::new(169, 254, (last >> 8) as u8, last as u8)
            };
            let n = u128::from(u32::from(v4));
            let v6 = match pick {
                0 => v4.to_ipv6_mapped(),
                1 => Ipv6Addr::from(n),
                2 => Ipv6Addr::from((0x0064_ff9b_u128 << 96) | n),
                3 => Ipv6Addr::from((0x0064_ff9b_0001_u128 << 80) | n),
                4 => Ipv6Addr::from((0x2002_u128 << 112) | (n << 80)),
                _ => Ipv6Addr::from((0x0064_ff9b_0001_u128 << 80) | (u128::from(last) << 32) | n),
            };
            prop_assert!(g.check(IpAddr::V4(v4)).is_err());
            prop_assert!(g.check(IpAddr::V6(v6)).is_err(), "{}", v6);
        }

        /// Public IPv4 addresses pass, in every form; the verdict on a form is
        /// the verdict on the address it embeds.
        #[test]
        fn embedded_verdicts_match(a in any::<u32>()) {
            let g = Guard { allow_loopback: false, allow_private: false, ..Guard::default() };
            let v4 = Ipv4Addr::from(a);
            let direct = g.check(IpAddr::V4(v4)).is_ok();
            for v6 in [
                v4.to_ipv6_mapped(),
                Ipv6Addr::from((0x0064_ff9b_u128 << 96) | u128::from(a)),
            ] {
                prop_assert_eq!(g.check(IpAddr::V6(v6)).is_ok(), direct, "{}", v6);
            }
        }

        /// Any address inside an operator CIDR is refused.
        #[test]
        fn operator_cidrs_hold(a in any::<u32>(), len in 8u8..=32) {
            let v4 = Ipv4Addr::from(a);
            let net = IpNet::new(IpAddr::V4(v4), len).unwrap().trunc();
            let g = Guard { blocked: vec![net], ..Guard::default() };
            prop_assert!(g.check(IpAddr::V4(v4)).is_err());
            prop_assert!(g.check(IpAddr::V6(v4.to_ipv6_mapped())).is_err());
        }
    }
}
