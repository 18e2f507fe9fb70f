//! `cargo xtask bench e2e`: the load balancer against one backend directly
//! (the ceiling), HAProxy and nftables DNAT, end to end in network
//! namespaces (see `lb_bench::e2e`). Runs the release `lb-ctl` given
//! in `$LB_CTL`; needs root, wrk, nginx and haproxy
//! (`cargo xtask bench e2e` installs them).
fn main() {
    lb_bench::e2e::run();
}
