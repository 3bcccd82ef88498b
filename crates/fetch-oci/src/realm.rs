//! The bearer-realm guard: where a registry may send us for tokens.
//!
//! oci-client performs the token dance itself: it reads `WWW-Authenticate:
//! Bearer realm="..."` from `GET /v2/` and then calls the realm, with our
//! credentials. A hostile registry could point the realm at a cloud metadata
//! service or at something inside the cluster. So before oci-client talks to a
//! registry, the fetcher sends its own anonymous `GET /v2/` (same TLS settings),
//! reads every Bearer challenge and checks each realm here:
//!
//! - the scheme must be `http` or `https` and there must be a host;
//! - no address the host resolves to may be link-local (169.254.0.0/16,
//!   fe80::/10) or a metadata address (100.100.100.200, fd00:ec2::/32);
//! - loopback, private (10/8, 172.16/12, 192.168/16, 100.64/10, fc00::/7) and
//!   unspecified addresses are refused unless the registry is insecure-listed or
//!   `allow_private_realms(true)` was set.
//!
//! Known limit: the realm's host is resolved again by oci-client when it calls
//! it, so a DNS answer that changes in between (rebinding) is not caught.

use std::net::IpAddr;

use ipnet::IpNet;

/// Extracts the `realm` of every Bearer challenge in `WWW-Authenticate` values.
///
/// A small RFC 7235 tokenizer: challenges are `scheme [token68 | param=value, ...]`,
/// separated by commas; values may be quoted strings with `\` escapes. Every
/// `realm` parameter of every Bearer challenge is returned, so a duplicate
/// parameter cannot hide a second realm.
pub(crate) fn bearer_realms<'a>(headers: impl IntoIterator<Item = &'a str>) -> Vec<String> {
    let mut realms = Vec::new();
    for header in headers {
        let mut in_bearer = false;
        let mut rest = header;
        loop {
            rest = rest.trim_start_matches([' ', '\t', ',']);
            if rest.is_empty() {
                break;
            }
            let end = rest
                .find(|c: char| c == '=' || c == ',' || c.is_whitespace())
                .unwrap_or(rest.len());
            let token = &rest[..end];
            let after = rest[end..].trim_start_matches([' ', '\t']);
            if let Some(value_part) = after.strip_prefix('=') {
                if value_part.starts_with('=') || value_part.is_empty() {
                    // token68 padding (`abc==`): skip it.
                    rest = value_part.trim_start_matches('=');
                    continue;
                }
                let value_part = value_part.trim_start_matches([' ', '\t']);
                let (value, remaining) = read_value(value_part);
                if in_bearer && token.eq_ignore_ascii_case("realm") {
                    realms.push(value);
                }
                rest = remaining;
            } else {
                // A new challenge's scheme (or a token68).
                in_bearer = token.eq_ignore_ascii_case("bearer");
                rest = after;
            }
        }
    }
    realms
}

fn read_value(s: &str) -> (String, &str) {
    if let Some(q) = s.strip_prefix('"') {
        let mut out = String::new();
        let mut chars = q.char_indices();
        while let Some((i, c)) = chars.next() {
            match c {
                '\\' => {
                    if let Some((_, n)) = chars.next() {
                        out.push(n);
                    }
                }
                '"' => return (out, &q[i + 1..]),
                _ => out.push(c),
            }
        }
        (out, "")
    } else {
        let end = s.find([',', ' ', '\t']).unwrap_or(s.len());
        (s[..end].to_owned(), &s[end..])
    }
}

fn nets(list: &[&str]) -> Vec<IpNet> {
    list.iter()
        .map(|n| n.parse().expect("static CIDR literals parse"))
        .collect()
}

/// Why an address may not serve as a token realm, if it may not.
pub(crate) fn address_verdict(ip: IpAddr, allow_private: bool) -> Result<(), String> {
    let ip = match ip {
        IpAddr::V6(v6) => v6.to_ipv4_mapped().map_or(ip, IpAddr::V4),
        v4 => v4,
    };
    let always_refused = nets(&[
        "169.254.0.0/16",
        "fe80::/10",
        "100.100.100.200/32",
        "fd00:ec2::/32",
    ]);
    if always_refused.iter().any(|n| n.contains(&ip)) {
        return Err(format!("{ip} is a link-local or cloud metadata address"));
    }
    let private = nets(&[
        "10.0.0.0/8",
        "172.16.0.0/12",
        "192.168.0.0/16",
        "100.64.0.0/10",
        "fc00::/7",
    ]);
    let local = ip.is_loopback() || ip.is_unspecified() || private.iter().any(|n| n.contains(&ip));
    if local && !allow_private {
        return Err(format!(
            "{ip} is a loopback or private address (allowed only for insecure-listed registries or with allow_private_realms)"
        ));
    }
    Ok(())
}

