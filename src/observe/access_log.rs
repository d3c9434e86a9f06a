//! One JSON line per request, written by a dedicated thread so that a slow
//! disk or a blocked stdout never stalls an event loop. If the writer falls
//! far behind, lines are dropped and counted rather than queued without bound.

use std::fmt::Write as _;
use std::io::Write;
use std::net::IpAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::mpsc::{self, SyncSender, TrySendError};
use std::time::SystemTime;

/// Everything the access log says about one request.
pub struct LogRecord {
    pub time: SystemTime,
    pub client: IpAddr,
    pub method: http::Method,
    pub path: String,
    pub status: u16,
    pub route: Option<std::sync::Arc<str>>,
    pub cluster: Option<std::sync::Arc<str>>,
    pub endpoint: Option<std::net::SocketAddr>,
    /// Arrival → the first try's start (gates, bulkhead queue, body kept
    /// for retries); `None` without a try.
    pub wait_ms: Option<f64>,
    /// The last try: opening its connection (`None`: a pooled one), its
    /// start → the response head, and its start → the end of the exchange.
    pub connect_ms: Option<f64>,
    pub head_ms: Option<f64>,
    pub upstream_ms: Option<f64>,
    /// Arrival → the end of the response.
    pub total_ms: f64,
    pub bytes_in: u64,
    pub bytes_out: u64,
    pub request_id: String,
    pub error: Option<&'static str>,
    /// Why the last try failed, with its io cause ("connect failed:
    /// Connection refused (os error 111)").
    pub upstream_error: Option<String>,
    /// Tries made upstream (0: none, e.g. refused before forwarding).
    pub attempts: u32,
    /// A gRPC call's `grpc-status` (the endpoint's, or Levee's own answer's).
    pub grpc_status: Option<u8>,
    /// A WebSocket tunnel's line: how it ended (`bytes_in`/`bytes_out`
    /// then include what passed through it, `total_ms` its life).
    pub tunnel: Option<&'static str>,
    /// The W3C trace id (32 hex digits) the request carried or was given.
    pub trace_id: String,
    /// The connection's TLS facts; `None` on a plain listener (the fields
    /// are left out of the line).
    pub tls: Option<TlsLog>,
}

/// `tls_version`, `sni` and `client_subject` of an access log line.
#[derive(Debug, Clone, Default)]
pub struct TlsLog {
    pub version: &'static str,
    pub sni: Option<String>,
    pub client_subject: Option<String>,
}

impl LogRecord {
    /// Whether the request went wrong: an error status or a failure.
    pub fn is_error(&self) -> bool {
        self.status >= 400 || self.error.is_some() || self.upstream_error.is_some()
    }

    /// Common log format (`client - - [time] "METHOD path HTTP/1.1" status
    /// bytes`) followed by Levee's fields as `key=value`, values with spaces
    /// or quotes in double quotes.
    pub fn to_text(&self) -> String {
        let mut s = String::with_capacity(256);
        let _ = write!(
            s,
            "{} - - [{}] \"{} {} HTTP/1.1\" {} {}",
            self.client,
            clf_time(self.time),
            self.method,
            self.path.replace('"', "%22"),
            self.status,
            self.bytes_out
        );
        let mut field = |k: &str, v: &str| {
            if v.is_empty() || v.contains([' ', '"', '=']) {
                let _ = write!(s, " {k}={}", json_str(v));
            } else {
                let _ = write!(s, " {k}={v}");
            }
        };
        field("rt", &format!("{:.3}", self.total_ms / 1000.0));
        field("route", self.route.as_deref().unwrap_or("-"));
        field("cluster", self.cluster.as_deref().unwrap_or("-"));
        field(
            "endpoint",
            &self
                .endpoint
                .map_or_else(|| "-".to_owned(), |e| e.to_string()),
        );
        field("attempts", &self.attempts.to_string());
        if let Some(code) = self.grpc_status {
            field("grpc_status", &code.to_string());
        }
        field("request_id", &self.request_id);
        if !self.trace_id.is_empty() {
            field("trace_id", &self.trace_id);
        }
        if let Some(e) = self.error {
            field("error", e);
        }
        if let Some(e) = &self.upstream_error {
            field("upstream_error", e);
        }
        if let Some(t) = self.tunnel {
            field("tunnel", t);
        }
        s
    }

