//! A namespace in which the real XDP program runs under BPF_PROG_TEST_RUN
//! with a real FIB: two interfaces (client side, backend side), routes, and
//! permanent neighbour entries for some hosts but not others. Shared by the
//! packet fixtures and the benchmarks.
use std::{
    net::{Ipv4Addr, Ipv6Addr},
    sync::OnceLock,
};

use aya::{
    maps::{Array, MapData, PerCpuArray},
    programs::Xdp,
};
use lb_common::{
    abi::{
        BackendConns, Conn, FLOW_CACHE_SLOTS, Flow, FlowCacheEntry, PROTO_UDP, cpu_slot,
        flow_cache_slot, real_slot,
    },
    counter::Counter,
};
use lb_ctl::{
    EBPF_OBJECT,
    desired::config,
    write::{
        dataplane::{
            conn_table::{At, ConnTable},
            kernel::KernelMaps,
            pins::MapSizes,
        },
        netdev,
        reconciler::Reconciler,
    },
};

use crate::{
    netns::{exists, ns_sh, output, sh},
    packet::{Ipv4, L4, Mac, TCP_ACK, TCP_SYN},
    testrun::{self, Outcome, XDP_REDIRECT},
};

pub const CLIENT: Ipv4Addr = Ipv4Addr::new(10, 77, 1, 10);
pub const CLIENT_MAC: Mac = [0x02, 0, 0, 0, 0x01, 0x0a];
/// A client with no neighbour entry on the load balancer.
pub const UNSEEN_CLIENT: Ipv4Addr = Ipv4Addr::new(10, 77, 1, 99);
/// A client in a network the load balancer's FIB declares unreachable.
pub const UNREACHABLE_CLIENT: Ipv4Addr = Ipv4Addr::new(10, 77, 9, 9);
pub const VIP: Ipv4Addr = Ipv4Addr::new(10, 77, 1, 100);
pub const VIP_NO_NEIGH: Ipv4Addr = Ipv4Addr::new(10, 77, 1, 101);
pub const VIP_DRAINED: Ipv4Addr = Ipv4Addr::new(10, 77, 1, 102);
pub const LB_CLIENT_SIDE: Ipv4Addr = Ipv4Addr::new(10, 77, 1, 1);
/// The load balancer's own address on the backend side (where its health
/// checks come from).
pub const LB_BACKEND_SIDE: Ipv4Addr = Ipv4Addr::new(10, 77, 2, 1);
pub const HAIRPIN: Ipv4Addr = Ipv4Addr::new(10, 77, 1, 50);
pub const HAIRPIN_MAC: Mac = [0x02, 0, 0, 0, 0x01, 0x32];
pub const WEB1: Ipv4Addr = Ipv4Addr::new(10, 77, 2, 11);
pub const WEB2: Ipv4Addr = Ipv4Addr::new(10, 77, 2, 12);
pub const WEB3: Ipv4Addr = Ipv4Addr::new(10, 77, 2, 13);
pub const WEB_MACS: [Mac; 3] =
    [[0x02, 0, 0, 0, 0x02, 0x0b], [0x02, 0, 0, 0, 0x02, 0x0c], [0x02, 0, 0, 0, 0x02, 0x0d]];
/// A backend with no neighbour entry.
pub const NO_NEIGH_BACKEND: Ipv4Addr = Ipv4Addr::new(10, 77, 2, 50);
pub const BACKEND_SIDE_MTU: u16 = 1400;

/// The IPv6 side of the same hosts: `fd77:1::/64` on the client side,
/// `fd77:2::/64` on the backend side, the VIP `fd77:1::100`.
pub const CLIENT6: Ipv6Addr = Ipv6Addr::new(0xfd77, 1, 0, 0, 0, 0, 0, 0x10);
pub const VIP6: Ipv6Addr = Ipv6Addr::new(0xfd77, 1, 0, 0, 0, 0, 0, 0x100);
pub const LB_CLIENT_SIDE6: Ipv6Addr = Ipv6Addr::new(0xfd77, 1, 0, 0, 0, 0, 0, 1);
pub const LB_BACKEND_SIDE6: Ipv6Addr = Ipv6Addr::new(0xfd77, 2, 0, 0, 0, 0, 0, 1);
pub const WEB1_6: Ipv6Addr = Ipv6Addr::new(0xfd77, 2, 0, 0, 0, 0, 0, 0x11);
pub const WEB2_6: Ipv6Addr = Ipv6Addr::new(0xfd77, 2, 0, 0, 0, 0, 0, 0x12);
/// An IPv6 backend with no neighbour entry.
pub const NO_NEIGH_BACKEND6: Ipv6Addr = Ipv6Addr::new(0xfd77, 2, 0, 0, 0, 0, 0, 0x50);
/// The IPv6 VIP of a direct-routing service (to `WEB2_6`).
pub const VIP6_DSR: Ipv6Addr = Ipv6Addr::new(0xfd77, 1, 0, 0, 0, 0, 0, 0x105);
/// The IPv6 VIP of services with no usable backend (answered).
pub const VIP6_REJECTING: Ipv6Addr = Ipv6Addr::new(0xfd77, 1, 0, 0, 0, 0, 0, 0x103);
/// The IPv6 VIP whose service's backend has no neighbour entry.
pub const VIP6_NO_NEIGH: Ipv6Addr = Ipv6Addr::new(0xfd77, 1, 0, 0, 0, 0, 0, 0x101);
pub const COLLIDER_MAC: Mac = [0x02, 0, 0, 0, 0x04, 0x01];
pub const IF_CLIENT: &str = "fx-c";
pub const IF_BACKEND: &str = "fx-b";
pub const IF_CLIENT_MAC: Mac = [0x02, 0, 0, 0, 0, 0xc1];
pub const IF_BACKEND_MAC: Mac = [0x02, 0, 0, 0, 0, 0xb1];

