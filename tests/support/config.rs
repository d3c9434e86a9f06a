//! Writing Levee configs in tests: free ports and a small TOML builder.
//!
//! The builder writes plain TOML text and knows only table names, so keys it
//! does not model are passed through as lines (`"drain_timeout = \"2s\""`).
//! That keeps it valid while the config schema grows.
//!
//! ```ignore
//! let cfg = ConfigBuilder::new()
//!     .set("server", "drain_timeout = \"2s\"")
//!     .listener("main", listen)
//!     .cluster_with("app", &[b1.addr(), b2.addr()], &["balance = \"round_robin\""])
//!     .endpoint("app", b3.addr(), &["backup = true"])
//!     .route_with("api", "app", &["path_prefix = \"/api\""]);
//! let levee = Levee::start(&cfg.build());
//! ```

use std::collections::BTreeSet;
use std::net::{SocketAddr, TcpListener};
use std::sync::Mutex;

/// A port that was free a moment ago on 127.0.0.1 (bind port 0, read it,
/// close). Another process could take it before you do; that is rare enough.
/// The kernel may hand the same port to two binds in a row once the first is
/// closed (CI once got one port for a listener and the admin address), so a
/// port this process was already given is never given again.
pub fn free_port() -> u16 {
    static GIVEN: Mutex<BTreeSet<u16>> = Mutex::new(BTreeSet::new());
    loop {
        let listener = TcpListener::bind("127.0.0.1:0").expect("bind 127.0.0.1:0");
        let port = listener.local_addr().expect("local_addr").port();
        let mut given = GIVEN.lock().unwrap_or_else(|e| e.into_inner());
        if given.insert(port) {
            return port;
        }
    }
}

/// `127.0.0.1:{free_port()}`.
pub fn free_addr() -> SocketAddr {
    SocketAddr::from(([127, 0, 0, 1], free_port()))
}

#[derive(Clone)]
struct Table {
    name: String,
    lines: Vec<String>,
}

struct Cluster {
    name: String,
    lines: Vec<String>,
    endpoints: Vec<(SocketAddr, Vec<String>)>,
}

/// Builds a Levee config as TOML text. `new()` puts the admin listener on a
/// free port; every other setting is the binary's default unless added.
pub struct ConfigBuilder {
    admin: SocketAddr,
    tables: Vec<Table>,
    listeners: Vec<Vec<String>>,
    clusters: Vec<Cluster>,
    routes: Vec<Vec<String>>,
    raw: Vec<String>,
}

impl Default for ConfigBuilder {
    fn default() -> Self {
        ConfigBuilder::new()
    }
}

impl ConfigBuilder {
    pub fn new() -> ConfigBuilder {
        ConfigBuilder {
            admin: free_addr(),
            tables: Vec::new(),
            listeners: Vec::new(),
            clusters: Vec::new(),
            routes: Vec::new(),
            raw: Vec::new(),
        }
    }

    /// One listener `main` on `listen`, one cluster `app` with `backends`,
    /// one route `all` matching everything to `app`.
    pub fn simple(listen: SocketAddr, backends: &[SocketAddr]) -> ConfigBuilder {
        ConfigBuilder::new()
            .listener("main", listen)
            .cluster("app", backends)
            .route("all", "app")
    }

    pub fn admin_addr(&self) -> SocketAddr {
        self.admin
    }

    /// Moves the admin listener.
    pub fn admin_at(mut self, addr: SocketAddr) -> Self {
        self.admin = addr;
        self
    }

    /// Adds `line` (`key = value`) to the single table `[table]`
    /// (`server`, `admin`, `access_log`, ...).
    pub fn set(mut self, table: &str, line: &str) -> Self {
        match self.tables.iter_mut().find(|t| t.name == table) {
            Some(t) => t.lines.push(line.to_owned()),
            None => self.tables.push(Table {
                name: table.to_owned(),
                lines: vec![line.to_owned()],
            }),
        }
        self
    }

    pub fn listener(self, name: &str, addr: SocketAddr) -> Self {
        self.listener_with(name, addr, &[])
    }

    /// A `[[listeners]]` entry with extra `key = value` lines.
    pub fn listener_with(mut self, name: &str, addr: SocketAddr, extra: &[&str]) -> Self {
        let mut lines = vec![format!("name = {name:?}"), format!("address = \"{addr}\"")];
        lines.extend(extra.iter().map(|l| l.to_string()));
        self.listeners.push(lines);
        self
    }

    pub fn cluster(self, name: &str, endpoints: &[SocketAddr]) -> Self {
        self.cluster_with(name, endpoints, &[])
    }

    /// A `[[clusters]]` entry with one endpoint per address and extra lines.
    pub fn cluster_with(mut self, name: &str, endpoints: &[SocketAddr], extra: &[&str]) -> Self {
        self.clusters.push(Cluster {
            name: name.to_owned(),
            lines: extra.iter().map(|l| l.to_string()).collect(),
            endpoints: endpoints.iter().map(|a| (*a, Vec::new())).collect(),
        });
        self
    }

    /// Adds an endpoint with extra lines (`weight = 3`, `backup = true`) to
    /// an already added cluster; panics if there is none of that name.
    pub fn endpoint(mut self, cluster: &str, addr: SocketAddr, extra: &[&str]) -> Self {
        let c = self
            .clusters
            .iter_mut()
            .find(|c| c.name == cluster)
            .unwrap_or_else(|| panic!("ConfigBuilder::endpoint: no cluster {cluster:?} yet"));
        c.endpoints
            .push((addr, extra.iter().map(|l| l.to_string()).collect()));
        self
    }

