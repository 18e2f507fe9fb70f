//! The routes BIRD announces: one host route (/32, /128) per VIP this node can serve, in a
//! kernel routing table of their own (`bgp.table`, which no `ip rule`
//! reads, so they route nothing here), through a tun device (`bgp.device`)
//! that this process holds open.
//!
//! Why a tun device: the kernel deletes a tun device that is not
//! persistent when the last descriptor on it closes, and every route
//! through it with the device. A controller that dies, SIGKILL included,
//! takes its routes along; BIRD's `kernel` protocol, which rescans the
//! table the moment a device goes down (Linux sends no route deletions
//! then), withdraws them. No route of a dead controller outlives it.
//!
//! The routes are written with the `ip` command (iproute2, which the host
//! has anyway), in one `ip -batch` per change; changes are rare (a health
//! transition, a drain), and a process per change costs nothing next to
//! BGP's own pace.
use std::{
    io::{self, Write as _},
    net::IpAddr,
    os::fd::{AsRawFd as _, FromRawFd as _, OwnedFd},
    process::{Command, Stdio},
};

use serde::Deserialize;

/// The routes' protocol (`proto static`): BIRD's `learn` imports routes of
/// any protocol but `kernel` and its own.
const PROTOCOL: &str = "static";

/// A tun device held open: deleted, with its routes, when dropped or when
/// the process dies.
#[derive(Debug)]
pub struct VipDevice {
    // Never read: holding it keeps the device.
    _fd: OwnedFd,
    name: String,
}

impl VipDevice {
    /// Creates the tun device `name` (not persistent) and sets it up.
    /// Fails if a device of that name exists and is not a free tun device
    /// (another controller's is attached: `EBUSY`).
    pub fn open(name: &str) -> io::Result<Self> {
        // SAFETY: a plain open(2) of a NUL-terminated path.
        let raw = unsafe { libc::open(c"/dev/net/tun".as_ptr(), libc::O_RDWR | libc::O_CLOEXEC) };
        if raw < 0 {
            return Err(io::Error::last_os_error());
        }
        // SAFETY: `raw` is a descriptor open(2) just returned, owned by no one else.
        let fd = unsafe { OwnedFd::from_raw_fd(raw) };
        let mut request = ifreq(name)?;
        request.ifr_ifru.ifru_flags = (libc::IFF_TUN | libc::IFF_NO_PI) as libc::c_short;
        // SAFETY: TUNSETIFF reads and writes the ifreq we pass, which outlives the call.
        if unsafe { libc::ioctl(fd.as_raw_fd(), libc::TUNSETIFF, &raw mut request) } < 0 {
            return Err(io::Error::last_os_error());
        }
        // A persistent tun device of that name left by someone else would
        // survive us: make it ours to lose.
        // SAFETY: TUNSETPERSIST takes an integer argument.
        if unsafe { libc::ioctl(fd.as_raw_fd(), libc::TUNSETPERSIST, 0) } < 0 {
            return Err(io::Error::last_os_error());
        }
        set_up(name)?;
        Ok(Self { _fd: fd, name: name.to_owned() })
    }

    pub fn name(&self) -> &str {
        &self.name
    }
}

/// An `ifreq` naming `name`.
fn ifreq(name: &str) -> io::Result<libc::ifreq> {
    // SAFETY: ifreq is plain data; all zeroes is a valid value.
    let mut request: libc::ifreq = unsafe { std::mem::zeroed() };
    if name.is_empty() || name.len() >= request.ifr_name.len() {
        return Err(io::Error::new(io::ErrorKind::InvalidInput, "not an interface name"));
    }
    for (slot, byte) in request.ifr_name.iter_mut().zip(name.bytes()) {
        *slot = byte.cast_signed();
    }
    Ok(request)
}

