//! Property tests (a bounded fuzz run in every `cargo test`) for the request
//! head parser and the chunked decoder (`crate::http1::chunked`, as requests
//! and as responses read it): whatever the bytes, no panic and no
//! accepted ambiguity (1,500 cases per property; `PROPTEST_CASES` for more).
//! Failing cases proptest finds are kept in
//! `proptest-regressions/server/h1/props.txt` and replayed first.

use bytes::BytesMut;
use proptest::prelude::*;

use super::codec::{Framing, RequestHead, parse_request_head};
use crate::http1::chunked::{Decoder, Step};

const LIMIT: usize = 4096;

/// Pieces that hostile heads are made of.
fn header_line() -> impl Strategy<Value = String> {
    let names = prop::sample::select(vec![
        "Host",
        "Content-Length",
        "content-length",
        "Transfer-Encoding",
        "transfer-encoding",
        "Connection",
        "Expect",
        "X-A",
        "Content-Length ",
        " Transfer-Encoding",
        "Transfer_Encoding",
    ]);
    let values = prop::sample::select(vec![
        "x",
        "0",
        "5",
        "05",
        "5, 5",
        "5,6",
        "+5",
        "-1",
        "18446744073709551616",
        "chunked",
        "Chunked",
        " chunked ",
        "gzip, chunked",
        "chunked, gzip",
        "chunked\r\n x",
        "close",
        "keep-alive",
        "100-continue",
        "a\u{7f}b",
        "",
    ]);
    (
        names,
        values,
        prop::sample::select(vec!["\r\n", "\n", "\r"]),
    )
        .prop_map(|(n, v, eol)| format!("{n}: {v}{eol}"))
}

fn request_head() -> impl Strategy<Value = Vec<u8>> {
    let method = prop::sample::select(vec!["GET", "POST", "PUT", "CONNECT", "PRI", "G\tET", ""]);
    let target = prop::sample::select(vec!["/", "/a?b", "*", "http://h/p", "/a b", "//", "h:1"]);
    let version = prop::sample::select(vec![
        "HTTP/1.1",
        "HTTP/1.0",
        "HTTP/2.0",
        "HTTP/1.10",
        "http/1.1",
    ]);
    (
        method,
        target,
        version,
        prop::collection::vec(header_line(), 0..6),
    )
        .prop_map(|(m, t, v, lines)| {
            let mut s = format!("{m} {t} {v}\r\n");
            for l in lines {
                s.push_str(&l);
            }
            s.push_str("\r\n");
            s.into_bytes()
        })
}

/// Byte-level damage: inserts, deletions, replacements at random places.
fn mutated(base: impl Strategy<Value = Vec<u8>>) -> impl Strategy<Value = Vec<u8>> {
    (
        base,
        prop::collection::vec((any::<usize>(), 0u8..3, any::<u8>()), 0..4),
    )
        .prop_map(|(mut bytes, edits)| {
            for (at, op, b) in edits {
                if bytes.is_empty() {
                    bytes.push(b);
                    continue;
                }
                let i = at % bytes.len();
                match op {
                    0 => bytes.insert(i, b),
                    1 => {
                        bytes.remove(i);
                    }
                    _ => bytes[i] = b,
                }
            }
            bytes
        })
}

/// The head written back in one canonical form.
fn reserialize(h: &RequestHead) -> Vec<u8> {
    let v = if h.version == http::Version::HTTP_10 {
        "1.0"
    } else {
        "1.1"
    };
    let mut s = format!("{} {} HTTP/{v}\r\n", h.method, h.uri).into_bytes();
    for (n, val) in &h.headers {
        s.extend_from_slice(n.as_str().as_bytes());
        s.extend_from_slice(b": ");
        s.extend_from_slice(val.as_bytes());
        s.extend_from_slice(b"\r\n");
    }
    s.extend_from_slice(b"\r\n");
    s
}

fn check_head(bytes: &[u8]) -> Result<(), TestCaseError> {
    let Ok(Some(h)) = parse_request_head(bytes, LIMIT) else {
        return Ok(());
    };
    prop_assert!(h.len <= bytes.len());
    // The head ends with an empty line (bare LF accepted, as hyper does).
    prop_assert!(bytes[..h.len].ends_with(b"\n\n") || bytes[..h.len].ends_with(b"\n\r\n"));
    let cl = h.headers.contains_key(http::header::CONTENT_LENGTH);
    let te = h.headers.contains_key(http::header::TRANSFER_ENCODING);
    // Both framing headers are never read as one of them.
    if cl && te {
        prop_assert_eq!(h.framing, Framing::Ambiguous);
    }
    if h.framing == Framing::Chunked {
        prop_assert!(te && !cl && h.version == http::Version::HTTP_11);
    }
    // The head means the same written back canonically.
    let again = reserialize(&h);
    let h2 = match parse_request_head(&again, LIMIT) {
        Ok(Some(h2)) => h2,
        other => {
            return Err(TestCaseError::fail(format!(
                "re-serialized head refused: {other:?}"
            )));
        }
    };
    prop_assert_eq!(&h2.method, &h.method);
    prop_assert_eq!(&h2.uri, &h.uri);
    prop_assert_eq!(h2.version, h.version);
    prop_assert_eq!(&h2.headers, &h.headers);
    prop_assert_eq!(h2.framing, h.framing);
    prop_assert_eq!(h2.keep_alive, h.keep_alive);
    prop_assert_eq!(h2.expect_continue, h.expect_continue);
    // A prefix of an accepted head is never accepted as a different head.
    for cut in [h.len / 2, h.len.saturating_sub(1)] {
        if let Ok(Some(p)) = parse_request_head(&bytes[..cut], LIMIT) {
            return Err(TestCaseError::fail(format!(
                "prefix of {cut} bytes accepted: {p:?}"
            )));
        }
    }
    Ok(())
}

