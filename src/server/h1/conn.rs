//! The connection driver of Levee's own HTTP/1.1 server: moves bytes
//! between the client stream, the codec (`codec.rs`, `chunked.rs`) and the
//! pipeline (`proxy::handle`), one request at a time.
//!
//! Memory follows nginx's model: a connection waiting for its next request
//! holds no buffer (it waits for readability, `ReadReady`); a buffer is
//! taken when bytes arrive and given back once the response is written and
//! nothing more is buffered. Pipelined bytes stay buffered for the next
//! request.
//!
//! Timeouts: the idle timeout bounds the wait for a request's first byte;
//! the header timeout bounds the head from its first byte (or, for a head
//! pipelined behind the previous request, from when that request was
//! answered) and is answered 408.

use std::future::poll_fn;
use std::pin::{Pin, pin};
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Instant;

use bytes::{Buf, Bytes, BytesMut};
use http::{Method, Request, StatusCode};
use hyper::body::Body;
use tokio::io::{AsyncRead, AsyncWrite, AsyncWriteExt};
use tokio::sync::watch;
use tokio_util::io::poll_read_buf;

use super::body::{self, Demand, Feeder};
use super::codec::{self, Framing, HeadError, Persist, RequestHead, ResponseFraming};
use crate::http1::chunked::{Decoder, Step};
use crate::proxy::{self, ConnCtx};
use crate::server::client_body::ClientBody;
use crate::server::conn::{Settings, error_answer};
use crate::server::phase::Phase;
use crate::wire::linger_close;
use crate::wire::sniff::ReadReady;

/// First allocation for a request head; it grows up to the hard limit.
const HEAD_BUF: usize = 4 * 1024;
/// Room made for each read of a request body.
const BODY_READ: usize = 8 * 1024;
/// Data frames up to this size are copied next to the head (one write).
const COALESCE: usize = 16 * 1024;
/// How long a connection waits for its next request before its stream's
/// idle buffers go back (`ReadReady::release_idle`: a TLS stream's).
const RELEASE_AFTER: std::time::Duration = std::time::Duration::from_millis(50);

pub async fn serve<S>(
    mut io: S,
    cx: Arc<ConnCtx>,
    phase: Arc<Phase>,
    settings: Settings,
    shutdown: watch::Receiver<bool>,
) where
    S: AsyncRead + AsyncWrite + ReadReady + Unpin + Send,
{
    let hard_limit = (settings.max_header_bytes * 2).max(16 * 1024);
    let mut buf = BytesMut::new();
    let mut draining = *shutdown.borrow();
    // One idle timer and one shutdown wait for the connection, not one per
    // request: moving a registered timer to a later deadline only updates
    // it, where a new one takes the timer wheel's lock to register and
    // again to cancel (and a new wait registers with the channel).
    let idle = tokio::time::sleep(settings.idle_timeout);
    tokio::pin!(idle);
    let mut stop_rx = shutdown.clone();
    let stop = stop_rx.changed();
    tokio::pin!(stop);
    loop {
        if buf.is_empty() {
            // Idle: give the buffer back and wait for bytes without one.
            buf = BytesMut::new();
            if draining {
                return;
            }
            let now = tokio::time::Instant::now();
            let until = now + settings.idle_timeout;
            // A TLS stream's record buffer goes back too, once the wait
            // has lasted RELEASE_AFTER: at once, rustls would allocate and
            // zero 4 KiB again for nearly every request of a busy
            // connection (+4,800 instructions per HTTPS request,
            // `MODE=tls bench/callgrind.sh`).
            let mut keeps = io.keeps_buffers();
            idle.as_mut().reset(if keeps {
                until.min(now + RELEASE_AFTER)
            } else {
                until
            });
            // `stop` is polled here only, and ends the connection when ready.
            let ready = loop {
                tokio::select! {
                    biased;
                    r = poll_fn(|c| io.poll_read_ready(c)) => break r.is_ok(),
                    _ = &mut idle => {
                        if !keeps {
                            break false;
                        }
                        io.release_idle();
                        keeps = false;
                        idle.as_mut().reset(until);
                    }
                    _ = &mut stop => break false,
                }
            };
            if !ready {
                return;
            }
        }
        let deadline = Instant::now() + settings.header_timeout;
        let head = match read_head(&mut io, &mut buf, hard_limit, deadline, &phase).await {
            Ok(Some(head)) => head,
            Ok(None) => return,
            Err(fail) => {
                if let Some((status, code, message)) = fail.answer() {
                    cx.shared.metrics.error(code);
                    let answer = error_answer(status, code, message, &cx);
                    // Boxed, as the tunnel and the lingering close below:
                    // rare ends whose room every idle connection's task
                    // would otherwise carry.
                    Box::pin(linger_close(io, &answer)).await;
                }
                return;
            }
        };
        draining = draining || *shutdown.borrow();
        // Boxed: the pipeline's future is large, and an idle connection's
        // task should not carry its room between requests. Built in its
        // box, not moved there: the move copied all of it (~9 KiB) on
        // every request.
        let exchange = boxed_in_place(|| exchange(&mut io, &mut buf, head, &cx, &phase, draining));
        match exchange.await {
            Next::KeepAlive => {}
            Next::Tunnel(tunnel) => {
                let Tunnel { up, mut body } = *tunnel;
                // The head buffer goes back: what the client sent after
                // its head (if anything) is copied out for the tunnel.
                let early = Bytes::copy_from_slice(&buf);
                drop(buf);
                let mut shutdown = shutdown.clone();
                let ended = Box::pin(crate::tunnel::run(&mut io, &early, up, &mut shutdown)).await;
                body.tunnel_ended(&ended);
                return;
            }
            Next::Close { linger } => {
                if linger {
                    Box::pin(linger_close(io, b"")).await;
                } else {
                    let _ = io.shutdown().await;
                }
                return;
            }
        }
        draining = draining || *shutdown.borrow();
    }
}