/// Checks the shape of a realm URL; returns `(host, port)` to resolve.
pub(crate) fn realm_target(realm: &str) -> Result<(String, u16), String> {
    let url = url::Url::parse(realm).map_err(|_| "the realm is not a URL".to_owned())?;
    if !matches!(url.scheme(), "http" | "https") {
        return Err(format!("the realm scheme {} is not http(s)", url.scheme()));
    }
    let host = match url.host() {
        Some(url::Host::Domain(d)) if !d.is_empty() => d.to_owned(),
        Some(url::Host::Ipv4(v4)) => v4.to_string(),
        Some(url::Host::Ipv6(v6)) => v6.to_string(),
        _ => return Err("the realm has no host".into()),
    };
    let port = url
        .port_or_known_default()
        .ok_or_else(|| "the realm has no port".to_owned())?;
    Ok((host, port))
}

/// Validates one realm: shape, then every address its host resolves to.
/// The message names the realm's host only (a realm URL may carry a query).
pub(crate) async fn check_realm(realm: &str, allow_private: bool) -> Result<(), String> {
    let (host, port) = realm_target(realm)?;
    let addrs: Vec<IpAddr> = match host.parse::<IpAddr>() {
        Ok(ip) => vec![ip],
        Err(_) => tokio::net::lookup_host((host.as_str(), port))
            .await
            .map_err(|e| format!("cannot resolve the realm host {host}: {e}"))?
            .map(|a| a.ip())
            .collect(),
    };
    if addrs.is_empty() {
        return Err(format!("the realm host {host} resolves to no address"));
    }
    for ip in addrs {
        address_verdict(ip, allow_private).map_err(|r| format!("realm host {host}: {r}"))?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn challenges_parse() {
        let r = bearer_realms([
            r#"Bearer realm="https://auth.example/token",service="registry.example",scope="repository:a:pull""#,
        ]);
        assert_eq!(r, vec!["https://auth.example/token"]);
        assert!(bearer_realms([r#"Basic realm="registry""#]).is_empty());
        let r = bearer_realms([
            r#"Basic realm="x", Bearer realm="http://169.254.169.254/t", realm=http://10.0.0.1/t"#,
            r#"bearer REALM="a\"b""#,
            "Negotiate abc==, Bearer realm=file:///etc",
        ]);
        assert_eq!(
            r,
            vec![
                "http://169.254.169.254/t",
                "http://10.0.0.1/t",
                "a\"b",
                "file:///etc"
            ]
        );
    }

    #[test]
    fn realm_shapes() {
        assert!(
            realm_target("file:///etc/passwd")
                .unwrap_err()
                .contains("not http(s)")
        );
        assert!(realm_target("ftp://h/t").is_err());
        assert!(realm_target("not a url").is_err());
        assert_eq!(
            realm_target("https://a.example/t?x=1").unwrap(),
            ("a.example".into(), 443)
        );
        assert_eq!(
            realm_target("http://[::1]:8080/t").unwrap(),
            ("::1".into(), 8080)
        );
    }

    #[test]
    fn address_rules() {
        let ip = |s: &str| s.parse::<IpAddr>().unwrap();
        for bad in [
            "169.254.169.254",
            "fe80::1",
            "100.100.100.200",
            "fd00:ec2::254",
            "::ffff:169.254.1.1",
        ] {
            assert!(address_verdict(ip(bad), true).is_err(), "{bad}");
        }
        for local in [
            "127.0.0.1",
            "::1",
            "10.1.2.3",
            "192.168.1.1",
            "172.20.0.1",
            "0.0.0.0",
            "fd12::1",
        ] {
            assert!(address_verdict(ip(local), false).is_err(), "{local}");
            assert!(address_verdict(ip(local), true).is_ok(), "{local}");
        }
        assert!(address_verdict(ip("8.8.8.8"), false).is_ok());
    }

    #[tokio::test]
    async fn realms_are_resolved_and_checked() {
        assert!(
            check_realm("http://169.254.169.254/latest", true)
                .await
                .is_err()
        );
        assert!(
            check_realm("http://127.0.0.1:1/token", false)
                .await
                .is_err()
        );
        assert!(check_realm("http://127.0.0.1:1/token", true).await.is_ok());
        // `localhost` resolves (through /etc/hosts) to loopback only.
        let e = check_realm("http://localhost:1/token", false)
            .await
            .unwrap_err();
        assert!(e.contains("loopback"), "{e}");
    }
}
