use super::*;

#[test]
fn script_replies_become_decisions() {
    let limit = Limit {
        algorithm: Algorithm::LeakyBucket,
        limit: 10,
        period: Duration::from_secs(1),
        burst: 5,
        delay: true,
    };
    let ints = |v: [i64; 5]| Reply::Array(v.map(Reply::Int).to_vec());
    assert_eq!(
        decision(ints([1, 4, 200_000, 0, 100_000]), &limit),
        Ok(Decision {
            allowed: true,
            limit: 10,
            remaining: 4,
            reset: Duration::from_millis(200),
            retry_after: Duration::ZERO,
            delay: Duration::from_millis(100),
        })
    );
    assert!(matches!(
        decision(ints([1, -1, 0, 0, 0]), &limit),
        Err(StoreError::Protocol(_))
    ));
    assert!(decision(Reply::Array(vec![]), &limit).is_err());
    assert!(decision(Reply::Int(1), &limit).is_err());
}

#[test]
fn keys_are_prefixed_by_algorithm_and_hash_tagged() {
    assert_eq!(
        RedisStore::key_for(Algorithm::SlidingLog, b"client:1.2.3.4"),
        b"levee:rl:sliding_log:{client:1.2.3.4}"
    );
}

#[test]
fn targets_display_without_credentials() {
    let node = |s: &str| RedisUrl::parse(s).unwrap();
    let t = Target::Cluster(vec![node("redis://:pw@a:1"), node("rediss://b:2")]);
    assert_eq!(t.to_string(), "redis cluster redis://a:1,rediss://b:2");
}

#[tokio::test]
async fn zero_limit_is_answered_locally() {
    // No Redis behind this URL: the answer must not need one.
    let store = RedisStore::new("redis://127.0.0.1:1", Duration::from_millis(50)).unwrap();
    let limit = Limit {
        algorithm: Algorithm::FixedWindow,
        limit: 0,
        period: Duration::from_secs(3),
        burst: 0,
        delay: false,
    };
    let d = store.check(b"k", &limit, 1).await.unwrap();
    assert!(!d.allowed);
    assert_eq!(d.retry_after, Duration::from_secs(3));
    assert!(store.check(b"k", &limit, 0).await.unwrap().allowed);
    assert_eq!(store.errors(), 0);
}

#[test]
fn becomes_connection_info() {
    let info = RedisUrl::parse("redis://u:pw@h:7/3")
        .map(|u| client::connection_info(&u))
        .unwrap()
        .unwrap();
    assert_eq!(info.addr(), &::redis::ConnectionAddr::Tcp("h".into(), 7));
    let r = info.redis_settings();
    assert_eq!(
        (r.db(), r.username(), r.password()),
        (3, Some("u"), Some("pw"))
    );
    let info = RedisUrl::parse("rediss://h")
        .map(|u| client::connection_info(&u))
        .unwrap()
        .unwrap();
    assert!(matches!(
        info.addr(),
        ::redis::ConnectionAddr::TcpTls {
            insecure: false,
            ..
        }
    ));
    let info = RedisUrl::parse("unix:///x.sock")
        .map(|u| client::connection_info(&u))
        .unwrap()
        .unwrap();
    assert_eq!(
        info.addr(),
        &::redis::ConnectionAddr::Unix("/x.sock".into())
    );
}

#[test]
fn a_cluster_config_becomes_a_cluster_target() {
    let c = crate::config::parse(
        std::path::Path::new("l.toml"),
        "[[listeners]]\nname = \"main\"\naddress = \"127.0.0.1:8080\"\n[[clusters]]\nname = \"app\"\n\
         [[routes]]\nname = \"api\"\ncluster = \"app\"\n[rate_limit]\nstore = \"redis\"\n\
         redis_cluster = [\"rediss://a:7000\", \"rediss://b:7001\"]\n[[rate_limit.rules]]\nname = \"x\"\nlimit = 1\n",
    )
    .unwrap();
    let (target, options, id) = target_of(&c.rate_limit).unwrap();
    assert_eq!(options.timeout, std::time::Duration::from_millis(50));
    assert_eq!(options.tls_ca_file, None);
    assert!(matches!(target, Target::Cluster(ref n) if n.len() == 2));
    assert!(
        id.starts_with("cluster rediss://a:7000,rediss://b:7001"),
        "{id}"
    );
}
