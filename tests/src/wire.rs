//! Frames put on a link as they are, through a packet socket: what a test
//! forges (another host's source, a loop's datagram, a flood), and the
//! link counters that say whether they got there.
use std::{
    os::fd::{AsRawFd as _, FromRawFd as _, OwnedFd},
    time::{Duration, Instant},
};

use lb_testbed::{netns::ns_sh, packet::Mac, topology::Topology};

/// A packet socket on `dev` in the calling thread's namespace, and the
/// address that sends out of it.
pub fn packet_socket(dev: &str) -> (OwnedFd, libc::sockaddr_ll) {
    // SAFETY: plain socket(2); the descriptor is owned at once.
    let fd = unsafe {
        libc::socket(libc::AF_PACKET, libc::SOCK_RAW, i32::from((libc::ETH_P_ALL as u16).to_be()))
    };
    assert!(fd >= 0, "AF_PACKET socket: {}", std::io::Error::last_os_error());
    // SAFETY: fd is a fresh descriptor nobody else owns.
    let fd = unsafe { OwnedFd::from_raw_fd(fd) };
    let ifindex = lb_ctl::write::netdev::ifindex(dev).expect("interface");
    // SAFETY: all-zero is a valid sockaddr_ll.
    let mut addr: libc::sockaddr_ll = unsafe { std::mem::zeroed() };
    addr.sll_family = libc::AF_PACKET as u16;
    addr.sll_ifindex = ifindex.cast_signed();
    addr.sll_protocol = (libc::ETH_P_IP as u16).to_be();
    (fd, addr)
}

/// Sends `frame` as it is through a packet socket of `packet_socket`;
/// whether the kernel took all of it.
pub fn send_frame(fd: &OwnedFd, addr: &libc::sockaddr_ll, frame: &[u8]) -> bool {
    // SAFETY: a valid socket, buffer and address.
    let rc = unsafe {
        libc::sendto(
            fd.as_raw_fd(),
            frame.as_ptr().cast(),
            frame.len(),
            0,
            std::ptr::from_ref(addr).cast(),
            size_of::<libc::sockaddr_ll>() as libc::socklen_t,
        )
    };
    usize::try_from(rc) == Ok(frame.len())
}

/// The MAC address of `dev` in namespace `ns`.
pub fn mac_of(ns: &str, dev: &str) -> Mac {
    let text = ns_sh(ns, &["cat", &format!("/sys/class/net/{dev}/address")]);
    let bytes: Vec<u8> =
        text.trim().split(':').map(|b| u8::from_str_radix(b, 16).expect("MAC byte")).collect();
    bytes.try_into().expect("6 bytes")
}

/// An interface statistic (`tx_packets`...) of `dev` in namespace `ns`.
pub fn if_stat(ns: &str, dev: &str, name: &str) -> u64 {
    ns_sh(ns, &["cat", &format!("/sys/class/net/{dev}/statistics/{name}")])
        .trim()
        .parse()
        .expect("a counter")
}

/// Frames lost between the client and the load balancer's XDP program,
/// before anything counted them: a veth with XDP has a ring of its own per
/// queue, and a burst that overflows it is dropped (counted as the
/// sender's `tx_dropped` or the receiver's `rx_dropped`).
pub fn veth_drops(topo: &Topology) -> u64 {
    if_stat(&topo.client(), "c0", "tx_dropped") + if_stat(&topo.lb(), "lb-c", "rx_dropped")
}

/// How a `blast` went.
#[derive(Debug, Clone, Copy)]
pub struct Blast {
    /// Frames the kernel took.
    pub sent: usize,
    pub elapsed: Duration,
}

impl Blast {
    pub fn per_second(&self) -> f64 {
        self.sent as f64 / self.elapsed.as_secs_f64().max(1e-9)
    }
}

/// Frames handed to the kernel per `sendmmsg(2)`.
const BATCH: usize = 64;

/// Sends `frames` out of `dev` (in the calling thread's namespace) as fast
/// as the kernel takes them, `BATCH` per `sendmmsg(2)`, giving the
/// receiver `pause` after each batch (none: `Duration::ZERO`). A batch the
/// kernel refuses for want of buffers is tried again after a short sleep;
/// whatever is left at `deadline` is not sent.
pub fn blast(dev: &str, frames: &[Vec<u8>], pause: Duration, deadline: Instant) -> Blast {
    let (fd, addr) = packet_socket(dev);
    let start = Instant::now();
    let mut sent = 0;
    for batch in frames.chunks(BATCH) {
        let mut iovs: Vec<libc::iovec> = batch
            .iter()
            .map(|f| libc::iovec { iov_base: f.as_ptr().cast_mut().cast(), iov_len: f.len() })
            .collect();
        let mut msgs: Vec<libc::mmsghdr> = iovs
            .iter_mut()
            .map(|iov| {
                // SAFETY: all-zero is a valid msghdr (no control data, no flags).
                let mut hdr: libc::msghdr = unsafe { std::mem::zeroed() };
                hdr.msg_name = (&raw const addr).cast_mut().cast();
                hdr.msg_namelen = size_of::<libc::sockaddr_ll>() as libc::socklen_t;
                hdr.msg_iov = iov;
                hdr.msg_iovlen = 1;
                libc::mmsghdr { msg_hdr: hdr, msg_len: 0 }
            })
            .collect();
        let mut done = 0;
        while done < msgs.len() && Instant::now() < deadline {
            let left = &mut msgs[done..];
            // SAFETY: a valid socket; every header points at a live frame,
            // its iovec and the address, all outliving the call.
            let rc = unsafe {
                libc::sendmmsg(fd.as_raw_fd(), left.as_mut_ptr(), left.len() as libc::c_uint, 0)
            };
            match usize::try_from(rc) {
                Ok(n) if n > 0 => done += n,
                _ => std::thread::sleep(Duration::from_micros(100)),
            }
        }
        sent += done;
        if done < msgs.len() {
            break;
        }
        if !pause.is_zero() {
            std::thread::sleep(pause);
        }
    }
    Blast { sent, elapsed: start.elapsed() }
}
