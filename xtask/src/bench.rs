//! `cargo xtask bench`: builds, then runs the data-plane benchmark
//! (`lb-bench`, in the tests crate) as root.
use std::process::Command;

use anyhow::Result;

use crate::util::{bin, build, require_root, root, run_status, step};

pub fn run() -> Result<()> {
    build()?;
    require_root("the benchmarks")?;
    step("data plane: cost per packet");
    let out = root().join("target/bench/dataplane.json");
    run_status(Command::new(bin("lb-bench")).env("LB_BENCH_OUT", &out).current_dir(root()))
}
