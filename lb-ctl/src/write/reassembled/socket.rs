//! The two sockets of the slow path, on libc, for either family: one bound
//! to a UDP service's VIP:port that receives what the kernel reassembled,
//! and one per datagram sent on, bound to the client's address so the
//! backend sees the client.
use std::{
    io,
    net::{Ipv4Addr, Ipv6Addr, SocketAddr, SocketAddrV4, SocketAddrV6},
    os::fd::{AsRawFd as _, FromRawFd as _, OwnedFd},
};

/// The options that differ between the families: each has its own level
/// and names for the same things.
struct Options {
    level: libc::c_int,
    /// Bind to an address that is not local (yet).
    freebind: libc::c_int,
    /// Send from an address that is not ours.
    transparent: libc::c_int,
    /// A datagram the kernel reassembled carries the size of its largest
    /// fragment in a control message of this type; one that came whole
    /// carries none (Linux 4.10).
    frag_size: libc::c_int,
    /// Ask for the TTL (hop limit) of each datagram, and the control
    /// message's type that carries it.
    recv_ttl: libc::c_int,
    ttl_message: libc::c_int,
    /// The TTL (hop limit) of what this socket sends.
    send_ttl: libc::c_int,
    /// Path MTU discovery, and its setting that never refuses a datagram
    /// for its size (the kernel fragments it).
    mtu_discover: libc::c_int,
    pmtudisc_dont: libc::c_int,
}

const V4: Options = Options {
    level: libc::IPPROTO_IP,
    freebind: libc::IP_FREEBIND,
    transparent: libc::IP_TRANSPARENT,
    frag_size: libc::IP_RECVFRAGSIZE,
    recv_ttl: libc::IP_RECVTTL,
    ttl_message: libc::IP_TTL,
    send_ttl: libc::IP_TTL,
    mtu_discover: libc::IP_MTU_DISCOVER,
    pmtudisc_dont: libc::IP_PMTUDISC_DONT,
};

const V6: Options = Options {
    level: libc::IPPROTO_IPV6,
    freebind: libc::IPV6_FREEBIND,
    transparent: libc::IPV6_TRANSPARENT,
    frag_size: libc::IPV6_RECVFRAGSIZE,
    recv_ttl: libc::IPV6_RECVHOPLIMIT,
    ttl_message: libc::IPV6_HOPLIMIT,
    send_ttl: libc::IPV6_UNICAST_HOPS,
    mtu_discover: libc::IPV6_MTU_DISCOVER,
    pmtudisc_dont: libc::IPV6_PMTUDISC_DONT,
};

fn options(addr: &SocketAddr) -> &'static Options {
    if addr.is_ipv4() { &V4 } else { &V6 }
}

fn check(rc: libc::c_int, what: &str) -> io::Result<()> {
    if rc < 0 {
        let e = io::Error::last_os_error();
        return Err(io::Error::new(e.kind(), format!("{what}: {e}")));
    }
    Ok(())
}

fn set(
    fd: &OwnedFd,
    level: libc::c_int,
    name: libc::c_int,
    value: libc::c_int,
    what: &str,
) -> io::Result<()> {
    // SAFETY: a valid descriptor and a c_int option value that outlives the call.
    let rc = unsafe {
        libc::setsockopt(
            fd.as_raw_fd(),
            level,
            name,
            (&raw const value).cast(),
            size_of::<libc::c_int>() as libc::socklen_t,
        )
    };
    check(rc, what)
}

