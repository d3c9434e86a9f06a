//! A bulkhead: at most `max_concurrent` requests in flight to a cluster, at
//! most `max_queue` more waiting for a slot, each for at most
//! `queue_timeout`. A slow cluster then holds at most its own slots and its
//! own queue; the requests for the other clusters never wait behind it.
//! A request that finds the queue full is refused at once (the caller
//! answers 503 without touching the upstream); one that waits too long is
//! refused at the timeout.
//!
//! One bulkhead serves every worker thread, each running its own
//! current-thread runtime, so it must not belong to any runtime. It is a
//! `tokio::sync::Semaphore`, whose waiters are woken through their own
//! wakers (a slot freed on one worker wakes a request waiting on another),
//! behind an `Arc`. Waiters are served first come, first served: the
//! semaphore hands a freed slot to the oldest waiter before anyone else can
//! take it. The queue timeout uses the waiting task's runtime timer, so the
//! workers' runtimes need time enabled (`enable_all`).
//!
//! The fast path (a slot is free) is one compare-and-swap on the semaphore
//! and two atomic increments, with no allocation and no queue accounting.
//! The `Permit` owns an `Arc` of the bulkhead and frees its slot on drop,
//! so it can travel with the response body and free the slot only when the
//! response has been sent. A waiting request whose client goes away drops
//! its future, which leaves the queue at once.
//!
//! The sizes are fixed for the bulkhead's life: a reload that changes them
//! builds a new one (the requests in flight keep their permits on the old
//! one, so neither count is disturbed), one that does not keeps the `Arc`.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering::Relaxed};
use std::time::Duration;

use tokio::sync::Semaphore;

/// Why a request was refused.
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
pub enum Rejected {
    #[error("bulkhead: every slot busy and the queue full")]
    QueueFull,
    #[error("bulkhead: no slot free within the queue timeout")]
    Timeout,
}

impl Rejected {
    /// For metric labels and the access log.
    pub fn as_str(self) -> &'static str {
        match self {
            Rejected::QueueFull => "queue_full",
            Rejected::Timeout => "queue_timeout",
        }
    }
}

/// Exact totals since the bulkhead was made, for metrics.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Counts {
    /// Requests given a slot, at once or after waiting.
    pub admitted: u64,
    /// Requests that had to wait (admitted, timed out or abandoned since).
    pub queued: u64,
    pub rejected_full: u64,
    pub rejected_timeout: u64,
    /// Waiting requests dropped by their caller (the client went away).
    pub abandoned: u64,
}

#[derive(Debug)]
pub struct Bulkhead {
    slots: Semaphore,
    max_concurrent: usize,
    max_queue: usize,
    queue_timeout: Duration,
    /// Requests waiting now.
    waiting: AtomicUsize,
    admitted: AtomicU64,
    queued: AtomicU64,
    rejected_full: AtomicU64,
    rejected_timeout: AtomicU64,
    abandoned: AtomicU64,
}

impl Bulkhead {
    /// `max_concurrent` is at least 1 (no bulkhead at all is the caller's
    /// `Option`); `max_queue` 0 refuses at once whenever every slot is busy.
    pub fn new(max_concurrent: u32, max_queue: u32, queue_timeout: Duration) -> Bulkhead {
        let max_concurrent = (max_concurrent.max(1) as usize).min(Semaphore::MAX_PERMITS);
        Bulkhead {
            slots: Semaphore::new(max_concurrent),
            max_concurrent,
            max_queue: max_queue as usize,
            queue_timeout,
            waiting: AtomicUsize::new(0),
            admitted: AtomicU64::new(0),
            queued: AtomicU64::new(0),
            rejected_full: AtomicU64::new(0),
            rejected_timeout: AtomicU64::new(0),
            abandoned: AtomicU64::new(0),
        }
    }

