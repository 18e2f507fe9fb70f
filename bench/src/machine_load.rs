//! The machine's load as /proc tells it, for the benchmarks' figures: CPU
//! time from /proc/stat (all CPUs, or one) and /proc/loadavg's load
//! averages.
//!
//! Hand-written rather than the `procfs` crate: each is a line of stable
//! kernel text, and procfs would bring five crates (rustix among them, some
//! 15 s more of a release build on two cores) to read it; its per-CPU list
//! is also indexed by position in /proc/stat, not by CPU number, which
//! differ once a CPU is offline.

/// A line of /proc/stat: the time CPUs spent in each state since boot, in
/// USER_HZ ticks. Guest time is already in `user` and `nice`.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct CpuTicks {
    pub user: u64,
    pub nice: u64,
    pub system: u64,
    pub idle: u64,
    pub iowait: u64,
    pub irq: u64,
    pub softirq: u64,
    pub steal: u64,
}

impl CpuTicks {
    /// All CPUs' time (`cpu: None`, the `cpu` line) or CPU `n`'s (`cpuN`), now.
    pub fn now(cpu: Option<usize>) -> Self {
        let stat = std::fs::read_to_string("/proc/stat").expect("reading /proc/stat");
        let label = cpu.map_or_else(|| "cpu".to_owned(), |n| format!("cpu{n}"));
        Self::parse(&stat, &label)
            .unwrap_or_else(|| panic!("/proc/stat has no {label} line of 8 numbers"))
    }

    /// The line of `stat` (/proc/stat's text) labelled `label`.
    fn parse(stat: &str, label: &str) -> Option<Self> {
        let mut fields = stat
            .lines()
            .map(str::split_whitespace)
            .find_map(|mut fields| (fields.next() == Some(label)).then_some(fields))?;
        let mut next = || -> Option<u64> { fields.next()?.parse().ok() };
        Some(Self {
            user: next()?,
            nice: next()?,
            system: next()?,
            idle: next()?,
            iowait: next()?,
            irq: next()?,
            softirq: next()?,
            steal: next()?,
        })
    }

    /// Every state's time.
    pub fn total(&self) -> u64 {
        self.busy() + self.idle + self.iowait
    }

    /// All but idle and iowait: user, nice, system, irq, softirq and steal.
    pub fn busy(&self) -> u64 {
        self.user + self.nice + self.system + self.irq + self.softirq + self.steal
    }
}

/// /proc/loadavg's load averages over 1, 5 and 15 minutes.
pub fn load_averages() -> Option<[f64; 3]> {
    parse_load_averages(&std::fs::read_to_string("/proc/loadavg").ok()?)
}

fn parse_load_averages(text: &str) -> Option<[f64; 3]> {
    let mut fields = text.split_whitespace().map(str::parse);
    let mut next = || fields.next()?.ok();
    Some([next()?, next()?, next()?])
}

#[cfg(test)]
mod tests {
    use super::*;

    const STAT: &str = "cpu  100 2 30 4000 50 6 70 8 9 0\n\
                        cpu0 60 1 20 2000 25 3 40 4 9 0\n\
                        cpu1 40 1 10 2000 25 3 30 4 0 0\n\
                        intr 12345 0 1\n\
                        ctxt 999\n";

    #[test]
    fn cpu_lines_are_read_by_label() {
        let all = CpuTicks::parse(STAT, "cpu").unwrap();
        assert_eq!(
            all,
            CpuTicks {
                user: 100,
                nice: 2,
                system: 30,
                idle: 4000,
                iowait: 50,
                irq: 6,
                softirq: 70,
                steal: 8
            }
        );
        assert_eq!((all.busy(), all.total()), (216, 4266));
        assert_eq!(CpuTicks::parse(STAT, "cpu1").unwrap().softirq, 30);
        assert_eq!(CpuTicks::parse(STAT, "cpu2"), None);
        assert_eq!(CpuTicks::parse("cpu  1 2 3 4 5 6 7\n", "cpu"), None, "7 numbers only");
        let here = CpuTicks::now(None);
        assert!(here.total() >= CpuTicks::now(Some(0)).total());
    }

    #[test]
    fn load_averages_are_the_first_three_fields() {
        assert_eq!(parse_load_averages("0.52 0.40 1.05 2/345 6789\n"), Some([0.52, 0.40, 1.05]));
        assert_eq!(parse_load_averages("0.52 0.40\n"), None);
        assert!(load_averages().is_some());
    }
}
