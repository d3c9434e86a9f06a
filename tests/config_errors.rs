//! `levee check --config FILE` refuses every kind of mistake with one precise
//! line, `FILE:LINE:COLUMN: KEY: message`, and says what would be valid;
//! `levee run` refuses the same file before listening on anything.
//!
//! Each config below is written out in full, with the offending value on a
//! known line; `assert_refused` also checks that the expected line:column
//! really points at the offending text, so a miscounted expectation fails
//! loudly instead of pinning a wrong position.
//! Run with `cargo test --test config_errors`.

mod support;

use std::net::{SocketAddr, TcpStream};
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::Duration;

use support::*;

/// Asserts that `levee check` refuses `toml` with exit code 1, nothing on
/// stdout, and exactly one line on stderr:
/// `<tempdir>/levee.toml:{line}:{col}: {key}: {message}` (no `{key}: ` part
/// when `key` is empty). `points_at` is the text expected at line:col.
#[track_caller]
fn assert_refused(toml: &str, line: usize, col: usize, points_at: &str, key: &str, message: &str) {
    assert_eq!(
        text_at(toml, line, col).get(..points_at.len()),
        Some(points_at),
        "test bug: {line}:{col} does not point at {points_at:?} in\n{toml}"
    );
    let (code, stdout, stderr) = Levee::check(toml);
    assert_eq!(code, 1, "exit code; stdout {stdout:?}, stderr {stderr:?}");
    assert_eq!(stdout, "", "nothing on stdout when refused");
    let lines: Vec<&str> = stderr.lines().collect();
    assert_eq!(lines.len(), 1, "exactly one error line, got {stderr:?}");
    let key_part = if key.is_empty() {
        String::new()
    } else {
        format!(" {key}:")
    };
    let want = format!("/levee.toml:{line}:{col}:{key_part} {message}");
    let Some(path) = lines[0].strip_suffix(&want) else {
        panic!(
            "error line\n  got:  {:?}\n  want: \"<tempdir>{want}\"",
            lines[0]
        );
    };
    assert!(
        path.starts_with('/') && !path.contains(':'),
        "the error starts with the file's path, got {:?}",
        lines[0]
    );
}

/// The text from 1-based `line` and `col` (in characters) to the line's end.
fn text_at(toml: &str, line: usize, col: usize) -> &str {
    let l = toml.lines().nth(line - 1).unwrap_or("");
    let start = l.char_indices().nth(col - 1).map_or(l.len(), |(i, _)| i);
    &l[start..]
}

/// A complete valid config; the refused ones below differ from it by one
/// mistake.
const VALID: &str = r#"# A valid config.
[server]
workers = 1
drain_timeout = "5s"

[admin]
address = "127.0.0.1:19900"

[[listeners]]
name = "main"
address = "127.0.0.1:18080"
max_body_bytes = "10MiB"

[[clusters]]
name = "app"
balance = "weighted_round_robin"

[[clusters.endpoints]]
address = "127.0.0.1:19001"
weight = 2

[[clusters.endpoints]]
address = "127.0.0.1:19002"

[[routes]]
name = "api"
listeners = ["main"]
path_prefix = "/api"
methods = ["GET", "POST"]
cluster = "app"

[[routes]]
name = "health"
path = "/health"
cluster = "app"
"#;

#[test]
fn valid_config_prints_ok_and_exits_0() {
    let (code, stdout, stderr) = Levee::check(VALID);
    assert_eq!(code, 0, "stderr: {stderr}");
    assert_eq!(stderr, "");
    let line = stdout.trim_end();
    assert!(
        line.starts_with('/')
            && line.ends_with("/levee.toml: ok (1 listeners, 2 routes, 1 clusters)"),
        "stdout: {stdout:?}"
    );
}

#[test]
fn unknown_key_lists_the_valid_keys() {
    let toml = r#"[admin]
address = "127.0.0.1:19900"

listners = []
"#;
    // Under [admin] (a misplaced top-level key): the admin table's keys.
    assert_refused(
        toml,
        4,
        1,
        "listners",
        "admin.listners",
        "unknown field `listners`, expected one of `enabled`, `address`, `token`",
    );
    // Before any table header: the top-level keys.
    let toml = "listners = []\n\n[admin]\naddress = \"127.0.0.1:19900\"\n";
    assert_refused(
        toml,
        1,
        1,
        "listners",
        "listners",
        "unknown field `listners`, expected one of `server`, `admin`, `access_log`, `listeners`, `routes`, `clusters`, `degradation`, `rate_limit`, `dns`, `chaos`, `faults`, `slo`, `tracing`",
    );
}