/// A backend endpoint (UDP) whose `lb_real_slots` slot is the same as that
/// of `WEB3:7000`, found by search: replies from either must take the
/// exact-table path.
pub fn slot_sharing_backend() -> (Ipv4Addr, u16) {
    let target = real_slot(WEB3.octets(), 7000, PROTO_UDP);
    (1..=254_u8)
        .flat_map(|last| (1..=u16::MAX).map(move |port| (Ipv4Addr::new(10, 77, 4, last), port)))
        .find(|(a, p)| real_slot(a.octets(), *p, PROTO_UDP) == target)
        .expect("an endpoint sharing the slot")
}

/// The services of the fixtures: each exercises one path.
pub fn config() -> String {
    let (shared_addr, shared_port) = slot_sharing_backend();
    format!(
        "{CONFIG}
[[service]]            # two backends share an index slot
name = \"shared\"
vip = \"10.77.1.100\"
port = 7000
protocol = \"udp\"
  [[service.backend]]
  address = \"10.77.2.13\"
  port = 7000
  [[service.backend]]
  address = \"{shared_addr}\"
  port = {shared_port}
"
    )
}

const CONFIG: &str = r#"
[dataplane]
interfaces = ["fx-c", "fx-b"]

[[service]]            # one backend, another port: every field is rewritten
name = "web"
vip = "10.77.1.100"
port = 80
  [[service.backend]]
  address = "10.77.2.11"
  port = 8080

[[service]]
name = "dns"
vip = "10.77.1.100"
port = 53
protocol = "udp"
  [[service.backend]]
  address = "10.77.2.12"
  port = 5353

[[service]]            # three backends: Maglev decides
name = "multi"
vip = "10.77.1.100"
port = 443
  [[service.backend]]
  address = "10.77.2.11"
  port = 443
  [[service.backend]]
  address = "10.77.2.12"
  port = 443
  [[service.backend]]
  address = "10.77.2.13"
  port = 443

[[service]]            # backend on the client side: XDP_TX
name = "hairpin"
vip = "10.77.1.100"
port = 8443
  [[service.backend]]
  address = "10.77.1.50"
  port = 8443

[[service]]            # backend without a neighbour entry: slow path
name = "noneigh"
vip = "10.77.1.101"
port = 80
  [[service.backend]]
  address = "10.77.2.50"
  port = 80

[[service]]            # every backend drained: no usable backend, dropped
name = "drained"
vip = "10.77.1.102"
port = 80
on_no_backend = "drop"
  [[service.backend]]
  address = "10.77.2.13"
  port = 80
  weight = 0

[[service]]            # no usable backend, answered (the default)
name = "rejecting-tcp"
vip = "10.77.1.103"
port = 80
  [[service.backend]]
  address = "10.77.2.13"
  port = 81
  weight = 0

[[service]]
name = "rejecting-udp"
vip = "10.77.1.103"
port = 53
protocol = "udp"

[[service]]            # direct routing: only the frame goes to the backend
name = "dsr"
vip = "10.77.1.105"
port = 80
forwarding = "dsr"
  [[service.backend]]
  address = "10.77.2.12"
  port = 80

[[service]]            # direct routing to a backend behind a gateway: dropped
name = "dsr-routed"
vip = "10.77.1.105"
port = 81
forwarding = "dsr"
  [[service.backend]]
  address = "10.77.5.7"
  port = 81

[[service]]            # direct routing to a gateway with no neighbour entry: dropped
name = "dsr-routed-noneigh"
vip = "10.77.1.105"
port = 83
forwarding = "dsr"
  [[service.backend]]
  address = "10.77.6.7"
  port = 83

[[service]]            # direct routing, no neighbour entry yet: slow path
name = "dsr-noneigh"
vip = "10.77.1.105"
port = 82
forwarding = "dsr"
  [[service.backend]]
  address = "10.77.2.51"
  port = 82

[[service]]            # IPv6: one backend, another port, as "web"
name = "web6"
vip = "fd77:1::100"
port = 80
  [[service.backend]]
  address = "fd77:2::11"
  port = 8080

[[service]]
name = "dns6"
vip = "fd77:1::100"
port = 53
protocol = "udp"
  [[service.backend]]
  address = "fd77:2::12"
  port = 5353

