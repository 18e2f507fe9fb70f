//! Shared by the privileged tests, the lab (`lb-lab`) and the benchmarks:
//! network namespace plumbing, the demo topology, backend servers, a packet
//! builder and a BPF_PROG_TEST_RUN wrapper.
pub mod counters;
pub mod fixture;
pub mod harness;
pub mod netns;
pub mod packet;
pub mod server;
pub mod testrun;
pub mod topology;