/// `ip link set NAME up`, through SIOCSIFFLAGS.
fn set_up(name: &str) -> io::Result<()> {
    // SAFETY: a plain socket(2) call.
    let raw = unsafe { libc::socket(libc::AF_INET, libc::SOCK_DGRAM | libc::SOCK_CLOEXEC, 0) };
    if raw < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: `raw` is a descriptor socket(2) just returned, owned by no one else.
    let socket = unsafe { OwnedFd::from_raw_fd(raw) };
    let mut request = ifreq(name)?;
    // SAFETY: SIOCGIFFLAGS fills the flags of the ifreq we pass.
    if unsafe { libc::ioctl(socket.as_raw_fd(), libc::SIOCGIFFLAGS, &raw mut request) } < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: SIOCGIFFLAGS wrote the flags member of the union.
    let flags = unsafe { request.ifr_ifru.ifru_flags };
    request.ifr_ifru.ifru_flags = flags | libc::IFF_UP as libc::c_short;
    // SAFETY: SIOCSIFFLAGS reads the ifreq we pass.
    if unsafe { libc::ioctl(socket.as_raw_fd(), libc::SIOCSIFFLAGS, &raw const request) } < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

/// A route of the table: what identifies it for `ip route del`, and whether
/// it is one this controller writes.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub struct TableRoute {
    /// `10.77.1.100` (a /32), `fd77:1::100` (a /128), `10.0.0.0/8`, `default`…
    pub dst: String,
    pub metric: u32,
    pub dev: Option<String>,
    pub protocol: Option<String>,
}

/// What `ip -j route show` gives per route (the fields used).
#[derive(Deserialize)]
struct Shown {
    dst: String,
    #[serde(default)]
    metric: u32,
    dev: Option<String>,
    protocol: Option<String>,
}

/// The wanted route for `vip`: through `device`, with `metric` (the
/// config's fingerprint, which BIRD passes on as a large community).
pub fn route(vip: IpAddr, metric: u32, device: &str) -> TableRoute {
    TableRoute {
        dst: vip.to_string(),
        metric,
        dev: Some(device.to_owned()),
        protocol: Some(PROTOCOL.to_owned()),
    }
}

/// The routes of `table`, IPv4 and IPv6.
pub fn list(table: u32) -> io::Result<Vec<TableRoute>> {
    let mut routes = list_family("-4", table)?;
    routes.extend(list_family("-6", table)?);
    Ok(routes)
}

/// The routes of `table` of one family (`-4`, `-6`).
fn list_family(family: &str, table: u32) -> io::Result<Vec<TableRoute>> {
    let out = Command::new("ip")
        .args([family, "-j", "route", "show", "table", &table.to_string()])
        .stdin(Stdio::null())
        .output()?;
    if !out.status.success() {
        let said = String::from_utf8_lossy(&out.stderr);
        // A table the kernel never held a route in does not exist yet.
        if said.contains("table does not exist") {
            return Ok(Vec::new());
        }
        return Err(io::Error::other(format!("ip route show table {table}: {}", said.trim())));
    }
    parse_list(&out.stdout)
}

fn parse_list(json: &[u8]) -> io::Result<Vec<TableRoute>> {
    // An empty table prints nothing at all on some iproute2 versions.
    if json.iter().all(u8::is_ascii_whitespace) {
        return Ok(Vec::new());
    }
    let shown: Vec<Shown> = serde_json::from_slice(json)
        .map_err(|e| io::Error::other(format!("ip -j route show: {e}")))?;
    Ok(shown
        .into_iter()
        .map(|s| TableRoute { dst: s.dst, metric: s.metric, dev: s.dev, protocol: s.protocol })
        .collect())
}