[[service]]            # IPv6 direct routing: only the frame goes to the backend
name = "dsr6"
vip = "fd77:1::105"
port = 80
forwarding = "dsr"
  [[service.backend]]
  address = "fd77:2::12"
  port = 80

[[service]]            # IPv6, no usable backend: answered
name = "rejecting6-tcp"
vip = "fd77:1::103"
port = 80
  [[service.backend]]
  address = "fd77:2::13"
  port = 81
  weight = 0

[[service]]
name = "rejecting6-udp"
vip = "fd77:1::103"
port = 53
protocol = "udp"

[[service]]            # IPv6 backend without a neighbour entry: slow path
name = "noneigh6"
vip = "fd77:1::101"
port = 80
  [[service.backend]]
  address = "fd77:2::50"
  port = 80

[[service]]            # the schedulers, each over web1..web3
name = "rr"
vip = "10.77.1.104"
port = 81
scheduler = "rr"
  [[service.backend]]
  address = "10.77.2.11"
  port = 81
  [[service.backend]]
  address = "10.77.2.12"
  port = 81
  [[service.backend]]
  address = "10.77.2.13"
  port = 82

[[service]]
name = "wrr"
vip = "10.77.1.104"
port = 82
scheduler = "wrr"
  [[service.backend]]
  address = "10.77.2.11"
  port = 83
  weight = 3
  [[service.backend]]
  address = "10.77.2.12"
  port = 83
  [[service.backend]]
  address = "10.77.2.13"
  port = 83

[[service]]
name = "lc"
vip = "10.77.1.104"
port = 84
scheduler = "lc"
  [[service.backend]]
  address = "10.77.2.11"
  port = 85
  [[service.backend]]
  address = "10.77.2.12"
  port = 85
  [[service.backend]]
  address = "10.77.2.13"
  port = 85

[[service]]
name = "sh"
vip = "10.77.1.104"
port = 83
scheduler = "sh"
  [[service.backend]]
  address = "10.77.2.11"
  port = 84
  [[service.backend]]
  address = "10.77.2.12"
  port = 84
  [[service.backend]]
  address = "10.77.2.13"
  port = 84

[[service]]            # persistence: a client keeps its backend 10 s
name = "persist"
vip = "10.77.1.106"
port = 80
persistence_s = 10
  [[service.backend]]
  address = "10.77.2.11"
  port = 90
  [[service.backend]]
  address = "10.77.2.12"
  port = 90
  [[service.backend]]
  address = "10.77.2.13"
  port = 90

[[service]]
name = "persist-rr"
vip = "10.77.1.106"
port = 81
scheduler = "rr"
persistence_s = 10
  [[service.backend]]
  address = "10.77.2.11"
  port = 91
  [[service.backend]]
  address = "10.77.2.12"
  port = 91
  [[service.backend]]
  address = "10.77.2.13"
  port = 91

[[service]]            # persistence by the client's /24
name = "persist-net"
vip = "10.77.1.106"
port = 82
persistence_s = 10
persistence_netmask = 24
  [[service.backend]]
  address = "10.77.2.11"
  port = 92
  [[service.backend]]
  address = "10.77.2.12"
  port = 92
  [[service.backend]]
  address = "10.77.2.13"
  port = 92

[[service]]            # connection limits, full: dropped
name = "limited"
vip = "10.77.1.107"
port = 80
on_no_backend = "drop"
  [[service.backend]]
  address = "10.77.2.11"
  port = 93
  max_conns = 2
  [[service.backend]]
  address = "10.77.2.12"
  port = 93
  max_conns = 1

[[service]]            # connection limits, full: answered
name = "limited-reject"
vip = "10.77.1.107"
port = 81
scheduler = "rr"
  [[service.backend]]
  address = "10.77.2.11"
  port = 94
  max_conns = 1
  [[service.backend]]
  address = "10.77.2.12"
  port = 94
  max_conns = 1

[[service]]
name = "limited-lc"
vip = "10.77.1.107"
port = 82
scheduler = "lc"
on_no_backend = "drop"
  [[service.backend]]
  address = "10.77.2.11"
  port = 95
  max_conns = 1
  [[service.backend]]
  address = "10.77.2.12"
  port = 95
  max_conns = 1

[[service]]            # only 10.77.1.0/28 may connect
name = "guarded"
vip = "10.77.1.108"
port = 80
allowed_sources = ["10.77.1.0/28", "192.0.2.0/24"]
  [[service.backend]]
  address = "10.77.2.11"
  port = 96

[[service]]            # the benchmarks' rows: a limit far off (each SYN counts)
name = "bench-limited"
vip = "10.77.1.109"
port = 80
  [[service.backend]]
  address = "10.77.2.11"
  port = 97
  max_conns = 1000000000
  [[service.backend]]
  address = "10.77.2.12"
  port = 97
  max_conns = 1000000000
  [[service.backend]]
  address = "10.77.2.13"
  port = 97
  max_conns = 1000000000