/// `Box::pin(make())` with the value written straight into its box: the
/// allocation comes first, so the compiler can build the value there
/// instead of on the stack and then copying it over.
fn boxed_in_place<F: Future>(make: impl FnOnce() -> F) -> Pin<Box<F>> {
    Box::into_pin(Box::write(Box::new_uninit(), make()))
}

enum HeadFail {
    Timeout,
    Parse(HeadError),
    Io,
}

impl HeadFail {
    /// Levee's answer, if the client is still there to read one.
    fn answer(&self) -> Option<(StatusCode, &'static str, &'static str)> {
        match self {
            HeadFail::Timeout => Some((
                StatusCode::REQUEST_TIMEOUT,
                "header_timeout",
                "the request head did not arrive in time",
            )),
            HeadFail::Parse(HeadError::TooLarge) => Some((
                StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE,
                "headers_too_large",
                "request headers are larger than this listener accepts",
            )),
            HeadFail::Parse(HeadError::Malformed(why)) => {
                Some((StatusCode::BAD_REQUEST, "bad_request", why))
            }
            HeadFail::Io => None,
        }
    }
}

/// Reads until a complete head is buffered. `Ok(None)`: the client closed
/// (before a byte, or mid-head: nothing to answer).
async fn read_head<S: AsyncRead + Unpin>(
    io: &mut S,
    buf: &mut BytesMut,
    hard_limit: usize,
    deadline: Instant,
    phase: &Phase,
) -> Result<Option<RequestHead>, HeadFail> {
    loop {
        if !buf.is_empty() {
            match codec::take_request_head(buf, hard_limit) {
                Ok(Some(head)) => return Ok(Some(head)),
                Ok(None) => {}
                Err(e) => return Err(HeadFail::Parse(e)),
            }
        }
        if buf.capacity() - buf.len() < 512 {
            buf.reserve(HEAD_BUF.max(buf.len()));
        }
        let read = poll_fn(|c| poll_read_buf(Pin::new(&mut *io), c, buf));
        match tokio::time::timeout_at(deadline.into(), read).await {
            Err(_) => return Err(HeadFail::Timeout),
            Ok(Err(_)) => return Err(HeadFail::Io),
            Ok(Ok(0)) => return Ok(None),
            Ok(Ok(_)) => {
                phase.on_read();
            }
        }
    }
}

/// A WebSocket upgrade the endpoint accepted: its side of the tunnel, and
/// the response body that completes the request (access log, in-flight
/// count, bulkhead place) when the tunnel ends.
struct Tunnel {
    up: crate::tunnel::Upgraded,
    body: crate::proxy::body::ResponseBody,
}

enum Next {
    KeepAlive,
    /// The connection is now a WebSocket tunnel.
    Tunnel(Box<Tunnel>),
    /// `linger`: unread client bytes may be in flight; read them for a
    /// moment before closing so the close does not reset the answer away.
    Close {
        linger: bool,
    },
}

/// The request body being read off the connection into the pipeline.
struct Inbound {
    feeder: Feeder,
    kind: Kind,
    expect_continue: bool,
}

enum Kind {
    Length(u64),
    Chunked(Decoder),
}

