//! The root password, kept only as a salted SHA-256 digest. Its `Debug` shows nothing.

use std::fmt;

use sha2::{Digest, Sha256};

#[derive(Clone, PartialEq, Eq)]
pub struct PasswordHash {
    salt: [u8; 16],
    digest: [u8; 32],
}

impl PasswordHash {
    /// Hash `password` under a fresh random salt.
    pub fn new(password: &str) -> PasswordHash {
        let salt = *uuid::Uuid::new_v4().as_bytes();
        PasswordHash {
            salt,
            digest: digest(&salt, password),
        }
    }

    /// Whether `password` is the one hashed; compares in constant time.
    pub fn verify(&self, password: &str) -> bool {
        let candidate = digest(&self.salt, password);
        candidate
            .iter()
            .zip(&self.digest)
            .fold(0u8, |acc, (a, b)| acc | (a ^ b))
            == 0
    }

    /// `(salt, digest)` in hex, for the state file.
    pub(super) fn to_hex(&self) -> (String, String) {
        (hex::encode(self.salt), hex::encode(self.digest))
    }

    pub(super) fn from_hex(salt: &str, digest: &str) -> Option<PasswordHash> {
        Some(PasswordHash {
            salt: hex::decode(salt).ok()?.try_into().ok()?,
            digest: hex::decode(digest).ok()?.try_into().ok()?,
        })
    }
}

fn digest(salt: &[u8], password: &str) -> [u8; 32] {
    let mut hasher = Sha256::new();
    hasher.update(salt);
    hasher.update(password.as_bytes());
    hasher.finalize().into()
}

impl fmt::Debug for PasswordHash {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("PasswordHash(<redacted>)")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn verifies_only_the_password_and_survives_hex() {
        let hash = PasswordHash::new("s3cret");
        assert!(hash.verify("s3cret"));
        assert!(!hash.verify("s3cret "));
        let (salt, digest) = hash.to_hex();
        assert_eq!(PasswordHash::from_hex(&salt, &digest), Some(hash.clone()));
        assert_eq!(PasswordHash::from_hex("00", &digest), None);
        assert!(!format!("{hash:?}").contains(&digest));
        assert_ne!(
            PasswordHash::new("s3cret").to_hex().0,
            salt,
            "salts are fresh"
        );
    }
}
