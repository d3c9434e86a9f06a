//! The open-loop load `levee chaos run` can send itself: one request every
//! `1/rate`, each at its scheduled time whether or not the previous ones
//! answered, its latency measured from that scheduled time, so that a stall
//! is not hidden by requests that were never sent (no coordinated
//! omission).

use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use http::{Request, StatusCode};
use http_body_util::BodyExt;
use serde_json::json;

/// What the load saw.
#[derive(Default)]
pub struct LoadStats {
    sent: u64,
    by_status: std::collections::BTreeMap<String, u64>,
    latencies: Vec<Duration>,
}

/// The open-loop load: one request every `1/rate` until `stop`.
pub async fn generate(
    uri: http::Uri,
    rate: f64,
    stats: Arc<Mutex<LoadStats>>,
    stop: tokio::sync::watch::Receiver<bool>,
) {
    let every = Duration::from_secs_f64(1.0 / rate);
    let mut ticks = tokio::time::interval(every);
    // Burst: a late tick is still sent, at once; its latency counts from
    // when it should have gone.
    ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Burst);
    let in_flight = Arc::new(tokio::sync::Semaphore::new(2000));
    loop {
        let due = ticks.tick().await.into_std();
        if *stop.borrow() {
            return;
        }
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
        let uri = uri.clone();
        let stats = stats.clone();
        tokio::spawn(async move {
            let result = tokio::time::timeout(Duration::from_secs(30), get(&uri)).await;
            let label = match result {
                Ok(Ok(status)) => status.as_u16().to_string(),
                Ok(Err(e)) => format!("error: {e}"),
                Err(_) => "timeout (30s)".into(),
            };
            let mut s = stats.lock().unwrap_or_else(|p| p.into_inner());
            s.sent += 1;
            *s.by_status.entry(label).or_default() += 1;
            s.latencies.push(due.elapsed());
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
        })
    }
}
