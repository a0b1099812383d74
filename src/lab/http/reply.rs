//! The responses the lab host writes, shaped as xapi's (protocol reference §1.1, §2.1): the
//! 200 that starts a transfer, the error pages, and the RPC answers.

use bytes::Bytes;
use hyper::header::{
    ACCESS_CONTROL_ALLOW_HEADERS, ACCESS_CONTROL_ALLOW_METHODS, ACCESS_CONTROL_ALLOW_ORIGIN,
    CACHE_CONTROL, CONNECTION, CONTENT_DISPOSITION, CONTENT_LENGTH, CONTENT_TYPE, LOCATION,
    WWW_AUTHENTICATE,
};
use hyper::{Response, StatusCode, Version};

use super::body::ReplyBody;
use crate::xapi::rpc::XapiFault;

pub(crate) type Reply = Response<ReplyBody>;

/// The header naming a transfer's task.
pub(super) const TASK_ID: &str = "task-id";

/// The 200 that starts a transfer, written before the work as xapi does. Its body has no
/// length and ends when the connection closes. hyper would frame a body of unknown length
/// with chunked encoding on an HTTP/1.1 response, so the response is marked HTTP/1.0, for
/// which hyper delimits the body by closing the connection, as xapi does.
pub(super) fn transfer_started(
    task: &str,
    content_type: &'static str,
    disposition: Option<String>,
    body: ReplyBody,
) -> Reply {
    let mut reply = Response::new(body);
    *reply.version_mut() = Version::HTTP_10;
    let headers = reply.headers_mut();
    headers.insert(CONNECTION, "close".parse().expect("static header"));
    headers.insert(
        CACHE_CONTROL,
        "no-cache, no-store".parse().expect("static header"),
    );
    headers.insert(CONTENT_TYPE, content_type.parse().expect("static header"));
    if let Ok(task) = task.parse() {
        headers.insert(TASK_ID, task);
    }
    if let Some(Ok(disposition)) = disposition.map(|d| d.parse()) {
        headers.insert(CONTENT_DISPOSITION, disposition);
    }
    reply
}

/// 401 with xapi's status text, challenge and page.
pub(super) fn unauthorised() -> Reply {
    let mut reply = page(
        StatusCode::UNAUTHORIZED,
        Some(b"Unauthorised"),
        "HTTP 401 unauthorised\r\n".to_owned(),
    );
    reply.headers_mut().insert(
        WWW_AUTHENTICATE,
        r#"Basic realm="xapi""#.parse().expect("static header"),
    );
    reply
}

/// xapi's bare `HTTP/1.0 404 Not Found`, for unknown formats, chunked misuse and
/// `Transfer-Encoding` on imports.
pub(super) fn not_found() -> Reply {
    let mut reply = Response::new(ReplyBody::empty());
    *reply.status_mut() = StatusCode::NOT_FOUND;
    *reply.version_mut() = Version::HTTP_10;
    reply
        .headers_mut()
        .insert(CONNECTION, "close".parse().expect("static header"));
    reply
}

/// `302 Found` to `location`, as a pool member sends a transfer to the host holding the SR.
pub(super) fn found(location: &str) -> Reply {
    let mut reply = Response::new(ReplyBody::empty());
    *reply.status_mut() = StatusCode::FOUND;
    let headers = reply.headers_mut();
    if let Ok(location) = location.parse() {
        headers.insert(LOCATION, location);
    }
    headers.insert(CONNECTION, "close".parse().expect("static header"));
    reply
}

pub(super) fn bad_request(fault: &XapiFault) -> Reply {
    page(
        StatusCode::BAD_REQUEST,
        None,
        format!(
            "<html><body><h1>HTTP 400 bad request</h1>{}</body></html>",
            escape(&describe(fault))
        ),
    )
}

/// 500 with xapi's page, the error in its "Additional information" section.
pub(super) fn internal_error(fault: &XapiFault) -> Reply {
    page(
        StatusCode::INTERNAL_SERVER_ERROR,
        Some(b"Internal Error"),
        internal_error_page(fault),
    )
}

/// A whole 500 response as bytes, to append to a body already started, as xapi's HTTP
/// server does when a handler fails after its 200 (protocol reference §1.1).
pub(super) fn embedded_internal_error(fault: &XapiFault) -> Bytes {
    let page = internal_error_page(fault);
    Bytes::from(format!(
        "HTTP/1.1 500 Internal Error\r\nconnection: close\r\ncontent-type: text/html\r\n\
         content-length: {}\r\ncache-control: no-cache, no-store\r\n\r\n{page}",
        page.len()
    ))
}

