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
    cargo(&[
        "build",
        "--release",
        "-p",
        "lb-ctl",
        "-p",
        "lb-tests",
        "--bin",
        "lb-ctl",
        "--bin",
        "lb-bench-e2e",
    ])?;
    let out = root().join("target/bench/e2e.json");
    run_status(
        Command::new(target_dir().join("release/lb-bench-e2e"))
            .env("LB_BENCH_E2E_OUT", &out)
            .env("LB_CTL", target_dir().join("release/lb-ctl"))
            .current_dir(root()),
    )
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
    cargo(&[
        "build",
        "--release",
        "-p",
        "lb-ctl",
        "-p",
        "lb-tests",
        "--bin",
        "lb-ctl",
        "--bin",
        "lb-bench-health",
        "--bin",
        "lb-bench-api",
        "--bin",
        "lb-lab",
    ])?;
    let out = root().join("target/bench/health.json");
    run_status(
        Command::new(target_dir().join("release/lb-bench-health"))
            .env("LB_BENCH_HEALTH_OUT", &out)
            .env("LB_CTL", bin("lb-ctl"))
            .current_dir(root()),
    )?;

    step("admin API: backend add latency, first packet, memory with 100 x 100 (release build)");
    let out = root().join("target/bench/api.json");
    run_status(
        Command::new(target_dir().join("release/lb-bench-api"))
            .env("LB_BENCH_API_OUT", &out)
            .env("LB_CTL", target_dir().join("release/lb-ctl"))
            .current_dir(root()),
    )?;
    e2e()
}
