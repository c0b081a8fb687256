//! A VM's egress policy: what a caller asked for, validated into types.
//!
//! Semantics (enforced by [`crate::Network::apply_policy`]):
//! * `outbound_internet == false`: no egress at all (the allow lists are kept for display only).
//! * `outbound_internet == true`: exactly `allow_ips` plus the addresses the VM's resolver returned
//!   for names matching `allow_domains`. `0.0.0.0/0` / `::/0` mean "everything public".
//! * Special-purpose destinations (private, loopback, CGNAT, multicast, …) are reachable only
//!   through an entry that lies *inside* such a range (e.g. `10.1.2.0/24`), never through a
//!   catch-all like `0.0.0.0/0` and never through a resolved domain (no DNS rebinding).
//! * The host itself, the metadata range `169.254.0.0/16` and other VMs (the whole pool) are
//!   never reachable, even when listed: an allow entry cannot open them. This is deliberate — the
//!   manager API and sibling VMs are not a VM's business, and a listed entry silently opening
//!   them would reproduce the original's "allowIps: [gateway]" exposure.

use std::fmt;

use ipnet::IpNet;
use serde::{Deserialize, Serialize};

/// Most entries accepted in `allowIps` and in `allowDomains` (each).
pub const MAX_ENTRIES: usize = 64;

/// Longest accepted entry text, before parsing.
const MAX_ENTRY_LEN: usize = 256;

/// A validated egress policy for one VM.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct EgressPolicy {
    /// Whether the VM may open connections beyond itself at all.
    pub outbound_internet: bool,
    /// Destination networks the VM may reach (bare addresses are stored as /32 or /128).
    pub allow_ips: Vec<IpNet>,
    /// Names whose resolved addresses the VM may reach.
    pub allow_domains: Vec<DomainPattern>,
}

/// Why a requested policy was rejected; every variant names the offending entry.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PolicyError {
    /// A list is longer than [`MAX_ENTRIES`].
    #[error("{field}: {count} entries given, at most {max} are allowed")]
    TooManyEntries {
        /// API field name (`allowIps` or `allowDomains`).
        field: &'static str,
        /// How many entries were given.
        count: usize,
        /// The limit.
        max: usize,
    },
    /// An `allowIps` entry that does not parse as an address or network.
    #[error("allowIps[{index}]: {value:?} is not an IPv4/IPv6 address or CIDR")]
    NotAnAddress {
        /// Position in the list.
        index: usize,
        /// The entry as given (truncated if very long).
        value: String,
    },
    /// An `allowIps` network with bits set after the prefix, which is almost always a typo.
    #[error("allowIps[{index}]: {value:?} has bits set after the prefix length; did you mean {suggestion:?}?")]
    HostBitsSet {
        /// Position in the list.
        index: usize,
        /// The entry as given.
        value: String,
        /// The network the caller most likely meant.
        suggestion: String,
    },
    /// An `allowDomains` entry that is not a usable domain pattern.
    #[error("allowDomains[{index}]: {value:?} is not a valid domain pattern: {reason}")]
    BadDomain {
        /// Position in the list.
        index: usize,
        /// The entry as given (truncated if very long).
        value: String,
        /// What is wrong with it.
        reason: String,
    },
}

impl EgressPolicy {
    /// The policy a VM gets when the caller says nothing: no egress.
    pub fn deny_all() -> Self {
        Self::default()
    }

    /// Validates the API fields `outboundInternet`, `allowIps`, `allowDomains` into a policy.
    pub fn from_request(
        outbound_internet: Option<bool>,
        allow_ips: &[String],
        allow_domains: &[String],
    ) -> Result<EgressPolicy, PolicyError> {
        check_count("allowIps", allow_ips.len())?;
        check_count("allowDomains", allow_domains.len())?;
        let allow_ips = allow_ips
            .iter()
            .enumerate()
            .map(|(index, raw)| parse_allow_ip(index, raw))
            .collect::<Result<Vec<_>, _>>()?;
        let allow_domains = allow_domains
            .iter()
            .enumerate()
            .map(|(index, raw)| {
                DomainPattern::parse(raw).map_err(|reason| PolicyError::BadDomain {
                    index,
                    value: shorten(raw),
                    reason,
                })
            })
            .collect::<Result<Vec<_>, _>>()?;
        Ok(EgressPolicy { outbound_internet: outbound_internet.unwrap_or(false), allow_ips, allow_domains })
    }

    /// Whether the VM's resolver should only answer names matching `allow_domains`.
    pub fn filters_domains(&self) -> bool {
        self.outbound_internet && !self.allow_domains.is_empty()
    }

    /// Whether `name` (a DNS name, any case, optional trailing dot) may be resolved for this VM.
    pub fn allows_name(&self, name: &str) -> bool {
        if !self.outbound_internet {
            return false;
        }
        if self.allow_domains.is_empty() {
            return true;
        }
        let name = name.trim_end_matches('.').to_ascii_lowercase();
        self.allow_domains.iter().any(|pattern| pattern.matches(&name))
    }
}

