//! The import half: `PUT /import_raw_vdi?format=vhd` of a stream of known length into a VDI.
//!
//! An empty probe PUT first, as Xen Orchestra does, learns of a redirect to another pool
//! member; then the real PUT carries the exact Content-Length (XAPI's import refuses chunked
//! bodies) and the stream's chunks through a bounded queue, so the target's pace holds the
//! source back. The target's task, not the HTTP status, says whether the import succeeded;
//! when the target gives up mid-body, its task says why.

use std::time::{Duration, Instant};

use bytes::Bytes;
use http_body_util::{BodyExt, Empty};
use hyper::body::Incoming;
use hyper::header::{CONTENT_LENGTH, HOST};
use hyper::{Request, Response, StatusCode};
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use super::body::{ChannelBody, Chunk};
use super::http::{MAX_REDIRECTS, Redirect, query, redirect, send, status_error};
use super::{
    ChunkStream, Phase, Progress, TransferError, TransferErrorKind, TransferOptions, VdiOn, fail,
    settle, unbuildable,
};
use crate::xapi::records::{VdiRecord, result_reference};

/// Chunks queued between the stream and the request body: with hyper's reads of at most a
/// few hundred KiB, a few MiB in flight.
const QUEUE_DEPTH: usize = 16;
/// How long a failed import waits for the target's task to say why.
const VERDICT_TIMEOUT: Duration = Duration::from_secs(5);

/// A finished import, confirmed by the target's task.
#[derive(Debug, Clone, PartialEq)]
pub struct ImportReport {
    /// Stream bytes sent.
    pub bytes: u64,
    /// The VDI reference the import task reported.
    pub imported_vdi: String,
}

/// Why an import failed: its source stream's own error, or the import's.
#[derive(Debug)]
pub enum ImportError<E> {
    Source(E),
    Import(TransferError),
}

impl ImportError<TransferError> {
    /// Both sides' errors are transfer errors already.
    pub fn into_transfer(self) -> TransferError {
        match self {
            ImportError::Source(e) | ImportError::Import(e) => e,
        }
    }
}

/// Refuse, before any byte moves, a target VDI smaller than the disk the stream describes:
/// the import would fail after the connection is up, with less to say.
pub async fn check_fits(target: VdiOn<'_>, virtual_size: u64) -> Result<(), TransferError> {
    let setup = |kind| fail(Phase::Setup, target, None, kind);
    let host = target.host;
    let reference = if target.vdi.starts_with("OpaqueRef:") {
        target.vdi.to_owned()
    } else {
        host.get_by_uuid::<VdiRecord>(target.vdi)
            .await
            .map_err(|e| setup(e.into()))?
    };
    let size = host
        .call("VDI.get_virtual_size", vec![reference.as_str().into()])
        .await
        .map_err(|e| setup(e.into()))?;
    // An int64: typed in JSON-RPC, decimal text in XML-RPC; `as_i64` reads both.
    let size = size
        .as_i64()
        .and_then(|n| u64::try_from(n).ok())
        .ok_or_else(|| {
            setup(TransferErrorKind::Connection(format!(
                "VDI.get_virtual_size of {}: not a size: {size:?}",
                target.vdi
            )))
        })?;
    if size < virtual_size {
        return Err(setup(TransferErrorKind::TargetTooSmall {
            size,
            needed: virtual_size,
        }));
    }
    Ok(())
}

/// Import `length` bytes of `stream` into `target` under a new task labelled `label`.
/// `progress` is called as bytes are handed to the target; the import stops with
/// [`TransferErrorKind::Cancelled`] when `cancel` fires. On failure the request is aborted
/// mid-body (which fails the target's task) and the task is cancelled and awaited.
pub async fn import_stream<S: ChunkStream>(
    target: VdiOn<'_>,
    length: u64,
    label: &str,
    stream: &mut S,
    options: &TransferOptions,
    progress: &mut (dyn FnMut(&Progress) + Send),
    cancel: &CancellationToken,
) -> Result<ImportReport, ImportError<S::Error>> {
    let task = target
        .host
        .create_task(label, target.vdi)
        .await
        .map_err(|e| ImportError::Import(fail(Phase::Setup, target, None, e.into())))?;
    let mut import = Import {
        target,
        task: &task,
        options,
        length,
        started: Instant::now(),
        forwarded: 0,
    };
    let outcome = tokio::select! {
        outcome = import.run(stream, progress) => Some(outcome),
        () = cancel.cancelled() => None,
    };
    let outcome = match outcome {
        Some(outcome) => outcome,
        None => Err(ImportError::Import(
            import.failed(TransferErrorKind::Cancelled),
        )),
    };
    if outcome.is_ok() {
        let _ = target.host.destroy_task(&task).await;
    } else {
        // Best effort: the host also fails the task itself when the connection drops.
        let _ = target.host.cancel_task(&task).await;
        settle(target.host, &task, import.forwarded > 0).await;
    }
    outcome
}

struct Import<'a> {
    target: VdiOn<'a>,
    task: &'a str,
    options: &'a TransferOptions,
    length: u64,
    started: Instant,
    /// Stream bytes queued for the target.
    forwarded: u64,
}

/// The request running on its own task, fed through `queue`.
struct Upload {
    queue: mpsc::Sender<Chunk>,
    response: tokio::task::JoinHandle<Result<Response<Incoming>, TransferErrorKind>>,
}