/// 503 for a request the host has no room to read now; the connection closes.
pub(super) fn busy() -> Reply {
    let mut reply = page(
        StatusCode::SERVICE_UNAVAILABLE,
        None,
        "HTTP 503 too many large requests are being read; try again\r\n".to_owned(),
    );
    reply
        .headers_mut()
        .insert(CONNECTION, "close".parse().expect("static header"));
    reply
}

/// 408 for a request body that took too long; the connection closes, the rest unread.
pub(super) fn request_timeout(limit: std::time::Duration) -> Reply {
    let mut reply = page(
        StatusCode::REQUEST_TIMEOUT,
        None,
        format!(
            "HTTP 408 the request body took longer than {} s\r\n",
            limit.as_secs_f64()
        ),
    );
    reply
        .headers_mut()
        .insert(CONNECTION, "close".parse().expect("static header"));
    reply
}

pub(super) fn payload_too_large(limit: usize) -> Reply {
    page(
        StatusCode::PAYLOAD_TOO_LARGE,
        None,
        format!("HTTP 413 request body larger than {limit} bytes\r\n"),
    )
}

/// An RPC answer. xapi allows any origin on its RPC endpoints.
pub(super) fn rpc(content_type: &'static str, body: Vec<u8>) -> Reply {
    let mut reply = Response::new(ReplyBody::whole(body));
    let headers = reply.headers_mut();
    headers.insert(CONTENT_TYPE, content_type.parse().expect("static header"));
    headers.insert(
        ACCESS_CONTROL_ALLOW_ORIGIN,
        "*".parse().expect("static header"),
    );
    reply
}

/// The answer to a CORS preflight (`OPTIONS`) on the RPC endpoints.
pub(super) fn cors_preflight() -> Reply {
    let mut reply = Response::new(ReplyBody::empty());
    let headers = reply.headers_mut();
    headers.insert(
        ACCESS_CONTROL_ALLOW_ORIGIN,
        "*".parse().expect("static header"),
    );
    headers.insert(
        ACCESS_CONTROL_ALLOW_METHODS,
        "POST, GET, PUT, OPTIONS".parse().expect("static header"),
    );
    headers.insert(
        ACCESS_CONTROL_ALLOW_HEADERS,
        "content-type".parse().expect("static header"),
    );
    headers.insert(CONTENT_LENGTH, "0".parse().expect("static header"));
    reply
}

fn page(status: StatusCode, reason: Option<&'static [u8]>, html: String) -> Reply {
    let mut reply = Response::new(ReplyBody::whole(html));
    *reply.status_mut() = status;
    if let Some(reason) = reason {
        reply
            .extensions_mut()
            .insert(hyper::ext::ReasonPhrase::from_static(reason));
    }
    reply
        .headers_mut()
        .insert(CONTENT_TYPE, "text/html".parse().expect("static header"));
    reply
}

fn internal_error_page(fault: &XapiFault) -> String {
    format!(
        "<html><body><h1>HTTP 500 internal server error</h1>An unexpected error occurred; \
         please wait a while and try again. If the problem persists, please contact your \
         support representative.<h1> Additional information </h1>{}</body></html>",
        escape(&describe(fault))
    )
}

/// An API error as xapi renders it on its error pages: `CODE: [ p1; p2 ]`.
fn describe(fault: &XapiFault) -> String {
    format!("{}: [ {} ]", fault.code, fault.params.join("; "))
}

/// Error parameters echo request input (a VDI parameter, say); never let them become markup.
fn escape(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for c in text.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            c => out.push(c),
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_embedded_500_is_a_whole_response_with_the_error_escaped() {
        let fault = XapiFault::new("UUID_INVALID", ["VDI", "<script>"]);
        let bytes = embedded_internal_error(&fault);
        let text = std::str::from_utf8(&bytes).unwrap();
        assert!(
            text.starts_with("HTTP/1.1 500 Internal Error\r\n"),
            "{text}"
        );
        let (head, page) = text.split_once("\r\n\r\n").unwrap();
        assert!(
            head.contains(&format!("content-length: {}", page.len())),
            "{head}"
        );
        assert!(
            page.contains("UUID_INVALID: [ VDI; &lt;script&gt; ]"),
            "{page}"
        );
    }

    #[test]
    fn transfers_start_with_a_close_delimited_response_naming_the_task() {
        let reply = transfer_started(
            "OpaqueRef:t",
            "application/vhd",
            Some(r#"attachment; filename="x.vhd""#.into()),
            ReplyBody::empty(),
        );
        assert_eq!(reply.version(), Version::HTTP_10);
        assert_eq!(reply.headers()[TASK_ID], "OpaqueRef:t");
        assert_eq!(reply.headers()[CONNECTION], "close");
        assert!(reply.headers().get(CONTENT_LENGTH).is_none());
    }
}
