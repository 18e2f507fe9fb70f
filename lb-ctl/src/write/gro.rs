//! Software GRO off below a program attached in generic (skb) mode.
//!
//! Generic XDP runs in `__netif_receive_skb_core`, after GRO. The kernel
//! skips GRO on a device that has a generic program itself
//! (`netif_elide_gro()` tests `dev->xdp_prog`) and turns LRO and hardware
//! GRO off at attach (`generic_xdp_install`), but GRO on a device *below*
//! it still merges: the port of a bridge or bond, the parent of a VLAN or
//! macvlan. The program then sees one TCP packet of up to 64 KiB whose
//! checksum field holds only the pseudo-header sum (CHECKSUM_PARTIAL):
//! `bpf_fib_lookup` answers FRAG_NEEDED for it (`drop_too_big`), devmap
//! refuses to redirect it (`xdp_ok_fwd_dev`: longer than the MTU), and the
//! incremental checksum update is wrong for a partial checksum.
//!
//! So, for every configured interface the program runs on in skb mode, the
//! controller turns GRO off on the interface and every device below it,
//! and writes down which ones it turned off (in the run directory, before
//! turning each off), so that whoever detaches the data plane (`--cleanup-on-exit`,
//! `lb-ctl down`, an interface dropped from the config, or a restart in
//! driver mode) turns them back on, also after a crash.
use std::{
    collections::{BTreeMap, BTreeSet},
    io,
    os::fd::{AsRawFd as _, FromRawFd as _, OwnedFd},
    path::{Path, PathBuf},
};

use serde::{Deserialize, Serialize};
use tracing::{info, warn};

/// A device as an RTM_NEWLINK message describes it.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Link {
    pub index: u32,
    pub name: String,
    /// IFLA_MASTER: the bridge, bond, team or VRF this device is a port of.
    pub master: Option<u32>,
    /// IFLA_LINK, when it names a device of this namespace (no
    /// IFLA_LINK_NETNSID): a VLAN's or macvlan's parent, a veth's peer.
    pub link: Option<u32>,
    /// IFLA_INFO_KIND (`vlan`, `bridge`, `veth`…), if any.
    pub kind: Option<String>,
    /// A program is attached in generic (skb) mode (IFLA_XDP).
    pub xdp_skb: bool,
}

/// Kinds whose IFLA_LINK is the device they receive from: the parent's
/// NAPI (and its GRO) delivers their packets. A veth's IFLA_LINK is its
/// peer, a tunnel's its underlay: neither merges what the device receives.
const STACKED_KINDS: [&str; 5] = ["vlan", "macvlan", "macvtap", "ipvlan", "ipvtap"];

/// The devices below `index` whose GRO merges what reaches it: ports
/// (IFLA_MASTER) and the parents of stacked kinds, recursively; `index`
/// itself first.
pub fn devices_below(links: &[Link], index: u32) -> Vec<u32> {
    let by_index: BTreeMap<u32, &Link> = links.iter().map(|l| (l.index, l)).collect();
    let mut seen = BTreeSet::from([index]);
    let mut order = vec![index];
    let mut next = 0;
    // Each device enters once, so this ends after links.len() rounds at most.
    while let Some(&current) = order.get(next) {
        next += 1;
        let ports = links.iter().filter(|l| l.master == Some(current)).map(|l| l.index);
        let parent = by_index
            .get(&current)
            .filter(|l| l.kind.as_deref().is_some_and(|k| STACKED_KINDS.contains(&k)))
            .and_then(|l| l.link);
        for below in ports.chain(parent) {
            if by_index.contains_key(&below) && seen.insert(below) {
                order.push(below);
            }
        }
    }
    order
}

/// A device whose GRO this controller turned off: `interface` is the
/// configured interface it lies below (or is).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Entry {
    pub interface: String,
    pub device: String,
    pub ifindex: u32,
}

/// What to do, from the devices, their GRO state, the configured
/// interfaces that run the program in skb mode, and the record.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Plan {
    /// GRO to turn off (recorded first).
    pub turn_off: Vec<Entry>,
    /// GRO to turn back on (then forgotten).
    pub restore: Vec<Entry>,
    /// Entries to forget without touching anything: the device is gone, or
    /// was recreated (another ifindex), so its setting is not ours.
    pub forget: Vec<Entry>,
    /// The record once the plan is carried out.
    pub record: Vec<Entry>,
}

