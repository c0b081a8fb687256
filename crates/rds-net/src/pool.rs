//! The VM address pool: one /30 per VM, addressed by a slot index the manager persists.

use std::collections::HashSet;
use std::net::Ipv4Addr;

use ipnet::Ipv4Net;
use sha2::{Digest, Sha256};

/// Default pool when `RDS_VM_CIDR` is not set.
pub const DEFAULT_VM_CIDR: &str = "10.213.0.0/16";

/// Prefix length of every slot.
pub const SLOT_PREFIX: u8 = 30;

/// Shortest pool prefix: a /11 holds 2^19 slots, whose indexes fit in interface names
/// ([`crate::names::MAX_SLOT_INDEX`]).
pub const MIN_POOL_PREFIX: u8 = 11;

/// Why a pool or slot could not be used.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PoolError {
    /// The configured CIDR is too small to hold even one /30.
    #[error("VM CIDR {0} is smaller than a /30; use a prefix of 30 or less (e.g. 10.213.0.0/16)")]
    TooSmall(Ipv4Net),
    /// The configured CIDR holds more slots than interface names can number.
    #[error("VM CIDR {0} is larger than a /11 (interface names number at most 2^19 VMs); use a prefix of 11 or more (e.g. 10.213.0.0/16)")]
    TooLarge(Ipv4Net),
    /// A slot index beyond the pool's end.
    #[error("slot {index} is outside VM CIDR {cidr} (which has {capacity} slots)")]
    OutOfRange {
        /// The requested index.
        index: u32,
        /// The pool.
        cidr: Ipv4Net,
        /// How many slots the pool has.
        capacity: u32,
    },
}

/// Carves a CIDR into /30 slots.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct AddressPool {
    cidr: Ipv4Net,
}

/// One VM's addresses: the host end (gateway + resolver) and the guest end of a /30.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Slot {
    /// Index in the pool (persisted by the manager).
    pub index: u32,
    /// Host-side address: the guest's default gateway and DNS resolver.
    pub host_ip: Ipv4Addr,
    /// The guest's address.
    pub guest_ip: Ipv4Addr,
    /// Always [`SLOT_PREFIX`].
    pub prefix: u8,
}

impl Slot {
    /// The /30's network address: the name of its host-wide claim.
    pub fn network(&self) -> Ipv4Addr {
        Ipv4Addr::from(u32::from(self.host_ip) - 1)
    }
}

impl AddressPool {
    /// A pool over `cidr` (normalised to its network address).
    pub fn new(cidr: Ipv4Net) -> Result<AddressPool, PoolError> {
        if cidr.prefix_len() > SLOT_PREFIX {
            return Err(PoolError::TooSmall(cidr));
        }
        if cidr.prefix_len() < MIN_POOL_PREFIX {
            return Err(PoolError::TooLarge(cidr));
        }
        Ok(AddressPool { cidr: cidr.trunc() })
    }

    /// The pool's CIDR.
    pub fn cidr(&self) -> Ipv4Net {
        self.cidr
    }

    /// How many /30 slots fit.
    pub fn capacity(&self) -> u32 {
        let slots = 1u64 << (SLOT_PREFIX - self.cidr.prefix_len());
        slots.min(u64::from(u32::MAX)) as u32
    }

    /// The addresses of slot `index`.
    pub fn slot(&self, index: u32) -> Result<Slot, PoolError> {
        if index >= self.capacity() {
            return Err(PoolError::OutOfRange { index, cidr: self.cidr, capacity: self.capacity() });
        }
        let base = u32::from(self.cidr.network()) + index * 4;
        Ok(Slot { index, host_ip: Ipv4Addr::from(base + 1), guest_ip: Ipv4Addr::from(base + 2), prefix: SLOT_PREFIX })
    }

    /// The lowest index not in `taken`, or `None` when the pool is exhausted.
    pub fn first_free(&self, taken: &[u32]) -> Option<u32> {
        self.free(taken).next()
    }