[[service]]            # ... and allowed sources that hold their fresh clients
name = "bench-guarded"
vip = "10.77.1.109"
port = 81
allowed_sources = ["10.77.1.0/28", "10.77.3.0/24", "192.0.2.0/24", "198.51.100.0/24"]
  [[service.backend]]
  address = "10.77.2.11"
  port = 98
  [[service.backend]]
  address = "10.77.2.12"
  port = 98
  [[service.backend]]
  address = "10.77.2.13"
  port = 98

[[service]]            # IPv6 persistence (UDP: its second datagram records)
name = "persist6"
vip = "fd77:1::100"
port = 5000
protocol = "udp"
persistence_s = 10
  [[service.backend]]
  address = "fd77:2::11"
  port = 5000
  [[service.backend]]
  address = "fd77:2::12"
  port = 5000

[[service]]            # IPv6 connection limits
name = "limited6"
vip = "fd77:1::100"
port = 5001
protocol = "udp"
on_no_backend = "drop"
  [[service.backend]]
  address = "fd77:2::11"
  port = 5001
  max_conns = 1
  [[service.backend]]
  address = "fd77:2::12"
  port = 5001
  max_conns = 1

[[service]]            # IPv6: only fd77:1::/120 may connect
name = "guarded6"
vip = "fd77:1::100"
port = 88
allowed_sources = ["fd77:1::/120"]
  [[service.backend]]
  address = "fd77:2::11"
  port = 96

[[service]]            # full NAT: from the load balancer's address, 4 ports
name = "fullnat"
vip = "10.77.1.110"
port = 80
forwarding = "fullnat"
snat_addresses = ["10.77.2.1"]
snat_ports = "40000-40003"
  [[service.backend]]
  address = "10.77.2.11"
  port = 8090

[[service]]            # full NAT on another VIP, to the same backend and pool
name = "fullnat-shared"
vip = "10.77.1.111"
port = 80
forwarding = "fullnat"
snat_addresses = ["10.77.2.1"]
snat_ports = "40000-40003"
  [[service.backend]]
  address = "10.77.2.11"
  port = 8090

[[service]]            # full NAT over two backends in turn (rr)
name = "fullnat-rr"
vip = "10.77.1.110"
port = 83
scheduler = "rr"
forwarding = "fullnat"
snat_addresses = ["10.77.2.1"]
snat_ports = "42000-42063"
  [[service.backend]]
  address = "10.77.2.11"
  port = 8093
  [[service.backend]]
  address = "10.77.2.12"
  port = 8093

[[service]]            # full NAT, one port, dropped when it is taken
name = "fullnat-one"
vip = "10.77.1.110"
port = 81
protocol = "udp"
forwarding = "fullnat"
on_no_backend = "drop"
snat_addresses = ["10.77.2.1"]
snat_ports = "41000"
  [[service.backend]]
  address = "10.77.2.12"
  port = 8091

[[service]]            # full NAT, one port, answered when it is taken
name = "fullnat-one-reject"
vip = "10.77.1.110"
port = 84
protocol = "udp"
forwarding = "fullnat"
snat_addresses = ["10.77.2.1"]
snat_ports = "41001"
  [[service.backend]]
  address = "10.77.2.12"
  port = 8094

[[service]]            # full NAT from the route's own source (no pool named): each
name = "fullnat-default" # backend's flows from the address of the link it is on
vip = "10.77.1.110"
port = 82
forwarding = "fullnat"
  [[service.backend]]
  address = "10.77.2.13"
  port = 8092
  [[service.backend]]
  address = "10.77.1.50"
  port = 8092

[[service]]            # the benchmarks' full NAT: three backends, ports for every sample
name = "bench-fullnat"
vip = "10.77.1.109"
port = 82
forwarding = "fullnat"
snat_addresses = ["10.77.2.1"]
snat_ports = "1024-65535"
  [[service.backend]]
  address = "10.77.2.11"
  port = 99
  [[service.backend]]
  address = "10.77.2.12"
  port = 99
  [[service.backend]]
  address = "10.77.2.13"
  port = 99

[[service]]            # IPv6 full NAT
name = "fullnat6"
vip = "fd77:1::100"
port = 90
forwarding = "fullnat"
snat_addresses = ["fd77:2::1"]
snat_ports = "40000-40001"
  [[service.backend]]
  address = "fd77:2::11"
  port = 8090
"#;

/// Full NAT (`forwarding = "fullnat"`): port 80 TCP to `WEB1`:8090 from
/// `LB_BACKEND_SIDE`:40000-40003; 83 TCP `rr` over `WEB1` and `WEB2`:8093
/// from 42000-42063; 81 UDP to `WEB2`:8091 from one port
/// (41000), dropped when it is taken; 82 TCP to `WEB3`:8092 from the
/// default pool (the route's source, `LB_BACKEND_SIDE`). IPv6: `VIP6`
/// port 90 to `WEB1_6`:8090 from `LB_BACKEND_SIDE6`:40000-40001.
pub const VIP_FULLNAT: Ipv4Addr = Ipv4Addr::new(10, 77, 1, 110);
/// A second full-NAT service (port 80) with `VIP_FULLNAT`:80's backend and pool.
pub const VIP_FULLNAT_SHARED: Ipv4Addr = Ipv4Addr::new(10, 77, 1, 111);

