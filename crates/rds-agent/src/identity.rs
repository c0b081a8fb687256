//! A guest resumed from a memory snapshot becomes itself: the host's `POST /internal/identity`
//! gives it a hostname, a network link, fresh entropy and the current time, so clones of one
//! snapshot never share an address, a random stream or a clock stopped at the snapshot.

use std::io;
use std::os::fd::AsRawFd;

use rds_proto::agent_api::Identity;

use crate::netconf;

/// `RNDADDENTROPY` = `_IOW('R', 0x03, int[2])`.
const RNDADDENTROPY: libc::c_ulong = 0x4008_5203;
/// `RNDRESEEDCRNG` = `_IO('R', 0x07)`.
const RNDRESEEDCRNG: libc::c_ulong = 0x5207;

/// Why an identity was refused or not applied.
#[derive(Debug, thiserror::Error)]
pub enum IdentityError {
    /// The request itself is unusable (the field named).
    #[error("{0}")]
    Invalid(String),
    /// Applying one part failed.
    #[error("{what}: {source}")]
    Apply {
        /// What was being changed.
        what: &'static str,
        #[source]
        source: io::Error,
    },
}

/// Checks `identity` and applies it: entropy first (so anything that follows draws from the
/// reseeded pool), then the clock, hostname and network.
pub fn apply(identity: &Identity) -> Result<(), IdentityError> {
    if identity.entropy.len() < Identity::ENTROPY_BYTES {
        return Err(IdentityError::Invalid(format!("`entropy` must hold at least {} bytes", Identity::ENTROPY_BYTES)));
    }
    if nix::unistd::Uid::effective().as_raw() != 0 {
        return Err(IdentityError::Invalid(
            "the agent is not root here: only a microVM guest takes an identity".into(),
        ));
    }
    if identity.hostname.is_empty()
        || identity.hostname.len() > 64
        || !identity.hostname.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'.')
    {
        return Err(IdentityError::Invalid("`hostname` must match [A-Za-z0-9.-]{1,64}".into()));
    }
    if let Some(net) = identity.net.filter(|n| !n.is_usable()) {
        return Err(IdentityError::Invalid(format!("`net` {net:?} is not a usable link")));
    }
    let apply = |what, r: io::Result<()>| r.map_err(|source| IdentityError::Apply { what, source });
    apply("reseeding the kernel's random pool", reseed(&identity.entropy))?;
    apply("setting the clock", set_clock(identity.unix_time_ms))?;
    apply("setting the hostname", nix::unistd::sethostname(&identity.hostname).map_err(io::Error::from))?;
    if let Some(net) = identity.net {
        apply("readdressing the network interface", netconf::reconfigure(netconf::GUEST_IFACE, &net, identity.mac))?;
        apply("writing /etc/resolv.conf", crate::init::write_resolv_conf(&net.resolv_conf()))?;
    }
    Ok(())
}

/// Mixes `entropy` into the kernel's pool, credited in full, and has the CRNG reseed from it.
fn reseed(entropy: &[u8]) -> io::Result<()> {
    let random = std::fs::OpenOptions::new().write(true).open("/dev/urandom")?;
    // struct rand_pool_info { int entropy_count; int buf_size; __u32 buf[]; }
    let mut info = Vec::with_capacity(8 + entropy.len());
    info.extend_from_slice(&((entropy.len() * 8) as i32).to_ne_bytes());
    info.extend_from_slice(&(entropy.len() as i32).to_ne_bytes());
    info.extend_from_slice(entropy);
    // SAFETY: RNDADDENTROPY reads a rand_pool_info of `buf_size` bytes of payload, which `info` holds.
    if unsafe { libc::ioctl(random.as_raw_fd(), RNDADDENTROPY, info.as_ptr()) } < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: RNDRESEEDCRNG takes no argument.
    if unsafe { libc::ioctl(random.as_raw_fd(), RNDRESEEDCRNG) } < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

fn set_clock(unix_time_ms: u64) -> io::Result<()> {
    let now = libc::timespec {
        tv_sec: (unix_time_ms / 1000) as libc::time_t,
        tv_nsec: ((unix_time_ms % 1000) * 1_000_000) as libc::c_long,
    };
    // SAFETY: clock_settime reads a valid timespec.
    if unsafe { libc::clock_settime(libc::CLOCK_REALTIME, &now) } < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn identity() -> Identity {
        Identity {
            hostname: "vm-1".into(),
            net: None,
            mac: None,
            entropy: vec![7; Identity::ENTROPY_BYTES],
            unix_time_ms: 0,
        }
    }

    #[test]
    fn short_entropy_and_bad_hostnames_are_refused_before_anything_changes() {
        let short = Identity { entropy: vec![1; 8], ..identity() };
        assert!(matches!(apply(&short), Err(IdentityError::Invalid(m)) if m.contains("entropy")));
        for bad in ["", "a/b", "a b", &"x".repeat(65)] {
            let id = Identity { hostname: bad.into(), ..identity() };
            assert!(matches!(apply(&id), Err(IdentityError::Invalid(_))), "{bad:?}");
        }
    }

    #[test]
    fn request_codes_match_the_kernel_headers() {
        // _IOC(dir, type, nr, size) = dir << 30 | size << 16 | type << 8 | nr.
        assert_eq!(RNDADDENTROPY, (1 << 30) | (8 << 16) | ((b'R' as libc::c_ulong) << 8) | 0x03);
        assert_eq!(RNDRESEEDCRNG, ((b'R' as libc::c_ulong) << 8) | 0x07);
    }
}
