//! Traffic split between clusters on one route: a weighted canary, sticky
//! by a key when asked; and a header-matched canary route in front of it.

mod support;

use std::collections::HashMap;
use std::time::Duration;

use support::*;

const T: Duration = Duration::from_secs(5);

fn config(listen: std::net::SocketAddr, stable: &Backend, canary: &Backend, extra: &str) -> String {
    ConfigBuilder::new()
        .listener("main", listen)
        .cluster("stable", &[stable.addr()])
        .cluster("canary", &[canary.addr()])
        .raw(&format!(
            "[[routes]]\nname = \"canary-by-header\"\nheaders = {{ \"x-canary\" = \"true\" }}\ncluster = \"canary\"\n\n\
             [[routes]]\nname = \"web\"\nsplit = [{{ cluster = \"stable\", weight = 90 }}, {{ cluster = \"canary\", weight = 10 }}]\n{extra}\n"
        ))
        .build()
}

fn backend_of(listen: std::net::SocketAddr, headers: &[(&str, &str)]) -> String {
    let r = http_request(listen, "GET", "/", headers, b"", T).expect("request");
    assert_eq!(r.status, 200);
    r.header("x-backend").unwrap_or("?").to_owned()
}

#[test]
fn ninety_ten_split_and_header_canary() {
    let (stable, canary) = (Backend::start("stable"), Backend::start("canary"));
    let listen = free_addr();
    let levee = Levee::start(&config(listen, &stable, &canary, ""));
    let mut counts: HashMap<String, u32> = HashMap::new();
    for _ in 0..1000 {
        *counts.entry(backend_of(listen, &[])).or_default() += 1;
    }
    let to_canary = counts.get("canary").copied().unwrap_or(0);
    println!("90/10 split over 1000 requests: {counts:?}");
    assert!(
        (70..=130).contains(&to_canary),
        "canary got {to_canary} of 1000"
    );
    // The header route wins: always the canary.
    for _ in 0..20 {
        assert_eq!(backend_of(listen, &[("X-Canary", "true")]), "canary");
    }
    // Requests are counted per route and per cluster of the split (when the
    // response is done, which can be a moment after the client has it).
    let counted = wait_until(T, || {
        levee.metric(
            "levee_requests_total",
            &[("route", "web"), ("cluster", "canary")],
        ) == Some(f64::from(to_canary))
    });
    assert!(counted, "canary requests not counted as {to_canary}");
}

#[test]
fn sticky_split_keeps_each_user_on_one_side() {
    let (stable, canary) = (Backend::start("stable"), Backend::start("canary"));
    let listen = free_addr();
    let _levee = Levee::start(&config(
        listen,
        &stable,
        &canary,
        "split_key = \"header:X-User\"",
    ));
    let mut canary_users = 0;
    for user in 0..200 {
        let id = format!("user-{user}");
        let first = backend_of(listen, &[("X-User", &id)]);
        for _ in 0..3 {
            assert_eq!(backend_of(listen, &[("X-User", &id)]), first, "{id} moved");
        }
        canary_users += u32::from(first == "canary");
    }
    println!("sticky 90/10: {canary_users} of 200 users on the canary");
    assert!(
        (8..=40).contains(&canary_users),
        "{canary_users} of 200 users on the canary"
    );
}

#[test]
fn split_config_errors() {
    let base = "[[clusters]]\nname = \"a\"\n[[clusters]]\nname = \"b\"\n[[routes]]\nname = \"r\"\n";
    let cases = [
        (
            "cluster = \"a\"\nsplit = [{ cluster = \"b\", weight = 1 }]",
            "routes[0].cluster",
            "not both",
        ),
        (
            "split = [{ cluster = \"nope\", weight = 1 }]",
            "routes[0].split[0].cluster",
            "no cluster named \"nope\"",
        ),
        (
            "split = [{ cluster = \"a\", weight = 0 }]",
            "routes[0].split",
            "every weight is 0",
        ),
        (
            "split = [{ cluster = \"a\", weight = 20000 }]",
            "routes[0].split[0].weight",
            "0 to 10000",
        ),
        (
            "path = \"/\"",
            "routes[0].cluster",
            "set `cluster` or `split`",
        ),
    ];
    for (route, key, message) in cases {
        let (code, _, stderr) = Levee::check(&format!("{base}{route}\n"));
        assert_eq!(code, 1, "{route}: {stderr}");
        assert!(
            stderr.contains(key) && stderr.contains(message),
            "{route}: {stderr}"
        );
    }
}
