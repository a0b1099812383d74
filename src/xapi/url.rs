//! Host URLs with credentials: `https://root:p%40ss@host:443/`. Parsed by the `url` crate
//! (WHATWG rules, as Node's `URL` that the npm `xen-api` client uses), with its defaults: https
//! when no scheme is given, percent-decoded user and password. Displayed with the password
//! redacted.

use std::fmt;

use ::url::{Host, ParseError, Url};
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
        // A bare `host` or `user:password@host` means https, as in the npm client.
        let parsed = if input.contains("://") {
            Url::parse(input)
        } else {
            Url::parse(&format!("https://{input}"))
        }
        .map_err(|e| match e {
            ParseError::EmptyHost => fail("no host"),
            ParseError::InvalidPort
            | ParseError::InvalidIpv4Address
            | ParseError::InvalidIpv6Address
            | ParseError::InvalidDomainCharacter
            | ParseError::IdnaError => fail(&format!("bad host or port ({e})")),
            _ => fail(&e.to_string()),
        })?;
        let scheme = match parsed.scheme() {
            "https" => Scheme::Https,
            "http" => Scheme::Http,
            other => return Err(fail(&format!("unsupported scheme {other:?}"))),
        };
        // As in any URL, the authority ends at the first '/', '?' or '#': such characters in a
        // password must be percent-encoded, or they start a path, query or fragment.
        if parsed.query().is_some() || parsed.fragment().is_some() {
            return Err(fail(
                "a host URL takes no query or fragment (percent-encode ? and # in passwords)",
            ));
        }
        let host = match parsed.host() {
            Some(Host::Domain(name)) if !name.is_empty() => name.to_string(),
            Some(Host::Ipv4(address)) => address.to_string(),
            Some(Host::Ipv6(address)) => address.to_string(),
            _ => return Err(fail("no host")),
        };
        // The url crate keeps userinfo percent-encoded; the npm client decodes it.
        let decode = |s: &str| {
            percent_decode_str(s)
                .decode_utf8()
                .map(|c| c.into_owned())
                .map_err(|_| fail("credentials are not valid UTF-8 once percent-decoded"))
        };
        let username = Some(decode(parsed.username())?).filter(|u| !u.is_empty());
        let password = parsed.password().map(decode).transpose()?.map(Secret::new);
        let port = parsed
            .port_or_known_default()
            .ok_or_else(|| fail("no port"))?;
        Ok(HostUrl {
            scheme,
            host,
            port,
            username,
            password,
            path: parsed.path().trim_end_matches('/').to_string(),
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

/// The input with everything between `://user:` and the last `@` replaced, for error messages.
/// Hand-written because it must also work on input the url crate refused to parse.
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
        assert!(e.reason.starts_with("bad host or port"), "{e}");
        assert_eq!(HostUrl::parse("http://:1").unwrap_err().reason, "no host");
        let e = HostUrl::parse("http://root:se?cret@host").unwrap_err();
        assert!(!e.to_string().contains("cret"), "{e}");
        let e = HostUrl::parse("root:secret@[::1").unwrap_err();
        assert!(!e.to_string().contains("secret"), "{e}");
    }

    #[test]
    fn credentials_decode_as_xo_cr_seed_does() {
        let u = HostUrl::parse("https://admin:l%40b%20pass@xen1.example").unwrap();
        assert_eq!(u.username.as_deref(), Some("admin"));
        assert_eq!(u.password.as_ref().unwrap().expose(), "l@b pass");
        // An unencoded '@' belongs to the password: the host follows the last one.
        let u = HostUrl::parse("http://root:p@ss@10.0.0.1").unwrap();
        assert_eq!(u.password.as_ref().unwrap().expose(), "p@ss");
        assert_eq!(u.host, "10.0.0.1");
        let u = HostUrl::parse("http://r%C3%B6ot@host").unwrap();
        assert_eq!((u.username.as_deref(), u.password), (Some("röot"), None));
        let u = HostUrl::parse("http://host").unwrap();
        assert_eq!((u.username, u.password), (None, None));
        assert!(HostUrl::parse("http://root:%FF@host").is_err());
    }

    #[test]
    fn without_a_scheme_https_is_assumed() {
        let u = HostUrl::parse("root:pw@10.0.0.1:8443").unwrap();
        assert_eq!(
            (u.scheme, u.host.as_str(), u.port, u.username.as_deref()),
            (Scheme::Https, "10.0.0.1", 8443, Some("root"))
        );
        assert_eq!(u.password.as_ref().unwrap().expose(), "pw");
        let u = HostUrl::parse("HTTP://Xen1.Example").unwrap();
        assert_eq!(
            (u.scheme, u.host.as_str(), u.port),
            (Scheme::Http, "xen1.example", 80)
        );
    }

    #[test]
    fn ipv6_literals_with_credentials_and_default_ports() {
        let u = HostUrl::parse("http://root:pw@[fd00::1]").unwrap();
        assert_eq!((u.host.as_str(), u.port), ("fd00::1", 80));
        assert_eq!(u.to_string(), "http://[fd00::1]:80");
        for bad in ["http://[fd00::1", "http://[::g]/", "http://fd00::1/"] {
            assert!(HostUrl::parse(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn a_path_prefix_keeps_no_trailing_slash() {
        let u = HostUrl::parse("https://host:4443/xapi/").unwrap();
        assert_eq!(u.path, "/xapi");
        assert_eq!(u.to_string(), "https://host:4443/xapi");
        assert_eq!(HostUrl::parse("https://host/").unwrap().path, "");
        assert_eq!(HostUrl::parse("https://host").unwrap().path, "");
    }

    #[test]
    fn refused_forms() {
        for bad in [
            "",
            "http://",
            "https://:443",
            "root:pw@",
            "ftp://host",
            "http://host?x=1",
            "http://host/#top",
            "http://host:65536",
        ] {
            assert!(HostUrl::parse(bad).is_err(), "{bad}");
        }
    }
}
