//! Provider secrets (`secretEnv`): parsing, AES-256-GCM encryption at rest, and redaction.
//!
//! The key is derived from `VM_SECRET_KEY` with HKDF-SHA256; each record gets a random 96-bit
//! nonce. Sealed form: `v1:<base64(nonce || ciphertext+tag)>`, the plaintext being a JSON object.

use std::collections::BTreeMap;
use std::fmt;

use aes_gcm::aead::{Aead, KeyInit};
use aes_gcm::{Aes256Gcm, Nonce};
use base64::engine::general_purpose::STANDARD as B64;
use base64::Engine;
use rand::RngCore;

/// Shortest `VM_SECRET_KEY` accepted.
pub const MIN_KEY_MATERIAL: usize = 16;
/// Most `secretEnv` entries a VM may hold.
pub const MAX_ENTRIES: usize = 64;
const MAX_VALUE_BYTES: usize = 16 * 1024;
const SEALED_PREFIX: &str = "v1:";

/// Secret environment variables of a provider. `Debug` never shows values.
#[derive(Clone, Default, PartialEq)]
pub struct SecretEnv(BTreeMap<String, String>);

impl fmt::Debug for SecretEnv {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "SecretEnv({:?} = <redacted>)", self.0.keys().collect::<Vec<_>>())
    }
}

/// A `secretEnv` entry that cannot be used; it names the entry but never shows a value.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{field}: {problem}")]
pub struct SecretEnvError {
    /// `secretEnv` or `secretEnv[i]`.
    pub field: String,
    /// What is wrong with it.
    pub problem: SecretEnvProblem,
}

/// What is wrong with a `secretEnv` entry.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SecretEnvProblem {
    /// More than [`MAX_ENTRIES`] entries.
    #[error("at most {MAX_ENTRIES} entries")]
    TooMany,
    /// No `=` in the entry.
    #[error("expected KEY=value")]
    NotKeyValue,
    /// The key is not an environment variable name.
    #[error("key {0:?} must match {ENV_KEY_PATTERN}")]
    BadKey(String),
    /// The value is too long or holds a NUL.
    #[error("value of {0} must be at most {MAX_VALUE_BYTES} bytes without NUL")]
    BadValue(String),
    /// The key appears twice.
    #[error("duplicate key {0}")]
    Duplicate(String),
}