/// The `ip -batch` lines that make `table` hold `wanted` from `present`:
/// the new routes first, then the old ones removed, so that a VIP whose
/// route only changes metric is never without one.
pub fn batch(table: u32, present: &[TableRoute], wanted: &[TableRoute]) -> Vec<String> {
    let add = wanted.iter().filter(|r| !present.contains(r)).map(|r| {
        // A host route: /32 for an IPv4 VIP, /128 for an IPv6 one.
        let host = if r.dst.contains(':') { 128 } else { 32 };
        format!(
            "route add {}/{host} dev {} table {table} proto {PROTOCOL} metric {}",
            r.dst,
            r.dev.as_deref().unwrap_or_default(),
            r.metric
        )
    });
    let remove = present
        .iter()
        .filter(|r| !wanted.contains(r))
        .map(|r| format!("route del {} table {table} metric {}", r.dst, r.metric));
    add.chain(remove).collect()
}

/// Runs `lines` through `ip -force -batch -` (every line is tried); fails
/// naming what `ip` said if any failed.
pub fn run_batch(lines: &[String]) -> io::Result<()> {
    if lines.is_empty() {
        return Ok(());
    }
    let mut child = Command::new("ip")
        .args(["-force", "-batch", "-"])
        .stdin(Stdio::piped())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()?;
    let mut stdin = child.stdin.take().expect("piped stdin");
    let written = stdin.write_all(lines.join("\n").as_bytes());
    drop(stdin);
    let out = child.wait_with_output()?;
    written?;
    if out.status.success() {
        Ok(())
    } else {
        Err(io::Error::other(format!(
            "ip -batch: {}",
            String::from_utf8_lossy(&out.stderr).trim().replace('\n', "; ")
        )))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// What iproute2 prints for the table, parsed; nothing printed is an
    /// empty table.
    #[test]
    fn the_tables_listing_is_read() {
        let json = br#"[{"dst":"10.77.1.100","dev":"lb-vips","protocol":"static","scope":"link","metric":7,"flags":[]},{"type":"blackhole","dst":"default","protocol":"boot","flags":[]}]"#;
        let routes = parse_list(json).unwrap();
        assert_eq!(routes[0], route("10.77.1.100".parse().unwrap(), 7, "lb-vips"));
        assert_eq!(
            (routes[1].dst.as_str(), routes[1].metric, &routes[1].dev),
            ("default", 0, &None)
        );
        assert!(parse_list(b"\n").unwrap().is_empty());
        assert!(parse_list(b"[]").unwrap().is_empty());
        assert!(parse_list(b"not json").is_err());
    }

    /// New routes go in before old ones leave (a new metric: added, then
    /// the old one removed); anything else in the table is removed; what
    /// is there already is left alone.
    #[test]
    fn a_batch_adds_before_it_removes_and_leaves_what_stays() {
        let vip = |last: u8, metric| {
            route(std::net::Ipv4Addr::new(10, 77, 1, last).into(), metric, "lb-vips")
        };
        let stranger = TableRoute {
            dst: "10.0.0.0/8".into(),
            metric: 0,
            dev: Some("eth0".into()),
            protocol: Some("boot".into()),
        };
        let present = [vip(100, 1), vip(101, 1), stranger];
        let wanted = [vip(100, 2), vip(101, 1), vip(102, 2)];
        assert_eq!(
            batch(4077, &present, &wanted),
            [
                "route add 10.77.1.100/32 dev lb-vips table 4077 proto static metric 2",
                "route add 10.77.1.102/32 dev lb-vips table 4077 proto static metric 2",
                "route del 10.77.1.100 table 4077 metric 1",
                "route del 10.0.0.0/8 table 4077 metric 0",
            ]
        );
        assert!(batch(4077, &wanted, &wanted).is_empty());
    }

    /// An IPv6 VIP gets a /128 host route, and is removed by its address.
    #[test]
    fn an_ipv6_vip_gets_a_host_route_of_its_family() {
        let v6 = route("fd77:1::100".parse().unwrap(), 3, "lb-vips");
        assert_eq!(
            batch(4077, &[], std::slice::from_ref(&v6)),
            ["route add fd77:1::100/128 dev lb-vips table 4077 proto static metric 3"]
        );
        assert_eq!(batch(4077, &[v6], &[]), ["route del fd77:1::100 table 4077 metric 3"]);
    }
}
