//! `check = "udp"` (keepalived's `UDP_CHECK`): one datagram to the backend
//! from a connected socket, and a reply within the timeout that matches
//! `expect` if it is set. An ICMP port unreachable surfaces on the
//! connected socket as a refusal and fails the probe at once; silence
//! fails it at the timeout (the caller's).
use std::net::{Ipv4Addr, SocketAddr};

use regex_lite::Regex;
use tokio::net::UdpSocket;

use super::probe::{Failure, compiled};

/// The most of a reply that is read (and matched): a UDP datagram's largest.
const MAX_REPLY: usize = 65_535;

pub struct UdpProbe {
    send: Vec<u8>,
    expect: Option<Regex>,
}

impl UdpProbe {
    /// `expect` must be a valid pattern (the config validated it).
    pub fn new(send: Vec<u8>, expect: Option<&str>) -> Self {
        Self { send, expect: compiled(expect) }
    }

    pub async fn attempt(&self, addr: SocketAddr) -> Result<String, Failure> {
        let socket = UdpSocket::bind((Ipv4Addr::UNSPECIFIED, 0)).await.map_err(Failure::connect)?;
        socket.connect(addr).await.map_err(Failure::connect)?;
        socket.send(&self.send).await.map_err(refusal)?;
        let mut reply = vec![0_u8; MAX_REPLY];
        let n = socket.recv(&mut reply).await.map_err(refusal)?;
        // The reply is matched as text: bytes that are not UTF-8 become
        // U+FFFD, so a pattern matches the text parts of a binary reply.
        if let Some(pattern) = &self.expect
            && !pattern.is_match(&String::from_utf8_lossy(&reply[..n]))
        {
            return Err(Failure::ReplyMismatch(pattern.as_str().to_owned()));
        }
        Ok(format!("UDP reply, {n} bytes"))
    }
}

/// A refusal on a connected UDP socket is the backend's ICMP port unreachable.
fn refusal(e: std::io::Error) -> Failure {
    if e.kind() == std::io::ErrorKind::ConnectionRefused {
        Failure::PortUnreachable
    } else {
        Failure::io(e)
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;
    use crate::daemon::health::probe::Prober;

    /// A responder on loopback that answers each datagram with `answer(datagram)`.
    async fn responder(answer: fn(&[u8]) -> Option<Vec<u8>>) -> SocketAddr {
        let socket = UdpSocket::bind("127.0.0.1:0").await.unwrap();
        let addr = socket.local_addr().unwrap();
        tokio::spawn(async move {
            let mut buf = [0_u8; 2048];
            while let Ok((n, from)) = socket.recv_from(&mut buf).await {
                if let Some(reply) = answer(&buf[..n]) {
                    let _ = socket.send_to(&reply, from).await;
                }
            }
        });
        addr
    }

    async fn probe(addr: SocketAddr, send: &[u8], expect: Option<&str>) -> (bool, String) {
        let prober = Prober::Udp(UdpProbe::new(send.to_vec(), expect));
        let r = prober.run(addr, Duration::from_millis(300)).await.expect("the probe ran");
        (r.ok, r.detail)
    }

    #[tokio::test]
    async fn a_matching_reply_passes_and_anything_else_is_named() {
        let echo = responder(|d| Some([b"pong ", d].concat())).await;
        assert_eq!(
            probe(echo, b"ping", Some("^pong ping$")).await,
            (true, "UDP reply, 9 bytes".into())
        );
        assert_eq!(probe(echo, b"ping", None).await, (true, "UDP reply, 9 bytes".into()));
        // Garbage: bytes that are not even text.
        let garbage = responder(|_| Some(vec![0xff, 0x00, 0xfe, 0x17])).await;
        assert_eq!(
            probe(garbage, b"ping", Some("^pong")).await,
            (false, "reply did not match /^pong/".into())
        );
        // A binary request (send_hex) and a reply matched in its text part.
        let dns =
            responder(|d| (d[..2] == [0x12, 0x34]).then(|| b"\x12\x34\x81\x80 ok".to_vec())).await;
        assert!(probe(dns, &[0x12, 0x34, 0, 1], Some(" ok$")).await.0);
        let silent = responder(|_| None).await;
        assert_eq!(probe(silent, b"ping", None).await, (false, "timeout after 300 ms".into()));
        // Nothing listens: the kernel's port unreachable, at once.
        let closed = std::net::UdpSocket::bind("127.0.0.1:0").unwrap().local_addr().unwrap();
        assert_eq!(probe(closed, b"ping", None).await, (false, "port unreachable".into()));
    }
}
