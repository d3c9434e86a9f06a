//! The live dashboard in a real browser: headless Chromium driven over
//! WebDriver (chromedriver, Debian's `chromium` and `chromium-driver`)
//! against a running Levee with real backends.
//!
//! One test, one browser: it is the expensive part (CI has 2 cores).

mod support;

use std::net::SocketAddr;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use fantoccini::wd::{Capabilities, WebDriverCompatibleCommand};
use fantoccini::{Client, ClientBuilder, Locator};
use serde_json::{Value, json};
use support::*;

const TOKEN: &str = "dash-s3cret";
/// Generous: the machine may be loaded.
const T: Duration = Duration::from_secs(30);

/// chromedriver as a child process, killed when dropped.
struct Driver {
    child: Child,
    addr: SocketAddr,
}

impl Driver {
    fn start() -> Driver {
        let addr = free_addr();
        let child = Command::new("chromedriver")
            .arg(format!("--port={}", addr.port()))
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("chromedriver (Debian package chromium-driver; scripts/test.sh installs it)");
        let driver = Driver { child, addr };
        assert!(
            wait_until(T, || http_get(addr, "/status")
                .is_ok_and(|r| r.status == 200)),
            "chromedriver did not answer on {addr}"
        );
        driver
    }
}

impl Drop for Driver {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// chromedriver's browser log (`goog:loggingPrefs`), read through its
/// `se/log` endpoint; fantoccini has no call for it.
#[derive(Debug)]
struct BrowserLog;

impl WebDriverCompatibleCommand for BrowserLog {
    fn endpoint(
        &self,
        base: &url::Url,
        session: Option<&str>,
    ) -> Result<url::Url, url::ParseError> {
        base.join(&format!("session/{}/se/log", session.unwrap_or("")))
    }

