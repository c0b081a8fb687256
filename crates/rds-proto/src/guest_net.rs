//! How a microVM guest learns its network: `rds.net=<addr>/<prefix>,<gateway>` on the kernel
//! command line, formatted by the runtime and parsed by the guest's PID 1. The gateway is also the
//! guest's only DNS resolver.

use std::net::Ipv4Addr;

/// Kernel command-line parameter carrying a [`GuestNet`].
pub const NET_PARAM: &str = "rds.net=";

/// The guest side of a VM's /30 link.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct GuestNet {
    /// The guest's address.
    pub addr: Ipv4Addr,
    /// Prefix length of the link.
    pub prefix: u8,
    /// The host end: default gateway and DNS resolver.
    pub gateway: Ipv4Addr,
}

impl GuestNet {
    /// The kernel command-line word, e.g. `rds.net=10.213.0.2/30,10.213.0.1`.
    pub fn to_param(self) -> String {
        format!("{NET_PARAM}{}/{},{}", self.addr, self.prefix, self.gateway)
    }

    /// The first `rds.net=` word of `cmdline`: `None` when absent, an error naming what is wrong
    /// when malformed (the gateway must lie on the link and differ from the address).
    pub fn from_cmdline(cmdline: &str) -> Option<Result<GuestNet, String>> {
        let value = cmdline.split_ascii_whitespace().find_map(|w| w.strip_prefix(NET_PARAM))?;
        Some(Self::parse(value).ok_or_else(|| format!("{NET_PARAM}{value:?} is not <ipv4>/<prefix>,<gateway>")))
    }

    fn parse(value: &str) -> Option<GuestNet> {
        let (cidr, gateway) = value.split_once(',')?;
        let (addr, prefix) = cidr.split_once('/')?;
        let net = GuestNet { addr: addr.parse().ok()?, prefix: prefix.parse().ok()?, gateway: gateway.parse().ok()? };
        net.is_usable().then_some(net)
    }

    /// Whether the link makes sense: a prefix of 1..=30, the gateway on the link and not the
    /// guest's own address (a [`GuestNet`] read from JSON is checked with this).
    pub fn is_usable(&self) -> bool {
        let on_link = (1..=30).contains(&self.prefix)
            && self.netmask() & u32::from(self.addr) == self.netmask() & u32::from(self.gateway);
        on_link && self.addr != self.gateway
    }

    /// The link's netmask as a host-order integer.
    pub fn netmask(&self) -> u32 {
        u32::MAX.checked_shl(32 - u32::from(self.prefix)).unwrap_or(0)
    }

    /// `/etc/resolv.conf` for this guest: only its own resolver, which answers just the names its
    /// egress policy allows.
    pub fn resolv_conf(&self) -> String {
        resolv_conf(self.gateway)
    }
}

/// `/etc/resolv.conf` naming `resolver` as the only name server.
pub fn resolv_conf(resolver: Ipv4Addr) -> String {
    format!("# Written by rds: this VM's resolver answers only names its egress policy allows.\nnameserver {resolver}\noptions timeout:2 attempts:2\n")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trips_through_the_command_line() {
        let net = GuestNet { addr: "10.213.0.6".parse().unwrap(), prefix: 30, gateway: "10.213.0.5".parse().unwrap() };
        let cmdline = format!("console=ttyS0 {} quiet", net.to_param());
        assert_eq!(GuestNet::from_cmdline(&cmdline), Some(Ok(net)));
        assert_eq!(net.netmask(), 0xffff_fffc);
        assert!(net.resolv_conf().contains("nameserver 10.213.0.5\n"));
    }

    #[test]
    fn absent_is_none_and_malformed_is_an_error() {
        assert_eq!(GuestNet::from_cmdline("console=ttyS0 quiet"), None);
        for bad in [
            "rds.net=",
            "rds.net=10.213.0.6/30",
            "rds.net=10.213.0.6,10.213.0.5",
            "rds.net=10.213.0.6/33,10.213.0.5",
            "rds.net=10.213.0.6/0,10.213.0.5",
            "rds.net=10.213.0.6/30,10.213.0.9",
            "rds.net=10.213.0.6/30,10.213.0.6",
            "rds.net=::1/30,10.213.0.5",
            "rds.net=10.213.0.6/30,10.213.0.5,extra",
        ] {
            assert!(matches!(GuestNet::from_cmdline(bad), Some(Err(_))), "{bad} should be rejected");
        }
    }
}
