//! `cargo xtask bench`: the data plane's cost per packet (`lb-bench`), the
//! health checks' detection time and probing capacity (`lb-bench-health`),
//! and the admin API's latency and the controller's memory (`lb-bench-api`);
//! the last two are built with optimisations, as the controller ships;
//! and the controller's Maglev tables (`lb-bench-control`, also alone as
//! `cargo xtask bench control`: no root needed); and end to end against
//! HAProxy and nftables (`lb-bench-e2e`, also alone as `cargo xtask bench e2e`).
//! Each run ends with `report`: the tables of `docs/benchmarks.md` rendered
//! again from the JSON the benchmarks left under `target/bench/`.
use std::{
    path::{Path, PathBuf},
    process::Command,
};

use anyhow::{Context as _, Result};

use crate::{
    bench_tables,
    util::{bin, cargo, cargo_cmd, output, require_root, root, run_status, step, target_dir},
};

/// Builds the release `lb-ctl` and these binaries: benchmarks of lb-bench,
/// and `lb-lab` (the health-check benchmark's synthetic backends).
fn build_release(bins: &[&str]) -> Result<()> {
    let mut args = vec!["build", "--release", "-p", "lb-ctl", "--bin", "lb-ctl"];
    for name in bins {
        let package = if *name == "lb-lab" { "lb-lab" } else { "lb-bench" };
        args.extend(["-p", package, "--bin", name]);
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
    cargo(&["build", "--release", "-p", "lb-bench", "--bin", "lb-bench-control"])?;
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
    step(
        "end to end: direct vs lb (NAT, full NAT) vs HAProxy vs nftables (release build, a few minutes)",
    );
    build_release(&["lb-bench-e2e"])?;
    run_release("lb-bench-e2e", "LB_BENCH_E2E_OUT", "e2e.json")
}

/// `cargo xtask bench dataplane`: the data plane's cost per packet (also
/// with 1M live flows and with 256 services x 64 backends), the memory
/// accesses' floor on this machine, and the packets per second one core
/// forwards through veth in driver mode (`lb-bench`).
pub fn dataplane() -> Result<()> {
    // Optimised like the controller: a debug harness between the runs
    // leaves fewer of the program's cache lines warm; measured side by side
    // with one object, it added 9 to 19 ns a row (established 98-101
    // against 82, non-VIP 18-21 against 12).
    step("building lb-bench (release, and the XDP object)");
    cargo(&["build", "--release", "-p", "lb-bench", "--bin", "lb-bench"])?;
    require_root("the data plane benchmark")?;
    step("data plane: cost per packet, 1M flows, 256 x 64 services, memory floor, forwarding rate");
    let out = root().join("target/bench/dataplane.json");
    let ran = run_status(
        Command::new(target_dir().join("release/lb-bench"))
            .env("LB_BENCH_OUT", &out)
            .current_dir(root()),
    );
    remove_bench_ns();
    ran
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

/// `cargo xtask bench report`, and the end of every `cargo xtask bench
/// [KIND]`: `lb-bench-report` renders the tables from `target/bench/*.json`,
/// and each goes in place of its region of `docs/benchmarks.md` (see
/// `bench_tables`). Regions whose JSON is absent stay as they are.
pub fn report() -> Result<()> {
    step("docs/benchmarks.md: the tables from target/bench/*.json");
    cargo(&["build", "-p", "lb-bench", "--bin", "lb-bench-report"])?;
    let generated = output(
        Command::new(bin("lb-bench-report")).arg(root().join("target/bench")).current_dir(root()),
    )?;
    let path = root().join("docs/benchmarks.md");
    let doc =
        std::fs::read_to_string(&path).with_context(|| format!("reading {}", path.display()))?;
    let (doc, names) = bench_tables::splice(&doc, &generated)?;
    if names.is_empty() {
        eprintln!("no benchmark report under target/bench: the tables stay as they are");
        return Ok(());
    }
    std::fs::write(&path, doc).with_context(|| format!("writing {}", path.display()))?;
    eprintln!("{}: rendered {}", path.display(), names.join(", "));
    Ok(())
}

/// `cargo xtask bench ab --base REV [--runs N] [parts...]`: the current
/// `lb-bench` over two XDP objects, REV's and the working tree's, run
/// alternately (base, new, base, new, ...) so that the machine's slow and
/// fast phases touch both alike; then `lb-bench compare` over their JSON.
pub fn ab(args: &[&str]) -> Result<()> {
    let ab = AbArgs::parse(args)?;
    require_root("the A/B data plane benchmark")?;
    let dir = root().join("target/bench/ab");
    std::fs::create_dir_all(&dir)?;
    let base_object = dir.join("base-lb-ebpf");
    build_base_object(ab.base, &base_object)?;
    step("building the current lb-bench (release)");
    cargo(&["build", "--release", "-p", "lb-bench", "--bin", "lb-bench"])?;
    let (mut base_json, mut new_json) = (Vec::new(), Vec::new());
    for run in 1..=ab.runs {
        for (side, object, jsons) in
            [("base", Some(&base_object), &mut base_json), ("new", None, &mut new_json)]
        {
            step(&format!("run {run} of {}: {side}", ab.runs));
            let json = dir.join(format!("{side}-{run}.json"));
            let ran = run_bench(object.map(PathBuf::as_path), &json, &ab.parts);
            remove_bench_ns();
            ran?;
            jsons.push(json);
        }
    }
    step(&format!("{} (base) against the working tree (new)", ab.base));
    let mut compare = Command::new(target_dir().join("release/lb-bench"));
    compare.arg("compare").arg("--base").args(&base_json).arg("--new").args(&new_json);
    run_status(&mut compare)
}

/// What `bench ab` was asked.
struct AbArgs<'a> {
    base: &'a str,
    runs: usize,
    parts: Vec<&'a str>,
}

impl<'a> AbArgs<'a> {
    const USAGE: &'static str =
        "usage: cargo xtask bench ab --base REV [--runs N] [lb-bench parts...]";

    fn parse(args: &[&'a str]) -> Result<Self> {
        let (mut base, mut runs, mut parts) = (None, 6, Vec::new());
        let mut args = args.iter();
        while let Some(&arg) = args.next() {
            match arg {
                "--base" => base = args.next().copied(),
                "--runs" => {
                    runs = args.next().and_then(|n| n.parse().ok()).filter(|&n| n > 0).ok_or_else(
                        || anyhow::anyhow!("--runs wants a positive number\n{}", Self::USAGE),
                    )?;
                }
                part => parts.push(part),
            }
        }
        let base = base.ok_or_else(|| anyhow::anyhow!("--base REV is missing\n{}", Self::USAGE))?;
        Ok(Self { base, runs, parts })
    }
}

/// One run of the release `lb-bench` (`object`: the XDP object to load
/// instead of the built-in one), its JSON at `json` and its tables next to
/// it (`.txt`): only the comparison is printed.
fn run_bench(object: Option<&Path>, json: &Path, parts: &[&str]) -> Result<()> {
    let log = json.with_extension("txt");
    let mut cmd = Command::new(target_dir().join("release/lb-bench"));
    cmd.args(parts)
        .env("LB_BENCH_OUT", json)
        .stdout(std::fs::File::create(&log)?)
        .current_dir(root());
    if let Some(object) = object {
        cmd.env("LB_EBPF_OBJECT", object);
    }
    run_status(&mut cmd).with_context(|| format!("its tables so far: {}", log.display()))
}

/// lb-bench removes its namespace itself, also when it panics; not when
/// it is killed. The next run would remove it first, but the last would
/// leave it.
fn remove_bench_ns() {
    if Path::new("/var/run/netns").join(BENCH_NS).exists() {
        let _ = Command::new("ip").args(["netns", "del", BENCH_NS]).status();
    }
}

/// The data plane benchmark's namespace (`lb_bench::dataplane::BENCH_NS`).
const BENCH_NS: &str = "lbd-bench";

/// Builds REV's XDP object in a worktree of its own (its own target
/// directory, so ours stays as it is) and copies it to `to`. The worktree
/// goes when this returns, whatever happened.
fn build_base_object(rev: &str, to: &Path) -> Result<()> {
    step(&format!("building the XDP object of {rev} (worktree target/ab-base)"));
    let worktree = Worktree::add(&root().join("target/ab-base"), rev)?;
    let target = root().join("target/ab-base-target");
    // lb-ctl's build script builds the object (lb-ctl/build.rs); `check` runs
    // build scripts too, and spares lb-ctl's dependencies their codegen.
    let mut cmd = cargo_cmd(&["check", "--release", "-p", "lb-ctl"]);
    cmd.current_dir(&worktree.path).env("CARGO_TARGET_DIR", &target);
    run_status(&mut cmd)?;
    let object = newest_build_output(&target.join("release/build"), "lb-ctl-", "out/lb-ebpf")?;
    std::fs::copy(&object, to)
        .with_context(|| format!("copying {} to {}", object.display(), to.display()))?;
    Ok(())
}

/// The newest `DIR/PREFIX*/FILE`: build script outputs of earlier builds
/// (other revisions) stay beside the one just made.
fn newest_build_output(dir: &Path, prefix: &str, file: &str) -> Result<PathBuf> {
    std::fs::read_dir(dir)
        .with_context(|| format!("reading {}", dir.display()))?
        .filter_map(Result::ok)
        .filter(|e| e.file_name().to_string_lossy().starts_with(prefix))
        .map(|e| e.path().join(file))
        .filter_map(|p| Some((p.metadata().ok()?.modified().ok()?, p)))
        .max()
        .map(|(_, p)| p)
        .with_context(|| format!("no {prefix}*/{file} under {}", dir.display()))
}

/// A detached git worktree, removed on drop (also on an early return).
struct Worktree {
    path: PathBuf,
}

impl Worktree {
    fn add(path: &Path, rev: &str) -> Result<Self> {
        // A worktree left by an interrupted run goes first; `--force` also
        // takes the path if only its registration was left.
        Self::remove(path);
        let mut cmd = Command::new("git");
        cmd.args(["worktree", "add", "--force", "--detach", "--quiet"])
            .arg(path)
            .arg(rev)
            .current_dir(root());
        run_status(&mut cmd).with_context(|| format!("checking out {rev}"))?;
        Ok(Self { path: path.to_path_buf() })
    }

    /// Removes this one worktree only (not `git worktree prune`: other
    /// worktrees' records are not ours to touch).
    fn remove(path: &Path) {
        let _ = Command::new("git")
            .args(["worktree", "remove", "--force"])
            .arg(path)
            .current_dir(root())
            .stderr(std::process::Stdio::null())
            .status();
    }
}

impl Drop for Worktree {
    fn drop(&mut self) {
        Self::remove(&self.path);
    }
}
