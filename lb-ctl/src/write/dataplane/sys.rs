//! Every raw bpf(2) call of the workspace, for what aya 0.14 cannot do,
//! on the kernel's own layouts (`aya_obj::generated`); its only `unsafe`
//! around bpf(2) is here. Everything else (loading the object, maps,
//! links, pins, `BPF_PROG_TEST_RUN` through `aya::programs::TestRun`) goes
//! through aya, and each call here says what aya lacks. The controller
//! needs four of them (clearing a devmap slot, the interface a pinned
//! link is on, running `lb_clock` on a copy of its descriptor, reading a
//! hash map a batch at a time); the test
//! bed and the benchmarks, which run hand-written programs, the others.
//! Beside them, the handles aya's `TestRun` needs (`xdp_handle`, which
//! needs CAP_SYS_ADMIN: tests only), which a program loaded here also
//! becomes. The module is
//! lb-ctl's because the test bed and the benchmarks depend on lb-ctl
//! already.
use std::{
    borrow::Cow,
    ffi::{CString, c_char},
    io,
    mem::MaybeUninit,
    os::{
        fd::{AsFd as _, AsRawFd as _, BorrowedFd, FromRawFd as _, OwnedFd},
        unix::ffi::OsStrExt as _,
    },
    path::Path,
};

use aya::{
    Pod,
    maps::{DevMap, HashMap, IterableMap as _, MapData, MapType},
    programs::{ProgramError, ProgramInfo, Xdp, loaded_programs},
};
use aya_obj::{
    generated::{
        BPF_OBJ_NAME_LEN, bpf_attr, bpf_cmd, bpf_link_info, bpf_link_type, bpf_prog_info,
        bpf_prog_type,
    },
    programs::XdpAttachType,
};

/// A `union bpf_attr` of zeros: what every command expects in the members
/// and fields it does not use.
fn zeroed_attr() -> bpf_attr {
    // SAFETY: `bpf_attr` is a union of structs of integers (and arrays of
    // them), for which all zeros is a valid value.
    unsafe { std::mem::zeroed() }
}

/// bpf(2): `cmd` with `attr`; the call's result (a new descriptor, for the
/// commands that make one).
///
/// # Safety
/// Every address in the member of `attr` that `cmd` reads must point at
/// memory that is live for the call, as long as the sizes beside it say,
/// and writable where `cmd` writes.
unsafe fn bpf(cmd: bpf_cmd, attr: &mut bpf_attr) -> io::Result<i32> {
    // SAFETY: `attr` is a whole `union bpf_attr` of the size passed; the
    // memory its addresses point at is the caller's promise.
    let rc = unsafe {
        libc::syscall(libc::SYS_bpf, cmd as libc::c_long, &raw mut *attr, size_of::<bpf_attr>())
    };
    if rc < 0 { Err(io::Error::last_os_error()) } else { Ok(rc as i32) }
}

/// A descriptor the kernel just made.
fn owned(fd: i32) -> OwnedFd {
    // SAFETY: bpf(2) returned `fd` as a new descriptor, which nothing else owns.
    unsafe { OwnedFd::from_raw_fd(fd) }
}

/// Empties `slot` of a devmap: aya 0.14's `DevMap` can set a slot but not
/// delete one (`dev_map_delete_elem`).
pub fn devmap_delete(map: &DevMap<MapData>, slot: u32) -> io::Result<()> {
    let mut attr = zeroed_attr();
    attr.__bindgen_anon_2.map_fd = map.map().fd().as_fd().as_raw_fd().cast_unsigned();
    attr.__bindgen_anon_2.key = (&raw const slot) as u64;
    // SAFETY: the key is a u32, a devmap's key size, and outlives the call.
    unsafe { bpf(bpf_cmd::BPF_MAP_DELETE_ELEM, &mut attr) }.map(drop)
}

