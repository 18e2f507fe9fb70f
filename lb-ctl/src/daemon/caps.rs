//! The capabilities `lb-ctl run` needs, checked before it touches the data
//! plane: without one, it would fail halfway (maps made, no program loaded;
//! or programs loaded and none attached). Each is there because a run
//! without it was refused by the kernel (docs/operations.md, "Running it as
//! a service"); no other is needed on Linux 6.18, not even as root.
use std::{fmt, io};

/// A capability `lb-ctl run` needs, and what the kernel refuses without it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Needed {
    pub name: &'static str,
    /// Its bit in the capability sets (`linux/capability.h`).
    pub bit: u32,
    pub why: &'static str,
}

/// What `lb-ctl run` needs, in the order the kernel asks for them.
pub const NEEDED: [Needed; 3] = [
    Needed { name: "CAP_BPF", bit: 39, why: "creating the BPF maps and loading the programs" },
    Needed {
        name: "CAP_NET_ADMIN",
        bit: 12,
        why: "the redirect map (a devmap), attaching XDP and tc, turning GRO off, \
              the reassembly socket's IP_TRANSPARENT",
    },
    Needed {
        name: "CAP_PERFMON",
        bit: 38,
        why: "the verifier allows the XDP program's pointer arithmetic only with it",
    },
];

/// `lb-ctl run` lacks some of [`NEEDED`] in its effective set.
#[derive(Debug, PartialEq, Eq)]
pub struct Missing(pub Vec<Needed>);

impl fmt::Display for Missing {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let names: Vec<&str> = self.0.iter().map(|n| n.name).collect();
        let noun = if names.len() == 1 { "capability" } else { "capabilities" };
        write!(f, "missing {noun} {} (", names.join(", "))?;
        match self.0.as_slice() {
            [one] => f.write_str(one.why)?,
            several => {
                for (i, needed) in several.iter().enumerate() {
                    let sep = if i == 0 { "" } else { "; " };
                    write!(f, "{sep}{}: {}", needed.name, needed.why)?;
                }
            }
        }
        let all: Vec<&str> = NEEDED.iter().map(|n| n.name).collect();
        write!(
            f,
            "); nothing was loaded. Run lb-ctl run as root, or give it {} (the systemd \
             unit's AmbientCapabilities=, or setpriv --ambient-caps)",
            all.join(" ")
        )
    }
}

impl std::error::Error for Missing {}

/// Which of [`NEEDED`] the effective set `effective` lacks.
pub fn missing(effective: u64) -> Result<(), Missing> {
    let lacking: Vec<Needed> =
        NEEDED.iter().copied().filter(|n| effective & (1 << n.bit) == 0).collect();
    if lacking.is_empty() { Ok(()) } else { Err(Missing(lacking)) }
}

/// The `CapEff:` line of a `/proc/PID/status` text.
pub fn parse_effective(status: &str) -> Option<u64> {
    let hex = status.lines().find_map(|l| l.strip_prefix("CapEff:"))?;
    u64::from_str_radix(hex.trim(), 16).ok()
}

/// This process's effective capability set, from `/proc/self/status`.
pub fn effective() -> io::Result<u64> {
    let status = std::fs::read_to_string("/proc/self/status")?;
    parse_effective(&status).ok_or_else(|| {
        io::Error::new(io::ErrorKind::InvalidData, "/proc/self/status has no readable CapEff line")
    })
}

/// Refuses unless this process holds every capability of [`NEEDED`].
pub fn check() -> anyhow::Result<()> {
    let effective =
        effective().map_err(|e| anyhow::anyhow!("reading the effective capabilities: {e}"))?;
    missing(effective).map_err(anyhow::Error::from)
}

#[cfg(test)]
mod tests {
    use super::*;

    const ALL_THREE: u64 = (1 << 39) | (1 << 12) | (1 << 38);

    #[test]
    fn cap_eff_is_read_from_the_status_text() {
        let status = "Name:\tlb-ctl\nCapInh:\t0000000000000000\nCapPrm:\t000000c000001000\n\
                      CapEff:\t000000c000001000\nCapBnd:\t000001ffffffffff\n";
        assert_eq!(parse_effective(status), Some(ALL_THREE));
        assert_eq!(parse_effective("Name:\tx\n"), None);
        assert_eq!(parse_effective("CapEff:\tzz\n"), None);
    }

    #[test]
    fn each_missing_capability_is_named_with_why() {
        assert_eq!(missing(ALL_THREE), Ok(()));
        assert_eq!(missing(u64::MAX), Ok(()), "root's full set");
        for needed in NEEDED {
            let err = missing(ALL_THREE & !(1 << needed.bit)).unwrap_err();
            assert_eq!(err.0, vec![needed]);
            let text = err.to_string();
            assert!(text.starts_with(&format!("missing capability {} (", needed.name)), "{text}");
            let why = format!("missing capability {} ({}); nothing", needed.name, needed.why);
            assert!(text.starts_with(&why), "{text}");
            assert!(text.contains("CAP_BPF CAP_NET_ADMIN CAP_PERFMON"), "the fix: {text}");
        }
        let none = missing(0).unwrap_err();
        assert_eq!(none.0, NEEDED.to_vec());
        assert!(none.to_string().contains("(CAP_BPF: creating the BPF maps"), "{none}");
        assert!(
            none.to_string()
                .starts_with("missing capabilities CAP_BPF, CAP_NET_ADMIN, CAP_PERFMON ("),
            "{none}"
        );
    }
}
