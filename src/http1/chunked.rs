//! Decoding a chunked body (RFC 9112 §7.1) as a small state machine over
//! whatever bytes have arrived, for both directions of the proxy. Chunk
//! extensions are skipped; the trailer section is kept (bounded) and handed
//! on as a trailers frame, so trailers pass through.
//!
//! The two sides differ only in how strict they are:
//! - a **request** body from a client (`Decoder::request`) is refused
//!   unless it can be read one way only, because what it accepts is
//!   forwarded and a lenient reading is how requests are smuggled: every
//!   line ends in CRLF (as hyper requires), a size has at most 16 hex
//!   digits, only spaces or tabs before `;` follow it, chunk extensions
//!   are bounded (16 KiB per body) and the trailer section too (8 KiB);
//! - a **response** body from an endpoint (`Decoder::response`) is read as
//!   RFC 9112 §2.2 asks of a recipient: a bare LF ends a line, whitespace
//!   after the size starts an extension, leading zeros are fine (the size
//!   must fit 64 bits), and the trailer section may have 16 KiB.

use http::HeaderMap;
use http::header::{HeaderName, HeaderValue};

/// Most bytes of chunk extensions in one request body (hyper allows 16 KiB
/// too).
const MAX_EXTENSIONS: usize = 16 * 1024;
/// Most bytes of a request's trailer section.
pub const MAX_REQUEST_TRAILERS: usize = 8 * 1024;
/// Most bytes of a response's trailer section (a response head may have
/// 64 KiB; a trailer section is meant for a checksum or a status).
pub const MAX_RESPONSE_TRAILERS: usize = 16 * 1024;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum State {
    /// Reading the hex size; `digits` seen so far (at most 255 counted).
    Size {
        digits: u8,
    },
    /// Whitespace after the size, before `;` or CR (requests only).
    SizeWs,
    Extension,
    SizeLf,
    Data,
    DataCr,
    DataLf,
    /// A trailer line starts (or the final line end).
    TrailerStart,
    TrailerLine,
    TrailerLf,
    EndLf,
    Done,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("malformed chunked body: {0}")]
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
    /// Requests: refuse what could be read two ways (see the module doc).
    strict: bool,
    extensions: usize,
    /// The trailer section's lines as received, line ends included.
    trailers: Vec<u8>,
}

impl Decoder {
    /// For a request body from a client: strict.
    pub fn request() -> Decoder {
        Decoder::new(true)
    }

    /// For a response body from an endpoint: lenient about line ends.
    pub fn response() -> Decoder {
        Decoder::new(false)
    }

    fn new(strict: bool) -> Decoder {
        Decoder {
            state: State::Size { digits: 0 },
            size: 0,
            strict,
            extensions: 0,
            trailers: Vec::new(),
        }
    }

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
        let lenient = !self.strict;
        let mut i = 0;
        while i < buf.len() {
            let b = buf[i];
            i += 1;
            self.state = match (self.state, b) {
                (State::Size { digits }, b'0'..=b'9' | b'a'..=b'f' | b'A'..=b'F') => {
                    let too_large = ChunkError("chunk size too large");
                    if self.strict && digits >= 16 {
                        return Err(too_large);
                    }
                    let digit = (b as char).to_digit(16).unwrap_or(0) as u64;
                    self.size = self
                        .size
                        .checked_mul(16)
                        .and_then(|s| s.checked_add(digit))
                        .ok_or(too_large)?;
                    State::Size {
                        digits: digits.saturating_add(1),
                    }
                }
                (State::Size { digits: 1.. } | State::SizeWs, b' ' | b'\t') if self.strict => {
                    State::SizeWs
                }
                (State::Size { digits: 1.. }, b' ' | b'\t') => State::Extension,
                (State::Size { digits: 1.. } | State::SizeWs, b';') => State::Extension,
                (State::Size { digits: 1.. } | State::SizeWs | State::Extension, b'\r') => {
                    State::SizeLf
                }
                (State::Size { digits: 1.. } | State::Extension, b'\n') if lenient => {
                    match self.size_line_ended() {
                        Some(next) => next,
                        None => return Ok(Step::Skip(i)),
                    }
                }
                (State::Extension, b'\n') => return Err(ChunkError("bare LF in chunk extension")),
                (State::Extension, _) => {
                    if self.strict {
                        self.extensions += 1;
                        if self.extensions > MAX_EXTENSIONS {
                            return Err(ChunkError("chunk extensions too long"));
                        }
                    }
                    State::Extension
                }
                (State::SizeLf, b'\n') => match self.size_line_ended() {
                    Some(next) => next,
                    None => return Ok(Step::Skip(i)),
                },
                (State::DataCr, b'\r') => State::DataLf,
                (State::DataCr, b'\n') if lenient => State::Size { digits: 0 },
                (State::DataLf, b'\n') => State::Size { digits: 0 },
                (State::TrailerStart, b'\r') => State::EndLf,
                (State::TrailerStart, b'\n') if lenient => {
                    self.state = State::Done;
                    return Ok(Step::Done(i));
                }
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
                (State::TrailerLine, b'\n') if lenient => {
                    self.keep_trailer(b)?;
                    State::TrailerStart
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

    /// A size line ended: the trailer section comes next after the last
    /// chunk (`Some`), or the chunk's data (`None`: the state is `Data`).
    fn size_line_ended(&mut self) -> Option<State> {
        if self.size == 0 {
            Some(State::TrailerStart)
        } else {
            self.state = State::Data;
            None
        }
    }

    fn keep_trailer(&mut self, b: u8) -> Result<(), ChunkError> {
        let max = if self.strict {
            MAX_REQUEST_TRAILERS
        } else {
            MAX_RESPONSE_TRAILERS
        };
        if self.trailers.len() >= max {
            return Err(ChunkError("trailer section too large"));
        }
        self.trailers.push(b);
        Ok(())
    }
}

#[cfg(test)]
mod tests;