/// Plans GRO for `skb_interfaces` (configured interfaces that run the
/// program in skb mode). `gro_on` answers whether GRO is on for a device
/// (None: unknown, left alone).
pub fn plan(
    links: &[Link],
    skb_interfaces: &[String],
    gro_on: impl Fn(&str) -> Option<bool>,
    record: &[Entry],
) -> Plan {
    let by_index: BTreeMap<u32, &Link> = links.iter().map(|l| (l.index, l)).collect();
    // Every device that must stay off, with the interface it serves.
    let mut wanted: BTreeMap<u32, Entry> = BTreeMap::new();
    for interface in skb_interfaces {
        let Some(top) = links.iter().find(|l| &l.name == interface) else { continue };
        for index in devices_below(links, top.index) {
            let device = by_index[&index].name.clone();
            wanted.entry(index).or_insert(Entry {
                interface: interface.clone(),
                device,
                ifindex: index,
            });
        }
    }
    let mut out = Plan::default();
    for entry in record {
        let alive = by_index.get(&entry.ifindex).is_some_and(|l| l.name == entry.device);
        if !alive {
            out.forget.push(entry.clone());
        } else if wanted.contains_key(&entry.ifindex) {
            // Still ours to hold off; turned on again by someone meanwhile?
            if gro_on(&entry.device) == Some(true) {
                out.turn_off.push(entry.clone());
            }
            out.record.push(entry.clone());
        } else {
            out.restore.push(entry.clone());
        }
    }
    for (index, entry) in wanted {
        if record.iter().any(|e| e.ifindex == index && e.device == entry.device) {
            continue;
        }
        // Off already, by someone else: not ours to turn on later.
        if gro_on(&entry.device) == Some(true) {
            out.turn_off.push(entry.clone());
            out.record.push(entry);
        }
    }
    out
}

/// Where the devices a data plane pinned at `pin_path` turned off are
/// written down: one file per pin path in the run directory (`/run`: gone
/// at reboot, as the settings themselves are).
pub fn record_path(run_dir: &Path, pin_path: &Path) -> PathBuf {
    let key: String = pin_path
        .to_string_lossy()
        .chars()
        .map(|c| if c.is_ascii_alphanumeric() || c == '-' || c == '.' { c } else { '_' })
        .collect();
    run_dir.join(format!("gro-off{key}.json"))
}

fn load(path: &Path) -> Vec<Entry> {
    match std::fs::read(path) {
        Ok(bytes) => serde_json::from_slice(&bytes).unwrap_or_else(|e| {
            warn!(file = %path.display(), error = %e, "unreadable GRO record ignored");
            Vec::new()
        }),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Vec::new(),
        Err(e) => {
            warn!(file = %path.display(), error = %e, "cannot read the GRO record");
            Vec::new()
        }
    }
}

fn save(path: &Path, record: &[Entry]) -> io::Result<()> {
    if record.is_empty() {
        return match std::fs::remove_file(path) {
            Err(e) if e.kind() != io::ErrorKind::NotFound => Err(e),
            _ => Ok(()),
        };
    }
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir)?;
    }
    let json = serde_json::to_vec_pretty(record).map_err(io::Error::other)?;
    crate::desired::private_file::write_atomically(path, &json)
}