/// `addr` as the kernel takes it, and its length.
fn sockaddr(addr: SocketAddr) -> (libc::sockaddr_storage, libc::socklen_t) {
    // SAFETY: all zero is a valid sockaddr_storage.
    let mut storage: libc::sockaddr_storage = unsafe { std::mem::zeroed() };
    let len = match addr {
        SocketAddr::V4(a) => {
            let sa = libc::sockaddr_in {
                sin_family: libc::AF_INET as libc::sa_family_t,
                sin_port: a.port().to_be(),
                sin_addr: libc::in_addr { s_addr: u32::from_ne_bytes(a.ip().octets()) },
                sin_zero: [0; 8],
            };
            // SAFETY: sockaddr_storage is larger than, and aligned for, sockaddr_in.
            unsafe { (&raw mut storage).cast::<libc::sockaddr_in>().write(sa) };
            size_of::<libc::sockaddr_in>()
        }
        SocketAddr::V6(a) => {
            let sa = libc::sockaddr_in6 {
                sin6_family: libc::AF_INET6 as libc::sa_family_t,
                sin6_port: a.port().to_be(),
                sin6_flowinfo: 0,
                sin6_addr: libc::in6_addr { s6_addr: a.ip().octets() },
                sin6_scope_id: a.scope_id(),
            };
            // SAFETY: sockaddr_storage is larger than, and aligned for, sockaddr_in6.
            unsafe { (&raw mut storage).cast::<libc::sockaddr_in6>().write(sa) };
            size_of::<libc::sockaddr_in6>()
        }
    };
    (storage, len as libc::socklen_t)
}

/// The address the kernel wrote into `storage`; `None` if of no family
/// this path knows.
fn socket_addr(storage: &libc::sockaddr_storage) -> Option<SocketAddr> {
    match libc::c_int::from(storage.ss_family) {
        libc::AF_INET => {
            // SAFETY: the kernel wrote a sockaddr_in (its family says so).
            let sa = unsafe { (&raw const *storage).cast::<libc::sockaddr_in>().read() };
            let ip = Ipv4Addr::from(sa.sin_addr.s_addr.to_ne_bytes());
            Some(SocketAddrV4::new(ip, u16::from_be(sa.sin_port)).into())
        }
        libc::AF_INET6 => {
            // SAFETY: the kernel wrote a sockaddr_in6 (its family says so).
            let sa = unsafe { (&raw const *storage).cast::<libc::sockaddr_in6>().read() };
            let ip = Ipv6Addr::from(sa.sin6_addr.s6_addr);
            let port = u16::from_be(sa.sin6_port);
            Some(SocketAddrV6::new(ip, port, sa.sin6_flowinfo, sa.sin6_scope_id).into())
        }
        _ => None,
    }
}

fn udp_bound(addr: SocketAddr, option: libc::c_int, what: &str) -> io::Result<OwnedFd> {
    let family = if addr.is_ipv4() { libc::AF_INET } else { libc::AF_INET6 };
    // SAFETY: plain socket(2); the descriptor is owned at once.
    let raw = unsafe {
        libc::socket(family, libc::SOCK_DGRAM | libc::SOCK_CLOEXEC | libc::SOCK_NONBLOCK, 0)
    };
    check(raw, what)?;
    // SAFETY: a fresh descriptor nobody else owns.
    let fd = unsafe { OwnedFd::from_raw_fd(raw) };
    let o = options(&addr);
    set(&fd, o.level, option, 1, what)?;
    if addr.is_ipv6() {
        // IPv6 only: an IPv4 service has a socket of its own.
        set(&fd, libc::IPPROTO_IPV6, libc::IPV6_V6ONLY, 1, what)?;
    }
    set(&fd, libc::SOL_SOCKET, libc::SO_REUSEADDR, 1, what)?;
    let (sa, len) = sockaddr(addr);
    // SAFETY: a valid sockaddr of the length given.
    let rc = unsafe { libc::bind(fd.as_raw_fd(), (&raw const sa).cast(), len) };
    check(rc, what)?;
    Ok(fd)
}

/// The socket on a UDP service's `vip:port`. Freebind (`IP_FREEBIND`,
/// `IPV6_FREEBIND`): it binds even where the VIP is not a local address
/// right now (a keepalived backup); it receives once the VIP comes.
pub fn service(vip: SocketAddr) -> io::Result<OwnedFd> {
    let what = format!("the reassembly socket on {vip}");
    let o = options(&vip);
    let fd = udp_bound(vip, o.freebind, &what)?;
    set(&fd, o.level, o.frag_size, 1, &what)?;
    set(&fd, o.level, o.recv_ttl, 1, &what)?;
    Ok(fd)
}

/// One received datagram.
pub struct Received {
    pub len: usize,
    pub from: SocketAddr,
    /// The kernel reassembled it (`IP_RECVFRAGSIZE` or
    /// `IPV6_RECVFRAGSIZE` said so).
    pub reassembled: bool,
    /// Its TTL (hop limit) as it arrived (0 if the kernel did not say).
    pub ttl: u8,
}

