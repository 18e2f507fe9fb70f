//! The two sockets of the slow path, on libc: one bound to a UDP service's
//! VIP:port that receives what the kernel reassembled, and one per datagram
//! sent on, bound to the client's address so the backend sees the client.
use std::{
    io,
    net::{Ipv4Addr, SocketAddrV4},
    os::fd::{AsRawFd as _, FromRawFd as _, OwnedFd},
};

/// `IP_RECVFRAGSIZE` (Linux 4.10, not in the libc crate): a datagram the
/// kernel reassembled carries the size of its largest fragment in a
/// control message; one that came whole carries none.
const IP_RECVFRAGSIZE: libc::c_int = 25;

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

fn sockaddr(addr: SocketAddrV4) -> libc::sockaddr_in {
    libc::sockaddr_in {
        sin_family: libc::AF_INET as libc::sa_family_t,
        sin_port: addr.port().to_be(),
        sin_addr: libc::in_addr { s_addr: u32::from_ne_bytes(addr.ip().octets()) },
        sin_zero: [0; 8],
    }
}

fn udp_bound(addr: SocketAddrV4, option: libc::c_int, what: &str) -> io::Result<OwnedFd> {
    // SAFETY: plain socket(2); the descriptor is owned at once.
    let raw = unsafe {
        libc::socket(libc::AF_INET, libc::SOCK_DGRAM | libc::SOCK_CLOEXEC | libc::SOCK_NONBLOCK, 0)
    };
    check(raw, what)?;
    // SAFETY: a fresh descriptor nobody else owns.
    let fd = unsafe { OwnedFd::from_raw_fd(raw) };
    set(&fd, libc::IPPROTO_IP, option, 1, what)?;
    set(&fd, libc::SOL_SOCKET, libc::SO_REUSEADDR, 1, what)?;
    let sa = sockaddr(addr);
    // SAFETY: a valid sockaddr_in of the length given.
    let rc = unsafe {
        libc::bind(fd.as_raw_fd(), (&raw const sa).cast(), size_of::<libc::sockaddr_in>() as u32)
    };
    check(rc, what)?;
    Ok(fd)
}

/// The socket on a UDP service's `vip:port`. `IP_FREEBIND`: it binds even
/// where the VIP is not a local address right now (a keepalived backup);
/// it receives once the VIP comes.
pub fn service(vip: SocketAddrV4) -> io::Result<OwnedFd> {
    let what = format!("the reassembly socket on {vip}");
    let fd = udp_bound(vip, libc::IP_FREEBIND, &what)?;
    set(&fd, libc::IPPROTO_IP, IP_RECVFRAGSIZE, 1, &what)?;
    set(&fd, libc::IPPROTO_IP, libc::IP_RECVTTL, 1, &what)?;
    Ok(fd)
}

/// One received datagram.
pub struct Received {
    pub len: usize,
    pub from: SocketAddrV4,
    /// The kernel reassembled it (`IP_RECVFRAGSIZE` said so).
    pub reassembled: bool,
    /// Its TTL as it arrived (0 if the kernel did not say).
    pub ttl: u8,
}

/// The next datagram on `fd` into `buf`; `None` when there is none now.
pub fn receive(fd: &OwnedFd, buf: &mut [u8]) -> io::Result<Option<Received>> {
    let mut from = sockaddr(SocketAddrV4::new(Ipv4Addr::UNSPECIFIED, 0));
    let mut iov = libc::iovec { iov_base: buf.as_mut_ptr().cast(), iov_len: buf.len() };
    // Room for two int control messages, aligned as cmsghdr wants.
    let mut control = [0_u64; 16];
    // SAFETY: zeroed msghdr is valid; every pointer set below outlives the call.
    let mut msg: libc::msghdr = unsafe { std::mem::zeroed() };
    msg.msg_name = (&raw mut from).cast();
    msg.msg_namelen = size_of::<libc::sockaddr_in>() as u32;
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
    let (mut reassembled, mut ttl) = (false, 0);
    // SAFETY: the CMSG_* walk stays within `msg_controllen`, which the kernel set.
    unsafe {
        let mut c = libc::CMSG_FIRSTHDR(&raw const msg);
        while !c.is_null() {
            if (*c).cmsg_level == libc::IPPROTO_IP {
                let value = libc::CMSG_DATA(c).cast::<libc::c_int>().read_unaligned();
                match (*c).cmsg_type {
                    IP_RECVFRAGSIZE => reassembled = value > 0,
                    libc::IP_TTL => ttl = u8::try_from(value).unwrap_or(0),
                    _ => {}
                }
            }
            c = libc::CMSG_NXTHDR(&raw const msg, c);
        }
    }
    let from = SocketAddrV4::new(
        Ipv4Addr::from(from.sin_addr.s_addr.to_ne_bytes()),
        u16::from_be(from.sin_port),
    );
    // MSG_TRUNC: the real length, which a datagram longer than the buffer exceeds.
    Ok(Some(Received { len: n.cast_unsigned(), from, reassembled, ttl }))
}

/// Sends `payload` to `to` from `client` (not one of our addresses:
/// `IP_TRANSPARENT`), one hop older (`ttl`). The kernel routes it and
/// fragments it for the way out (`IP_PMTUDISC_DONT`: never refused for
/// its size, like the client's own datagram that arrived in fragments).
pub fn send_as(client: SocketAddrV4, to: SocketAddrV4, ttl: u8, payload: &[u8]) -> io::Result<()> {
    let what = format!("sending as {client} to {to}");
    let fd = udp_bound(client, libc::IP_TRANSPARENT, &what)?;
    set(&fd, libc::IPPROTO_IP, libc::IP_MTU_DISCOVER, libc::IP_PMTUDISC_DONT, &what)?;
    set(&fd, libc::IPPROTO_IP, libc::IP_TTL, libc::c_int::from(ttl), &what)?;
    let sa = sockaddr(to);
    // SAFETY: a valid buffer and sockaddr_in of the lengths given.
    let n = unsafe {
        libc::sendto(
            fd.as_raw_fd(),
            payload.as_ptr().cast(),
            payload.len(),
            0,
            (&raw const sa).cast(),
            size_of::<libc::sockaddr_in>() as u32,
        )
    };
    if n < 0 {
        let e = io::Error::last_os_error();
        return Err(io::Error::new(e.kind(), format!("{what}: {e}")));
    }
    Ok(())
}