    /// A route sending everything to `cluster`.
    pub fn route(self, name: &str, cluster: &str) -> Self {
        self.route_with(name, cluster, &[])
    }

    /// A `[[routes]]` entry with matchers as extra lines
    /// (`path_prefix = "/api"`, `host = "a.example"`, `methods = ["GET"]`).
    pub fn route_with(mut self, name: &str, cluster: &str, extra: &[&str]) -> Self {
        let mut lines = vec![format!("name = {name:?}"), format!("cluster = {cluster:?}")];
        lines.extend(extra.iter().map(|l| l.to_string()));
        self.routes.push(lines);
        self
    }

    /// Appends TOML text verbatim at the end.
    pub fn raw(mut self, toml: &str) -> Self {
        self.raw.push(toml.to_owned());
        self
    }

    /// The config text. With `LEVEE_TEST_HTTP1=hyper` (or `levee`) in the
    /// environment, `[server] http1` is set to it unless the test sets it,
    /// so that the whole suite can run against either HTTP/1 engine.
    pub fn build(&self) -> String {
        let mut tables = self.tables.clone();
        if let Ok(engine) = std::env::var("LEVEE_TEST_HTTP1") {
            let line = format!("http1 = {engine:?}");
            match tables.iter_mut().find(|t| t.name == "server") {
                Some(t) if !t.lines.iter().any(|l| l.starts_with("http1")) => t.lines.push(line),
                Some(_) => {}
                None => tables.push(Table {
                    name: "server".into(),
                    lines: vec![line],
                }),
            }
        }
        let mut out = String::new();
        let admin_extra = tables.iter().find(|t| t.name == "admin");
        out.push_str(&format!("[admin]\naddress = \"{}\"\n", self.admin));
        for line in admin_extra.map(|t| t.lines.as_slice()).unwrap_or_default() {
            out.push_str(&format!("{line}\n"));
        }
        for t in tables.iter().filter(|t| t.name != "admin") {
            out.push_str(&format!("\n[{}]\n", t.name));
            for line in &t.lines {
                out.push_str(&format!("{line}\n"));
            }
        }
        for lines in &self.listeners {
            entry(&mut out, "listeners", lines);
        }
        for c in &self.clusters {
            let mut lines = vec![format!("name = {:?}", c.name)];
            lines.extend(c.lines.iter().cloned());
            entry(&mut out, "clusters", &lines);
            for (addr, extra) in &c.endpoints {
                let mut lines = vec![format!("address = \"{addr}\"")];
                lines.extend(extra.iter().cloned());
                entry(&mut out, "clusters.endpoints", &lines);
            }
        }
        for lines in &self.routes {
            entry(&mut out, "routes", lines);
        }
        for r in &self.raw {
            out.push_str(&format!("\n{r}\n"));
        }
        out
    }
}

/// One `[[array]]` entry.
fn entry(out: &mut String, array: &str, lines: &[String]) {
    out.push_str(&format!("\n[[{array}]]\n"));
    for line in lines {
        out.push_str(&format!("{line}\n"));
    }
}

/// What the harness needs to know of a config text, read with a line
/// scanner (no TOML parser, so it works whatever the schema becomes).
pub(super) struct ConfigFacts {
    /// `[admin] address`, Levee's default when absent.
    pub admin: SocketAddr,
    pub admin_enabled: bool,
    pub admin_token: Option<String>,
    /// Every `[[listeners]] address`, in order.
    pub listeners: Vec<SocketAddr>,
}

pub(super) fn config_facts(toml: &str) -> ConfigFacts {
    let mut facts = ConfigFacts {
        admin: SocketAddr::from(([127, 0, 0, 1], 9900)),
        admin_enabled: true,
        admin_token: None,
        listeners: Vec::new(),
    };
    let mut table = String::new();
    for line in toml.lines().map(str::trim) {
        if line.starts_with('[') {
            table = line
                .trim_matches(|c| c == '[' || c == ']')
                .trim()
                .to_owned();
            continue;
        }
        let Some((key, value)) = line.split_once('=') else {
            continue;
        };
        let value = value.split('#').next().unwrap_or_default().trim();
        let unquoted = value.trim_matches('"');
        match (table.as_str(), key.trim()) {
            ("admin", "address") => {
                if let Ok(a) = unquoted.parse() {
                    facts.admin = a;
                }
            }
            ("admin", "enabled") => facts.admin_enabled = value != "false",
            ("admin", "token") => facts.admin_token = Some(unquoted.to_owned()),
            ("listeners", "address") => {
                if let Ok(a) = unquoted.parse() {
                    facts.listeners.push(a);
                }
            }
            _ => {}
        }
    }
    facts
}

/// A loopback address that refuses connections: a socket bound but not
/// listening. While the socket lives, no one else can take the port (unlike a
/// port that was merely free a moment ago).
pub fn refusing_addr() -> (socket2::Socket, SocketAddr) {
    let s =
        socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::STREAM, None).expect("socket");
    s.bind(&SocketAddr::from(([127, 0, 0, 1], 0)).into())
        .expect("bind 127.0.0.1:0");
    let addr = s
        .local_addr()
        .expect("local_addr")
        .as_socket()
        .expect("an inet address");
    (s, addr)
}
