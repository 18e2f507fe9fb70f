//! `cargo xtask setup | lab | run | test | bench`: every command first makes
//! sure the machine has what it needs (see `setup`).
mod bench;
mod bench_tables;
mod lab;
mod package;
mod setup;
mod util;

use anyhow::{Result, bail};

const USAGE: &str = "usage: cargo xtask <command>
  setup              install what is missing (rust-src, bpf-linker, Debian packages, bpffs)
                     (`test` also installs chromium, for the stats page test)
  lab [--keep]       build, create the demo topology, start lb-ctl, show traffic being spread
  lab down           remove the lab
  lab ha             two load balancers with keepalived: the VIP moves under a live connection
  lab bgp [--rounds N]  two load balancers announcing the VIP by BGP (BIRD): each event that
                     withdraws one, timed to the router's route change (median of N)
  run -- ARGS        build, then run `lb-ctl run ARGS` as root
  package [--debug]  the Debian package lb (target/debian/lb_VERSION_ARCH.deb), from the release
                     build (--debug: from the debug build, stripped, as `test` builds it)
  test               host unit tests, the package, then privileged tests (root)
  bench              every benchmark: data plane, health checks, admin API, Maglev; tables + JSON
                     (every `bench` and `bench KIND` ends with `bench report`)
  bench dataplane    cost per packet (also with 1M flows, 256 x 64 services), Mpps through veth (root)
  bench ab --base REV [--runs N] [PARTS]
                     the per-packet bench over REV's XDP object and the working tree's, alternated
                     N times (default 6); medians and differences per row (root)
  bench control      Maglev table build time and slots moved (no root)
  bench e2e          end to end: lb (NAT, full NAT) vs one backend directly, HAProxy, nftables DNAT (wrk, nginx;
                     installs haproxy nginx-light wrk)
  bench report       the tables of docs/benchmarks.md, rendered again from target/bench/*.json";

fn main() -> std::process::ExitCode {
    match dispatch(&std::env::args().skip(1).collect::<Vec<_>>()) {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("xtask: {e:#}");
            std::process::ExitCode::FAILURE
        }
    }
}

fn dispatch(args: &[String]) -> Result<()> {
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    match args.as_slice() {
        ["setup"] => setup::ensure(),
        ["lab", "down"] => lab::down(),
        ["lab", "ha"] => {
            setup::ensure()?;
            lab::ha()
        }
        ["lab", "bgp", rest @ ..] => {
            let rounds = match rest {
                [] => None,
                ["--rounds", n] => Some(*n),
                _ => bail!("{USAGE}"),
            };
            setup::ensure()?;
            lab::bgp(rounds)
        }
        ["lab", rest @ ..] => {
            let keep = match rest {
                [] => false,
                ["--keep"] => true,
                _ => bail!("{USAGE}"),
            };
            setup::ensure()?;
            lab::up(keep)
        }
        ["run", rest @ ..] => {
            setup::ensure()?;
            let rest = rest.strip_prefix(&["--"]).unwrap_or(rest);
            util::build()?;
            util::require_root("lb-ctl run")?;
            let mut cmd = std::process::Command::new(util::bin("lb-ctl"));
            cmd.arg("run").args(rest);
            util::run_status(&mut cmd)
        }
        ["package", rest @ ..] => {
            let profile = match rest {
                [] => package::Profile::Release,
                ["--debug"] => package::Profile::Debug,
                _ => bail!("{USAGE}"),
            };
            setup::ensure()?;
            package::build(profile).map(drop)
        }
        ["test"] => {
            setup::ensure_for_tests()?;
            test()
        }
        ["bench"] => {
            setup::ensure_for_bench()?;
            bench::run()?;
            bench::report()
        }
        ["bench", "e2e"] => {
            setup::ensure_for_bench()?;
            bench::e2e()?;
            bench::report()
        }
        ["bench", "dataplane"] => {
            setup::ensure()?;
            bench::dataplane()?;
            bench::report()
        }
        ["bench", "ab", rest @ ..] => {
            setup::ensure()?;
            bench::ab(rest)
        }
        ["bench", "control"] => {
            setup::ensure()?;
            bench::control()?;
            bench::report()
        }
        ["bench", "report"] => {
            setup::ensure()?;
            bench::report()
        }
        _ => bail!("{USAGE}"),
    }
}

/// The packages whose tests need no privileges: the controller's and its
/// ABI's, the unit tests of the test bed, the lab and the benchmarks, the
/// package's files (lb-pkg), and xtask's own.
const HOST_TESTED: [&str; 7] =
    ["lb-common", "lb-ctl", "lb-testbed", "lb-lab", "lb-bench", "lb-pkg", "xtask"];

/// Host unit tests first (no privileges), then the privileged tests one at a
/// time (they share kernel state: namespaces, XDP attachments, pins). Every
/// test binary runs even when an earlier one failed (`--no-fail-fast`), so
/// one failure does not hide the others; the command still fails if any did.
fn test() -> Result<()> {
    util::build()?;
    util::step("host unit tests");
    let mut unit_args = vec!["test", "--no-fail-fast"];
    for package in HOST_TESTED {
        unit_args.extend(["-p", package]);
    }
    let unit = util::cargo(&unit_args);
    util::require_root("the privileged tests")?;
    let upgrade_object = util::build_upgrade_object()?;
    // The package's test (tests/tests/package.rs) installs this one.
    let deb = package::build(package::Profile::Debug)?;
    util::step(
        "privileged tests: packet fixtures (BPF_PROG_TEST_RUN) and end to end in namespaces",
    );
    let mut cmd =
        util::cargo_cmd(&["test", "--no-fail-fast", "-p", "lb-tests", "--", "--test-threads=1"]);
    cmd.env("LB_CTL", util::bin("lb-ctl"))
        .env("LB_UPGRADE_OBJECT", upgrade_object)
        .env("LB_DEB", deb);
    let privileged = util::run_status(&mut cmd);
    match (unit, privileged) {
        (Ok(()), Ok(())) => Ok(()),
        (unit, privileged) => {
            let failed: Vec<&str> = [("host unit tests", unit), ("privileged tests", privileged)]
                .into_iter()
                .filter_map(|(name, result)| result.is_err().then_some(name))
                .collect();
            bail!("failed: {} (see above)", failed.join(", "))
        }
    }
}