enum Fed {
    /// Write `100 Continue`, then go on.
    Continue,
    /// The body was read to its end.
    Done,
    /// The pipeline dropped the body before its end.
    Gone,
    /// The client closed or sent a body that cannot be read.
    Failed,
}

impl Inbound {
    fn poll_feed<S: AsyncRead + Unpin>(
        &mut self,
        cx: &mut Context<'_>,
        io: &mut S,
        buf: &mut BytesMut,
    ) -> Poll<Fed> {
        loop {
            match self.feeder.poll_demand(cx) {
                Poll::Pending => return Poll::Pending,
                Poll::Ready(Demand::Gone) => return Poll::Ready(Fed::Gone),
                Poll::Ready(Demand::Wanted) => {}
            }
            if self.expect_continue {
                self.expect_continue = false;
                if buf.is_empty() {
                    return Poll::Ready(Fed::Continue);
                }
            }
            if !buf.is_empty() {
                match &mut self.kind {
                    Kind::Length(remaining) => {
                        let n = (*remaining).min(buf.len() as u64) as usize;
                        self.feeder.data(buf.split_to(n).freeze());
                        *remaining -= n as u64;
                        if *remaining == 0 {
                            self.feeder.end(true);
                            return Poll::Ready(Fed::Done);
                        }
                        continue;
                    }
                    Kind::Chunked(decoder) => match decode(decoder, buf, &self.feeder) {
                        Ok(Some(true)) => return Poll::Ready(Fed::Done),
                        Ok(Some(false)) => continue,
                        Ok(None) => {}
                        Err(()) => {
                            self.feeder.end(false);
                            return Poll::Ready(Fed::Failed);
                        }
                    },
                }
            }
            if buf.capacity() - buf.len() < 1024 {
                buf.reserve(BODY_READ);
            }
            match poll_read_buf(Pin::new(&mut *io), cx, buf) {
                Poll::Pending => return Poll::Pending,
                Poll::Ready(Ok(n)) if n > 0 => {}
                Poll::Ready(_) => {
                    self.feeder.end(false);
                    return Poll::Ready(Fed::Failed);
                }
            }
        }
    }
}

/// Decodes what `buf` holds: `Some(false)` a data frame was handed over,
/// `Some(true)` the body ended, `None` more bytes are needed.
fn decode(decoder: &mut Decoder, buf: &mut BytesMut, feeder: &Feeder) -> Result<Option<bool>, ()> {
    loop {
        match decoder.step(buf).map_err(|_| ())? {
            Step::Skip(n) => buf.advance(n),
            Step::Data(n) => {
                feeder.data(buf.split_to(n).freeze());
                return Ok(Some(false));
            }
            Step::NeedMore => return Ok(None),
            Step::Done(n) => {
                buf.advance(n);
                if let Some(trailers) = decoder.take_trailers().map_err(|_| ())? {
                    feeder.trailers(trailers);
                }
                feeder.end(true);
                return Ok(Some(true));
            }
        }
    }
}

enum Event<T> {
    Response(T),
    Fed(Fed),
}