#[test]
fn unknown_key_in_a_listener_lists_valid_keys() {
    let toml = r#"[[listeners]]
name = "main"
address = "127.0.0.1:18080"
max_conections = 10
"#;
    assert_refused(
        toml,
        4,
        1,
        "max_conections",
        "listeners[0].max_conections",
        "unknown field `max_conections`, expected one of `name`, `address`, `protocol`, `max_connections`, `header_timeout`, `idle_timeout`, `max_header_bytes`, `max_body_bytes`, `max_connections_per_ip`, `http2`, `cluster`, `connect_attempts`, `tls`, `proxy_protocol`, `sni`, `redirect_https`, `https_port`, `websocket`, `copy`, `half_close`",
    );
}

#[test]
fn unknown_key_in_an_endpoint_and_in_server() {
    let toml = r#"[[clusters]]
name = "app"

[[clusters.endpoints]]
address = "127.0.0.1:19001"
wieght = 2
"#;
    assert_refused(
        toml,
        6,
        1,
        "wieght",
        "clusters[0].endpoints[0].wieght",
        "unknown field `wieght`, expected one of `address`, `weight`, `backup`",
    );
    let toml = "[server]\ndrain_timout = \"1s\"\n";
    assert_refused(
        toml,
        2,
        1,
        "drain_timout",
        "server.drain_timout",
        "unknown field `drain_timout`, expected one of `workers`, `drain_timeout`, `http1`, `allow_no_listeners`, `pid_file`",
    );
}

#[test]
fn unknown_http1_engine() {
    assert_refused(
        "[server]\nhttp1 = \"nginx\"\n",
        2,
        9,
        "\"nginx\"",
        "server.http1",
        "unknown variant `nginx`, expected `hyper` or `levee`",
    );
}

#[test]
fn bad_socket_address() {
    let hint =
        r#"invalid socket address syntax; write IP:PORT, e.g. "127.0.0.1:8080" or "[::1]:8080""#;
    let toml = r#"[[listeners]]
name = "main"
address = "localhost:8080"
"#;
    assert_refused(
        toml,
        3,
        11,
        "\"localhost:8080\"",
        "listeners[0].address",
        hint,
    );

    let toml = r#"[[listeners]]
name = "main"
address = "127.0.0.1:99999"
"#;
    assert_refused(
        toml,
        3,
        11,
        "\"127.0.0.1:99999\"",
        "listeners[0].address",
        hint,
    );

    let toml = r#"[admin]
address = "127.0.0.1"
"#;
    assert_refused(toml, 2, 11, "\"127.0.0.1\"", "admin.address", hint);

    let toml = r#"[[clusters]]
name = "app"

[[clusters.endpoints]]
address = "127.0.0.1:19001"

[[clusters.endpoints]]
address = "backend-2"
"#;
    // An endpoint may be a host name (docs/configuration.md, endpoints by
    // name), but it needs a port.
    assert_refused(
        toml,
        8,
        11,
        "\"backend-2\"",
        "clusters[0].endpoints[1].address",
        r#"address "backend-2" has no port; write IP:PORT ("10.0.0.5:8080", "[::1]:8080"), HOST:PORT ("app:8080") or srv:NAME ("srv:_http._tcp.app.internal")"#,
    );
}

#[test]
fn bad_duration() {
    let toml = r#"[server]
workers = 1
drain_timeout = "10 days"
"#;
    assert_refused(
        toml,
        3,
        17,
        "\"10 days\"",
        "server.drain_timeout",
        r#"duration "10 days" has unknown unit "days"; valid units are ms, s, m, h"#,
    );
    let toml = r#"[server]
drain_timeout = "10"
"#;
    assert_refused(
        toml,
        2,
        17,
        "\"10\"",
        "server.drain_timeout",
        r#"duration "10" has no unit; write e.g. "250ms", "10s", "5m" or "1h""#,
    );
    let toml = r#"[server]
drain_timeout = 10
"#;
    assert_refused(
        toml,
        2,
        17,
        "10",
        "server.drain_timeout",
        r#"invalid type: integer `10`, expected a duration string such as "250ms", "10s", "5m" or "1h""#,
    );
    let toml = r#"[[listeners]]
name = "main"
address = "127.0.0.1:18080"
header_timeout = "soon"
"#;
    assert_refused(
        toml,
        4,
        18,
        "\"soon\"",
        "listeners[0].header_timeout",
        r#"duration "soon" does not start with a number; write e.g. "250ms" or "10s""#,
    );
}

