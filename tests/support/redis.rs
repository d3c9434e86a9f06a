//! A throwaway `redis-server` for tests (Debian's, at /usr/bin/redis-server) on a
//! free loopback port, killed on drop.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{TcpListener, TcpStream};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

const REDIS_SERVER: &str = "/usr/bin/redis-server";

/// A `redis-server` child on 127.0.0.1, killed on drop.
pub struct RedisServer {
    child: Option<Child>,
    port: u16,
    extra: Vec<String>,
}

pub use super::{free_port, wait_until};

impl RedisServer {
    /// Starts a server on a free port, ready (answering PING).
    pub fn start() -> RedisServer {
        RedisServer::start_with(&[])
    }

    /// Starts a server with extra arguments (`["--requirepass", "pw"]`).
    pub fn start_with(extra: &[&str]) -> RedisServer {
        let mut server = RedisServer {
            child: None,
            port: free_port(),
            extra: extra.iter().map(|s| s.to_string()).collect(),
        };
        server.restart();
        server
    }

    pub fn port(&self) -> u16 {
        self.port
    }

    pub fn url(&self) -> String {
        format!("redis://127.0.0.1:{}", self.port)
    }

    /// Starts the server again on the same port (after `kill`).
    pub fn restart(&mut self) {
        assert!(self.child.is_none(), "the server is running");
        let port = self.port.to_string();
        let child = Command::new(REDIS_SERVER)
            .args(["--port", &port, "--bind", "127.0.0.1"])
            .args(["--save", "", "--appendonly", "no"])
            .args(["--protected-mode", "no", "--loglevel", "warning"])
            .args(&self.extra)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap_or_else(|e| panic!("cannot run {REDIS_SERVER}: {e}"));
        self.child = Some(child);
        // Any reply will do (with a password, PING answers NOAUTH).
        let deadline = Instant::now() + Duration::from_secs(10);
        while self.try_query(&["PING"]).is_err() {
            if let Some(Ok(Some(status))) = self.child.as_mut().map(|c| c.try_wait()) {
                let mut err = String::new();
                if let Some(mut e) = self.child.take().and_then(|mut c| c.stderr.take()) {
                    let _ = e.read_to_string(&mut err);
                }
                panic!("redis-server exited at start ({status}): {err}");
            }
            assert!(
                Instant::now() < deadline,
                "redis-server on port {} not ready in 10 s",
                self.port
            );
            std::thread::sleep(Duration::from_millis(10));
        }
    }

    /// Kills the server (SIGKILL) and reaps it.
    pub fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// SIGSTOP: the server keeps its sockets but stops answering.
    pub fn pause(&self) {
        self.signal("-STOP");
    }

    /// SIGCONT after `pause`.
    pub fn resume(&self) {
        self.signal("-CONT");
    }

    fn signal(&self, sig: &str) {
        let pid = self.child.as_ref().expect("running").id().to_string();
        let ok = Command::new("kill")
            .args([sig, &pid])
            .status()
            .expect("kill");
        assert!(ok.success(), "kill {sig} {pid}");
    }

    /// Runs one command on a fresh connection; panics on failure.
    pub fn query(&self, args: &[&str]) -> Value {
        self.try_query(args)
            .unwrap_or_else(|e| panic!("{args:?} on port {}: {e}", self.port))
    }

    pub fn try_query(&self, args: &[&str]) -> std::io::Result<Value> {
        let mut conn = TcpStream::connect(("127.0.0.1", self.port))?;
        conn.set_read_timeout(Some(Duration::from_secs(5)))?;
        let mut out = format!("*{}\r\n", args.len());
        for a in args {
            out += &format!("${}\r\n{a}\r\n", a.len());
        }
        conn.write_all(out.as_bytes())?;
        read_value(&mut BufReader::new(conn))
    }
}

impl Drop for RedisServer {
    fn drop(&mut self) {
        self.kill();
    }
}

/// A reply, as the blocking helper reads it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Value {
    Str(String),
    Err(String),
    Int(i64),
    Nil,
    Array(Vec<Value>),
}

impl Value {
    pub fn int(&self) -> i64 {
        match self {
            Value::Int(n) => *n,
            other => panic!("not an integer: {other:?}"),
        }
    }

    pub fn len(&self) -> usize {
        match self {
            Value::Array(items) => items.len(),
            other => panic!("not an array: {other:?}"),
        }
    }
}

fn read_value(r: &mut impl BufRead) -> std::io::Result<Value> {
    let bad = |m: &str| std::io::Error::new(std::io::ErrorKind::InvalidData, m.to_string());
    let mut line = String::new();
    if r.read_line(&mut line)? == 0 {
        return Err(bad("connection closed"));
    }
    let line = line.trim_end_matches("\r\n");
    let (kind, rest) = line.split_at(1.min(line.len()));
    let num = || rest.parse::<i64>().map_err(|_| bad(line));
    Ok(match kind {
        "+" => Value::Str(rest.to_string()),
        "-" => Value::Err(rest.to_string()),
        ":" => Value::Int(num()?),
        "$" if num()? < 0 => Value::Nil,
        "$" => {
            let mut data = vec![0; num()? as usize + 2];
            r.read_exact(&mut data)?;
            data.truncate(data.len() - 2);
            Value::Str(String::from_utf8_lossy(&data).into_owned())
        }
        "*" if num()? < 0 => Value::Nil,
        "*" => {
            let mut items = Vec::new();
            for _ in 0..num()? {
                items.push(read_value(r)?);
            }
            Value::Array(items)
        }
        _ => return Err(bad(line)),
    })
}
