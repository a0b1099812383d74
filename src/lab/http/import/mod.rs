//! `PUT /import_raw_vdi`: a VHD stream (`format=vhd`) or raw bytes (`format=raw`) written
//! onto an existing VDI (protocol reference §1.3).
//!
//! Everything about the request is checked first: refusals get xapi's status codes (401,
//! 404 for `Transfer-Encoding` and unknown formats, 400 without a VDI, 500 otherwise). An
//! empty body (Xen Orchestra's probe) is answered at once without touching the disk. Otherwise
//! the VDI is claimed (a second import gets `VDI_IN_USE`), the 200 goes out as soon as the
//! body starts arriving, and the body is applied as it arrives: an async pump moves it to a
//! blocking thread through a bounded channel, which decodes and writes. The import writes a
//! staging copy of the VDI's leaf that replaces the leaf only once the whole stream applied,
//! so a failed import leaves the VDI unchanged; the task then fails, and the 200's body
//! carries an embedded 500, as xapi's does. On success the task's result is the VDI's
//! reference as XML-RPC, `<value>OpaqueRef:…</value>`. Injected faults refuse the import
//! (`sr_full`) before the VDI is claimed, and act on the body as the [`BodyReader`] reads it.

mod apply;
mod pump;

use hyper::HeaderMap;
use hyper::Request;
use hyper::body::Incoming;
use hyper::header::TRANSFER_ENCODING;
use tokio::sync::{mpsc, oneshot};
use uuid::Uuid;

use super::body::ReplyBody;
use super::reply::{self, Reply};
use super::request::{Params, content_length};
use super::transfer::{
    Format, Refusal, TaskProgress, authenticate, format, given_task, internal, io_error,
    storage_fault, vdi,
};
use crate::image::Chain;
use crate::lab::Lab;
use crate::lab::faults::Plane;
use crate::lab::sr::ImportGuard;
use crate::xapi::rpc::{Value, XapiFault};
use pump::{BodyReader, pump};

/// Body frames the pump may hold ahead of the writer (each at most hyper's read buffer).
const BODY_FRAMES: usize = 16;

pub(super) async fn handle(lab: Lab, request: Request<Incoming>) -> Reply {
    let (parts, body) = request.into_parts();
    let prepared = tokio::task::spawn_blocking(move || {
        let params = Params::new(parts.uri.query(), &parts.headers);
        prepare(&lab, &params, &parts.headers)
    })
    .await;
    let job = match prepared {
        Ok(Prepared::Import(job)) => *job,
        Ok(Prepared::Probe { task }) => {
            return reply::transfer_started(&task, CONTENT_TYPE, None, ReplyBody::empty());
        }
        Ok(Prepared::Refused(refused)) => return refused,
        Err(e) => return reply::internal_error(&internal(format!("import: {e}"))),
    };
    let (frames_tx, frames_rx) = mpsc::channel(BODY_FRAMES);
    let (started_tx, started_rx) = oneshot::channel();
    tokio::spawn(pump(body, frames_tx, started_tx));
    let (reply_tx, reply_body) = ReplyBody::channel(1);
    let task = job.task.clone();
    // Until the import ends its task, `task.cancel` leaves the task to it.
    let running = job.lab.run_task(&task);
    tokio::task::spawn_blocking(move || {
        let _running = running;
        let uuid = job.uuid;
        let names = [job.vdi.as_str(), &uuid.to_string()];
        let faults = job.lab.faults().arm(Plane::Import, &names);
        job.run(BodyReader::new(frames_rx, uuid, faults), reply_tx)
    });
    // hyper answers `Expect: 100-continue` only while no response has started, so the 200
    // waits for the body to start flowing (or to fail).
    let _ = started_rx.await;
    reply::transfer_started(&task, CONTENT_TYPE, None, reply_body)
}

const CONTENT_TYPE: &str = "application/octet-stream";

enum Prepared {
    /// An empty body, answered without touching the disk; its task is already complete.
    Probe {
        task: String,
    },
    Import(Box<ImportJob>),
    Refused(Reply),
}

/// An import checked, its VDI claimed, ready to read the body.
struct ImportJob {
    lab: Lab,
    task: String,
    vdi: String,
    uuid: Uuid,
    format: Format,
    length: u64,
    guard: ImportGuard,
    /// The VDI's chain before the import, which raw imports read (see `apply::raw`).
    before: Chain,
}

fn prepare(lab: &Lab, params: &Params, headers: &HeaderMap) -> Prepared {
    check(lab, params, headers).unwrap_or_else(|refusal| {
        Prepared::Refused(refusal.answer(lab, params.get_cookie_first("task_id")))
    })
}