/// One request and its response.
async fn exchange<S>(
    io: &mut S,
    buf: &mut BytesMut,
    head: RequestHead,
    cx: &Arc<ConnCtx>,
    phase: &Phase,
    draining: bool,
) -> Next
where
    S: AsyncRead + AsyncWrite + Unpin,
{
    let method = head.method.clone();
    let version = head.version;
    let (client_body, mut inbound) = match head.framing {
        Framing::Empty => (ClientBody::Empty, None),
        Framing::Ambiguous => {
            // The pipeline refuses it (400 bad_framing) and the connection
            // closes: its body is never read.
            phase.mark_ambiguous();
            (ClientBody::Empty, None)
        }
        Framing::Length(n) => {
            let (body, feeder) = body::channel(Some(n));
            let inbound = Inbound {
                feeder,
                kind: Kind::Length(n),
                expect_continue: head.expect_continue,
            };
            (ClientBody::Levee(body), Some(inbound))
        }
        Framing::Chunked => {
            let (body, feeder) = body::channel(None);
            let inbound = Inbound {
                feeder,
                kind: Kind::Chunked(Decoder::request()),
                expect_continue: head.expect_continue,
            };
            (ClientBody::Levee(body), Some(inbound))
        }
    };
    let mut body_state = if inbound.is_some() {
        BodyState::Reading
    } else {
        BodyState::Done
    };
    if head.framing == Framing::Ambiguous {
        body_state = BodyState::Unread;
    }
    // The framing of a body the pipeline stopped reading, for `discard_body`.
    let mut unread: Option<Kind> = None;
    let mut req = Request::new(client_body);
    *req.method_mut() = head.method;
    *req.uri_mut() = head.uri;
    *req.version_mut() = head.version;
    *req.headers_mut() = head.headers;
    // This server can turn the connection into a WebSocket tunnel: said
    // only to a request that may ask for one (the pipeline looks no further
    // without `Upgrade`), as an extension costs a map and two allocations.
    if head.upgrade {
        req.extensions_mut().insert(crate::tunnel::CanTunnel);
    }

    // Until the response head: run the pipeline and feed it the body.
    let mut handle = pin!(proxy::handle(cx.clone(), req));
    let response = loop {
        let event = poll_fn(|c| {
            if let Poll::Ready(r) = handle.as_mut().poll(c) {
                return Poll::Ready(Event::Response(r));
            }
            if let Some(inb) = inbound.as_mut()
                && let Poll::Ready(f) = inb.poll_feed(c, io, buf)
            {
                return Poll::Ready(Event::Fed(f));
            }
            Poll::Pending
        })
        .await;
        match event {
            Event::Response(r) => break r,
            Event::Fed(Fed::Continue) => {
                if io
                    .write_all(b"HTTP/1.1 100 Continue\r\n\r\n")
                    .await
                    .is_err()
                {
                    return Next::Close { linger: false };
                }
            }
            Event::Fed(f) => {
                body_state = body_state.after(f);
                unread = inbound.take().map(|i| i.kind);
            }
        }
    };

    // The response, while the rest of the body (if any) is still read.
    let (parts, mut body) = response.into_parts();
    // A route's reset fault (chaos): not a byte of the answer.
    if parts
        .extensions
        .get::<crate::chaos::inject::ResetConnection>()
        .is_some()
    {
        return Next::Close { linger: false };
    }
    if parts.status == StatusCode::SWITCHING_PROTOCOLS {
        // Only a WebSocket upgrade the pipeline asked for gets a 101 here.
        let Some(up) = body.upgraded() else {
            return Next::Close { linger: false };
        };
        let mut out = BytesMut::new();
        super::date::with_now(std::time::SystemTime::now(), |date| {
            codec::encode_upgrade_head(&mut out, &parts.headers, Some(date));
        });
        if io.write_all(&out).await.is_err() {
            return Next::Close { linger: false };
        }
        return Next::Tunnel(Box::new(Tunnel { up, body }));
    }
    let facts = codec::response_facts(&parts.headers);
    let exact = body.size_hint().exact();
    let framing = codec::response_framing(&method, version, parts.status, &facts, exact);
    let mut close = !head.keep_alive
        || facts.close
        || draining
        || method == Method::CONNECT
        || framing == ResponseFraming::UntilClose
        || matches!(body_state, BodyState::Failed | BodyState::Unread);
    let mut out = BytesMut::new();
    let persist = match (close, version) {
        (true, _) => Persist::Close,
        (false, http::Version::HTTP_10) => Persist::KeepAlive,
        (false, _) => Persist::Default,
    };
    if facts.date {
        codec::encode_response_head(
            &mut out,
            parts.status,
            &parts.headers,
            framing,
            persist,
            None,
        );
    } else {
        super::date::with_now(std::time::SystemTime::now(), |date| {
            codec::encode_response_head(
                &mut out,
                parts.status,
                &parts.headers,
                framing,
                persist,
                Some(date),
            );
        });
    }
    drop(parts);
    let mut trailers = None;
    loop {
        let event = poll_fn(|c| {
            if let Poll::Ready(f) = Pin::new(&mut body).poll_frame(c) {
                return Poll::Ready(Some(f));
            }
            if !out.is_empty() {
                return Poll::Ready(None);
            }
            if let Some(inb) = inbound.as_mut()
                && let Poll::Ready(f) = inb.poll_feed(c, io, buf)
            {
                body_state = body_state.after(f);
                return Poll::Ready(None);
            }
            Poll::Pending
        })
        .await;
        if matches!(
            body_state,
            BodyState::Done | BodyState::Failed | BodyState::Gone
        ) && let Some(i) = inbound.take()
        {
            unread = Some(i.kind);
        }
        match event {
            // Nothing ready to add: send what is buffered.
            None => {
                if !out.is_empty() && io.write_all(&out).await.is_err() {
                    return Next::Close { linger: false };
                }
                out.clear();
            }
            Some(Some(Ok(frame))) => match frame.into_data() {
                Ok(data) => {
                    if !write_data(io, &mut out, framing, data).await {
                        return Next::Close { linger: false };
                    }
                }
                Err(frame) => trailers = frame.into_trailers().ok(),
            },
            Some(Some(Err(_))) => {
                // The upstream body broke: the client must see a truncated
                // message, not a complete one.
                let _ = io.write_all(&out).await;
                return Next::Close { linger: false };
            }
            Some(None) => break,
        }
    }
    if framing == ResponseFraming::Chunked {
        codec::encode_chunked_end(&mut out, trailers.as_ref());
    }
    if !out.is_empty() && io.write_all(&out).await.is_err() {
        return Next::Close { linger: false };
    }
    drop(out);
    // Completes the request: metrics, access log, pooled upstream connection.
    drop(body);
    if let Some(i) = inbound.take() {
        body_state = BodyState::Gone;
        unread = Some(i.kind);
    }
    // A body the pipeline did not read (an error answered first): read
    // and drop a small one, so the connection can carry the next request.
    if !close
        && body_state == BodyState::Gone
        && let Some(kind) = unread
        && discard_body(io, buf, kind).await
    {
        body_state = BodyState::Done;
    }
    close = close || body_state != BodyState::Done;
    if close {
        Next::Close {
            linger: body_state != BodyState::Done || !buf.is_empty(),
        }
    } else {
        Next::KeepAlive
    }
}

