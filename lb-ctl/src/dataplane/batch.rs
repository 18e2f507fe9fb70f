//! Reading a whole hash map with `BPF_MAP_LOOKUP_BATCH`: thousands of
//! entries per system call, where aya 0.14's iterator takes two per entry
//! (next key, then lookup). The connection table is read every second; with
//! tens of thousands of entries the per-entry walk cost a busy load balancer
//! about 40% of its controller's share of the CPU (bench e2e).
use std::{
    io,
    os::fd::{AsRawFd as _, BorrowedFd},
};

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

/// Every entry of the hash map `fd` (keys `K`, values `V`, exactly the
/// map's sizes), in bucket order. Entries added or removed meanwhile may or
/// may not be seen; none is seen twice.
pub fn read_all<K: aya::Pod, V: aya::Pod>(fd: BorrowedFd<'_>) -> io::Result<Vec<(K, V)>> {
    let mut entries = Vec::new();
    let mut size = BATCH;
    // The kernel's cursor into the table (a bucket index for hash maps).
    let (mut cursor_in, mut cursor_out) = (0_u64, 0_u64);
    let mut first = true;
    loop {
        let mut keys: Vec<K> = Vec::with_capacity(size);
        let mut values: Vec<V> = Vec::with_capacity(size);
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
        // SAFETY: bpf(2) with a correctly sized attribute; the kernel writes
        // at most `count` keys and values into buffers that hold that many,
        // and a cursor into `cursor_out`; all outlive the call.
        let rc = unsafe {
            libc::syscall(
                libc::SYS_bpf,
                BPF_MAP_LOOKUP_BATCH,
                &raw mut attr,
                size_of::<BatchAttr>(),
            )
        };
        let error = (rc < 0).then(io::Error::last_os_error);
        let filled = attr.count as usize;
        match error.as_ref().and_then(io::Error::raw_os_error) {
            // A bucket holds more than the buffer: ask again with room.
            Some(libc::ENOSPC) if filled == 0 => {
                size *= 4;
                continue;
            }
            None | Some(libc::ENOENT) => {}
            Some(_) => return Err(error.unwrap_or_else(io::Error::last_os_error)),
        }
        // SAFETY: the kernel filled the first `filled` (<= capacity) of each.
        unsafe {
            keys.set_len(filled.min(size));
            values.set_len(filled.min(size));
        }
        entries.extend(keys.into_iter().zip(values));
        if error.is_some() {
            // ENOENT: the walk reached the end.
            return Ok(entries);
        }
        first = false;
        cursor_in = cursor_out;
    }
}
