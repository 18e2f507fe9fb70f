//! Interface names to indexes, and the interface settings the data plane
//! depends on.
use std::ffi::CString;

/// The ifindex of `name` in the current network namespace, if it exists.
pub fn ifindex(name: &str) -> Option<u32> {
    let name = CString::new(name).ok()?;
    // SAFETY: `name` is a valid NUL-terminated string for the duration of the call.
    let index = unsafe { libc::if_nametoindex(name.as_ptr()) };
    (index != 0).then_some(index)
}

/// Whether IPv4 forwarding is on for `name` (in the current network
/// namespace). Off, `bpf_fib_lookup` refuses to route and every packet for a
/// service goes to the kernel instead (counted as `pass_fib_failed`).
pub fn ipv4_forwarding(name: &str) -> Option<bool> {
    let path = format!("/proc/sys/net/ipv4/conf/{name}/forwarding");
    std::fs::read_to_string(path).ok().map(|v| v.trim() == "1")
}