/// Most bytes of an unread request body read and dropped to keep the
/// connection; a larger body closes it instead.
const DISCARD_MAX: u64 = 64 * 1024;

/// Reads the rest of a request body and drops it, within `DISCARD_MAX`
/// bytes and a second. Returns whether it ended cleanly.
async fn discard_body<S: AsyncRead + Unpin>(io: &mut S, buf: &mut BytesMut, kind: Kind) -> bool {
    let work = async {
        let mut kind = kind;
        let mut budget = DISCARD_MAX;
        loop {
            match &mut kind {
                Kind::Length(remaining) => {
                    if *remaining > budget {
                        return false;
                    }
                    let n = (*remaining).min(buf.len() as u64);
                    buf.advance(n as usize);
                    *remaining -= n;
                    budget -= n;
                    if *remaining == 0 {
                        return true;
                    }
                }
                Kind::Chunked(decoder) => loop {
                    let step = match decoder.step(buf) {
                        Ok(step) => step,
                        Err(_) => return false,
                    };
                    let n = match step {
                        Step::Skip(n) | Step::Data(n) => n,
                        Step::Done(n) => {
                            buf.advance(n);
                            return true;
                        }
                        Step::NeedMore => break,
                    };
                    if n as u64 > budget {
                        return false;
                    }
                    buf.advance(n);
                    budget -= n as u64;
                },
            }
            if buf.capacity() - buf.len() < 1024 {
                buf.reserve(BODY_READ);
            }
            match poll_fn(|c| poll_read_buf(Pin::new(&mut *io), c, buf)).await {
                Ok(n) if n > 0 => {}
                _ => return false,
            }
        }
    };
    tokio::time::timeout(std::time::Duration::from_secs(1), work)
        .await
        .unwrap_or(false)
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum BodyState {
    Reading,
    Done,
    /// Never read (ambiguous framing).
    Unread,
    /// The pipeline stopped reading it.
    Gone,
    Failed,
}

impl BodyState {
    fn after(self, fed: Fed) -> BodyState {
        match fed {
            Fed::Done => BodyState::Done,
            Fed::Gone => BodyState::Gone,
            Fed::Failed => BodyState::Failed,
            Fed::Continue => self,
        }
    }
}

/// Frames `data` for the wire into `out`, writing when it grows large.
/// Returns false if the client is gone.
async fn write_data<S: AsyncWrite + Unpin>(
    io: &mut S,
    out: &mut BytesMut,
    framing: ResponseFraming,
    data: Bytes,
) -> bool {
    if data.is_empty() || framing == ResponseFraming::None {
        return true;
    }
    let chunked = framing == ResponseFraming::Chunked;
    if chunked {
        codec::encode_chunk_size(out, data.len());
    }
    if data.len() <= COALESCE {
        out.extend_from_slice(&data);
    } else {
        if io.write_all(out).await.is_err() {
            return false;
        }
        out.clear();
        if io.write_all(&data).await.is_err() {
            return false;
        }
    }
    if chunked {
        out.extend_from_slice(b"\r\n");
    }
    if out.len() >= COALESCE {
        if io.write_all(out).await.is_err() {
            return false;
        }
        out.clear();
    }
    true
}