    pub fn to_json(&self) -> String {
        let mut s = String::with_capacity(320);
        let _ = write!(s, "{{\"time\":\"{}\"", rfc3339_millis(self.time));
        let _ = write!(s, ",\"client\":\"{}\"", self.client);
        let _ = write!(s, ",\"method\":{}", json_str(self.method.as_str()));
        let _ = write!(s, ",\"path\":{}", json_str(&self.path));
        let _ = write!(s, ",\"status\":{}", self.status);
        let _ = write!(s, ",\"route\":{}", opt_str(self.route.as_deref()));
        let _ = write!(s, ",\"cluster\":{}", opt_str(self.cluster.as_deref()));
        match self.endpoint {
            Some(e) => {
                let _ = write!(s, ",\"endpoint\":\"{e}\"");
            }
            None => s.push_str(",\"endpoint\":null"),
        }
        for (name, value) in [
            ("wait_ms", self.wait_ms),
            ("connect_ms", self.connect_ms),
            ("head_ms", self.head_ms),
            ("upstream_ms", self.upstream_ms),
        ] {
            match value {
                Some(ms) => {
                    let _ = write!(s, ",\"{name}\":{ms:.3}");
                }
                None => {
                    let _ = write!(s, ",\"{name}\":null");
                }
            }
        }
        let _ = write!(s, ",\"total_ms\":{:.3}", self.total_ms);
        let _ = write!(
            s,
            ",\"bytes_in\":{},\"bytes_out\":{}",
            self.bytes_in, self.bytes_out
        );
        let _ = write!(s, ",\"request_id\":{}", json_str(&self.request_id));
        let _ = write!(s, ",\"attempts\":{}", self.attempts);
        if let Some(code) = self.grpc_status {
            let _ = write!(s, ",\"grpc_status\":{code}");
        }
        if !self.trace_id.is_empty() {
            let _ = write!(s, ",\"trace_id\":{}", json_str(&self.trace_id));
        }
        if let Some(e) = self.error {
            let _ = write!(s, ",\"error\":\"{e}\"");
        }
        if let Some(e) = &self.upstream_error {
            let _ = write!(s, ",\"upstream_error\":{}", json_str(e));
        }
        if let Some(t) = self.tunnel {
            let _ = write!(s, ",\"tunnel\":\"{t}\"");
        }
        if let Some(t) = &self.tls {
            let _ = write!(s, ",\"tls_version\":\"{}\"", t.version);
            let _ = write!(s, ",\"sni\":{}", opt_str(t.sni.as_deref()));
            if let Some(subject) = &t.client_subject {
                let _ = write!(s, ",\"client_subject\":{}", json_str(subject));
            }
        }
        s.push('}');
        s
    }
}

fn json_str(v: &str) -> String {
    serde_json::Value::String(v.to_owned()).to_string()
}

fn opt_str(v: Option<&str>) -> String {
    v.map_or_else(|| "null".to_owned(), json_str)
}

/// UTC time as `2026-11-22T05:26:11.123Z`.
pub fn rfc3339_millis(t: SystemTime) -> String {
    let d = t.duration_since(SystemTime::UNIX_EPOCH).unwrap_or_default();
    let secs = d.as_secs();
    let (days, rem) = (secs / 86_400, secs % 86_400);
    // Howard Hinnant's civil_from_days.
    let z = days as i64 + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    format!(
        "{year:04}-{month:02}-{day:02}T{:02}:{:02}:{:02}.{:03}Z",
        rem / 3600,
        rem % 3600 / 60,
        rem % 60,
        d.subsec_millis()
    )
}

/// `03/Dec/2026:05:20:37 +0000`, the common log format's time.
fn clf_time(t: SystemTime) -> String {
    const MONTHS: [&str; 12] = [
        "Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec",
    ];
    // 2026-12-03T05:20:37.123Z
    let r = rfc3339_millis(t);
    let month = r[5..7].parse::<usize>().unwrap_or(1).clamp(1, 12);
    format!(
        "{}/{}/{}:{} +0000",
        &r[8..10],
        MONTHS[month - 1],
        &r[0..4],
        &r[11..19]
    )
}

/// Keeps `share` of the calls, evenly: the n-th call is kept when
/// `n × share` crosses an integer (exactly 1 in 10 for 0.1, no randomness
/// needed).
pub struct Sampler {
    seen: AtomicU64,
}

impl Sampler {
    pub const fn new() -> Sampler {
        Sampler {
            seen: AtomicU64::new(0),
        }
    }

    pub fn keep(&self, share: f64) -> bool {
        if share >= 1.0 {
            return true;
        }
        if share <= 0.0 {
            return false;
        }
        let n = self.seen.fetch_add(1, Ordering::Relaxed) as f64;
        ((n + 1.0) * share).floor() > (n * share).floor()
    }
}

impl Default for Sampler {
    fn default() -> Self {
        Sampler::new()
    }
}

enum Msg {
    Line(String),
    Flush(mpsc::Sender<()>),
    /// Open the file again (after logrotate moved it away: SIGUSR1), at a
    /// new path when one is given; the answer says whether it worked.
    Reopen(Option<String>, mpsc::Sender<std::io::Result<()>>),
}

