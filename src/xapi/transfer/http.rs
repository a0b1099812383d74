//! The data plane's HTTP, shared by both halves: query strings, one request under the stall
//! timeout, the redirect to another pool member, and what a refusal says.

use std::time::Duration;

use http_body_util::{BodyExt, Limited};
use hyper::body::Incoming;
use hyper::header::LOCATION;
use hyper::{Request, Response};

use super::TransferErrorKind;
use crate::xapi::HostUrl;
use crate::xapi::connection::Endpoint;

/// Redirects followed per request before giving up.
pub(super) const MAX_REDIRECTS: u32 = 3;
/// How much of an error response's body goes into the message.
const ERROR_BODY_LIMIT: usize = 4096;

/// A form-urlencoded query string of `pairs`, in order.
pub(super) fn query(pairs: &[(&str, &str)]) -> String {
    form_urlencoded::Serializer::new(String::new())
        .extend_pairs(pairs)
        .finish()
}

/// Open a connection to `endpoint` and send `request`, giving up after `stall` without an
/// answer.
pub(super) async fn send<B>(
    endpoint: &Endpoint,
    request: Request<B>,
    stall: Duration,
) -> Result<Response<Incoming>, TransferErrorKind>
where
    B: hyper::body::Body + Send + 'static,
    B::Data: Send,
    B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
{
    match tokio::time::timeout(stall, endpoint.send(request)).await {
        Err(_) => Err(TransferErrorKind::Stall { after: stall }),
        Ok(Err(e)) => Err(TransferErrorKind::Connection(e.to_string())),
        Ok(Ok(response)) => Ok(response),
    }
}

pub(super) enum Redirect {
    No,
    To(Result<Endpoint, TransferErrorKind>),
}

/// A 3xx with a Location: the endpoint of the host it names, with the same trust (and never
/// from https down to http, see [`Endpoint::redirected`]).
pub(super) fn redirect(from: &Endpoint, response: &Response<Incoming>) -> Redirect {
    if !response.status().is_redirection() {
        return Redirect::No;
    }
    let Some(location) = response.headers().get(LOCATION) else {
        return Redirect::No;
    };
    let target = location
        .to_str()
        .ok()
        .and_then(|l| l.parse::<hyper::Uri>().ok())
        .and_then(|uri| Some(format!("{}://{}", uri.scheme_str()?, uri.authority()?)))
        .ok_or_else(|| {
            TransferErrorKind::Connection(format!(
                "unusable redirect Location {:?}",
                String::from_utf8_lossy(location.as_bytes())
            ))
        })
        .and_then(|base| {
            HostUrl::parse(&base).map_err(|e| TransferErrorKind::Connection(e.to_string()))
        })
        .and_then(|url| {
            from.redirected(url)
                .map_err(|e| TransferErrorKind::Connection(e.to_string()))
        });
    Redirect::To(target)
}

/// A non-200 answer: its status and the start of its body.
pub(super) async fn status_error(response: Response<Incoming>) -> TransferErrorKind {
    let status = response.status().as_u16();
    let body = Limited::new(response.into_body(), ERROR_BODY_LIMIT)
        .collect()
        .await
        .map(|b| String::from_utf8_lossy(&b.to_bytes()).trim().to_owned())
        .unwrap_or_default();
    TransferErrorKind::Status { status, body }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn query_values_are_form_urlencoded() {
        let built = query(&[("vdi", "OpaqueRef:1a-2b"), ("session_id", "a&b=c d+")]);
        assert_eq!(built, "vdi=OpaqueRef%3A1a-2b&session_id=a%26b%3Dc+d%2B");
        let parsed: Vec<(String, String)> = form_urlencoded::parse(built.as_bytes())
            .into_owned()
            .collect();
        assert_eq!(
            parsed,
            [
                ("vdi".to_owned(), "OpaqueRef:1a-2b".to_owned()),
                ("session_id".to_owned(), "a&b=c d+".to_owned())
            ]
        );
    }
}
