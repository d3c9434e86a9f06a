//! The open-loop load `levee chaos run` can send itself: each request at
//! its scheduled time whether or not the previous ones answered, its
//! latency measured from that scheduled time, so that a stall is not hidden
//! by requests that were never sent (no coordinated omission).
//!
//! The rate may ramp up (from `start_rate` to `rate` over `ramp_up`, as a
//! rush of logins would), and a share of the requests may go to a second
//! URL (`fail_url`: e.g. a login with bad credentials), so that the steady
//! state is measured under a mix like production's. `Load::next_after` is
//! the schedule's synchronous core.
//!
//! Or the load is a population of virtual users (`users`, the login-rush
//! scenario): they start one after another over `ramp_up`, and each sends
//! one request at a time, its next one due `think_time` after the last was
//! due. A user waits for its answer, so a slow answer makes its next
//! request late, but that request's latency still counts from when it was
//! due: the stall shows in the latencies instead of thinning the schedule
//! (no coordinated omission here either). `Users::start_of` and
//! `Users::next_after` are that schedule's core.

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::Bytes;
use http::{Request, StatusCode};
use http_body_util::BodyExt;
use serde_json::json;

/// Virtual users, each pacing its requests by its think time.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Users {
    pub count: u32,
    /// A user's next request is due this long after its last one was.
    pub think_time: Duration,
    /// The users start evenly spread over this (all at once if zero).
    pub ramp_up: Duration,
}

impl Users {
    /// When user `i` (from 0) sends its first request, since the start.
    pub fn start_of(&self, i: u32) -> Duration {
        self.ramp_up
            .mul_f64(f64::from(i) / f64::from(self.count.max(1)))
    }

    /// When a user's request after the one due at `due` is due.
    pub fn next_after(&self, due: Duration) -> Duration {
        due + self.think_time
    }

    /// How many requests are due in the first `span` (all users, each
    /// answered in time).
    pub fn due_within(&self, span: Duration) -> u64 {
        (0..self.count)
            .map(|i| {
                let start = self.start_of(i);
                if start >= span {
                    0
                } else {
                    let left = (span - start).as_secs_f64();
                    (left / self.think_time.as_secs_f64()).ceil() as u64
                }
            })
            .sum()
    }
}

/// The load to send.
#[derive(Debug, Clone, PartialEq)]
pub struct Load {
    pub uri: http::Uri,
    /// Virtual users instead of an open-loop rate (`rate` is then unused).
    pub users: Option<Users>,
    /// Requests per second, once the ramp is over.
    pub rate: f64,
    /// The rate at the start, rising linearly to `rate` over `ramp_up`.
    pub start_rate: f64,
    pub ramp_up: Duration,
    /// This percentage of the requests go to `fail_url` instead.
    pub fail: Option<(http::Uri, f64)>,
}

impl Load {
    /// The rate `since` the load began.
    pub fn rate_at(&self, since: Duration) -> f64 {
        if since >= self.ramp_up || self.ramp_up.is_zero() {
            return self.rate;
        }
        let share = since.as_secs_f64() / self.ramp_up.as_secs_f64();
        self.start_rate + (self.rate - self.start_rate) * share
    }

    /// When the request after the one due `since` the start is due.
    pub fn next_after(&self, since: Duration) -> Duration {
        since + Duration::from_secs_f64(1.0 / self.rate_at(since).max(0.01))
    }

    /// Whether the `n`-th request goes to `fail_url`: spread evenly, so
    /// that the share holds over any stretch of the load.
    pub fn fails(&self, n: u64) -> Option<&http::Uri> {
        let (uri, percent) = self.fail.as_ref()?;
        let before = (n as f64 * percent / 100.0).floor();
        let after = ((n + 1) as f64 * percent / 100.0).floor();
        (after > before).then_some(uri)
    }
}

/// What the load saw.
#[derive(Default)]
pub struct LoadStats {
    sent: u64,
    by_status: std::collections::BTreeMap<String, u64>,
    latencies: Vec<Duration>,
    /// Requests scheduled in each second of the load (the ramp, seen).
    per_second: Vec<u64>,
}

/// The load until `stop`: open loop, or the virtual users.
pub async fn generate(
    load: Load,
    stats: Arc<Mutex<LoadStats>>,
    stop: tokio::sync::watch::Receiver<bool>,
) {
    match load.users {
        Some(users) => crowd(load, users, stats, stop).await,
        None => open_loop(load, stats, stop).await,
    }
}

