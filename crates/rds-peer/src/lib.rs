//! The peer bridge's pure logic, kept free of I/O to the manager and runtimes so it can be
//! tested on its own:
//!
//! * [`manifest`]: the provider manifest (`/workspace/.rds-peer/manifest.json`), validated with
//!   errors that point at the field, and the JSON-Schema checks of call arguments and results;
//! * [`files`]: what a consumer gets in `/workspace/peers/` (index, manifests, READMEs, TypeScript and
//!   Python proxies, the bridge client), packed as a tar.gz for the agent;
//! * [`invoke`]: the snippet the manager runs inside the provider to call one export;
//! * [`mirror`]: the sanitized copy of a provider's source for `sourceMode: "mirror"`;
//! * [`secrets`]: `secretEnv` parsing, AES-256-GCM encryption at rest, and redaction.

pub mod files;
pub mod invoke;
pub mod manifest;
pub mod mirror;
pub mod secrets;

/// Path of the provider manifest, relative to the provider's workspace.
pub const MANIFEST_PATH: &str = ".rds-peer/manifest.json";
/// Directory in the consumer's workspace that peer sync owns.
pub const PEERS_DIR: &str = "peers";

/// Longest peer alias.
pub const MAX_ALIAS_LEN: usize = 64;
/// What [`is_valid_alias`] accepts, as an OpenAPI (ECMA-262) pattern; `_rds` and `__init__` are
/// reserved on top of it.
pub const ALIAS_PATTERN: &str = "^[A-Za-z_][A-Za-z0-9_]*$";

/// True when `alias` can name a peer: a valid identifier in both TypeScript and Python, so the
/// generated proxies import as `peers/<alias>/index.ts` and `peers.<alias>`.
pub fn is_valid_alias(alias: &str) -> bool {
    let mut chars = alias.chars();
    alias.len() <= MAX_ALIAS_LEN
        && matches!(chars.next(), Some(c) if c == '_' || c.is_ascii_alphabetic())
        && chars.all(|c| c == '_' || c.is_ascii_alphanumeric())
        && !matches!(alias, "_rds" | "__init__")
}

#[cfg(test)]
mod tests {
    #[test]
    fn aliases_must_be_identifiers() {
        for ok in ["google", "outlook_2", "_x", "A"] {
            assert!(super::is_valid_alias(ok), "{ok}");
        }
        for bad in ["", "2x", "a-b", "a.b", "../x", "a b", "_rds", "__init__", &"a".repeat(65)] {
            assert!(!super::is_valid_alias(bad), "{bad}");
        }
    }
}
