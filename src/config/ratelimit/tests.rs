use super::*;

#[test]
fn cidrs() {
    let c: Cidr = "10.0.0.0/8".parse().unwrap();
    assert!(c.contains("10.1.2.3".parse().unwrap()));
    assert!(c.contains("::ffff:10.1.2.3".parse().unwrap()));
    assert!(!c.contains("11.0.0.1".parse().unwrap()));
    let one: Cidr = "127.0.0.1".parse().unwrap();
    assert!(one.contains("127.0.0.1".parse().unwrap()));
    assert!(!one.contains("127.0.0.2".parse().unwrap()));
    let all: Cidr = "0.0.0.0/0".parse().unwrap();
    assert!(all.contains("8.8.8.8".parse().unwrap()));
    let v6: Cidr = "fd00::/8".parse().unwrap();
    assert!(v6.contains("fd12::1".parse().unwrap()));
    assert!(!v6.contains("10.0.0.1".parse().unwrap()));
    assert!("10.0.0.0/33".parse::<Cidr>().is_err());
    assert!("nonsense".parse::<Cidr>().is_err());
}

#[test]
fn key_parts() {
    assert_eq!("client_ip".parse::<KeyPart>(), Ok(KeyPart::ClientIp));
    assert_eq!(
        "header:X-Api-Key".parse::<KeyPart>(),
        Ok(KeyPart::Header(http::HeaderName::from_static("x-api-key")))
    );
    assert_eq!(
        "cookie:session".parse::<KeyPart>(),
        Ok(KeyPart::Cookie("session".into()))
    );
    assert!("cookie:".parse::<KeyPart>().is_err());
    assert!("path".parse::<KeyPart>().is_err());
}

fn error(toml: &str) -> String {
    crate::config::parse(std::path::Path::new("l.toml"), toml)
        .unwrap_err()
        .to_string()
}

const BASE: &str = r#"
[[listeners]]
name = "main"
address = "127.0.0.1:8080"
[[clusters]]
name = "app"
[[routes]]
name = "api"
cluster = "app"
"#;

#[test]
fn redis_keys_are_checked_with_their_location() {
    let e = error(&format!(
        "{BASE}[rate_limit]\nredis_cluster = [\"redis://a:7000\", \"unix:///s.sock\"]\n"
    ));
    assert!(
        e.starts_with(
            "l.toml:11:36: rate_limit.redis_cluster[1]: cluster nodes are reached over TCP"
        ),
        "{e}"
    );
    let e = error(&format!(
        "{BASE}[rate_limit]\nredis_cluster = [\"redis://a:0\"]\n"
    ));
    assert!(
        e.starts_with("l.toml:11:18: rate_limit.redis_cluster[0]: invalid redis URL"),
        "{e}"
    );
    for (nodes, why) in [
        (
            r#""redis://:a@h:1", "redis://:b@h:2""#,
            "the same user and password",
        ),
        (
            r#""redis://h:1", "rediss://h:2""#,
            "mixes redis:// and rediss://",
        ),
        (r#""redis://h:1/2""#, "only database 0"),
    ] {
        let e = error(&format!("{BASE}[rate_limit]\nredis_cluster = [{nodes}]\n"));
        assert!(e.contains(why), "{e}");
        assert!(!e.contains(":a@") && !e.contains(":b@"), "{e}");
    }
    let e = error(&format!("{BASE}[rate_limit]\nredis_cluster = []\n"));
    assert!(
        e.contains("rate_limit.redis_cluster: needs at least one"),
        "{e}"
    );
    let e = error(&format!(
        "{BASE}[rate_limit]\nredis_url = \"redis://h\"\nredis_cluster = [\"redis://a:1\"]\n"
    ));
    assert!(e.contains("rate_limit.redis_url: set either"), "{e}");
    let e = error(&format!("{BASE}[rate_limit]\nredis_lease = 0.5\n"));
    assert!(
        e.starts_with("l.toml:11:15: rate_limit.redis_lease: 0.5 is out of range"),
        "{e}"
    );
    let e = error(&format!("{BASE}[rate_limit]\nredis_lease = \"big\"\n"));
    assert!(e.contains("\"big\" is not a lease size"), "{e}");
    let e = error(&format!("{BASE}[rate_limit]\nredis_mode = \"fast\"\n"));
    assert!(e.contains("redis_mode"), "{e}");
    let e = error(&format!(
        "{BASE}[rate_limit]\nredis_tls_ca_file = \"/nonexistent/ca.pem\"\n"
    ));
    assert!(
        e.contains("rate_limit.redis_tls_ca_file: cannot read \"/nonexistent/ca.pem\""),
        "{e}"
    );
    // Good ones parse.
    let c = crate::config::parse(
        std::path::Path::new("l.toml"),
        &format!(
            "{BASE}[rate_limit]\nstore = \"redis\"\nredis_cluster = [\"rediss://a:7000\", \"rediss://b:7001\"]\n\
             redis_mode = \"exact\"\nredis_lease = 0.05\n[[rate_limit.rules]]\nname = \"x\"\nlimit = 1\nredis_mode = \"lease\"\n"
        ),
    )
    .unwrap();
    // What the store makes of it: `ratelimit::redis::tests::a_cluster_config_becomes_a_cluster_target`.
    assert_eq!(c.rate_limit.lease_size(), LeaseSize::Fraction(0.05));
}

#[test]
fn errors_name_the_key_and_what_is_valid() {
    let e = error(&format!(
        "{BASE}rate_limits = [\"per-ip\", \"nope\"]\n[[rate_limit.rules]]\nname = \"per-ip\"\nlimit = 10\n"
    ));
    assert_eq!(
        e,
        "l.toml:10:26: routes[0].rate_limits[1]: no rate-limit rule named \"nope\"; defined rules: \"per-ip\""
    );
    let e = error(&format!(
        "{BASE}[[rate_limit.rules]]\nname = \"x\"\nkey = [\"client_ip\", \"path\"]\nlimit = 1\n"
    ));
    assert!(
        e.contains("rate_limit.rules[0].key[1]: \"path\" is not a key part"),
        "{e}"
    );
    let e = error(&format!(
        "{BASE}[rate_limit]\nstore = \"redis\"\n[[rate_limit.rules]]\nname = \"x\"\nlimit = 1\n"
    ));
    assert!(e.contains("neither rate_limit.redis_url nor"), "{e}");
    let e = error(&format!(
        "{BASE}[rate_limit]\ntrusted_proxies = [\"10.0.0.0/40\"]\n"
    ));
    assert!(
        e.contains("l.toml:11:20: rate_limit.trusted_proxies[0]"),
        "{e}"
    );
    let e = error(&format!(
        "{BASE}[[rate_limit.rules]]\nname = \"x\"\ntiers = {{ header = \"x-plan\", limits = {{ free = {{ limit = 1 }} }} }}\n"
    ));
    assert!(e.contains("rate_limit.rules[0].limit: missing"), "{e}");
    let e = error(&format!(
        "{BASE}[[rate_limit.rules]]\nname = \"x\"\nlimitt = 1\n"
    ));
    assert!(e.contains("unknown field `limitt`"), "{e}");
}
