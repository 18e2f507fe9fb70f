//! Shared by the privileged tests, the lab (`lb-lab`) and the benchmarks:
//! network namespace plumbing, the demo topology, backend servers, a packet
//! builder and a BPF_PROG_TEST_RUN wrapper.
pub mod bench_dataplane;
pub mod bench_e2e;
pub mod bench_report;
pub mod bulk;
pub mod counters;
pub mod expect;
pub mod fixture;
pub mod ha;
pub mod harness;
pub mod netns;
pub mod oracle;
pub mod packet;
pub mod server;
pub mod testrun;
pub mod topology;
pub mod traffic;
pub mod wire;

/// Raises the open-file limit to its hard maximum (thousands of sockets).
pub fn raise_fd_limit() {
    // SAFETY: getrlimit/setrlimit on a valid struct.
    unsafe {
        let mut limit: libc::rlimit = std::mem::zeroed();
        if libc::getrlimit(libc::RLIMIT_NOFILE, &raw mut limit) == 0 {
            limit.rlim_cur = limit.rlim_max;
            libc::setrlimit(libc::RLIMIT_NOFILE, &raw const limit);
        }
    }
}

/// Writes a benchmark's JSON report to `$env_var`, or `default_path` when it
/// is unset, stamped with the run's date, commit and machine
/// (`bench_report::stamp`), and says where; a failed write is reported, not
/// fatal (the figures were already printed).
pub fn write_bench_report(env_var: &str, default_path: &str, json: &str) {
    let json = &bench_report::stamp(json);
    let out = std::env::var(env_var).unwrap_or_else(|_| default_path.into());
    if let Some(dir) = std::path::Path::new(&out).parent() {
        let _ = std::fs::create_dir_all(dir);
    }
    match std::fs::write(&out, json) {
        Ok(()) => println!("JSON: {out}"),
        Err(e) => eprintln!("cannot write {out}: {e}"),
    }
}
