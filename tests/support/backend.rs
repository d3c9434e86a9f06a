//! [`Backend`]: a programmable upstream server for end-to-end tests.
//!
//! Each backend owns a thread with a current-thread tokio runtime, so it keeps
//! serving while a plain `#[test]` blocks and it never competes with a
//! `#[tokio::test]` runtime. It speaks HTTP/1.1 with keep-alive (and h2c with
//! prior knowledge, through hyper-util's auto builder).
//!
//! What a request gets is decided per request by its path and query (see
//! `behave.rs` and the table in `mod.rs`), so concurrent tests need no shared
//! state; the global knobs here (`set_status`, `fail_next`, `set_delay`) apply
//! on top. Every response carries `x-backend: <name>` and `x-backend-seq: <n>`
//! (the request's 1-based number on this backend).
//!
//! `stop()` (and `Drop`) closes the listener and drops every connection at
//! once, like a killed process: new connects are refused. `start_on(name,
//! addr)` brings a backend back on the same port.

use std::collections::VecDeque;
use std::io;
use std::net::{SocketAddr, TcpListener as StdListener};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::thread::JoinHandle;
use std::time::Duration;

use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo};
use hyper_util::server::conn::auto;
use tokio::sync::oneshot;

use super::behave;

/// How many requests [`Backend::recorded`] keeps (the most recent ones).
const LOG_CAPACITY: usize = 1000;

/// A request as the backend saw it, for assertions on forwarded headers.
#[derive(Clone, Debug)]
pub struct RecordedRequest {
    /// 1-based number of the request on this backend (same as `x-backend-seq`).
    pub seq: u64,
    pub method: String,
    /// Path and query as received (origin form), e.g. `/a?b=1`.
    pub uri: String,
    /// `HTTP/1.1`, `HTTP/2.0`, ...
    pub version: String,
    /// Every header in received order; a repeated header appears repeatedly.
    pub headers: Vec<(String, String)>,
    /// When the request head arrived.
    pub at: std::time::Instant,
    /// The address the connection came from (Levee's side of it).
    pub peer: Option<SocketAddr>,
}

/// The connection's peer, put in each request's extensions.
#[derive(Clone, Copy)]
pub struct Peer(pub SocketAddr);

impl RecordedRequest {
    /// First value of header `name` (case-insensitive).
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }
}

/// Global behaviour set from the test thread.
#[derive(Default)]
pub(super) struct Control {
    pub forced_status: Option<u16>,
    pub fail_remaining: u64,
    pub fail_status: u16,
    pub delay: Duration,
    /// Fail this share of requests (0.0..=1.0) with `ratio_status`, drawn
    /// from a seeded generator so runs are repeatable.
    pub fail_ratio: f64,
    pub ratio_status: u16,
    pub rng: u64,
    /// A server of limited capacity: at most this many requests served at
    /// once, each taking the duration; the rest wait their turn (FIFO).
    pub capacity: Option<(Arc<tokio::sync::Semaphore>, Duration)>,
}

/// State shared by the test thread and the server thread.
pub(super) struct State {
    pub name: String,
    pub requests: AtomicU64,
    pub connections: AtomicU64,
    pub open_connections: AtomicU64,
    pub in_flight: AtomicU64,
    control: Mutex<Control>,
    log: Mutex<VecDeque<RecordedRequest>>,
}

impl State {
    /// Never panics on a poisoned lock: a panicking test must not take the
    /// backend down with it.
    fn control(&self) -> MutexGuard<'_, Control> {
        self.control.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn log(&self) -> MutexGuard<'_, VecDeque<RecordedRequest>> {
        self.log.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// The status this request is forced to (consuming one `fail_next`), and
    /// the global delay.
    pub fn capacity(&self) -> Option<(Arc<tokio::sync::Semaphore>, Duration)> {
        self.control().capacity.clone()
    }

    pub fn take_forced(&self) -> (Option<u16>, Duration) {
        let mut c = self.control();
        let forced = if c.fail_remaining > 0 {
            c.fail_remaining -= 1;
            Some(c.fail_status)
        } else if c.fail_ratio > 0.0 {
            // xorshift64*, seeded by `fail_ratio`.
            let mut x = c.rng;
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            c.rng = x;
            let draw = (x.wrapping_mul(0x2545_F491_4F6C_DD1D) >> 11) as f64 / (1u64 << 53) as f64;
            if draw < c.fail_ratio {
                Some(c.ratio_status)
            } else {
                c.forced_status
            }
        } else {
            c.forced_status
        };
        (forced, c.delay)
    }

