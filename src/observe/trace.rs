//! W3C Trace Context (`traceparent`, `tracestate`): a request that arrives
//! with a valid `traceparent` keeps its trace id; one without (or with an
//! invalid one) starts a trace. Each try upstream is a child span of its
//! own: the endpoint gets `traceparent` with the request's trace id and a
//! new span id, so two tries of one request can be told apart in the
//! endpoint's traces. The trace id goes into the access log line.
//!
//! A trace Levee starts is marked sampled (flag 01) for the services behind
//! it to record, whether or not Levee exports its own spans
//! (`observe::otlp`, off by default); an incoming trace keeps its flags. `tracestate` is passed on untouched when `traceparent` was
//! valid and dropped when it was not (the spec ties one to the other).

use std::sync::atomic::{AtomicU64, Ordering};

use http::header::{HeaderMap, HeaderName, HeaderValue};

pub static TRACEPARENT: HeaderName = HeaderName::from_static("traceparent");
pub static TRACESTATE: HeaderName = HeaderName::from_static("tracestate");

/// A request's place in a trace.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct TraceContext {
    pub trace_id: u128,
    /// The caller's span (`None`: Levee started the trace).
    pub parent: Option<u64>,
    pub flags: u8,
    /// Ids come from this process's seed and a counter.
    seed: u64,
}

static SEQ: AtomicU64 = AtomicU64::new(0);

fn next_id(seed: u64) -> u64 {
    loop {
        let n = SEQ.fetch_add(1, Ordering::Relaxed);
        let id = splitmix64(seed ^ n.wrapping_mul(0xA24B_AED4_963E_E407));
        // All zeroes is invalid in both ids.
        if id != 0 {
            return id;
        }
    }
}

