//! The CBT + NBD path (`xapi-protocol.md` §3): a disk's changes since a base snapshot listed
//! by `VDI.list_changed_blocks`, read over NBD (`VDI.get_nbd_info`) on several connections,
//! and sent to `PUT /import_raw_vdi?format=vhd` as a VHD stream holding only the changed
//! 64 KiB extents. Without a base, the extents read are those inside the 2 MiB blocks the
//! export path would send (its BAT, read from the head of `GET /export_raw_vdi` alone, as
//! neither our client nor XAPI's NBD server has block status), and the all-zero ones are
//! left out of the bitmaps: a full over NBD sends no more than the export path would.
//!
//! [`probe_nbd`] asks XAPI what the path needs once (routing uses its answer, the transfer
//! reuses it): anything that rules the path out (no change log between the two snapshots,
//! no NBD network, an unreadable export head) is an [`NbdUnusable`] with the reason. A
//! connection that cannot be made is [`NbdOutcome::NoNbd`]. Either way nothing was sent,
//! for the caller to fall back to the export path. Once bytes move, a failure is a
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

use super::export::open_export;
use super::nbd_source::NbdStream;
use super::{
    ImportError, Phase, Progress, Throttled, TransferError, TransferErrorKind, TransferOptions,
    TransferReport, VdiOn, check_fits, fail, import_stream, settle_on_cancel,
};
use crate::nbd::wire::OPT_STARTTLS;
use crate::nbd::{NbdClient, NbdError, NbdTls};
use crate::stream::extents::{ChangeMap, EXTENT_SIZE, ExtentStream};
use crate::vhd::{DEFAULT_BLOCK_SIZE, VhdTimestamp};
use crate::xapi::rpc::Value;

/// The label of the export task opened to read a full's allocation.
const HEAD_LABEL: &str = "vhdsync allocation";

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
    /// No NBD connection could be made: nothing was sent. Why.
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

/// What routing learned of a disk's NBD path, carried into [`transfer_nbd`] so that XAPI is
/// asked each question once.
#[derive(Debug, Clone)]
pub struct NbdPath {
    infos: Vec<NbdInfo>,
    extents: Extents,
}

/// Which extents a transfer over NBD reads.
#[derive(Debug, Clone)]
enum Extents {
    /// A delta: `VDI.list_changed_blocks`' answer (base64).
    Changed(String),
    /// A full: those inside the blocks the export's BAT allocates, of this size.
    Allocated { block_size: u32, blocks: Vec<u32> },
    /// A full whose export head could not be read: every extent.
    All,
}

/// Why NBD cannot take a disk: nothing was sent.
#[derive(Debug)]
pub enum NbdUnusable {
    /// No usable change log between the base and the disk (CBT was disabled and enabled
    /// again, the two are unrelated).
    NoChangeLog(String),
    /// The host offers no NBD for the disk.
    NoNbd(String),
    /// A full's export head could not be read, so which blocks it holds is unknown: why,
    /// and the path reading every extent, for a caller that must use NBD anyway.
    NoHead(String, NbdPath),
}

impl std::fmt::Display for NbdUnusable {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            NbdUnusable::NoChangeLog(why) | NbdUnusable::NoNbd(why) => f.write_str(why),
            NbdUnusable::NoHead(why, _) => write!(f, "the export head could not be read ({why})"),
        }
    }
}

/// Whether `source` can go over NBD, and what for: `VDI.get_nbd_info`; with a `base`, its
/// change list since the base; without, the blocks its export (no base) would send, from
/// the export's head alone (the export is then discarded and its task removed). A full
/// over NBD thus reads and sends no block the export path would not.
pub async fn probe_nbd(
    source: VdiOn<'_>,
    base: Option<&str>,
    options: &TransferOptions,
    cancel: &CancellationToken,
) -> Result<NbdPath, NbdUnusable> {
    let host = source.host;
    let infos = match host.call("VDI.get_nbd_info", vec![source.vdi.into()]).await {
        Ok(answer) => parse_nbd_info(&answer).map_err(NbdUnusable::NoNbd)?,
        Err(e) => return Err(NbdUnusable::NoNbd(format!("VDI.get_nbd_info failed ({e})"))),
    };
    if infos.is_empty() {
        return Err(NbdUnusable::NoNbd(
            "the host offers no NBD (no network with the nbd or insecure_nbd purpose)".into(),
        ));
    }
    let extents = match base {
        Some(base) => {
            let params = vec![base.into(), source.vdi.into()];
            match host.call("VDI.list_changed_blocks", params).await {
                Ok(Value::String(text)) => Extents::Changed(text),
                Ok(answer) => {
                    return Err(NbdUnusable::NoChangeLog(format!(
                        "VDI.list_changed_blocks: not a string: {answer:?}"
                    )));
                }
                Err(e) => {
                    return Err(NbdUnusable::NoChangeLog(format!(
                        "no usable change log since the base ({e})"
                    )));
                }
            }
        }
        None => {
            let allocated = match open_export(source, None, HEAD_LABEL, options, cancel).await {
                Ok(export) => {
                    let allocated = export
                        .allocated_blocks()
                        .map(|(block_size, blocks)| (block_size, blocks.to_vec()))
                        .ok_or_else(|| "no BAT in the head".to_owned());
                    export.discard().await;
                    allocated
                }
                Err(e) => Err(e.to_string()),
            };
            match allocated {
                Ok((block_size, blocks)) => Extents::Allocated { block_size, blocks },
                Err(why) => {
                    let whole = NbdPath {
                        infos,
                        extents: Extents::All,
                    };
                    return Err(NbdUnusable::NoHead(why, whole));
                }
            }
        }
    };
    Ok(NbdPath { infos, extents })
}