impl Import<'_> {
    async fn run<S: ChunkStream>(
        &mut self,
        stream: &mut S,
        progress: &mut (dyn FnMut(&Progress) + Send),
    ) -> Result<ImportReport, ImportError<S::Error>> {
        let mut upload = self.open().await.map_err(ImportError::Import)?;
        loop {
            let chunk = match stream.next_chunk().await {
                Ok(Some(chunk)) => chunk,
                Ok(None) => break,
                Err(e) => {
                    // Abort the body mid-way: the target's task fails, the VDI stays as it was.
                    let _ = upload
                        .queue
                        .try_send(Err(std::io::Error::other("the source stream failed")));
                    return Err(ImportError::Source(e));
                }
            };
            let len = chunk.len() as u64;
            self.queue(&mut upload, chunk)
                .await
                .map_err(ImportError::Import)?;
            self.forwarded += len;
            let (blocks, blocks_total) = stream.blocks();
            progress(&Progress {
                bytes: self.forwarded,
                total: Some(self.length),
                blocks,
                blocks_total,
                elapsed: self.started.elapsed(),
            });
        }
        self.commit(upload).await.map_err(ImportError::Import)
    }

    /// The probe, then the real PUT with the exact length on its own task.
    async fn open(&self) -> Result<Upload, TransferError> {
        let side = self.target;
        tracing::debug!(host = %side.host.host(), vdi = side.vdi, bytes = self.length, "import");
        let session = side.host.session_id();
        let base = [
            ("vdi", side.vdi),
            ("format", "vhd"),
            ("session_id", session.expose()),
        ];
        let probe_query = query(&base);
        let import_failed = |kind| fail(Phase::Import, side, None, kind);
        let mut endpoint = side.host.endpoint().clone();
        let mut redirects = 0;
        loop {
            let probe = Request::put(format!(
                "{}/import_raw_vdi?{probe_query}",
                endpoint.url().path
            ))
            .header(HOST, endpoint.url().authority())
            .header(CONTENT_LENGTH, 0)
            .body(Empty::<Bytes>::new())
            .map_err(|e| unbuildable(side, &e))?;
            let response = send(&endpoint, probe, self.options.stall_timeout)
                .await
                .map_err(import_failed)?;
            match redirect(&endpoint, &response) {
                Redirect::To(_) if redirects == MAX_REDIRECTS => {
                    return Err(import_failed(TransferErrorKind::Redirects(
                        endpoint.url().to_string(),
                    )));
                }
                Redirect::To(next) => {
                    redirects += 1;
                    endpoint = next.map_err(import_failed)?;
                }
                // Whatever the probe's status, the real request decides; a refusal shows
                // there with the task's error.
                Redirect::No => break,
            }
        }
        let mut pairs = base.to_vec();
        pairs.push(("task_id", self.task));
        let (queue, body) = ChannelBody::new(self.length, QUEUE_DEPTH);
        let request = Request::put(format!(
            "{}/import_raw_vdi?{}",
            endpoint.url().path,
            query(&pairs)
        ))
        .header(HOST, endpoint.url().authority())
        .header(CONTENT_LENGTH, self.length)
        .body(body)
        .map_err(|e| unbuildable(side, &e))?;
        let response = tokio::spawn(async move {
            endpoint
                .send(request)
                .await
                .map_err(|e| TransferErrorKind::Connection(e.to_string()))
        });
        Ok(Upload { queue, response })
    }

    async fn queue(&self, upload: &mut Upload, chunk: Bytes) -> Result<(), TransferError> {
        let after = self.options.stall_timeout;
        match tokio::time::timeout(after, upload.queue.send(Ok(chunk))).await {
            Err(_) => Err(self.failed(TransferErrorKind::Stall { after })),
            // The request ended: its task says why.
            Ok(Err(_)) => Err(self.explained(TransferErrorKind::TargetClosed).await),
            Ok(Ok(())) => Ok(()),
        }
    }

    /// The whole stream is queued: the target's verdict, from the response and its task.
    async fn commit(&self, upload: Upload) -> Result<ImportReport, TransferError> {
        drop(upload.queue);
        let response = match upload.response.await {
            Ok(Ok(response)) => response,
            Ok(Err(kind)) => return Err(self.explained(kind).await),
            Err(join) => {
                return Err(self.failed(TransferErrorKind::Connection(join.to_string())));
            }
        };
        if response.status() != StatusCode::OK {
            let kind = status_error(response).await;
            return Err(self.explained(kind).await);
        }
        // XAPI answers before reading the body; the body is sent after. Drain the (empty)
        // response so the connection finishes sending.
        let _ = response.into_body().collect().await;
        let result = self
            .target
            .host
            .task_outcome(self.task, self.options.task_timeout)
            .await
            .map_err(|e| fail(Phase::Commit, self.target, Some(self.length), e.into()))?;
        Ok(ImportReport {
            bytes: self.length,
            imported_vdi: result_reference(&result).to_owned(),
        })
    }

    /// `kind`, or the target task's error when it failed: the cause (`VDI_TOO_SMALL`) rather
    /// than its symptom (a closed connection).
    async fn explained(&self, kind: TransferErrorKind) -> TransferError {
        match self
            .target
            .host
            .task_outcome(self.task, VERDICT_TIMEOUT)
            .await
        {
            Err(e) if e.xapi_code().is_some() => self.failed(TransferErrorKind::TargetFailed(e)),
            _ => self.failed(kind),
        }
    }

    fn failed(&self, kind: TransferErrorKind) -> TransferError {
        fail(Phase::Import, self.target, Some(self.forwarded), kind)
    }
}
