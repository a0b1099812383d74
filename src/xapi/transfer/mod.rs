//! Moving one VDI's content (whole, or the delta against a base) from one host to another
//! with nothing stored in between: `GET /export_raw_vdi?format=vhd[&base=]` on the source,
//! validated in flight by the stream decoder, forwarded as the same `Bytes` to
//! `PUT /import_raw_vdi?format=vhd` on the target, with the exact Content-Length learnt from
//! the header and BAT.
//!
//! A broken stream never becomes a successful import: the stream's final footer (its last
//! 512 bytes) is held back until the source has closed cleanly and its export task has
//! succeeded, so the target cannot complete an import the source disowns. Any failure aborts
//! the upload mid-body, which fails the target's task, and cancels both tasks.

pub(crate) mod body;
mod error;
mod progress;

use std::future::Future;
use std::time::{Duration, Instant};

use bytes::{Bytes, BytesMut};
use http_body_util::{BodyExt, Empty, Limited};
use hyper::body::Incoming;
use hyper::header::{CONTENT_LENGTH, HOST, LOCATION};
use hyper::{Request, Response, StatusCode};
use percent_encoding::{AsciiSet, NON_ALPHANUMERIC, utf8_percent_encode};
use tokio::sync::mpsc;
use tokio_util::codec::Decoder;

use self::body::{ChannelBody, Chunk};
pub use self::error::{Phase, TransferError, TransferErrorKind};
pub use self::progress::Progress;
use super::HostUrl;
use super::client::XapiClient;
use super::connection::Endpoint;
use super::records::result_reference;
use crate::stream::{StreamDecoder, StreamEvent};
use crate::vhd::FOOTER_SIZE;

/// Chunks queued between the export and the import: with hyper's reads of at most a few
/// hundred KiB, a few MiB in flight.
const QUEUE_DEPTH: usize = 16;
/// The most the stream's head (footer, header, locators, BAT) may take before its length
/// is known: a 16 Mi-entry BAT is 64 MiB.
const MAX_HEAD: u64 = 80 << 20;
const MAX_REDIRECTS: u32 = 3;
/// How long a failed transfer waits for each host to end its cancelled task.
const SETTLE_TIMEOUT: Duration = Duration::from_secs(10);
/// How much of an error response's body goes into the message.
const ERROR_BODY_LIMIT: usize = 4096;

/// Query values: everything but unreserved characters and `:` (in OpaqueRefs) is escaped.
const QUERY_VALUE: &AsciiSet = &NON_ALPHANUMERIC
    .remove(b'-')
    .remove(b'.')
    .remove(b'_')
    .remove(b'~')
    .remove(b':');

#[derive(Debug, Clone, Copy)]
pub struct TransferOptions {
    /// Abort when no byte moves for this long.
    pub stall_timeout: Duration,
    /// How long to wait for a task's verdict once the bytes have moved.
    pub task_timeout: Duration,
}

impl Default for TransferOptions {
    fn default() -> TransferOptions {
        TransferOptions {
            stall_timeout: Duration::from_secs(120),
            task_timeout: Duration::from_secs(300),
        }
    }
}

/// A finished transfer, checked by both hosts' tasks.
#[derive(Debug, Clone, PartialEq)]
pub struct TransferReport {
    /// Stream bytes sent.
    pub bytes: u64,
    pub blocks: u32,
    pub duration: Duration,
    /// The export task's result text.
    pub export_result: String,
    /// The VDI reference the import task reported.
    pub imported_vdi: String,
}

/// One side of a transfer: a host and a VDI on it (reference or UUID).
#[derive(Debug, Clone, Copy)]
pub struct VdiOn<'a> {
    pub host: &'a XapiClient,
    pub vdi: &'a str,
}