/// Every entry of the hash map `map`, read up to `batch` entries a call
/// (BPF_MAP_LOOKUP_BATCH, kernel 5.6): aya 0.14 walks a map an entry at a
/// time, a call for the next key and another for its value, which over
/// tens of thousands of entries each second is most of a walk's cost.
/// Entries written or removed meanwhile may or may not be seen, as with
/// any walk; a bucket larger than `batch` (never, with the default)
/// doubles it.
pub fn hash_entries<K: Pod, V: Pod>(
    map: &HashMap<MapData, K, V>,
    batch: usize,
) -> io::Result<Vec<(K, V)>> {
    let fd = map.map().fd().as_fd().as_raw_fd().cast_unsigned();
    let mut batch = batch.max(1);
    let mut keys: Vec<MaybeUninit<K>> = Vec::new();
    let mut values: Vec<MaybeUninit<V>> = Vec::new();
    let mut entries = Vec::new();
    // The kernel's position in the map between calls (a bucket index for
    // a hash map: 4 bytes; room for 8).
    let (mut from, mut next) = (0_u64, 0_u64);
    let mut first = true;
    loop {
        keys.resize_with(batch, MaybeUninit::uninit);
        values.resize_with(batch, MaybeUninit::uninit);
        let mut attr = zeroed_attr();
        attr.batch.map_fd = fd;
        attr.batch.in_batch = if first { 0 } else { (&raw const from) as u64 };
        attr.batch.out_batch = (&raw mut next) as u64;
        attr.batch.keys = keys.as_mut_ptr() as u64;
        attr.batch.values = values.as_mut_ptr() as u64;
        attr.batch.count = u32::try_from(batch).unwrap_or(u32::MAX);
        // SAFETY: the buffers hold `count` keys and values of the map's
        // sizes (aya checked `K` and `V` against them when it typed the
        // map), the positions 8 bytes each; all outlive the call.
        let result = unsafe { bpf(bpf_cmd::BPF_MAP_LOOKUP_BATCH, &mut attr) };
        // The kernel wrote how many entries it copied when it succeeded or
        // returned ENOENT (the map's end) with the last of them. Other
        // errors may come before it writes anything (the count then still
        // says `batch`): nothing was copied.
        let wrote = match &result {
            Ok(_) => true,
            Err(e) => e.raw_os_error() == Some(libc::ENOENT),
        };
        // SAFETY: `attr.batch` is the member the call was made with.
        let count = unsafe { attr.batch.count } as usize;
        let copied = if wrote { count } else { 0 };
        for (key, value) in keys.iter().zip(&values).take(copied.min(batch)) {
            // SAFETY: the kernel wrote the first `copied` of each, and any
            // bytes are a valid `Pod`.
            entries.push(unsafe { (key.assume_init(), value.assume_init()) });
        }
        match result {
            // Nothing copied without an error is the end too (no kernel
            // does that, but a loop on it would never end).
            Ok(_) if copied == 0 => return Ok(entries),
            Ok(_) => {
                from = next;
                first = false;
            }
            Err(e) if e.raw_os_error() == Some(libc::ENOENT) => return Ok(entries),
            Err(e) if e.raw_os_error() == Some(libc::ENOSPC) && copied == 0 => batch *= 2,
            Err(e) => return Err(e),
        }
    }
}

/// Runs the program `prog` once over `data_in` (BPF_PROG_TEST_RUN), its
/// output frame into `data_out`; returns the program's verdict. aya's
/// `TestRun` runs only an aya program handle, and aya 0.14 makes a second
/// handle of a loaded program only through its id (BPF_PROG_GET_FD_BY_ID),
/// which needs CAP_SYS_ADMIN: the controller, which runs without it, runs
/// `lb_clock` from other threads on a copy of its descriptor instead.
pub fn test_run(prog: BorrowedFd<'_>, data_in: &[u8], data_out: &mut [u8]) -> io::Result<u32> {
    let mut attr = zeroed_attr();
    attr.test.prog_fd = prog.as_raw_fd().cast_unsigned();
    attr.test.data_in = data_in.as_ptr() as u64;
    attr.test.data_size_in = data_in.len() as u32;
    attr.test.data_out = data_out.as_mut_ptr() as u64;
    attr.test.data_size_out = data_out.len() as u32;
    // SAFETY: the input frame is readable and the output frame writable
    // for the sizes given, and both outlive the call.
    unsafe { bpf(bpf_cmd::BPF_PROG_TEST_RUN, &mut attr) }?;
    // SAFETY: the kernel filled the `test` member the call was made with.
    Ok(unsafe { attr.test.retval })
}