/// Brings GRO in line with the data plane: off below every configured
/// interface that runs the program in skb mode, back on wherever this
/// controller (or an earlier one, by the record at `record`) turned it off
/// and no such interface needs it off any more. `interfaces`: the
/// configured interfaces still attached (none once detached). Failures are
/// logged, never fatal: the data plane runs either way. Returns the
/// devices whose GRO it turned back on.
pub fn reconcile(record: &Path, interfaces: &[String]) -> Vec<Entry> {
    let links = match dump_links() {
        Ok(links) => links,
        Err(e) => {
            warn!(error = %e, "cannot list the interfaces (netlink): GRO left as it is");
            return Vec::new();
        }
    };
    let skb: Vec<String> = interfaces
        .iter()
        .filter(|name| links.iter().any(|l| &l.name == *name && l.xdp_skb))
        .cloned()
        .collect();
    let previous = load(record);
    let plan = plan(&links, &skb, |dev| gro(dev).ok(), &previous);
    // Recorded before anything is turned off: a crash in between leaves a
    // record of a device still on, which restoring then leaves on.
    let mut first = previous.clone();
    first.extend(plan.turn_off.iter().filter(|e| !previous.contains(e)).cloned());
    if let Err(e) = save(record, &first) {
        warn!(file = %record.display(), error = %e, "cannot write the GRO record: GRO left as it is");
        return Vec::new();
    }
    let mut kept = plan.record.clone();
    for entry in &plan.turn_off {
        match set_gro(&entry.device, false) {
            Ok(()) => info!(
                interface = %entry.interface, device = %entry.device,
                "GRO turned off: generic (skb) mode XDP runs after GRO, and merged packets \
                 larger than the MTU cannot be forwarded (restored when the data plane is detached)"
            ),
            Err(e) => {
                warn!(
                    interface = %entry.interface, device = %entry.device, error = %e,
                    "cannot turn GRO off: merged packets larger than the MTU will be dropped (drop_too_big)"
                );
                if !previous.contains(entry) {
                    kept.retain(|k| k != entry);
                }
            }
        }
    }
    let mut restored = Vec::new();
    for entry in plan.restore {
        match set_gro(&entry.device, true) {
            Ok(()) => {
                info!(interface = %entry.interface, device = %entry.device, "GRO turned back on");
                restored.push(entry);
            }
            Err(e) => {
                warn!(device = %entry.device, error = %e, "cannot turn GRO back on (kept in the record)");
                kept.push(entry);
            }
        }
    }
    for entry in &plan.forget {
        info!(device = %entry.device, "GRO record of a device gone or recreated forgotten");
    }
    if let Err(e) = save(record, &kept) {
        warn!(file = %record.display(), error = %e, "cannot write the GRO record");
    }
    restored
}

const SIOCETHTOOL: libc::c_ulong = 0x8946;
const ETHTOOL_GGRO: u32 = 0x2b;
const ETHTOOL_SGRO: u32 = 0x2c;

#[repr(C)]
struct EthtoolValue {
    cmd: u32,
    data: u32,
}

#[repr(C)]
struct IfReq {
    name: [u8; libc::IFNAMSIZ],
    data: *mut EthtoolValue,
    _pad: [u8; 16],
}

fn ethtool(device: &str, cmd: u32, data: u32) -> io::Result<u32> {
    let bytes = device.as_bytes();
    if bytes.len() >= libc::IFNAMSIZ || bytes.contains(&0) {
        return Err(io::Error::new(io::ErrorKind::InvalidInput, "not an interface name"));
    }
    // SAFETY: a plain socket(2) call; the descriptor is owned at once.
    let fd = unsafe { libc::socket(libc::AF_INET, libc::SOCK_DGRAM | libc::SOCK_CLOEXEC, 0) };
    if fd < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: fd was just returned by socket(2) and is not owned elsewhere.
    let socket = unsafe { OwnedFd::from_raw_fd(fd) };
    let mut value = EthtoolValue { cmd, data };
    let mut request = IfReq { name: [0; libc::IFNAMSIZ], data: &raw mut value, _pad: [0; 16] };
    request.name[..bytes.len()].copy_from_slice(bytes);
    // SAFETY: SIOCETHTOOL with an ifreq whose data points at a live
    // ethtool_value for the duration of the call.
    let rc = unsafe { libc::ioctl(socket.as_raw_fd(), SIOCETHTOOL, &raw mut request) };
    if rc < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(value.data)
}

/// Whether software GRO is on for `device` (ETHTOOL_GGRO).
pub fn gro(device: &str) -> io::Result<bool> {
    ethtool(device, ETHTOOL_GGRO, 0).map(|v| v != 0)
}

/// Turns software GRO on or off for `device` (ETHTOOL_SGRO).
pub fn set_gro(device: &str, on: bool) -> io::Result<()> {
    ethtool(device, ETHTOOL_SGRO, u32::from(on)).map(|_| ())
}

const NLMSG_HDR: usize = 16;
const IFINFOMSG: usize = 16;
const NLMSG_ERROR: u16 = 2;
const NLMSG_DONE: u16 = 3;
const RTM_NEWLINK: u16 = 16;
const RTM_GETLINK: u16 = 18;
const IFLA_IFNAME: u16 = 3;
const IFLA_LINK: u16 = 5;
const IFLA_MASTER: u16 = 10;
const IFLA_LINKINFO: u16 = 18;
const IFLA_INFO_KIND: u16 = 1;
const IFLA_LINK_NETNSID: u16 = 37;
const IFLA_XDP: u16 = 43;
const IFLA_XDP_ATTACHED: u16 = 2;
const IFLA_XDP_SKB_PROG_ID: u16 = 6;
const XDP_ATTACHED_SKB: u8 = 2;

