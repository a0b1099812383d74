//! What a data-plane request carries: parameters from the query string and the `Cookie`
//! header, and HTTP Basic credentials.
//!
//! xapi reads its parameters from both places, in an order that depends on the parameter
//! (protocol reference §1.1): `session_id` and `task_id` are looked up cookie first
//! (`Xapi_http`), the transfer's own parameters query first (`Importexport`).

use base64::Engine as _;
use hyper::HeaderMap;
use hyper::header::{AUTHORIZATION, CONTENT_LENGTH, COOKIE};
use percent_encoding::percent_decode_str;
use url::form_urlencoded;

#[derive(Debug, Default)]
pub(super) struct Params {
    query: Vec<(String, String)>,
    cookies: Vec<(String, String)>,
}

impl Params {
    pub fn new(query: Option<&str>, headers: &HeaderMap) -> Params {
        // Form encoding, as hyper leaves it: `+` is a space, pairs are percent-decoded.
        let query = query
            .map(|q| form_urlencoded::parse(q.as_bytes()).into_owned().collect())
            .unwrap_or_default();
        let cookies = headers
            .get_all(COOKIE)
            .iter()
            .filter_map(|value| value.to_str().ok())
            .flat_map(|line| line.split(';'))
            .filter_map(|pair| cookie_pair(pair.trim()))
            .collect();
        Params { query, cookies }
    }

    /// A transfer parameter: the query string first, then the cookies.
    pub fn get(&self, name: &str) -> Option<&str> {
        lookup(&self.query, name).or_else(|| lookup(&self.cookies, name))
    }

    /// `session_id` or `task_id`: the cookies first, then the query string.
    pub fn get_cookie_first(&self, name: &str) -> Option<&str> {
        lookup(&self.cookies, name).or_else(|| lookup(&self.query, name))
    }
}

fn lookup<'a>(pairs: &'a [(String, String)], name: &str) -> Option<&'a str> {
    pairs
        .iter()
        .find(|(key, _)| key == name)
        .map(|(_, value)| value.as_str())
}

/// A cookie's `key=value` (a bare `key` has an empty value), percent-decoded. Not form
/// encoding: in a cookie `+` is itself.
fn cookie_pair(pair: &str) -> Option<(String, String)> {
    if pair.is_empty() {
        return None;
    }
    let (key, value) = pair.split_once('=').unwrap_or((pair, ""));
    let decode = |text: &str| percent_decode_str(text).decode_utf8_lossy().into_owned();
    Some((decode(key), decode(value)))
}

/// The user and password of an `Authorization: Basic` header.
pub(super) fn basic_credentials(headers: &HeaderMap) -> Option<(String, String)> {
    let value = headers.get(AUTHORIZATION)?.to_str().ok()?;
    let (scheme, encoded) = value.trim().split_once(' ')?;
    if !scheme.eq_ignore_ascii_case("basic") {
        return None;
    }
    let decoded = base64::engine::general_purpose::STANDARD
        .decode(encoded.trim())
        .ok()?;
    let text = String::from_utf8(decoded).ok()?;
    let (user, password) = text.split_once(':')?;
    Some((user.to_owned(), password.to_owned()))
}

/// The declared `Content-Length`: `Ok(None)` without one, `Err` for one that is not a
/// number (or several that disagree).
pub(super) fn content_length(headers: &HeaderMap) -> Result<Option<u64>, String> {
    let mut found = None;
    for value in headers.get_all(CONTENT_LENGTH) {
        let n = value
            .to_str()
            .ok()
            .and_then(|text| text.trim().parse::<u64>().ok())
            .ok_or_else(|| format!("bad Content-Length {value:?}"))?;
        if found.is_some_and(|m| m != n) {
            return Err("several different Content-Length headers".to_owned());
        }
        found = Some(n);
    }
    Ok(found)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn headers(pairs: &[(&'static str, &str)]) -> HeaderMap {
        let mut map = HeaderMap::new();
        for (name, value) in pairs {
            map.append(*name, value.parse().unwrap());
        }
        map
    }

    #[test]
    fn sessions_come_from_cookies_first_and_transfer_parameters_from_the_query_first() {
        let h = headers(&[(
            "cookie",
            "session_id=OpaqueRef%3Acookie; vdi=from-cookie; format=vhd",
        )]);
        let p = Params::new(Some("session_id=OpaqueRef:query&vdi=a%20b+c&flag&=x"), &h);
        assert_eq!(p.get_cookie_first("session_id"), Some("OpaqueRef:cookie"));
        assert_eq!(p.get("session_id"), Some("OpaqueRef:query"));
        assert_eq!(p.get("vdi"), Some("a b c"));
        assert_eq!(p.get("format"), Some("vhd"));
        assert_eq!(p.get("flag"), Some(""));
        assert_eq!(p.get("missing"), None);
        assert_eq!(Params::new(None, &HeaderMap::new()).get("vdi"), None);
    }

    #[test]
    fn a_plus_is_a_space_in_the_query_only() {
        let h = headers(&[("cookie", "task_id=a+b%2Bc")]);
        let p = Params::new(Some("vdi=a+b%2Bc&base=%ZZ&&chunked=%E2%9C%93"), &h);
        assert_eq!(p.get("vdi"), Some("a b+c"));
        assert_eq!(p.get_cookie_first("task_id"), Some("a+b+c"));
        assert_eq!(p.get("base"), Some("%ZZ"));
        assert_eq!(p.get("chunked"), Some("✓"));
    }

    #[test]
    fn basic_credentials_are_decoded_and_other_schemes_ignored() {
        let h = headers(&[("authorization", "Basic cm9vdDpwQHNzOndvcmQ=")]);
        assert_eq!(
            basic_credentials(&h),
            Some(("root".to_owned(), "p@ss:word".to_owned()))
        );
        assert_eq!(
            basic_credentials(&headers(&[("authorization", "Bearer x")])),
            None
        );
        assert_eq!(
            basic_credentials(&headers(&[("authorization", "Basic !!")])),
            None
        );
        assert_eq!(basic_credentials(&HeaderMap::new()), None);
    }

    #[test]
    fn content_lengths_must_be_numbers_that_agree() {
        assert_eq!(content_length(&HeaderMap::new()), Ok(None));
        assert_eq!(
            content_length(&headers(&[("content-length", "42")])),
            Ok(Some(42))
        );
        assert!(content_length(&headers(&[("content-length", "-1")])).is_err());
        let two = headers(&[("content-length", "1"), ("content-length", "2")]);
        assert!(content_length(&two).is_err());
    }
}
