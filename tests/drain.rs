//! Draining an endpoint through the admin API: no new requests reach it,
//! requests in flight finish.

mod support;

use std::time::Duration;

use support::*;

const T: Duration = Duration::from_secs(5);

#[test]
fn drain_stops_new_requests_and_lets_in_flight_finish() {
    let b1 = Backend::start("b1");
    let b2 = Backend::start("b2");
    let listen = free_addr();
    let config = ConfigBuilder::simple(listen, &[b1.addr(), b2.addr()])
        .set("server", "workers = 1")
        .build();
    let levee = Levee::start(&config);

    // Round robin's first pick is b1: a slow request is now in flight there.
    let slow = std::thread::spawn(move || {
        http_request(
            listen,
            "GET",
            "/?delay=1s",
            &[],
            b"",
            Duration::from_secs(10),
        )
    });
    assert!(
        wait_until(T, || b1.in_flight() == 1),
        "slow request not at b1"
    );

    let path = format!("/clusters/app/endpoints/{}/drain", b1.addr());
    let r = levee.admin_request("POST", &path, b"").expect("drain");
    assert_eq!(r.status, 200, "{}", r.text());
    let body = r.json().expect("json");
    assert_eq!(body["state"], "draining");
    assert_eq!(body["in_flight"], 1);

    for _ in 0..20 {
        let r = http_get(listen, "/").expect("request");
        assert_eq!(r.status, 200);
        assert_eq!(
            r.header("x-backend"),
            Some("b2"),
            "a drained endpoint got a new request"
        );
    }
    let done = slow.join().expect("thread").expect("slow request");
    assert_eq!(done.status, 200);
    assert_eq!(done.header("x-backend"), Some("b1"));
    assert_eq!(b1.requests(), 1);

    let status = levee.status_json();
    let endpoints = status["clusters"][0]["endpoints"]
        .as_array()
        .expect("endpoints")
        .clone();
    let drained = endpoints
        .iter()
        .find(|e| e["address"] == b1.addr().to_string())
        .expect("b1 in status");
    assert_eq!(drained["state"], "draining");
    assert_eq!(drained["usable"], false);
    assert_eq!(
        levee.metric(
            "levee_endpoint_state",
            &[("endpoint", &b1.addr().to_string()), ("state", "draining")]
        ),
        Some(1.0)
    );

    // Unknown endpoints are a 404 that says what exists.
    let r = levee
        .admin_request("POST", "/clusters/app/endpoints/127.0.0.1:1/drain", b"")
        .expect("drain");
    assert_eq!(r.status, 404);
    // Draining the last endpoint leaves nothing: even panic mode skips it.
    let path = format!("/clusters/app/endpoints/{}/drain", b2.addr());
    assert_eq!(
        levee
            .admin_request("POST", &path, b"")
            .expect("drain")
            .status,
        200
    );
    assert_eq!(http_get(listen, "/").expect("request").status, 503);

    // Undrain takes b1 back (no active checks here: straight to healthy).
    let path = format!("/clusters/app/endpoints/{}/undrain", b1.addr());
    let r = levee.admin_request("POST", &path, b"").expect("undrain");
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(r.json().expect("json")["state"], "healthy");
    for _ in 0..5 {
        let r = http_get(listen, "/").expect("request");
        assert_eq!(r.status, 200);
        assert_eq!(r.header("x-backend"), Some("b1"));
    }
}