/// Copy `source`'s content (the delta against `base`, a VDI on the same host, when given)
/// into `target`'s VDI. `progress` is called as bytes move; the transfer stops with
/// [`TransferErrorKind::Cancelled`] when `cancel` completes.
pub async fn transfer_vdi(
    source: VdiOn<'_>,
    base: Option<&str>,
    target: VdiOn<'_>,
    options: &TransferOptions,
    progress: &mut (dyn FnMut(&Progress) + Send),
    cancel: impl Future<Output = ()>,
) -> Result<TransferReport, TransferError> {
    let export_task = source
        .host
        .create_task("vhdsync export", source.vdi)
        .await
        .map_err(|e| fail(Phase::Setup, source, None, e.into()))?;
    let import_task = match target.host.create_task("vhdsync import", target.vdi).await {
        Ok(task) => task,
        Err(e) => {
            let _ = source.host.destroy_task(&export_task).await;
            return Err(fail(Phase::Setup, target, None, e.into()));
        }
    };
    let mut run = Run {
        source,
        target,
        base,
        export_task: &export_task,
        import_task: &import_task,
        options,
        started: Instant::now(),
        received: 0,
        forwarded: 0,
    };
    let outcome = tokio::select! {
        outcome = run.pump(progress) => outcome,
        () = cancel => Err(fail(Phase::Export, source, Some(run.received), TransferErrorKind::Cancelled)),
    };
    if outcome.is_err() {
        // Best effort: the hosts also fail the tasks themselves when the connections drop.
        // Failed tasks are left for the hosts' administrators to see (XAPI drops them with
        // the session); only successful ones are tidied away.
        let _ = source.host.cancel_task(&export_task).await;
        let _ = target.host.cancel_task(&import_task).await;
        // Cancellation is cooperative: a task is `cancelling` until the host's handler ends
        // it. Where a transfer reached a host, report only once that host has ended its
        // task, so that a caller who inspects (or cleans up) the target right after the
        // error never finds the import still running. A task no handler took stays
        // `cancelling`, so those are not waited for.
        tokio::join!(
            settle(source.host, &export_task, run.received > 0),
            settle(target.host, &import_task, run.forwarded > 0),
        );
    } else {
        let _ = source.host.destroy_task(&export_task).await;
        let _ = target.host.destroy_task(&import_task).await;
    }
    outcome
}

/// Wait (bounded, best effort) for `task` to end, if a transfer on `host` started.
async fn settle(host: &XapiClient, task: &str, started: bool) {
    if started {
        let _ = host.wait_task(task, SETTLE_TIMEOUT).await;
    }
}

fn fail(
    phase: Phase,
    side: VdiOn<'_>,
    offset: Option<u64>,
    kind: TransferErrorKind,
) -> TransferError {
    TransferError {
        phase,
        host: side.host.host(),
        vdi: side.vdi.to_owned(),
        offset,
        kind,
    }
}

/// A data-plane request that could not be built (a path or header from the host's URL that
/// HTTP refuses).
fn unbuildable(side: VdiOn<'_>, e: &hyper::http::Error) -> TransferError {
    fail(
        Phase::Setup,
        side,
        None,
        TransferErrorKind::Connection(e.to_string()),
    )
}

struct Run<'a> {
    source: VdiOn<'a>,
    target: VdiOn<'a>,
    base: Option<&'a str>,
    export_task: &'a str,
    import_task: &'a str,
    options: &'a TransferOptions,
    started: Instant,
    /// Stream bytes read from the source.
    received: u64,
    /// Stream bytes queued for the target.
    forwarded: u64,
}

/// The validating half: a [`StreamDecoder::validating`] decoder that is handed copies of the
/// structures (footer, header, BAT, bitmaps) and skips the block data, which is most of the
/// stream and goes to the target untouched.
pub(crate) struct Validator {
    pub(crate) decoder: StreamDecoder,
    buf: BytesMut,
    ended: bool,
}

impl Validator {
    pub(crate) fn new() -> Validator {
        Validator {
            decoder: StreamDecoder::validating(),
            buf: BytesMut::new(),
            ended: false,
        }
    }

    /// Decode what `chunk` completes. Returns the bytes of `chunk` past the stream's end.
    pub(crate) fn push(&mut self, chunk: &[u8]) -> Result<usize, TransferErrorKind> {
        let mut rest = chunk;
        while !rest.is_empty() && !self.ended {
            if self.buf.is_empty() {
                let skipped = self.decoder.skip(rest.len() as u64) as usize;
                rest = &rest[skipped..];
                if rest.is_empty() {
                    break;
                }
            }
            // No more than the awaited structure needs, so the buffer empties at its end and
            // the next block's data can be skipped.
            let wanted = self
                .decoder
                .bytes_wanted(self.buf.len())
                .min(rest.len() as u64) as usize;
            self.buf.extend_from_slice(&rest[..wanted]);
            rest = &rest[wanted..];
            self.drain(false)?;
        }
        Ok(if self.ended {
            rest.len() + self.buf.len()
        } else {
            0
        })
    }

    pub(crate) fn finish(&mut self) -> Result<(), TransferErrorKind> {
        if !self.ended {
            self.drain(true)?;
        }
        Ok(())
    }