/// Persistence (`persistence_s = 10`): port 80 Maglev, 81 rr, 82 by /24.
pub const VIP_PERSIST: Ipv4Addr = Ipv4Addr::new(10, 77, 1, 106);
/// Connection limits (`max_conns`): port 80 Maglev (web1 2, web2 1,
/// dropped when full), 81 rr (1 each, answered), 82 lc (1 each, dropped).
pub const VIP_LIMITED: Ipv4Addr = Ipv4Addr::new(10, 77, 1, 107);
/// `allowed_sources = ["10.77.1.0/28", "192.0.2.0/24"]`, port 80.
pub const VIP_GUARDED: Ipv4Addr = Ipv4Addr::new(10, 77, 1, 108);
/// The benchmarks' rows: port 80 Maglev with `max_conns` far off, 81
/// Maglev with `allowed_sources` that hold `10.77.3.0/24`, 82 full NAT
/// from `LB_BACKEND_SIDE`:1024-65535.
pub const VIP_BENCH: Ipv4Addr = Ipv4Addr::new(10, 77, 1, 109);

pub const VIP_REJECTING: Ipv4Addr = Ipv4Addr::new(10, 77, 1, 103);
/// Direct routing (`forwarding = "dsr"`): port 80 to `WEB2`, 81 to a backend
/// behind a gateway (refused), 82 to an on-link backend without a neighbour,
/// 83 to a backend behind a gateway without a neighbour (refused).
pub const VIP_DSR: Ipv4Addr = Ipv4Addr::new(10, 77, 1, 105);
/// An on-link backend with no neighbour entry (direct routing's slow path).
pub const DSR_NO_NEIGH_BACKEND: Ipv4Addr = Ipv4Addr::new(10, 77, 2, 51);
pub const VIP_SCHEDULERS: Ipv4Addr = Ipv4Addr::new(10, 77, 1, 104);

/// The namespace, removed on drop (also when a test panics).
pub struct FixtureNs {
    pub name: String,
}

impl FixtureNs {
    pub fn create(name: &str) -> Self {
        let ns = Self { name: name.to_owned() };
        ns.remove();
        sh(&["ip", "netns", "add", name]);
        let n = name;
        ns_sh(n, &["ip", "link", "set", "lo", "up"]);
        for (dev, mac, peer, peer_mac) in [
            (IF_CLIENT, IF_CLIENT_MAC, "fx-cp", [0x02, 0, 0, 0, 0, 0xc2]),
            (IF_BACKEND, IF_BACKEND_MAC, "fx-bp", [0x02, 0, 0, 0, 0, 0xb2]),
        ] {
            sh(&[
                "ip",
                "-n",
                n,
                "link",
                "add",
                dev,
                "address",
                &mac_str(mac),
                "type",
                "veth",
                "peer",
                "name",
                peer,
                "address",
                &mac_str(peer_mac),
            ]);
            ns_sh(n, &["ip", "link", "set", dev, "up"]);
            ns_sh(n, &["ip", "link", "set", peer, "up"]);
        }
        ns_sh(n, &["ip", "addr", "add", &format!("{LB_CLIENT_SIDE}/24"), "dev", IF_CLIENT]);
        ns_sh(n, &["ip", "addr", "add", &format!("{VIP}/32"), "dev", IF_CLIENT]);
        ns_sh(n, &["ip", "addr", "add", &format!("{LB_BACKEND_SIDE}/24"), "dev", IF_BACKEND]);
        ns_sh(n, &["sysctl", "-qw", "net.ipv4.ip_forward=1"]);
        ns_sh(n, &["sysctl", "-qw", "net.ipv6.conf.all.forwarding=1"]);
        // `nodad`: usable at once, not tentative for a second.
        for (addr, dev) in [
            (format!("{LB_CLIENT_SIDE6}/64"), IF_CLIENT),
            (format!("{VIP6}/128"), IF_CLIENT),
            (format!("{VIP6_NO_NEIGH}/128"), IF_CLIENT),
            (format!("{VIP6_REJECTING}/128"), IF_CLIENT),
            (format!("{VIP6_DSR}/128"), IF_CLIENT),
            (format!("{LB_BACKEND_SIDE6}/64"), IF_BACKEND),
        ] {
            ns_sh(n, &["ip", "-6", "addr", "add", &addr, "dev", dev, "nodad"]);
        }
        // A smaller MTU on the backend side, for the "too big" case.
        ns_sh(n, &["ip", "link", "set", IF_BACKEND, "mtu", &BACKEND_SIDE_MTU.to_string()]);
        add_neighbours(n);
        ns
    }

    fn remove(&self) {
        if exists(&self.name) {
            let _ = output(&["ip", "netns", "del", &self.name]);
        }
    }
}

impl Drop for FixtureNs {
    fn drop(&mut self) {
        self.remove();
    }
}

