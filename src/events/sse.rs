//! `GET /events/stream`: the events as Server-Sent Events. The kept events
//! after `since` (or the `Last-Event-ID` a reconnecting browser sends) come
//! first, then each new one as it happens. A comment line every 15 s keeps
//! proxies from closing an idle stream and finds clients that went away.

use std::convert::Infallible;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use hyper::body::{Body, Frame};
use tokio::sync::{broadcast, mpsc};

use super::{Event, Filter, hub};

const HEARTBEAT: Duration = Duration::from_secs(15);

/// A stream's body: frames handed over by the task that follows the hub.
pub struct SseBody {
    rx: mpsc::Receiver<Bytes>,
}

impl Body for SseBody {
    type Data = Bytes;
    type Error = Infallible;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Infallible>>> {
        self.rx.poll_recv(cx).map(|b| b.map(|b| Ok(Frame::data(b))))
    }
}

/// A body of one chunk (an error answer on the stream's endpoint).
pub fn once(bytes: Bytes) -> SseBody {
    let (tx, rx) = mpsc::channel(1);
    // A fresh channel has room for one.
    let _ = tx.try_send(bytes);
    SseBody { rx }
}

/// One event in the SSE wire format.
pub fn frame(e: &Event) -> Bytes {
    Bytes::from(format!(
        "id: {}\nevent: {}\ndata: {}\n\n",
        e.seq,
        e.kind.as_str(),
        e.to_json()
    ))
}

/// Starts following the hub for one client.
pub fn stream(filter: Filter) -> SseBody {
    let (tx, rx) = mpsc::channel(64);
    // Subscribe before listing, so nothing falls between the two; an event
    // in both is sent once (the filter's `since` moves past it).
    let mut events = hub().subscribe();
    let (kept, _, _) = hub().list(&filter, super::RING);
    tokio::spawn(async move {
        let mut filter = filter;
        if tx
            .send(Bytes::from_static(b": levee events\n\n"))
            .await
            .is_err()
        {
            return;
        }
        for e in kept {
            filter.since = e.seq;
            if tx.send(frame(&e)).await.is_err() {
                return;
            }
        }
        loop {
            let next = tokio::time::timeout(HEARTBEAT, events.recv()).await;
            let bytes = match next {
                Err(_) => Bytes::from_static(b": keepalive\n\n"),
                Ok(Ok(e)) if filter.accepts(&e) => {
                    filter.since = e.seq;
                    frame(&e)
                }
                Ok(Ok(_)) => continue,
                Ok(Err(broadcast::error::RecvError::Lagged(n))) => Bytes::from(format!(
                    ": {n} events missed; GET /events?since= has them\n\n"
                )),
                Ok(Err(broadcast::error::RecvError::Closed)) => return,
            };
            if tx.send(bytes).await.is_err() {
                return;
            }
        }
    });
    SseBody { rx }
}
