//! The export half: `GET /export_raw_vdi?format=vhd[&base=]` as a validated stream of
//! `Bytes` that knows its exact length once the head (footer, header, BAT) is read.
//!
//! A broken export never reaches its consumer whole: the stream's final footer (its last 512
//! bytes) is held back until the source has closed cleanly after a valid stream and its
//! export task has succeeded, so whatever consumes the stream (an import, a seed file) never
//! completes with bytes the source disowns.

use std::collections::VecDeque;
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use http_body_util::{BodyExt, Empty};
use hyper::body::Incoming;
use hyper::header::HOST;
use hyper::{Request, StatusCode};
use tokio_util::sync::CancellationToken;

use super::http::{MAX_REDIRECTS, Redirect, query, redirect, send, status_error};
use super::validator::{Validator, status_line_in};
use super::{
    ChunkStream, Phase, SETTLE_TIMEOUT, TransferError, TransferErrorKind, TransferOptions, VdiOn,
    fail, settle, unbuildable,
};
use crate::stream::StreamError;
use crate::vhd::{FOOTER_SIZE, Structure};

/// The most the stream's head (footer, header, locators, BAT) may take before its length
/// is known: a 16 Mi-entry BAT is 64 MiB.
const MAX_HEAD: u64 = 80 << 20;

/// An open export: the stream's bytes in order, validated, its final footer held back until
/// the source's task succeeded. Close it with [`ExportStream::close`] to settle the task.
pub struct ExportStream<'a> {
    source: VdiOn<'a>,
    task: String,
    stall_timeout: Duration,
    task_timeout: Duration,
    cancel: CancellationToken,
    body: Option<Incoming>,
    validator: Validator,
    /// Chunks read before the length was known, not yet handed out.
    head: VecDeque<Bytes>,
    total: u64,
    /// Stream bytes read from the source.
    received: u64,
    /// Stream bytes handed out.
    yielded: u64,
    /// The stream's last bytes, held back until the source is known good.
    held: BytesMut,
    /// The export task's result, once the source closed and the task succeeded.
    result: Option<String>,
}

/// `GET /export_raw_vdi` of `source` (the delta against `base` when given) under a new task
/// labelled `label`, following redirects to another pool member, read until the stream's
/// exact length is known.
pub async fn open_export<'a>(
    source: VdiOn<'a>,
    base: Option<&str>,
    label: &str,
    options: &TransferOptions,
    cancel: &CancellationToken,
) -> Result<ExportStream<'a>, TransferError> {
    let task = source
        .host
        .create_task(label, source.vdi)
        .await
        .map_err(|e| fail(Phase::Setup, source, None, e.into()))?;
    let mut stream = ExportStream {
        source,
        task,
        stall_timeout: options.stall_timeout,
        task_timeout: options.task_timeout,
        cancel: cancel.clone(),
        body: None,
        validator: Validator::new(),
        head: VecDeque::new(),
        total: 0,
        received: 0,
        yielded: 0,
        held: BytesMut::new(),
        result: None,
    };
    let opened = tokio::select! {
        opened = stream.open(base) => Some(opened),
        () = cancel.cancelled() => None,
    };
    let opened = match opened {
        Some(opened) => opened,
        None => Err(stream.export_failed(TransferErrorKind::Cancelled)),
    };
    match opened {
        Ok(()) => Ok(stream),
        Err(e) => {
            stream.close().await;
            Err(e)
        }
    }
}