fn u16_at(b: &[u8], at: usize) -> Option<u16> {
    Some(u16::from_ne_bytes(b.get(at..at + 2)?.try_into().ok()?))
}

fn u32_at(b: &[u8], at: usize) -> Option<u32> {
    Some(u32::from_ne_bytes(b.get(at..at + 4)?.try_into().ok()?))
}

/// The attributes in `b`: (type without the nested/byte-order flags, payload).
fn attributes(b: &[u8]) -> Vec<(u16, &[u8])> {
    let mut out = Vec::new();
    let mut at = 0;
    while let (Some(len), Some(kind)) = (u16_at(b, at), u16_at(b, at + 2)) {
        let len = usize::from(len);
        let Some(payload) = b.get(at + 4..at + len).filter(|_| len >= 4) else { break };
        out.push((kind & 0x3fff, payload));
        at += len.div_ceil(4) * 4;
    }
    out
}

/// One RTM_NEWLINK payload (ifinfomsg + attributes) as a `Link`.
fn parse_link(payload: &[u8]) -> Option<Link> {
    let index = u32_at(payload, 4)?;
    let mut link = Link { index, ..Link::default() };
    let mut other_netns = false;
    let mut parent = None;
    for (kind, value) in attributes(payload.get(IFINFOMSG..)?) {
        match kind {
            IFLA_IFNAME => {
                let name = value.split(|&c| c == 0).next().unwrap_or_default();
                link.name = String::from_utf8_lossy(name).into_owned();
            }
            IFLA_MASTER => link.master = u32_at(value, 0),
            IFLA_LINK => parent = u32_at(value, 0),
            IFLA_LINK_NETNSID => other_netns = true,
            IFLA_LINKINFO => {
                link.kind = attributes(value).into_iter().find(|(k, _)| *k == IFLA_INFO_KIND).map(
                    |(_, v)| {
                        let v = v.split(|&c| c == 0).next().unwrap_or_default();
                        String::from_utf8_lossy(v).into_owned()
                    },
                );
            }
            IFLA_XDP => {
                link.xdp_skb = attributes(value).into_iter().any(|(k, v)| {
                    (k == IFLA_XDP_ATTACHED && v.first() == Some(&XDP_ATTACHED_SKB))
                        || k == IFLA_XDP_SKB_PROG_ID
                });
            }
            _ => {}
        }
    }
    link.link = parent.filter(|p| !other_netns && *p != index);
    Some(link)
}

/// The links in one buffer of netlink messages, and whether the dump ended.
pub fn parse_messages(b: &[u8]) -> io::Result<(Vec<Link>, bool)> {
    let mut links = Vec::new();
    let mut at = 0;
    while let (Some(len), Some(kind)) = (u32_at(b, at), u16_at(b, at + 4)) {
        let len = len as usize;
        if len < NLMSG_HDR || at + len > b.len() {
            return Err(io::Error::other("truncated netlink message"));
        }
        let payload = &b[at + NLMSG_HDR..at + len];
        match kind {
            NLMSG_DONE => return Ok((links, true)),
            NLMSG_ERROR => {
                let errno = u32_at(payload, 0).map_or(0, u32::cast_signed);
                if errno != 0 {
                    return Err(io::Error::from_raw_os_error(-errno));
                }
            }
            RTM_NEWLINK => links.extend(parse_link(payload)),
            _ => {}
        }
        at += len.div_ceil(4) * 4;
    }
    Ok((links, false))
}

