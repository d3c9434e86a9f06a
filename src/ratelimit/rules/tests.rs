use super::*;
use std::path::Path;

fn limits(toml: &str) -> RateLimits {
    let config = crate::config::parse(
        Path::new("t.toml"),
        &format!("[server]\nallow_no_listeners = true\n{toml}"),
    )
    .unwrap();
    RateLimits::build(&config.rate_limit, &Registry::default(), &Metrics::new())
}

fn headers(pairs: &[(&str, &str)]) -> HeaderMap {
    pairs
        .iter()
        .map(|(n, v)| {
            (
                HeaderName::from_bytes(n.as_bytes()).unwrap(),
                v.parse().unwrap(),
            )
        })
        .collect()
}

fn block<F: std::future::Future>(f: F) -> F::Output {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap()
        .block_on(f)
}

const RULES: &str = r#"
[rate_limit]
headers = "both"
[[rate_limit.rules]]
name = "ip"
limit = 2
period = "1s"
[[rate_limit.rules]]
name = "plan"
key = ["header:x-user"]
tiers = { header = "x-plan", default = "free", limits = { free = { limit = 1 }, paid = { limit = 3 } } }
[[rate_limit.rules]]
name = "watch"
key = ["global"]
limit = 1
dry_run = true
"#;

#[test]
fn first_refusal_decides_with_its_headers() {
    let l = limits(RULES);
    let route = l.for_route("api", &["ip".into(), "watch".into()]).unwrap();
    let now = Instant::now();
    let peer: IpAddr = "192.0.2.1".parse().unwrap();
    let h = HeaderMap::new();
    // Two pass (the dry-run rule would refuse the second), the third
    // is refused by "ip".
    for remaining in [1, 0] {
        match block(route.check(&h, peer, now)) {
            Ruling::Pass { report, delay } => {
                let r = report.unwrap();
                assert_eq!((r.limit, r.remaining), (2, remaining));
                assert_eq!(delay, Duration::ZERO);
            }
            Ruling::Refuse(_) => panic!("refused"),
        }
    }
    let Ruling::Refuse(r) = block(route.check(&h, peer, now)) else {
        panic!("passed")
    };
    let mut out = HeaderMap::new();
    r.apply(&mut out);
    assert_eq!(out["ratelimit-limit"], "2");
    assert_eq!(out["ratelimit-remaining"], "0");
    assert_eq!(out["x-ratelimit-remaining"], "0");
    assert_eq!(out["retry-after"], "1");
    assert_eq!(r.status, StatusCode::TOO_MANY_REQUESTS);
    // Another client is not affected.
    let other: IpAddr = "192.0.2.2".parse().unwrap();
    assert!(matches!(
        block(route.check(&h, other, now)),
        Ruling::Pass { .. }
    ));
    // A route without rules has nothing to check.
    assert!(l.for_route("web", &[]).is_none());
}

#[test]
fn tiers_pick_the_limit() {
    let l = limits(RULES);
    let route = l.for_route("api", &["plan".into()]).unwrap();
    let now = Instant::now();
    let peer: IpAddr = "192.0.2.1".parse().unwrap();
    let passed = |h: &HeaderMap| {
        (0..5)
            .filter(|_| matches!(block(route.check(h, peer, now)), Ruling::Pass { .. }))
            .count()
    };
    assert_eq!(passed(&headers(&[("x-user", "a"), ("x-plan", "PAID")])), 3);
    assert_eq!(passed(&headers(&[("x-user", "b"), ("x-plan", "free")])), 1);
    // Unknown plan: the default tier.
    assert_eq!(passed(&headers(&[("x-user", "c"), ("x-plan", "gold")])), 1);
    assert_eq!(passed(&headers(&[("x-user", "d")])), 1);
}

#[test]
fn unchanged_rules_keep_their_tables_across_builds() {
    let registry = Registry::default();
    let metrics = Metrics::new();
    let build = |toml: &str| {
        let config = crate::config::parse(
            Path::new("t.toml"),
            &format!("[server]\nallow_no_listeners = true\n{toml}"),
        )
        .unwrap();
        RateLimits::build(&config.rate_limit, &registry, &metrics)
    };
    let a = build(RULES);
    // Moved in the file, not changed: the same tables.
    let b = build(&format!("# a comment\n\n{RULES}"));
    assert!(Arc::ptr_eq(
        &a.rules["ip"].base.as_ref().unwrap().table,
        &b.rules["ip"].base.as_ref().unwrap().table
    ));
    let c = build(&RULES.replace("limit = 2", "limit = 5"));
    assert!(!Arc::ptr_eq(
        &a.rules["ip"].base.as_ref().unwrap().table,
        &c.rules["ip"].base.as_ref().unwrap().table
    ));
    assert!(Arc::ptr_eq(
        &a.rules["watch"].base.as_ref().unwrap().table,
        &c.rules["watch"].base.as_ref().unwrap().table
    ));
    // A new size is a new table (the old one would keep the old size).
    let d = build(&RULES.replace("headers = \"both\"", "headers = \"both\"\nmax_keys = 10"));
    assert!(!Arc::ptr_eq(
        &a.rules["watch"].base.as_ref().unwrap().table,
        &d.rules["watch"].base.as_ref().unwrap().table
    ));
}

#[test]
fn a_lease_that_cannot_be_taken_follows_on_store_error() {
    // Nothing listens on port 1: every lease request fails at once.
    let l = limits(
        r#"
[rate_limit]
store = "redis"
redis_url = "redis://127.0.0.1:1"
[[rate_limit.rules]]
name = "open"
limit = 5
on_store_error = "allow"
[[rate_limit.rules]]
name = "closed"
limit = 5
on_store_error = "deny"
[[rate_limit.rules]]
name = "fallback"
limit = 2
on_store_error = "local"
[[rate_limit.rules]]
name = "exact"
limit = 5
redis_mode = "exact"
"#,
    );
    let status = l.status().to_string();
    assert!(status.contains(r#""mode":"lease""#), "{status}");
    assert!(status.contains(r#""mode":"exact""#), "{status}");
    let peer: IpAddr = "192.0.2.1".parse().unwrap();
    let h = HeaderMap::new();
    let passed = |rule: &str| {
        let route = l.for_route("api", &[rule.into()]).unwrap();
        (0..4)
            .filter(|_| {
                matches!(
                    block(route.check(&h, peer, Instant::now())),
                    Ruling::Pass { .. }
                )
            })
            .count()
    };
    assert_eq!(passed("open"), 4);
    assert_eq!(passed("closed"), 0);
    assert_eq!(passed("fallback"), 2);
    let errors = |rule: &str| l.rules[rule].store_errors.get();
    assert_eq!((errors("open"), errors("closed")), (4, 4));
}