    fn method_and_body(&self, _: &url::Url) -> (http::Method, Option<String>) {
        (
            http::Method::POST,
            Some(json!({"type": "browser"}).to_string()),
        )
    }
}

async fn browser(driver: &Driver) -> Client {
    let mut caps = Capabilities::new();
    caps.insert(
        "goog:chromeOptions".into(),
        json!({
            "binary": "/usr/bin/chromium",
            // As root (CI), Chromium runs only without its sandbox.
            "args": ["--headless=new", "--no-sandbox", "--disable-gpu",
                     "--disable-dev-shm-usage", "--window-size=1280,1000"],
        }),
    );
    caps.insert("goog:loggingPrefs".into(), json!({"browser": "ALL"}));
    ClientBuilder::new(hyper_util::client::legacy::connect::HttpConnector::new())
        .capabilities(caps)
        .connect(&format!("http://{}", driver.addr))
        .await
        .expect("a Chromium session through chromedriver")
}

/// The value of `attr` on the first element matching `css`, if any.
async fn attr(c: &Client, css: &str, attr: &str) -> Option<String> {
    let e = c.find(Locator::Css(css)).await.ok()?;
    e.attr(attr).await.ok().flatten()
}

/// Polls an async condition every 100 ms until it holds or `T` passes.
async fn wait_for<F, Fut>(what: &str, mut cond: F) -> Duration
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let started = Instant::now();
    while !cond().await {
        assert!(started.elapsed() < T, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    started.elapsed()
}

fn endpoint_css(cluster: &str, addr: SocketAddr) -> String {
    format!(r#"[data-endpoint="{cluster}/{addr}"]"#)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_dashboard_shows_every_endpoint_and_a_killed_one_turning_unhealthy() {
    let mut b1 = Backend::start("b1");
    let b2 = Backend::start("b2");
    let b3 = Backend::start("b3");
    let listen = free_addr();
    let check = r#"health_check = { interval = "200ms", jitter = "0s", timeout = "200ms" }"#;
    let cfg = ConfigBuilder::new()
        .set("admin", &format!("token = {TOKEN:?}"))
        .listener("main", listen)
        .cluster_with("app", &[b1.addr(), b2.addr()], &[check])
        .cluster_with("api", &[b3.addr()], &[check])
        .route_with(
            "api",
            "api",
            &[
                r#"path_prefix = "/api""#,
                r#"slo = { target = 99.9, latency_targets = { p99 = "500ms" } }"#,
            ],
        )
        .route("all", "app");
    let levee = Levee::start(&cfg.build());
    let admin = levee.admin_addr();
    // Some traffic for the rates and sparklines.
    for i in 0..30 {
        let path = if i % 2 == 0 { "/api/x" } else { "/" };
        let r = http_get(listen, path).expect("proxied request");
        assert_eq!(r.status, 200);
    }

    // The same token rules as the rest of the admin API.
    let r = http_get(admin, "/dashboard").expect("dashboard");
    assert_eq!(r.status, 401, "{}", r.text());
    let r = http_get(admin, "/dashboard?token=wrong").expect("dashboard");
    assert_eq!(r.status, 401, "{}", r.text());
    let r = levee.admin_get("/dashboard").expect("dashboard");
    assert_eq!(r.status, 200);
    assert!(r.text().contains("/dashboard/app.js"));

    let driver = Driver::start();
    let client = browser(&driver).await;
    // A reference, so that each polled condition (`async move`) can copy it.
    let c = &client;
    // The token in the address once: a cookie, and on to /dashboard.
    c.goto(&format!("http://{admin}/dashboard?token={TOKEN}"))
        .await
        .expect("open the dashboard");
    let url = c.current_url().await.expect("url");
    assert_eq!(url.path(), "/dashboard");
    assert_eq!(url.query(), None, "the token stays in the address: {url}");

    // Every endpoint, healthy; every route, with its numbers.
    let endpoints = [("app", b1.addr()), ("app", b2.addr()), ("api", b3.addr())];
    wait_for("every endpoint healthy on the page", || async move {
        for (cluster, addr) in endpoints {
            if attr(c, &endpoint_css(cluster, addr), "data-state")
                .await
                .as_deref()
                != Some("healthy")
            {
                return false;
            }
        }
        true
    })
    .await;
    for route in ["api", "all"] {
        let row = c
            .find(Locator::Css(&format!(r#"[data-route="{route}"]"#)))
            .await
            .unwrap_or_else(|_| panic!("route {route} on the page"));
        assert!(row.text().await.expect("text").contains(route));
    }
    // The SLO gauge of the route with an SLO: nothing spent yet.
    wait_for("the api route's SLO budget gauge", || async move {
        attr(c, r#"[data-route="api"] [data-budget]"#, "data-budget")
            .await
            .is_some_and(|b| b == "1.0000")
    })
    .await;

    // Each route's availability composed from the live topology (GET
    // /availability: the endpoints' observed tries through their
    // clusters) is on the page, the same number as the API's.
    let report: Value = levee
        .admin_get("/availability")
        .expect("GET /availability")
        .json()
        .expect("JSON");
    for route in ["api", "all"] {
        let r = report["routes"]
            .as_array()
            .and_then(|l| l.iter().find(|r| r["name"] == route))
            .unwrap_or_else(|| panic!("route {route} in GET /availability: {report}"));
        let a = &r["availability"];
        let want = a["window"]
            .as_f64()
            .or_else(|| a["since_start"].as_f64())
            .unwrap_or_else(|| panic!("route {route} has an availability: {r}"));
        assert!((0.0..=1.0).contains(&want), "{r}");
        let css = format!(r#"[data-route="{route}"] [data-availability]"#);
        let (css, want_attr) = (&css, &format!("{want:.6}"));
        wait_for("the route's availability on the page", || async move {
            attr(c, css, "data-availability").await.as_deref() == Some(want_attr.as_str())
        })
        .await;
        let text = c
            .find(Locator::Css(css))
            .await
            .expect("availability cell")
            .text()
            .await
            .expect("text");
        assert!(
            text.starts_with(&format!("{:.3} %", want * 100.0)),
            "{route}: {text:?}, want {want}"
        );
    }

    // The service level control goes through PUT /degradation.
    assert_eq!(
        attr(c, "#level", "data-level").await.as_deref(),
        Some("full")
    );
    c.find(Locator::Css("#level-set"))
        .await
        .expect("level control")
        .select_by_value("degraded")
        .await
        .expect("select degraded");
    wait_for("the level set by hand", || async move {
        attr(c, "#level", "data-level").await.as_deref() == Some("degraded")
    })
    .await;
    let level: Value = levee.admin_get("/degradation").unwrap().json().unwrap();
    assert_eq!(level["manual"], "degraded", "{level}");
    c.find(Locator::Css("#level-set"))
        .await
        .expect("level control")
        .select_by_value("auto")
        .await
        .expect("select auto");
    wait_for("the level back to auto", || async move {
        attr(c, "#level", "data-level").await.as_deref() == Some("full")
    })
    .await;

    // A killed backend turns unhealthy on the page, and its health event
    // arrives in the feed over SSE.
    let (b1_addr, b2_addr) = (b1.addr(), b2.addr());
    b1.stop();
    let took = wait_for("b1 unhealthy on the page", || async move {
        attr(c, &endpoint_css("app", b1_addr), "data-state")
            .await
            .as_deref()
            == Some("unhealthy")
    })
    .await;
    println!("killed backend unhealthy on the page after {took:?}");
    let b1_text = &b1_addr.to_string();
    wait_for("b1's health event in the feed", || async move {
        let Ok(items) = c
            .find_all(Locator::Css(r#"#events li[data-kind="health"]"#))
            .await
        else {
            return false;
        };
        for li in items {
            if li
                .text()
                .await
                .is_ok_and(|t| t.contains(b1_text.as_str()) && t.contains("unhealthy"))
            {
                return true;
            }
        }
        false
    })
    .await;
    assert_eq!(
        attr(c, &endpoint_css("app", b2_addr), "data-state")
            .await
            .as_deref(),
        Some("healthy")
    );

    // No console errors all along.
    let log = c.issue_cmd(BrowserLog).await.expect("browser log");
    let errors: Vec<&Value> = log
        .as_array()
        .expect("log entries")
        .iter()
        .filter(|e| e["level"] == "SEVERE")
        .collect();
    assert!(errors.is_empty(), "console errors: {errors:?}");
    client.close().await.expect("close the browser");
    drop(levee);
}
