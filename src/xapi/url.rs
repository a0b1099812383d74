//! Host URLs with credentials: `https://root:p%40ss@host:443/`. Parsed the way the npm
//! `xen-api` client does (default scheme https, percent-decoded user and password), and
//! displayed with the password redacted.

use std::fmt;

use percent_encoding::percent_decode_str;

use super::Secret;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Scheme {
    Http,
    Https,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HostUrl {
    pub scheme: Scheme,
    /// Host name or IP address; IPv6 literals without brackets.
    pub host: String,
    pub port: u16,
    pub username: Option<String>,
    pub password: Option<Secret>,
    /// Path prefix, without a trailing slash ("" for the root).
    pub path: String,
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("invalid host URL {url:?}: {reason}")]
pub struct UrlError {
    /// The URL with any password removed.
    pub url: String,
    pub reason: String,
}

impl HostUrl {
    pub fn parse(input: &str) -> Result<HostUrl, UrlError> {
        let fail = |reason: &str| UrlError {
            url: redact(input),
            reason: reason.to_string(),
        };
        let (scheme, rest) = match input.split_once("://") {
            Some((s, rest)) if s.eq_ignore_ascii_case("https") => (Scheme::Https, rest),
            Some((s, rest)) if s.eq_ignore_ascii_case("http") => (Scheme::Http, rest),
            Some((s, _)) => return Err(fail(&format!("unsupported scheme {s:?}"))),
            None => (Scheme::Https, input),
        };
        // As in any URL, the authority ends at the first '/', '?' or '#': such characters in a
        // password must be percent-encoded.
        let (authority, path) = match rest.find(['/', '?', '#']) {
            Some(i) => (&rest[..i], &rest[i..]),
            None => (rest, ""),
        };
        if path.contains(['?', '#']) {
            return Err(fail(
                "a host URL takes no query or fragment (percent-encode ? and # in passwords)",
            ));
        }
        let (userinfo, hostport) = match authority.rfind('@') {
            Some(i) => (Some(&authority[..i]), &authority[i + 1..]),
            None => (None, authority),
        };
        let decode = |s: &str| {
            percent_decode_str(s)
                .decode_utf8()
                .map(|c| c.into_owned())
                .map_err(|_| fail("credentials are not valid UTF-8 once percent-decoded"))
        };
        let (username, password) = match userinfo {
            None => (None, None),
            Some(info) => match info.split_once(':') {
                Some((u, p)) => (Some(decode(u)?), Some(Secret::new(decode(p)?))),
                None => (Some(decode(info)?), None),
            },
        };
        let (host, port) = split_host_port(hostport).ok_or_else(|| fail("bad host or port"))?;
        if host.is_empty() {
            return Err(fail("no host"));
        }
        let default_port = match scheme {
            Scheme::Http => 80,
            Scheme::Https => 443,
        };
        Ok(HostUrl {
            scheme,
            host,
            port: port.unwrap_or(default_port),
            username: username.filter(|u| !u.is_empty()),
            password,
            path: path.trim_end_matches('/').to_string(),
        })
    }

    /// `host:port`, with IPv6 literals bracketed, for Host headers and connecting.
    pub fn authority(&self) -> String {
        if self.host.contains(':') {
            format!("[{}]:{}", self.host, self.port)
        } else {
            format!("{}:{}", self.host, self.port)
        }
    }

    /// The URL without credentials, e.g. `https://10.0.0.1:443`, for messages.
    pub fn without_credentials(&self) -> String {
        let scheme = match self.scheme {
            Scheme::Http => "http",
            Scheme::Https => "https",
        };
        format!("{scheme}://{}{}", self.authority(), self.path)
    }
}

impl fmt::Display for HostUrl {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.without_credentials())
    }
}

fn split_host_port(s: &str) -> Option<(String, Option<u16>)> {
    if let Some(rest) = s.strip_prefix('[') {
        let (host, after) = rest.split_once(']')?;
        let port = match after.strip_prefix(':') {
            Some(p) => Some(p.parse().ok()?),
            None if after.is_empty() => None,
            None => return None,
        };
        return Some((host.to_string(), port));
    }
    match s.split_once(':') {
        Some((host, port)) => Some((host.to_string(), Some(port.parse().ok()?))),
        None => Some((s.to_string(), None)),
    }
}

/// The input with everything between `://user:` and the last `@` replaced, for error messages.
fn redact(input: &str) -> String {
    let start = input.find("://").map_or(0, |i| i + 3);
    let Some(at) = input[start..].rfind('@').map(|i| start + i) else {
        return input.to_string();
    };
    match input[start..at].find(':') {
        Some(colon) => format!("{}:***{}", &input[..start + colon], &input[at..]),
        None => input.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn percent_encoded_special_characters_in_passwords() {
        let u = HostUrl::parse("http://root:p%40s%3As%2Fw%23o%3Fr%25d@127.0.0.1:41234").unwrap();
        assert_eq!(u.username.as_deref(), Some("root"));
        assert_eq!(u.password.as_ref().unwrap().expose(), "p@s:s/w#o?r%d");
        assert_eq!(
            (u.host.as_str(), u.port, u.scheme),
            ("127.0.0.1", 41234, Scheme::Http)
        );
        assert_eq!(u.to_string(), "http://127.0.0.1:41234");
    }

    #[test]
    fn defaults_and_ipv6() {
        let u = HostUrl::parse("xen1.example").unwrap();
        assert_eq!((u.scheme, u.port), (Scheme::Https, 443));
        let v6 = HostUrl::parse("https://[::1]:8443/").unwrap();
        assert_eq!(
            (v6.host.as_str(), v6.port, v6.authority()),
            ("::1", 8443, "[::1]:8443".to_string())
        );
    }

    #[test]
    fn errors_never_show_the_password() {
        let e = HostUrl::parse("ftp://root:secret@host").unwrap_err();
        assert!(!e.to_string().contains("secret"), "{e}");
        let e = HostUrl::parse("http://root:secret@host:notaport").unwrap_err();
        assert!(!e.to_string().contains("secret"), "{e}");
        let e = HostUrl::parse("http://root:se?cret@host").unwrap_err();
        assert!(!e.to_string().contains("cret"), "{e}");
    }
}
