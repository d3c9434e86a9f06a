//! Session affinity by cookie: a client stays on its endpoint; when that
//! endpoint goes away the session moves (and the cookie is re-issued)
//! instead of failing.

mod support;

use std::time::Duration;

use support::*;

const T: Duration = Duration::from_secs(5);

/// (backend, Set-Cookie) of one request carrying `cookie`.
fn get(listen: std::net::SocketAddr, cookie: Option<&str>) -> (String, Option<String>) {
    let header = cookie.map(|c| format!("theme=dark; lv={c}"));
    let headers: Vec<(&str, &str)> = header.iter().map(|h| ("Cookie", h.as_str())).collect();
    let r = http_request(listen, "GET", "/", &headers, b"", T).expect("request");
    assert_eq!(r.status, 200, "{}", r.text());
    (
        r.header("x-backend").unwrap_or("?").to_owned(),
        r.header("set-cookie").map(str::to_owned),
    )
}

fn token(set_cookie: &str) -> String {
    let value = set_cookie.strip_prefix("lv=").expect("lv cookie");
    value.split(';').next().unwrap_or("").to_owned()
}

#[test]
fn cookie_pins_a_session_and_moves_it_when_its_endpoint_goes() {
    let mut backends: Vec<Backend> = ["b1", "b2", "b3"]
        .iter()
        .map(|n| Backend::start(n))
        .collect();
    let addrs: Vec<_> = backends.iter().map(Backend::addr).collect();
    let listen = free_addr();
    let config = ConfigBuilder::new()
        .listener("main", listen)
        .cluster_with("app", &addrs, &["affinity_cookie = \"lv\""])
        .route("all", "app")
        .build();
    let levee = Levee::start(&config);

    let (first, set) = get(listen, None);
    let set = set.expect("a new session gets a cookie");
    assert!(set.contains("Path=/") && set.contains("HttpOnly"), "{set}");
    let t = token(&set);
    assert_eq!(t.len(), 16, "an opaque token: {t}");
    assert!(
        !addrs.iter().any(|a| set.contains(&a.port().to_string())),
        "the address leaks: {set}"
    );
    for _ in 0..10 {
        let (b, again) = get(listen, Some(&t));
        assert_eq!(b, first, "the session moved while its endpoint was fine");
        assert_eq!(again, None, "the cookie is not re-issued needlessly");
    }

    // Its endpoint dies: the next request is served elsewhere, with a new cookie.
    let i = backends
        .iter()
        .position(|b| b.name() == first)
        .expect("pinned backend");
    backends[i].stop();
    let (moved_to, set) = get(listen, Some(&t));
    assert_ne!(moved_to, first);
    let t2 = token(&set.expect("cookie re-issued after the move"));
    assert_ne!(t2, t);
    for _ in 0..5 {
        assert_eq!(get(listen, Some(&t2)).0, moved_to);
    }

    // Draining its new endpoint moves it again, without an error.
    let j = backends
        .iter()
        .position(|b| b.name() == moved_to)
        .expect("backend");
    let path = format!("/clusters/app/endpoints/{}/drain", addrs[j]);
    assert_eq!(
        levee
            .admin_request("POST", &path, b"")
            .expect("drain")
            .status,
        200
    );
    let (third, set) = get(listen, Some(&t2));
    assert!(third != moved_to && third != first, "{third}");
    assert!(set.is_some());

    // An unknown or forged token is just a new session.
    let (_, set) = get(listen, Some("not-a-token"));
    assert!(set.is_some());
}

#[test]
fn affinity_cookie_name_is_validated() {
    let (code, _, stderr) =
        Levee::check("[[clusters]]\nname = \"a\"\naffinity_cookie = \"bad name\"\n");
    assert_eq!(code, 1);
    assert!(
        stderr.contains("clusters[0].affinity_cookie") && stderr.contains("not a cookie name"),
        "{stderr}"
    );
}
