//! A TCP handshake through the program, each packet timed on its own: the
//! client's SYN, the backend's SYN-ACK (from where the SYN was forwarded)
//! and the client's first ACK, with sequence numbers that agree. A data
//! plane that records a flow only once the client acknowledges the
//! backend's sequence number sees a real connection; one that records it
//! at the SYN sees the same packets.
use std::net::Ipv4Addr;

use crate::{
    fixture::{CLIENT_MAC, IF_BACKEND_MAC, IF_CLIENT_MAC},
    packet::{Ipv4, L4, Mac, TCP_ACK, TCP_SYN},
    testrun::{self, XDP_REDIRECT, action_name},
};

/// The client's initial sequence number.
const CLIENT_ISN: u32 = 0x0c11_e000;
/// The backend's initial sequence number (S of the SYN-ACK).
const BACKEND_ISN: u32 = 0x0bac_0000;

/// Where a run of the program takes its frames from: the program and the
/// fixture's two interfaces.
#[derive(Clone, Copy)]
pub struct Path {
    pub prog_fd: i32,
    pub client_if: u32,
    pub backend_if: u32,
}

/// A backend as a forwarded frame names it: address, port, MAC address.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Backend {
    pub addr: Ipv4Addr,
    pub port: u16,
    pub mac: Mac,
}

/// One handshake's times (ns) and the backend it went to.
pub struct Handshake {
    pub syn: u32,
    pub syn_ack: u32,
    pub ack: u32,
    pub backend: Backend,
}

impl Handshake {
    /// The four figures of a handshake row group: SYN, SYN-ACK, first ACK,
    /// and the new connection's cost on the client's side (SYN + first ACK).
    pub fn figures(&self) -> [u32; 4] {
        [self.syn, self.syn_ack, self.ack, self.syn + self.ack]
    }
}

/// A TCP segment with its sequence and acknowledgement numbers.
fn segment(src: (Ipv4Addr, u16), dst: (Ipv4Addr, u16), flags: u8, seq: u32, ack: u32) -> Ipv4 {
    let mut p = Ipv4::tcp(src, dst, flags, b"");
    if let L4::Tcp { seq: s, ack: a, .. } = &mut p.l4 {
        (*s, *a) = (seq, ack);
    }
    p
}

/// The client's SYN to `service`.
pub fn syn(client: (Ipv4Addr, u16), service: (Ipv4Addr, u16)) -> Vec<u8> {
    segment(client, service, TCP_SYN, CLIENT_ISN, 0).frame(IF_CLIENT_MAC, CLIENT_MAC)
}

/// The client's ACK of the backend's SYN-ACK (also any later bare ACK of
/// the flow: no data moves).
pub fn ack(client: (Ipv4Addr, u16), service: (Ipv4Addr, u16)) -> Vec<u8> {
    segment(client, service, TCP_ACK, CLIENT_ISN + 1, BACKEND_ISN + 1)
        .frame(IF_CLIENT_MAC, CLIENT_MAC)
}

/// The backend's SYN-ACK to the client, as the backend sends it.
fn syn_ack(backend: Backend, client: (Ipv4Addr, u16)) -> Vec<u8> {
    segment((backend.addr, backend.port), client, TCP_SYN | TCP_ACK, BACKEND_ISN, CLIENT_ISN + 1)
        .frame(IF_BACKEND_MAC, backend.mac)
}

/// The backend a forwarded frame goes to: its destination MAC, address
/// and port.
pub fn destination(frame: &[u8]) -> Backend {
    let ip = &frame[14..];
    let l4 = &ip[usize::from(ip[0] & 0x0f) * 4..];
    Backend {
        addr: Ipv4Addr::new(ip[16], ip[17], ip[18], ip[19]),
        port: u16::from_be_bytes([l4[2], l4[3]]),
        mac: frame[..6].try_into().expect("a MAC address"),
    }
}

impl Path {
    /// Runs `frame` from `ingress`; panics unless the program forwards it.
    pub fn forward(&self, frame: &[u8], ingress: u32, what: &str) -> testrun::Outcome {
        let out = testrun::run(self.prog_fd, frame, ingress, 1);
        assert_eq!(
            out.action,
            XDP_REDIRECT,
            "{what}: {} instead of XDP_REDIRECT",
            action_name(out.action)
        );
        out
    }

    /// SYN, SYN-ACK, first ACK of a new flow from `client` to `service`.
    /// Panics if a packet is not forwarded, or the ACK goes elsewhere than
    /// the SYN did.
    pub fn handshake(&self, client: (Ipv4Addr, u16), service: (Ipv4Addr, u16)) -> Handshake {
        let syn = self.forward(&syn(client, service), self.client_if, "a SYN");
        let backend = destination(&syn.frame);
        let syn_ack =
            self.forward(&syn_ack(backend, client), self.backend_if, "the backend's SYN-ACK");
        let ack = self.forward(&ack(client, service), self.client_if, "the first ACK");
        assert_eq!(destination(&ack.frame), backend, "the first ACK goes where the SYN went");
        Handshake {
            syn: syn.duration_ns,
            syn_ack: syn_ack.duration_ns,
            ack: ack.duration_ns,
            backend,
        }
    }
}
