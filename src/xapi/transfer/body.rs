//! The import request's body: chunks arriving over a bounded channel, with an exact length so
//! hyper sends a Content-Length and never chunked encoding (which XAPI's import refuses).
//! Sending an error down the channel aborts the request mid-body.

use std::pin::Pin;
use std::task::{Context, Poll};

use bytes::Bytes;
use hyper::body::{Body, Frame, SizeHint};
use tokio::sync::mpsc;

/// A chunk for the body, or the reason to abort it.
pub type Chunk = Result<Bytes, std::io::Error>;

pub struct ChannelBody {
    chunks: mpsc::Receiver<Chunk>,
    remaining: u64,
}

impl ChannelBody {
    /// A body of exactly `len` bytes and the sender feeding it, queueing at most `depth`
    /// chunks: a full queue holds the sender back (backpressure from the target).
    pub fn new(len: u64, depth: usize) -> (mpsc::Sender<Chunk>, ChannelBody) {
        let (tx, rx) = mpsc::channel(depth);
        (
            tx,
            ChannelBody {
                chunks: rx,
                remaining: len,
            },
        )
    }
}

impl Body for ChannelBody {
    type Data = Bytes;
    type Error = std::io::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, std::io::Error>>> {
        if self.remaining == 0 {
            return Poll::Ready(None);
        }
        match self.chunks.poll_recv(cx) {
            Poll::Pending => Poll::Pending,
            Poll::Ready(Some(Ok(chunk))) => {
                let len = chunk.len() as u64;
                if len > self.remaining {
                    return Poll::Ready(Some(Err(std::io::Error::other(
                        "more bytes than the announced Content-Length",
                    ))));
                }
                self.remaining -= len;
                Poll::Ready(Some(Ok(Frame::data(chunk))))
            }
            Poll::Ready(Some(Err(e))) => Poll::Ready(Some(Err(e))),
            // The sender went away before the end: abort rather than send a short body.
            Poll::Ready(None) => Poll::Ready(Some(Err(std::io::Error::new(
                std::io::ErrorKind::UnexpectedEof,
                "the stream ended before its announced length",
            )))),
        }
    }

    fn is_end_stream(&self) -> bool {
        self.remaining == 0
    }

    fn size_hint(&self) -> SizeHint {
        SizeHint::with_exact(self.remaining)
    }
}
