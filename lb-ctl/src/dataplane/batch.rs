//! Reading a whole hash map with `BPF_MAP_LOOKUP_BATCH`: thousands of
//! entries per system call, where aya 0.14's iterator takes two per entry
//! (next key, then lookup). The connection table is read every second; with
//! tens of thousands of entries the per-entry walk cost a busy load balancer
//! about 40% of its controller's share of the CPU (bench e2e).
use std::{
    io,
    os::fd::{AsFd as _, AsRawFd as _},
};

use aya::maps::MapData;

const BPF_MAP_LOOKUP_BATCH: libc::c_long = 24;
/// Entries asked for per call: also the most one hash bucket may hold, or
/// the kernel answers ENOSPC (then the buffer is grown).
const BATCH: usize = 4096;

/// `union bpf_attr`'s `batch` member.
#[repr(C)]
struct BatchAttr {
    in_batch: u64,
    out_batch: u64,
    keys: u64,
    values: u64,
    count: u32,
    map_fd: u32,
    elem_flags: u64,
    flags: u64,
}

/// Calls `each` with every entry of the hash map `map`, in bucket order,
/// reading up to `BATCH` entries per call into two buffers reused
/// throughout. Entries added or removed meanwhile may or may not be seen;
/// none is seen twice. Fails, reading nothing, unless the map's key and
/// value sizes are those of `K` and `V` (the kernel writes that many bytes
/// per entry).
pub fn for_each<K: aya::Pod, V: aya::Pod>(
    map: &MapData,
    mut each: impl FnMut(K, V),
) -> io::Result<()> {
    let info = map.info().map_err(io::Error::other)?;
    if info.key_size() as usize != size_of::<K>() || info.value_size() as usize != size_of::<V>() {
        return Err(io::Error::other(format!(
            "the map has {}-byte keys and {}-byte values, not {} and {}",
            info.key_size(),
            info.value_size(),
            size_of::<K>(),
            size_of::<V>()
        )));
    }
    let fd = map.fd().as_fd();
    let mut size = BATCH;
    let mut keys: Vec<K> = Vec::with_capacity(size);
    let mut values: Vec<V> = Vec::with_capacity(size);
    // The kernel's cursor into the table (a bucket index for hash maps).
    let (mut cursor_in, mut cursor_out) = (0_u64, 0_u64);
    let mut first = true;
    loop {
        keys.clear();
        values.clear();
        let mut attr = BatchAttr {
            in_batch: if first { 0 } else { (&raw const cursor_in) as u64 },
            out_batch: (&raw mut cursor_out) as u64,
            keys: keys.as_mut_ptr() as u64,
            values: values.as_mut_ptr() as u64,
            count: size as u32,
            map_fd: fd.as_raw_fd().cast_unsigned(),
            elem_flags: 0,
            flags: 0,
        };
        // SAFETY: bpf(2) with a correctly sized attribute. The map's entries
        // have the sizes of K and V (checked above), so the kernel writes at
        // most `count` of each into buffers that hold that many; the cursor
        // goes to `cursor_out`; all outlive the call.
        let rc = unsafe {
            libc::syscall(
                libc::SYS_bpf,
                BPF_MAP_LOOKUP_BATCH,
                &raw mut attr,
                size_of::<BatchAttr>(),
            )
        };
        let error = (rc < 0).then(io::Error::last_os_error);
        let filled = (attr.count as usize).min(size);
        match error.as_ref().and_then(io::Error::raw_os_error) {
            // A bucket holds more than the buffer: ask again with room.
            Some(libc::ENOSPC) if filled == 0 => {
                size *= 4;
                keys.reserve(size);
                values.reserve(size);
                continue;
            }
            None | Some(libc::ENOENT) => {}
            Some(_) => return Err(error.unwrap_or_else(io::Error::last_os_error)),
        }
        // SAFETY: the kernel filled the first `filled` (<= capacity) of each
        // with plain data (`Pod`).
        unsafe {
            keys.set_len(filled);
            values.set_len(filled);
        }
        for (key, value) in keys.drain(..).zip(values.drain(..)) {
            each(key, value);
        }
        if error.is_some() {
            // ENOENT: the walk reached the end.
            return Ok(());
        }
        first = false;
        cursor_in = cursor_out;
    }
}
