//! The data plane's clock as the controller reads it. The XDP program counts
//! time in epoch ticks derived from the kernel's jiffies (`abi::EpochClock`);
//! the controller needs the same "now" to tell expired connection entries,
//! so it asks the program itself: `lb_clock`, run once through
//! `BPF_PROG_TEST_RUN`, writes the epoch it computes into a scratch frame.
use std::os::fd::AsFd as _;

use aya::programs::ProgramFd;

use super::{DataplaneError, sys};

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

/// The epoch `lb_xdp` would stamp a packet with now, from `lb_clock` (a
/// descriptor of its own, so that any thread holding one can ask).
pub fn read(lb_clock: &ProgramFd) -> Result<u64, DataplaneError> {
    let scratch = [0_u8; 64];
    let mut out = [0_u8; 64];
    let failed =
        |why: String| DataplaneError::kernel("reading the data plane's clock (lb_clock)", why);
    let verdict =
        sys::test_run(lb_clock.as_fd(), &scratch, &mut out).map_err(|e| failed(e.to_string()))?;
    if verdict != XDP_PASS {
        return Err(failed(format!("the program answered {verdict}")));
    }
    let mut epoch = [0_u8; 8];
    epoch.copy_from_slice(&out[..8]);
    Ok(u64::from_ne_bytes(epoch))
}
