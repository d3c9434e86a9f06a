//! Just enough of WebSocket framing (RFC 6455 §5.2) for a proxy that wants
//! to close a tunnel politely: where the frames a side sends begin and end
//! (a close frame may only go in between two of them, never inside one),
//! and the close frames themselves. Payloads are never looked at.

/// Follows the frames of one direction of a tunnel, byte by byte, to know
/// whether the bytes passed so far end on a frame boundary.
#[derive(Debug, Clone, Default)]
pub struct Frames {
    /// The header of the frame being read, while it is incomplete.
    head: [u8; 14],
    have: u8,
    /// Payload bytes of the current frame still to come.
    payload: u64,
}

impl Frames {
    /// Takes in the bytes that passed, in order.
    pub fn feed(&mut self, mut bytes: &[u8]) {
        while !bytes.is_empty() {
            if self.payload > 0 {
                let n = self.payload.min(bytes.len() as u64);
                self.payload -= n;
                bytes = &bytes[n as usize..];
                continue;
            }
            self.head[self.have as usize] = bytes[0];
            self.have += 1;
            bytes = &bytes[1..];
            if let Some(payload) = header_complete(&self.head[..self.have as usize]) {
                self.have = 0;
                self.payload = payload;
            }
        }
    }

    /// Whether a frame may be written now: no frame is half passed.
    pub fn at_boundary(&self) -> bool {
        self.have == 0 && self.payload == 0
    }

    /// Payload bytes of the current frame still to come: they may pass
    /// unseen (`skip`), the next frame header may not.
    pub fn payload_left(&self) -> u64 {
        self.payload
    }

    /// `n` bytes of the current frame's payload passed unseen (at most
    /// `payload_left`).
    pub fn skip(&mut self, n: u64) {
        debug_assert!(n <= self.payload, "skipped past the payload");
        self.payload = self.payload.saturating_sub(n);
    }
}

/// The payload length once `head` holds a whole frame header; `None` while
/// more header bytes are needed.
fn header_complete(head: &[u8]) -> Option<u64> {
    if head.len() < 2 {
        return None;
    }
    let masked = head[1] & 0x80 != 0;
    let mask = if masked { 4 } else { 0 };
    let (extended, len) = match head[1] & 0x7f {
        126 => (2, None),
        127 => (8, None),
        n => (0, Some(u64::from(n))),
    };
    if head.len() < 2 + extended + mask {
        return None;
    }
    Some(len.unwrap_or_else(|| {
        head[2..2 + extended]
            .iter()
            .fold(0u64, |acc, b| (acc << 8) | u64::from(*b))
    }))
}

/// Status code 1001: the endpoint is going away (a server shutting down,
/// a tunnel closed by the proxy).
pub const GOING_AWAY: u16 = 1001;

/// A close frame as a server sends it (to the client): unmasked.
pub fn close_to_client(code: u16) -> [u8; 4] {
    let [hi, lo] = code.to_be_bytes();
    [0x88, 0x02, hi, lo]
}

/// A close frame as a client sends it (to the endpoint): masked with `key`
/// (RFC 6455 §5.3: every client frame is masked).
pub fn close_to_endpoint(code: u16, key: [u8; 4]) -> [u8; 8] {
    let [hi, lo] = code.to_be_bytes();
    [
        0x88,
        0x82,
        key[0],
        key[1],
        key[2],
        key[3],
        hi ^ key[0],
        lo ^ key[1],
    ]
}

#[cfg(test)]
mod tests {
    use super::*;

    fn frame(masked: bool, len: usize) -> Vec<u8> {
        let mut f = vec![0x82];
        let m = if masked { 0x80 } else { 0 };
        match len {
            0..=125 => f.push(m | len as u8),
            126..=0xffff => {
                f.push(m | 126);
                f.extend_from_slice(&(len as u16).to_be_bytes());
            }
            _ => {
                f.push(m | 127);
                f.extend_from_slice(&(len as u64).to_be_bytes());
            }
        }
        if masked {
            f.extend_from_slice(&[1, 2, 3, 4]);
        }
        f.extend(std::iter::repeat_n(0xaa, len));
        f
    }

    #[test]
    fn boundaries_of_every_length_form_in_any_split() {
        for masked in [false, true] {
            let mut stream = Vec::new();
            let mut ends = Vec::new();
            for len in [0, 5, 125, 126, 300, 70_000] {
                stream.extend(frame(masked, len));
                ends.push(stream.len());
            }
            for step in [1, 3, 7, 1000, stream.len()] {
                let mut f = Frames::default();
                let mut at = 0;
                while at < stream.len() {
                    let next = (at + step).min(stream.len());
                    f.feed(&stream[at..next]);
                    at = next;
                    assert_eq!(f.at_boundary(), ends.contains(&at), "at {at}, step {step}");
                }
            }
        }
    }

    #[test]
    fn a_payload_skipped_unseen_keeps_the_boundaries() {
        let mut stream = frame(true, 70_000);
        let end = stream.len();
        let head = end - 70_000;
        stream.extend(frame(true, 3));
        let mut f = Frames::default();
        // The header and a few payload bytes are seen...
        f.feed(&stream[..100]);
        assert_eq!(f.payload_left(), 70_000 - (100 - head) as u64);
        // ...the rest of the payload but 10 bytes passes unseen...
        f.skip(f.payload_left() - 10);
        assert!(!f.at_boundary());
        f.feed(&stream[end - 10..end]);
        assert!(f.at_boundary());
        assert_eq!(f.payload_left(), 0);
        // ...and the next frame is followed again.
        f.feed(&stream[end..end + 3]);
        assert!(!f.at_boundary());
        f.feed(&stream[end + 3..]);
        assert!(f.at_boundary());
    }

    #[test]
    fn close_frames_carry_the_code() {
        assert_eq!(close_to_client(GOING_AWAY), [0x88, 0x02, 0x03, 0xe9]);
        let masked = close_to_endpoint(GOING_AWAY, [0x10, 0x20, 0x30, 0x40]);
        assert_eq!(masked[6] ^ 0x10, 0x03);
        assert_eq!(masked[7] ^ 0x20, 0xe9);
        let mut f = Frames::default();
        f.feed(&masked);
        assert!(f.at_boundary());
    }
}
