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

/// The name of the interface with index `index` in the current network
/// namespace, if there is one.
pub fn name_of(index: u32) -> Option<String> {
    let mut buf = [0 as libc::c_char; libc::IF_NAMESIZE];
    // SAFETY: `buf` holds IF_NAMESIZE bytes, what if_indextoname writes at most.
    let named = unsafe { libc::if_indextoname(index, buf.as_mut_ptr()) };
    if named.is_null() {
        return None;
    }
    // SAFETY: on success the buffer holds a NUL-terminated name.
    let name = unsafe { std::ffi::CStr::from_ptr(buf.as_ptr()) };
    Some(name.to_string_lossy().into_owned())
}

/// Whether IPv4 forwarding is on for `name` (in the current network
/// namespace). Off, `bpf_fib_lookup` refuses to route and every packet for a
/// service goes to the kernel instead (counted as `pass_fib_failed`).
pub fn ipv4_forwarding(name: &str) -> Option<bool> {
    let path = format!("/proc/sys/net/ipv4/conf/{name}/forwarding");
    std::fs::read_to_string(path).ok().map(|v| v.trim() == "1")
}
