//! The test bed shared by the privileged tests (`lb-tests`), the lab
//! (`lb-lab`) and the benchmarks (`lb-bench`): network namespace plumbing,
//! the demo topology and its backend servers, the real controller run in
//! it, BIRD, packet builders, test certificates (`pki`), and the real XDP program under BPF_PROG_TEST_RUN
//! in a namespace with a real FIB.
pub mod bird;
pub mod counters;
pub mod fixture;
pub mod ha;
pub mod harness;
pub mod netns;
pub mod packet;
pub mod packet6;
pub mod pki;
pub mod rng;
pub mod server;
pub mod testrun;
pub mod topology;
pub mod traffic;

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
