//! Response bodies the simulator can send: whole, cut off half-way (the connection drops), or
//! dribbled a few bytes at a time.

use bytes::Bytes;
use hyper::body::{Body, Frame, SizeHint};
use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;

pub enum MockBody {
    Full(Option<Bytes>),
    /// The first half, then an error: hyper aborts the connection mid-body.
    Cut {
        first: Option<Bytes>,
        len: u64,
    },
    /// `chunk` bytes every `delay`.
    Slow {
        rest: Bytes,
        chunk: usize,
        delay: Duration,
        sleep: Option<Pin<Box<tokio::time::Sleep>>>,
    },
}

impl MockBody {
    pub fn full(b: impl Into<Bytes>) -> Self {
        MockBody::Full(Some(b.into()))
    }
    pub fn cut(b: Bytes) -> Self {
        let len = b.len() as u64;
        MockBody::Cut {
            first: Some(b.slice(..b.len() / 2)),
            len,
        }
    }
    pub fn slow(b: Bytes, over: Duration) -> Self {
        let chunks = 10;
        MockBody::Slow {
            chunk: b.len().div_ceil(chunks).max(1),
            rest: b,
            delay: over / chunks as u32,
            sleep: None,
        }
    }
}

impl Body for MockBody {
    type Data = Bytes;
    type Error = std::io::Error;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Self::Error>>> {
        match self.get_mut() {
            MockBody::Full(b) => Poll::Ready(b.take().map(|b| Ok(Frame::data(b)))),
            MockBody::Cut { first, .. } => Poll::Ready(Some(match first.take() {
                Some(b) => Ok(Frame::data(b)),
                None => Err(std::io::Error::new(
                    std::io::ErrorKind::ConnectionAborted,
                    "simulated cut",
                )),
            })),
            MockBody::Slow {
                rest,
                chunk,
                delay,
                sleep,
            } => {
                if rest.is_empty() {
                    return Poll::Ready(None);
                }
                let s = sleep.get_or_insert_with(|| Box::pin(tokio::time::sleep(*delay)));
                match s.as_mut().poll(cx) {
                    Poll::Pending => Poll::Pending,
                    Poll::Ready(()) => {
                        *sleep = None;
                        let n = (*chunk).min(rest.len());
                        Poll::Ready(Some(Ok(Frame::data(rest.split_to(n)))))
                    }
                }
            }
        }
    }

    fn size_hint(&self) -> SizeHint {
        match self {
            MockBody::Full(Some(b)) => SizeHint::with_exact(b.len() as u64),
            MockBody::Full(None) => SizeHint::with_exact(0),
            // Announce the whole length so the client waits for bytes that never come.
            MockBody::Cut { len, .. } => SizeHint::with_exact(*len),
            MockBody::Slow { rest, .. } => SizeHint::with_exact(rest.len() as u64),
        }
    }
}