/// `-` is standard output; anything else a file opened for appending.
fn open(path: &str) -> std::io::Result<Box<dyn Write + Send>> {
    Ok(if path == "-" {
        Box::new(std::io::stdout())
    } else {
        Box::new(
            std::fs::OpenOptions::new()
                .create(true)
                .append(true)
                .open(path)?,
        )
    })
}

/// Handle to the access log writer thread.
pub struct AccessLog {
    tx: SyncSender<Msg>,
    dropped: AtomicU64,
}

impl AccessLog {
    /// Starts the writer: `-` writes to standard output, anything else is a
    /// file opened for appending.
    pub fn start(path: &str) -> std::io::Result<AccessLog> {
        let mut out = open(path)?;
        let mut path = path.to_owned();
        let (tx, rx) = mpsc::sync_channel::<Msg>(65_536);
        std::thread::Builder::new()
            .name("levee-access-log".into())
            .spawn(move || {
                let mut buf = Vec::with_capacity(64 * 1024);
                let mut acks = Vec::new();
                let mut reopens = Vec::new();
                while let Ok(first) = rx.recv() {
                    let mut next = Some(first);
                    // Batch whatever else is already queued into one write.
                    while let Some(msg) = next.take() {
                        match msg {
                            Msg::Line(line) => {
                                buf.extend_from_slice(line.as_bytes());
                                buf.push(b'\n');
                            }
                            Msg::Flush(ack) => acks.push(ack),
                            Msg::Reopen(to, ack) => {
                                reopens.push((to, ack));
                                // Lines before the reopen go to the old file.
                                break;
                            }
                        }
                        if buf.len() < 60 * 1024 {
                            next = rx.try_recv().ok();
                        }
                    }
                    // A failed write has nowhere to be reported; keep
                    // draining so that senders never block.
                    let _ = out.write_all(&buf).and_then(|()| out.flush());
                    buf.clear();
                    for ack in acks.drain(..) {
                        let _ = ack.send(());
                    }
                    for (to, ack) in reopens.drain(..) {
                        let wanted = to.unwrap_or_else(|| path.clone());
                        // On failure the old file stays in use: a line in
                        // a moved file beats a lost one.
                        let result = open(&wanted).map(|file| {
                            out = file;
                            path = wanted;
                        });
                        let _ = ack.send(result);
                    }
                }
            })?;
        Ok(AccessLog {
            tx,
            dropped: AtomicU64::new(0),
        })
    }

    /// Waits (at most a second) until every line logged so far is written.
    pub fn flush(&self) {
        let (ack, done) = mpsc::channel();
        if self.tx.send(Msg::Flush(ack)).is_ok() {
            let _ = done.recv_timeout(std::time::Duration::from_secs(1));
        }
    }

    /// Opens the file again, at `path` if given, else at the same path
    /// (logrotate has moved the old one away). Lines queued before it go to
    /// the old file. Waits at most a second for the writer.
    pub fn reopen(&self, path: Option<&str>) -> std::io::Result<()> {
        let (ack, done) = mpsc::channel();
        self.tx
            .send(Msg::Reopen(path.map(str::to_owned), ack))
            .map_err(|_| std::io::Error::other("the access log writer has stopped"))?;
        done.recv_timeout(std::time::Duration::from_secs(1))
            .map_err(|_| std::io::Error::other("the access log writer did not answer"))?
    }

    pub fn log(&self, record: &LogRecord) {
        self.log_line(record.to_json());
    }

    /// Logs a record as the configuration says: in its format, and a
    /// successful request only if the sampler keeps it.
    pub fn log_as(
        &self,
        record: &LogRecord,
        config: &crate::config::AccessLogConfig,
        sampler: &Sampler,
    ) {
        if !record.is_error() && !sampler.keep(*config.success_sample.get_ref()) {
            return;
        }
        self.log_line(match config.format {
            crate::config::AccessLogFormat::Json => record.to_json(),
            crate::config::AccessLogFormat::Text => record.to_text(),
        });
    }

