//! Response bodies: a whole buffer, or a stream of frames from a bounded channel. The
//! channel is the backpressure of the data plane: a producer can be at most its capacity
//! ahead of the socket, and when the client goes away the producer's sends fail.

use std::convert::Infallible;
use std::pin::Pin;
use std::task::{Context, Poll};

use bytes::Bytes;
use hyper::body::{Body, Frame, SizeHint};
use tokio::sync::mpsc;

pub(crate) struct ReplyBody(Inner);

enum Inner {
    Whole(Option<Bytes>),
    /// Ends when every sender is dropped. Failures are written into the body as text (the
    /// data plane's embedded 500), so the body itself never fails.
    Stream(mpsc::Receiver<Bytes>),
}

impl ReplyBody {
    pub(crate) fn empty() -> ReplyBody {
        ReplyBody(Inner::Whole(None))
    }

    pub(crate) fn whole(bytes: impl Into<Bytes>) -> ReplyBody {
        let bytes = bytes.into();
        ReplyBody(Inner::Whole((!bytes.is_empty()).then_some(bytes)))
    }

    /// A body fed through the returned sender, at most `capacity` frames ahead.
    pub(crate) fn channel(capacity: usize) -> (mpsc::Sender<Bytes>, ReplyBody) {
        let (tx, rx) = mpsc::channel(capacity);
        (tx, ReplyBody(Inner::Stream(rx)))
    }
}

impl Body for ReplyBody {
    type Data = Bytes;
    type Error = Infallible;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Infallible>>> {
        match &mut self.get_mut().0 {
            Inner::Whole(bytes) => Poll::Ready(bytes.take().map(|b| Ok(Frame::data(b)))),
            Inner::Stream(rx) => rx
                .poll_recv(cx)
                .map(|frame| frame.map(|b| Ok(Frame::data(b)))),
        }
    }

    fn is_end_stream(&self) -> bool {
        matches!(self.0, Inner::Whole(None))
    }

    fn size_hint(&self) -> SizeHint {
        match &self.0 {
            Inner::Whole(bytes) => {
                SizeHint::with_exact(bytes.as_ref().map_or(0, |b| b.len() as u64))
            }
            Inner::Stream(_) => SizeHint::default(),
        }
    }
}

#[cfg(test)]
mod tests {
    use http_body_util::BodyExt;

    use super::*;

    #[tokio::test]
    async fn a_channel_body_ends_when_its_senders_are_gone() {
        let (tx, body) = ReplyBody::channel(2);
        assert_eq!(body.size_hint().exact(), None);
        tokio::spawn(async move {
            tx.send(Bytes::from_static(b"ab")).await.unwrap();
            tx.send(Bytes::from_static(b"cd")).await.unwrap();
        });
        let all = body.collect().await.unwrap().to_bytes();
        assert_eq!(&all[..], b"abcd");
    }

    #[tokio::test]
    async fn whole_bodies_know_their_length() {
        let body = ReplyBody::whole("xyz");
        assert_eq!(body.size_hint().exact(), Some(3));
        assert_eq!(&body.collect().await.unwrap().to_bytes()[..], b"xyz");
        assert!(ReplyBody::empty().is_end_stream());
        assert!(ReplyBody::whole("").is_end_stream());
    }
}