    fn drain(&mut self, eof: bool) -> Result<(), TransferErrorKind> {
        loop {
            let event = if eof {
                self.decoder.decode_eof(&mut self.buf)
            } else {
                self.decoder.decode(&mut self.buf)
            };
            match event {
                Ok(Some(StreamEvent::End(_))) => {
                    self.ended = true;
                    return Ok(());
                }
                Ok(Some(_)) => {}
                Ok(None) => return Ok(()),
                Err(e) => return Err(self.explain(e)),
            }
        }
    }

    /// XAPI reports a failure after its 200 header as an HTTP response written into the
    /// body; name that rather than the garbage it makes of the stream.
    fn explain(&self, error: crate::stream::StreamError) -> TransferErrorKind {
        match status_line_in(&self.buf) {
            Some(status_line) => TransferErrorKind::EmbeddedError { status_line },
            None => TransferErrorKind::Stream(error),
        }
    }
}

/// The first line of an `HTTP/1.x` status line found in `bytes`, if any.
fn status_line_in(bytes: &[u8]) -> Option<String> {
    let at = bytes.windows(7).position(|w| w == b"HTTP/1.")?;
    let line = bytes[at..]
        .split(|&b| b == b'\r' || b == b'\n')
        .next()
        .unwrap_or_default();
    Some(String::from_utf8_lossy(&line[..line.len().min(200)]).into_owned())
}

/// The import side: the queue into the PUT body and the request running on its own task.
struct Upload {
    queue: mpsc::Sender<Chunk>,
    response: tokio::task::JoinHandle<Result<Response<Incoming>, TransferErrorKind>>,
    /// The stream's last bytes, held back until the source is known good.
    held: BytesMut,
    hold_from: u64,
}

