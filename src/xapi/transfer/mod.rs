//! The data plane, in two halves that compose: [`open_export`] opens
//! `GET /export_raw_vdi?format=vhd[&base=]` on a source as a validated stream that knows its
//! exact length once the BAT is read, and [`import_stream`] sends a stream of known length
//! into a VDI with `PUT /import_raw_vdi?format=vhd`. [`transfer_vdi`] joins them: one VDI's
//! content (whole, or the delta against a base) from one host to another with nothing stored
//! in between; the offline seed uses each half alone, with a seed file on the other side.
//!
//! A broken stream never becomes a successful import: the export holds its final footer
//! (the last 512 bytes) back until the source has closed cleanly and its export task has
//! succeeded, so the target cannot complete an import the source disowns. Any failure aborts
//! the upload mid-body, which fails the target's task, and cancels both tasks.
//!
//! Limits that cut across transfers are wrappers around the stream ([`Throttled`]), not
//! branches inside either half.

mod body;
mod error;
mod export;
mod http;
mod import;
mod nbd;
mod nbd_source;
mod progress;
mod throttle;
mod validator;

use std::future::Future;
use std::time::{Duration, Instant};

use bytes::Bytes;
use tokio_util::sync::CancellationToken;

pub use self::error::{Phase, TransferError, TransferErrorKind};
pub use self::export::{ExportStream, open_export};
pub use self::import::{ImportError, ImportReport, check_fits, import_stream};
pub use self::nbd::{
    MAX_NBD_CONCURRENCY, NbdOutcome, NbdPath, NbdUnusable, probe_nbd, transfer_nbd,
};
pub use self::nbd_source::{BATCH_BYTES, MAX_BATCHES_IN_FLIGHT};
pub use self::progress::Progress;
pub use self::throttle::{Throttle, Throttled};
use super::client::XapiClient;

/// How long a failed transfer waits for each host to end its cancelled task.
const SETTLE_TIMEOUT: Duration = Duration::from_secs(10);

#[derive(Debug, Clone)]
pub struct TransferOptions {
    /// Abort when no byte moves for this long.
    pub stall_timeout: Duration,
    /// How long to wait for a task's verdict once the bytes have moved.
    pub task_timeout: Duration,
    /// The bandwidth limit (`max_rate`), shared by every transfer given a clone of it.
    pub throttle: Option<Throttle>,
}

impl Default for TransferOptions {
    fn default() -> TransferOptions {
        TransferOptions {
            stall_timeout: Duration::from_secs(120),
            task_timeout: Duration::from_secs(300),
            throttle: None,
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

/// A stream of byte chunks for an import: an export, a seed file, or either throttled.
pub trait ChunkStream: Send {
    type Error;

    /// The next chunk, `None` at the end.
    fn next_chunk(&mut self) -> impl Future<Output = Result<Option<Bytes>, Self::Error>> + Send;

    /// VHD blocks passed so far and the blocks expected, where the stream knows them: for
    /// progress.
    fn blocks(&self) -> (u32, Option<u32>);
}

/// How many blocks of `vdi` differ from `base` (another VDI on the same host), read from
/// the head of `GET /export_raw_vdi?base=` alone: the BATs decide, no data is read. Zero
/// means the two hold the same content.
pub async fn changed_blocks(
    vdi: VdiOn<'_>,
    base: &str,
    options: &TransferOptions,
    cancel: &CancellationToken,
) -> Result<u32, TransferError> {
    let export = open_export(vdi, Some(base), "vhdsync compare", options, cancel).await?;
    let (_, announced) = export.blocks();
    export.close().await;
    // A head without a block count is no proof of equality.
    Ok(announced.unwrap_or(u32::MAX))
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
    let token = CancellationToken::new();
    let transfer = compose(source, base, target, options, progress, &token);
    settle_on_cancel(&token, transfer, cancel).await
}

/// Runs `transfer`, which watches `token`, to its end. When `cancel` fires first, `token` is
/// cancelled and the transfer still runs to its end: each half then fails in its own way and
/// settles its task, rather than being dropped mid-flight.
async fn settle_on_cancel<T>(
    token: &CancellationToken,
    transfer: impl Future<Output = T>,
    cancel: impl Future<Output = ()>,
) -> T {
    tokio::pin!(transfer, cancel);
    let mut cancelled = false;
    loop {
        tokio::select! {
            outcome = &mut transfer => return outcome,
            () = &mut cancel, if !cancelled => {
                cancelled = true;
                token.cancel();
            }
        }
    }
}

/// The export half into the import half, through the throttle.
async fn compose(
    source: VdiOn<'_>,
    base: Option<&str>,
    target: VdiOn<'_>,
    options: &TransferOptions,
    progress: &mut (dyn FnMut(&Progress) + Send),
    cancel: &CancellationToken,
) -> Result<TransferReport, TransferError> {
    let started = Instant::now();
    let export = open_export(source, base, "vhdsync export", options, cancel).await?;
    if let Err(e) = check_fits(target, export.virtual_size()).await {
        export.close().await;
        return Err(e);
    }
    let length = export.total_len();
    let mut stream = Throttled::new(export, options.throttle.clone());
    let imported = import_stream(
        target,
        length,
        "vhdsync import",
        &mut stream,
        options,
        progress,
        cancel,
    )
    .await;
    let export = stream.into_inner();
    let blocks = export.blocks().0;
    let export_result = export.result().unwrap_or_default().to_owned();
    export.close().await;
    let imported = imported.map_err(ImportError::into_transfer)?;
    Ok(TransferReport {
        bytes: imported.bytes,
        blocks,
        duration: started.elapsed(),
        export_result,
        imported_vdi: imported.imported_vdi,
    })
}

/// Wait (bounded, best effort) for `task` to end, if a transfer on `host` started.
/// Cancellation is cooperative: a task is `cancelling` until the host's handler ends it.
/// Where a transfer reached a host, report only once that host has ended its task, so that
/// a caller who inspects (or cleans up) the host right after the error never finds the
/// transfer still running. A task no transfer reached has no handler to end it (xapi may
/// leave it `cancelling`; the lab ends it `cancelled` at once), so those are not waited for.
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
