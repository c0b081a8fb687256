//! Per-VM networking for rds: a /30 per VM from a pool, a veth (sandbox) or TAP (VMM) link,
//! an nftables egress policy enforced on the host, and a per-VM DNS resolver that serves only
//! the names a policy allows.
//!
//! Requires root (CAP_NET_ADMIN), `ip` (iproute2) and `nft` (nftables). Links are managed by
//! shelling out to `ip`; nftables by JSON batches through `nft -j -f -` (one atomic transaction
//! per call). VMs are IPv4-only: IPv6 from a VM is dropped (there is no per-VM IPv6 address to
//! bind anti-spoofing to), and IPv6 `allowIps` entries are validated and recorded but inert.

pub mod bench;
pub mod claims;
mod cmd;
mod dns;
pub mod link;
pub mod names;
pub mod network;
mod nft;
pub mod policy;
pub mod pool;

pub use bench::{bench_apply, ApplyBench};
pub use claims::{ClaimError, SlotClaims, DEFAULT_CLAIMS_DIR};
pub use cmd::ToolError;
pub use link::LinkError;
pub use names::{BadInstallationId, InstallationId};
pub use network::{parse_resolv_conf, NetError, Network, NetworkConfig, OrphanReport};
pub use policy::{DomainPattern, EgressPolicy, PolicyError, MAX_ENTRIES};
pub use pool::{mac_for, mac_string, AddressPool, PoolError, Slot, DEFAULT_VM_CIDR};
