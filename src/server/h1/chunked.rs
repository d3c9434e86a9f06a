//! Decoding a chunked request body (RFC 9112 §7.1) as a small state machine
//! over whatever bytes have arrived. Stricter than the upstream side's
//! decoder, because what it accepts is forwarded: every line ends in CRLF
//! (as hyper requires), a size has at most 16 hex digits, chunk extensions
//! are skipped within a bound, and the trailer section is kept (bounded) and
//! handed on as a trailers frame.

use http::HeaderMap;
use http::header::{HeaderName, HeaderValue};

/// Most bytes of chunk extensions in one body (hyper allows 16 KiB too).
const MAX_EXTENSIONS: usize = 16 * 1024;
/// Most bytes of a trailer section.
pub const MAX_TRAILERS: usize = 8 * 1024;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum State {
    /// Reading the hex size; `digits` seen so far.
    Size {
        digits: u8,
    },
    /// Whitespace after the size, before `;` or CR.
    SizeWs,
    Extension,
    SizeLf,
    Data,
    DataCr,
    DataLf,
    /// A trailer line starts (or the final CRLF).
    TrailerStart,
    TrailerLine,
    TrailerLf,
    EndLf,
    Done,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("malformed chunked request body: {0}")]
pub struct ChunkError(pub &'static str);

/// What the decoder found at the start of the buffer.
#[derive(Debug, PartialEq, Eq)]
pub enum Step {
    /// Skip this many framing bytes.
    Skip(usize),
    /// The next this-many bytes are body data.
    Data(usize),
    /// More bytes are needed.
    NeedMore,
    /// The body ended after skipping this many bytes; trailers (if any)
    /// are in `take_trailers`.
    Done(usize),
}

#[derive(Debug)]
pub struct Decoder {
    state: State,
    size: u64,
    extensions: usize,
    trailers: Vec<u8>,
}

impl Default for Decoder {
    fn default() -> Self {
        Decoder {
            state: State::Size { digits: 0 },
            size: 0,
            extensions: 0,
            trailers: Vec::new(),
        }
    }
}

impl Decoder {
    pub fn is_done(&self) -> bool {
        self.state == State::Done
    }

    /// The trailer fields, once `Done`; `None` if there were none.
    pub fn take_trailers(&mut self) -> Result<Option<HeaderMap>, ChunkError> {
        if self.trailers.is_empty() {
            return Ok(None);
        }
        let mut raw = std::mem::take(&mut self.trailers);
        // The section's final empty line was consumed as the end marker.
        raw.extend_from_slice(b"\r\n");
        let mut slots = [httparse::EMPTY_HEADER; 64];
        let bad = ChunkError("bad trailer section");
        let parsed = match httparse::parse_headers(&raw, &mut slots) {
            Ok(httparse::Status::Complete((_, fields))) => fields,
            _ => return Err(bad),
        };
        let mut map = HeaderMap::with_capacity(parsed.len());
        for h in parsed {
            let name = HeaderName::from_bytes(h.name.as_bytes()).map_err(|_| bad)?;
            let value = HeaderValue::from_bytes(h.value).map_err(|_| bad)?;
            map.append(name, value);
        }
        Ok(Some(map))
    }

    /// Looks at `buf` and says what its first bytes are. The caller consumes
    /// what `Skip`/`Data`/`Done` name and calls again.
    pub fn step(&mut self, buf: &[u8]) -> Result<Step, ChunkError> {
        if self.state == State::Data {
            if buf.is_empty() {
                return Ok(Step::NeedMore);
            }
            let n = (buf.len() as u64).min(self.size);
            self.size -= n;
            if self.size == 0 {
                self.state = State::DataCr;
            }
            return Ok(Step::Data(n as usize));
        }
        let mut i = 0;
        while i < buf.len() {
            let b = buf[i];
            i += 1;
            self.state = match (self.state, b) {
                (State::Size { digits }, b'0'..=b'9' | b'a'..=b'f' | b'A'..=b'F') => {
                    if digits >= 16 {
                        return Err(ChunkError("chunk size too large"));
                    }
                    let digit = (b as char).to_digit(16).unwrap_or(0) as u64;
                    self.size = self.size * 16 + digit;
                    State::Size { digits: digits + 1 }
                }
                (State::Size { digits: 1.. } | State::SizeWs, b' ' | b'\t') => State::SizeWs,
                (State::Size { digits: 1.. } | State::SizeWs, b';') => State::Extension,
                (State::Size { digits: 1.. } | State::SizeWs | State::Extension, b'\r') => {
                    State::SizeLf
                }
                (State::Extension, b'\n') => return Err(ChunkError("bare LF in chunk extension")),
                (State::Extension, _) => {
                    self.extensions += 1;
                    if self.extensions > MAX_EXTENSIONS {
                        return Err(ChunkError("chunk extensions too long"));
                    }
                    State::Extension
                }
                (State::SizeLf, b'\n') => {
                    if self.size == 0 {
                        State::TrailerStart
                    } else {
                        self.state = State::Data;
                        return Ok(Step::Skip(i));
                    }
                }
                (State::DataCr, b'\r') => State::DataLf,
                (State::DataLf, b'\n') => State::Size { digits: 0 },
                (State::TrailerStart, b'\r') => State::EndLf,
                (State::EndLf, b'\n') => {
                    self.state = State::Done;
                    return Ok(Step::Done(i));
                }
                (State::TrailerStart | State::TrailerLine, _) if b != b'\r' && b != b'\n' => {
                    self.keep_trailer(b)?;
                    State::TrailerLine
                }
                (State::TrailerLine, b'\r') => {
                    self.keep_trailer(b)?;
                    State::TrailerLf
                }
                (State::TrailerLf, b'\n') => {
                    self.keep_trailer(b)?;
                    State::TrailerStart
                }
                _ => return Err(ChunkError("bad chunk framing")),
            };
        }
        if i > 0 {
            Ok(Step::Skip(i))
        } else {
            Ok(Step::NeedMore)
        }
    }

    fn keep_trailer(&mut self, b: u8) -> Result<(), ChunkError> {
        if self.trailers.len() >= MAX_TRAILERS {
            return Err(ChunkError("trailer section too large"));
        }
        self.trailers.push(b);
        Ok(())
    }
}

#[cfg(test)]
pub mod tests {
    use super::*;

    /// Runs the decoder over `parts` as they would arrive: the body, whether
    /// it ended, its trailers.
    pub fn decode(parts: &[&[u8]]) -> Result<(Vec<u8>, bool, Option<HeaderMap>), ChunkError> {
        let mut d = Decoder::default();
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

    #[test]
    fn decodes_whole_and_split() {
        let body = b"5\r\nhello\r\n7;ext=1\r\n, world\r\n0\r\n\r\n";
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

    #[test]
    fn keeps_trailers() {
        let (data, done, t) =
            decode(&[b"3\r\nabc\r\n0\r\nX-Sum: 1\r\nX-B: 2\r\n\r\n"]).expect("valid");
        assert_eq!((data.as_slice(), done), (&b"abc"[..], true));
        let t = t.expect("trailers");
        assert_eq!(t.get("x-sum").map(|v| v.as_bytes()), Some(&b"1"[..]));
        assert_eq!(t.get("x-b").map(|v| v.as_bytes()), Some(&b"2"[..]));
    }

    #[test]
    fn refuses_what_could_be_read_two_ways() {
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
                decode(&[bad]).is_err(),
                "{:?}",
                String::from_utf8_lossy(bad)
            );
        }
    }
}