/// Counts a request due in second `second` of the load.
fn scheduled(stats: &Mutex<LoadStats>, second: usize) {
    let mut s = stats.lock().unwrap_or_else(|p| p.into_inner());
    if s.per_second.len() <= second && second < 3600 {
        s.per_second.resize(second + 1, 0);
    }
    if let Some(c) = s.per_second.get_mut(second) {
        *c += 1;
    }
}

/// Counts an answer (or failure) and its latency from when it was due.
fn answered(stats: &Mutex<LoadStats>, label: String, latency: Duration) {
    let mut s = stats.lock().unwrap_or_else(|p| p.into_inner());
    s.sent += 1;
    *s.by_status.entry(label).or_default() += 1;
    s.latencies.push(latency);
}

/// One request, bounded in time, as the stats label it.
async fn send(uri: &http::Uri) -> String {
    match tokio::time::timeout(Duration::from_secs(30), get(uri)).await {
        Ok(Ok(status)) => status.as_u16().to_string(),
        Ok(Err(e)) => format!("error: {e}"),
        Err(_) => "timeout (30s)".into(),
    }
}

/// The virtual users until `stop`, each its own task.
async fn crowd(
    load: Load,
    users: Users,
    stats: Arc<Mutex<LoadStats>>,
    stop: tokio::sync::watch::Receiver<bool>,
) {
    let start = Instant::now();
    let load = Arc::new(load);
    // Which request of the whole crowd this is: the failing share is
    // spread over all of them.
    let counter = Arc::new(std::sync::atomic::AtomicU64::new(0));
    let mut tasks = tokio::task::JoinSet::new();
    for i in 0..users.count {
        let (load, stats, stop, counter) =
            (load.clone(), stats.clone(), stop.clone(), counter.clone());
        tasks.spawn(async move {
            let mut due = users.start_of(i);
            loop {
                tokio::time::sleep_until(tokio::time::Instant::from_std(start + due)).await;
                if *stop.borrow() {
                    return;
                }
                let n = counter.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                let uri = load.fails(n).unwrap_or(&load.uri);
                scheduled(&stats, due.as_secs() as usize);
                let label = send(uri).await;
                // From when it was due, not when it went: a late send is
                // the system's delay too.
                answered(&stats, label, (start + due).elapsed());
                due = users.next_after(due);
            }
        });
    }
    while tasks.join_next().await.is_some() {}
}

/// The open-loop load until `stop`.
async fn open_loop(
    load: Load,
    stats: Arc<Mutex<LoadStats>>,
    stop: tokio::sync::watch::Receiver<bool>,
) {
    let start = Instant::now();
    let mut due = Duration::ZERO;
    let mut n = 0u64;
    let in_flight = Arc::new(tokio::sync::Semaphore::new(2000));
    loop {
        // A late request is still sent, at once; its latency counts from
        // when it should have gone.
        tokio::time::sleep_until(tokio::time::Instant::from_std(start + due)).await;
        if *stop.borrow() {
            return;
        }
        let when = start + due;
        let uri = load.fails(n).unwrap_or(&load.uri).clone();
        n += 1;
        scheduled(&stats, due.as_secs() as usize);
        due = load.next_after(due);
        // A bound on open requests: beyond it, the request counts as failed
        // rather than piling up without end.
        let Ok(permit) = in_flight.clone().try_acquire_owned() else {
            let mut s = stats.lock().unwrap_or_else(|p| p.into_inner());
            s.sent += 1;
            *s.by_status
                .entry("not sent (2000 open)".into())
                .or_default() += 1;
            continue;
        };
        let stats = stats.clone();
        tokio::spawn(async move {
            let label = send(&uri).await;
            answered(&stats, label, when.elapsed());
            drop(permit);
        });
    }
}

async fn get(uri: &http::Uri) -> Result<StatusCode, String> {
    let authority = uri.authority().map(|a| a.as_str()).unwrap_or_default();
    let stream = tokio::net::TcpStream::connect(authority)
        .await
        .map_err(|e| e.to_string())?;
    let (mut send, conn) =
        hyper::client::conn::http1::handshake(hyper_util::rt::TokioIo::new(stream))
            .await
            .map_err(|e| e.to_string())?;
    tokio::spawn(conn);
    let req = Request::builder()
        .uri(uri.path_and_query().map_or("/", |p| p.as_str()))
        .header(http::header::HOST, authority)
        .body(http_body_util::Empty::<Bytes>::new())
        .map_err(|e| e.to_string())?;
    let resp = send.send_request(req).await.map_err(|e| e.to_string())?;
    let status = resp.status();
    resp.into_body()
        .collect()
        .await
        .map_err(|e| e.to_string())?;
    Ok(status)
}

