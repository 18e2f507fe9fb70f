//! `cargo xtask bench`: the data plane's cost per packet (`lb-bench`), the
//! health checks' detection time and probing capacity (`lb-bench-health`),
//! and the admin API's latency and the controller's memory (`lb-bench-api`);
//! the last two are built with optimisations, as the controller ships;
//! and the controller's Maglev tables (`lb-bench-control`, also alone as
//! `cargo xtask bench control`: no root needed); and end to end against
//! HAProxy and nftables (`lb-bench-e2e`, also alone as `cargo xtask bench e2e`).
use std::process::Command;

use anyhow::Result;

use crate::util::{bin, build, cargo, require_root, root, run_status, step, target_dir};

/// Builds the release `lb-ctl` and these benchmark binaries of lb-tests.
fn build_release(bins: &[&str]) -> Result<()> {
    let mut args = vec!["build", "--release", "-p", "lb-ctl", "-p", "lb-tests", "--bin", "lb-ctl"];
    for name in bins {
        args.extend(["--bin", name]);
    }
    cargo(&args)
}

/// Runs the release benchmark `name` with its JSON report at
/// `target/bench/JSON`, named by `out_var`, and the release `lb-ctl`.
fn run_release(name: &str, out_var: &str, json: &str) -> Result<()> {
    run_status(
        Command::new(target_dir().join("release").join(name))
            .env(out_var, root().join("target/bench").join(json))
            .env("LB_CTL", target_dir().join("release/lb-ctl"))
            .current_dir(root()),
    )
}

/// `cargo xtask bench control`: Maglev build time and disruption.
pub fn control() -> Result<()> {
    step("control plane: Maglev table build time and slots moved (release build)");
    cargo(&["build", "--release", "-p", "lb-tests", "--bin", "lb-bench-control"])?;
    let out = root().join("target/bench/control.json");
    run_status(
        Command::new(target_dir().join("release/lb-bench-control"))
            .env("LB_BENCH_CONTROL_OUT", &out)
            .current_dir(root()),
    )
}

/// `cargo xtask bench e2e`: the load balancer end to end against one
/// backend directly, HAProxy and nftables DNAT (wrk, nginx, a UDP client),
/// with the release `lb-ctl`. Needs root and `setup::ensure_for_bench`.
pub fn e2e() -> Result<()> {
    require_root("the end-to-end benchmark")?;
    step("end to end: direct vs lb vs HAProxy vs nftables (release build, a few minutes)");
    build_release(&["lb-bench-e2e"])?;
    run_release("lb-bench-e2e", "LB_BENCH_E2E_OUT", "e2e.json")
}

/// `cargo xtask bench dataplane`: the data plane's cost per packet (also
/// with 1M live flows and with 256 services x 64 backends) and the packets
/// per second one core forwards through veth in driver mode (`lb-bench`).
pub fn dataplane() -> Result<()> {
    build()?;
    require_root("the data plane benchmark")?;
    step("data plane: cost per packet, 1M flows, 256 x 64 services, forwarding rate");
    let out = root().join("target/bench/dataplane.json");
    run_status(Command::new(bin("lb-bench")).env("LB_BENCH_OUT", &out).current_dir(root()))
}

pub fn run() -> Result<()> {
    control()?;
    dataplane()?;

    step("health checks: detection time and probing capacity (release build)");
    build_release(&["lb-bench-health", "lb-bench-api", "lb-lab"])?;
    run_release("lb-bench-health", "LB_BENCH_HEALTH_OUT", "health.json")?;

    step("admin API: backend add latency, first packet, memory with 100 x 100 (release build)");
    run_release("lb-bench-api", "LB_BENCH_API_OUT", "api.json")?;
    e2e()
}
