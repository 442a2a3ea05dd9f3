//! Kurral key format: `kr_live_` followed by 40 base62 characters (238 bits of entropy), so a
//! key is unguessable and survives any header or shell quoting untouched.

use sha2::{Digest, Sha256};

pub const KEY_PREFIX: &str = "kr_live_";
const SECRET_CHARS: usize = 40;
const ALPHABET: &[u8; 62] = b"0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz";

pub type KeyHash = [u8; 32];

/// A new random key.
pub fn generate_key() -> String {
    let mut key = String::with_capacity(KEY_PREFIX.len() + SECRET_CHARS);
    key.push_str(KEY_PREFIX);
    key.push_str(&random_base62(SECRET_CHARS));
    key
}

/// `n` random base62 characters, by rejection sampling so every character is equally likely.
pub fn random_base62(n: usize) -> String {
    let mut out = String::with_capacity(n);
    let mut buf = [0u8; 64];
    while out.len() < n {
        getrandom::getrandom(&mut buf).expect("the OS random source is available");
        for &b in &buf {
            // 248 = 4 * 62: bytes at or above it would bias the low characters.
            if b < 248 && out.len() < n {
                out.push(ALPHABET[(b % 62) as usize] as char);
            }
        }
    }
    out
}

pub fn hash_key(key: &[u8]) -> KeyHash {
    Sha256::digest(key).into()
}

pub fn to_hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

pub fn from_hex(s: &str) -> Option<KeyHash> {
    if s.len() != 64 {
        return None;
    }
    let mut out = [0u8; 32];
    for (i, pair) in s.as_bytes().chunks(2).enumerate() {
        out[i] = u8::from_str_radix(std::str::from_utf8(pair).ok()?, 16).ok()?;
    }
    Some(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_have_the_documented_shape_and_differ() {
        let a = generate_key();
        let b = generate_key();
        assert!(a.starts_with("kr_live_"));
        assert_eq!(a.len(), 48);
        assert!(a[8..].bytes().all(|c| c.is_ascii_alphanumeric()));
        assert_ne!(a, b);
    }

    #[test]
    fn hex_round_trips() {
        let h = hash_key(b"kr_live_x");
        assert_eq!(from_hex(&to_hex(&h)), Some(h));
        assert_eq!(from_hex("zz"), None);
    }
}
