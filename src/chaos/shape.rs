//! Response shaping faults: a body truncated after so many bytes (the
//! client sees a cut response: the connection closes before the length
//! its head announced, or without the last chunk), and a bandwidth limit
//! (the body dribbles out at so many bytes a second).
//!
//! `Shape::take` is the synchronous core: given the bytes already sent and
//! the next ones, what goes now, what waits and until when, or where the
//! body is cut. `Shaper` is the thin shell the response body polls through,
//! with a timer for the waits.

use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll, ready};
use std::time::{Duration, Instant};

use bytes::Bytes;
use hyper::body::Frame;

use crate::upstream::body::BodyError;

/// A bandwidth-limited body goes in slices of about this share of a
/// second, so the rate is smooth rather than one burst a second.
const SLICES_PER_SECOND: u64 = 20;

/// How one response is shaped, and by which fault.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Shape {
    pub fault: String,
    /// The body stops after this many bytes.
    pub truncate_after: Option<u64>,
    /// Body bytes per second (above 0).
    pub bandwidth: Option<u64>,
}

/// What to do with the next body bytes.
#[derive(Debug, PartialEq, Eq)]
pub enum Take {
    /// Send `now`; `rest` (if any) waits for the next turn.
    Send { now: Bytes, rest: Option<Bytes> },
    /// Nothing may go before `until`; all of it waits.
    Wait { until: Instant, held: Bytes },
    /// The body is cut here.
    Cut,
}

impl Shape {
    /// The next `data` of the body, `sent` bytes having gone since
    /// `started`, at `now`.
    pub fn take(&self, sent: u64, started: Instant, mut data: Bytes, now: Instant) -> Take {
        let mut rest = None;
        if let Some(limit) = self.truncate_after {
            let room = limit.saturating_sub(sent);
            if room == 0 {
                return Take::Cut;
            }
            if data.len() as u64 > room {
                // The bytes beyond the limit come back as `rest`, and are
                // cut at the next turn.
                rest = Some(data.split_off(room as usize));
            }
        }
        if let Some(rate) = self.bandwidth.filter(|r| *r > 0) {
            let slice = (rate / SLICES_PER_SECOND).max(1) as usize;
            if data.len() > slice {
                let tail = data.split_off(slice);
                rest = Some(match rest {
                    Some(r) => [tail, r].concat().into(),
                    None => tail,
                });
            }
            // The bytes up to the end of this slice may have gone once
            // `(sent + slice) / rate` seconds have passed.
            let due =
                started + Duration::from_secs_f64((sent + data.len() as u64) as f64 / rate as f64);
            if due > now {
                let held = match rest {
                    Some(r) => [data, r].concat().into(),
                    None => data,
                };
                return Take::Wait { until: due, held };
            }
        }
        Take::Send { now: data, rest }
    }

    fn cut_error(&self, sent: u64) -> BodyError {
        BodyError::Io(std::io::Error::new(
            std::io::ErrorKind::ConnectionAborted,
            format!(
                "response truncated after {sent} bytes by fault {}",
                self.fault
            ),
        ))
    }
}

/// A response body's shaping as it is sent.
pub struct Shaper {
    shape: Shape,
    /// When the first body bytes were ready (the bandwidth counts from it).
    started: Option<Instant>,
    sent: u64,
    held: Option<Bytes>,
    timer: Option<Pin<Box<tokio::time::Sleep>>>,
    cut: bool,
}

impl Shaper {
    pub fn new(shape: Shape) -> Shaper {
        Shaper {
            shape,
            started: None,
            sent: 0,
            held: None,
            timer: None,
            cut: false,
        }
    }

    /// Whether bytes wait to be sent (the inner body may be over already).
    pub fn holds(&self) -> bool {
        self.held.is_some()
    }