/// Why sealed secrets could not be used.
#[derive(Debug, thiserror::Error)]
pub enum SecretBoxError {
    /// `VM_SECRET_KEY` is shorter than [`MIN_KEY_MATERIAL`].
    #[error("VM_SECRET_KEY must be at least {MIN_KEY_MATERIAL} characters")]
    KeyTooShort,
    /// The record lacks the `v1:` prefix or is too short to hold a nonce.
    #[error("sealed secrets are malformed")]
    Malformed,
    /// The record's base64 does not decode.
    #[error("sealed secrets are malformed")]
    Base64(#[source] base64::DecodeError),
    /// Authentication failed: another key, or the record was altered.
    #[error("sealed secrets cannot be decrypted (was VM_SECRET_KEY changed?)")]
    Undecryptable,
    /// The plaintext is not the JSON object [`SecretBox::seal`] writes.
    #[error("sealed secrets are corrupt")]
    Corrupt(#[source] serde_json::Error),
}

/// What a secret's key must look like (an environment variable name).
pub const ENV_KEY_PATTERN: &str = "[A-Za-z_][A-Za-z0-9_]*";
/// What a `secretEnv` entry must look like, as an OpenAPI/ECMA-262 pattern (`KEY=value`).
pub const ENTRY_PATTERN: &str = "^[A-Za-z_][A-Za-z0-9_]*=";

impl SecretEnv {
    /// Parses `["KEY=value", ...]`; errors name the entry index but never echo a value.
    pub fn parse(entries: &[String]) -> Result<SecretEnv, SecretEnvError> {
        if entries.len() > MAX_ENTRIES {
            return Err(SecretEnvError { field: "secretEnv".into(), problem: SecretEnvProblem::TooMany });
        }
        let mut map = BTreeMap::new();
        for (i, entry) in entries.iter().enumerate() {
            let bad = |problem| SecretEnvError { field: format!("secretEnv[{i}]"), problem };
            let Some((key, value)) = entry.split_once('=') else {
                return Err(bad(SecretEnvProblem::NotKeyValue));
            };
            if !is_env_key(key) {
                return Err(bad(SecretEnvProblem::BadKey(key.to_string())));
            }
            if value.len() > MAX_VALUE_BYTES || value.contains('\0') {
                return Err(bad(SecretEnvProblem::BadValue(key.to_string())));
            }
            if map.insert(key.to_string(), value.to_string()).is_some() {
                return Err(bad(SecretEnvProblem::Duplicate(key.to_string())));
            }
        }
        Ok(SecretEnv(map))
    }

    /// Key names, for display (values are never shown).
    pub fn keys(&self) -> Vec<String> {
        self.0.keys().cloned().collect()
    }

    /// The variables, for injecting into a provider process.
    pub fn vars(&self) -> &BTreeMap<String, String> {
        &self.0
    }

    /// True when no secrets are held.
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    /// Replaces every occurrence of a secret value in `text` by `[redacted:KEY]`.
    /// Values shorter than 4 bytes are left alone: redacting them would mangle ordinary text.
    pub fn redact(&self, text: &str) -> String {
        let mut out = text.to_string();
        let mut values: Vec<(&String, &String)> = self.0.iter().filter(|(_, v)| v.len() >= 4).collect();
        values.sort_by_key(|(_, v)| std::cmp::Reverse(v.len()));
        for (k, v) in values {
            out = out.replace(v.as_str(), &format!("[redacted:{k}]"));
        }
        out
    }

    /// True when `bytes` contains any secret value (of at least 4 bytes).
    pub fn appears_in(&self, bytes: &[u8]) -> bool {
        self.0.values().filter(|v| v.len() >= 4).any(|v| {
            let needle = v.as_bytes();
            bytes.windows(needle.len()).any(|w| w == needle)
        })
    }
}

fn is_env_key(key: &str) -> bool {
    let mut chars = key.chars();
    matches!(chars.next(), Some(c) if c == '_' || c.is_ascii_alphabetic())
        && chars.all(|c| c == '_' || c.is_ascii_alphanumeric())
}

/// Encrypts and decrypts [`SecretEnv`] records with a key derived from `VM_SECRET_KEY`.
pub struct SecretBox {
    cipher: Aes256Gcm,
}

impl SecretBox {
    /// Derives the record key from key material (at least [`MIN_KEY_MATERIAL`] bytes).
    pub fn new(key_material: &str) -> Result<SecretBox, SecretBoxError> {
        if key_material.len() < MIN_KEY_MATERIAL {
            return Err(SecretBoxError::KeyTooShort);
        }
        let hk = hkdf::Hkdf::<sha2::Sha256>::new(Some(b"rds secret-env"), key_material.as_bytes());
        let mut key = [0u8; 32];
        hk.expand(b"aes-256-gcm v1", &mut key).expect("32 bytes is a valid HKDF-SHA256 output length");
        Ok(SecretBox { cipher: Aes256Gcm::new(&key.into()) })
    }

    /// Encrypts `env` for storage.
    pub fn seal(&self, env: &SecretEnv) -> String {
        let plain = serde_json::to_vec(&env.0).expect("a string map serialises");
        let mut nonce = [0u8; 12];
        rand::thread_rng().fill_bytes(&mut nonce);
        let sealed =
            self.cipher.encrypt(Nonce::from_slice(&nonce), plain.as_ref()).expect("AES-GCM encryption cannot fail");
        let mut out = nonce.to_vec();
        out.extend(sealed);
        format!("{SEALED_PREFIX}{}", B64.encode(out))
    }

    /// Decrypts a record written by [`seal`](Self::seal).
    pub fn open(&self, sealed: &str) -> Result<SecretEnv, SecretBoxError> {
        let encoded = sealed.strip_prefix(SEALED_PREFIX).ok_or(SecretBoxError::Malformed)?;
        let raw = B64.decode(encoded).map_err(SecretBoxError::Base64)?;
        if raw.len() <= 12 {
            return Err(SecretBoxError::Malformed);
        }
        // aes-gcm's error says nothing beyond "failed" (by design), so there is no cause to keep.
        let plain = self
            .cipher
            .decrypt(Nonce::from_slice(&raw[..12]), &raw[12..])
            .map_err(|_| SecretBoxError::Undecryptable)?;
        serde_json::from_slice(&plain).map(SecretEnv).map_err(SecretBoxError::Corrupt)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn env() -> SecretEnv {
        SecretEnv::parse(&["API_TOKEN=sk-live-123456".into(), "REGION=eu".into()]).unwrap()
    }

    #[test]
    fn seal_then_open_round_trips_and_hides_the_value() {
        let b = SecretBox::new("a-long-enough-key-material").unwrap();
        let sealed = b.seal(&env());
        assert!(!sealed.contains("sk-live"));
        assert_eq!(b.open(&sealed).unwrap(), env());
        assert_ne!(sealed, b.seal(&env()), "nonces must differ");
    }

    #[test]
    fn wrong_key_or_tampering_fails() {
        let sealed = SecretBox::new("a-long-enough-key-material").unwrap().seal(&env());
        let other = SecretBox::new("another-long-key-material").unwrap();
        assert!(matches!(other.open(&sealed), Err(SecretBoxError::Undecryptable)));
        let mut bytes = sealed.into_bytes();
        let last = bytes.len() - 3;
        bytes[last] = if bytes[last] == b'A' { b'B' } else { b'A' };
        let tampered = String::from_utf8(bytes).unwrap();
        assert!(SecretBox::new("a-long-enough-key-material").unwrap().open(&tampered).is_err());
        assert!(matches!(SecretBox::new("short"), Err(SecretBoxError::KeyTooShort)));
    }

    #[test]
    fn malformed_and_corrupt_records_keep_their_cause() {
        use std::error::Error;
        let b = SecretBox::new("a-long-enough-key-material").unwrap();
        assert!(matches!(b.open("no-prefix"), Err(SecretBoxError::Malformed)));
        let err = b.open("v1:not base64!").unwrap_err();
        assert!(err.source().is_some_and(|s| s.is::<base64::DecodeError>()), "{err:?}");
        // A well-sealed record whose plaintext is not a string map.
        let mut nonce = [0u8; 12];
        rand::thread_rng().fill_bytes(&mut nonce);
        let mut raw = nonce.to_vec();
        raw.extend(b.cipher.encrypt(Nonce::from_slice(&nonce), b"[1,2]".as_ref()).unwrap());
        let err = b.open(&format!("{SEALED_PREFIX}{}", B64.encode(raw))).unwrap_err();
        assert!(err.source().is_some_and(|s| s.is::<serde_json::Error>()), "{err:?}");
    }

    #[test]
    fn parse_rejects_bad_entries_without_echoing_values() {
        for (entries, needle) in
            [(vec!["NOEQUALS"], "secretEnv[0]"), (vec!["1BAD=x"], "secretEnv[0]"), (vec!["A=1", "A=2"], "duplicate")]
        {
            let entries: Vec<String> = entries.into_iter().map(String::from).collect();
            let err = SecretEnv::parse(&entries).unwrap_err().to_string();
            assert!(err.contains(needle), "{err}");
        }
        let err = SecretEnv::parse(&["=hunter2-secret".into()]).unwrap_err();
        assert_eq!(err.field, "secretEnv[0]");
        assert!(!format!("{err} {err:?}").contains("hunter2"), "{err:?}");
    }

    #[test]
    fn redact_and_debug_never_show_values() {
        let e = env();
        assert_eq!(e.redact("token sk-live-123456 used"), "token [redacted:API_TOKEN] used");
        assert!(!format!("{e:?}").contains("sk-live"));
        assert!(e.appears_in(b"xx sk-live-123456 yy"));
        assert!(!e.appears_in(b"nothing here"));
    }
}
