//! What a packet case expects of the program, and the checks the fixture
//! table and the hostile corpus both make: the verdict, the counter that
//! says why (up by one), and the output byte for byte.
use std::net::{Ipv4Addr, Ipv6Addr};

use lb_common::{
    abi::{NEIGH_MARK_MAGIC, NEIGH_MARK6_MAGIC, NeighMark, neigh6_tag},
    counter::Counter,
};
use lb_testbed::{
    fixture::Loaded,
    testrun::{Outcome, action_name},
};

/// What the output must be.
#[derive(Clone)]
pub enum Expect {
    /// The frame leaves exactly as it came.
    Unchanged,
    /// The frame leaves as these bytes.
    Frame(Vec<u8>),
    /// Rewritten but handed to tc for neighbour resolution: these bytes with
    /// the mark naming the egress interface and the next hop in place of
    /// the MAC addresses.
    SlowPath { frame: Vec<u8>, egress: &'static str, nexthop: Ipv4Addr },
    /// The same for IPv6, whose mark carries the next hop's tag (its
    /// address waits in `lb_neigh6`).
    SlowPath6 { frame: Vec<u8>, egress: &'static str, nexthop: Ipv6Addr },
}

impl Expect {
    /// The bytes the program must leave for `input`.
    pub fn output(&self, input: &[u8]) -> Vec<u8> {
        match self {
            Self::Unchanged => input.to_vec(),
            Self::Frame(f) => f.clone(),
            Self::SlowPath { frame, egress, nexthop } => {
                let mark = NeighMark {
                    magic: NEIGH_MARK_MAGIC,
                    ifindex: Loaded::ifindex(egress),
                    nexthop: nexthop.octets(),
                };
                let mut marked = frame.clone();
                marked[..12].copy_from_slice(&mark.to_bytes());
                marked
            }
            Self::SlowPath6 { frame, egress, nexthop } => {
                let mark = NeighMark {
                    magic: NEIGH_MARK6_MAGIC,
                    ifindex: Loaded::ifindex(egress),
                    nexthop: neigh6_tag(&nexthop.octets()).to_ne_bytes(),
                };
                let mut marked = frame.clone();
                marked[..12].copy_from_slice(&mark.to_bytes());
                marked
            }
        }
    }
}

/// Runs `input` received on `ingress`: the outcome, and what differs from
/// `action`, `counter` going up by one and `expect`'s bytes.
pub fn run_case(
    loaded: &mut Loaded,
    (input, ingress): (&[u8], &str),
    action: u32,
    counter: Counter,
    expect: &Expect,
) -> (Outcome, Vec<String>) {
    let before = loaded.counter(counter);
    let out = loaded.run(input, ingress);
    let after = loaded.counter(counter);
    let mut problems = Vec::new();
    if out.action != action {
        problems.push(format!(
            "verdict {} (want {})",
            action_name(out.action),
            action_name(action)
        ));
    }
    if after != before + 1 {
        problems.push(format!("counter {} went {before} -> {after} (want +1)", counter.name()));
    }
    let want = expect.output(input);
    if out.frame != want {
        problems.push(format!(
            "output bytes differ:\n  in   {}\n  got  {}\n  want {}",
            hex(input),
            hex(&out.frame),
            hex(&want)
        ));
    }
    (out, problems)
}

/// `bytes` as hex, 16 to a line.
pub fn hex(bytes: &[u8]) -> String {
    bytes
        .chunks(16)
        .map(|c| c.iter().map(|b| format!("{b:02x}")).collect::<Vec<_>>().join(" "))
        .collect::<Vec<_>>()
        .join("\n    ")
}