    /// A slot now, or after waiting in the queue; refused at once when the
    /// queue is full, or after `queue_timeout`.
    pub async fn acquire(self: &Arc<Self>) -> Result<Permit, Rejected> {
        if let Ok(slot) = self.slots.try_acquire() {
            slot.forget();
            return Ok(self.admit());
        }
        let max = self.max_queue;
        let take = |w: usize| (w < max).then_some(w + 1);
        if self.waiting.fetch_update(Relaxed, Relaxed, take).is_err() {
            self.rejected_full.fetch_add(1, Relaxed);
            return Err(Rejected::QueueFull);
        }
        self.queued.fetch_add(1, Relaxed);
        // Gives the queue place back however the wait ends, including the
        // caller dropping this future.
        let mut place = Place {
            bulkhead: self,
            done: false,
        };
        let waited = tokio::time::timeout(self.queue_timeout, self.slots.acquire()).await;
        place.done = true;
        drop(place);
        match waited {
            Ok(Ok(slot)) => {
                slot.forget();
                Ok(self.admit())
            }
            // The semaphore is never closed; a closed one could not admit.
            Ok(Err(_)) | Err(_) => {
                self.rejected_timeout.fetch_add(1, Relaxed);
                Err(Rejected::Timeout)
            }
        }
    }

    fn admit(self: &Arc<Self>) -> Permit {
        self.admitted.fetch_add(1, Relaxed);
        Permit {
            bulkhead: Arc::clone(self),
        }
    }

    /// Requests holding a slot now.
    pub fn in_flight(&self) -> usize {
        self.max_concurrent
            .saturating_sub(self.slots.available_permits())
    }

    /// Requests waiting for a slot now.
    pub fn queued(&self) -> usize {
        self.waiting.load(Relaxed)
    }

    pub fn max_concurrent(&self) -> usize {
        self.max_concurrent
    }

    pub fn max_queue(&self) -> usize {
        self.max_queue
    }

    pub fn queue_timeout(&self) -> Duration {
        self.queue_timeout
    }

    /// Whether the sizes are these: a reload keeps the bulkhead if so.
    pub fn has_sizes(&self, max_concurrent: u32, max_queue: u32, queue_timeout: Duration) -> bool {
        let rebuilt = Bulkhead::new(max_concurrent, max_queue, queue_timeout);
        (
            rebuilt.max_concurrent,
            rebuilt.max_queue,
            rebuilt.queue_timeout,
        ) == (self.max_concurrent, self.max_queue, self.queue_timeout)
    }

    pub fn counts(&self) -> Counts {
        Counts {
            admitted: self.admitted.load(Relaxed),
            queued: self.queued.load(Relaxed),
            rejected_full: self.rejected_full.load(Relaxed),
            rejected_timeout: self.rejected_timeout.load(Relaxed),
            abandoned: self.abandoned.load(Relaxed),
        }
    }
}

/// One request's place in the queue.
struct Place<'a> {
    bulkhead: &'a Bulkhead,
    done: bool,
}

impl Drop for Place<'_> {
    fn drop(&mut self) {
        self.bulkhead.waiting.fetch_sub(1, Relaxed);
        if !self.done {
            self.bulkhead.abandoned.fetch_add(1, Relaxed);
        }
    }
}

/// A slot in the bulkhead, freed when dropped (on any thread).
#[derive(Debug)]
#[must_use = "the slot is freed as soon as the permit is dropped"]
pub struct Permit {
    bulkhead: Arc<Bulkhead>,
}

