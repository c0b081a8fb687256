//! Interface set-up for guest PID 1 with plain ioctls (no `ip` binary, no child processes: each
//! one costs tens of milliseconds of boot under TCG).

use std::io;
use std::net::Ipv4Addr;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};

use rds_proto::guest_net::GuestNet;

/// The guest's network interface: the only virtio-net device, named by the kernel (no udev).
pub const GUEST_IFACE: &str = "eth0";

/// Brings `lo` up.
pub fn bring_up_loopback() -> io::Result<()> {
    set_up(&control_socket()?, "lo")
}

/// Addresses `iface` as `net` says, brings it up and routes everything via the gateway.
pub fn configure(iface: &str, net: &GuestNet) -> io::Result<()> {
    let socket = control_socket()?;
    let mut request = ifreq(iface)?;
    request.ifr_ifru.ifru_addr = sockaddr(net.addr);
    // SAFETY: SIOCSIFADDR reads `request`, a valid ifreq naming the interface and an AF_INET address.
    check(unsafe { libc::ioctl(socket.as_raw_fd(), libc::SIOCSIFADDR, &request) })?;
    request.ifr_ifru.ifru_netmask = sockaddr(Ipv4Addr::from(net.netmask()));
    // SAFETY: as above, with the netmask.
    check(unsafe { libc::ioctl(socket.as_raw_fd(), libc::SIOCSIFNETMASK, &request) })?;
    set_up(&socket, iface)?;

    // SAFETY: rtentry is plain old data for which all-zero is a valid value.
    let mut route: libc::rtentry = unsafe { std::mem::zeroed() };
    route.rt_dst = sockaddr(Ipv4Addr::UNSPECIFIED);
    route.rt_genmask = sockaddr(Ipv4Addr::UNSPECIFIED);
    route.rt_gateway = sockaddr(net.gateway);
    route.rt_flags = libc::RTF_UP | libc::RTF_GATEWAY;
    // SAFETY: SIOCADDRT reads `route`, a valid rtentry (no device name pointer is set).
    match check(unsafe { libc::ioctl(socket.as_raw_fd(), libc::SIOCADDRT, &route) }) {
        Err(e) if e.raw_os_error() == Some(libc::EEXIST) => Ok(()),
        other => other,
    }
}

/// Gives `iface` a new MAC address and link (a guest resumed from a snapshot taken with another
/// VM's): the old default route goes, the interface is readdressed and routed as [`configure`] does.
pub fn reconfigure(iface: &str, net: &GuestNet, mac: Option<[u8; 6]>) -> io::Result<()> {
    let socket = control_socket()?;
    // SAFETY: rtentry is plain old data for which all-zero is a valid value.
    let mut route: libc::rtentry = unsafe { std::mem::zeroed() };
    route.rt_dst = sockaddr(Ipv4Addr::UNSPECIFIED);
    route.rt_genmask = sockaddr(Ipv4Addr::UNSPECIFIED);
    // SAFETY: SIOCDELRT reads `route`, a valid rtentry. No default route (ESRCH) is fine.
    match check(unsafe { libc::ioctl(socket.as_raw_fd(), libc::SIOCDELRT, &route) }) {
        Err(e) if e.raw_os_error() != Some(libc::ESRCH) => return Err(e),
        _ => {}
    }
    if let Some(mac) = mac {
        let mut request = ifreq(iface)?;
        // SAFETY: SIOCGIFFLAGS/SIOCSIFFLAGS read and write `request`, a valid ifreq naming `iface`.
        unsafe {
            check(libc::ioctl(socket.as_raw_fd(), libc::SIOCGIFFLAGS, &mut request))?;
            request.ifr_ifru.ifru_flags &= !(libc::IFF_UP as libc::c_short);
            check(libc::ioctl(socket.as_raw_fd(), libc::SIOCSIFFLAGS, &request))?;
        }
        let mut request = ifreq(iface)?;
        // SAFETY: the union's hwaddr member is a plain sockaddr.
        unsafe {
            request.ifr_ifru.ifru_hwaddr.sa_family = libc::ARPHRD_ETHER;
            for (dst, src) in request.ifr_ifru.ifru_hwaddr.sa_data.iter_mut().zip(mac) {
                *dst = src as libc::c_char;
            }
        }
        // SAFETY: SIOCSIFHWADDR reads `request`, a valid ifreq with an Ethernet address.
        check(unsafe { libc::ioctl(socket.as_raw_fd(), libc::SIOCSIFHWADDR, &request) })?;
    }
    configure(iface, net)
}

fn control_socket() -> io::Result<OwnedFd> {
    // SAFETY: socket() has no memory preconditions; the result is checked before being owned.
    let raw = unsafe { libc::socket(libc::AF_INET, libc::SOCK_DGRAM | libc::SOCK_CLOEXEC, 0) };
    check(raw)?;
    // SAFETY: `raw` is a freshly created descriptor owned by nobody else.
    Ok(unsafe { OwnedFd::from_raw_fd(raw) })
}

/// Sets IFF_UP on `iface` with SIOCSIFFLAGS.
fn set_up(socket: &OwnedFd, iface: &str) -> io::Result<()> {
    let mut request = ifreq(iface)?;
    // SAFETY: SIOCGIFFLAGS/SIOCSIFFLAGS read and write `request`, a valid ifreq naming `iface`.
    unsafe {
        check(libc::ioctl(socket.as_raw_fd(), libc::SIOCGIFFLAGS, &mut request))?;
        request.ifr_ifru.ifru_flags |= (libc::IFF_UP | libc::IFF_RUNNING) as libc::c_short;
        check(libc::ioctl(socket.as_raw_fd(), libc::SIOCSIFFLAGS, &request))
    }
}

fn ifreq(iface: &str) -> io::Result<libc::ifreq> {
    // SAFETY: ifreq is plain old data for which all-zero is a valid value.
    let mut request: libc::ifreq = unsafe { std::mem::zeroed() };
    if iface.is_empty() || iface.len() >= request.ifr_name.len() || iface.contains('\0') {
        return Err(io::Error::new(io::ErrorKind::InvalidInput, format!("{iface:?} is not an interface name")));
    }
    for (dst, src) in request.ifr_name.iter_mut().zip(iface.bytes()) {
        *dst = src as libc::c_char;
    }
    Ok(request)
}

fn sockaddr(addr: Ipv4Addr) -> libc::sockaddr {
    let inet = libc::sockaddr_in {
        sin_family: libc::AF_INET as libc::sa_family_t,
        sin_port: 0,
        sin_addr: libc::in_addr { s_addr: u32::from(addr).to_be() },
        sin_zero: [0; 8],
    };
    // SAFETY: sockaddr_in and sockaddr have the same size; the kernel reads it as sockaddr_in
    // because of sin_family.
    unsafe { std::mem::transmute::<libc::sockaddr_in, libc::sockaddr>(inet) }
}

fn check(rc: libc::c_int) -> io::Result<()> {
    if rc < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn interface_names_must_fit_ifreq() {
        assert!(ifreq("eth0").is_ok());
        assert!(ifreq("").is_err());
        assert!(ifreq("sixteen-chars-xx").is_err());
        assert!(ifreq("a\0b").is_err());
    }

    #[test]
    fn sockaddr_carries_the_address_in_network_order() {
        let sa = sockaddr(Ipv4Addr::new(10, 213, 0, 6));
        assert_eq!(sa.sa_family, libc::AF_INET as libc::sa_family_t);
        assert_eq!(&sa.sa_data[2..6], &[10, 213_u8 as libc::c_char, 0, 6]);
    }
}
