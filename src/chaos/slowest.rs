//! The slowest requests of each route since its list was last cleared,
//! each with the faults that hit it, the endpoint that answered and how
//! many tries it took: what an experiment's report shows as "which
//! requests were slow and why" (`GET /chaos/requests?route=R`; `DELETE`
//! clears it, as `levee chaos run` does for its route when its faults go
//! in).
//!
//! Kept only while fault injection is enabled (`[chaos] enabled`): then
//! every request takes a short lock; bounded: `KEEP` requests per route.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::Mutex;
use std::time::{Duration, SystemTime};

use serde::Serialize;

/// How many requests are kept.
pub const KEEP: usize = 20;

/// One request as the list shows it.
#[derive(Debug, Clone, Serialize)]
pub struct SlowRequest {
    /// When it arrived (RFC 3339).
    pub at: String,
    pub total_ms: f64,
    pub status: u16,
    pub method: String,
    pub path: String,
    pub route: Option<String>,
    /// The endpoint of the last try.
    pub endpoint: Option<SocketAddr>,
    pub tries: u32,
    /// The faults that hit it (on its route, then on each try), in order.
    pub faults: Vec<String>,
    /// Levee's error code, or why the endpoint failed.
    pub error: Option<String>,
}

/// The `keep` slowest, slowest first: the synchronous core.
#[derive(Debug, Default)]
pub struct Top {
    entries: Vec<(Duration, SlowRequest)>,
}

impl Top {
    /// Offers a request that took `total`; whether it was kept.
    pub fn offer(&mut self, total: Duration, req: SlowRequest, keep: usize) -> bool {
        if self.entries.len() >= keep && self.entries.last().is_some_and(|(d, _)| *d >= total) {
            return false;
        }
        let at = self.entries.partition_point(|(d, _)| *d >= total);
        self.entries.insert(at, (total, req));
        self.entries.truncate(keep);
        true
    }

    /// What a request must exceed to be kept: the fastest kept once full.
    pub fn floor(&self, keep: usize) -> Duration {
        if self.entries.len() < keep {
            return Duration::ZERO;
        }
        self.entries.last().map_or(Duration::ZERO, |(d, _)| *d)
    }

    pub fn list(&self) -> Vec<SlowRequest> {
        self.entries.iter().map(|(_, r)| r.clone()).collect()
    }
}

/// The lists of a running Levee, one per route (an experiment watches
/// one route, and experiments on other routes must not clear its list).
#[derive(Default)]
pub struct Slowest {
    routes: Mutex<HashMap<String, (SystemTime, Top)>>,
}

impl Slowest {
    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<String, (SystemTime, Top)>> {
        self.routes.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Offers a finished request of `route`; `describe` is called only
    /// when it is kept.
    pub fn offer(
        &self,
        route: &str,
        total: Duration,
        now: SystemTime,
        describe: impl FnOnce() -> SlowRequest,
    ) {
        let mut routes = self.lock();
        let (_, top) = match routes.get_mut(route) {
            Some(entry) => entry,
            None => routes
                .entry(route.to_owned())
                .or_insert_with(|| (now, Top::default())),
        };
        if top.floor(KEEP) >= total && top.floor(KEEP) > Duration::ZERO {
            return;
        }
        top.offer(total, describe(), KEEP);
    }

    /// Empties the list of `route` (every list: `None`); what is kept from
    /// `now` on.
    pub fn clear(&self, route: Option<&str>, now: SystemTime) {
        let mut routes = self.lock();
        match route {
            Some(r) => {
                routes.insert(r.to_owned(), (now, Top::default()));
            }
            None => routes.clear(),
        }
    }

    /// `GET /chaos/requests[?route=R]`.
    pub fn report(&self, route: Option<&str>) -> serde_json::Value {
        let routes = self.lock();
        let lists: serde_json::Map<String, serde_json::Value> = routes
            .iter()
            .filter(|(name, _)| route.is_none_or(|r| r == name.as_str()))
            .map(|(name, (since, top))| {
                (
                    name.clone(),
                    serde_json::json!({
                        "since": crate::observe::access_log::rfc3339_millis(*since),
                        "requests": top.list(),
                    }),
                )
            })
            .collect();
        serde_json::json!({ "keep": KEEP, "routes": lists })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn req(path: &str) -> SlowRequest {
        SlowRequest {
            at: String::new(),
            total_ms: 0.0,
            status: 200,
            method: "GET".into(),
            path: path.into(),
            route: None,
            endpoint: None,
            tries: 1,
            faults: Vec::new(),
            error: None,
        }
    }

    #[test]
    fn keeps_the_slowest_slowest_first() {
        let ms = Duration::from_millis;
        let mut top = Top::default();
        for (t, p) in [(30, "a"), (10, "b"), (50, "c")] {
            assert!(top.offer(ms(t), req(p), 2) || p == "b");
        }
        let paths: Vec<String> = top.list().into_iter().map(|r| r.path).collect();
        assert_eq!(paths, ["c", "a"]);
        assert_eq!(top.floor(2), ms(30));
        // No faster than the fastest kept: refused.
        assert!(!top.offer(ms(30), req("d"), 2));
        assert!(top.offer(ms(40), req("e"), 2));
        let paths: Vec<String> = top.list().into_iter().map(|r| r.path).collect();
        assert_eq!(paths, ["c", "e"]);
    }

    #[test]
    fn the_shell_keeps_a_list_per_route() {
        let s = Slowest::default();
        let now = SystemTime::now();
        for i in 0..(KEEP as u64 + 5) {
            s.offer("a", Duration::from_millis(i + 1), now, || {
                req(&i.to_string())
            });
        }
        s.offer("b", Duration::from_millis(1), now, || req("b"));
        let v = s.report(Some("a"));
        let list = v["routes"]["a"]["requests"].as_array().unwrap();
        assert_eq!(list.len(), KEEP);
        assert_eq!(list[0]["path"], (KEEP + 4).to_string());
        assert!(v["routes"].get("b").is_none());
        s.offer("a", Duration::from_millis(1), now, || {
            panic!("not slow enough")
        });
        // Clearing one route leaves the others.
        s.clear(Some("a"), now);
        let v = s.report(None);
        assert!(v["routes"]["a"]["requests"].as_array().unwrap().is_empty());
        assert_eq!(v["routes"]["b"]["requests"].as_array().unwrap().len(), 1);
    }
}
