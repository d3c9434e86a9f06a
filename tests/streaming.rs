//! Bodies stream through Levee with bounded memory: a 1 GiB download and a
//! 1 GiB upload pass through intact while Levee's peak RSS (VmHWM) stays
//! under 64 MiB. Neither side of the test holds a body in memory either: the
//! backend generates the download on the fly and counts the upload, and the
//! test checks the download's pattern chunk by chunk and generates the
//! upload as a stream.
//!
//! Both tests print their throughput. The two run one at a time (a shared
//! lock) so that each gets the machine to itself and the numbers mean
//! something. Run with `cargo test --test streaming -- --nocapture`.

mod support;

use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Mutex;
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use bytes::Bytes;
use hyper::body::{Frame, SizeHint};
use support::*;

const GIB: u64 = 1 << 30;
const RSS_LIMIT_KIB: u64 = 64 * 1024;
/// Each transfer must finish within this, or the test fails.
const TRANSFER_LIMIT: Duration = Duration::from_secs(120);

/// Serializes the tests in this file (see the module docs).
static ONE_AT_A_TIME: Mutex<()> = Mutex::new(());

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()
        .expect("runtime")
}

fn start_levee(backend: SocketAddr) -> (Levee, SocketAddr) {
    let listen = free_addr();
    let cfg = ConfigBuilder::simple(listen, &[backend])
        .set("access_log", "enabled = false")
        .set("server", "workers = 2");
    (Levee::start(&cfg.build()), listen)
}

fn client() -> reqwest::Client {
    reqwest::Client::builder()
        .timeout(TRANSFER_LIMIT)
        .build()
        .expect("client")
}

fn mib_per_s(bytes: u64, took: Duration) -> f64 {
    bytes as f64 / (1 << 20) as f64 / took.as_secs_f64()
}

#[track_caller]
fn assert_rss_bounded(levee: &Levee, when: &str) -> u64 {
    let peak = levee.peak_rss_kib().expect("levee is running");
    assert!(
        peak < RSS_LIMIT_KIB,
        "{when}: Levee's peak RSS is {peak} KiB, over the {RSS_LIMIT_KIB} KiB bound"
    );
    peak
}

/// Checks streamed bytes against the `/download` pattern (byte `i` is
/// `b'a' + i % 26`) without keeping them: each piece is compared with a
/// slice of one precomputed block (a memcmp, fast even in a debug build).
struct PatternCheck {
    block: Vec<u8>,
    offset: u64,
}

impl PatternCheck {
    const PIECE: usize = 64 * 1024;

    fn new() -> PatternCheck {
        PatternCheck {
            block: download_pattern(Self::PIECE + 26),
            offset: 0,
        }
    }

    /// Returns the absolute offset of the first wrong byte, if any.
    fn feed(&mut self, mut data: &[u8]) -> Result<(), u64> {
        while !data.is_empty() {
            let n = data.len().min(Self::PIECE);
            let phase = (self.offset % 26) as usize;
            let want = &self.block[phase..phase + n];
            if &data[..n] != want {
                let i = data.iter().zip(want).position(|(a, b)| a != b).unwrap_or(0);
                return Err(self.offset + i as u64);
            }
            self.offset += n as u64;
            data = &data[n..];
        }
        Ok(())
    }
}

#[test]
fn one_gib_download_streams_with_bounded_memory() {
    download(false);
}

/// The same without `content-length` (chunked from the backend).
#[test]
fn one_gib_chunked_download_streams_with_bounded_memory() {
    download(true);
}

fn download(chunked: bool) {
    let framing = if chunked { "chunked" } else { "content-length" };
    let _one = ONE_AT_A_TIME.lock().unwrap_or_else(|p| p.into_inner());
    let backend = Backend::start("dl");
    let (levee, listen) = start_levee(backend.addr());
    let baseline = levee.rss_kib().expect("rss");

    let rt = runtime();
    let pause = Duration::from_secs(1);
    let (received, took, paused_rss) = rt.block_on(async {
        let transfer = async {
            let mut url = format!("http://{listen}/download?bytes={GIB}");
            if chunked {
                url.push_str("&chunked=1");
            }
            let started = Instant::now();
            let mut resp = client().get(url).send().await.expect("GET /download");
            assert_eq!(resp.status(), 200);
            assert_eq!(resp.headers()["x-backend"], "dl");
            let length = resp.headers().get("content-length");
            if chunked {
                assert_eq!(length, None);
                assert_eq!(resp.headers()["transfer-encoding"], "chunked");
            } else {
                assert_eq!(
                    length.map(|v| v.to_str().unwrap()),
                    Some(GIB.to_string().as_str())
                );
            }
            let mut check = PatternCheck::new();
            let mut paused_rss = None;
            while let Some(chunk) = resp.chunk().await.expect("body chunk") {
                if let Err(at) = check.feed(&chunk) {
                    panic!("download corrupted at byte {at}");
                }
                // Once, stop reading for a moment: a proxy that buffers
                // instead of applying back-pressure would grow now.
                if paused_rss.is_none() && check.offset >= 64 << 20 {
                    tokio::time::sleep(pause).await;
                    paused_rss = Some(assert_rss_bounded(&levee, "download, reader paused"));
                }
            }
            (check.offset, started.elapsed(), paused_rss)
        };
        tokio::time::timeout(TRANSFER_LIMIT, transfer)
            .await
            .unwrap_or_else(|_| panic!("1 GiB download took over {TRANSFER_LIMIT:?}"))
    });
    assert_eq!(received, GIB, "bytes received");
    let peak = assert_rss_bounded(&levee, "after the download");
    println!(
        "download ({framing}): 1 GiB through Levee in {took:.2?} including a {pause:?} pause \
         ({:.1} MiB/s without it); Levee RSS {baseline} KiB at start, \
         {} KiB while the reader paused, peak {peak} KiB",
        mib_per_s(received, took - pause),
        paused_rss.unwrap_or(0)
    );
    assert_eq!(backend.requests(), 1);
}