/// What a pinned link says of its attachment.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct LinkTarget {
    /// `bpf_link_type`.
    pub link_type: u32,
    /// The interface of an XDP or tcx link (0 once the interface is gone);
    /// `None` for the other types.
    pub ifindex: Option<u32>,
}

/// The type and interface of the link pinned at `pin`: aya 0.14's
/// `LinkInfo` has the type but not the interface (the `xdp` and `tcx`
/// members of `bpf_link_info`), and its `PinnedLink` does not lend its
/// descriptor for asking the kernel directly.
pub fn pinned_link(pin: &Path) -> io::Result<LinkTarget> {
    let path = CString::new(pin.as_os_str().as_bytes())?;
    let mut attr = zeroed_attr();
    attr.__bindgen_anon_4.pathname = path.as_ptr() as u64;
    // SAFETY: the path is NUL-terminated and outlives the call.
    let link = owned(unsafe { bpf(bpf_cmd::BPF_OBJ_GET, &mut attr) }?);
    // SAFETY: `link` is a link, `bpf_link_info` a link's info: integers and
    // unions of them, with no address the kernel writes through.
    let info: bpf_link_info = unsafe { info_by_fd(link.as_fd()) }?;
    let xdp = bpf_link_type::BPF_LINK_TYPE_XDP as u32;
    let tcx = bpf_link_type::BPF_LINK_TYPE_TCX as u32;
    let ifindex = if [xdp, tcx].contains(&info.type_) {
        // SAFETY: the kernel filled the member of the link's type, and the
        // `xdp` and `tcx` members both start with the interface.
        Some(unsafe { info.__bindgen_anon_1.xdp.ifindex })
    } else {
        None
    };
    Ok(LinkTarget { link_type: info.type_, ifindex })
}

/// Loads an XDP program from raw instructions (GPL), as an aya program
/// (which `aya::programs::TestRun` runs and `Xdp::attach_to_if_index`
/// attaches): aya 0.14 loads programs only from an object file. Fails with
/// the verifier's log if the program is refused.
pub fn load_xdp(name: &str, insns: &[u64]) -> io::Result<Xdp> {
    let mut log = vec![0_u8; 64 * 1024];
    let license = c"GPL";
    let mut prog_name = [0; BPF_OBJ_NAME_LEN as usize];
    let keep = name.len().min(prog_name.len() - 1);
    for (to, from) in prog_name.iter_mut().zip(&name.as_bytes()[..keep]) {
        *to = c_char::from_ne_bytes([*from]);
    }
    let mut attr = zeroed_attr();
    attr.__bindgen_anon_3.prog_type = bpf_prog_type::BPF_PROG_TYPE_XDP as u32;
    attr.__bindgen_anon_3.insn_cnt = insns.len() as u32;
    attr.__bindgen_anon_3.insns = insns.as_ptr() as u64;
    attr.__bindgen_anon_3.license = license.as_ptr() as u64;
    attr.__bindgen_anon_3.log_level = 1;
    attr.__bindgen_anon_3.log_size = log.len() as u32;
    attr.__bindgen_anon_3.log_buf = log.as_mut_ptr() as u64;
    attr.__bindgen_anon_3.prog_name = prog_name;
    // SAFETY: the instructions (8 bytes each, `struct bpf_insn`), the
    // license (NUL-terminated) and the log (writable for `log_size` bytes)
    // outlive the call.
    let fd = unsafe { bpf(bpf_cmd::BPF_PROG_LOAD, &mut attr) }.map_err(|e| {
        let log = String::from_utf8_lossy(&log);
        io::Error::new(e.kind(), format!("{e}\n{}", log.trim_end_matches('\0')))
    })?;
    // Holds the program loaded until aya's handle has a descriptor of its own.
    let loaded = owned(fd);
    let id = prog_id(loaded.as_fd())?;
    // aya makes a program of a loaded one only from its `ProgramInfo`,
    // which it reads from a pin or gives out in its walk of them all.
    let info = loaded_programs()
        .filter_map(Result::ok)
        .find(|p| p.id() == id)
        .ok_or_else(|| io::Error::other(format!("program {name} (id {id}) is not loaded")))?;
    xdp_of(info, name.to_owned()).map_err(io::Error::other)
}

