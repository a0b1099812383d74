//! Moving the request body from hyper to the blocking thread that applies it: an async pump
//! reads frames and passes them on through a bounded channel, so the client is held back by
//! TCP flow control when the disk is slower than the network. The blocking side reads through
//! the injected faults, which pace, stall or cut the body.

use std::time::{Duration, Instant};

use bytes::Bytes;
use http_body_util::BodyExt;
use hyper::body::Incoming;
use tokio::sync::{mpsc, oneshot};
use uuid::Uuid;

use super::super::transfer::io_error;
use crate::lab::faults::{Cut, CutKind, TransferFaults};
use crate::xapi::rpc::XapiFault;

/// A client that sends nothing for this long is given up on, which frees the VDI.
const IDLE_TIMEOUT: Duration = Duration::from_secs(300);

/// What the pump passes on: body bytes, or why the body failed.
type Item = Result<Bytes, String>;

/// Read `body` into `frames` until it ends, fails or nobody listens. `started` fires at the
/// first frame (or at the end or failure of the body).
pub(super) async fn pump(
    mut body: Incoming,
    frames: mpsc::Sender<Item>,
    started: oneshot::Sender<()>,
) {
    let mut started = Some(started);
    loop {
        let next = tokio::time::timeout(IDLE_TIMEOUT, body.frame()).await;
        if let Some(started) = started.take() {
            let _ = started.send(());
        }
        let item = match next {
            Ok(None) => return,
            Ok(Some(Ok(frame))) => match frame.into_data() {
                Ok(data) => Ok(data),
                // Trailers carry nothing an import needs.
                Err(_) => continue,
            },
            Ok(Some(Err(e))) => Err(format!("reading the body: {e}")),
            Err(_) => Err(format!(
                "the client sent nothing for {} s",
                IDLE_TIMEOUT.as_secs()
            )),
        };
        let failed = item.is_err();
        if frames.send(item).await.is_err() || failed {
            return;
        }
    }
}

/// The body as the blocking thread reads it.
pub(super) struct BodyReader {
    frames: mpsc::Receiver<Item>,
    /// Bytes passed on so far.
    received: u64,
    vdi: Uuid,
    faults: TransferFaults,
    started: Instant,
    /// Bytes of the last frame the faults held back.
    held: Bytes,
    /// Where the faults cut the body, reported at the next read.
    cut: Option<Cut>,
}

impl BodyReader {
    /// The body of an import into `vdi`, which errors name, read through `faults`.
    pub fn new(frames: mpsc::Receiver<Item>, vdi: Uuid, faults: TransferFaults) -> BodyReader {
        BodyReader {
            frames,
            received: 0,
            vdi,
            faults,
            started: Instant::now(),
            held: Bytes::new(),
            cut: None,
        }
    }

    /// The next bytes, `None` at the end of the body. Blocks: call on a blocking thread.
    pub fn next(&mut self) -> Result<Option<Bytes>, XapiFault> {
        let cut = |cut: Cut| io_error(format!("VDI {}: {cut}", self.vdi));
        if let Some(done) = self.cut {
            return Err(cut(done));
        }
        while self.held.is_empty() {
            match self.frames.blocking_recv() {
                None => return Ok(None),
                Some(Ok(bytes)) => self.held = bytes,
                Some(Err(why)) => {
                    return Err(io_error(format!(
                        "VDI {}: {why} after {} bytes",
                        self.vdi, self.received
                    )));
                }
            }
        }
        let step = self
            .faults
            .step(self.received, self.held.len(), self.started.elapsed());
        std::thread::sleep(step.wait);
        let bytes = self.held.split_to(step.pass);
        self.received += bytes.len() as u64;
        self.cut = step.cut;
        match step.cut {
            Some(done) if bytes.is_empty() => Err(cut(done)),
            _ => Ok(Some(bytes)),
        }
    }

    /// Whether a fault dropped the connection, after which nothing more is said to the client.
    pub fn dropped(&self) -> bool {
        self.cut.is_some_and(|cut| cut.how == CutKind::Drop)
    }
}
