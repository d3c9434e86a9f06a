//! A throwaway Redis Cluster for tests: `n` masters (Debian's
//! `redis-server --cluster-enabled yes`) on free loopback ports, joined with
//! `redis-cli --cluster create`, killed on drop.
//!
//! `cluster-require-full-coverage no`, so that when a master dies the other
//! masters keep serving their slots (Redis's default would refuse every
//! slot once one is lost), and a node timeout of 1 s.

use std::process::Command;
use std::time::Duration;

use super::redis::{RedisServer, Value};
use super::{free_port, wait_until};

pub struct RedisCluster {
    pub nodes: Vec<RedisServer>,
    _dir: tempfile::TempDir,
}

impl RedisCluster {
    /// Starts `masters` nodes (no replicas), creates the cluster and waits
    /// until every node reports `cluster_state:ok`.
    pub fn start(masters: usize) -> RedisCluster {
        RedisCluster::start_with_replicas(masters, 0)
    }

    /// `masters` masters with `replicas` replicas each (`redis-cli` picks
    /// which node is which: see [`RedisCluster::owner`]).
    pub fn start_with_replicas(masters: usize, replicas: usize) -> RedisCluster {
        let dir = tempfile::tempdir().expect("tempdir");
        let nodes: Vec<RedisServer> = (0..masters * (1 + replicas))
            .map(|i| {
                let conf = dir.path().join(format!("nodes-{i}.conf"));
                let bus = free_port().to_string();
                RedisServer::start_with(&[
                    "--cluster-enabled",
                    "yes",
                    "--cluster-config-file",
                    conf.to_str().expect("utf-8 path"),
                    "--cluster-port",
                    &bus,
                    "--cluster-node-timeout",
                    "1000",
                    "--cluster-require-full-coverage",
                    "no",
                    "--dir",
                    dir.path().to_str().expect("utf-8 path"),
                ])
            })
            .collect();
        let addrs: Vec<String> = nodes
            .iter()
            .map(|n| format!("127.0.0.1:{}", n.port()))
            .collect();
        let out = Command::new("redis-cli")
            .args(["--cluster", "create"])
            .args(&addrs)
            .args(["--cluster-replicas", &replicas.to_string(), "--cluster-yes"])
            .output()
            .expect("run redis-cli (Debian package redis-tools)");
        assert!(
            out.status.success(),
            "redis-cli --cluster create: {}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        let cluster = RedisCluster { nodes, _dir: dir };
        assert!(
            wait_until(Duration::from_secs(20), || cluster.all_ok()),
            "the cluster did not reach cluster_state:ok"
        );
        cluster
    }

    /// Every node knows every slot's master, and every replica has synced
    /// with its master (a replica that never has would not take over).
    fn all_ok(&self) -> bool {
        self.nodes.iter().all(|n| {
            let ok = matches!(n.try_query(&["CLUSTER", "INFO"]),
                Ok(Value::Str(s)) if s.contains("cluster_state:ok"));
            let synced = matches!(n.try_query(&["INFO", "replication"]),
                Ok(Value::Str(s)) if s.contains("role:master") || s.contains("master_link_status:up"));
            ok && synced
        })
    }

    pub fn urls(&self) -> Vec<String> {
        self.nodes.iter().map(RedisServer::url).collect()
    }

    /// The index in `nodes` of the master serving `key`'s slot, asked of
    /// any live node.
    pub fn owner(&self, key: &str) -> usize {
        for node in &self.nodes {
            let Ok(Value::Int(slot)) = node.try_query(&["CLUSTER", "KEYSLOT", key]) else {
                continue;
            };
            let Ok(Value::Array(ranges)) = node.try_query(&["CLUSTER", "SLOTS"]) else {
                continue;
            };
            for range in ranges {
                let Value::Array(r) = range else { continue };
                let (Some(Value::Int(lo)), Some(Value::Int(hi)), Some(Value::Array(master))) =
                    (r.first(), r.get(1), r.get(2))
                else {
                    continue;
                };
                if (*lo..=*hi).contains(&slot)
                    && let Some(Value::Int(port)) = master.get(1)
                {
                    return self
                        .nodes
                        .iter()
                        .position(|n| i64::from(n.port()) == *port)
                        .expect("a known node");
                }
            }
        }
        panic!("no node knows the owner of {key:?}");
    }
}
