//! The `Date` header of responses that do not carry one (RFC 9110 §6.6.1:
//! an origin with a clock must send it; hyper adds it too). Formatted at
//! most once a second per worker thread.

use std::cell::RefCell;
use std::time::{SystemTime, UNIX_EPOCH};

thread_local! {
    static CACHE: RefCell<(u64, [u8; 29])> = const { RefCell::new((u64::MAX, [0; 29])) };
}

/// Calls `f` with the current date as an IMF-fixdate (29 bytes).
pub fn with_now<R>(now: SystemTime, f: impl FnOnce(&[u8]) -> R) -> R {
    let secs = now.duration_since(UNIX_EPOCH).map_or(0, |d| d.as_secs());
    CACHE.with(|c| {
        let mut c = c.borrow_mut();
        if c.0 != secs {
            let text = httpdate::fmt_http_date(UNIX_EPOCH + std::time::Duration::from_secs(secs));
            let n = text.len().min(29);
            c.1[..n].copy_from_slice(&text.as_bytes()[..n]);
            c.0 = secs;
        }
        f(&c.1)
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn formats_imf_fixdate() {
        let t = UNIX_EPOCH + std::time::Duration::from_secs(784_111_777);
        with_now(t, |d| assert_eq!(d, b"Sun, 06 Nov 1994 08:49:37 GMT"));
    }
}