impl ExportStream<'_> {
    /// The stream's exact length in bytes.
    pub fn total_len(&self) -> u64 {
        self.total
    }

    /// The size of the disk the stream describes, from its footer.
    pub fn virtual_size(&self) -> u64 {
        self.validator.virtual_size().unwrap_or(0)
    }

    /// The block size and the indices of the blocks the stream carries, from its BAT.
    pub fn allocated_blocks(&self) -> Option<(u32, &[u32])> {
        self.validator.allocated()
    }

    /// Stream bytes read from the source so far.
    pub fn received(&self) -> u64 {
        self.received
    }

    /// The export task's result text, once the whole stream has been handed out.
    pub fn result(&self) -> Option<&str> {
        self.result.as_deref()
    }

    /// End the export task: destroyed after a complete export; otherwise cancelled and, if
    /// the host started sending, awaited (bounded) so that it has ended when this returns.
    /// Failed tasks are left for the host's administrators to see.
    pub async fn close(mut self) {
        let host = self.source.host;
        // Closing the connection first: a host blocked writing to it ends the export at
        // once instead of when it next looks at the task.
        drop(self.body.take());
        if self.result.is_some() {
            let _ = host.destroy_task(&self.task).await;
        } else {
            let _ = host.cancel_task(&self.task).await;
            settle(host, &self.task, self.received > 0).await;
        }
    }

    /// End an export read only for its head: cancelled, and its task removed once the
    /// host has ended it (bounded), so that nothing is left behind.
    pub async fn discard(mut self) {
        let host = self.source.host;
        // As in `close`: the host, blocked writing the body nobody reads, stops at once.
        drop(self.body.take());
        let _ = host.cancel_task(&self.task).await;
        if host.wait_task(&self.task, SETTLE_TIMEOUT).await.is_ok() {
            let _ = host.destroy_task(&self.task).await;
        }
    }

    async fn open(&mut self, base: Option<&str>) -> Result<(), TransferError> {
        let response = self.request(base).await?;
        self.body = Some(response.into_body());
        // The head, until the BAT gives the exact length.
        self.total = loop {
            if let Some(total) = self.validator.total_len() {
                break total;
            }
            let Some(chunk) = self.read().await? else {
                self.validator.finish().map_err(|k| self.invalid(k))?;
                return Err(
                    self.invalid(TransferErrorKind::Stream(StreamError::Truncated {
                        reading: Structure::Footer,
                        expected: self.received + 1,
                        exact: false,
                        received: self.received,
                    })),
                );
            };
            self.validator.push(&chunk).map_err(|k| self.invalid(k))?;
            self.head.push_back(chunk);
            if self.received > MAX_HEAD {
                return Err(self.invalid(TransferErrorKind::Connection(format!(
                    "no BAT within the first {MAX_HEAD} bytes"
                ))));
            }
        };
        Ok(())
    }

    /// The GET, following redirects.
    async fn request(
        &mut self,
        base: Option<&str>,
    ) -> Result<hyper::Response<Incoming>, TransferError> {
        let side = self.source;
        let session = side.host.session_id();
        let mut pairs = vec![
            ("vdi", side.vdi),
            ("format", "vhd"),
            ("session_id", session.expose()),
            ("task_id", self.task.as_str()),
        ];
        if let Some(base) = base {
            pairs.push(("base", base));
        }
        let query = query(&pairs);
        // Not the query: it carries the session.
        tracing::debug!(host = %side.host.host(), vdi = side.vdi, base = base.unwrap_or("none"), "export");
        let export_failed = |kind| fail(Phase::Export, side, None, kind);
        let mut endpoint = side.host.endpoint().clone();
        for _ in 0..=MAX_REDIRECTS {
            let request = Request::get(format!("{}/export_raw_vdi?{query}", endpoint.url().path))
                .header(HOST, endpoint.url().authority())
                .body(Empty::<Bytes>::new())
                .map_err(|e| unbuildable(side, &e))?;
            let response = send(&endpoint, request, self.stall_timeout)
                .await
                .map_err(export_failed)?;
            match redirect(&endpoint, &response) {
                Redirect::No if response.status() == StatusCode::OK => return Ok(response),
                Redirect::No => return Err(export_failed(status_error(response).await)),
                Redirect::To(next) => endpoint = next.map_err(export_failed)?,
            }
        }
        Err(export_failed(TransferErrorKind::Redirects(
            endpoint.url().to_string(),
        )))
    }

    /// The next data chunk of the response body, `None` at its end.
    async fn read(&mut self) -> Result<Option<Bytes>, TransferError> {
        let after = self.stall_timeout;
        let Some(body) = self.body.as_mut() else {
            return Ok(None);
        };
        loop {
            let frame = tokio::select! {
                frame = tokio::time::timeout(after, body.frame()) => Some(frame),
                () = self.cancel.cancelled() => None,
            };
            let frame = match frame {
                None => return Err(self.export_failed(TransferErrorKind::Cancelled)),
                Some(Err(_)) => return Err(self.export_failed(TransferErrorKind::Stall { after })),
                Some(Ok(None)) => return Ok(None),
                Some(Ok(Some(Err(e)))) => {
                    return Err(self.export_failed(TransferErrorKind::Connection(e.to_string())));
                }
                Some(Ok(Some(Ok(frame)))) => frame,
            };
            if let Ok(data) = frame.into_data()
                && !data.is_empty()
            {
                self.received += data.len() as u64;
                return Ok(Some(data));
            }
        }
    }

    /// The part of `chunk` before the held-back footer; the rest is kept.
    fn hold_back(&mut self, mut chunk: Bytes) -> Bytes {
        let hold_from = self.total.saturating_sub(FOOTER_SIZE as u64);
        let end = self.yielded + chunk.len() as u64;
        if end > hold_from {
            let keep = hold_from.saturating_sub(self.yielded) as usize;
            self.held.extend_from_slice(&chunk[keep..]);
            chunk.truncate(keep);
        }
        self.yielded += chunk.len() as u64;
        chunk
    }

    /// The source closed cleanly after a valid stream: ask its task, then release the footer.
    async fn release(&mut self) -> Result<Bytes, TransferError> {
        self.validator.finish().map_err(|k| self.invalid(k))?;
        let verdict = tokio::select! {
            verdict = self.source.host.task_outcome(&self.task, self.task_timeout) => Some(verdict),
            () = self.cancel.cancelled() => None,
        };
        let verdict = verdict.ok_or_else(|| self.export_failed(TransferErrorKind::Cancelled))?;
        self.result = Some(verdict.map_err(|e| self.export_failed(e.into()))?);
        self.body = None;
        let held = std::mem::take(&mut self.held).freeze();
        self.yielded += held.len() as u64;
        Ok(held)
    }

    fn invalid(&self, kind: TransferErrorKind) -> TransferError {
        fail(Phase::Validation, self.source, Some(self.received), kind)
    }

    fn export_failed(&self, kind: TransferErrorKind) -> TransferError {
        fail(Phase::Export, self.source, Some(self.received), kind)
    }
}