fn check(lab: &Lab, params: &Params, headers: &HeaderMap) -> Result<Prepared, Refusal> {
    authenticate(lab, params, headers)?;
    let given = given_task(lab, params)?;
    if let Some(encoding) = headers.get(TRANSFER_ENCODING) {
        let encoding = String::from_utf8_lossy(encoding.as_bytes());
        return Err(Refusal::not_found(internal(format!(
            "Cannot handle encoding: {encoding}"
        ))));
    }
    let format = format(params)?;
    if params.get("chunked").is_some() {
        return Err(Refusal::not_found(internal(match format {
            Format::Vhd => "Cannot handle chunked VHD",
            Format::Raw => "Chunked raw imports are not supported by the lab host",
        })));
    }
    let (vdi, uuid) = vdi(lab, named_vdi(params, format)?)?;
    let length = content_length(headers)
        .map_err(|e| Refusal::bad_request(internal(e)))?
        .ok_or_else(|| {
            Refusal::internal(internal("Trying to import a VDI without a length field"))
        })?;
    let new_task = || match &given {
        Some(task) => Ok(task.clone()),
        None => lab.create_task("import_raw_vdi").map_err(Refusal::internal),
    };
    if length == 0 {
        let task = new_task()?;
        let outcome = match format {
            // What vhd-tool makes of an empty VHD stream: xapi fails the probe's task.
            Format::Vhd => Err(io_error(format!(
                "VDI {uuid}: the body is empty, so no VHD stream was imported"
            ))),
            Format::Raw => Ok(Value::from(vdi.as_str())),
        };
        let _ = lab.complete_task(&task, outcome);
        return Ok(Prepared::Probe { task });
    }
    let sr = lab.sr();
    let storage = |e| Refusal::internal(storage_fault(&vdi, "import", e));
    if format == Format::Raw {
        let size = sr.virtual_size(uuid).map_err(storage)?;
        if length > size {
            return Err(Refusal::internal(too_small(&vdi, length)));
        }
    }
    if lab.faults().on_import(&[&vdi, &uuid.to_string()]).is_some() {
        return Err(Refusal::internal(lab.injected_sr_full(length)));
    }
    let guard = sr.begin_import(uuid).map_err(storage)?;
    let before = sr.chain(uuid).map_err(storage)?;
    Ok(Prepared::Import(Box::new(ImportJob {
        lab: lab.clone(),
        task: new_task()?,
        vdi,
        uuid,
        format,
        length,
        guard,
        before,
    })))
}

/// The `vdi=` parameter; without one, xapi's 400s (it can import raw data into a new VDI of
/// an SR, which the lab host does not).
fn named_vdi(params: &Params, format: Format) -> Result<&str, Refusal> {
    if let Some(vdi) = params.get("vdi") {
        return Ok(vdi);
    }
    if params
        .get("sr_id")
        .or_else(|| params.get("sr_uuid"))
        .is_none()
    {
        return Err(Refusal::bad_request(XapiFault::new(
            "VDI_MISSING",
            Vec::<String>::new(),
        )));
    }
    Err(Refusal::bad_request(internal(match format {
        Format::Vhd => "Importing a VHD directly into an SR not yet supported",
        Format::Raw => "The lab host imports only into an existing VDI: give vdi=",
    })))
}

/// `VDI_TOO_SMALL [vdi, size needed]`.
fn too_small(vdi: &str, needed: u64) -> XapiFault {
    XapiFault::new("VDI_TOO_SMALL", [vdi.to_owned(), needed.to_string()])
}

impl ImportJob {
    fn run(self, mut body: BodyReader, reply: mpsc::Sender<bytes::Bytes>) {
        let ImportJob {
            lab,
            task,
            vdi,
            uuid,
            format,
            length,
            mut guard,
            before,
        } = self;
        let mut progress = TaskProgress::new(&lab, &task);
        let context = apply::Context {
            vdi: &vdi,
            uuid,
            length,
            target: guard.target().to_path_buf(),
        };
        let applied = match format {
            Format::Vhd => apply::vhd(&context, &mut guard, &mut body, &mut progress),
            Format::Raw => apply::raw(&context, &mut guard, &before, &mut body, &mut progress),
        };
        // Commit, or discard by dropping the guard, before the task is final, so that a
        // client that sees the task end can use the VDI again at once.
        let outcome = match applied {
            Ok(()) => lab
                .sr()
                .commit_import(guard)
                .map_err(|e| storage_fault(&vdi, "import", e)),
            Err(fault) => {
                drop(guard);
                Err(fault)
            }
        };
        match outcome {
            Ok(()) => {
                let _ = lab.complete_task(&task, Ok(Value::from(vdi)));
            }
            Err(fault) => {
                tracing::warn!(vdi = %uuid, %fault, "import failed; the VDI is unchanged");
                let _ = lab.complete_task(&task, Err(fault.clone()));
                // A dropped connection says nothing more.
                if !body.dropped() {
                    let _ = reply.blocking_send(reply::embedded_internal_error(&fault));
                }
            }
        }
    }
}