impl Drop for Permit {
    fn drop(&mut self) {
        self.bulkhead.slots.add_permits(1);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::future::Future;
    use std::sync::Mutex;
    use std::sync::atomic::AtomicU32;
    use std::time::Instant;

    const MS: Duration = Duration::from_millis(1);
    const SEC: Duration = Duration::from_secs(1);

    /// Runs `f` to completion on a new current-thread runtime, like a
    /// worker's.
    fn block_on<F: Future>(f: F) -> F::Output {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .expect("runtime");
        rt.block_on(f)
    }

    /// Waits (on this thread, without a runtime) until `cond` holds.
    fn wait_for(what: &str, cond: impl Fn() -> bool) {
        let start = Instant::now();
        while !cond() {
            assert!(start.elapsed() < 10 * SEC, "timed out waiting for {what}");
            std::thread::sleep(MS);
        }
    }

    fn bulkhead(max_concurrent: u32, max_queue: u32, queue_timeout: Duration) -> Arc<Bulkhead> {
        Arc::new(Bulkhead::new(max_concurrent, max_queue, queue_timeout))
    }

    #[test]
    fn never_more_than_max_in_flight() {
        // Four workers, 25 requests each, all contending for 4 slots.
        let b = bulkhead(4, 1000, 10 * SEC);
        let (active, peak) = (AtomicU32::new(0), AtomicU32::new(0));
        std::thread::scope(|s| {
            for _ in 0..4 {
                s.spawn(|| {
                    let mut requests = Vec::new();
                    for _ in 0..25 {
                        let (b, active, peak) = (&b, &active, &peak);
                        requests.push(async move {
                            let permit = b.acquire().await;
                            let now = active.fetch_add(1, Relaxed) + 1;
                            peak.fetch_max(now, Relaxed);
                            assert!(b.in_flight() <= 4);
                            tokio::time::sleep(2 * MS).await;
                            active.fetch_sub(1, Relaxed);
                            drop(permit);
                        });
                    }
                    block_on(join_all(requests))
                });
            }
        });
        assert_eq!(peak.load(Relaxed), 4);
        let c = b.counts();
        assert_eq!(
            (c.admitted, c.rejected_full, c.rejected_timeout),
            (100, 0, 0)
        );
        assert!(c.queued >= 90, "{c:?}");
        assert_eq!((b.in_flight(), b.queued()), (0, 0));
    }

    /// Polls every future to completion, concurrently on this task.
    async fn join_all<F: Future<Output = ()>>(futures: Vec<F>) {
        let mut futures: Vec<_> = futures.into_iter().map(Box::pin).map(Some).collect();
        std::future::poll_fn(|cx| {
            let mut pending = false;
            for slot in futures.iter_mut() {
                if let Some(f) = slot {
                    match f.as_mut().poll(cx) {
                        std::task::Poll::Ready(()) => *slot = None,
                        std::task::Poll::Pending => pending = true,
                    }
                }
            }
            match pending {
                true => std::task::Poll::Pending,
                false => std::task::Poll::Ready(()),
            }
        })
        .await
    }

    #[test]
    fn shared_between_workers() {
        fn shared<T: Send + Sync>() {}
        fn owned<T: Send + 'static>(_: &T) {}
        shared::<Bulkhead>();
        let b = bulkhead(1, 1, SEC);
        // A task that owns the `Arc` can wait on any runtime; the permit
        // can ride in a response body.
        let b2 = Arc::clone(&b);
        owned(&async move { b2.acquire().await.map(drop) });
        if let Ok(permit) = block_on(b.acquire()) {
            owned(&permit);
        }
    }

    #[test]
    fn fast_path_and_release() {
        let b = bulkhead(2, 0, SEC);
        block_on(async {
            let p1 = b.acquire().await.expect("free slot");
            let p2 = b.acquire().await.expect("free slot");
            assert_eq!(b.in_flight(), 2);
            // No queue at all: refused at once.
            assert_eq!(b.acquire().await.err(), Some(Rejected::QueueFull));
            drop(p1);
            assert_eq!(b.in_flight(), 1);
            let p3 = b.acquire().await.expect("freed slot");
            drop((p2, p3));
        });
        let c = b.counts();
        assert_eq!((c.admitted, c.queued, c.rejected_full), (3, 0, 1));
        assert_eq!(b.in_flight(), 0);
        assert_eq!(Rejected::Timeout.as_str(), "queue_timeout");
        assert!(b.has_sizes(2, 0, SEC));
        assert!(!b.has_sizes(2, 1, SEC));
        assert!(bulkhead(0, 0, SEC).has_sizes(1, 0, SEC));
    }

    #[test]
    fn full_queue_rejects_at_once() {
        let b = bulkhead(1, 2, 10 * SEC);
        let held = block_on(b.acquire()).expect("free slot");
        std::thread::scope(|s| {
            let waiters: Vec<_> = (0..2)
                .map(|_| s.spawn(|| block_on(b.acquire()).map(drop)))
                .collect();
            wait_for("two waiters", || b.queued() == 2);
            let start = Instant::now();
            let third = block_on(b.acquire());
            let took = start.elapsed();
            println!("full queue: refused in {took:?}");
            assert_eq!(third.err(), Some(Rejected::QueueFull));
            assert!(took < 5 * MS, "{took:?}");
            drop(held);
            for w in waiters {
                assert_eq!(w.join().ok(), Some(Ok(())));
            }
        });
        let c = b.counts();
        assert_eq!((c.admitted, c.queued, c.rejected_full), (3, 2, 1));
        assert_eq!((b.in_flight(), b.queued()), (0, 0));
    }

    #[test]
    fn queue_timeout_rejects_after_the_timeout() {
        let b = bulkhead(1, 5, 100 * MS);
        let held = block_on(b.acquire()).expect("free slot");
        let start = Instant::now();
        let r = block_on(b.acquire());
        let took = start.elapsed();
        println!("queue timeout 100ms: refused after {took:?}");
        assert_eq!(r.err(), Some(Rejected::Timeout));
        assert!(took >= 99 * MS && took < 2 * SEC, "{took:?}");
        assert_eq!(b.queued(), 0);
        assert_eq!(b.counts().rejected_timeout, 1);
        assert_eq!(b.counts().abandoned, 0);
        drop(held);
        assert!(block_on(b.acquire()).is_ok());
    }

    #[test]
    fn waiters_are_served_in_order_across_runtimes() {
        let b = bulkhead(1, 10, 10 * SEC);
        let order = Mutex::new(Vec::new());
        let held = block_on(b.acquire()).expect("free slot");
        std::thread::scope(|s| {
            for i in 0..5 {
                let (b, order) = (&b, &order);
                s.spawn(move || {
                    block_on(async {
                        let permit = b.acquire().await;
                        assert!(permit.is_ok());
                        order.lock().map(|mut o| o.push(i)).ok();
                        tokio::time::sleep(MS).await;
                    })
                });
                // Each one queued before the next arrives.
                wait_for("the waiter to queue", || b.queued() == i + 1);
            }
            // Freed on a thread with no runtime at all.
            drop(held);
        });
        assert_eq!(
            *order.lock().unwrap_or_else(|e| e.into_inner()),
            [0, 1, 2, 3, 4]
        );
        assert_eq!(b.counts().admitted, 6);
    }

    #[test]
    fn a_dropped_waiter_leaves_the_queue() {
        let b = bulkhead(1, 1, 10 * SEC);
        let held = block_on(b.acquire()).expect("free slot");
        block_on(async {
            // The client gives up after 20 ms: the wait is dropped.
            let gave_up = tokio::time::timeout(20 * MS, b.acquire()).await;
            assert!(gave_up.is_err());
        });
        assert_eq!(b.queued(), 0);
        assert_eq!(b.counts().abandoned, 1);
        // Its place is free, and it holds no claim on the slot.
        std::thread::scope(|s| {
            let next = s.spawn(|| block_on(b.acquire()).map(|_| ()));
            wait_for("the next waiter", || b.queued() == 1);
            assert_eq!(block_on(b.acquire()).err(), Some(Rejected::QueueFull));
            drop(held);
            assert_eq!(next.join().ok(), Some(Ok(())));
        });
        let c = b.counts();
        assert_eq!(
            (c.admitted, c.queued, c.rejected_full, c.rejected_timeout),
            (2, 2, 1, 0)
        );
        assert_eq!(b.in_flight(), 0);
    }
}
