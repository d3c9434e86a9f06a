//! The process's limit of open files, raised at start to what it may be.
//!
//! Every proxied connection holds two descriptors (the client's and the
//! endpoint's), and a service manager's default soft limit is small
//! (systemd starts services at 1024, with a hard limit of 524288): under
//! it, Levee would refuse connections for want of descriptors (counted as
//! `levee_local_shortage_total{cause="file_descriptors"}`) at a few
//! hundred, far below the 10,000 a listener's `max_connections` allows by
//! default. So `raise` lifts the soft limit to the hard one (capped by the
//! kernel's `fs.nr_open`) once at start, as HAProxy does for its maxconn
//! and the Go runtime does for every program; the hard limit is the
//! operator's (`LimitNOFILE=`, `ulimit -Hn`). `short_of` says, at start and
//! on each reload, when even the raised limit is below what the
//! configuration's caps may use, so that the operator learns it from the
//! log rather than from refusals.

use rustix::process::{Resource, Rlimit, getrlimit, setrlimit};

use crate::config::Config;

/// Descriptors Levee holds besides its connections: listening sockets,
/// epoll and event fds, log files, the admin API's connections, health
/// checks, DNS.
const BESIDES: u64 = 256;

/// The kernel's cap on any process's open files when `fs.nr_open` cannot
/// be read (its default).
const NR_OPEN: u64 = 1 << 20;

/// The soft limit to set, if it should change: the hard limit (the
/// kernel's cap when the hard limit is unlimited), never lower than now.
pub fn plan(limit: &Rlimit, nr_open: u64) -> Option<u64> {
    let target = limit.maximum.unwrap_or(nr_open).min(nr_open);
    match limit.current {
        // Unlimited already.
        None => None,
        Some(now) if now >= target => None,
        Some(_) => Some(target),
    }
}

/// Raises the soft limit of open files to the hard one. Returns the limit
/// before and after, when it changed.
pub fn raise() -> std::io::Result<Option<(u64, u64)>> {
    let limit = getrlimit(Resource::Nofile);
    let nr_open = std::fs::read_to_string("/proc/sys/fs/nr_open")
        .ok()
        .and_then(|s| s.trim().parse().ok())
        .unwrap_or(NR_OPEN);
    let Some(to) = plan(&limit, nr_open) else {
        return Ok(None);
    };
    setrlimit(
        Resource::Nofile,
        Rlimit {
            current: Some(to),
            maximum: limit.maximum,
        },
    )?;
    Ok(limit.current.map(|from| (from, to)))
}

/// The soft limit now (`None`: unlimited).
pub fn current() -> Option<u64> {
    getrlimit(Resource::Nofile).current
}

/// What `config` may hold open at its caps: two descriptors per
/// connection its listeners admit, and the rest.
pub fn needed(config: &Config) -> u64 {
    let connections: u64 = config
        .listeners
        .iter()
        .map(|l| *l.max_connections.get_ref() as u64)
        .sum();
    connections.saturating_mul(2).saturating_add(BESIDES)
}

/// A warning when `limit` is below what `config` may use.
pub fn short_of(config: &Config, limit: Option<u64>) -> Option<String> {
    let limit = limit?;
    let needed = needed(config);
    (limit < needed).then(|| {
        format!(
            "the limit of open files ({limit}) is below the {needed} that the listeners' \
             max_connections may use (two per connection): connections beyond it will be \
             refused (levee_local_shortage_total); raise the hard limit (systemd \
             LimitNOFILE=, ulimit -Hn) or lower max_connections"
        )
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn limit(current: Option<u64>, maximum: Option<u64>) -> Rlimit {
        Rlimit { current, maximum }
    }

    #[test]
    fn the_soft_limit_goes_up_to_the_hard_one_never_down() {
        // systemd's default for services.
        assert_eq!(
            plan(&limit(Some(1024), Some(524_288)), NR_OPEN),
            Some(524_288)
        );
        assert_eq!(plan(&limit(Some(4096), Some(4096)), NR_OPEN), None);
        // An unlimited hard limit: the kernel's cap.
        assert_eq!(plan(&limit(Some(1024), None), 1_048_576), Some(1_048_576));
        // A hard limit above the kernel's cap would be refused.
        assert_eq!(
            plan(&limit(Some(1024), Some(u64::MAX - 1)), 65_536),
            Some(65_536)
        );
        assert_eq!(plan(&limit(None, None), NR_OPEN), None);
        assert_eq!(plan(&limit(Some(70_000), Some(80_000)), 65_536), None);
    }

    #[test]
    fn warns_when_the_caps_need_more_than_the_limit() {
        let config = crate::config::parse(
            std::path::Path::new("t.toml"),
            r#"
[[listeners]]
name = "a"
address = "127.0.0.1:1"
max_connections = 1000
[[listeners]]
name = "b"
address = "127.0.0.1:2"
protocol = "tcp"
cluster = "c"
max_connections = 500
[[clusters]]
name = "c"
endpoints = [{ address = "127.0.0.1:3" }]
[[routes]]
name = "r"
cluster = "c"
"#,
        )
        .expect("a valid config");
        assert_eq!(needed(&config), 3000 + BESIDES);
        let warning = short_of(&config, Some(1024)).expect("1024 is short");
        assert!(
            warning.contains("(1024)") && warning.contains("3256"),
            "{warning}"
        );
        assert_eq!(short_of(&config, Some(3256)), None);
        assert_eq!(short_of(&config, None), None);
    }
}