    /// The next frame of the shaped body; `inner` polls the body shaped.
    pub fn poll_frame(
        &mut self,
        cx: &mut Context<'_>,
        mut inner: impl FnMut(&mut Context<'_>) -> Poll<Option<Result<Frame<Bytes>, BodyError>>>,
    ) -> Poll<Option<Result<Frame<Bytes>, BodyError>>> {
        loop {
            if self.cut {
                return Poll::Ready(None);
            }
            if let Some(timer) = self.timer.as_mut() {
                ready!(timer.as_mut().poll(cx));
                self.timer = None;
            }
            let data = match self.held.take() {
                Some(d) => d,
                None => match ready!(inner(cx)) {
                    Some(Ok(frame)) => match frame.into_data() {
                        Ok(d) => d,
                        // Trailers pass as they are.
                        Err(frame) => return Poll::Ready(Some(Ok(frame))),
                    },
                    other => return Poll::Ready(other),
                },
            };
            let now = Instant::now();
            let started = *self.started.get_or_insert(now);
            match self.shape.take(self.sent, started, data, now) {
                Take::Send { now, rest } => {
                    self.held = rest;
                    self.sent += now.len() as u64;
                    if now.is_empty() {
                        continue;
                    }
                    return Poll::Ready(Some(Ok(Frame::data(now))));
                }
                Take::Wait { until, held } => {
                    self.held = Some(held);
                    self.timer = Some(Box::pin(tokio::time::sleep_until(
                        tokio::time::Instant::from_std(until),
                    )));
                }
                Take::Cut => {
                    self.cut = true;
                    return Poll::Ready(Some(Err(self.shape.cut_error(self.sent))));
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn shape(truncate_after: Option<u64>, bandwidth: Option<u64>) -> Shape {
        Shape {
            fault: "f".into(),
            truncate_after,
            bandwidth,
        }
    }

    fn bytes(n: usize) -> Bytes {
        Bytes::from(vec![b'x'; n])
    }

    #[test]
    fn truncation_sends_up_to_the_limit_then_cuts() {
        let t0 = Instant::now();
        let s = shape(Some(100), None);
        assert_eq!(
            s.take(0, t0, bytes(60), t0),
            Take::Send {
                now: bytes(60),
                rest: None
            }
        );
        // 60 sent: 40 more go, the other 20 come back and are cut.
        assert_eq!(
            s.take(60, t0, bytes(60), t0),
            Take::Send {
                now: bytes(40),
                rest: Some(bytes(20))
            }
        );
        assert_eq!(s.take(100, t0, bytes(20), t0), Take::Cut);
        // A limit of 0: not a byte of the body.
        assert_eq!(shape(Some(0), None).take(0, t0, bytes(5), t0), Take::Cut);
    }

    #[test]
    fn bandwidth_paces_slices() {
        let t0 = Instant::now();
        // 1000 B/s: slices of 50 bytes, the first due at 50 ms.
        let s = shape(None, Some(1000));
        assert_eq!(
            s.take(0, t0, bytes(120), t0),
            Take::Wait {
                until: t0 + Duration::from_millis(50),
                held: bytes(120)
            }
        );
        let at = t0 + Duration::from_millis(50);
        assert_eq!(
            s.take(0, t0, bytes(120), at),
            Take::Send {
                now: bytes(50),
                rest: Some(bytes(70))
            }
        );
        // Behind schedule (the client was slow to read): at once.
        let late = t0 + Duration::from_secs(5);
        assert!(matches!(
            s.take(500, t0, bytes(10), late),
            Take::Send { rest: None, .. }
        ));
        // Both: the limit first, then the pace.
        let both = shape(Some(60), Some(1000));
        assert_eq!(
            both.take(0, t0, bytes(200), at),
            Take::Send {
                now: bytes(50),
                rest: Some(bytes(150))
            }
        );
        assert_eq!(both.take(60, t0, bytes(10), late), Take::Cut);
    }

    #[tokio::test]
    async fn a_shaped_body_is_cut_and_paced() {
        use std::collections::VecDeque;
        let mut frames: VecDeque<Bytes> = [bytes(300), bytes(300)].into();
        let mut shaper = Shaper::new(shape(Some(400), Some(4000)));
        let t = Instant::now();
        let mut got = 0;
        let error = loop {
            let next = std::future::poll_fn(|cx| {
                shaper.poll_frame(cx, |_| {
                    Poll::Ready(frames.pop_front().map(|b| Ok(Frame::data(b))))
                })
            })
            .await;
            match next {
                Some(Ok(f)) => got += f.into_data().map_or(0, |d| d.len()),
                Some(Err(e)) => break e.to_string(),
                None => panic!("not cut"),
            }
        };
        assert_eq!(got, 400);
        assert!(
            error.contains("truncated after 400 bytes by fault f"),
            "{error}"
        );
        // 400 bytes at 4000 B/s: 100 ms at least.
        assert!(
            t.elapsed() >= Duration::from_millis(95),
            "{:?}",
            t.elapsed()
        );
    }
}
