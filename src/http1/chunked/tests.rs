use super::*;

/// Runs `d` over `parts` as they would arrive: the body, whether it
/// ended, its trailers.
fn decode_with(
    mut d: Decoder,
    parts: &[&[u8]],
) -> Result<(Vec<u8>, bool, Option<HeaderMap>), ChunkError> {
    let mut buf = Vec::new();
    let mut out = Vec::new();
    for p in parts {
        buf.extend_from_slice(p);
        loop {
            match d.step(&buf)? {
                Step::Skip(n) => {
                    buf.drain(..n);
                }
                Step::Data(n) => {
                    out.extend(buf.drain(..n));
                }
                Step::NeedMore => break,
                Step::Done(n) => {
                    buf.drain(..n);
                    let t = d.take_trailers()?;
                    return Ok((out, true, t));
                }
            }
        }
    }
    Ok((out, d.is_done(), None))
}

fn request(parts: &[&[u8]]) -> Result<(Vec<u8>, bool, Option<HeaderMap>), ChunkError> {
    decode_with(Decoder::request(), parts)
}

fn response(parts: &[&[u8]]) -> Result<(Vec<u8>, bool, Option<HeaderMap>), ChunkError> {
    decode_with(Decoder::response(), parts)
}

#[test]
fn both_sides_decode_whole_and_split() {
    let body = b"5\r\nhello\r\n7;ext=1\r\n, world\r\n0\r\n\r\n";
    for decode in [request, response] {
        for cut in 0..body.len() {
            let (a, b) = body.split_at(cut);
            let (data, done, t) = decode(&[a, b]).expect("valid");
            assert_eq!(
                (data.as_slice(), done, t),
                (&b"hello, world"[..], true, None),
                "cut {cut}"
            );
        }
    }
}

#[test]
fn both_sides_keep_trailers() {
    for decode in [request, response] {
        let (data, done, t) =
            decode(&[b"3\r\nabc\r\n0\r\nX-Sum: 1\r\nX-B: 2\r\n\r\n"]).expect("valid");
        assert_eq!((data.as_slice(), done), (&b"abc"[..], true));
        let t = t.expect("trailers");
        assert_eq!(t.get("x-sum").map(|v| v.as_bytes()), Some(&b"1"[..]));
        assert_eq!(t.get("x-b").map(|v| v.as_bytes()), Some(&b"2"[..]));
        assert_eq!(decode(&[b"0\r\n\r\n"]).expect("valid").2, None);
        assert!(decode(&[b"0\r\nBad Trailer\r\n\r\n"]).is_err());
    }
}

#[test]
fn a_request_body_that_could_be_read_two_ways_is_refused() {
    for bad in [
        &b"zz\r\n"[..],
        b"\r\n",
        b"3\r\nabcX",
        b"3\nabc\n0\n\n",
        b"3\r\nabc\n0\r\n\r\n",
        b"11111111111111111\r\n",
        b"-1\r\n",
        b"0x3\r\n",
        b" 3\r\n",
        b"3;a\nabc",
        b"0\r\nBad Trailer\r\n\r\n",
    ] {
        assert!(
            request(&[bad]).is_err(),
            "{:?}",
            String::from_utf8_lossy(bad)
        );
    }
    let long_extension = format!("3;{}\r\nabc\r\n0\r\n\r\n", "e".repeat(MAX_EXTENSIONS + 1));
    assert!(request(&[long_extension.as_bytes()]).is_err());
    let huge = format!("0\r\nX: {}\r\n\r\n", "a".repeat(MAX_REQUEST_TRAILERS));
    assert!(request(&[huge.as_bytes()]).is_err());
}

#[test]
fn a_response_body_may_end_lines_with_a_bare_lf() {
    assert_eq!(
        response(&[b"A\r\n0123456789\r\n0\r\nX-Trailer: 1\r\n\r\n"])
            .expect("valid")
            .0,
        b"0123456789".to_vec()
    );
    let (data, done, _) = response(&[b"3\nabc\n0\n\n"]).expect("valid");
    assert_eq!((data.as_slice(), done), (&b"abc"[..], true));
    let (data, done, _) = response(&[b"3\r\nabc\r\n"]).expect("valid");
    assert_eq!((data.as_slice(), done), (&b"abc"[..], false));
    let (_, _, t) = response(&[b"3\r\nabc\r\n0\r\nX-Sum: 1\r\nX-B: 2\n\r\n"]).expect("valid");
    let t = t.expect("trailers");
    assert_eq!(t.get("x-b").map(|v| v.as_bytes()), Some(&b"2"[..]));
    // Leading zeros, whitespace before an extension.
    let (data, _, _) = response(&[b"00000000000000000003 ;x\r\nabc\r\n0\r\n\r\n"]).expect("valid");
    assert_eq!(data, b"abc".to_vec());
    let huge = format!("0\r\nX: {}\r\n\r\n", "a".repeat(MAX_RESPONSE_TRAILERS));
    assert!(response(&[huge.as_bytes()]).is_err());
}

#[test]
fn a_response_body_that_cannot_be_read_is_refused() {
    for bad in [
        &b"zz\r\n"[..],
        b"\r\n",
        b"3\r\nabcX",
        b"ffffffffffffffffff\r\n",
    ] {
        assert!(
            response(&[bad]).is_err(),
            "{:?}",
            String::from_utf8_lossy(bad)
        );
    }
}