impl LoadStats {
    /// Sent, by status, p50/p99/max latency in milliseconds.
    pub fn summary(&mut self) -> serde_json::Value {
        self.latencies.sort();
        let n = self.latencies.len();
        let q = |p: f64| {
            (n > 0).then(|| self.latencies[((n as f64 * p).ceil() as usize).clamp(1, n) - 1])
        };
        let ms = |d: Option<Duration>| d.map(|d| d.as_secs_f64() * 1000.0);
        json!({
            "sent": self.sent,
            "by_status": self.by_status,
            "p50_ms": ms(q(0.5)),
            "p99_ms": ms(q(0.99)),
            "max_ms": ms(self.latencies.last().copied()),
            "sent_per_second": self.per_second,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn load(start_rate: f64, ramp_up: Duration, fail: Option<f64>) -> Load {
        Load {
            uri: "http://127.0.0.1:1/".parse().unwrap(),
            users: None,
            rate: 100.0,
            start_rate,
            ramp_up,
            fail: fail.map(|p| ("http://127.0.0.1:1/bad".parse().unwrap(), p)),
        }
    }

    /// How many requests are due in each second of the first `secs`.
    fn per_second(l: &Load, secs: u64) -> Vec<u64> {
        let mut counts = vec![0; secs as usize];
        let mut due = Duration::ZERO;
        while due.as_secs() < secs {
            counts[due.as_secs() as usize] += 1;
            due = l.next_after(due);
        }
        counts
    }

    #[test]
    fn a_ramp_rises_linearly_then_holds() {
        let fixed = load(100.0, Duration::ZERO, None);
        assert_eq!(per_second(&fixed, 3), [100, 100, 100]);
        // 10 → 100 over 4 s: about 21, 44, 66, 89 in the ramp's seconds.
        let ramp = load(10.0, Duration::from_secs(4), None);
        let counts = per_second(&ramp, 6);
        assert!((18..=24).contains(&counts[0]), "{counts:?}");
        assert!((85..=92).contains(&counts[3]), "{counts:?}");
        assert!(counts.windows(2).take(4).all(|w| w[1] > w[0]), "{counts:?}");
        assert_eq!(&counts[4..], [100, 100]);
    }

    #[test]
    fn a_share_goes_to_the_failing_url_evenly() {
        let l = load(100.0, Duration::ZERO, Some(10.0));
        let failing: Vec<u64> = (0..100).filter(|n| l.fails(*n).is_some()).collect();
        assert_eq!(failing.len(), 10);
        assert!(failing.windows(2).all(|w| w[1] - w[0] == 10), "{failing:?}");
        assert!(load(100.0, Duration::ZERO, None).fails(3).is_none());
    }

    #[test]
    fn users_start_over_the_ramp_and_pace_by_their_think_time() {
        let u = Users {
            count: 10,
            think_time: Duration::from_millis(500),
            ramp_up: Duration::from_secs(2),
        };
        assert_eq!(u.start_of(0), Duration::ZERO);
        assert_eq!(u.start_of(5), Duration::from_secs(1));
        assert_eq!(u.start_of(9), Duration::from_millis(1800));
        assert_eq!(
            u.next_after(Duration::from_secs(3)),
            Duration::from_millis(3500)
        );
        // Once all are in, 10 users every 500 ms: 20 requests a second.
        let per_second = |s: u64| u.due_within(Duration::from_secs(s));
        assert_eq!(per_second(10) - per_second(9), 20);
        // During the ramp, fewer: user i has sent ceil((1 s - start) / 0.5 s).
        assert_eq!(per_second(1), 2 + 2 + 2 + 1 + 1);
        let at_once = Users {
            ramp_up: Duration::ZERO,
            ..u
        };
        assert_eq!(at_once.due_within(Duration::from_secs(3)), 60);
        assert_eq!(at_once.due_within(Duration::ZERO), 0);
    }
}