fn check_count(field: &'static str, count: usize) -> Result<(), PolicyError> {
    if count > MAX_ENTRIES {
        return Err(PolicyError::TooManyEntries { field, count, max: MAX_ENTRIES });
    }
    Ok(())
}

fn shorten(raw: &str) -> String {
    if raw.len() <= 80 {
        return raw.to_string();
    }
    let mut end = 80;
    while !raw.is_char_boundary(end) {
        end -= 1;
    }
    format!("{}…", &raw[..end])
}

fn parse_allow_ip(index: usize, raw: &str) -> Result<IpNet, PolicyError> {
    let not_an_address = || PolicyError::NotAnAddress { index, value: shorten(raw) };
    let text = raw.trim();
    if text.is_empty() || text.len() > MAX_ENTRY_LEN {
        return Err(not_an_address());
    }
    if let Ok(addr) = text.parse::<std::net::IpAddr>() {
        return Ok(IpNet::from(addr));
    }
    let net: IpNet = text.parse().map_err(|_| not_an_address())?;
    if net.trunc() != net {
        return Err(PolicyError::HostBitsSet { index, value: raw.to_string(), suggestion: net.trunc().to_string() });
    }
    Ok(net)
}

/// A domain rule: `example.com` (that name only) or `*.example.com` (any name below it, not
/// `example.com` itself). Always lowercase ASCII; Unicode input is converted to punycode.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct DomainPattern {
    /// The base name, lowercase ASCII, no trailing dot.
    base: String,
    /// Whether this is `*.base`.
    wildcard: bool,
}

impl DomainPattern {
    /// Parses `example.com` or `*.example.com`; the error says what is wrong.
    pub fn parse(raw: &str) -> Result<DomainPattern, String> {
        let text = raw.trim();
        if text.is_empty() {
            return Err("it is empty".into());
        }
        if text.len() > MAX_ENTRY_LEN {
            return Err("it is longer than 253 characters".into());
        }
        if text == "*" || text == "*." {
            return Err("a bare '*' would match every name; leave allowDomains empty to resolve everything".into());
        }
        let (wildcard, rest) = match text.strip_prefix("*.") {
            Some(rest) => (true, rest),
            None => (false, text),
        };
        if rest.contains('*') {
            return Err("'*' is only allowed as the whole first label, as in \"*.example.com\"".into());
        }
        let rest = rest.strip_suffix('.').unwrap_or(rest);
        let ascii = if rest.is_ascii() {
            rest.to_ascii_lowercase()
        } else {
            idna::domain_to_ascii(rest).map_err(|_| "it is not a valid internationalised domain name".to_string())?
        };
        if ascii.len() > 253 {
            return Err("it is longer than 253 characters".into());
        }
        let labels: Vec<&str> = ascii.split('.').collect();
        if labels.len() < 2 {
            return Err("it needs at least two labels, e.g. \"example.com\"".into());
        }
        for label in &labels {
            check_label(label)?;
        }
        Ok(DomainPattern { base: ascii, wildcard })
    }

    /// Whether a lowercase name without trailing dot matches this pattern.
    pub fn matches(&self, name: &str) -> bool {
        if self.wildcard {
            name.len() > self.base.len() + 1
                && name.ends_with(&self.base)
                && name.as_bytes()[name.len() - self.base.len() - 1] == b'.'
        } else {
            name == self.base
        }
    }
}

fn check_label(label: &str) -> Result<(), String> {
    if label.is_empty() {
        return Err("it has an empty label (\"..\" or a leading dot)".into());
    }
    if label.len() > 63 {
        return Err(format!("label {label:?} is longer than 63 characters"));
    }
    if !label.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-') {
        return Err(format!("label {label:?} may contain only letters, digits and '-'"));
    }
    if label.starts_with('-') || label.ends_with('-') {
        return Err(format!("label {label:?} must not start or end with '-'"));
    }
    Ok(())
}

impl fmt::Display for DomainPattern {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.wildcard {
            write!(f, "*.{}", self.base)
        } else {
            f.write_str(&self.base)
        }
    }
}

impl TryFrom<String> for DomainPattern {
    type Error = String;
    fn try_from(value: String) -> Result<Self, Self::Error> {
        DomainPattern::parse(&value)
    }
}