/// Every device of the current network namespace (RTM_GETLINK dump).
pub fn dump_links() -> io::Result<Vec<Link>> {
    // SAFETY: a plain socket(2) call; the descriptor is owned at once.
    let fd = unsafe {
        libc::socket(libc::AF_NETLINK, libc::SOCK_RAW | libc::SOCK_CLOEXEC, libc::NETLINK_ROUTE)
    };
    if fd < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: fd was just returned by socket(2) and is not owned elsewhere.
    let socket = unsafe { OwnedFd::from_raw_fd(fd) };
    let mut request = [0_u8; NLMSG_HDR + IFINFOMSG];
    request[0..4].copy_from_slice(&((NLMSG_HDR + IFINFOMSG) as u32).to_ne_bytes());
    request[4..6].copy_from_slice(&RTM_GETLINK.to_ne_bytes());
    let flags = (libc::NLM_F_REQUEST | libc::NLM_F_DUMP) as u16;
    request[6..8].copy_from_slice(&flags.to_ne_bytes());
    request[8..12].copy_from_slice(&1_u32.to_ne_bytes());
    // ifinfomsg: family AF_UNSPEC, everything else 0.
    // SAFETY: send(2) of a buffer that lives across the call (the kernel
    // is the default destination of a netlink socket).
    let sent = unsafe { libc::send(socket.as_raw_fd(), request.as_ptr().cast(), request.len(), 0) };
    if sent < 0 {
        return Err(io::Error::last_os_error());
    }
    let mut links = Vec::new();
    let mut buf = vec![0_u8; 64 * 1024];
    // A dump of even thousands of devices takes far fewer reads than this.
    for _ in 0..100_000 {
        // SAFETY: recv(2) into a buffer of the given length.
        let n = unsafe { libc::recv(socket.as_raw_fd(), buf.as_mut_ptr().cast(), buf.len(), 0) };
        if n < 0 {
            return Err(io::Error::last_os_error());
        }
        let (more, done) = parse_messages(&buf[..n.cast_unsigned()])?;
        links.extend(more);
        if done {
            return Ok(links);
        }
    }
    Err(io::Error::other("the interface dump did not end"))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn link(index: u32, name: &str, kind: Option<&str>) -> Link {
        Link { index, name: name.into(), kind: kind.map(Into::into), ..Link::default() }
    }

    /// eth0 <- eth0.10 (vlan); p1, p2 -> br0 (bridge) over bond0 over
    /// eth1, eth2; veth0 whose peer is index 1.
    fn lab() -> Vec<Link> {
        vec![
            link(1, "eth0", None),
            Link { link: Some(1), ..link(2, "eth0.10", Some("vlan")) },
            link(3, "br0", Some("bridge")),
            Link { master: Some(3), ..link(4, "p1", Some("veth")) },
            Link { master: Some(3), ..link(5, "bond0", Some("bond")) },
            Link { master: Some(5), ..link(6, "eth1", None) },
            Link { master: Some(5), ..link(7, "eth2", None) },
            Link { link: Some(1), ..link(8, "veth0", Some("veth")) },
        ]
    }

    #[test]
    fn below_a_device_are_its_ports_and_a_stacked_devices_parent_recursively() {
        let links = lab();
        assert_eq!(devices_below(&links, 2), [2, 1], "a VLAN's parent");
        assert_eq!(devices_below(&links, 3), [3, 4, 5, 6, 7], "bridge ports, a bond's too");
        assert_eq!(devices_below(&links, 8), [8], "a veth's peer is not below it");
        assert_eq!(devices_below(&links, 1), [1]);
        // A loop (impossible in the kernel) still ends.
        let looped = vec![
            Link { link: Some(2), ..link(1, "a", Some("vlan")) },
            Link { link: Some(1), ..link(2, "b", Some("vlan")) },
        ];
        assert_eq!(devices_below(&looped, 1), [1, 2]);
    }

    fn entry(interface: &str, device: &str, ifindex: u32) -> Entry {
        Entry { interface: interface.into(), device: device.into(), ifindex }
    }

    #[test]
    fn gro_goes_off_where_it_is_on_and_only_what_was_turned_off_comes_back() {
        let links = lab();
        // eth1 was off already: not ours to turn on later.
        let on = |dev: &str| Some(dev != "eth1");
        let first = plan(&links, &["br0".into()], on, &[]);
        let expected: Vec<Entry> = [("br0", 3), ("p1", 4), ("bond0", 5), ("eth2", 7)]
            .into_iter()
            .map(|(d, i)| entry("br0", d, i))
            .collect();
        assert_eq!(first.turn_off, expected);
        assert_eq!(first.record, expected);
        assert!(first.restore.is_empty() && first.forget.is_empty());

        // Next start, same interfaces: all off now, nothing to do, record kept.
        let off = |_: &str| Some(false);
        let again = plan(&links, &["br0".into()], off, &first.record);
        assert!(again.turn_off.is_empty() && again.restore.is_empty());
        assert_eq!(again.record, expected);

        // Detached: exactly what was turned off comes back.
        let detached = plan(&links, &[], off, &first.record);
        assert_eq!(detached.restore, expected);
        assert!(detached.record.is_empty() && detached.turn_off.is_empty());
    }

    #[test]
    fn a_device_turned_on_again_meanwhile_goes_off_and_gone_devices_are_forgotten() {
        let links = lab();
        let record = vec![entry("eth0.10", "eth0", 1), entry("eth0.10", "old", 42)];
        let on = |_: &str| Some(true);
        let p = plan(&links, &["eth0.10".into()], on, &record);
        assert_eq!(p.turn_off, [entry("eth0.10", "eth0", 1), entry("eth0.10", "eth0.10", 2)]);
        assert_eq!(p.forget, [entry("eth0.10", "old", 42)]);
        assert_eq!(p.record, [entry("eth0.10", "eth0", 1), entry("eth0.10", "eth0.10", 2)]);
        // A recreated device (same name, another index) is not ours either.
        let recreated = plan(&links, &[], on, &[entry("x", "eth0", 9)]);
        assert_eq!(recreated.forget.len(), 1);
        assert!(recreated.restore.is_empty());
        // An unknown GRO state is left alone.
        let unknown = plan(&links, &["eth0".into()], |_| None, &[]);
        assert!(unknown.turn_off.is_empty() && unknown.record.is_empty());
    }

    fn attr(kind: u16, payload: &[u8]) -> Vec<u8> {
        let mut a = Vec::new();
        a.extend_from_slice(&((4 + payload.len()) as u16).to_ne_bytes());
        a.extend_from_slice(&kind.to_ne_bytes());
        a.extend_from_slice(payload);
        a.resize(a.len().div_ceil(4) * 4, 0);
        a
    }

    fn message(kind: u16, payload: &[u8]) -> Vec<u8> {
        let mut m = Vec::new();
        m.extend_from_slice(&((NLMSG_HDR + payload.len()) as u32).to_ne_bytes());
        m.extend_from_slice(&kind.to_ne_bytes());
        m.extend_from_slice(&[0; 10]);
        m.extend_from_slice(payload);
        m
    }

    fn newlink(index: u32, attrs: &[Vec<u8>]) -> Vec<u8> {
        let mut p = vec![0_u8; IFINFOMSG];
        p[4..8].copy_from_slice(&index.to_ne_bytes());
        for a in attrs {
            p.extend_from_slice(a);
        }
        message(RTM_NEWLINK, &p)
    }

    #[test]
    fn netlink_messages_give_names_relations_kinds_and_the_xdp_mode() {
        let nested = 0x8000;
        let mut buf = newlink(
            2,
            &[
                attr(IFLA_IFNAME, b"eth0.10\0"),
                attr(IFLA_LINK, &1_u32.to_ne_bytes()),
                attr(IFLA_LINKINFO | nested, &attr(IFLA_INFO_KIND, b"vlan\0")),
                attr(IFLA_XDP | nested, &attr(IFLA_XDP_ATTACHED, &[XDP_ATTACHED_SKB])),
            ],
        );
        buf.extend(newlink(
            3,
            &[
                attr(IFLA_IFNAME, b"veth0\0"),
                attr(IFLA_LINK, &7_u32.to_ne_bytes()),
                attr(IFLA_LINK_NETNSID, &0_u32.to_ne_bytes()),
                attr(IFLA_MASTER, &9_u32.to_ne_bytes()),
                attr(IFLA_XDP | nested, &attr(IFLA_XDP_ATTACHED, &[1])),
            ],
        ));
        let (links, done) = parse_messages(&buf).unwrap();
        assert!(!done);
        assert_eq!(
            links,
            [
                Link { link: Some(1), xdp_skb: true, ..link(2, "eth0.10", Some("vlan")) },
                // A parent in another namespace is none of ours; driver mode is not skb.
                Link { master: Some(9), ..link(3, "veth0", None) },
            ]
        );
        let (links, done) = parse_messages(&message(NLMSG_DONE, &[0; 4])).unwrap();
        assert!(done && links.is_empty());
        let error = message(NLMSG_ERROR, &(-1_i32).to_ne_bytes());
        assert_eq!(parse_messages(&error).unwrap_err().raw_os_error(), Some(1));
        assert!(parse_messages(&buf[..buf.len() - 3]).is_err(), "a truncated message");
    }

    #[test]
    fn each_pin_path_has_its_own_record() {
        let run = Path::new("/run/lb-ctl");
        assert_eq!(
            record_path(run, Path::new("/sys/fs/bpf/lb")),
            Path::new("/run/lb-ctl/gro-off_sys_fs_bpf_lb.json")
        );
        assert_ne!(
            record_path(run, Path::new("/sys/fs/bpf/lb1")),
            record_path(run, Path::new("/sys/fs/bpf/lb2"))
        );
    }
}