/// Decodes `bytes` fed in pieces cut at `cuts`: data, end, trailers.
type Decoded = (Vec<u8>, bool, Option<http::HeaderMap>);

/// `strict`: as a request body (else as a response body).
fn decode_cut(strict: bool, bytes: &[u8], cuts: &[usize]) -> Result<Decoded, ()> {
    let mut d = if strict {
        Decoder::request()
    } else {
        Decoder::response()
    };
    let mut buf = BytesMut::new();
    let mut out = Vec::new();
    let mut points: Vec<usize> = cuts.iter().map(|c| c % (bytes.len() + 1)).collect();
    points.push(bytes.len());
    points.sort_unstable();
    let mut from = 0;
    for to in points {
        buf.extend_from_slice(&bytes[from..to]);
        from = to;
        loop {
            match d.step(&buf).map_err(|_| ())? {
                Step::Skip(n) => {
                    let _ = buf.split_to(n);
                }
                Step::Data(n) => out.extend_from_slice(&buf.split_to(n)),
                Step::NeedMore => break,
                Step::Done(n) => {
                    let _ = buf.split_to(n);
                    let t = d.take_trailers().map_err(|_| ())?;
                    return Ok((out, true, t));
                }
            }
        }
    }
    Ok((out, false, None))
}

fn chunked_body() -> impl Strategy<Value = (Vec<Vec<u8>>, Vec<(String, String)>, bool)> {
    (
        prop::collection::vec(prop::collection::vec(any::<u8>(), 1..40), 0..5),
        prop::collection::vec(("x-[a-z]{1,5}", "[a-z0-9]{0,6}"), 0..3),
        any::<bool>(),
    )
}

fn encode_chunked(chunks: &[Vec<u8>], trailers: &[(String, String)], ext: bool) -> Vec<u8> {
    let mut out = Vec::new();
    for c in chunks {
        out.extend_from_slice(format!("{:X}", c.len()).as_bytes());
        if ext {
            out.extend_from_slice(b";name=value");
        }
        out.extend_from_slice(b"\r\n");
        out.extend_from_slice(c);
        out.extend_from_slice(b"\r\n");
    }
    out.extend_from_slice(b"0\r\n");
    for (n, v) in trailers {
        out.extend_from_slice(format!("{n}: {v}\r\n").as_bytes());
    }
    out.extend_from_slice(b"\r\n");
    out
}

proptest! {
    // 1,500 cases per property in CI (a few seconds); PROPTEST_CASES=100000
    // for a longer hunt.
    #![proptest_config(ProptestConfig {
        cases: std::env::var("PROPTEST_CASES").ok().and_then(|v| v.parse().ok()).unwrap_or(1500),
        ..ProptestConfig::default()
    })]

    #[test]
    fn head_parser_never_panics_on_any_bytes(bytes in prop::collection::vec(any::<u8>(), 0..300)) {
        let _ = parse_request_head(&bytes, LIMIT);
    }

    #[test]
    fn accepted_heads_are_unambiguous(bytes in mutated(request_head())) {
        check_head(&bytes)?;
    }

    #[test]
    fn chunked_decoder_is_independent_of_packet_boundaries(
        bytes in mutated(chunked_body().prop_map(|(c, t, e)| encode_chunked(&c, &t, e))),
        cuts in prop::collection::vec(any::<usize>(), 0..4),
    ) {
        // However the bytes arrive, the result is the same: a body cannot be
        // read two ways depending on how an attacker splits its packets.
        for strict in [true, false] {
            let whole = decode_cut(strict, &bytes, &[]);
            let split = decode_cut(strict, &bytes, &cuts);
            prop_assert_eq!(whole, split);
        }
    }

    #[test]
    fn chunked_decoder_reads_back_what_was_encoded(
        (chunks, trailers, ext) in chunked_body(),
        cuts in prop::collection::vec(any::<usize>(), 0..4),
    ) {
        let bytes = encode_chunked(&chunks, &trailers, ext);
        let mut want = trailers;
        want.sort();
        for strict in [true, false] {
            let (data, done, t) = decode_cut(strict, &bytes, &cuts)
                .map_err(|_| TestCaseError::fail("refused"))?;
            prop_assert!(done);
            prop_assert_eq!(data, chunks.concat());
            let mut got: Vec<(String, String)> = t
                .iter()
                .flatten()
                .map(|(n, v)| (n.to_string(), v.to_str().unwrap_or("?").to_string()))
                .collect();
            got.sort();
            prop_assert_eq!(&got, &want);
        }
    }

    #[test]
    fn chunked_decoder_never_panics_on_any_bytes(bytes in prop::collection::vec(any::<u8>(), 0..300)) {
        let _ = decode_cut(true, &bytes, &[7, 31]);
        let _ = decode_cut(false, &bytes, &[7, 31]);
    }
}
