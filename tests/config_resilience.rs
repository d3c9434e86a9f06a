//! `levee check` refuses bad resilience settings with file:line:column, the
//! key, and what would be valid; and accepts the documented example.

mod support;

use support::*;

/// The error line for `toml`, after the file path.
fn refused(toml: &str) -> String {
    let (code, stdout, stderr) = Levee::check(toml);
    assert_eq!(code, 1, "accepted? stdout {stdout:?} stderr {stderr:?}");
    let line = stderr.lines().next().unwrap_or_default().to_owned();
    line.split_once("/levee.toml:")
        .map(|(_, rest)| rest.to_owned())
        .unwrap_or(line)
}

const HEAD: &str = "[[listeners]]\nname = \"l\"\naddress = \"127.0.0.1:1\"\n\n";

#[test]
fn a_4xx_cannot_be_retried_or_count_as_a_failure() {
    let toml =
        format!("{HEAD}[[clusters]]\nname = \"c\"\nretry = {{ retry_statuses = [503, 404] }}\n");
    assert_eq!(
        refused(&toml),
        "7:34: clusters[0].retry.retry_statuses[1]: 404 cannot be listed; only 5xx statuses and 429 can (other 4xx are the client's error)"
    );
    let toml = format!(
        "{HEAD}[[clusters]]\nname = \"c\"\n[clusters.circuit_breaker]\nfailure_statuses = [400]\n"
    );
    assert_eq!(
        refused(&toml),
        "8:21: clusters[0].circuit_breaker.failure_statuses[0]: 400 cannot be listed; only 5xx statuses and 429 can (other 4xx are the client's error)"
    );
}

#[test]
fn out_of_range_values_name_their_key() {
    let cases = [
        (
            "retry = { max_attempts = 0 }",
            "7:26: clusters[0].retry.max_attempts: 0 is out of range; valid values are 1 (no retry) to 10",
        ),
        (
            "circuit_breaker = { failure_rate = 1.5 }",
            "7:36: clusters[0].circuit_breaker.failure_rate: 1.5 is not a ratio; use 0 (off) to 1, e.g. 0.5",
        ),
        (
            "bulkhead = { max_concurrent = 0 }",
            "7:31: clusters[0].bulkhead.max_concurrent: must be at least 1",
        ),
        (
            "retry = { jitter = \"some\" }",
            "7:20: clusters[0].retry.jitter: unknown variant `some`, expected one of `full`, `equal`, `none`",
        ),
        (
            "retry = { retry_on = [\"5xx\"] }",
            "7:23: clusters[0].retry.retry_on[0]: unknown variant `5xx`, expected one of `connect_failure`, `reset`, `timeout`, `gateway_error`, `grpc:cancelled`, `grpc:deadline_exceeded`, `grpc:internal`, `grpc:resource_exhausted`, `grpc:unavailable`",
        ),
    ];
    for (line, want) in cases {
        let toml = format!("{HEAD}[[clusters]]\nname = \"c\"\n{line}\n");
        assert_eq!(refused(&toml), want, "{line}");
    }
}

#[test]
fn route_level_settings_are_checked() {
    let toml = format!(
        "{HEAD}[[clusters]]\nname = \"c\"\n\n[[routes]]\nname = \"r\"\ncluster = \"c\"\nmin_level = \"low\"\n"
    );
    assert_eq!(
        refused(&toml),
        "11:13: routes[0].min_level: unknown variant `low`, expected one of `full`, `degraded`, `minimal`, `maintenance`"
    );
    let toml = format!(
        "{HEAD}[[clusters]]\nname = \"c\"\n\n[[routes]]\nname = \"r\"\ncluster = \"c\"\nretry = {{ budget = {{ ratio = 0.5 }} }}\n"
    );
    assert_eq!(
        refused(&toml),
        "9:8: routes[0].retry.budget: the retry budget is per cluster; set it in the cluster's [clusters.retry.budget]"
    );
    let toml = format!(
        "{HEAD}[[clusters]]\nname = \"c\"\n\n[[routes]]\nname = \"r\"\ncluster = \"c\"\nfallback = {{ status = 99 }}\n"
    );
    assert_eq!(
        refused(&toml),
        "11:23: routes[0].fallback.status: 99 is not a final HTTP status; use 200 to 599"
    );
}

#[test]
fn the_example_configuration_is_accepted() {
    let text = std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/examples/levee.toml"))
        .expect("examples/levee.toml");
    let (code, stdout, stderr) = Levee::check(&text);
    assert_eq!(code, 0, "{stderr}");
    assert!(stdout.contains(": ok"), "{stdout}");
}