impl NbdPath {
    /// The extents to read of a disk of `virtual_size` bytes.
    fn change_map(&self, virtual_size: u64) -> Result<ChangeMap, crate::stream::StreamError> {
        match &self.extents {
            Extents::Changed(text) => ChangeMap::from_xapi(text, virtual_size),
            Extents::All => Ok(ChangeMap::all(virtual_size)),
            Extents::Allocated { block_size, blocks } => {
                let mut map = ChangeMap::none(virtual_size);
                let block = u64::from(*block_size);
                for index in blocks {
                    let start = u64::from(*index) * block;
                    let first = start / EXTENT_SIZE;
                    let end = (start + block).min(virtual_size).div_ceil(EXTENT_SIZE);
                    for extent in first..end {
                        map.set(extent);
                    }
                }
                Ok(map)
            }
        }
    }

    /// The export's block size, for a full from its allocation, where a stream can have it.
    fn block_size(&self) -> Option<u32> {
        match &self.extents {
            Extents::Allocated { block_size, .. } => Some(*block_size).filter(|b| {
                b.is_power_of_two() && (EXTENT_SIZE as u32..=DEFAULT_BLOCK_SIZE).contains(b)
            }),
            _ => None,
        }
    }

    /// Whether this is a full (no base).
    fn is_full(&self) -> bool {
        !matches!(self.extents, Extents::Changed(_))
    }
}

/// Copy `source`'s changes since the base its `path` was probed with, or its allocated
/// content for a full, into `target`, reading on `concurrency` NBD connections. `cancel`
/// stops the transfer with [`TransferErrorKind::Cancelled`].
pub async fn transfer_nbd(
    source: VdiOn<'_>,
    path: &NbdPath,
    target: VdiOn<'_>,
    options: &TransferOptions,
    concurrency: usize,
    progress: &mut (dyn FnMut(&Progress) + Send),
    cancel: impl Future<Output = ()>,
) -> Result<NbdOutcome, TransferError> {
    let token = CancellationToken::new();
    let transfer = compose(source, path, target, options, concurrency, progress, &token);
    settle_on_cancel(&token, transfer, cancel).await
}

async fn compose(
    source: VdiOn<'_>,
    path: &NbdPath,
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
    let map = path
        .change_map(virtual_size)
        .map_err(|e| setup(TransferErrorKind::Stream(e)))?;
    let full = path.is_full();
    let infos = &path.infos;
    let clients = match connect_all(infos, concurrency.clamp(1, MAX_NBD_CONCURRENCY), options).await
    {
        Ok(clients) => clients,
        Err(why) => return Ok(NbdOutcome::NoNbd(why)),
    };
    if let Some(small) = clients.iter().find(|c| c.export().size < virtual_size) {
        return Err(setup(TransferErrorKind::Connection(format!(
            "the NBD export holds {} bytes, less than the disk's {virtual_size}",
            small.export().size
        ))));
    }

    // A full from the export's allocation uses the export's blocks (XAPI's are 2 MiB), so it
    // sends the very blocks the export would, not one more bitmap.
    let timestamp = VhdTimestamp::from_system_time(SystemTime::now());
    let every = matches!(path.extents, Extents::All);
    let layout = match path.block_size() {
        Some(block_size) => {
            ExtentStream::with_block_size(map, every, Uuid::new_v4(), timestamp, block_size)
        }
        None => ExtentStream::new(map, every, Uuid::new_v4(), timestamp),
    }
    .map_err(|e| setup(TransferErrorKind::Stream(e)))?;
    check_fits(target, virtual_size).await?;
    let stream = NbdStream::new(source, layout, full, clients, options.stall_timeout);
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

#[cfg(test)]
mod tests {
    use super::*;

    const MIB: u64 = 1 << 20;

    fn full(block_size: u32, blocks: Vec<u32>) -> NbdPath {
        NbdPath {
            infos: Vec::new(),
            extents: Extents::Allocated { block_size, blocks },
        }
    }

    #[test]
    fn a_full_reads_the_extents_of_the_allocated_blocks_only() {
        // 5 MiB: blocks 0 and 2 of 2 MiB, the last cut at the disk's end.
        let map = full(2 << 20, vec![0, 2]).change_map(5 * MIB).unwrap();
        let marked: Vec<u64> = (0..map.extents()).filter(|e| map.is_changed(*e)).collect();
        let expected: Vec<u64> = (0..32).chain(64..80).collect();
        assert_eq!(marked, expected);
    }

    #[test]
    fn entries_past_the_disk_are_ignored_and_odd_block_sizes_stream_in_the_default() {
        let map = full(2 << 20, vec![1, 9]).change_map(4 * MIB).unwrap();
        assert_eq!(map.changed(), 32);
        assert_eq!(full(2 << 20, vec![]).block_size(), Some(2 << 20));
        assert_eq!(full(3 << 20, vec![0]).block_size(), None);
        let map = full(3 << 20, vec![0]).change_map(4 * MIB).unwrap();
        assert_eq!(map.changed(), 48);
    }
}
