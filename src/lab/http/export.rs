//! `GET /export_raw_vdi`: a VDI's guest content as a VHD stream (`format=vhd`, a
//! differencing delta with `base=`) or as raw bytes (protocol reference §1.2).
//!
//! After the 200, a blocking thread walks the chain and feeds the body through a bounded
//! channel: block data goes out as zero-copy slices of the memory-mapped VHD files (the
//! image module releases their pages as it goes), so memory stays bounded whatever the disk
//! size, and a slow client slows the thread down. The task completes before the body ends,
//! so a client that sees the connection close finds the task's final state. A failure after
//! the 200 fails the task and is written into the body as a whole `HTTP/1.1 500` response,
//! as xapi does. Injected faults act in the [`Sink`], on the bytes as they go out.

use std::time::{Duration, Instant};

use bytes::Bytes;
use hyper::HeaderMap;
use hyper::http::request::Parts;
use tokio::runtime::Handle;
use tokio::sync::mpsc;
use uuid::Uuid;

use super::body::ReplyBody;
use super::reply::{self, Reply};
use super::request::Params;
use super::transfer::{
    Format, Refusal, TaskProgress, authenticate, format, given_task, internal, io_error,
    storage_fault, vdi,
};
use crate::image::{Chain, changed};
use crate::lab::Lab;
use crate::lab::faults::{Cut, CutKind, Plane, TransferFaults};
use crate::stream::StreamEncoder;
use crate::stream::source::{ChainSource, export_params};
use crate::xapi::rpc::{Value, XapiFault};

/// Frames the producer may run ahead of the socket: a few blocks.
const CHANNEL_FRAMES: usize = 8;
/// A client that reads nothing for this long is given up on, freeing the thread and files.
const STALL_TIMEOUT: Duration = Duration::from_secs(300);
/// How often an export held up by its client looks for a cancellation of its task.
const CANCEL_POLL: Duration = Duration::from_secs(1);

pub(super) async fn handle(lab: Lab, parts: Parts) -> Reply {
    let prepared = tokio::task::spawn_blocking(move || {
        let params = Params::new(parts.uri.query(), &parts.headers);
        prepare(&lab, &params, &parts.headers)
    })
    .await;
    let export = match prepared {
        Ok(Prepared::Ready(export)) => export,
        Ok(Prepared::Refused(refused)) => return refused,
        Err(e) => return reply::internal_error(&internal(format!("export: {e}"))),
    };
    let (tx, body) = ReplyBody::channel(CHANNEL_FRAMES);
    let (content_type, extension) = match export.format {
        Format::Vhd => ("application/vhd", "vhd"),
        Format::Raw => ("application/octet-stream", "raw"),
    };
    let disposition = format!(r#"attachment; filename="{}.{extension}""#, export.vdi);
    let reply = reply::transfer_started(&export.task, content_type, Some(disposition), body);
    let runtime = Handle::current();
    // Until the export ends its task, `task.cancel` leaves the task to it.
    let running = export.lab.run_task(&export.task);
    tokio::task::spawn_blocking(move || {
        let _running = running;
        export.run(&runtime, tx);
    });
    reply
}

/// An export checked and ready to stream.
struct Export {
    lab: Lab,
    task: String,
    /// The VDI's reference, by which faults may name it too.
    reference: String,
    vdi: Uuid,
    format: Format,
    source: ChainSource,
    base: Option<Chain>,
}

enum Prepared {
    Ready(Box<Export>),
    Refused(Reply),
}

fn prepare(lab: &Lab, params: &Params, headers: &HeaderMap) -> Prepared {
    match check(lab, params, headers) {
        Ok(export) => Prepared::Ready(Box::new(export)),
        Err(refusal) => Prepared::Refused(refusal.answer(lab, params.get_cookie_first("task_id"))),
    }
}

fn check(lab: &Lab, params: &Params, headers: &HeaderMap) -> Result<Export, Refusal> {
    authenticate(lab, params, headers)?;
    let given = given_task(lab, params)?;
    let format = format(params)?;
    let named = params
        .get("vdi")
        .ok_or_else(|| Refusal::internal(internal("Missing vdi query parameter")))?;
    let (reference, uuid) = vdi(lab, named)?;
    let base = params.get("base").map(|b| vdi(lab, b)).transpose()?;
    let open = |reference: &str, uuid: Uuid| {
        lab.sr()
            .chain(uuid)
            .map_err(|e| Refusal::internal(storage_fault(reference, "export", e)))
    };
    let leaf = open(&reference, uuid)?;
    let base = base.map(|(r, u)| open(&r, u)).transpose()?;
    let task = match given {
        Some(task) => task,
        None => lab
            .create_task("export_raw_vdi")
            .map_err(Refusal::internal)?,
    };
    Ok(Export {
        lab: lab.clone(),
        task,
        reference,
        vdi: uuid,
        format,
        source: ChainSource::new(leaf),
        base,
    })
}

/// Why streaming stopped early.
enum Stop {
    /// The client went away or stopped reading: nobody is left to tell but the task.
    Gone(&'static str),
    /// Anything else: the task fails with this and the client gets an embedded 500.
    Failed(XapiFault),
    /// An injected fault ended the export.
    Cut(Cut),
}

impl From<XapiFault> for Stop {
    fn from(fault: XapiFault) -> Stop {
        Stop::Failed(fault)
    }
}

/// The body's end of the channel, from a blocking thread, through the injected faults.
struct Sink<'a> {
    runtime: &'a Handle,
    lab: &'a Lab,
    task: &'a str,
    tx: mpsc::Sender<Bytes>,
    faults: TransferFaults,
    sent: u64,
    started: Instant,
}

impl Sink<'_> {
    /// Send a frame as the faults allow: paced, stalled or cut short.
    fn send(&mut self, mut frame: Bytes) -> Result<(), Stop> {
        while !frame.is_empty() {
            let step = self
                .faults
                .step(self.sent, frame.len(), self.started.elapsed());
            std::thread::sleep(step.wait);
            let part = frame.split_to(step.pass);
            self.sent += part.len() as u64;
            if !part.is_empty() {
                self.deliver(part)?;
            }
            if let Some(cut) = step.cut {
                return Err(Stop::Cut(cut));
            }
        }
        Ok(())
    }

    /// Hand `frame` to the body once the client has read enough; a cancellation of the task
    /// ends the wait, so a cancelled export held up by its client does not stay `cancelling`.
    fn deliver(&self, frame: Bytes) -> Result<(), Stop> {
        let started = Instant::now();
        loop {
            let room = self
                .runtime
                .block_on(tokio::time::timeout(CANCEL_POLL, self.tx.reserve()));
            match room {
                Ok(Ok(permit)) => {
                    permit.send(frame);
                    return Ok(());
                }
                Ok(Err(_)) => return Err(Stop::Gone("the client closed the connection")),
                Err(_) if started.elapsed() >= STALL_TIMEOUT => {
                    return Err(Stop::Gone("the client stopped reading"));
                }
                Err(_) if self.lab.task_cancelling(self.task) => {
                    return Err(Stop::Failed(XapiFault::new("TASK_CANCELLED", [self.task])));
                }
                Err(_) => {}
            }
        }
    }
}

