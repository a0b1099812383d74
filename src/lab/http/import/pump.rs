//! Moving the request body from hyper to the blocking thread that applies it: an async pump
//! reads frames and passes them on through a bounded channel, so the client is held back by
//! TCP flow control when the disk is slower than the network.

use std::time::Duration;

use bytes::Bytes;
use http_body_util::BodyExt;
use hyper::body::Incoming;
use tokio::sync::{mpsc, oneshot};
use uuid::Uuid;

use super::super::transfer::io_error;
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
    received: u64,
    vdi: Uuid,
}

impl BodyReader {
    /// The body of an import into `vdi`, which errors name.
    pub fn new(frames: mpsc::Receiver<Item>, vdi: Uuid) -> BodyReader {
        BodyReader {
            frames,
            received: 0,
            vdi,
        }
    }

    /// The next bytes, `None` at the end of the body. Blocks: call on a blocking thread.
    pub fn next(&mut self) -> Result<Option<Bytes>, XapiFault> {
        match self.frames.blocking_recv() {
            None => Ok(None),
            Some(Ok(bytes)) => {
                self.received += bytes.len() as u64;
                Ok(Some(bytes))
            }
            Some(Err(why)) => Err(io_error(format!(
                "VDI {}: {why} after {} bytes",
                self.vdi, self.received
            ))),
        }
    }
}
