//! The installation id and the host names built from it.
//!
//! Several managers (each with its own `STORAGE_ROOT`) may share one host. Every host object a
//! manager's networking creates carries its installation id, so one manager never mistakes
//! another's interfaces, table or address claims for its own orphans:
//!
//! | object | name |
//! |---|---|
//! | nftables table | `inet rds-<id>` |
//! | host interface (veth end or TAP) of slot `n` | `rds<id><n>` (≤ 15 bytes, IFNAMSIZ) |
//! | address claim of a /30 | `/run/rds/slots/<network address>` → `<id>` |

use std::fmt;

/// Characters of an installation id (RFC 4648 base32, lowercase): safe in interface names,
/// cgroup names, nft identifiers and file names.
const ALPHABET: &[u8; 32] = b"abcdefghijklmnopqrstuvwxyz234567";

/// Length of every installation id.
pub const INSTALLATION_ID_LEN: usize = 6;

/// Prefix of every host interface name (`rds<id><slot>`).
const IFACE_PREFIX: &str = "rds";

/// Longest interface name the kernel accepts (IFNAMSIZ 16 minus the terminating NUL).
pub const MAX_IFACE_LEN: usize = 15;

/// Highest slot index an interface name can carry: `rds` + 6-character id + 6 digits = 15 bytes.
pub const MAX_SLOT_INDEX: u32 = 999_999;

/// Why a text is not an installation id.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("installation id {0:?} must be {INSTALLATION_ID_LEN} characters of a-z and 2-7")]
pub struct BadInstallationId(pub String);

/// One manager installation's id: generated once, kept in its store, part of every host name.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct InstallationId(String);

impl InstallationId {
    /// A fresh random id (30 bits).
    pub fn generate() -> InstallationId {
        let id = (0..INSTALLATION_ID_LEN).map(|_| ALPHABET[rand::random::<usize>() % ALPHABET.len()] as char).collect();
        InstallationId(id)
    }

    /// Validates a stored id.
    pub fn parse(text: &str) -> Result<InstallationId, BadInstallationId> {
        if text.len() == INSTALLATION_ID_LEN && text.bytes().all(|b| ALPHABET.contains(&b)) {
            Ok(InstallationId(text.to_string()))
        } else {
            Err(BadInstallationId(text.chars().take(40).collect()))
        }
    }

    /// The id's text.
    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// This installation's nftables table (family `inet`).
    pub fn nft_table(&self) -> String {
        format!("rds-{}", self.0)
    }

    /// Host-side interface name of slot `index` (`rds<id><index>`); `index` ≤ [`MAX_SLOT_INDEX`].
    pub fn iface_name(&self, index: u32) -> String {
        format!("{IFACE_PREFIX}{}{index}", self.0)
    }

    /// nft wildcard matching every host interface of this installation, and no other's.
    pub fn iface_wildcard(&self) -> String {
        format!("{IFACE_PREFIX}{}*", self.0)
    }

    /// The slot index in a host interface name, if the interface is one of this installation's.
    pub fn index_from_iface(&self, name: &str) -> Option<u32> {
        let digits = name.strip_prefix(IFACE_PREFIX)?.strip_prefix(self.0.as_str())?;
        if digits.is_empty()
            || (digits.len() > 1 && digits.starts_with('0'))
            || !digits.bytes().all(|b| b.is_ascii_digit())
        {
            return None;
        }
        digits.parse().ok().filter(|index| *index <= MAX_SLOT_INDEX)
    }
}

impl fmt::Display for InstallationId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn generated_ids_are_valid_and_differ() {
        let ids: std::collections::HashSet<String> = (0..64).map(|_| InstallationId::generate().0).collect();
        assert!(ids.len() > 60, "ids repeat: {ids:?}");
        for id in &ids {
            assert_eq!(InstallationId::parse(id).unwrap().as_str(), id);
        }
    }

    #[test]
    fn ids_outside_the_alphabet_or_length_are_rejected() {
        for bad in ["", "abcde", "abcdefg", "ABCDEF", "abcde1", "abcde8", "abc-de", "abc/de", "abcdé", "../../"] {
            assert!(InstallationId::parse(bad).is_err(), "{bad:?} accepted");
        }
        assert!(InstallationId::parse("k3f9a2").is_err(), "9 is not base32");
        assert!(InstallationId::parse("k3fza2").is_ok());
    }

    #[test]
    fn interface_names_fit_ifnamsiz_and_round_trip() {
        let id = InstallationId::parse("zz7abc").unwrap();
        let longest = id.iface_name(MAX_SLOT_INDEX);
        assert_eq!(longest, "rdszz7abc999999");
        assert_eq!(longest.len(), MAX_IFACE_LEN);
        for index in [0, 7, 42, 16_383, MAX_SLOT_INDEX] {
            assert_eq!(id.index_from_iface(&id.iface_name(index)), Some(index));
        }
        assert_eq!(id.index_from_iface("rdszz7abc007"), None, "leading zero");
        assert_eq!(id.index_from_iface("rdszz7abc"), None);
        assert_eq!(id.index_from_iface("rdszz7abc1000000"), None, "beyond the bound");
        assert_eq!(id.index_from_iface("rdszz7abc1x"), None);
        assert_eq!(id.index_from_iface("rdszz7abc+1"), None);
        assert_eq!(id.index_from_iface("eth0"), None);
        assert_eq!(id.index_from_iface("rdsv3"), None, "an unrelated (or pre-id) rds interface");
    }

    #[test]
    fn another_installation_never_recognises_our_names() {
        let ours = InstallationId::parse("aaaaaa").unwrap();
        let theirs = InstallationId::parse("aaaaab").unwrap();
        assert_eq!(theirs.index_from_iface(&ours.iface_name(3)), None);
        assert_ne!(ours.nft_table(), theirs.nft_table());
        assert!(!ours.iface_name(3).starts_with(theirs.iface_wildcard().trim_end_matches('*')));
        assert_eq!(ours.nft_table(), "rds-aaaaaa");
        assert_eq!(ours.iface_wildcard(), "rdsaaaaaa*");
    }
}
