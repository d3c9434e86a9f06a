//! A TCP connection's access-log line: one JSON object, written when it
//! closes.

use std::fmt::Write as _;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use super::relay::End;
use crate::observe::access_log::rfc3339_millis;

pub struct Line {
    /// When the connection was accepted.
    pub time: SystemTime,
    pub listener: Arc<str>,
    pub cluster: Arc<str>,
    pub client: SocketAddr,
    pub endpoint: Option<SocketAddr>,
    pub attempts: u32,
    pub connect: Option<Duration>,
    pub duration: Duration,
    /// Client → endpoint.
    pub bytes_in: u64,
    /// Endpoint → client.
    pub bytes_out: u64,
    pub end: End,
}

impl Line {
    pub fn to_json(&self) -> String {
        let mut s = String::with_capacity(256);
        let _ = write!(
            s,
            "{{\"time\":\"{}\",\"protocol\":\"tcp\",\"listener\":{},\"client\":\"{}\",\"cluster\":{}",
            rfc3339_millis(self.time),
            json(&self.listener),
            self.client,
            json(&self.cluster)
        );
        match self.endpoint {
            Some(e) => {
                let _ = write!(s, ",\"endpoint\":\"{e}\"");
            }
            None => s.push_str(",\"endpoint\":null"),
        }
        match self.connect {
            Some(c) => {
                let _ = write!(s, ",\"connect_ms\":{:.3}", c.as_secs_f64() * 1000.0);
            }
            None => s.push_str(",\"connect_ms\":null"),
        }
        let _ = write!(
            s,
            ",\"duration_ms\":{:.3},\"bytes_in\":{},\"bytes_out\":{},\"attempts\":{},\"end\":\"{}\"}}",
            self.duration.as_secs_f64() * 1000.0,
            self.bytes_in,
            self.bytes_out,
            self.attempts,
            self.end.as_str()
        );
        s
    }
}

fn json(v: &str) -> String {
    serde_json::Value::String(v.to_owned()).to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_line_is_one_json_object() {
        let line = Line {
            time: SystemTime::UNIX_EPOCH,
            listener: "pg".into(),
            cluster: "db\"x".into(),
            client: "127.0.0.1:4000".parse().unwrap(),
            endpoint: Some("127.0.0.1:5432".parse().unwrap()),
            attempts: 2,
            connect: Some(Duration::from_millis(3)),
            duration: Duration::from_secs(1),
            bytes_in: 10,
            bytes_out: 20,
            end: End::EndpointDown,
        };
        let v: serde_json::Value = serde_json::from_str(&line.to_json()).unwrap();
        assert_eq!(v["cluster"], "db\"x");
        assert_eq!(v["endpoint"], "127.0.0.1:5432");
        assert_eq!(v["bytes_out"], 20);
        assert_eq!(v["end"], "endpoint_down");
        assert_eq!(v["attempts"], 2);
    }
}