impl ChunkStream for ExportStream<'_> {
    type Error = TransferError;

    async fn next_chunk(&mut self) -> Result<Option<Bytes>, TransferError> {
        loop {
            if let Some(chunk) = self.head.pop_front() {
                let chunk = self.hold_back(chunk);
                if !chunk.is_empty() {
                    return Ok(Some(chunk));
                }
                continue;
            }
            if self.result.is_some() {
                return Ok(None);
            }
            match self.read().await? {
                Some(chunk) => {
                    let extra = self.validator.push(&chunk).map_err(|k| self.invalid(k))?;
                    if extra > 0 {
                        let tail = &chunk[chunk.len() - extra..];
                        let kind = match status_line_in(tail) {
                            Some(status_line) => TransferErrorKind::EmbeddedError { status_line },
                            None => TransferErrorKind::ExtraBytes(extra as u64),
                        };
                        return Err(self.invalid(kind));
                    }
                    let chunk = self.hold_back(chunk);
                    if !chunk.is_empty() {
                        return Ok(Some(chunk));
                    }
                }
                None => {
                    let held = self.release().await?;
                    if !held.is_empty() {
                        return Ok(Some(held));
                    }
                }
            }
        }
    }

    fn blocks(&self) -> (u32, Option<u32>) {
        self.validator.blocks()
    }
}