#[test]
fn bad_size() {
    let toml = r#"[[listeners]]
name = "main"
address = "127.0.0.1:18080"
max_body_bytes = "10MB"
"#;
    assert_refused(
        toml,
        4,
        18,
        "\"10MB\"",
        "listeners[0].max_body_bytes",
        r#"size "10MB" has unknown unit "MB"; valid units are B, KiB, MiB, GiB"#,
    );
    let toml = r#"[[listeners]]
name = "main"
address = "127.0.0.1:18080"
max_header_bytes = "lots"
"#;
    assert_refused(
        toml,
        4,
        20,
        "\"lots\"",
        "listeners[0].max_header_bytes",
        r#"size "lots" does not start with a whole number; write e.g. 65536 or "64KiB""#,
    );
    let toml = r#"[[listeners]]
name = "main"
address = "127.0.0.1:18080"
max_body_bytes = -1
"#;
    assert_refused(
        toml,
        4,
        18,
        "-1",
        "listeners[0].max_body_bytes",
        "a size cannot be negative",
    );
}

#[test]
fn route_naming_a_missing_cluster_lists_defined_clusters() {
    let toml = r#"[[listeners]]
name = "main"
address = "127.0.0.1:18080"

[[clusters]]
name = "app"

[[clusters]]
name = "api"

[[routes]]
name = "r"
cluster = "ap"
"#;
    assert_refused(
        toml,
        13,
        11,
        "\"ap\"",
        "routes[0].cluster",
        r#"no cluster named "ap"; defined clusters: "app", "api""#,
    );
    let toml = r#"[[routes]]
name = "r"
cluster = "app"
"#;
    assert_refused(
        toml,
        3,
        11,
        "\"app\"",
        "routes[0].cluster",
        r#"no cluster named "app"; defined clusters: none"#,
    );
}

#[test]
fn route_naming_a_missing_listener_lists_defined_listeners() {
    let toml = r#"[[listeners]]
name = "main"
address = "127.0.0.1:18080"

[[listeners]]
name = "internal"
address = "127.0.0.1:18081"

[[clusters]]
name = "app"

[[routes]]
name = "r"
cluster = "app"
listeners = ["main", "mian"]
"#;
    assert_refused(
        toml,
        15,
        22,
        "\"mian\"",
        "routes[0].listeners[1]",
        r#"no listener named "mian"; defined listeners: "main", "internal""#,
    );
}

#[test]
fn duplicate_listener_name() {
    let toml = r#"[[listeners]]
name = "main"
address = "127.0.0.1:18080"

[[listeners]]
name = "main"
address = "127.0.0.1:18081"
"#;
    assert_refused(
        toml,
        6,
        8,
        "\"main\"",
        "listeners[1].name",
        r#"duplicate listener name "main"; names must be unique"#,
    );
}

#[test]
fn duplicate_cluster_name() {
    let toml = r#"[[clusters]]
name = "app"

[[clusters.endpoints]]
address = "127.0.0.1:19001"

[[clusters]]
name = "app"
"#;
    assert_refused(
        toml,
        8,
        8,
        "\"app\"",
        "clusters[1].name",
        r#"duplicate cluster name "app"; names must be unique"#,
    );
}

#[test]
fn duplicate_route_name() {
    let toml = r#"[[clusters]]
name = "app"

[[routes]]
name = "r"
path_prefix = "/a"
cluster = "app"

[[routes]]
name = "r"
path_prefix = "/b"
cluster = "app"
"#;
    assert_refused(
        toml,
        10,
        8,
        "\"r\"",
        "routes[1].name",
        r#"duplicate route name "r"; names must be unique"#,
    );
}

#[test]
fn duplicate_listener_address() {
    let toml = r#"[[listeners]]
name = "main"
address = "127.0.0.1:18080"

[[listeners]]
name = "other"
address = "127.0.0.1:18080"
"#;
    assert_refused(
        toml,
        7,
        11,
        "\"127.0.0.1:18080\"",
        "listeners[1].address",
        "address 127.0.0.1:18080 is already used by another listener",
    );
}

#[test]
fn duplicate_endpoint_in_a_cluster() {
    let toml = r#"[[clusters]]
name = "app"

[[clusters.endpoints]]
address = "127.0.0.1:19001"

[[clusters.endpoints]]
address = "127.0.0.1:19002"

[[clusters.endpoints]]
address = "127.0.0.1:19001"
"#;
    assert_refused(
        toml,
        11,
        11,
        "\"127.0.0.1:19001\"",
        "clusters[0].endpoints[2].address",
        r#"endpoint 127.0.0.1:19001 appears twice in cluster "app""#,
    );
}

#[test]
fn a_source_address_that_is_not_this_machines_or_twice() {
    // TEST-NET-3 (203.0.113.0/24) is never a machine's address: every
    // connection from it would fail, so the config is refused.
    let toml = r#"[[clusters]]
name = "app"
source_addresses = ["127.0.0.2", "203.0.113.7"]

[[clusters.endpoints]]
address = "127.0.0.1:19001"
"#;
    let (code, _, stderr) = Levee::check(toml);
    assert_eq!(code, 1, "{stderr}");
    assert!(
        stderr.contains("/levee.toml:3:34: clusters[0].source_addresses[1]: 203.0.113.7 cannot be a source address here (not an address of this machine?): "),
        "{stderr}"
    );
    let toml = r#"[[clusters]]
name = "app"
source_addresses = ["127.0.0.2", "127.0.0.2"]

[[clusters.endpoints]]
address = "127.0.0.1:19001"
"#;
    assert_refused(
        toml,
        3,
        34,
        "\"127.0.0.2\"",
        "clusters[0].source_addresses[1]",
        "source address 127.0.0.2 appears twice",
    );
}

