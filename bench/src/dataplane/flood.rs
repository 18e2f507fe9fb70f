//! "SYN flood then established": does a flood of new flows displace an
//! established one? Each sample records a flow (a full handshake), sends
//! ten times `FLOOD_TABLE` SYNs of fresh 5-tuples (untimed), then times one
//! packet of the recorded flow and checks it still goes to its backend.
//!
//! The program here has its own small connection table, so that a flood
//! ten times its size takes a fraction of a second per sample (one
//! BPF_PROG_TEST_RUN per SYN: with `repeat > 1` the kernel would rerun the
//! program on the frame it rewrote, not on fresh 5-tuples).
use std::net::Ipv4Addr;

use lb_testbed::{
    fixture::{IF_BACKEND, IF_CLIENT, Loaded},
    rng::Rng,
    testrun::{self, XDP_REDIRECT},
};

use super::{
    Baseline, Kept, Row, Stats, fresh_client,
    handshake::{self, Path},
};

/// `conntrack_max` of the flooded program.
pub const FLOOD_TABLE: u32 = 1 << 14;
/// SYNs per flood: ten times the table.
const FLOOD_SYNS: usize = 10 * FLOOD_TABLE as usize;
/// Samples of the row (each a handshake, a flood and a timed packet).
pub const FLOOD_SAMPLES: usize = 15;

/// The row, for flows to `service`. `fresh` numbers the 5-tuples (see
/// `fresh_client`) and moves past the ones used here. A service whose
/// scheduler does not place a flow met mid-way where it was (`rr`) shows
/// a lost entry; Maglev would hide it by placing the flow again alike.
pub fn row(name: &str, service: (Ipv4Addr, u16), baseline: &Baseline, fresh: &mut usize) -> Row {
    let mut loaded = Loaded::new(FLOOD_TABLE);
    let path = Path {
        program: &loaded.program,
        client_if: Loaded::ifindex(IF_CLIENT),
        backend_if: Loaded::ifindex(IF_BACKEND),
    };
    let mut times = Vec::with_capacity(FLOOD_SAMPLES);
    let mut rng = Rng::new(0x5359_4e66);
    let mut kept = 0;
    eprintln!("SYN flood: {FLOOD_SAMPLES} floods of {FLOOD_SYNS} SYNs...");
    for _ in 0..FLOOD_SAMPLES {
        let [recorded, other] = [(); 2].map(|()| {
            *fresh += 1;
            fresh_client(*fresh)
        });
        let backend = path.handshake(recorded, service).backend;
        path.handshake(other, service);
        flood(&path, service, &mut rng);
        // A flood this size lasts longer than a tick of the data plane's
        // clock, and a tick sends every flow cache entry back to the table.
        loaded.reconciler.advance_clock().expect("advancing the data plane's clock");
        // The first packet of ours after a tick pays a refresh of this
        // CPU's (5 to 10 us seen here, whatever the flow), which is not
        // this row's subject: another flow's packet pays it.
        let ack = |client| {
            testrun::run(path.program, &handshake::ack(client, service), path.client_if, 1)
        };
        ack(other);
        // Not forwarded, or forwarded elsewhere: the row says LOST.
        let out = ack(recorded);
        times.push(out.duration_ns);
        kept += usize::from(
            out.action == XDP_REDIRECT && handshake::destination(&out.frame) == backend,
        );
    }
    Row {
        name: name.to_owned(),
        gross: Stats::of(&mut times),
        baseline: baseline.stats(),
        target: None,
        kept: Some(Kept { kept, samples: FLOOD_SAMPLES }),
    }
}

/// `FLOOD_SYNS` SYNs to `service` from random sources: addresses in
/// 10.77.64.0/18 (routed back by the client side, as the reverse-path
/// check wants) and ports, drawn from `rng`.
fn flood(path: &Path, service: (Ipv4Addr, u16), rng: &mut Rng) {
    for _ in 0..FLOOD_SYNS {
        let [a, b, p, q, ..] = rng.next_u64().to_le_bytes();
        let source = (Ipv4Addr::new(10, 77, 64 | (a & 63), b), u16::from_le_bytes([p, q]) | 1024);
        path.forward(&handshake::syn(source, service), path.client_if, "a flood SYN");
    }
}

/// What the flood row's figures are, for under the table.
pub fn note() -> String {
    format!(
        "SYN flood row: {FLOOD_SAMPLES} samples (its statistics are over these, not over rounds), \
         each a handshake, then {FLOOD_SYNS} SYNs from random sources into a table sized for \
         {FLOOD_TABLE} flows, then the recorded flow's ACK, timed; the baseline measured after"
    )
}