/// Routes and permanent neighbour entries of the fixture namespace `n`:
/// every host the fixtures expect to reach, except the "no neighbour" ones.
fn add_neighbours(n: &str) {
    // The backend that shares an index slot lives behind the backend side too.
    let (collider, _) = slot_sharing_backend();
    ns_sh(n, &["ip", "route", "add", "10.77.4.0/24", "dev", IF_BACKEND]);
    // Clients behind a router on the client side (the benchmarks' fresh
    // clients): their route leaves by the client side, as the reverse-path
    // check wants.
    ns_sh(n, &["ip", "route", "add", "10.77.3.0/24", "via", &CLIENT.to_string(), "dev", IF_CLIENT]);
    // Likewise the data plane benchmark's many clients (its 1M live flows,
    // fillers and spread flows: 10.77.64.0/18), whose packets meet the
    // strict reverse-path check before the connection table.
    ns_sh(
        n,
        &["ip", "route", "add", "10.77.64.0/18", "via", &CLIENT.to_string(), "dev", IF_CLIENT],
    );
    // The IPv6 benchmark's fresh clients, likewise behind the client.
    ns_sh(
        n,
        &["ip", "-6", "route", "add", "fd77:3::/64", "via", &CLIENT6.to_string(), "dev", IF_CLIENT],
    );
    // A network with an unreachable route: the FIB answers "unreachable"
    // (a missing route would read as "not forwarded", like a local address).
    ns_sh(n, &["ip", "route", "add", "unreachable", "10.77.9.0/24"]);
    // Direct routing's backend 10.77.5.7 is behind a gateway (web3), and
    // 10.77.6.7 behind one whose neighbour entry is missing.
    ns_sh(n, &["ip", "route", "add", "10.77.5.0/24", "via", &WEB3.to_string()]);
    ns_sh(n, &["ip", "route", "add", "10.77.6.0/24", "via", "10.77.2.52"]);
    ns_sh(
        n,
        &[
            "ip",
            "neigh",
            "replace",
            &collider.to_string(),
            "lladdr",
            &mac_str(COLLIDER_MAC),
            "dev",
            IF_BACKEND,
            "nud",
            "permanent",
        ],
    );
    let neighbours: [(std::net::IpAddr, Mac, &str); 8] = [
        (CLIENT.into(), CLIENT_MAC, IF_CLIENT),
        (HAIRPIN.into(), HAIRPIN_MAC, IF_CLIENT),
        (WEB1.into(), WEB_MACS[0], IF_BACKEND),
        (WEB2.into(), WEB_MACS[1], IF_BACKEND),
        (WEB3.into(), WEB_MACS[2], IF_BACKEND),
        (CLIENT6.into(), CLIENT_MAC, IF_CLIENT),
        (WEB1_6.into(), WEB_MACS[0], IF_BACKEND),
        (WEB2_6.into(), WEB_MACS[1], IF_BACKEND),
    ];
    for (addr, mac, dev) in neighbours {
        ns_sh(
            n,
            &[
                "ip",
                "neigh",
                "replace",
                &addr.to_string(),
                "lladdr",
                &mac_str(mac),
                "dev",
                dev,
                "nud",
                "permanent",
            ],
        );
    }
}

/// Pins the calling thread to the CPU it runs on now.
fn pin_to_this_cpu() {
    // SAFETY: sched_getcpu has no arguments; cpu_set_t is plain data,
    // zeroed then filled by the CPU_* helpers, and outlives the call.
    unsafe {
        let cpu = usize::try_from(libc::sched_getcpu())
            .unwrap_or_else(|_| panic!("sched_getcpu: {}", std::io::Error::last_os_error()));
        let mut set: libc::cpu_set_t = std::mem::zeroed();
        libc::CPU_SET(cpu, &mut set);
        let rc = libc::sched_setaffinity(0, size_of::<libc::cpu_set_t>(), &raw const set);
        assert_eq!(rc, 0, "sched_setaffinity: {}", std::io::Error::last_os_error());
    }
}

pub fn mac_str(mac: Mac) -> String {
    mac.iter().map(|b| format!("{b:02x}")).collect::<Vec<_>>().join(":")
}

/// Names a file to load as the XDP object instead of lb-ctl's embedded
/// one: `cargo xtask bench ab` runs the current harness over another
/// version's object this way.
pub const OBJECT_VAR: &str = "LB_EBPF_OBJECT";

/// The XDP object the fixtures and benchmarks load: the file `OBJECT_VAR`
/// names, else `lb_ctl::EBPF_OBJECT`. Read once per process.
pub fn ebpf_object() -> &'static [u8] {
    static OBJECT: OnceLock<&'static [u8]> = OnceLock::new();
    OBJECT.get_or_init(|| match std::env::var_os(OBJECT_VAR) {
        Some(path) => {
            let bytes = std::fs::read(&path)
                .unwrap_or_else(|e| panic!("{OBJECT_VAR}={}: {e}", path.display()));
            eprintln!("XDP object: {} ({OBJECT_VAR}), not the built-in one", path.display());
            bytes.leak()
        }
        None => EBPF_OBJECT,
    })
}