    pub fn record(&self, r: RecordedRequest) {
        let mut log = self.log();
        if log.len() == LOG_CAPACITY {
            log.pop_front();
        }
        log.push_back(r);
    }
}

/// Decrements a gauge when dropped (in-flight requests, open connections).
pub(super) struct GaugeGuard {
    state: Arc<State>,
    pick: fn(&State) -> &AtomicU64,
}

impl GaugeGuard {
    pub fn new(state: &Arc<State>, pick: fn(&State) -> &AtomicU64) -> GaugeGuard {
        pick(state).fetch_add(1, Ordering::SeqCst);
        GaugeGuard {
            state: state.clone(),
            pick,
        }
    }
}

impl Drop for GaugeGuard {
    fn drop(&mut self) {
        (self.pick)(&self.state).fetch_sub(1, Ordering::SeqCst);
    }
}

/// A running (or stopped) test backend. See the module docs.
pub struct Backend {
    addr: SocketAddr,
    state: Arc<State>,
    stop_tx: Option<oneshot::Sender<()>>,
    thread: Option<JoinHandle<()>>,
}

impl Backend {
    /// Starts a backend on 127.0.0.1 with an ephemeral port.
    pub fn start(name: &str) -> Backend {
        Backend::start_on(name, SocketAddr::from(([127, 0, 0, 1], 0)))
    }

    /// Starts a backend on `addr`; panics if it cannot bind.
    pub fn start_on(name: &str, addr: SocketAddr) -> Backend {
        match Backend::try_start_on(name, addr) {
            Ok(b) => b,
            Err(e) => panic!("backend {name}: cannot listen on {addr}: {e}"),
        }
    }

    /// Starts a backend on `addr`. The socket is bound before this returns,
    /// so the backend accepts connections as soon as it is handed back.
    pub fn try_start_on(name: &str, addr: SocketAddr) -> io::Result<Backend> {
        // std sets SO_REUSEADDR on Unix, so a stopped backend's port can be
        // bound again at once despite connections in TIME_WAIT.
        let listener = StdListener::bind(addr)?;
        listener.set_nonblocking(true)?;
        let addr = listener.local_addr()?;
        let state = Arc::new(State {
            name: name.to_owned(),
            requests: AtomicU64::new(0),
            connections: AtomicU64::new(0),
            open_connections: AtomicU64::new(0),
            in_flight: AtomicU64::new(0),
            control: Mutex::new(Control::default()),
            log: Mutex::new(VecDeque::new()),
        });
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()?;
        let (stop_tx, stop_rx) = oneshot::channel();
        let thread_state = state.clone();
        let thread = std::thread::Builder::new()
            .name(format!("backend-{name}"))
            .spawn(move || {
                runtime.block_on(accept_loop(listener, thread_state, stop_rx));
                // Dropping the runtime drops every connection task, and with
                // them their sockets: that is what makes `stop` abrupt.
                drop(runtime);
            })?;
        Ok(Backend {
            addr,
            state,
            stop_tx: Some(stop_tx),
            thread: Some(thread),
        })
    }

    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    pub fn name(&self) -> &str {
        &self.state.name
    }

    /// `http://127.0.0.1:PORT{path}`, for talking to the backend directly.
    pub fn url(&self, path: &str) -> String {
        format!("http://{}{}", self.addr, path)
    }

    /// Requests received (counted when the head has been read).
    pub fn requests(&self) -> u64 {
        self.state.requests.load(Ordering::SeqCst)
    }

    /// TCP connections accepted since start: with upstream keep-alive this
    /// stays small while `requests()` grows.
    pub fn connections(&self) -> u64 {
        self.state.connections.load(Ordering::SeqCst)
    }

    /// TCP connections open right now.
    pub fn open_connections(&self) -> u64 {
        self.state.open_connections.load(Ordering::SeqCst)
    }

    /// Requests whose response has not been fully sent (or abandoned) yet.
    pub fn in_flight(&self) -> u64 {
        self.state.in_flight.load(Ordering::SeqCst)
    }

    /// Sets `requests()` and `connections()` back to 0 (gauges are kept).
    pub fn reset_counters(&self) {
        self.state.requests.store(0, Ordering::SeqCst);
        self.state.connections.store(0, Ordering::SeqCst);
    }