impl Run<'_> {
    async fn pump(
        &mut self,
        progress: &mut (dyn FnMut(&Progress) + Send),
    ) -> Result<TransferReport, TransferError> {
        let response = self.open_export().await?;
        let mut body = response.into_body();
        let mut validator = Validator::new();
        // The head, until the BAT gives the exact length to announce to the target.
        let mut head: Vec<Bytes> = Vec::new();
        let total = loop {
            if let Some(total) = validator.decoder.total_len() {
                break total;
            }
            let Some(chunk) = self.next_chunk(&mut body).await? else {
                validator.finish().map_err(|k| self.invalid(k))?;
                return Err(self.invalid(TransferErrorKind::Stream(
                    crate::stream::StreamError::Truncated {
                        reading: crate::vhd::Structure::Footer,
                        expected: self.received + 1,
                        exact: false,
                        received: self.received,
                    },
                )));
            };
            validator.push(&chunk).map_err(|k| self.invalid(k))?;
            head.push(chunk);
            if self.received > MAX_HEAD {
                return Err(self.invalid(TransferErrorKind::Connection(format!(
                    "no BAT within the first {MAX_HEAD} bytes"
                ))));
            }
        };
        let mut upload = self.open_import(total).await?;
        for chunk in head {
            self.forward(&mut upload, chunk, total, &validator, progress)
                .await?;
        }
        while let Some(chunk) = self.next_chunk(&mut body).await? {
            let extra = validator.push(&chunk).map_err(|k| self.invalid(k))?;
            if extra > 0 {
                let tail = &chunk[chunk.len() - extra..];
                let kind = match status_line_in(tail) {
                    Some(status_line) => TransferErrorKind::EmbeddedError { status_line },
                    None => TransferErrorKind::ExtraBytes(extra as u64),
                };
                return Err(self.invalid(kind));
            }
            self.forward(&mut upload, chunk, total, &validator, progress)
                .await?;
        }
        validator.finish().map_err(|k| self.invalid(k))?;
        self.commit(upload, total, validator.decoder.blocks_seen())
            .await
    }

    /// `GET /export_raw_vdi`, following redirects to another pool member.
    async fn open_export(&mut self) -> Result<Response<Incoming>, TransferError> {
        let mut query = format!(
            "vdi={}&format=vhd&session_id={}&task_id={}",
            encode(self.source.vdi),
            encode(self.source.host.session_id().expose()),
            encode(self.export_task),
        );
        if let Some(base) = self.base {
            query.push_str(&format!("&base={}", encode(base)));
        }
        let side = self.source;
        // Not the query: it carries the session.
        tracing::debug!(host = %side.host.host(), vdi = side.vdi, base = ?self.base, "export");
        let mut endpoint = side.host.endpoint().clone();
        for _ in 0..=MAX_REDIRECTS {
            let request = Request::get(format!("{}/export_raw_vdi?{query}", endpoint.url().path))
                .header(HOST, endpoint.url().authority())
                .body(Empty::<Bytes>::new())
                .map_err(|e| unbuildable(side, &e))?;
            let response = self.send(&endpoint, request, side, Phase::Export).await?;
            match redirect(&endpoint, &response) {
                Redirect::No if response.status() == StatusCode::OK => return Ok(response),
                Redirect::No => {
                    let kind = status_error(response).await;
                    return Err(fail(Phase::Export, side, None, kind));
                }
                Redirect::To(next) => {
                    endpoint = next.map_err(|kind| fail(Phase::Export, side, None, kind))?
                }
            }
        }
        Err(fail(
            Phase::Export,
            side,
            None,
            TransferErrorKind::Redirects(endpoint.url().to_string()),
        ))
    }

    /// Probe with an empty PUT, as Xen Orchestra does, to learn of a redirect; then start
    /// `PUT /import_raw_vdi` with the exact length on its own task.
    async fn open_import(&mut self, total: u64) -> Result<Upload, TransferError> {
        let side = self.target;
        tracing::debug!(host = %side.host.host(), vdi = side.vdi, bytes = total, "import");
        let base_query = format!(
            "vdi={}&format=vhd&session_id={}",
            encode(side.vdi),
            encode(side.host.session_id().expose()),
        );
        let mut endpoint = side.host.endpoint().clone();
        let mut redirects = 0;
        loop {
            let probe = Request::put(format!(
                "{}/import_raw_vdi?{base_query}",
                endpoint.url().path
            ))
            .header(HOST, endpoint.url().authority())
            .header(CONTENT_LENGTH, 0)
            .body(Empty::<Bytes>::new())
            .map_err(|e| unbuildable(side, &e))?;
            let response = self.send(&endpoint, probe, side, Phase::Import).await?;
            match redirect(&endpoint, &response) {
                Redirect::To(_) if redirects == MAX_REDIRECTS => {
                    return Err(fail(
                        Phase::Import,
                        side,
                        None,
                        TransferErrorKind::Redirects(endpoint.url().to_string()),
                    ));
                }
                Redirect::To(next) => {
                    redirects += 1;
                    endpoint = next.map_err(|kind| fail(Phase::Import, side, None, kind))?;
                }
                // Whatever the probe's status, the real request decides; a refusal shows
                // there with the task's error.
                Redirect::No => break,
            }
        }
        let (queue, body) = ChannelBody::new(total, QUEUE_DEPTH);
        let request = Request::put(format!(
            "{}/import_raw_vdi?{base_query}&task_id={}",
            endpoint.url().path,
            encode(self.import_task)
        ))
        .header(HOST, endpoint.url().authority())
        .header(CONTENT_LENGTH, total)
        .body(body)
        .map_err(|e| unbuildable(side, &e))?;
        let response = tokio::spawn(async move {
            endpoint
                .send(request)
                .await
                .map_err(|e| TransferErrorKind::Connection(e.to_string()))
        });
        Ok(Upload {
            queue,
            response,
            held: BytesMut::new(),
            hold_from: total.saturating_sub(FOOTER_SIZE as u64),
        })
    }

    async fn send<B>(
        &self,
        endpoint: &Endpoint,
        request: Request<B>,
        side: VdiOn<'_>,
        phase: Phase,
    ) -> Result<Response<Incoming>, TransferError>
    where
        B: hyper::body::Body + Send + 'static,
        B::Data: Send,
        B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
    {
        let after = self.options.stall_timeout;
        match tokio::time::timeout(after, endpoint.send(request)).await {
            Err(_) => Err(fail(phase, side, None, TransferErrorKind::Stall { after })),
            Ok(Err(e)) => Err(fail(
                phase,
                side,
                None,
                TransferErrorKind::Connection(e.to_string()),
            )),
            Ok(Ok(response)) => Ok(response),
        }
    }

    /// The next data chunk of the export, `None` at its end.
    async fn next_chunk(&mut self, body: &mut Incoming) -> Result<Option<Bytes>, TransferError> {
        let after = self.options.stall_timeout;
        loop {
            let frame = match tokio::time::timeout(after, body.frame()).await {
                Err(_) => return Err(self.export_failed(TransferErrorKind::Stall { after })),
                Ok(None) => return Ok(None),
                Ok(Some(Err(e))) => {
                    return Err(self.export_failed(TransferErrorKind::Connection(e.to_string())));
                }
                Ok(Some(Ok(frame))) => frame,
            };
            if let Ok(data) = frame.into_data()
                && !data.is_empty()
            {
                self.received += data.len() as u64;
                return Ok(Some(data));
            }
        }
    }

    /// Queue `chunk` for the target, holding back what lies past `hold_from`.
    async fn forward(
        &mut self,
        upload: &mut Upload,
        mut chunk: Bytes,
        total: u64,
        validator: &Validator,
        progress: &mut (dyn FnMut(&Progress) + Send),
    ) -> Result<(), TransferError> {
        let end = self.forwarded + chunk.len() as u64;
        if end > upload.hold_from {
            let keep = upload.hold_from.saturating_sub(self.forwarded) as usize;
            upload.held.extend_from_slice(&chunk[keep..]);
            chunk.truncate(keep);
        }
        if !chunk.is_empty() {
            let len = chunk.len() as u64;
            self.queue(upload, Ok(chunk)).await?;
            self.forwarded += len;
        }
        progress(&Progress {
            bytes: self.forwarded,
            total: Some(total),
            blocks: validator.decoder.blocks_seen(),
            blocks_total: validator.decoder.blocks_expected(),
            elapsed: self.started.elapsed(),
        });
        Ok(())
    }

    async fn queue(&self, upload: &mut Upload, chunk: Chunk) -> Result<(), TransferError> {
        let after = self.options.stall_timeout;
        match tokio::time::timeout(after, upload.queue.send(chunk)).await {
            Err(_) => Err(self.import_failed(TransferErrorKind::Stall { after })),
            // The request ended: its own error says why, see `commit`.
            Ok(Err(_)) => Err(self.import_failed(TransferErrorKind::TargetClosed)),
            Ok(Ok(())) => Ok(()),
        }
    }

    /// The source closed cleanly after a valid stream: ask its task, then release the held
    /// footer, and take the target's verdict from its task.
    async fn commit(
        &mut self,
        mut upload: Upload,
        total: u64,
        blocks: u32,
    ) -> Result<TransferReport, TransferError> {
        let timeout = self.options.task_timeout;
        let export_result = self
            .source
            .host
            .task_outcome(self.export_task, timeout)
            .await
            .map_err(|e| fail(Phase::Export, self.source, Some(self.received), e.into()))?;
        let held = std::mem::take(&mut upload.held).freeze();
        let held_len = held.len() as u64;
        self.queue(&mut upload, Ok(held)).await?;
        self.forwarded += held_len;
        drop(upload.queue);
        let response = match upload.response.await {
            Ok(Ok(response)) => response,
            Ok(Err(kind)) => return Err(self.import_failed(kind)),
            Err(join) => {
                return Err(self.import_failed(TransferErrorKind::Connection(join.to_string())));
            }
        };
        if response.status() != StatusCode::OK {
            let kind = status_error(response).await;
            return Err(self.import_failed(kind));
        }
        // XAPI answers before reading the body; the body is sent after. Drain the (empty)
        // response so the connection finishes sending.
        let _ = response.into_body().collect().await;
        let result = self
            .target
            .host
            .task_outcome(self.import_task, timeout)
            .await
            .map_err(|e| fail(Phase::Commit, self.target, Some(total), e.into()))?;
        Ok(TransferReport {
            bytes: total,
            blocks,
            duration: self.started.elapsed(),
            export_result,
            imported_vdi: result_reference(&result).to_owned(),
        })
    }

    fn invalid(&self, kind: TransferErrorKind) -> TransferError {
        fail(Phase::Validation, self.source, Some(self.received), kind)
    }

    fn export_failed(&self, kind: TransferErrorKind) -> TransferError {
        fail(Phase::Export, self.source, Some(self.received), kind)
    }

    fn import_failed(&self, kind: TransferErrorKind) -> TransferError {
        fail(Phase::Import, self.target, Some(self.forwarded), kind)
    }
}

pub(crate) fn encode(value: &str) -> String {
    utf8_percent_encode(value, QUERY_VALUE).to_string()
}

enum Redirect {
    No,
    To(Result<Endpoint, TransferErrorKind>),
}

/// A 3xx with a Location: the endpoint of the host it names, with the same trust.
fn redirect(from: &Endpoint, response: &Response<Incoming>) -> Redirect {
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
async fn status_error(response: Response<Incoming>) -> TransferErrorKind {
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
    fn finds_an_embedded_status_line() {
        let body = b"\x00\x01garbageHTTP/1.1 500 Internal Error\r\ncontent-length: 0\r\n\r\n";
        assert_eq!(
            status_line_in(body).as_deref(),
            Some("HTTP/1.1 500 Internal Error")
        );
        assert_eq!(status_line_in(b"conectix HTTP"), None);
    }

    #[test]
    fn query_values_keep_opaque_refs_readable() {
        assert_eq!(encode("OpaqueRef:1a-2b"), "OpaqueRef:1a-2b");
        assert_eq!(encode("a&b=c d"), "a%26b%3Dc%20d");
    }
}