/// `ebpf_object()` loaded (not attached) by lb-ctl's loader. An object
/// that lacks a map the controller writes (an older version's) fails here,
/// the map named in the message.
pub fn load_maps(conntrack_max: u32, interfaces: &[String]) -> KernelMaps {
    load_maps_sized(MapSizes::with_conntrack_max(conntrack_max), interfaces)
}

/// `load_maps` with every map sized at load given (`[dataplane]`'s sizes).
pub fn load_maps_sized(sizes: MapSizes, interfaces: &[String]) -> KernelMaps {
    KernelMaps::load(ebpf_object(), sizes, interfaces).unwrap_or_else(|e| {
        let from = std::env::var_os(OBJECT_VAR)
            .map_or_else(String::new, |p| format!(" {} ({OBJECT_VAR})", p.display()));
        panic!("loading the XDP object{from}: {e}")
    })
}

/// The program loaded (not attached) with the fixture config applied. Must be
/// created and used on a thread inside the fixture namespace.
pub struct Loaded {
    pub reconciler: Reconciler<KernelMaps>,
    /// `lb_xdp`, a handle of its own (the reconciler holds the object).
    pub program: Xdp,
}

impl Loaded {
    /// Loaded with the data plane's clock stopped: time moves only when a
    /// test moves it (`reconciler.advance_clock()`, a tick each), so
    /// that no tick can fall between two packets of a case.
    pub fn new(conntrack_max: u32) -> Self {
        Self::with_sizes(MapSizes::with_conntrack_max(conntrack_max))
    }

    /// Loaded with the data plane's clock running, as under a controller.
    /// The calling thread stays on the CPU it is on from here: the flow
    /// cache, next-hop cache and answer budget are per CPU, and a test that
    /// fills one with a packet and reads it with the next must not see the
    /// scheduler move it to another CPU in between.
    pub fn with_running_clock(conntrack_max: u32) -> Self {
        Self::sized(MapSizes::with_conntrack_max(conntrack_max))
    }

    /// `new` with the maps sized at load as `sizes` says, clock stopped.
    pub fn with_sizes(sizes: MapSizes) -> Self {
        let mut loaded = Self::sized(sizes);
        loaded.reconciler.maps_mut().stop_clock().expect("stopping the data plane's clock");
        loaded
    }

    /// Loaded with the data plane's clock running, as `with_running_clock`.
    fn sized(sizes: MapSizes) -> Self {
        pin_to_this_cpu();
        let config = config::parse(&config()).expect("fixture config");
        let maps = load_maps_sized(sizes, &config.dataplane.interfaces);
        let mut reconciler = Reconciler::new(maps);
        reconciler.apply(&config.services).expect("applying the fixture config");
        let program = testrun::program(reconciler.maps_mut().ebpf_mut(), "lb_xdp");
        Self { reconciler, program }
    }

    pub fn ifindex(name: &str) -> u32 {
        netdev::ifindex(name).unwrap_or_else(|| panic!("no interface {name}"))
    }

    /// Runs one frame received on `ingress`.
    pub fn run(&self, frame: &[u8], ingress: &str) -> Outcome {
        testrun::run(&self.program, frame, Self::ifindex(ingress), 1)
    }

    /// Runs one frame received on `ingress` with `meta` already in its
    /// XDP metadata area.
    pub fn run_after_meta(&self, meta: &[u8], frame: &[u8], ingress: &str) -> Outcome {
        testrun::run_after_meta(&self.program, meta, frame, Self::ifindex(ingress), 1)
    }

    pub fn counter(&mut self, counter: Counter) -> u64 {
        let map: PerCpuArray<&MapData, u64> = PerCpuArray::try_from(
            self.reconciler.maps_mut().ebpf_mut().map("lb_counters").expect("lb_counters"),
        )
        .expect("lb_counters type");
        map.get(&(counter as u32), 0).map_or(0, |v| v.iter().sum())
    }

    fn conntrack(&mut self) -> &ConnTable {
        self.reconciler.maps_mut().conn_table()
    }

    /// Where `flow`'s connection entry is, and what it says (the entry of
    /// the same client and ports whose backend serves the flow's VIP).
    fn conn_at(&mut self, flow: &Flow) -> Option<(At, Conn)> {
        let backends = self.reconciler.applied().v4.backends.clone();
        let serves = |c: &Conn| {
            backends
                .get(&c.backend_id)
                .is_none_or(|b| (b.vip, b.vport, b.proto) == (flow.dst, flow.dport, flow.proto))
        };
        self.conntrack().find(flow, serves)
    }

    /// One flow's connection entry.
    pub fn conn(&mut self, flow: &Flow) -> Option<Conn> {
        self.conn_at(flow).map(|(_, conn)| conn)
    }

    /// Sets a backend's connection counts, as the controller's recount would.
    pub fn set_conns(&mut self, backend_id: u32, conns: BackendConns) {
        self.reconciler
            .maps_mut()
            .backend_conns_mut()
            .set(backend_id, conns, 0)
            .expect("writing lb_be_conns");
    }

