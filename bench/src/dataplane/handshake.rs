//! A TCP handshake through the program, each packet timed on its own: the
//! client's SYN, the backend's SYN-ACK (from where the SYN was forwarded)
//! and the client's first ACK, with sequence numbers that agree. A data
//! plane that records a flow only once the client acknowledges the
//! backend's sequence number sees a real connection; one that records it
//! at the SYN sees the same packets.
use std::net::Ipv4Addr;

use aya::programs::Xdp;
use lb_testbed::{
    fixture::{
        self, BACKEND_ISN, CLIENT_ISN, CLIENT_MAC, IF_BACKEND_MAC, IF_CLIENT_MAC, handshake_ack,
    },
    packet::{Ipv4, L4, Mac, TCP_ACK, TCP_SYN},
    testrun::{self, XDP_REDIRECT, action_name},
};

/// Where a run of the program takes its frames from: the program and the
/// fixture's two interfaces.
#[derive(Clone, Copy)]
pub struct Path<'a> {
    pub program: &'a Xdp,
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

/// The client's SYN to `service` (sequence number `CLIENT_ISN`).
pub fn syn(client: (Ipv4Addr, u16), service: (Ipv4Addr, u16)) -> Vec<u8> {
    Ipv4::tcp(client, service, TCP_SYN, b"").frame(IF_CLIENT_MAC, CLIENT_MAC)
}

/// The client's ACK of the backend's SYN-ACK (also any later bare ACK of
/// the flow: no data moves).
pub fn ack(client: (Ipv4Addr, u16), service: (Ipv4Addr, u16)) -> Vec<u8> {
    handshake_ack(client, service).frame(IF_CLIENT_MAC, CLIENT_MAC)
}

/// The backend's SYN-ACK to the client, as the backend sends it.
fn syn_ack(backend: Backend, client: (Ipv4Addr, u16)) -> Vec<u8> {
    let mut p = Ipv4::tcp((backend.addr, backend.port), client, TCP_SYN | TCP_ACK, b"");
    if let L4::Tcp { seq, ack, .. } = &mut p.l4 {
        (*seq, *ack) = (BACKEND_ISN, CLIENT_ISN + 1);
    }
    p.frame(IF_BACKEND_MAC, backend.mac)
}

/// The backend a forwarded frame goes to: its destination MAC, address
/// and port.
pub fn destination(frame: &[u8]) -> Backend {
    let (addr, port) = fixture::destination(frame);
    Backend { addr, port, mac: frame[..6].try_into().expect("a MAC address") }
}

impl Path<'_> {
    /// Runs `frame` from `ingress`; panics unless the program forwards it.
    pub fn forward(&self, frame: &[u8], ingress: u32, what: &str) -> testrun::Outcome {
        let out = testrun::run(self.program, frame, ingress, 1);
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
