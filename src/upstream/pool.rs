//! An endpoint's connections: the idle ones, per worker, and counts of how
//! each request got its connection.
//!
//! Each worker thread runs its own event loop, and a connection is polled by
//! the task of the request using it, on that worker; handing it to another
//! worker would make requests hop threads. So each worker has its own slot,
//! and a slot's lock is only ever taken by its own worker (uncontended).
//! Connections are reused newest-first, which keeps the hot set small and lets
//! the rest age out.
//!
//! `send` takes a connection from here, and the response body it hands out
//! puts the connection back when the response was read to its end: the
//! layer that takes a connection is the one that returns it.

use std::sync::Mutex;
use std::time::{Duration, Instant};

use prometheus_client::metrics::counter::Counter;

use super::Conn;

struct Idle {
    conn: Conn,
    since: Instant,
}

/// How requests got their connections (the metric handles are the
/// caller's, so the labels are too).
#[derive(Default)]
pub struct Counters {
    /// Requests sent on a pooled connection.
    pub reused: Counter,
    /// Connections opened.
    pub opened: Counter,
    /// Connections that could not be opened.
    pub connect_errors: Counter,
    /// HTTP/2: how many streams each connection carried, observed when it
    /// closes (`None`: not counted).
    pub streams_per_connection: Option<prometheus_client::metrics::histogram::Histogram>,
}

pub struct Pool {
    slots: Box<[Mutex<Vec<Idle>>]>,
    /// The endpoint's multiplexed HTTP/2 connections (`protocol = "h2c"`).
    pub h2: super::h2::H2Pool,
    pub counters: Counters,
}

/// How long and how many idle connections a pool keeps; the cluster's
/// settings, which a reload may change while the pool lives on.
#[derive(Debug, Clone, Copy)]
pub struct Limits {
    pub max_idle: usize,
    pub idle_timeout: Duration,
}

impl Pool {
    pub fn new(workers: usize, counters: Counters) -> Self {
        Pool {
            slots: (0..workers.max(1))
                .map(|_| Mutex::new(Vec::new()))
                .collect(),
            h2: super::h2::H2Pool::new(workers),
            counters,
        }
    }

    /// The most recently used idle connection that is still open, younger
    /// than `idle_timeout` and of the wanted `transport` (0: plain TCP, else
    /// the `EndpointTls::key`). A connection of another transport (made
    /// before a reload changed the cluster's TLS settings) is closed.
    pub fn take(
        &self,
        worker: usize,
        idle_timeout: Duration,
        transport: u64,
        now: Instant,
    ) -> Option<Conn> {
        let slot = self.slots.get(worker)?;
        let mut idle = slot.lock().unwrap_or_else(|p| p.into_inner());
        while let Some(mut entry) = idle.pop() {
            if now.duration_since(entry.since) < idle_timeout
                && entry.conn.transport == transport
                && entry.conn.is_idle_and_open()
            {
                return Some(entry.conn);
            }
        }
        None
    }

    /// Returns a connection after its response has been read in full. The
    /// oldest entries go first when the slot is full or they have expired.
    pub fn put(&self, worker: usize, conn: Conn, limits: Limits) {
        let Some(slot) = self.slots.get(worker) else {
            return;
        };
        if limits.max_idle == 0 {
            return;
        }
        let now = Instant::now();
        let mut idle = slot.lock().unwrap_or_else(|p| p.into_inner());
        while idle.first().is_some_and(|e| {
            idle.len() >= limits.max_idle || now.duration_since(e.since) >= limits.idle_timeout
        }) {
            idle.remove(0);
        }
        idle.push(Idle { conn, since: now });
    }

    /// Idle connections across all workers.
    pub fn idle_count(&self) -> usize {
        self.slots
            .iter()
            .map(|s| s.lock().map(|v| v.len()).unwrap_or(0))
            .sum()
    }
}