    /// Every index not in `taken`, ascending.
    pub fn free(&self, taken: &[u32]) -> impl Iterator<Item = u32> {
        let taken: HashSet<u32> = taken.iter().copied().collect();
        (0..self.capacity()).filter(move |index| !taken.contains(index))
    }
}

impl Default for AddressPool {
    fn default() -> Self {
        AddressPool { cidr: DEFAULT_VM_CIDR.parse().expect("default CIDR parses") }
    }
}

/// A stable, locally administered, unicast MAC derived from the VM id.
pub fn mac_for(vm_id: &str) -> [u8; 6] {
    let digest = Sha256::digest(vm_id.as_bytes());
    let mut mac = [0u8; 6];
    mac.copy_from_slice(&digest[..6]);
    // Bit 1 set = locally administered; bit 0 clear = unicast.
    mac[0] = (mac[0] & 0b1111_1100) | 0b0000_0010;
    mac
}

/// `aa:bb:cc:dd:ee:ff` form of a MAC, as `ip` and Firecracker want it.
pub fn mac_string(mac: [u8; 6]) -> String {
    mac.iter().map(|b| format!("{b:02x}")).collect::<Vec<_>>().join(":")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pool(cidr: &str) -> AddressPool {
        AddressPool::new(cidr.parse().unwrap()).unwrap()
    }

    #[test]
    fn slots_are_consecutive_thirties() {
        let pool = AddressPool::default();
        assert_eq!(pool.capacity(), 16384);
        let zero = pool.slot(0).unwrap();
        assert_eq!((zero.host_ip, zero.guest_ip), ("10.213.0.1".parse().unwrap(), "10.213.0.2".parse().unwrap()));
        let last = pool.slot(16383).unwrap();
        assert_eq!(last.guest_ip, "10.213.255.254".parse::<Ipv4Addr>().unwrap());
        assert!(matches!(pool.slot(16384), Err(PoolError::OutOfRange { .. })));
    }

    #[test]
    fn slots_never_share_addresses() {
        let pool = pool("10.0.0.0/24");
        let mut seen = HashSet::new();
        for index in 0..pool.capacity() {
            let slot = pool.slot(index).unwrap();
            assert!(seen.insert(slot.host_ip) && seen.insert(slot.guest_ip));
            assert!(pool.cidr().contains(&slot.guest_ip));
        }
    }

    #[test]
    fn first_free_skips_taken_and_exhausts_to_none() {
        let pool = pool("10.0.0.0/28");
        assert_eq!(pool.capacity(), 4);
        assert_eq!(pool.first_free(&[]), Some(0));
        assert_eq!(pool.first_free(&[0, 1, 3]), Some(2));
        assert_eq!(pool.first_free(&[3, 2, 1, 0]), None);
    }

    #[test]
    fn too_small_pool_is_rejected() {
        assert!(AddressPool::new("10.0.0.0/31".parse().unwrap()).is_err());
        assert_eq!(pool("10.0.0.0/30").capacity(), 1);
    }

    #[test]
    fn pools_beyond_what_interface_names_number_are_rejected() {
        assert!(matches!(AddressPool::new("10.0.0.0/10".parse().unwrap()), Err(PoolError::TooLarge(_))));
        let largest = pool("10.0.0.0/11");
        assert!(largest.capacity() - 1 <= crate::names::MAX_SLOT_INDEX);
    }

    #[test]
    fn a_slot_is_claimed_by_its_network_address() {
        let slot = AddressPool::default().slot(3).unwrap();
        assert_eq!(slot.network(), "10.213.0.12".parse::<Ipv4Addr>().unwrap());
    }

    #[test]
    fn mac_is_stable_local_unicast_and_distinct() {
        let a = mac_for("vm-1");
        assert_eq!(a, mac_for("vm-1"));
        assert_ne!(a, mac_for("vm-2"));
        for id in ["vm-1", "vm-2", "x", ""] {
            let mac = mac_for(id);
            assert_eq!(mac[0] & 0b10, 0b10, "locally administered");
            assert_eq!(mac[0] & 0b01, 0, "unicast");
        }
        assert_eq!(mac_string([2, 0xab, 0, 1, 2, 3]), "02:ab:00:01:02:03");
    }
}
