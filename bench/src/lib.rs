//! The benchmarks' code: the data plane's cost per packet and forwarding
//! rate (`dataplane`, run by `lb-bench`) and the load balancer end to end
//! against HAProxy and nftables (`e2e`, run by `lb-bench-e2e`). The other
//! benchmark binaries (`lb-bench-api`, `lb-bench-control`,
//! `lb-bench-health`) are whole in their own files; `report` renders every
//! report as the tables of `docs/benchmarks.md` (`lb-bench-report`);
//! `machine_load` reads the CPU time and load averages both benchmarks report.
pub mod dataplane;
pub mod e2e;
pub mod machine_load;
pub mod report;

/// Writes a benchmark's JSON report to `$env_var`, or `default_path` when it
/// is unset, stamped with the run's date, commit and machine
/// (`report::stamp`), and says where; a failed write is reported, not fatal
/// (the figures were already printed).
pub fn write_report(env_var: &str, default_path: &str, json: &str) {
    let json = &report::stamp(json);
    let out = std::env::var(env_var).unwrap_or_else(|_| default_path.into());
    if let Some(dir) = std::path::Path::new(&out).parent() {
        let _ = std::fs::create_dir_all(dir);
    }
    match std::fs::write(&out, json) {
        Ok(()) => println!("JSON: {out}"),
        Err(e) => eprintln!("cannot write {out}: {e}"),
    }
}