impl Export {
    fn run(self, runtime: &Handle, tx: mpsc::Sender<Bytes>) {
        let names = [self.reference.as_str(), &self.vdi.to_string()];
        let mut sink = Sink {
            runtime,
            lab: &self.lab,
            task: &self.task,
            tx,
            faults: self.lab.faults().arm(Plane::Export, &names),
            sent: 0,
            started: Instant::now(),
        };
        let outcome = match self.format {
            Format::Vhd => self.send_vhd(&mut sink),
            Format::Raw => self.send_raw(&mut sink),
        };
        let lab = &self.lab;
        // The task first: the body ends when `sink` drops, and by then the task is final.
        match outcome {
            Ok(()) => {
                let _ = lab.complete_task(&self.task, Ok(Value::void()));
            }
            Err(Stop::Gone(why)) => {
                tracing::info!(vdi = %self.vdi, "export stopped: {why}");
                let _ = lab.complete_task(
                    &self.task,
                    Err(io_error(format!("VDI {}: {why}", self.vdi))),
                );
            }
            Err(Stop::Failed(fault)) => {
                tracing::warn!(vdi = %self.vdi, %fault, "export failed after its 200");
                let _ = lab.complete_task(&self.task, Err(fault.clone()));
                let _ = sink.deliver(reply::embedded_internal_error(&fault));
            }
            Err(Stop::Cut(cut)) => {
                tracing::info!(vdi = %self.vdi, "export: {cut}");
                let fault = io_error(format!("VDI {}: {cut}", self.vdi));
                let _ = lab.complete_task(&self.task, Err(fault.clone()));
                if cut.how == CutKind::Fail {
                    let _ = sink.deliver(reply::embedded_internal_error(&fault));
                }
            }
        }
    }

    fn send_vhd(&self, sink: &mut Sink) -> Result<(), Stop> {
        let params = export_params(self.source.chain(), self.base.as_ref());
        let mut encoder = StreamEncoder::new(params)
            .map_err(|e| internal(format!("VDI {}: encoding the VHD stream: {e}", self.vdi)))?;
        let total = encoder.included_blocks().count().max(1) as f64;
        let mut progress = TaskProgress::new(&self.lab, &self.task);
        sink.send(encoder.prelude())?;
        let mut done = 0u32;
        while let Some(index) = encoder.next_block() {
            let [bitmap, data] = encoder
                .block_frames(index, self.source.stream_block(index))
                .map_err(|e| internal(format!("VDI {}: {e}", self.vdi)))?;
            sink.send(bitmap)?;
            sink.send(data)?;
            done += 1;
            progress.update(f64::from(done) / total)?;
        }
        let trailer = encoder
            .trailer()
            .map_err(|e| internal(format!("VDI {}: {e}", self.vdi)))?;
        sink.send(trailer)
    }

    /// The whole virtual size. With a base, blocks that did not change are sent as zeros, as
    /// xapi does (which makes a raw delta of little use, but that is the protocol).
    fn send_raw(&self, sink: &mut Sink) -> Result<(), Stop> {
        let chain = self.source.chain();
        let changed_blocks = self.base.as_ref().map(|base| changed(chain, Some(base)));
        let total = f64::from(chain.block_count().max(1));
        let mut progress = TaskProgress::new(&self.lab, &self.task);
        for index in 0..chain.block_count() {
            let frame = match &changed_blocks {
                Some(set) if !set.contains(index) => {
                    self.source.zeros(chain.leaf().block_len(index) as usize)
                }
                _ => self.source.guest_block(index),
            };
            sink.send(frame)?;
            progress.update(f64::from(index + 1) / total)?;
        }
        Ok(())
    }
}
