//! Checks of TCP listeners and of the settings only they (or the role
//! health checks) read: a TCP listener names an existing cluster and is
//! served by no route; an HTTP listener names none; a setting that would
//! be accepted and then do nothing is refused.

use super::schema::{
    CheckKind, Config, HashKey, HealthCheckConfig, OnEndpointDown, Protocol, TcpCopy,
};
use super::validate::{Invalid, invalid, list};

pub(super) fn check(config: &Config) -> Result<(), Invalid> {
    for (i, l) in config.listeners.iter().enumerate() {
        let key = format!("listeners[{i}]");
        match (l.protocol, &l.cluster) {
            (Protocol::Http, Some(c)) => {
                return Err(invalid(
                    c.span(),
                    format!("{key}.cluster"),
                    "only applies to protocol = \"tcp\"; an HTTP listener sends each request \
                     where its routes say",
                ));
            }
            (Protocol::Tcp, None) if l.sni.is_empty() => {
                return Err(invalid(
                    l.name.span(),
                    format!("{key}.cluster"),
                    "a tcp listener needs the cluster its connections go to: add \
                     cluster = \"NAME\" (or [[listeners.sni]] routes)",
                ));
            }
            (Protocol::Tcp, _) => {
                let sni = l
                    .sni
                    .iter()
                    .enumerate()
                    .map(|(j, s)| (&s.cluster, format!("{key}.sni[{j}].cluster")));
                for (c, ckey) in l
                    .cluster
                    .iter()
                    .map(|c| (c, format!("{key}.cluster")))
                    .chain(sni)
                {
                    relayed_cluster(config, l, c, ckey)?;
                }
                if let Some(r) = config.routes.iter().find(|r| {
                    r.listeners
                        .as_ref()
                        .is_some_and(|ls| ls.iter().any(|n| n.get_ref() == l.name.get_ref()))
                }) {
                    return Err(invalid(
                        r.name.span(),
                        format!("routes.{}.listeners", r.name.get_ref()),
                        format!(
                            "{:?} is a tcp listener: it relays connections to its cluster \
                             and serves no routes",
                            l.name.get_ref()
                        ),
                    ));
                }
            }
            (Protocol::Http, None) => {}
        }
        copy_setting(l, &key)?;
        half_close_setting(l, &key)?;
        if *l.connect_attempts.get_ref() == 0 {
            return Err(invalid(
                l.connect_attempts.span(),
                format!("{key}.connect_attempts"),
                "must be at least 1",
            ));
        }
        if l.protocol == Protocol::Http && !l.connect_attempts.span().is_empty() {
            return Err(invalid(
                l.connect_attempts.span(),
                format!("{key}.connect_attempts"),
                "only applies to protocol = \"tcp\"; an HTTP route's retries are its \
                 cluster's `retry`",
            ));
        }
    }
    check_clusters(config)
}

/// The clusters a listener relays to: its `cluster` and its SNI routes'.
fn relays_to(
    l: &super::schema::ListenerConfig,
) -> impl Iterator<Item = &serde_spanned::Spanned<String>> {
    l.cluster.iter().chain(l.sni.iter().map(|s| &s.cluster))
}

/// A cluster named by tcp listener `l` exists and can balance connections.
fn relayed_cluster(
    config: &Config,
    l: &super::schema::ListenerConfig,
    c: &serde_spanned::Spanned<String>,
    key: String,
) -> Result<(), Invalid> {
    let Some(cluster) = config
        .clusters
        .iter()
        .find(|k| k.name.get_ref() == c.get_ref())
    else {
        return Err(invalid(
            c.span(),
            key,
            format!(
                "no cluster named {:?}; defined clusters: {}",
                c.get_ref(),
                list(config.clusters.iter().map(|c| c.name.get_ref().as_str()))
            ),
        ));
    };
    if cluster.balance.uses_key() && *cluster.hash_key.get_ref() != HashKey::ClientIp {
        return Err(invalid(
            cluster.hash_key.span(),
            format!("clusters.{}.hash_key", cluster.name.get_ref()),
            format!(
                "tcp listener {:?} relays this cluster's connections, which carry \
                             no path, header or cookie: use hash_key = \"client_ip\"",
                l.name.get_ref()
            ),
        ));
    }
    Ok(())
}

