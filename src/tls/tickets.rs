//! Session tickets sealed with keys from a file that several Levee instances
//! share, so a client resumes its session on any of them (nginx's
//! `ssl_session_ticket_key`). The file holds 80-byte keys (`openssl rand 80`);
//! the first seals new tickets, every one opens tickets: to rotate, put a new
//! key first and keep the previous one behind it for a ticket lifetime.
//! Levee re-reads the file when it changes.
//!
//! A key is a 16-byte name, a 32-byte AES-256-GCM key, and 32 bytes unused
//! (the HMAC key of nginx's layout). A ticket is `name ‖ nonce ‖ sealed`.

use std::path::Path;

use aws_lc_rs::aead::{AES_256_GCM, Aad, LessSafeKey, NONCE_LEN, Nonce, UnboundKey};

const KEY_LEN: usize = 80;
const NAME_LEN: usize = 16;
/// How long a client may keep a ticket (the lifetime rustls's own rotating
/// ticketer uses).
pub const LIFETIME_SECS: u32 = 6 * 3600;

pub struct FileTicketer {
    keys: Vec<([u8; NAME_LEN], LessSafeKey)>,
}

impl std::fmt::Debug for FileTicketer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "FileTicketer({} keys)", self.keys.len())
    }
}

impl FileTicketer {
    pub fn load(path: &Path) -> Result<FileTicketer, String> {
        let bytes =
            std::fs::read(path).map_err(|e| format!("cannot read {}: {e}", path.display()))?;
        FileTicketer::from_bytes(&bytes).map_err(|e| format!("{}: {e}", path.display()))
    }

    pub fn from_bytes(bytes: &[u8]) -> Result<FileTicketer, String> {
        if bytes.is_empty() || !bytes.len().is_multiple_of(KEY_LEN) {
            return Err(format!(
                "holds {} bytes; a ticket key file holds one or more 80-byte keys (make one with `openssl rand 80`)",
                bytes.len()
            ));
        }
        let keys = bytes
            .chunks_exact(KEY_LEN)
            .map(|k| {
                let mut name = [0u8; NAME_LEN];
                name.copy_from_slice(&k[..NAME_LEN]);
                let key = UnboundKey::new(&AES_256_GCM, &k[NAME_LEN..NAME_LEN + 32])
                    .map_err(|_| "unusable AES-256 key".to_owned())?;
                Ok((name, LessSafeKey::new(key)))
            })
            .collect::<Result<Vec<_>, String>>()?;
        Ok(FileTicketer { keys })
    }
}

impl rustls::server::ProducesTickets for FileTicketer {
    fn enabled(&self) -> bool {
        true
    }

    fn lifetime(&self) -> u32 {
        LIFETIME_SECS
    }

    fn encrypt(&self, plain: &[u8]) -> Option<Vec<u8>> {
        let (name, key) = self.keys.first()?;
        let mut nonce = [0u8; NONCE_LEN];
        aws_lc_rs::rand::fill(&mut nonce).ok()?;
        let mut sealed = plain.to_vec();
        key.seal_in_place_append_tag(
            Nonce::assume_unique_for_key(nonce),
            Aad::from(&name[..]),
            &mut sealed,
        )
        .ok()?;
        let mut out = Vec::with_capacity(NAME_LEN + NONCE_LEN + sealed.len());
        out.extend_from_slice(name);
        out.extend_from_slice(&nonce);
        out.extend_from_slice(&sealed);
        Some(out)
    }

    fn decrypt(&self, cipher: &[u8]) -> Option<Vec<u8>> {
        if cipher.len() < NAME_LEN + NONCE_LEN {
            return None;
        }
        let (name, rest) = cipher.split_at(NAME_LEN);
        let (nonce, sealed) = rest.split_at(NONCE_LEN);
        let (_, key) = self.keys.iter().find(|(n, _)| n[..] == *name)?;
        let nonce = Nonce::try_assume_unique_for_key(nonce).ok()?;
        let mut buf = sealed.to_vec();
        let plain = key.open_in_place(nonce, Aad::from(name), &mut buf).ok()?;
        let len = plain.len();
        buf.truncate(len);
        Some(buf)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rustls::server::ProducesTickets;

    fn keys(seeds: &[u8]) -> Vec<u8> {
        seeds.iter().flat_map(|&s| [s; KEY_LEN]).collect()
    }

    #[test]
    fn a_ticket_opens_with_any_instance_holding_its_key() {
        let a = FileTicketer::from_bytes(&keys(&[1])).expect("one key");
        let ticket = a.encrypt(b"session state").expect("sealed");
        // Another instance after a rotation: new key first, old one kept.
        let b = FileTicketer::from_bytes(&keys(&[2, 1])).expect("two keys");
        assert_eq!(b.decrypt(&ticket).as_deref(), Some(&b"session state"[..]));
        // The new key seals; an instance without it cannot open.
        let newer = b.encrypt(b"x").expect("sealed");
        assert_eq!(a.decrypt(&newer), None);
        // Tampering is refused.
        let mut bad = ticket.clone();
        let last = bad.len() - 1;
        bad[last] ^= 1;
        assert_eq!(b.decrypt(&bad), None);
        assert_eq!(b.decrypt(&ticket[..10]), None);
    }

    #[test]
    fn wrong_sizes_are_refused() {
        assert!(FileTicketer::from_bytes(&[]).is_err());
        assert!(FileTicketer::from_bytes(&[0; 48]).is_err());
        assert!(FileTicketer::from_bytes(&[0; 160]).is_ok());
    }
}