fn splitmix64(mut z: u64) -> u64 {
    z = z.wrapping_add(0x9E37_79B9_7F4A_7C15);
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

fn hex(b: &[u8]) -> Option<u128> {
    if b.is_empty() || !b.iter().all(|c| matches!(c, b'0'..=b'9' | b'a'..=b'f')) {
        return None;
    }
    u128::from_str_radix(std::str::from_utf8(b).ok()?, 16).ok()
}

/// Parses a `traceparent` value: `version-traceid-parentid-flags`, lower-case
/// hex. Version `ff` is invalid; version 00 has exactly these four fields; a
/// later version may add fields after the flags (read as 00 then).
pub fn parse(value: &[u8]) -> Option<(u128, u64, u8)> {
    if value.len() < 55 || value[2] != b'-' || value[35] != b'-' || value[52] != b'-' {
        return None;
    }
    let version = hex(&value[0..2])?;
    if version == 0xff || (version == 0 && value.len() != 55) {
        return None;
    }
    if value.len() > 55 && value[55] != b'-' {
        return None;
    }
    let trace = hex(&value[3..35])?;
    let parent = hex(&value[36..52])? as u64;
    let flags = hex(&value[53..55])? as u8;
    (trace != 0 && parent != 0).then_some((trace, parent, flags))
}

impl TraceContext {
    /// The request's context: from its `traceparent` (exactly one valid
    /// line), or a new trace.
    pub fn from_headers(headers: &HeaderMap, seed: u64) -> TraceContext {
        let mut lines = headers.get_all(&TRACEPARENT).iter();
        let given = match (lines.next(), lines.next()) {
            (Some(v), None) => parse(v.as_bytes()),
            _ => None,
        };
        match given {
            Some((trace_id, parent, flags)) => TraceContext {
                trace_id,
                parent: Some(parent),
                flags,
                seed,
            },
            None => TraceContext {
                trace_id: (u128::from(next_id(seed)) << 64) | u128::from(next_id(seed)),
                parent: None,
                flags: 0x01,
                seed,
            },
        }
    }

    /// Readies the upstream head: a `tracestate` that came without a valid
    /// `traceparent` is dropped (each try sets its own `traceparent`).
    pub fn prepare(&self, headers: &mut HeaderMap) {
        if self.parent.is_none() {
            headers.remove(&TRACESTATE);
        }
    }

    /// `traceparent` for one try: this trace, a new span id.
    pub fn child(&self) -> HeaderValue {
        self.header(self.new_span())
    }

    /// A new span id in this trace (a try's, or the request's own when its
    /// spans are exported).
    pub fn new_span(&self) -> u64 {
        next_id(self.seed)
    }

    /// `traceparent` naming `span` as the caller's span.
    pub fn header(&self, span: u64) -> HeaderValue {
        // Written digit by digit: this runs on every try, and `format!`
        // costs a String and several times the instructions.
        // Two digits per byte of the value: shifting a u128 per digit cost
        // several times as much.
        fn put_hex(dst: &mut [u8], bytes: &[u8]) {
            const HEX: &[u8; 16] = b"0123456789abcdef";
            for (pair, b) in dst.chunks_exact_mut(2).zip(bytes) {
                pair[0] = HEX[usize::from(b >> 4)];
                pair[1] = HEX[usize::from(b & 0xf)];
            }
        }
        let mut v = *b"00-00000000000000000000000000000000-0000000000000000-00";
        put_hex(&mut v[3..35], &self.trace_id.to_be_bytes());
        put_hex(&mut v[36..52], &span.to_be_bytes());
        put_hex(&mut v[53..55], &[self.flags]);
        HeaderValue::from_bytes(&v).unwrap_or_else(|_| HeaderValue::from_static(""))
    }

    pub fn trace_id_hex(&self) -> String {
        format!("{:032x}", self.trace_id)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const GOOD: &str = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";

    #[test]
    fn parses_the_spec_example_and_refuses_bad_ones() {
        let (t, p, f) = parse(GOOD.as_bytes()).unwrap();
        assert_eq!(t, 0x4bf92f3577b34da6a3ce929d0e0e4736);
        assert_eq!(p, 0x00f067aa0ba902b7);
        assert_eq!(f, 1);
        for bad in [
            "00-00000000000000000000000000000000-00f067aa0ba902b7-01",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-0000000000000000-01",
            "ff-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
            "00-4BF92F3577B34DA6A3CE929D0E0E4736-00f067aa0ba902b7-01",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01-extra",
            "00-4bf92f3577b34da6a3ce929d0e0e473-00f067aa0ba902b7-01",
            "",
        ] {
            assert_eq!(parse(bad.as_bytes()), None, "{bad}");
        }
        // A later version may carry more fields.
        assert!(parse(format!("01{}-more", &GOOD[2..]).as_bytes()).is_some());
    }

    #[test]
    fn keeps_a_trace_or_starts_one_and_each_try_is_a_new_span() {
        let mut h = HeaderMap::new();
        h.insert(&TRACEPARENT, HeaderValue::from_static(GOOD));
        h.insert(&TRACESTATE, HeaderValue::from_static("congo=t61rcWkgMzE"));
        let c = TraceContext::from_headers(&h, 7);
        assert_eq!(c.trace_id_hex(), "4bf92f3577b34da6a3ce929d0e0e4736");
        c.prepare(&mut h);
        assert!(h.contains_key(&TRACESTATE));
        let (a, b) = (c.child(), c.child());
        assert_ne!(a, b);
        let (t, p, f) = parse(a.as_bytes()).unwrap();
        assert_eq!((t, f), (c.trace_id, 1));
        assert_ne!(p, 0x00f067aa0ba902b7);

        let mut bad = HeaderMap::new();
        bad.insert(&TRACEPARENT, HeaderValue::from_static("garbage"));
        bad.insert(&TRACESTATE, HeaderValue::from_static("congo=x"));
        let n = TraceContext::from_headers(&bad, 7);
        assert_eq!(n.parent, None);
        n.prepare(&mut bad);
        assert!(!bad.contains_key(&TRACESTATE));
        assert_ne!(n.trace_id, 0);
        assert_ne!(TraceContext::from_headers(&bad, 7).trace_id, n.trace_id);
    }
}