fn check_clusters(config: &Config) -> Result<(), Invalid> {
    for (i, c) in config.clusters.iter().enumerate() {
        let key = format!("clusters[{i}]");
        let relayed = config
            .listeners
            .iter()
            .any(|l| l.protocol == Protocol::Tcp && relays_to(l).any(|n| n == &c.name));
        if c.on_endpoint_down == OnEndpointDown::ShutdownSessions && !relayed {
            return Err(invalid(
                c.name.span(),
                format!("{key}.on_endpoint_down"),
                "only applies to a cluster of a tcp listener (an HTTP request is not held \
                 open on an endpoint); no tcp listener names this cluster",
            ));
        }
        if c.send_proxy_protocol.is_some() && !relayed {
            return Err(invalid(
                c.name.span(),
                format!("{key}.send_proxy_protocol"),
                "only applies to a cluster of a tcp listener (HTTP requests carry the client \
                 address in X-Forwarded-For); no tcp listener names this cluster",
            ));
        }
        if let Some(h) = &c.health_check {
            check_role(h, &c.name, &format!("{key}.health_check"))?;
        }
    }
    Ok(())
}

/// The keys of the role checks, refused on the checks that do not read them.
fn check_role(
    h: &HealthCheckConfig,
    owner: &serde_spanned::Spanned<String>,
    key: &str,
) -> Result<(), Invalid> {
    let d = HealthCheckConfig::default();
    let role_check = matches!(h.kind, CheckKind::Postgres | CheckKind::Redis);
    let set = [
        ("role", h.role != d.role, role_check),
        ("user", h.user.is_some(), role_check),
        ("password", h.password.is_some(), role_check),
        (
            "database",
            h.database.is_some(),
            h.kind == CheckKind::Postgres,
        ),
        (
            "max_replication_lag",
            h.max_replication_lag.is_some(),
            h.kind == CheckKind::Postgres && h.role == super::schema::Role::Replica,
        ),
    ];
    if let Some((field, _, _)) = set.iter().find(|(_, set, applies)| *set && !applies) {
        let why = match *field {
            "database" => "only applies to type = \"postgres\"",
            "max_replication_lag" => {
                "only applies to type = \"postgres\" with role = \"replica\" (a primary \
                 has no lag)"
            }
            _ => "only applies to type = \"postgres\" or \"redis\"",
        };
        return Err(invalid(owner.span(), format!("{key}.{field}"), why));
    }
    Ok(())
}

/// `half_close` applies to tcp listeners only.
fn half_close_setting(l: &super::schema::ListenerConfig, key: &str) -> Result<(), Invalid> {
    match &l.half_close {
        Some(h) if l.protocol == Protocol::Http => Err(invalid(
            h.span(),
            format!("{key}.half_close"),
            "only applies to protocol = \"tcp\" (a WebSocket tunnel always passes a \
             half-close on)",
        )),
        _ => Ok(()),
    }
}

