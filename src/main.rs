//! The `levee` command line.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::ExitCode;

use clap::{Parser, Subcommand};

// mimalloc: measured faster than glibc malloc for the proxy's many small,
// short-lived allocations (see bench/README.md).
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

use levee::config;
use levee::server::Server;

/// Levee: a load balancer and reverse proxy built for reliability.
///
/// Configuration is one TOML file; see docs/configuration.md (listeners,
/// TLS, HTTP/2, TCP listeners, routes, rewriting, redirects, TLS to
/// endpoints) and examples/levee.toml, docs/resilience.md
/// (retries, circuit breakers, bulkheads, service levels) and
/// docs/rate-limiting.md. Logs go to standard
/// error (filter with LEVEE_LOG, e.g. LEVEE_LOG=debug; the default is
/// info,rustls=error); the access log is
/// JSON lines on standard output unless configured otherwise. The admin API
/// (/dashboard, a live page; /status, /metrics, /availability, /slo, /stats,
/// /events, POST /reload, PUT /degradation, draining endpoints, faults;
/// /openapi.json describes it) and the signals are in
/// docs/operations.md; `levee availability` and the single-point-of-failure
/// report in docs/availability.md; fault injection and `levee chaos run` in
/// docs/chaos.md; SLOs, events and `levee slo rules` in docs/slo.md.
#[derive(Parser)]
#[command(name = "levee", version, about, long_about)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Serve traffic with a configuration file. SIGHUP reloads the file
    /// (a bad file, an empty one included, is refused and the running config
    /// kept); SIGUSR1 reopens the access log file (logrotate); SIGTERM or
    /// SIGINT stop accepting, let in-flight requests finish, and exit 0.
    /// server.pid_file in the config writes a pid file.
    Run {
        /// Path to the TOML configuration.
        #[arg(short, long, value_name = "FILE")]
        config: PathBuf,
    },
    /// Validate a configuration file and exit: 0 if it is valid, 1 with the
    /// error (file:line:column: key: problem) otherwise. The TLS files it
    /// names are read and checked (a certificate expiring within 14 days is
    /// a warning). Names in endpoint addresses are checked for form, not
    /// resolved.
    Check {
        #[arg(short, long, value_name = "FILE")]
        config: PathBuf,
    },
    /// Start Levee on an embedded config with three built-in backends on
    /// loopback (round robin, retries, a circuit breaker, a rate-limited
    /// route, a route switched off below FULL), print what to try, and show
    /// requests spread over the backends. A port already taken is reported
    /// with the flag that moves it.
    Demo {
        /// Where the demo proxy listens.
        #[arg(long, default_value = "127.0.0.1:8080")]
        listen: SocketAddr,
        /// Where the admin API listens (/metrics, /status).
        #[arg(long, default_value = "127.0.0.1:9900")]
        admin: SocketAddr,
        /// Port of the first demo backend; the others take the next two.
        #[arg(long, default_value_t = 9101)]
        backend_port: u16,
    },
    /// Availability arithmetic: nines to downtime per year, month, week and
    /// day (`levee availability 99.95`), downtime to nines (`--downtime 4h
    /// --per year`), composition in series, in parallel and N of M
    /// (`levee availability "(lb || lb) -> 2of3(app, app, app)" --part
    /// lb=99.99 --part app=99.9`), and the single points of failure of a
    /// configuration (`--config FILE`). See docs/availability.md.
    Availability {
        /// An availability in percent (99.95) or an expression: `->` in
        /// series, `||` in parallel, `2of3(a, b, c)` at least N of M, names
        /// or percentages as parts, parentheses to group.
        expression: Option<String>,
        /// The availability of a part named in the expression.
        #[arg(long = "part", value_name = "NAME=PERCENT")]
        parts: Vec<String>,
        /// The downtime allowed (e.g. 4h, 52m 36s, 1.5d) instead of an
        /// expression: prints the availability it means.
        #[arg(long, value_name = "DURATION")]
        downtime: Option<String>,
        /// The period of --downtime: year, month, week or day.
        #[arg(
            long,
            default_value = "year",
            value_name = "PERIOD",
            requires = "downtime"
        )]
        per: levee::availability::compose::Period,
        /// Print the single points of failure of this configuration.
        #[arg(short, long, value_name = "FILE")]
        config: Option<PathBuf>,
        /// JSON instead of text.
        #[arg(long)]
        json: bool,
    },
    /// Chaos experiments against a running Levee (docs/chaos.md).
    Chaos {
        #[command(subcommand)]
        command: ChaosCommand,
    },
    /// Service level objectives (docs/slo.md).
    Slo {
        #[command(subcommand)]
        command: SloCommand,
    },
}

