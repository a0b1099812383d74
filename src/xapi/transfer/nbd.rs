//! The CBT + NBD path (`xapi-protocol.md` §3): a disk's changes since a base snapshot listed
//! by `VDI.list_changed_blocks`, read over NBD (`VDI.get_nbd_info`) on several connections,
//! and sent to `PUT /import_raw_vdi?format=vhd` as a VHD stream holding only the changed
//! 64 KiB extents. Without a base, the whole disk is read and its zero extents left out of
//! the bitmaps, so the replica stays sparse.
//!
//! Until the first byte moves, anything that rules the path out (no change log between the
//! two snapshots, no NBD network, no connection) is [`NbdOutcome::NoChangeLog`] or
//! [`NbdOutcome::NoNbd`] with the reason, for the caller to fall back to the export path. Once bytes move, a failure is a
//! [`TransferError`] like any other transfer's: nothing is retried.
//!
//! TLS: `VDI.get_nbd_info` gives the host's certificate over the XAPI session, which the
//! job's trust (pinned fingerprint or CA) already vouches for, so the NBD connection pins
//! exactly that certificate. A host whose NBD network is `insecure_nbd` refuses STARTTLS;
//! the connection is then made in plain.

use std::future::Future;
use std::time::{Instant, SystemTime};

use tokio::net::TcpStream;
use tokio_util::sync::CancellationToken;
use uuid::Uuid;

use super::nbd_source::NbdStream;
use super::{
    ImportError, Phase, Progress, Throttled, TransferError, TransferErrorKind, TransferOptions,
    TransferReport, VdiOn, check_fits, fail, import_stream,
};
use crate::nbd::wire::OPT_STARTTLS;
use crate::nbd::{NbdClient, NbdError, NbdTls};
use crate::stream::extents::{ChangeMap, ExtentStream};
use crate::vhd::VhdTimestamp;
use crate::xapi::rpc::Value;

/// The most NBD connections per disk.
pub const MAX_NBD_CONCURRENCY: usize = 16;

/// How a disk's transfer over NBD ended.
#[derive(Debug)]
pub enum NbdOutcome {
    /// Sent: the import's report and the disk bytes read over NBD.
    Sent {
        report: TransferReport,
        bytes_read: u64,
    },
    /// No usable change log between the base and the disk (CBT was disabled and enabled
    /// again, the two are unrelated): nothing was sent. Why, for the report.
    NoChangeLog(String),
    /// NBD could not be used (no NBD network, no connection): nothing was sent. Why.
    NoNbd(String),
}

/// One entry of `VDI.get_nbd_info`.
#[derive(Debug, Clone)]
struct NbdInfo {
    exportname: String,
    address: String,
    port: u16,
    cert: String,
    subject: String,
}