/// The kernel's id of the program `prog`: aya 0.14 reads a `ProgramInfo`
/// only from its own programs, a pin or an id.
fn prog_id(prog: BorrowedFd<'_>) -> io::Result<u32> {
    // SAFETY: `prog` is a program, `bpf_prog_info` a program's info:
    // integers (and arrays of them); its address fields stay 0, so the
    // kernel writes through none.
    let info: bpf_prog_info = unsafe { info_by_fd(prog) }?;
    Ok(info.id)
}

/// What the kernel says of the object `fd` (BPF_OBJ_GET_INFO_BY_FD).
///
/// # Safety
/// `T` must be the kernel's info struct of `fd`'s kind, for which all
/// zeros is a valid value and whose zero address fields ask for nothing
/// more.
unsafe fn info_by_fd<T>(fd: BorrowedFd<'_>) -> io::Result<T> {
    // SAFETY: all zeros is a valid `T` (the caller's promise).
    let mut info: T = unsafe { std::mem::zeroed() };
    let mut attr = zeroed_attr();
    attr.info.bpf_fd = fd.as_raw_fd().cast_unsigned();
    attr.info.info_len = size_of::<T>() as u32;
    attr.info.info = (&raw mut info) as u64;
    // SAFETY: `info` is writable for `info_len` bytes and outlives the
    // call; the kernel writes nothing else (the caller's promise).
    unsafe { bpf(bpf_cmd::BPF_OBJ_GET_INFO_BY_FD, &mut attr) }?;
    Ok(info)
}

/// A handle of its own on the loaded XDP program `program` (a descriptor
/// of its own, no links): for running it (`aya::programs::TestRun`) apart
/// from the `Ebpf` that loaded it, on another thread or after lending the
/// `Ebpf` out.
pub fn xdp_handle(program: &Xdp) -> Result<Xdp, ProgramError> {
    let info = program.info()?;
    let name = info.name_as_str().unwrap_or_default().to_owned();
    xdp_of(info, name)
}

/// The loaded program `info` describes, as an aya XDP program.
fn xdp_of(info: ProgramInfo, name: String) -> Result<Xdp, ProgramError> {
    Xdp::from_program_info(info, Cow::Owned(name), XdpAttachType::Interface)
}

/// Writes `keys` and `values` (packed, as many of each) into `map` in one
/// call (BPF_MAP_UPDATE_BATCH, kernel 5.6): aya 0.14 has no batch update,
/// and a million single updates take a second. Returns how many entries
/// the kernel wrote.
pub fn update_batch(map: &MapData, keys: &[u8], values: &[u8]) -> io::Result<u32> {
    let info = map.info().map_err(io::Error::other)?;
    // A per-CPU map's entry holds a value per possible CPU, each rounded up
    // to 8 bytes: the lengths below would not bound what the kernel reads.
    let per_cpu = matches!(
        info.map_type(),
        Ok(MapType::PerCpuArray
            | MapType::PerCpuHash
            | MapType::LruPerCpuHash
            | MapType::PerCpuCgroupStorage)
    );
    if per_cpu {
        return Err(io::Error::new(io::ErrorKind::InvalidInput, "a per-CPU map"));
    }
    let (key_size, value_size) = (info.key_size() as usize, info.value_size() as usize);
    let count = keys.len() / key_size.max(1);
    if keys.len() != count * key_size || values.len() != count * value_size {
        return Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            format!(
                "{} key bytes and {} value bytes are not whole entries of {key_size} and {value_size}, as many of each",
                keys.len(),
                values.len()
            ),
        ));
    }
    let mut attr = zeroed_attr();
    attr.batch.map_fd = map.fd().as_fd().as_raw_fd().cast_unsigned();
    attr.batch.keys = keys.as_ptr() as u64;
    attr.batch.values = values.as_ptr() as u64;
    attr.batch.count = u32::try_from(count).map_err(io::Error::other)?;
    // SAFETY: `keys` and `values` hold `count` entries of the map's key and
    // value sizes (checked above) and outlive the call.
    unsafe { bpf(bpf_cmd::BPF_MAP_UPDATE_BATCH, &mut attr) }?;
    // SAFETY: the kernel writes back the count of the `batch` member it read.
    Ok(unsafe { attr.batch.count })
}