#[derive(Subcommand)]
enum ChaosCommand {
    /// Run an experiment file through the admin API: check the steady-state
    /// hypothesis (one or several named routes, each with its own bounds)
    /// over a baseline (refuse if it does not hold, or if a route's error
    /// budget is below min_error_budget), post the faults
    /// (each with a ttl; with a ramp, at a growing blast radius while the
    /// hypothesis holds), check the hypothesis at every sample and remove
    /// the faults at once when it breaks, then check recovery. Prints a
    /// Markdown report (with the slowest requests and the faults that hit
    /// them); exits 0 if the hypothesis held throughout, 1 if not, 2 if the
    /// experiment could not run (nothing injected: a bad file, no such
    /// route, a short error budget, or no steady state to start from). The
    /// fault needs `[chaos] enabled = true` in the Levee's configuration.
    Run {
        /// The experiment (TOML: name, duration, optional ramp,
        /// [hypothesis] or [[hypothesis]] per route, [[faults]], optional
        /// [load]: an open-loop rate, or virtual users with think time).
        file: PathBuf,
        /// The admin API of the Levee under test.
        #[arg(long, default_value = "http://127.0.0.1:9900", value_name = "URL")]
        admin: String,
        /// The admin token (admin.token), if one is set; or the
        /// LEVEE_ADMIN_TOKEN environment variable.
        #[arg(long)]
        token: Option<String>,
        /// Also write the report as JSON to this file.
        #[arg(long, value_name = "FILE")]
        report: Option<PathBuf>,
        /// Also write the report as one HTML page (plots of each route's
        /// p99 and error rate, bounds drawn, the injection shaded).
        #[arg(long, value_name = "FILE")]
        html: Option<PathBuf>,
    },
}

#[derive(Subcommand)]
enum SloCommand {
    /// Print the Prometheus recording and alerting rules (YAML) equivalent to
    /// the routes' SLOs in a configuration: error ratios over the burn-rate
    /// windows, the budget left, and the multi-window burn-rate alerts.
    Rules {
        #[arg(short, long, value_name = "FILE")]
        config: PathBuf,
    },
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    init_logging();
    // One TLS crypto provider (aws-lc-rs) for the whole process.
    levee::tls::install_provider();
    match cli.command {
        Command::Check { config } => check(&config),
        Command::Run { config } => match levee::load::load(&config) {
            Ok(c) => serve(c, Some(config), None),
            Err(e) => {
                eprintln!("levee: configuration refused: {e}");
                ExitCode::FAILURE
            }
        },
        Command::Demo {
            listen,
            admin,
            backend_port,
        } => demo(listen, admin, backend_port),
        Command::Chaos { command } => chaos(command),
        Command::Slo {
            command: SloCommand::Rules { config },
        } => slo_rules(&config),
        Command::Availability {
            expression,
            parts,
            downtime,
            per,
            config,
            json,
        } => {
            let request = levee::availability::cli::Request {
                expression,
                parts,
                downtime,
                per,
                config,
                json,
            };
            match levee::availability::cli::run(&request) {
                Ok(out) => {
                    print!("{out}");
                    ExitCode::SUCCESS
                }
                Err(e) => {
                    eprintln!("levee availability: {e}");
                    ExitCode::FAILURE
                }
            }
        }
    }
}

fn chaos(command: ChaosCommand) -> ExitCode {
    let ChaosCommand::Run {
        file,
        admin,
        token,
        report,
        html,
    } = command;
    ExitCode::from(levee::chaos::run::cli(
        &file,
        &admin,
        token,
        levee::chaos::run::Outputs {
            json: report.as_deref(),
            html: html.as_deref(),
        },
    ))
}

