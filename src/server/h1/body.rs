//! The request body as the pipeline sees it, fed by the connection driver.
//!
//! One frame fits between the driver and the pipeline: the driver reads
//! from the socket only when the pipeline has asked for a frame and taken
//! the last one, so a slow backend slows the client down (back-pressure)
//! and memory stays one frame per request. That the pipeline asked is also
//! what tells the driver to answer `100 Continue` before reading a body the
//! client holds back.

use std::sync::{Arc, Mutex, MutexGuard};
use std::task::{Context, Poll, Waker};

use bytes::Bytes;
use http::HeaderMap;
use hyper::body::{Frame, SizeHint};

/// The client stopped sending its body, or sent one that cannot be read.
#[derive(Debug, Clone, Copy, thiserror::Error)]
#[error("the request body could not be read from the client")]
pub struct BodyError;

#[derive(Default)]
struct Slot {
    frame: Option<Frame<Bytes>>,
    /// `Some(true)`: the body ended; `Some(false)`: it failed.
    end: Option<bool>,
    wanted: bool,
    dropped: bool,
    reader: Option<Waker>,
    feeder: Option<Waker>,
}

fn lock(slot: &Mutex<Slot>) -> MutexGuard<'_, Slot> {
    // A panic while holding this lock leaves a consistent slot (every
    // update is one assignment), so a poisoned lock is still usable.
    slot.lock().unwrap_or_else(|e| e.into_inner())
}

pub struct RequestBody {
    slot: Arc<Mutex<Slot>>,
    /// Bytes still to come when the length is known.
    remaining: Option<u64>,
}

/// The driver's end.
pub struct Feeder {
    slot: Arc<Mutex<Slot>>,
}

/// A body and its feeder; `length` when known up front.
pub fn channel(length: Option<u64>) -> (RequestBody, Feeder) {
    let slot = Arc::new(Mutex::new(Slot::default()));
    (
        RequestBody {
            slot: slot.clone(),
            remaining: length,
        },
        Feeder { slot },
    )
}

impl hyper::body::Body for RequestBody {
    type Data = Bytes;
    type Error = BodyError;

    fn poll_frame(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BodyError>>> {
        let mut s = lock(&self.slot);
        s.wanted = true;
        if let Some(frame) = s.frame.take() {
            if let Some(w) = s.feeder.take() {
                w.wake();
            }
            drop(s);
            if let (Some(r), Some(d)) = (self.remaining.as_mut(), frame.data_ref()) {
                *r = r.saturating_sub(d.len() as u64);
            }
            return Poll::Ready(Some(Ok(frame)));
        }
        match s.end {
            Some(true) => Poll::Ready(None),
            Some(false) => Poll::Ready(Some(Err(BodyError))),
            None => {
                s.reader = Some(cx.waker().clone());
                if let Some(w) = s.feeder.take() {
                    w.wake();
                }
                Poll::Pending
            }
        }
    }

    fn is_end_stream(&self) -> bool {
        let s = lock(&self.slot);
        s.frame.is_none() && s.end == Some(true)
    }

    fn size_hint(&self) -> SizeHint {
        match self.remaining {
            Some(n) => SizeHint::with_exact(n),
            None => SizeHint::default(),
        }
    }
}

impl Drop for RequestBody {
    fn drop(&mut self) {
        let mut s = lock(&self.slot);
        s.dropped = true;
        if let Some(w) = s.feeder.take() {
            w.wake();
        }
    }
}

/// What the pipeline's end is doing, for the driver.
#[derive(Debug, PartialEq, Eq)]
pub enum Demand {
    /// It wants a frame and the slot is free.
    Wanted,
    /// It dropped the body: nothing more will be read for it.
    Gone,
}

impl Feeder {
    /// Ready when the pipeline wants the next frame (or is gone).
    pub fn poll_demand(&self, cx: &mut Context<'_>) -> Poll<Demand> {
        let mut s = lock(&self.slot);
        if s.dropped {
            return Poll::Ready(Demand::Gone);
        }
        if s.wanted && s.frame.is_none() {
            return Poll::Ready(Demand::Wanted);
        }
        s.feeder = Some(cx.waker().clone());
        Poll::Pending
    }

    /// Whether the pipeline has asked for the body at all (for `100 Continue`).
    pub fn asked(&self) -> bool {
        lock(&self.slot).wanted
    }

    pub fn data(&self, bytes: Bytes) {
        self.put(Frame::data(bytes));
    }

    pub fn trailers(&self, map: HeaderMap) {
        self.put(Frame::trailers(map));
    }

    fn put(&self, frame: Frame<Bytes>) {
        let mut s = lock(&self.slot);
        s.frame = Some(frame);
        s.wanted = false;
        if let Some(w) = s.reader.take() {
            w.wake();
        }
    }

    /// The body ended (`ok`) or failed.
    pub fn end(&self, ok: bool) {
        let mut s = lock(&self.slot);
        s.end = Some(ok);
        if let Some(w) = s.reader.take() {
            w.wake();
        }
    }
}

impl Drop for Feeder {
    fn drop(&mut self) {
        let mut s = lock(&self.slot);
        if s.end.is_none() {
            s.end = Some(false);
            if let Some(w) = s.reader.take() {
                w.wake();
            }
        }
    }
}