#[test]
fn a_health_check_port_of_zero() {
    let toml = r#"[[clusters]]
name = "app"
health_check = { type = "http", port = 0 }

[[clusters.endpoints]]
address = "127.0.0.1:19001"
"#;
    assert_refused(
        toml,
        3,
        40,
        "0 }",
        "clusters[0].health_check.port",
        "0 is not a port: set 1-65535, or leave it unset to check the endpoint's own port",
    );
}

#[test]
fn send_and_expect_on_a_check_that_is_not_tcp() {
    let toml = r#"[[clusters]]
name = "app"
health_check = { type = "http", send = "PING" }

[[clusters.endpoints]]
address = "127.0.0.1:19001"
"#;
    assert_refused(
        toml,
        3,
        40,
        "\"PING\"",
        "clusters[0].health_check.send",
        "send and expect script a check of type = \"tcp\" only",
    );
}

#[test]
fn weight_zero() {
    let toml = r#"[[clusters]]
name = "app"
balance = "weighted_round_robin"

[[clusters.endpoints]]
address = "127.0.0.1:19001"
weight = 0
"#;
    assert_refused(
        toml,
        7,
        10,
        "0",
        "clusters[0].endpoints[0].weight",
        "weight 0 is out of range; valid weights are 1 to 10000",
    );
}

#[test]
fn path_not_starting_with_slash() {
    let toml = r#"[[clusters]]
name = "app"

[[routes]]
name = "r"
path = "api"
cluster = "app"
"#;
    assert_refused(
        toml,
        6,
        8,
        "\"api\"",
        "routes[0].path",
        r#""api" must start with '/'"#,
    );
    let toml = r#"[[clusters]]
name = "app"

[[routes]]
name = "r"
path_prefix = "api/"
cluster = "app"
"#;
    assert_refused(
        toml,
        6,
        15,
        "\"api/\"",
        "routes[0].path_prefix",
        r#""api/" must start with '/'"#,
    );
}

#[test]
fn both_path_and_path_prefix() {
    let toml = r#"[[clusters]]
name = "app"

[[routes]]
name = "r"
path = "/api"
path_prefix = "/api"
cluster = "app"
"#;
    assert_refused(
        toml,
        7,
        15,
        "\"/api\"",
        "routes[0].path_prefix",
        "a route matches either `path` (exact) or `path_prefix`, not both",
    );
}

#[test]
fn bad_method() {
    let toml = r#"[[clusters]]
name = "app"

[[routes]]
name = "r"
methods = ["GET", "get"]
cluster = "app"
"#;
    assert_refused(
        toml,
        6,
        19,
        "\"get\"",
        "routes[0].methods[1]",
        r#""get" is not an HTTP method; write it in upper case, e.g. "GET", "POST""#,
    );
    let toml = r#"[[clusters]]
name = "app"

[[routes]]
name = "r"
methods = ["FE TCH"]
cluster = "app"
"#;
    assert_refused(
        toml,
        6,
        12,
        "\"FE TCH\"",
        "routes[0].methods[0]",
        r#""FE TCH" is not an HTTP method; write it in upper case, e.g. "GET", "POST""#,
    );
}