#[test]
fn one_gib_upload_streams_with_bounded_memory() {
    upload(false);
}

/// The same with a chunked request body.
#[test]
fn one_gib_chunked_upload_streams_with_bounded_memory() {
    upload(true);
}

fn upload(chunked: bool) {
    let framing = if chunked { "chunked" } else { "content-length" };
    let _one = ONE_AT_A_TIME.lock().unwrap_or_else(|p| p.into_inner());
    let backend = Backend::start("ul");
    let (levee, listen) = start_levee(backend.addr());
    let baseline = levee.rss_kib().expect("rss");

    let body = reqwest::Body::wrap(GeneratedBody::new(GIB, !chunked));

    let rt = runtime();
    let (answer, took) = rt.block_on(async {
        let transfer = async {
            let started = Instant::now();
            let resp = client()
                .post(format!("http://{listen}/upload"))
                .body(body)
                .send()
                .await
                .expect("POST /upload");
            let status = resp.status();
            let text = resp.text().await.expect("answer");
            assert_eq!(status, 200, "{text}");
            (text, started.elapsed())
        };
        tokio::time::timeout(TRANSFER_LIMIT, transfer)
            .await
            .unwrap_or_else(|_| panic!("1 GiB upload took over {TRANSFER_LIMIT:?}"))
    });
    let json: serde_json::Value = serde_json::from_str(&answer).expect("JSON answer");
    assert_eq!(
        json["bytes"].as_u64(),
        Some(GIB),
        "bytes the backend received"
    );
    let peak = assert_rss_bounded(&levee, "after the upload");
    println!(
        "upload ({framing}): 1 GiB through Levee in {took:.2?} ({:.1} MiB/s); Levee RSS {baseline} KiB at start, peak {peak} KiB",
        mib_per_s(GIB, took)
    );
    assert_eq!(backend.requests(), 1);
    let seen = backend.last_request().expect("the backend saw the upload");
    if chunked {
        assert_eq!(seen.header("transfer-encoding"), Some("chunked"));
    } else {
        assert_eq!(
            seen.header("content-length"),
            Some(GIB.to_string().as_str())
        );
    }
}

/// `len` bytes of the download pattern, generated as they are sent: every
/// frame is a zero-copy slice of one 64 KiB block. With `exact` its size
/// hint makes the request carry `content-length`, otherwise it goes chunked.
struct GeneratedBody {
    block: Bytes,
    sent: u64,
    len: u64,
    exact: bool,
}

impl GeneratedBody {
    const PIECE: usize = 64 * 1024;

    fn new(len: u64, exact: bool) -> GeneratedBody {
        GeneratedBody {
            block: Bytes::from(download_pattern(Self::PIECE + 26)),
            sent: 0,
            len,
            exact,
        }
    }
}

impl hyper::body::Body for GeneratedBody {
    type Data = Bytes;
    type Error = std::convert::Infallible;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        _cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Self::Error>>> {
        let left = self.len - self.sent;
        if left == 0 {
            return Poll::Ready(None);
        }
        let n = left.min(Self::PIECE as u64) as usize;
        let phase = (self.sent % 26) as usize;
        let frame = self.block.slice(phase..phase + n);
        self.sent += n as u64;
        Poll::Ready(Some(Ok(Frame::data(frame))))
    }

    fn is_end_stream(&self) -> bool {
        self.exact && self.sent == self.len
    }

    fn size_hint(&self) -> SizeHint {
        if self.exact {
            SizeHint::with_exact(self.len - self.sent)
        } else {
            SizeHint::default()
        }
    }
}