/// Copy `source`'s changes since `base` (a snapshot of the same disk with a change log), or
/// its whole content without a base, into `target`, reading on `concurrency` NBD
/// connections. `cancel` stops the transfer with [`TransferErrorKind::Cancelled`].
pub async fn transfer_nbd(
    source: VdiOn<'_>,
    base: Option<&str>,
    target: VdiOn<'_>,
    options: &TransferOptions,
    concurrency: usize,
    progress: &mut (dyn FnMut(&Progress) + Send),
    cancel: impl Future<Output = ()>,
) -> Result<NbdOutcome, TransferError> {
    let token = CancellationToken::new();
    let transfer = compose(source, base, target, options, concurrency, progress, &token);
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

async fn compose(
    source: VdiOn<'_>,
    base: Option<&str>,
    target: VdiOn<'_>,
    options: &TransferOptions,
    concurrency: usize,
    progress: &mut (dyn FnMut(&Progress) + Send),
    cancel: &CancellationToken,
) -> Result<NbdOutcome, TransferError> {
    let started = Instant::now();
    let setup = |kind| fail(Phase::Setup, source, None, kind);
    let host = source.host;
    let size = host
        .call("VDI.get_virtual_size", vec![source.vdi.into()])
        .await
        .map_err(|e| setup(e.into()))?;
    let virtual_size = size
        .as_i64()
        .and_then(|n| u64::try_from(n).ok())
        .ok_or_else(|| {
            setup(TransferErrorKind::Connection(format!(
                "VDI.get_virtual_size of {}: not a size: {size:?}",
                source.vdi
            )))
        })?;
    let map = match base {
        None => ChangeMap::all(virtual_size),
        Some(base) => {
            let params = vec![base.into(), source.vdi.into()];
            let answer = match host.call("VDI.list_changed_blocks", params).await {
                Ok(answer) => answer,
                Err(e) => {
                    return Ok(NbdOutcome::NoChangeLog(format!(
                        "no usable change log since the base ({e})"
                    )));
                }
            };
            let text = answer.as_str().ok_or_else(|| {
                setup(TransferErrorKind::Connection(format!(
                    "VDI.list_changed_blocks: not a string: {answer:?}"
                )))
            })?;
            ChangeMap::from_xapi(text, virtual_size)
                .map_err(|e| setup(TransferErrorKind::Stream(e)))?
        }
    };
    let infos = match host.call("VDI.get_nbd_info", vec![source.vdi.into()]).await {
        Ok(answer) => {
            parse_nbd_info(&answer).map_err(|e| setup(TransferErrorKind::Connection(e)))?
        }
        Err(e) => {
            return Ok(NbdOutcome::NoNbd(format!("VDI.get_nbd_info failed ({e})")));
        }
    };
    if infos.is_empty() {
        return Ok(NbdOutcome::NoNbd(
            "the host offers no NBD (no network with the nbd or insecure_nbd purpose)".into(),
        ));
    }
    let clients =
        match connect_all(&infos, concurrency.clamp(1, MAX_NBD_CONCURRENCY), options).await {
            Ok(clients) => clients,
            Err(why) => return Ok(NbdOutcome::NoNbd(why)),
        };
    if let Some(small) = clients.iter().find(|c| c.export().size < virtual_size) {
        return Err(setup(TransferErrorKind::Connection(format!(
            "the NBD export holds {} bytes, less than the disk's {virtual_size}",
            small.export().size
        ))));
    }

    let layout = ExtentStream::new(
        map,
        base.is_none(),
        Uuid::new_v4(),
        VhdTimestamp::from_system_time(SystemTime::now()),
    )
    .map_err(|e| setup(TransferErrorKind::Stream(e)))?;
    check_fits(target, virtual_size).await?;
    let stream = NbdStream::new(
        source,
        layout,
        base.is_none(),
        clients,
        options.stall_timeout,
    );
    let length = stream.total_len();
    let mut stream = Throttled::new(stream, options.throttle.clone());
    let imported = import_stream(
        target,
        length,
        "vhdsync import (NBD)",
        &mut stream,
        options,
        progress,
        cancel,
    )
    .await;
    let stream = stream.into_inner();
    let bytes_read = stream.bytes_read();
    let blocks = stream.block_count();
    let imported = imported.map_err(ImportError::into_transfer)?;
    Ok(NbdOutcome::Sent {
        report: TransferReport {
            bytes: imported.bytes,
            blocks,
            duration: started.elapsed(),
            export_result: String::new(),
            imported_vdi: imported.imported_vdi,
        },
        bytes_read,
    })
}

/// The entries of a `VDI.get_nbd_info` answer.
fn parse_nbd_info(answer: &Value) -> Result<Vec<NbdInfo>, String> {
    let entries = answer
        .as_array()
        .ok_or_else(|| format!("VDI.get_nbd_info: not a list: {answer:?}"))?;
    entries
        .iter()
        .map(|entry| {
            let text = |field: &str| {
                entry
                    .get(field)
                    .and_then(Value::as_str)
                    .map(str::to_owned)
                    .ok_or_else(|| format!("VDI.get_nbd_info: an entry without `{field}`"))
            };
            let port = entry
                .get("port")
                .and_then(Value::as_i64)
                .and_then(|p| u16::try_from(p).ok())
                .ok_or("VDI.get_nbd_info: an entry without a valid `port`")?;
            Ok(NbdInfo {
                exportname: text("exportname")?,
                address: text("address")?,
                port,
                cert: text("cert").unwrap_or_default(),
                subject: text("subject").unwrap_or_default(),
            })
        })
        .collect()
}

/// `count` connections: the first entry that accepts one, then the rest on it. Any failure
/// is the path's unavailability, with the reason (the export name, which holds a session,
/// is never shown).
async fn connect_all(
    infos: &[NbdInfo],
    count: usize,
    options: &TransferOptions,
) -> Result<Vec<NbdClient<TcpStream>>, String> {
    let mut failures = Vec::new();
    for info in infos {
        let mut clients = Vec::new();
        let mut failed = None;
        for _ in 0..count {
            match connect(info, options).await {
                Ok(client) => clients.push(client),
                Err(e) => {
                    failed = Some(e);
                    break;
                }
            }
        }
        match failed {
            None => return Ok(clients),
            Some(e) => {
                for client in clients {
                    let _ = client.disconnect().await;
                }
                failures.push(format!("{}:{}: {e}", info.address, info.port));
            }
        }
    }
    Err(format!("no NBD connection ({})", failures.join("; ")))
}

async fn connect(
    info: &NbdInfo,
    options: &TransferOptions,
) -> Result<NbdClient<TcpStream>, String> {
    let timeout = options.stall_timeout;
    let attempt = |tls: Option<NbdTls>| async move {
        let connecting =
            NbdClient::connect_tcp(&info.address, info.port, &info.exportname, tls.as_ref());
        match tokio::time::timeout(timeout, connecting).await {
            Ok(outcome) => outcome.map(|(client, _)| client),
            Err(_) => Err(NbdError::Request(format!("no answer within {timeout:?}"))),
        }
    };
    if !info.cert.is_empty() {
        let tls = NbdTls::pinned_pem(&info.cert, &info.subject).map_err(|e| e.to_string())?;
        match attempt(Some(tls)).await {
            Err(NbdError::Refused { option, .. }) if option == OPT_STARTTLS => {}
            other => return other.map_err(|e| e.to_string()),
        }
    }
    attempt(None).await.map_err(|e| e.to_string())
}
