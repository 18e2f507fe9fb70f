//! The data plane's clock as the controller reads it. The XDP program counts
//! time in epoch ticks derived from the kernel's jiffies (`abi::EpochClock`);
//! the controller needs the same "now" to tell expired connection entries,
//! so it asks the program itself: `lb_clock`, run once through
//! `BPF_PROG_TEST_RUN`, writes the epoch it computes into a scratch frame.
use std::os::fd::{AsRawFd as _, BorrowedFd};

use super::DataplaneError;

const XDP_PASS: u32 = 2;

/// The length of a jiffy, from the resolution of the coarse monotonic clock,
/// which the kernel reports as one tick (`TICK_NSEC`).
pub fn jiffy_ns() -> Result<u64, DataplaneError> {
    let mut res = libc::timespec { tv_sec: 0, tv_nsec: 0 };
    // SAFETY: `res` is a valid, writable timespec.
    let rc = unsafe { libc::clock_getres(libc::CLOCK_MONOTONIC_COARSE, &raw mut res) };
    let ns = u64::try_from(res.tv_sec).unwrap_or(0) * 1_000_000_000
        + u64::try_from(res.tv_nsec).unwrap_or(0);
    // A jiffy lasts 1 to 10 ms (HZ 100 to 1000); anything far off would
    // make `epoch_mult` 0 (a clock standing still) or meaningless.
    if rc != 0 || !(100_000..=100_000_000).contains(&ns) {
        return Err(DataplaneError::kernel(
            "the kernel's tick length (clock_getres CLOCK_MONOTONIC_COARSE)",
            format!("rc {rc}, {ns} ns ({})", std::io::Error::last_os_error()),
        ));
    }
    Ok(ns)
}

/// `union bpf_attr`'s `test` member (BPF_PROG_TEST_RUN).
#[repr(C)]
#[derive(Default)]
struct TestRunAttr {
    prog_fd: u32,
    retval: u32,
    data_size_in: u32,
    data_size_out: u32,
    data_in: u64,
    data_out: u64,
    repeat: u32,
    duration: u32,
    ctx_size_in: u32,
    ctx_size_out: u32,
    ctx_in: u64,
    ctx_out: u64,
    flags: u32,
    cpu: u32,
    batch_size: u32,
    _pad: u32,
}

const BPF_PROG_TEST_RUN: libc::c_long = 10;

/// The epoch `lb_xdp` would stamp a packet with now, from `lb_clock` (by
/// its descriptor, so that any thread holding a copy can ask).
pub fn read(lb_clock: BorrowedFd<'_>) -> Result<u64, DataplaneError> {
    let scratch = [0_u8; 64];
    let mut out = [0_u8; 64];
    let mut attr = TestRunAttr {
        prog_fd: lb_clock.as_raw_fd().cast_unsigned(),
        data_size_in: scratch.len() as u32,
        data_size_out: out.len() as u32,
        data_in: scratch.as_ptr() as u64,
        data_out: out.as_mut_ptr() as u64,
        repeat: 1,
        ..TestRunAttr::default()
    };
    // SAFETY: a bpf(2) call with a correctly sized attribute whose buffers
    // outlive the call and are writable where the kernel writes.
    let rc = unsafe {
        libc::syscall(libc::SYS_bpf, BPF_PROG_TEST_RUN, &raw mut attr, size_of::<TestRunAttr>())
    };
    let failed =
        |why: String| DataplaneError::kernel("reading the data plane's clock (lb_clock)", why);
    if rc < 0 {
        return Err(failed(std::io::Error::last_os_error().to_string()));
    }
    if attr.retval != XDP_PASS {
        return Err(failed(format!("the program answered {}", attr.retval)));
    }
    let mut epoch = [0_u8; 8];
    epoch.copy_from_slice(&out[..8]);
    Ok(u64::from_ne_bytes(epoch))
}
