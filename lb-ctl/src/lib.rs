//! `lb-ctl`: the controller of the XDP load balancer, and the operator's CLI.
pub mod daemon;
pub mod desired;
pub mod operator;
pub mod plan;
pub mod write;

/// The compiled XDP object (built by build.rs from `lb-ebpf`).
pub static EBPF_OBJECT: &[u8] = aya::include_bytes_aligned!(concat!(env!("OUT_DIR"), "/lb-ebpf"));