/// `levee slo rules --config FILE`.
fn slo_rules(path: &Path) -> ExitCode {
    match levee::load::load(path) {
        Ok(c) => {
            let routes: Vec<(String, levee::slo::Objective)> = c
                .routes
                .iter()
                .filter_map(|r| {
                    let slo = r.slo.as_ref()?;
                    Some((
                        r.name.get_ref().clone(),
                        levee::slo::Objective::from_config(slo),
                    ))
                })
                .collect();
            print!("{}", levee::slo::rules::prometheus(&routes));
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("{e}");
            ExitCode::FAILURE
        }
    }
}

fn init_logging() {
    let filter = tracing_subscriber::EnvFilter::try_from_env("LEVEE_LOG")
        // rustls warns once per handshake about things a client controls (an IP
        // address sent as SNI, which wrk and oha do): a client could make Levee
        // write a log line per connection. Its errors still show.
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info,rustls=error"));
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_target(false)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .init();
}

fn check(path: &Path) -> ExitCode {
    match levee::load::load_with_warnings(path) {
        Ok((c, warnings)) => {
            for w in warnings {
                eprintln!("{}: warning: {w}", path.display());
            }
            println!(
                "{}: ok ({} listeners, {} routes, {} clusters)",
                path.display(),
                c.listeners.len(),
                c.routes.len(),
                c.clusters.len()
            );
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("{e}");
            ExitCode::FAILURE
        }
    }
}

/// Starts the server and runs the control plane on this thread until a
/// shutdown signal. `after_start` runs once everything listens.
fn serve(
    config: config::Config,
    path: Option<PathBuf>,
    after_start: Option<Box<dyn FnOnce() + Send>>,
) -> ExitCode {
    let server = match Server::start(config, path) {
        Ok(s) => s,
        Err(e) => {
            eprintln!("levee: {e}");
            return ExitCode::FAILURE;
        }
    };
    let runtime = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(r) => r,
        Err(e) => {
            eprintln!("levee: cannot start the control loop: {e}");
            return ExitCode::FAILURE;
        }
    };
    let result = runtime.block_on(async move {
        let run = tokio::spawn(server.run_until_signalled());
        if let Some(f) = after_start {
            f();
        }
        run.await
    });
    match result {
        Ok(Ok(())) => ExitCode::SUCCESS,
        Ok(Err(e)) => {
            eprintln!("levee: {e}");
            ExitCode::FAILURE
        }
        Err(e) => {
            eprintln!("levee: control loop failed: {e}");
            ExitCode::FAILURE
        }
    }
}

fn demo(listen: SocketAddr, admin: SocketAddr, backend_port: u16) -> ExitCode {
    let backends: Vec<SocketAddr> = (0..3)
        .map(|i| SocketAddr::from(([127, 0, 0, 1], backend_port.saturating_add(i))))
        .collect();
    if let Err(e) = levee::demo::check_ports(listen, admin, &backends) {
        eprintln!("levee demo: {e}");
        return ExitCode::FAILURE;
    }
    if let Err(e) = levee::demo::start_backends(&backends) {
        eprintln!("levee demo: cannot start the demo backends: {e}");
        return ExitCode::FAILURE;
    }
    let names: Vec<String> = backends.iter().map(ToString::to_string).collect();
    let text = config::demo_text(&listen.to_string(), &admin.to_string(), &names);
    let config = match config::parse(Path::new("<demo>"), &text) {
        Ok(c) => c,
        Err(e) => {
            eprintln!("levee demo: {e}");
            return ExitCode::FAILURE;
        }
    };
    println!(
        "Levee demo: proxy on http://{listen}/ over three backends {}",
        names.join(", ")
    );
    println!("  try:     curl -i http://{listen}/hello");
    println!(
        "  limits:  for i in $(seq 8); do curl -s -o /dev/null -w '%{{http_code}} ' http://{listen}/limited; done   # 5/s per client"
    );
    println!(
        "  degrade: curl -X PUT --data minimal http://{admin}/degradation; curl -i http://{listen}/reco   # 'auto' to undo"
    );
    println!("  metrics: curl http://{admin}/metrics");
    println!("  status:  curl http://{admin}/status");
    println!(
        "  chaos:   levee chaos run examples/chaos/demo-slow-backend.toml --admin http://{admin}   # docs/chaos.md"
    );
    println!("  stop:    Ctrl-C");
    let show = Box::new(move || {
        tokio::spawn(async move { levee::demo::show_spread(listen, 6).await });
    });
    serve(config, None, Some(show))
}