#[test]
fn toml_syntax_error_has_position_and_no_key() {
    let toml = r#"[admin]
address = "127.0.0.1:19900"

[server
workers = 1
"#;
    assert_refused(toml, 4, 8, "", "", "unclosed table, expected `]`");

    let toml = r#"[server]
workers = 1
drain_timeout = "5s
"#;
    assert_refused(toml, 3, 20, "", "", "invalid basic string, expected `\"`");
}

#[test]
fn listener_address_clashing_with_admin_points_at_the_admin_address() {
    // The clash is the admin address's fault as much as the listener's;
    // either way the position must be a real one, not the top of the file.
    let toml = r#"# admin and a listener on the same port
[admin]
address = "127.0.0.1:18080"

[[listeners]]
name = "main"
address = "127.0.0.1:18080"
"#;
    assert_refused(
        toml,
        3,
        11,
        "\"127.0.0.1:18080\"",
        "admin.address",
        "address 127.0.0.1:18080 is also a listener's address",
    );
}

#[test]
fn max_connections_zero_points_at_the_value() {
    let toml = r#"[[listeners]]
name = "main"
address = "127.0.0.1:18080"
max_connections = 0
"#;
    assert_refused(
        toml,
        4,
        19,
        "0",
        "listeners[0].max_connections",
        "must be at least 1",
    );
}

/// `levee check` on a path given directly (not through `Levee::check`,
/// which always writes a readable file).
fn check_path(path: &Path) -> (i32, String, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_levee"))
        .arg("check")
        .arg("--config")
        .arg(path)
        .stdin(Stdio::null())
        .output()
        .expect("run levee check");
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[test]
fn unreadable_file() {
    let dir = tempfile::tempdir().expect("temp dir");

    let missing = dir.path().join("missing.toml");
    let (code, stdout, stderr) = check_path(&missing);
    assert_eq!((code, stdout.as_str()), (1, ""), "stderr: {stderr}");
    assert_eq!(
        stderr,
        format!(
            "{}: cannot read the file: No such file or directory (os error 2)\n",
            missing.display()
        )
    );

    let (code, stdout, stderr) = check_path(dir.path());
    assert_eq!((code, stdout.as_str()), (1, ""), "stderr: {stderr}");
    assert_eq!(
        stderr,
        format!(
            "{}: cannot read the file: Is a directory (os error 21)\n",
            dir.path().display()
        )
    );

    let binary = dir.path().join("binary.toml");
    std::fs::write(&binary, b"[server]\nworkers = 1 # \xff\xfe\n").expect("write");
    let (code, stdout, stderr) = check_path(&binary);
    assert_eq!((code, stdout.as_str()), (1, ""), "stderr: {stderr}");
    assert_eq!(
        stderr,
        format!(
            "{}: cannot read the file: stream did not contain valid UTF-8\n",
            binary.display()
        )
    );
}

fn refused_connect(addr: SocketAddr) -> bool {
    TcpStream::connect_timeout(&addr, Duration::from_secs(1)).is_err()
}

#[test]
fn run_with_a_bad_config_exits_non_zero_without_listening() {
    // Syntactically fine, valid listener and admin addresses: only the
    // route's cluster is missing, so nothing but validation stops it.
    let listen = free_addr();
    let admin = free_addr();
    let toml = format!(
        r#"[admin]
address = "{admin}"

[[listeners]]
name = "main"
address = "{listen}"

[[clusters]]
name = "app"

[[routes]]
name = "all"
cluster = "nope"
"#
    );
    let mut levee = Levee::spawn(&toml);
    let status = levee
        .wait_exit(Duration::from_secs(10))
        .expect("levee run exits on a bad config");
    assert!(!status.success(), "exit status {status}");
    assert_eq!(status.code(), Some(1), "exit status {status}");
    let stderr = levee.stderr_text();
    let want = format!(
        "{}:13:11: routes[0].cluster: no cluster named \"nope\"; defined clusters: \"app\"",
        levee.config_path().display()
    );
    assert!(
        stderr.contains(&want),
        "stderr should carry {want:?}, got:\n{stderr}"
    );
    assert!(
        !stderr.contains("levee is serving"),
        "never started serving:\n{stderr}"
    );
    assert!(refused_connect(listen), "nothing listens on {listen}");
    assert!(refused_connect(admin), "nothing listens on admin {admin}");
    assert_eq!(levee.stdout_text(), "");

    // And a syntax error the same way.
    let mut levee = Levee::spawn(&format!("[admin]\naddress = \"{admin}\"\n[[listeners]\n"));
    let status = levee.wait_exit(Duration::from_secs(10)).expect("exits");
    assert_eq!(status.code(), Some(1), "exit status {status}");
    let want = format!("{}:3:", levee.config_path().display());
    assert!(
        levee.stderr_text().contains(&want),
        "{}",
        levee.stderr_text()
    );
    assert!(refused_connect(admin), "nothing listens on admin {admin}");
}

// ---- A configuration must serve something (issue 9, item 0a) ----

const NO_LISTENER: &str = "no listener: Levee would serve nothing (is the file empty or cut short?); \
add a [[listeners]] table with a name and an address, or set server.allow_no_listeners = true \
to run with the admin API only";

#[test]
fn an_empty_or_comment_only_file_is_refused() {
    for toml in ["", "\n", "# nothing here yet\n"] {
        let (code, stdout, stderr) = Levee::check(toml);
        assert_eq!((code, stdout.as_str()), (1, ""), "{toml:?}: {stderr}");
        let want = format!("/levee.toml:1:1: listeners: {NO_LISTENER}\n");
        assert!(stderr.ends_with(&want), "{toml:?}: got {stderr:?}");
    }
    // Clusters and routes but no listener: the same.
    let toml = "[[clusters]]\nname = \"app\"\n[[routes]]\nname = \"all\"\ncluster = \"app\"\n";
    assert_refused(toml, 1, 1, "[[clusters]]", "listeners", NO_LISTENER);
    // `levee run` on an empty file: refused, exit 1, the admin API never up.
    let mut levee = Levee::spawn("# nothing yet\n");
    let status = levee.wait_exit(Duration::from_secs(10)).expect("exits");
    assert_eq!(status.code(), Some(1), "{}", levee.stderr_text());
    assert!(
        levee
            .stderr_text()
            .contains("levee: configuration refused: "),
        "{}",
        levee.stderr_text()
    );
    assert!(levee.stderr_text().contains(NO_LISTENER));
}

#[test]
fn the_admin_api_alone_only_when_the_file_says_so() {
    let toml = "[server]\nallow_no_listeners = true\n\n[admin]\naddress = \"127.0.0.1:19900\"\n";
    let (code, stdout, stderr) = Levee::check(toml);
    assert_eq!(code, 0, "stderr: {stderr}");
    assert!(
        stdout.ends_with("/levee.toml: ok (0 listeners, 0 routes, 0 clusters)\n"),
        "{stdout:?}"
    );
    // `levee run` on it: the admin API alone serves.
    let admin = free_addr();
    let levee = Levee::start(&format!(
        "[server]\nallow_no_listeners = true\n\n[admin]\naddress = \"{admin}\"\n"
    ));
    let status = levee.status_json();
    assert_eq!(
        status["listeners"].as_array().map(Vec::len),
        Some(0),
        "{status}"
    );
    drop(levee);
    // ...and not with the admin API off as well: then nothing would serve.
    let toml = "[server]\nallow_no_listeners = true\n\n[admin]\nenabled = false\n";
    assert_refused(
        toml,
        1,
        1,
        "[server]",
        "listeners",
        "no listener and the admin API disabled: Levee would serve nothing at all; \
         add a [[listeners]] table or enable the admin API",
    );
}

#[test]
fn a_listener_without_a_route_is_refused() {
    let toml = r#"[[listeners]]
name = "main"
address = "127.0.0.1:18080"

[[listeners]]
name = "side"
address = "127.0.0.1:18081"

[[clusters]]
name = "app"

[[routes]]
name = "api"
listeners = ["main"]
cluster = "app"
"#;
    assert_refused(
        toml,
        6,
        8,
        "\"side\"",
        "listeners[1]",
        "listener \"side\" has no route, so it could only answer 404; add a [[routes]] entry \
         that serves it (a route without `listeners` serves every listener)",
    );
    // No route at all.
    let toml = "[[listeners]]\nname = \"main\"\naddress = \"127.0.0.1:18080\"\n";
    let (code, _, stderr) = Levee::check(toml);
    assert_eq!(code, 1);
    assert!(
        stderr.contains(":2:8: listeners[0]: listener \"main\" has no route"),
        "{stderr}"
    );
}

#[test]
fn a_route_with_an_empty_listener_list_is_refused() {
    let toml = r#"[[listeners]]
name = "main"
address = "127.0.0.1:18080"

[[clusters]]
name = "app"

[[routes]]
name = "all"
cluster = "app"

[[routes]]
name = "nowhere"
listeners = []
cluster = "app"
"#;
    assert_refused(
        toml,
        13,
        8,
        "\"nowhere\"",
        "routes[1].listeners",
        "an empty list serves no listener; name at least one, or remove the key to serve every listener",
    );
}

// ---- Never accept and ignore a setting (issue 9, item 0b) ----

const WEIGHTLESS: &str = "picks by load and latency and cannot use weights; remove the weight, \
or choose a weighted algorithm (round_robin, least_conn, random, ip_hash, consistent_hash, maglev)";

#[test]
fn weights_on_an_algorithm_that_cannot_use_them_are_refused() {
    for balance in ["p2c", "least_response_time", "peak_ewma"] {
        let toml = format!(
            r#"[[clusters]]
name = "app"
balance = "{balance}"

[[clusters.endpoints]]
address = "127.0.0.1:19001"

[[clusters.endpoints]]
address = "127.0.0.1:19002"
weight = 3
"#
        );
        assert_refused(
            &toml,
            10,
            10,
            "3",
            "clusters[0].endpoints[1].weight",
            &format!("balance = \"{balance}\" {WEIGHTLESS}"),
        );
        // weight = 1 (the default, written out) changes nothing: accepted.
        let ok = toml.replace("weight = 3", "weight = 1")
            + "[[listeners]]\nname = \"m\"\naddress = \"127.0.0.1:18080\"\n\
               [[routes]]\nname = \"r\"\ncluster = \"app\"\n";
        let (code, _, stderr) = Levee::check(&ok);
        assert_eq!(code, 0, "{balance}: {stderr}");
    }
}

#[test]
fn keys_of_another_algorithm_are_refused() {
    let toml = r#"[[clusters]]
name = "app"
balance = "round_robin"
hash_key = "header:x-user"
"#;
    assert_refused(
        toml,
        4,
        12,
        "\"header:x-user\"",
        "clusters[0].hash_key",
        "only applies to balance = \"ip_hash\", \"consistent_hash\" or \"maglev\"; this cluster uses \"round_robin\"",
    );
    let toml = r#"[[clusters]]
name = "app"
balance = "maglev"
virtual_nodes = 100
"#;
    assert_refused(
        toml,
        4,
        17,
        "100",
        "clusters[0].virtual_nodes",
        "only applies to balance = \"consistent_hash\"; this cluster uses \"maglev\"",
    );
}

#[test]
fn a_split_key_without_a_split_is_refused() {
    let toml = r#"[[clusters]]
name = "app"

[[routes]]
name = "all"
cluster = "app"
split_key = "client_ip"
"#;
    assert_refused(
        toml,
        5,
        8,
        "\"all\"",
        "routes[0].split_key",
        "only applies to a route with `split`; this route sends everything to its `cluster`",
    );
}

#[test]
fn http_settings_on_a_tcp_check_and_a_status_that_never_passes_are_refused() {
    let toml = r#"[[clusters]]
name = "app"
health_check = { type = "tcp", path = "/ready" }
"#;
    assert_refused(
        toml,
        2,
        8,
        "\"app\"",
        "clusters[0].health_check.path",
        "only applies to type = \"http\"; a tcp check only connects",
    );
    let toml = r#"[[clusters]]
name = "app"
health_check = { expect_status = [200, 503] }
"#;
    assert_refused(
        toml,
        2,
        8,
        "\"app\"",
        "clusters[0].health_check.expect_status",
        "503 can never pass (503 means \"out of service\" and never passes); list statuses from 100 to 599 other than 503",
    );
}

#[test]
fn breaker_bulkhead_and_retry_settings_that_could_not_act_are_refused() {
    let toml = r#"[[clusters]]
name = "app"
circuit_breaker = { window = "10s", window_calls = 50 }
"#;
    assert_refused(
        toml,
        3,
        52,
        "50",
        "clusters[0].circuit_breaker.window_calls",
        "the window is either the last `window_calls` calls or the calls of the last `window`, not both; remove one",
    );
    let toml = r#"[[clusters]]
name = "app"
endpoint_circuit_breaker = { slow_call_rate = 0.5 }
"#;
    assert_refused(
        toml,
        3,
        47,
        "0.5",
        "clusters[0].endpoint_circuit_breaker.slow_call_rate",
        "needs slow_call_threshold (how slow a slow call is); set it or remove slow_call_rate",
    );
    let toml = r#"[[clusters]]
name = "app"
bulkhead = { max_concurrent = 10, queue_timeout = "2s" }
"#;
    assert_refused(
        toml,
        2,
        8,
        "\"app\"",
        "clusters[0].bulkhead.queue_timeout",
        "max_queue = 0 queues nothing, so there is no wait to bound; set max_queue or remove queue_timeout",
    );
    let toml = r#"[[clusters]]
name = "app"
response_timeout = "2s"
retry = { per_try_timeout = "2s" }
"#;
    assert_refused(
        toml,
        2,
        8,
        "\"app\"",
        "clusters[0].retry.per_try_timeout",
        "2s is not shorter than response_timeout 2s (the deadline over all tries), so it would never end a try; make it shorter or remove it",
    );
    let toml = r#"[[clusters]]
name = "app"
retry = { max_attempts = 1, retry_statuses = [503] }
"#;
    assert_refused(
        toml,
        3,
        47,
        "503",
        "clusters[0].retry.retry_statuses",
        "max_attempts = 1 makes no retry; raise max_attempts or remove retry_statuses",
    );
}

/// Issue 9, item 6e: type errors in the words of the file's reader, not
/// Rust's (`usize`, `u32`, `f64`, `struct RetryConfig`, `as i128`).
#[test]
fn type_errors_speak_toml_not_rust() {
    let cases = [
        (
            "[server]\nworkers = -1\n",
            "server.workers: invalid value: integer `-1`, expected a whole number (0 or more)",
        ),
        (
            "[server]\nworkers = 99999999999999999999\n",
            "server.workers: invalid type: integer `99999999999999999999`, expected a whole number (0 or more)",
        ),
        (
            "[[clusters]]\nname = \"a\"\npanic_threshold = 1.5\n",
            "clusters[0].panic_threshold: invalid type: decimal number `1.5`, expected a whole number from 0 to 4294967295",
        ),
        (
            "[admin]\nenabled = \"yes\"\n",
            "admin.enabled: invalid type: string \"yes\", expected true or false",
        ),
        (
            "[[clusters]]\nname = \"a\"\nretry = \"x\"\n",
            "clusters[0].retry: invalid type: string \"x\", expected a table, e.g. { key = value } or a [section]",
        ),
        (
            "[[routes]]\nname = \"r\"\nmethods = \"GET\"\n",
            "routes[0].methods: invalid type: string \"GET\", expected a list, e.g. [\"a\", \"b\"]",
        ),
    ];
    for (toml, want) in cases {
        let (code, _, stderr) = Levee::check(toml);
        assert_eq!(code, 1, "{toml}");
        assert!(stderr.trim_end().ends_with(want), "{toml}\n got: {stderr}");
        for rust in [
            "usize", "u32", "i128", "f64", "struct ", "boolean", "sequence",
        ] {
            assert!(!stderr.contains(rust), "{rust} leaked: {stderr}");
        }
    }
}

#[test]
fn rate_limit_settings_that_could_not_act_are_refused() {
    let toml = r#"[[rate_limit.rules]]
name = "per-ip"
limit = 5
on_store_error = "deny"
"#;
    assert_refused(
        toml,
        2,
        8,
        "\"per-ip\"",
        "rate_limit.rules[0].on_store_error",
        "only applies to a rule whose store is \"redis\"; this rule counts locally",
    );
    let toml = r#"[[rate_limit.rules]]
name = "per-ip"
key = ["client_ip", "route"]
limit = 5
on_missing_key = "skip"
"#;
    assert_refused(
        toml,
        2,
        8,
        "\"per-ip\"",
        "rate_limit.rules[0].on_missing_key",
        "only applies to a key with a header: or cookie: part, which a request may lack",
    );
}

/// Rewriting mistakes: each template, pattern and header name is checked at
/// load, and a route either forwards or answers itself.
#[test]
fn rewriting_mistakes_are_refused_with_their_key() {
    const BASE: &str = "[[listeners]]\nname = \"main\"\naddress = \"127.0.0.1:18080\"\n\n\
                        [[clusters]]\nname = \"app\"\n\n[[routes]]\nname = \"api\"\n";
    let cases: &[(&str, usize, usize, &str, &str, &str)] = &[
        (
            "cluster = \"app\"\nrequest_headers = { set = { \"x-client\" = \"$remote_addr\" } }",
            11,
            42,
            "\"$remote_addr\"",
            "routes[0].request_headers.set.x-client",
            "a lone '$' in \"$remote_addr\" ($remote_addr is nginx's spelling); write ${name} for a variable, e.g. ${client_addr}, and $$ for a '$'",
        ),
        (
            "cluster = \"app\"\nrequest_headers = { set = { \"x-served-by\" = \"${endpoint}\" } }",
            11,
            45,
            "\"${endpoint}\"",
            "routes[0].request_headers.set.x-served-by",
            "${endpoint} is known only once the request has gone upstream; use it in response_headers",
        ),
        (
            "cluster = \"app\"\nrewrite = { path_regex = { pattern = \"^/(a\", replace = \"/\" } }",
            11,
            38,
            "\"^/(a\"",
            "routes[0].rewrite.path_regex.pattern",
            "not a valid regular expression: unclosed group",
        ),
        (
            "cluster = \"app\"\nrewrite = { path_regex = { pattern = \"^/(a)\", replace = \"/$2\" } }",
            11,
            57,
            "\"/$2\"",
            "routes[0].rewrite.path_regex.replace",
            "\"/$2\" names group $2, which the pattern does not have (it has 1 numbered group(s)); write $$ for a '$'",
        ),
        (
            "cluster = \"app\"\nredirect = { status = 301, scheme = \"https\" }",
            10,
            11,
            "\"app\"",
            "routes[0].cluster",
            "a route has either `cluster` or `redirect`, not both",
        ),
        (
            "cluster = \"app\"\nresponse_headers = { remove = [\"Connection\"] }",
            11,
            32,
            "\"Connection\"",
            "routes[0].response_headers.remove[0]",
            "\"Connection\" cannot be rewritten: it is a hop-by-hop header",
        ),
        (
            "cluster = \"app\"\nrequest_headers = { add = { \"x bad\" = \"1\" } }",
            11,
            39,
            "\"1\"",
            "routes[0].request_headers.add.x bad",
            "\"x bad\" is not a valid header name",
        ),
        (
            "redirect = { status = 200 }",
            10,
            23,
            "200",
            "routes[0].redirect.status",
            "200 is not a redirect; use 301, 302, 303, 307 or 308",
        ),
    ];
    for (route, line, col, points_at, key, message) in cases {
        let toml = format!("{BASE}{route}\n");
        assert_refused(&toml, *line, *col, points_at, key, message);
    }
}
