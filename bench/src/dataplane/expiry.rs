//! The controller's expiry of full NAT's mappings (`lb-ctl`'s
//! `kernel::fullnat`), which runs with each recount, every second: one
//! pass over `MAPPINGS` live mappings, timed as the recount with them
//! minus the same recount of an instance with none (both with a small
//! connection table, so that the mappings are most of the work).
//!
//! The mappings are taken by the data plane itself: a SYN each, from as
//! many client ports, to the fixture's `bench-fullnat` (three backends,
//! ports 1024-65535). The clock stands still, so none expires: the pass
//! is the steady state's, a walk that frees nothing.
use std::time::Duration;

use lb_testbed::{
    fixture::{CLIENT, IF_CLIENT, Loaded, VIP_BENCH},
    testrun::XDP_REDIRECT,
};

use super::{Part, handshake::syn, recount_time};

/// Live mappings in the full instance.
pub const MAPPINGS: u32 = 60_000;
/// The first client port; the others follow.
const FIRST_PORT: u16 = 1024;
/// Recounts timed in each instance; the median is reported.
const PASSES: usize = 9;

/// Must run on a thread inside the fixture namespace, pinned to one CPU.
pub fn run() -> Part {
    let mut empty = Loaded::new(4096);
    let mut full = Loaded::new(4096);
    eprintln!("taking {MAPPINGS} full-NAT mappings...");
    for i in 0..MAPPINGS {
        let port = FIRST_PORT + u16::try_from(i).expect("a port");
        let out = full.run(&syn((CLIENT, port), (VIP_BENCH, 82)), IF_CLIENT);
        assert_eq!(out.action, XDP_REDIRECT, "flow {i} took no mapping");
    }
    // Alternated, so that both see the same machine.
    let mut without = Vec::new();
    let mut with = Vec::new();
    for _ in 0..3 {
        without.push(recount_time(&mut empty, PASSES));
        with.push(recount_time(&mut full, PASSES));
    }
    without.sort_unstable();
    with.sort_unstable();
    let (without, with) = (without[1], with[1]);
    let pass = with.saturating_sub(without);
    let ms = |d: Duration| d.as_secs_f64() * 1000.0;
    // One pass a second: the share of a CPU it takes.
    let cpu = pass.as_secs_f64() * 100.0;
    let per_mapping = pass.as_nanos() / u128::from(MAPPINGS);
    let text = format!(
        "recount with {MAPPINGS} live mappings: {:.2} ms, without: {:.2} ms (medians of {PASSES} recounts, \
         3 alternations); the expiry's pass: {:.2} ms, {per_mapping} ns a mapping, {cpu:.1} % of a CPU \
         at one pass a second\n",
        ms(with),
        ms(without),
        ms(pass),
    );
    let json = format!(
        "{{\n    \"mappings\": {MAPPINGS},\n    \"recount_with_ms\": {:.3},\n    \"recount_without_ms\": {:.3},\n    \
         \"pass_ms\": {:.3},\n    \"pass_ns_per_mapping\": {per_mapping},\n    \"cpu_percent\": {cpu:.2}\n  }}",
        ms(with),
        ms(without),
        ms(pass),
    );
    Part {
        title: format!("Full NAT: the controller's expiry pass over {MAPPINGS} live mappings"),
        text,
        key: "fullnat_expiry",
        json,
    }
}
