//! Decoding a chunked response body (RFC 9112 §7.1) as a small state machine
//! over whatever bytes have arrived. Chunk extensions are read and dropped;
//! the trailer section is kept (bounded) and handed on as a trailers frame,
//! so trailers pass through the proxy.

use http::HeaderMap;
use http::header::{HeaderName, HeaderValue};

/// Most bytes of a trailer section (a response head may have 64 KiB; a
/// trailer section is meant for a checksum or a status).
pub const MAX_TRAILERS: usize = 16 * 1024;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum State {
    /// Reading the hex size; `any` tells whether a digit was seen.
    Size {
        any: bool,
    },
    /// Skipping a chunk extension up to the end of the size line.
    Extension,
    SizeLf,
    Data,
    DataCr,
    DataLf,
    /// Trailer section after the last chunk: a line start.
    TrailerStart,
    TrailerLine,
    TrailerLf,
    EndLf,
    Done,
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("malformed chunked body")]
pub struct ChunkError;

/// What the decoder found at the start of the buffer.
#[derive(Debug, PartialEq, Eq)]
pub enum Step {
    /// Skip this many framing bytes.
    Skip(usize),
    /// The next this-many bytes are body data.
    Data(usize),
    /// More bytes are needed.
    NeedMore,
    /// The body ended after skipping this many bytes.
    Done(usize),
}

#[derive(Debug)]
pub struct Decoder {
    state: State,
    size: u64,
    /// The trailer section's lines as received, line ends included.
    trailers: Vec<u8>,
}

impl Default for Decoder {
    fn default() -> Self {
        Decoder {
            state: State::Size { any: false },
            size: 0,
            trailers: Vec::new(),
        }
    }
}

impl Decoder {
    pub fn is_done(&self) -> bool {
        self.state == State::Done
    }

    /// The trailer fields, once `Done`; `None` if there were none. A field
    /// that is not a valid header line fails the body: what is forwarded
    /// must be read one way only.
    pub fn take_trailers(&mut self) -> Result<Option<HeaderMap>, ChunkError> {
        if self.trailers.is_empty() {
            return Ok(None);
        }
        let mut raw = std::mem::take(&mut self.trailers);
        // The section's final empty line was consumed as the end marker.
        raw.extend_from_slice(b"\r\n");
        let mut slots = [httparse::EMPTY_HEADER; 64];
        let parsed = match httparse::parse_headers(&raw, &mut slots) {
            Ok(httparse::Status::Complete((_, fields))) => fields,
            _ => return Err(ChunkError),
        };
        let mut map = HeaderMap::with_capacity(parsed.len());
        for h in parsed {
            let name = HeaderName::from_bytes(h.name.as_bytes()).map_err(|_| ChunkError)?;
            let value = HeaderValue::from_bytes(h.value).map_err(|_| ChunkError)?;
            map.append(name, value);
        }
        Ok(Some(map))
    }