    /// A line made elsewhere (a TCP connection's, `src/tcp/log.rs`).
    pub fn log_line(&self, line: String) {
        match self.tx.try_send(Msg::Line(line)) {
            Ok(()) => {}
            Err(TrySendError::Full(_)) | Err(TrySendError::Disconnected(_)) => {
                self.dropped.fetch_add(1, Ordering::Relaxed);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[test]
    fn formats_utc_time() {
        let t = SystemTime::UNIX_EPOCH + Duration::from_millis(1_795_325_171_123);
        assert_eq!(rfc3339_millis(t), "2026-11-22T05:26:11.123Z");
        assert_eq!(
            rfc3339_millis(SystemTime::UNIX_EPOCH),
            "1970-01-01T00:00:00.000Z"
        );
    }

    #[test]
    fn record_is_valid_json() {
        let r = LogRecord {
            time: SystemTime::UNIX_EPOCH,
            client: "127.0.0.1".parse().unwrap(),
            method: http::Method::GET,
            path: "/a\"b".into(),
            status: 200,
            route: Some("r".into()),
            cluster: None,
            endpoint: Some("127.0.0.1:9001".parse().unwrap()),
            wait_ms: Some(0.25),
            connect_ms: None,
            head_ms: Some(1.0),
            upstream_ms: Some(1.5),
            total_ms: 2.25,
            bytes_in: 0,
            bytes_out: 6,
            request_id: "abc".into(),
            error: None,
            upstream_error: Some("connect failed: \"refused\"".into()),
            tunnel: None,
            attempts: 1,
            grpc_status: None,
            trace_id: String::new(),
            tls: Some(TlsLog {
                version: "TLSv1.3",
                sni: Some("a.example".into()),
                client_subject: None,
            }),
        };
        let v: serde_json::Value = serde_json::from_str(&r.to_json()).unwrap();
        assert_eq!(v["path"], "/a\"b");
        assert_eq!(v["status"], 200);
        assert_eq!(v["cluster"], serde_json::Value::Null);
        assert_eq!(v["tls_version"], "TLSv1.3");
        assert_eq!(v["sni"], "a.example");
        assert_eq!(v["connect_ms"], serde_json::Value::Null);
        assert_eq!(v["head_ms"], 1.0);
        assert_eq!(v["endpoint"], "127.0.0.1:9001");
        assert_eq!(v["upstream_error"], "connect failed: \"refused\"");
    }

    #[test]
    fn text_lines_and_sampling() {
        let mut r = sample();
        r.trace_id = "4bf92f3577b34da6a3ce929d0e0e4736".into();
        let t = r.to_text();
        assert!(t.starts_with(&format!("{} - - [", r.client)), "{t}");
        assert!(t.contains(" +0000] \"GET "), "{t}");
        assert!(
            t.contains(" trace_id=4bf92f3577b34da6a3ce929d0e0e4736"),
            "{t}"
        );
        assert!(
            t.contains(&format!("\" {} {}", r.status, r.bytes_out)),
            "{t}"
        );
        assert_eq!(
            clf_time(SystemTime::UNIX_EPOCH + std::time::Duration::from_secs(1_796_275_237)),
            "03/Dec/2026:05:20:37 +0000"
        );
        let s = Sampler::new();
        assert_eq!((0..100).filter(|_| s.keep(0.1)).count(), 10);
        let s = Sampler::new();
        assert_eq!((0..100).filter(|_| s.keep(0.0)).count(), 0);
        assert_eq!((0..100).filter(|_| s.keep(1.0)).count(), 100);
    }

    #[test]
    fn reopen_follows_a_rotated_file() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("access.log");
        let log = AccessLog::start(path.to_str().unwrap()).unwrap();
        let line = |n: u32| LogRecord {
            status: 200 + n as u16,
            ..sample()
        };
        log.log(&line(0));
        log.flush();
        // logrotate: move the file away, then signal.
        let rotated = dir.path().join("access.log.1");
        std::fs::rename(&path, &rotated).unwrap();
        log.log(&line(1));
        log.reopen(None).unwrap();
        log.log(&line(2));
        log.flush();
        let statuses = |p: &std::path::Path| -> Vec<u64> {
            std::fs::read_to_string(p)
                .unwrap()
                .lines()
                .map(|l| {
                    serde_json::from_str::<serde_json::Value>(l).unwrap()["status"]
                        .as_u64()
                        .unwrap()
                })
                .collect()
        };
        assert_eq!(statuses(&rotated), [200, 201]);
        assert_eq!(statuses(&path), [202]);
        // A path that cannot be opened: an error, and the old file stays.
        assert!(log.reopen(Some("/nonexistent-dir/x.log")).is_err());
        log.log(&line(3));
        log.flush();
        assert_eq!(statuses(&path), [202, 203]);
    }

    fn sample() -> LogRecord {
        LogRecord {
            time: SystemTime::UNIX_EPOCH,
            client: "127.0.0.1".parse().unwrap(),
            method: http::Method::GET,
            path: "/".into(),
            status: 200,
            route: None,
            cluster: None,
            endpoint: None,
            wait_ms: None,
            connect_ms: None,
            head_ms: None,
            upstream_ms: None,
            total_ms: 1.0,
            bytes_in: 0,
            bytes_out: 0,
            request_id: "r".into(),
            error: None,
            upstream_error: None,
            tunnel: None,
            attempts: 1,
            grpc_status: None,
            trace_id: String::new(),
            tls: None,
        }
    }
}
