//! The open-file limit. Every health probe holds a socket for up to its
//! timeout, so a controller checking thousands of backends needs thousands
//! of descriptors at once; the usual soft limit (1024) is far below the
//! hard one, which an unprivileged process may raise itself to.
use std::io;

/// The open-file limits, before and after `raise_open_files`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct OpenFiles {
    /// The soft limit found at start.
    pub was: u64,
    /// The soft limit now.
    pub soft: u64,
    pub hard: u64,
}

/// Raises the soft open-file limit to the hard one (with no hard limit, to
/// the kernel's per-process ceiling, `fs.nr_open`).
pub fn raise_open_files() -> io::Result<OpenFiles> {
    let (was, hard) = get()?;
    let target = if hard == libc::RLIM_INFINITY { nr_open().unwrap_or(was) } else { hard };
    if target > was {
        set(target, hard)?;
    }
    let (soft, hard) = get()?;
    Ok(OpenFiles { was, soft, hard })
}

fn get() -> io::Result<(u64, u64)> {
    let mut limit = libc::rlimit { rlim_cur: 0, rlim_max: 0 };
    // SAFETY: getrlimit fills the struct it is given.
    if unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &raw mut limit) } != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok((limit.rlim_cur, limit.rlim_max))
}

fn set(soft: u64, hard: u64) -> io::Result<()> {
    let limit = libc::rlimit { rlim_cur: soft, rlim_max: hard };
    // SAFETY: setrlimit reads the struct it is given.
    if unsafe { libc::setrlimit(libc::RLIMIT_NOFILE, &raw const limit) } != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

fn nr_open() -> Option<u64> {
    std::fs::read_to_string("/proc/sys/fs/nr_open").ok()?.trim().parse().ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    /// From a low soft limit (this test process's own: raising it back
    /// harms no other test), the soft limit ends at the hard one.
    #[test]
    fn the_soft_limit_is_raised_to_the_hard_one() {
        let (_, hard) = get().unwrap();
        let low = hard.min(512);
        set(low, hard).unwrap();
        let limits = raise_open_files().unwrap();
        assert_eq!(limits.was, low);
        let want = if hard == libc::RLIM_INFINITY { nr_open().unwrap() } else { hard };
        assert_eq!((limits.soft, limits.hard), (want, hard));
        assert_eq!(get().unwrap().0, want);
    }
}