    /// The id the controller gave the backend `address:port` of the service on `vip:vport`.
    pub fn backend_id(&self, vip: Ipv4Addr, vport: u16, address: Ipv4Addr, port: u16) -> u32 {
        let image = self.reconciler.applied();
        image
            .v4
            .backends
            .iter()
            .find(|(_, b)| {
                b.vip == vip.octets()
                    && b.vport == vport
                    && b.addr == address.octets()
                    && b.port == port
            })
            .map(|(id, _)| *id)
            .expect("backend in the applied image")
    }

    /// Deletes one flow's connection entry.
    pub fn forget(&mut self, flow: &Flow) {
        if let Some((at, _)) = self.conn_at(flow) {
            self.conntrack().remove(at);
        }
    }

    /// Empties the connection table (what a restart or failover does).
    pub fn flush_conntrack(&mut self) {
        self.conntrack().clear();
    }

    /// Empties `flow`'s slot of every CPU's flow cache, which would
    /// otherwise keep answering for a flow whose connection entry is gone.
    pub fn clear_flow_cache(&mut self, flow: &Flow) {
        let ebpf = self.reconciler.maps_mut().ebpf_mut();
        let mut cache: Array<&mut MapData, FlowCacheEntry> =
            Array::try_from(ebpf.map_mut("lb_flow_cache").expect("lb_flow_cache"))
                .expect("lb_flow_cache type");
        let slot = flow_cache_slot(flow);
        // However many regions lb-ctl sized the map for.
        for cpu in 0..cache.len() / FLOW_CACHE_SLOTS {
            let index = cpu_slot(cpu, FLOW_CACHE_SLOTS, slot);
            cache.set(index, FlowCacheEntry::default(), 0).expect("clearing the flow cache");
        }
    }

    /// A TCP handshake as a real client and backend make it: the client's
    /// SYN, the SYN-ACK of the backend it was sent to (sequence number
    /// `BACKEND_ISN`), and the client's ACK of it. Returns that backend.
    pub fn handshake(&self, client: (Ipv4Addr, u16), vip: (Ipv4Addr, u16)) -> (Ipv4Addr, u16) {
        let syn = Ipv4::tcp(client, vip, TCP_SYN, b"");
        let out = self.run(&from_client(&syn), IF_CLIENT);
        assert_eq!(out.action, XDP_REDIRECT, "the SYN of {client:?} is forwarded");
        let backend = destination(&out.frame);
        let mut syn_ack = Ipv4::tcp(backend, client, TCP_SYN | TCP_ACK, b"");
        if let L4::Tcp { seq, ack, .. } = &mut syn_ack.l4 {
            (*seq, *ack) = (BACKEND_ISN, CLIENT_ISN + 1);
        }
        let out = self.run(&from_web1(&syn_ack), IF_BACKEND);
        assert_eq!(out.action, XDP_REDIRECT, "the SYN-ACK from {backend:?} is forwarded");
        let ack = handshake_ack(client, vip);
        let out = self.run(&from_client(&ack), IF_CLIENT);
        assert_eq!(out.action, XDP_REDIRECT, "the ACK of {client:?} is forwarded");
        assert_eq!(destination(&out.frame), backend, "the ACK goes where the SYN went");
        backend
    }

    pub fn conntrack_len(&mut self) -> usize {
        self.conntrack().len()
    }
}

/// `p` as the fixture's client sends it to the load balancer.
pub fn from_client(p: &Ipv4) -> Vec<u8> {
    p.frame(IF_CLIENT_MAC, CLIENT_MAC)
}

/// `p` as web1 sends it to the load balancer.
pub fn from_web1(p: &Ipv4) -> Vec<u8> {
    p.frame(IF_BACKEND_MAC, WEB_MACS[0])
}

/// `p` as web2 sends it to the load balancer.
pub fn from_web2(p: &Ipv4) -> Vec<u8> {
    p.frame(IF_BACKEND_MAC, WEB_MACS[1])
}

/// The sequence number a fixture backend's SYN-ACK carries (`Loaded::handshake`).
pub const BACKEND_ISN: u32 = 0x5eed_0000;
/// The sequence number of every fixture client's SYN (`packet::Ipv4::tcp`).
pub const CLIENT_ISN: u32 = 1000;

/// The client's ACK that completes `Loaded::handshake`'s handshake.
pub fn handshake_ack(client: (Ipv4Addr, u16), vip: (Ipv4Addr, u16)) -> Ipv4 {
    let mut ack = Ipv4::tcp(client, vip, TCP_ACK, b"");
    if let L4::Tcp { seq, ack, .. } = &mut ack.l4 {
        (*seq, *ack) = (CLIENT_ISN + 1, BACKEND_ISN + 1);
    }
    ack
}

/// The destination address and port of a forwarded frame (no IP options).
pub fn destination(frame: &[u8]) -> (Ipv4Addr, u16) {
    let addr = Ipv4Addr::new(frame[30], frame[31], frame[32], frame[33]);
    (addr, u16::from_be_bytes([frame[36], frame[37]]))
}
