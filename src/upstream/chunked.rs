//! Decoding a chunked response body (RFC 9112 §7.1) as a small state machine
//! over whatever bytes have arrived. Chunk extensions and trailers are read
//! and dropped.

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
}

impl Default for Decoder {
    fn default() -> Self {
        Decoder {
            state: State::Size { any: false },
            size: 0,
        }
    }
}

impl Decoder {
    pub fn is_done(&self) -> bool {
        self.state == State::Done
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
                    State::TrailerLine
                }
                (State::TrailerLine, b'\r') => State::TrailerLf,
                (State::TrailerLine, b'\n') | (State::TrailerLf, b'\n') => State::TrailerStart,
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

    #[test]
    fn refuses_garbage() {
        assert!(decode(&[b"zz\r\n"]).is_err());
        assert!(decode(&[b"\r\n"]).is_err());
        assert!(decode(&[b"3\r\nabcX"]).is_err());
        assert!(decode(&[b"ffffffffffffffffff\r\n"]).is_err());
    }
}