/// The next datagram on `fd` into `buf`; `None` when there is none now.
pub fn receive(fd: &OwnedFd, buf: &mut [u8]) -> io::Result<Option<Received>> {
    // SAFETY: all zero is a valid sockaddr_storage.
    let mut from: libc::sockaddr_storage = unsafe { std::mem::zeroed() };
    let mut iov = libc::iovec { iov_base: buf.as_mut_ptr().cast(), iov_len: buf.len() };
    // Room for two int control messages, aligned as cmsghdr wants.
    let mut control = [0_u64; 16];
    // SAFETY: zeroed msghdr is valid; every pointer set below outlives the call.
    let mut msg: libc::msghdr = unsafe { std::mem::zeroed() };
    msg.msg_name = (&raw mut from).cast();
    msg.msg_namelen = size_of::<libc::sockaddr_storage>() as u32;
    msg.msg_iov = &raw mut iov;
    msg.msg_iovlen = 1;
    msg.msg_control = control.as_mut_ptr().cast();
    msg.msg_controllen = size_of_val(&control);
    // SAFETY: as above.
    let n = unsafe { libc::recvmsg(fd.as_raw_fd(), &raw mut msg, libc::MSG_TRUNC) };
    if n < 0 {
        let e = io::Error::last_os_error();
        return if e.kind() == io::ErrorKind::WouldBlock { Ok(None) } else { Err(e) };
    }
    let Some(from) = socket_addr(&from) else {
        return Err(io::Error::other("a datagram from an address of no known family"));
    };
    let o = options(&from);
    let (mut reassembled, mut ttl) = (false, 0);
    // SAFETY: the CMSG_* walk stays within `msg_controllen`, which the kernel set.
    unsafe {
        let mut c = libc::CMSG_FIRSTHDR(&raw const msg);
        while !c.is_null() {
            if (*c).cmsg_level == o.level {
                let value = libc::CMSG_DATA(c).cast::<libc::c_int>().read_unaligned();
                let kind = (*c).cmsg_type;
                if kind == o.frag_size {
                    reassembled = value > 0;
                } else if kind == o.ttl_message {
                    ttl = u8::try_from(value).unwrap_or(0);
                }
            }
            c = libc::CMSG_NXTHDR(&raw const msg, c);
        }
    }
    // MSG_TRUNC: the real length, which a datagram longer than the buffer exceeds.
    Ok(Some(Received { len: n.cast_unsigned(), from, reassembled, ttl }))
}

/// Sends `payload` to `to` from `client` (not one of our addresses:
/// transparent), one hop older (`ttl`). The kernel routes it and fragments
/// it for the way out (path MTU discovery off: never refused for its size,
/// like the client's own datagram that arrived in fragments).
pub fn send_as(client: SocketAddr, to: SocketAddr, ttl: u8, payload: &[u8]) -> io::Result<()> {
    let what = format!("sending as {client} to {to}");
    let o = options(&client);
    let fd = udp_bound(client, o.transparent, &what)?;
    set(&fd, o.level, o.mtu_discover, o.pmtudisc_dont, &what)?;
    set(&fd, o.level, o.send_ttl, libc::c_int::from(ttl), &what)?;
    let (sa, len) = sockaddr(to);
    // SAFETY: a valid buffer and sockaddr of the lengths given.
    let n = unsafe {
        libc::sendto(
            fd.as_raw_fd(),
            payload.as_ptr().cast(),
            payload.len(),
            0,
            (&raw const sa).cast(),
            len,
        )
    };
    if n < 0 {
        let e = io::Error::last_os_error();
        return Err(io::Error::new(e.kind(), format!("{what}: {e}")));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn addresses_of_both_families_go_to_the_kernel_and_back_unchanged() {
        for addr in ["10.77.1.10:41000", "[fd77:1::10]:41000"] {
            let addr: SocketAddr = addr.parse().unwrap();
            let (storage, len) = sockaddr(addr);
            let want = if addr.is_ipv4() { 16 } else { 28 };
            assert_eq!(len, want, "{addr}");
            assert_eq!(socket_addr(&storage), Some(addr));
        }
    }
}
