//! What a store's callers and its client thread share: where Redis is,
//! the timeouts, and the outage state (up or down, the reconnect backoff,
//! a cluster's quiet period), kept in atomics so that a caller can fail
//! fast during a backoff without a hop to the client thread.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::Duration;

use ::redis::TlsCertificates;

use super::{CLUSTER_QUIET, StoreError, Target};

pub(super) struct Shared {
    pub(super) target: Target,
    /// `target` as logs show it (no credentials).
    pub(super) name: String,
    pub(super) tls: Option<TlsCertificates>,
    pub(super) timeout: Duration,
    pub(super) stall: Duration,
    pub(super) up: AtomicBool,
    pub(super) errors: AtomicU64,
    /// The start of the clock `retry_at` and `failed_at` count in.
    pub(super) base: std::time::Instant,
    /// Microseconds since `base` before which no reconnect is tried; 0 when
    /// not backing off.
    pub(super) retry_at: AtomicU64,
    /// Cluster only: microseconds since `base` of the last failed call.
    pub(super) failed_at: AtomicU64,
}

impl Shared {
    pub(super) fn cluster(&self) -> bool {
        matches!(self.target, Target::Cluster(_))
    }

    pub(super) fn now_us(&self) -> u64 {
        u64::try_from(self.base.elapsed().as_micros()).unwrap_or(u64::MAX)
    }

    /// How long the backoff still lasts, if it does.
    pub(super) fn backoff_left(&self) -> Option<Duration> {
        let at = self.retry_at.load(Ordering::Acquire);
        if at == 0 {
            return None;
        }
        let now = self.now_us();
        (now < at).then(|| Duration::from_micros(at - now))
    }

    pub(super) fn back_off(&self, wait: Duration) {
        let at = self
            .now_us()
            .saturating_add(u64::try_from(wait.as_micros()).unwrap_or(u64::MAX))
            .max(1);
        self.retry_at.store(at, Ordering::Release);
    }

    pub(super) fn down_error(&self, left: Duration) -> StoreError {
        StoreError::Unavailable(format!(
            "{} is down, next reconnect in {} ms",
            self.name,
            left.as_millis().max(1)
        ))
    }

    pub(super) fn mark_down(&self, reason: &str) {
        if self.cluster() {
            self.failed_at
                .store(self.now_us().max(1), Ordering::Release);
        }
        if self.up.swap(false, Ordering::AcqRel) {
            tracing::warn!(
                store = %self.name,
                "rate-limit store {} unreachable: {reason}",
                self.name
            );
        } else {
            tracing::debug!(store = %self.name, "rate-limit store still unreachable: {reason}");
        }
    }

    pub(super) fn mark_up(&self) {
        if !self.up.swap(true, Ordering::AcqRel) {
            tracing::info!(store = %self.name, "rate-limit store {} reachable again", self.name);
        }
    }

    /// A cluster call succeeded: up again once no call has failed for
    /// `CLUSTER_QUIET`.
    pub(super) fn cluster_ok(&self) {
        if self.up.load(Ordering::Acquire) {
            return;
        }
        let failed = self.failed_at.load(Ordering::Acquire);
        let quiet = u64::try_from(CLUSTER_QUIET.as_micros()).unwrap_or(u64::MAX);
        if self.now_us().saturating_sub(failed) >= quiet {
            self.mark_up();
        }
    }
}