    fn keep_trailer(&mut self, b: u8) -> Result<(), ChunkError> {
        if self.trailers.len() >= MAX_TRAILERS {
            return Err(ChunkError);
        }
        self.trailers.push(b);
        Ok(())
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
                (State::Size { .. }, b'0'..=b'9' | b'a'..=b'f' | b'A'..=b'F') => {
                    let digit = (b as char).to_digit(16).unwrap_or(0) as u64;
                    self.size = self
                        .size
                        .checked_mul(16)
                        .and_then(|s| s.checked_add(digit))
                        .ok_or(ChunkError)?;
                    State::Size { any: true }
                }
                (State::Size { any: true }, b';' | b' ' | b'\t') => State::Extension,
                (State::Size { any: true }, b'\r') => State::SizeLf,
                (State::Extension, b'\r') => State::SizeLf,
                (State::Extension, b'\n')
                | (State::SizeLf, b'\n')
                | (State::Size { any: true }, b'\n') => {
                    if self.size == 0 {
                        State::TrailerStart
                    } else {
                        self.state = State::Data;
                        return Ok(Step::Skip(i));
                    }
                }
                (State::Extension, _) => State::Extension,
                (State::DataCr, b'\r') => State::DataLf,
                (State::DataCr, b'\n') | (State::DataLf, b'\n') => State::Size { any: false },
                (State::TrailerStart, b'\r') => State::EndLf,
                (State::TrailerStart, b'\n') | (State::EndLf, b'\n') => {
                    self.state = State::Done;
                    return Ok(Step::Done(i));
                }
                (State::TrailerStart, _) | (State::TrailerLine, _) if b != b'\r' && b != b'\n' => {
                    self.keep_trailer(b)?;
                    State::TrailerLine
                }
                (State::TrailerLine, b'\r') => {
                    self.keep_trailer(b)?;
                    State::TrailerLf
                }
                (State::TrailerLine, b'\n') | (State::TrailerLf, b'\n') => {
                    self.keep_trailer(b)?;
                    State::TrailerStart
                }
                _ => return Err(ChunkError),
            };
        }
        if i > 0 {
            Ok(Step::Skip(i))
        } else {
            Ok(Step::NeedMore)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Runs the decoder over `parts` as they would arrive; returns the body.
    fn decode(parts: &[&[u8]]) -> Result<(Vec<u8>, bool), ChunkError> {
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
                        return Ok((out, true));
                    }
                }
            }
        }
        Ok((out, d.is_done()))
    }

    #[test]
    fn decodes_whole_and_split() {
        let body = b"5\r\nhello\r\n7;ext=1\r\n, world\r\n0\r\n\r\n";
        assert_eq!(decode(&[body]).unwrap(), (b"hello, world".to_vec(), true));
        // Every split point gives the same result.
        for cut in 1..body.len() {
            let (a, b) = body.split_at(cut);
            assert_eq!(
                decode(&[a, b]).unwrap(),
                (b"hello, world".to_vec(), true),
                "cut {cut}"
            );
        }
    }

    #[test]
    fn trailers_and_bare_lf_and_hex() {
        assert_eq!(
            decode(&[b"A\r\n0123456789\r\n0\r\nX-Trailer: 1\r\n\r\n"]).unwrap(),
            (b"0123456789".to_vec(), true)
        );
        assert_eq!(
            decode(&[b"3\nabc\n0\n\n"]).unwrap(),
            (b"abc".to_vec(), true)
        );
        assert_eq!(
            decode(&[b"3\r\nabc\r\n"]).unwrap(),
            (b"abc".to_vec(), false)
        );
    }

    /// Decodes `body` whole and returns its trailers.
    fn trailers_of(body: &[u8]) -> Result<Option<HeaderMap>, ChunkError> {
        let mut d = Decoder::default();
        let mut at = 0;
        loop {
            match d.step(&body[at..])? {
                Step::Skip(n) | Step::Data(n) => at += n,
                Step::Done(_) => return d.take_trailers(),
                Step::NeedMore => return Err(ChunkError),
            }
        }
    }

    #[test]
    fn keeps_trailers_with_either_line_end() {
        let t = trailers_of(b"3\r\nabc\r\n0\r\nX-Sum: 1\r\nX-B: 2\n\r\n")
            .expect("valid")
            .expect("trailers");
        assert_eq!(t.get("x-sum").map(|v| v.as_bytes()), Some(&b"1"[..]));
        assert_eq!(t.get("x-b").map(|v| v.as_bytes()), Some(&b"2"[..]));
        assert_eq!(trailers_of(b"0\r\n\r\n").expect("valid"), None);
        assert!(trailers_of(b"0\r\nBad Trailer\r\n\r\n").is_err());
        let huge = format!("0\r\nX: {}\r\n\r\n", "a".repeat(MAX_TRAILERS));
        assert!(trailers_of(huge.as_bytes()).is_err());
    }

    #[test]
    fn refuses_garbage() {
        assert!(decode(&[b"zz\r\n"]).is_err());
        assert!(decode(&[b"\r\n"]).is_err());
        assert!(decode(&[b"3\r\nabcX"]).is_err());
        assert!(decode(&[b"ffffffffffffffffff\r\n"]).is_err());
    }
}
