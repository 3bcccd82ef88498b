//! `WWW-Authenticate` challenges and the token realm rules.
//!
//! A registry answers 401 with a challenge: `Basic realm="..."` or
//! `Bearer realm="https://auth.example/token",service="...",scope="..."`. For
//! Bearer, the fetcher asks the realm for a token, with our credentials. A
//! hostile registry could point the realm at a cloud metadata service, at
//! something inside the cluster, or at plain http to read the password. So:
//!
//! - the realm must be an `https` URL with a host; `http` is accepted only
//!   for insecure-listed registries;
//! - the realm request goes through the same guarded transport as every
//!   other request: the connector checks the realm host's resolved
//!   addresses when it connects (link-local and metadata addresses are
//!   refused in every form), and, unless the registry is insecure-listed or
//!   `allow_private_realms` is set, loopback and private addresses too;
//! - the realm is checked on the challenge that is answered, when it is
//!   answered: there is no earlier probe whose verdict could go stale.

use url::Url;

/// One challenge of a `WWW-Authenticate` header.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Challenge {
    /// `basic`, `bearer`, ... (lower case).
    pub(crate) scheme: String,
    /// The parameters in order (names in lower case).
    pub(crate) params: Vec<(String, String)>,
}

impl Challenge {
    pub(crate) fn param(&self, name: &str) -> Option<&str> {
        self.params
            .iter()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.as_str())
    }
}

/// Parses every challenge in `WWW-Authenticate` values.
///
/// A small RFC 7235 tokenizer: challenges are `scheme [token68 | param=value, ...]`,
/// separated by commas; values may be quoted strings with `\` escapes.
pub(crate) fn challenges<'a>(headers: impl IntoIterator<Item = &'a str>) -> Vec<Challenge> {
    let mut out: Vec<Challenge> = Vec::new();
    for header in headers {
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
                if let Some(c) = out.last_mut() {
                    c.params.push((token.to_ascii_lowercase(), value));
                }
                rest = remaining;
            } else {
                // A new challenge's scheme (or a token68).
                out.push(Challenge {
                    scheme: token.to_ascii_lowercase(),
                    params: Vec::new(),
                });
                rest = after;
            }
        }
    }
    out
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

/// Checks the shape of a realm: an `https` URL with a host (`http` only when
/// `allow_http`). Returns the URL. The message names the realm's host at
/// most (a realm URL may carry a query).
pub(crate) fn realm_url(realm: &str, allow_http: bool) -> Result<Url, String> {
    // `http:///x` parses with `x` as the host; a realm written without a host is refused.
    if realm
        .split_once("://")
        .is_some_and(|(_, rest)| rest.starts_with('/'))
    {
        return Err("the realm has no host".into());
    }
    let url = Url::parse(realm).map_err(|_| "the realm is not a URL".to_owned())?;
    match url.scheme() {
        "https" => {}
        "http" if allow_http => {}
        "http" => {
            return Err(format!(
                "the realm http://{}/... is plain http, which would send credentials in clear \
                 (allowed only for insecure-listed registries)",
                url.host_str().unwrap_or("")
            ));
        }
        other => return Err(format!("the realm scheme {other} is not http(s)")),
    }
    if url.host_str().is_none_or(str::is_empty) {
        return Err("the realm has no host".into());
    }
    Ok(url)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn realms(headers: &[&str]) -> Vec<String> {
        challenges(headers.iter().copied())
            .into_iter()
            .filter(|c| c.scheme == "bearer")
            .flat_map(|c| {
                c.params
                    .into_iter()
                    .filter(|(k, _)| k == "realm")
                    .map(|(_, v)| v)
            })
            .collect()
    }

    #[test]
    fn challenges_parse() {
        let c = challenges([
            r#"Bearer realm="https://auth.example/token",service="registry.example",scope="repository:a:pull""#,
        ]);
        assert_eq!(c.len(), 1);
        assert_eq!(c[0].param("realm"), Some("https://auth.example/token"));
        assert_eq!(c[0].param("service"), Some("registry.example"));
        assert_eq!(c[0].param("scope"), Some("repository:a:pull"));
        assert!(realms(&[r#"Basic realm="registry""#]).is_empty());
        let r = realms(&[
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
            realm_url("file:///etc/passwd", true)
                .unwrap_err()
                .contains("no host")
        );
        assert!(
            realm_url("ftp://h/t", true)
                .unwrap_err()
                .contains("not http(s)")
        );
        assert!(realm_url("not a url", true).is_err());
        assert!(realm_url("http:///no-host", true).is_err());
        assert!(realm_url("data:text/plain,x", true).is_err());
        let e = realm_url("http://auth.example/t?secret=1", false).unwrap_err();
        assert!(e.contains("plain http") && !e.contains("secret"), "{e}");
        assert!(realm_url("http://auth.example/t", true).is_ok());
        assert!(realm_url("https://auth.example/t?x=1", false).is_ok());
    }
}