    /// Forces every following request to be answered with `status`
    /// (`None` goes back to per-request behaviour).
    pub fn set_status(&self, status: Option<u16>) {
        self.state.control().forced_status = status;
    }

    /// The next `n` requests are answered with `status`, then behaviour
    /// returns to normal. Takes precedence over `set_status`.
    pub fn fail_next(&self, n: u64, status: u16) {
        let mut c = self.state.control();
        c.fail_remaining = n;
        c.fail_status = status;
    }

    /// Answers a random `ratio` (0.0..=1.0) of the following requests with
    /// `status` (a fixed seed: the same sequence every run).
    pub fn fail_ratio(&self, ratio: f64, status: u16) {
        let mut c = self.state.control();
        c.fail_ratio = ratio;
        c.ratio_status = status;
        c.rng = 0x9E37_79B9_7F4A_7C15;
    }

    /// Serves at most `concurrent` requests at once, each taking `service`
    /// (on top of any delay); the others queue, as a real server's would:
    /// past `concurrent / service` requests per second, latency grows
    /// without bound.
    pub fn set_capacity(&self, concurrent: usize, service: Duration) {
        self.state.control().capacity =
            Some((Arc::new(tokio::sync::Semaphore::new(concurrent)), service));
    }

    /// Delay added before every response head (on top of `?delay=`).
    pub fn set_delay(&self, delay: Duration) {
        self.state.control().delay = delay;
    }

    /// Clears `set_status`, `fail_next` and `set_delay`.
    pub fn reset_behaviour(&self) {
        *self.state.control() = Control::default();
    }

    /// The most recent requests (up to 1000), oldest first.
    pub fn recorded(&self) -> Vec<RecordedRequest> {
        self.state.log().iter().cloned().collect()
    }

    pub fn last_request(&self) -> Option<RecordedRequest> {
        self.state.log().back().cloned()
    }

    /// Whether the server thread is still serving.
    pub fn is_running(&self) -> bool {
        self.thread.as_ref().is_some_and(|t| !t.is_finished())
    }

    /// Closes the listener and every connection, and waits until they are
    /// closed: afterwards a connect to `addr()` is refused. Idempotent.
    pub fn stop(&mut self) {
        if let Some(tx) = self.stop_tx.take() {
            let _ = tx.send(());
        }
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

impl Drop for Backend {
    fn drop(&mut self) {
        self.stop();
    }
}

impl std::fmt::Debug for Backend {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Backend")
            .field("name", &self.state.name)
            .field("addr", &self.addr)
            .finish()
    }
}

async fn accept_loop(listener: StdListener, state: Arc<State>, mut stop: oneshot::Receiver<()>) {
    let listener = match tokio::net::TcpListener::from_std(listener) {
        Ok(l) => l,
        Err(e) => {
            eprintln!("backend {}: cannot register listener: {e}", state.name);
            return;
        }
    };
    loop {
        tokio::select! {
            // A send or a dropped sender both mean stop.
            _ = &mut stop => return,
            accepted = listener.accept() => match accepted {
                Ok((stream, peer)) => serve_connection(stream, peer, &state),
                // Out of file descriptors and the like: back off, keep going.
                Err(_) => tokio::time::sleep(Duration::from_millis(5)).await,
            },
        }
    }
}

fn serve_connection(stream: tokio::net::TcpStream, peer: SocketAddr, state: &Arc<State>) {
    state.connections.fetch_add(1, Ordering::SeqCst);
    let open = GaugeGuard::new(state, |s| &s.open_connections);
    // Small writes (slow-body chunks) must leave at once, not wait for Nagle.
    let _ = stream.set_nodelay(true);
    let state = state.clone();
    tokio::spawn(async move {
        let _open = open;
        let service = service_fn(move |mut req: hyper::Request<hyper::body::Incoming>| {
            let state = state.clone();
            req.extensions_mut().insert(Peer(peer));
            // An `Err` (only `/drop` returns one) makes hyper close the
            // connection without writing a response.
            behave::handle(state, req)
        });
        let builder = auto::Builder::new(TokioExecutor::new());
        // A connection error (client went away, `/drop`, `/close-mid`) ends
        // only this connection.
        let _ = builder
            .serve_connection(TokioIo::new(stream), service)
            .await;
    });
}