impl From<DomainPattern> for String {
    fn from(pattern: DomainPattern) -> String {
        pattern.to_string()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn strings(items: &[&str]) -> Vec<String> {
        items.iter().map(|s| s.to_string()).collect()
    }

    #[test]
    fn default_policy_has_no_egress() {
        let policy = EgressPolicy::from_request(None, &[], &[]).unwrap();
        assert!(!policy.outbound_internet);
        assert!(!policy.allows_name("example.com"));
    }

    #[test]
    fn bare_addresses_become_host_networks() {
        let policy =
            EgressPolicy::from_request(Some(true), &strings(&["1.2.3.4", "2001:db8::1", "10.0.0.0/8"]), &[]).unwrap();
        let shown: Vec<String> = policy.allow_ips.iter().map(|n| n.to_string()).collect();
        assert_eq!(shown, ["1.2.3.4/32", "2001:db8::1/128", "10.0.0.0/8"]);
    }

    #[test]
    fn bad_ip_error_names_the_entry() {
        let err =
            EgressPolicy::from_request(Some(true), &strings(&["1.1.1.1", "::/0", "10.0.0.300"]), &[]).unwrap_err();
        assert_eq!(err.to_string(), r#"allowIps[2]: "10.0.0.300" is not an IPv4/IPv6 address or CIDR"#);
    }

    #[test]
    fn hostnames_are_not_accepted_as_ips() {
        let err = EgressPolicy::from_request(Some(true), &strings(&["example.com"]), &[]).unwrap_err();
        assert!(err.to_string().starts_with("allowIps[0]: \"example.com\""), "{err}");
    }

    #[test]
    fn host_bits_error_suggests_the_network() {
        let err = EgressPolicy::from_request(Some(true), &strings(&["10.0.0.1/8"]), &[]).unwrap_err();
        assert_eq!(
            err.to_string(),
            r#"allowIps[0]: "10.0.0.1/8" has bits set after the prefix length; did you mean "10.0.0.0/8"?"#
        );
    }

    #[test]
    fn bad_domains_errors_name_the_entry() {
        for (raw, needle) in [
            ("*", "bare '*'"),
            ("*.com", "at least two labels"),
            ("a.*.com", "'*' is only allowed"),
            ("exa mple.com", "only letters"),
            ("-bad.com", "must not start"),
            ("a..com", "empty label"),
            ("", "empty"),
        ] {
            let err = EgressPolicy::from_request(Some(true), &[], &strings(&["ok.com", raw])).unwrap_err();
            let text = err.to_string();
            assert!(text.starts_with(&format!("allowDomains[1]: {raw:?}")), "{text}");
            assert!(text.contains(needle), "{text} should mention {needle}");
        }
    }

    #[test]
    fn too_many_entries_are_rejected_with_the_field_name() {
        let many: Vec<String> = (0..65).map(|i| format!("10.0.{i}.0/24")).collect();
        let err = EgressPolicy::from_request(Some(true), &many, &[]).unwrap_err();
        assert_eq!(err.to_string(), "allowIps: 65 entries given, at most 64 are allowed");
        let many: Vec<String> = (0..65).map(|i| format!("h{i}.example.com")).collect();
        let err = EgressPolicy::from_request(Some(true), &[], &many).unwrap_err();
        assert!(err.to_string().starts_with("allowDomains: 65 entries"));
    }

    #[test]
    fn domain_patterns_are_normalised_and_matched() {
        let exact = DomainPattern::parse("Example.COM.").unwrap();
        assert_eq!(exact.to_string(), "example.com");
        assert!(exact.matches("example.com"));
        assert!(!exact.matches("www.example.com"));
        let wild = DomainPattern::parse("*.example.com").unwrap();
        assert!(wild.matches("a.example.com"));
        assert!(wild.matches("a.b.example.com"));
        assert!(!wild.matches("example.com"));
        assert!(!wild.matches("badexample.com"));
        let idn = DomainPattern::parse("bücher.de").unwrap();
        assert_eq!(idn.to_string(), "xn--bcher-kva.de");
    }

    #[test]
    fn name_filtering_follows_the_policy() {
        let policy = EgressPolicy::from_request(Some(true), &[], &strings(&["allowed.test"])).unwrap();
        assert!(policy.allows_name("ALLOWED.test."));
        assert!(!policy.allows_name("other.test"));
        let open = EgressPolicy::from_request(Some(true), &[], &[]).unwrap();
        assert!(open.allows_name("anything.example"));
    }

    #[test]
    fn policy_round_trips_through_json_with_api_field_names() {
        let policy =
            EgressPolicy::from_request(Some(true), &strings(&["1.2.3.4"]), &strings(&["*.example.com"])).unwrap();
        let json = serde_json::to_string(&policy).unwrap();
        assert_eq!(json, r#"{"outboundInternet":true,"allowIps":["1.2.3.4/32"],"allowDomains":["*.example.com"]}"#);
        let back: EgressPolicy = serde_json::from_str(&json).unwrap();
        assert_eq!(back, policy);
        assert!(serde_json::from_str::<EgressPolicy>(
            r#"{"outboundInternet":true,"allowIps":[],"allowDomains":["*"]}"#
        )
        .is_err());
    }
}