/// `copy` applies to a tcp listener's plain connections only: splice(2)
/// cannot reach bytes that TLS terminated here decrypts in userspace.
fn copy_setting(l: &super::schema::ListenerConfig, key: &str) -> Result<(), Invalid> {
    let Some(copy) = &l.copy else {
        return Ok(());
    };
    if l.protocol == Protocol::Http {
        return Err(invalid(
            copy.span(),
            format!("{key}.copy"),
            "only applies to protocol = \"tcp\"",
        ));
    }
    if *copy.get_ref() == TcpCopy::Splice && l.tls.is_some() {
        return Err(invalid(
            copy.span(),
            format!("{key}.copy"),
            "\"splice\" cannot copy what [listeners.tls] decrypts in userspace: remove one",
        ));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    fn refused(text: &str) -> String {
        match crate::config::parse(std::path::Path::new("t.toml"), text) {
            Ok(_) => panic!("accepted:\n{text}"),
            Err(e) => e.to_string(),
        }
    }

    const CLUSTER: &str =
        "[[clusters]]\nname = \"db\"\n[[clusters.endpoints]]\naddress = \"127.0.0.1:5432\"\n";

    #[test]
    fn a_tcp_listener_needs_an_existing_cluster() {
        let e = refused(&format!(
            "[[listeners]]\nname = \"pg\"\naddress = \"127.0.0.1:6432\"\nprotocol = \"tcp\"\n{CLUSTER}"
        ));
        assert!(
            e.contains("t.toml:2:8") && e.contains("listeners[0].cluster"),
            "{e}"
        );
        let e = refused(&format!(
            "[[listeners]]\nname = \"pg\"\naddress = \"127.0.0.1:6432\"\nprotocol = \"tcp\"\ncluster = \"nope\"\n{CLUSTER}"
        ));
        assert!(
            e.contains("t.toml:5:11") && e.contains("no cluster named \"nope\""),
            "{e}"
        );
    }

    #[test]
    fn copy_is_for_plain_tcp_listeners() {
        let tcp = "[[listeners]]\nname = \"pg\"\naddress = \"127.0.0.1:6432\"\nprotocol = \"tcp\"\ncluster = \"db\"\n";
        for copy in ["splice", "userspace"] {
            let ok = format!("{tcp}copy = \"{copy}\"\n{CLUSTER}");
            crate::config::parse(std::path::Path::new("t.toml"), &ok).unwrap();
        }
        let e = refused(&format!("{tcp}copy = \"sendfile\"\n{CLUSTER}"));
        assert!(e.contains("t.toml:6:8"), "{e}");
        let e = refused(&format!(
            "[[listeners]]\nname = \"web\"\naddress = \"127.0.0.1:8080\"\ncopy = \"splice\"\n{CLUSTER}"
        ));
        assert!(
            e.contains("t.toml:4:8") && e.contains("listeners[0].copy"),
            "{e}"
        );
        let e = refused(&format!(
            "{tcp}copy = \"splice\"\n[listeners.tls]\ncertificates = [{{ cert = \"c.pem\", key = \"k.pem\" }}]\n{CLUSTER}"
        ));
        assert!(
            e.contains("t.toml:6:8") && e.contains("listeners[0].copy"),
            "{e}"
        );
    }

    #[test]
    fn a_tcp_listener_is_served_without_routes_and_by_none() {
        let ok = format!(
            "[[listeners]]\nname = \"pg\"\naddress = \"127.0.0.1:6432\"\nprotocol = \"tcp\"\ncluster = \"db\"\n{CLUSTER}"
        );
        crate::config::parse(std::path::Path::new("t.toml"), &ok).unwrap();
        let e = refused(&format!(
            "{ok}[[routes]]\nname = \"r\"\nlisteners = [\"pg\"]\ncluster = \"db\"\n"
        ));
        assert!(e.contains("is a tcp listener"), "{e}");
    }

    #[test]
    fn keys_that_would_do_nothing_are_refused() {
        let http = "[[listeners]]\nname = \"web\"\naddress = \"127.0.0.1:8080\"\ncluster = \"db\"\n[[routes]]\nname = \"r\"\ncluster = \"db\"\n";
        let e = refused(&format!("{http}{CLUSTER}"));
        assert!(
            e.contains("listeners[0].cluster") && e.contains("only applies"),
            "{e}"
        );
        let http = "[[listeners]]\nname = \"web\"\naddress = \"127.0.0.1:8080\"\n[[routes]]\nname = \"r\"\ncluster = \"db\"\n";
        let e = refused(&format!(
            "{http}{CLUSTER}on_endpoint_down = \"shutdown_sessions\"\n"
        ));
        assert!(e.contains("on_endpoint_down"), "{e}");
        let e = refused(&format!(
            "{http}{CLUSTER}[clusters.health_check]\ntype = \"tcp\"\nrole = \"primary\"\n"
        ));
        assert!(e.contains("health_check.role"), "{e}");
        let e = refused(&format!(
            "{http}{CLUSTER}[clusters.health_check]\ntype = \"postgres\"\nrole = \"primary\"\nmax_replication_lag = \"5s\"\n"
        ));
        assert!(e.contains("max_replication_lag"), "{e}");
        let e = refused(&format!(
            "[[listeners]]\nname = \"web\"\naddress = \"127.0.0.1:8080\"\nhalf_close = false\n[[routes]]\nname = \"r\"\ncluster = \"db\"\n{CLUSTER}"
        ));
        assert!(
            e.contains("listeners[0].half_close") && e.contains("only applies"),
            "{e}"
        );
    }
}
