//! `lb-ctl`: the controller of the XDP load balancer, and the operator's CLI.
//!
//! Its modules follow the path of a change, from what is asked to what the
//! kernel holds:
//!
//! - `desired`: what is desired (the config file, the API's changes on top
//!   of it), checked into plain data;
//! - `plan`: how it is planned, in pure code (stable ids, the image the
//!   kernel maps should hold, the ordered writes between two images);
//! - `write`: how it is written (the reconciler, the data plane's maps and
//!   programs, the host's interface settings);
//! - `daemon`: `lb-ctl run`, which keeps the data plane as desired (its
//!   loop, the health checks, the admin API);
//! - `operator`: the operator's side (the CLI, a client of the admin API);
//! - `command`: the command line of them all.
pub mod command;
pub mod daemon;
pub mod desired;
pub mod operator;
pub mod plan;
pub mod write;

/// The compiled XDP object (built by build.rs from `lb-ebpf`).
pub static EBPF_OBJECT: &[u8] = aya::include_bytes_aligned!(concat!(env!("OUT_DIR"), "/lb-ebpf"));
