//! Idle upstream connections, per endpoint and per worker.
//!
//! An idle connection is Levee's own (`upstream::Conn`: a socket registered
//! with the event loop of the worker that opened it, and its read buffer);
//! the request's task reads and writes it directly, with no driver task.
//! Used from another worker, its socket would be polled by a foreign loop and
//! every request would hop threads. So each worker has its own slot, and a
//! slot's lock is only ever taken by its own worker (uncontended).
//! Connections are reused newest-first, which keeps the hot set small and lets
//! the rest age out.

use std::sync::Mutex;
use std::time::{Duration, Instant};

use crate::upstream::Conn;

struct Idle {
    conn: Conn,
    since: Instant,
}

pub struct Pool {
    slots: Box<[Mutex<Vec<Idle>>]>,
}

impl Pool {
    pub fn new(workers: usize) -> Self {
        Pool {
            slots: (0..workers.max(1))
                .map(|_| Mutex::new(Vec::new()))
                .collect(),
        }
    }

    /// The most recently used idle connection that is still open and younger
    /// than `idle_timeout`.
    pub fn take(&self, worker: usize, idle_timeout: Duration, now: Instant) -> Option<Conn> {
        let slot = self.slots.get(worker)?;
        let mut idle = slot.lock().unwrap_or_else(|p| p.into_inner());
        while let Some(entry) = idle.pop() {
            if now.duration_since(entry.since) < idle_timeout && entry.conn.is_idle_and_open() {
                return Some(entry.conn);
            }
        }
        None
    }

    /// Returns a connection after its response has been read in full. The
    /// oldest entries go first when the slot is full or they have expired.
    pub fn put(&self, worker: usize, conn: Conn, max_idle: usize, idle_timeout: Duration) {
        let Some(slot) = self.slots.get(worker) else {
            return;
        };
        if max_idle == 0 {
            return;
        }
        let now = Instant::now();
        let mut idle = slot.lock().unwrap_or_else(|p| p.into_inner());
        while idle
            .first()
            .is_some_and(|e| idle.len() >= max_idle || now.duration_since(e.since) >= idle_timeout)
        {
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
