//! Two load balancer nodes side by side, in network namespaces:
//!
//! ```text
//!  client 10.77.0.10 ── router ── front LAN ──┬─ lb1 10.77.1.2 ──┬── back LAN ── web1 10.77.2.11
//!          10.77.0.1 ┘  10.77.1.1   (bridge)  └─ lb2 10.77.1.3 ──┘   (bridge)  ├─ web2 10.77.2.12
//!                                                  10.77.2.2/.3                 └─ web3 10.77.2.13
//! ```
//!
//! Both nodes run `lb-ctl run` with the same config (services on the VIP
//! 10.77.1.100). Who gets the VIP's traffic, and who routes the backends'
//! replies, is the mode's business:
//! - `Vrrp`: keepalived moves the VIP (front) and the backends' gateway
//!   10.77.2.1 (back) between the nodes, as one sync group;
//! - `Ecmp`: the router spreads the VIP over both nodes with an
//!   equal-cost multipath route (layer-4 hash), the backends their replies
//!   likewise; each node holds the VIP on `lo`;
//! - `Bgp`: the same, but the router's route is BIRD's, merged from what
//!   each node's BIRD announces of the routes its controller writes
//!   (`[bgp]`, the shipped `examples/bird/` configs), with or without BFD.
//!
//! `start_dual_stack` gives every link an IPv6 address too (client side
//! fd77::/64, front fd77:1::/64 with the router on ::1 and the nodes on
//! ::2 and ::3, back fd77:2::/64 likewise, the backends on their
//! `BACKENDS6` addresses) and the services again on the IPv6 VIP
//! fd77:1::100, routed like the IPv4 one by BGP (multipath modes only:
//! keepalived does not carry it).
use std::{
    path::PathBuf,
    process::{Child, Command, Stdio},
    time::{Duration, Instant},
};

use crate::{
    bird::{self, Bird},
    harness::{Controller, Setup},
    netns::{in_ns, ns_sh, sh},
    topology::{
        BACKENDS, BACKENDS6, Topology, VIP, VIP6, addr, addr6, bridge_port, endpoint_offloads, veth,
    },
};

pub const CLIENT_ADDR: &str = "10.77.0.10";
const ROUTER_CLIENT_SIDE: &str = "10.77.0.1";
const ROUTER_FRONT: &str = "10.77.1.1";
/// The nodes' own addresses: front LAN, back LAN.
pub const NODES: [(&str, &str, &str); 2] =
    [("lb1", "10.77.1.2", "10.77.2.2"), ("lb2", "10.77.1.3", "10.77.2.3")];
/// `start_dual_stack`'s IPv6 addresses, as the IPv4 ones above.
pub const CLIENT_ADDR6: &str = "fd77::10";
const ROUTER_CLIENT_SIDE6: &str = "fd77::1";
const ROUTER_FRONT6: &str = "fd77:1::1";
pub const NODES6: [(&str, &str); 2] = [("fd77:1::2", "fd77:2::2"), ("fd77:1::3", "fd77:2::3")];
/// The backends' gateway, which floats with the VIP (`Vrrp`).
pub const BACKEND_GATEWAY: &str = "10.77.2.1";

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Mode {
    Vrrp,
    Ecmp,
    Bgp { bfd: bool },
}

impl Mode {
    /// The router spreads the VIP over both nodes, by hand or by BGP.
    fn multipath(self) -> bool {
        matches!(self, Self::Ecmp | Self::Bgp { .. })
    }
}

/// The controllers' setup in `Bgp` mode: `[bgp]` (a second to withdraw
/// and to settle, five times the health checks' interval) and fast health
/// checks.
const BGP_SETUP: Setup = Setup {
    checks: Some(&crate::harness::FAST_CHECKS),
    web: "",
    echo: "",
    udp: "",
    tables: "\n[bgp]\nwithdraw_delay_ms = 1000\nannounce_delay_ms = 1000\n",
    dataplane: "",
    conntrack_max: None,
    resolv_conf: None,
    ipv6: false,
    routed: false,
};

pub struct Ha {
    pub prefix: String,
    /// The controllers, by node (`NODES` order). Declared before the
    /// namespaces: dropped (stopped) first.
    pub nodes: Vec<Controller>,
    keepalived: Vec<Option<Child>>,
    /// `Bgp`: the router's BIRD, then each node's.
    pub router_bird: Option<Bird>,
    pub node_birds: Vec<Bird>,
    /// The backends' servers and their namespaces' names.
    backends: Topology,
}

impl Ha {
    pub fn client(&self) -> String {
        format!("{}-client", self.prefix)
    }
    pub fn router(&self) -> String {
        format!("{}-router", self.prefix)
    }
    pub fn node(&self, i: usize) -> String {
        format!("{}-{}", self.prefix, NODES[i].0)
    }
    /// The namespace of backend `name` (`web1`…).
    pub fn web(&self, name: &str) -> String {
        self.backends.web(name)
    }
    fn front(&self) -> String {
        format!("{}-front", self.prefix)
    }
    fn back(&self) -> String {
        format!("{}-back", self.prefix)
    }
    fn namespaces(&self) -> Vec<String> {
        let mut all = vec![self.client(), self.router(), self.front(), self.back()];
        all.extend((0..NODES.len()).map(|i| self.node(i)));
        all.extend(BACKENDS.iter().map(|(name, _)| self.backends.web(name)));
        all
    }
    fn link_pin_dir(&self) -> PathBuf {
        PathBuf::from(format!("/sys/fs/bpf/{}-ha-links", self.prefix))
    }
    fn keepalived_dir(&self, i: usize) -> PathBuf {
        std::env::temp_dir().join(format!("{}-keepalived-{}", self.prefix, NODES[i].0))
    }

    /// Builds the topology, starts the backends and a controller on each
    /// node (same config), and in `Vrrp` mode keepalived on each node (lb1
    /// MASTER); returns once lb1 holds the VIP (`Vrrp`) or both nodes run.
    pub fn start(prefix: &str, mode: Mode) -> Self {
        Self::start_with(prefix, mode, Setup::default())
    }

    /// `start`, dual stack: the links' IPv6 addresses and the services on
    /// the IPv6 VIP too (the module's comment).
    pub fn start_dual_stack(prefix: &str, mode: Mode) -> Self {
        assert!(mode.multipath(), "the IPv6 VIP is routed by BGP only: a multipath mode");
        Self::start_with(prefix, mode, Setup { ipv6: true, ..Setup::default() })
    }

    /// `start`, with the services' extra keys of `setup` (its `web`,
    /// `echo`, `ipv6`; BGP's own settings are added in `Bgp` mode).
    pub fn start_with(prefix: &str, mode: Mode, wanted: Setup) -> Self {
        let ipv6 = wanted.ipv6;
        let mut ha = Self {
            prefix: prefix.to_owned(),
            nodes: Vec::new(),
            keepalived: Vec::new(),
            router_bird: None,
            node_birds: Vec::new(),
            backends: Topology::named(prefix),
        };
        ha.destroy();
        ha.build(mode);
        if ipv6 {
            ha.build_ipv6(mode);
            ha.backends.ipv6 = true;
        }
        ha.backends.start_backends(&crate::harness::built_bin("lb-lab").to_string_lossy());
        let mut setup = if matches!(mode, Mode::Bgp { .. }) { BGP_SETUP } else { Setup::default() };
        (setup.ipv6, setup.web, setup.echo) = (ipv6, wanted.web, wanted.echo);
        for (i, (node, ..)) in NODES.iter().enumerate() {
            let name = format!("{prefix}-{node}");
            ha.nodes.push(Controller::start(&ha.node(i), &name, setup, [Some(1); 3]));
        }
        if let Mode::Bgp { bfd } = mode {
            let router = ha.router();
            ha.router_bird = Some(Bird::start(
                &router,
                &format!("{prefix}-bird-router"),
                &bird::router_config(bfd),
            ));
            for (i, (node, front, _)) in NODES.iter().enumerate() {
                let config = bird::node_config(front, bfd);
                ha.node_birds.push(Bird::start(
                    &ha.node(i),
                    &format!("{prefix}-bird-{node}"),
                    &config,
                ));
            }
            ha.wait_next_hops(&[0, 1], Duration::from_secs(20));
        }
        if mode == Mode::Vrrp {
            for i in 0..NODES.len() {
                ha.keepalived.push(None);
                ha.start_keepalived(i);
            }
            ha.wait_vip_on(0, Duration::from_secs(10));
        }
        ha
    }

    fn build(&self, mode: Mode) {
        for ns in self.namespaces() {
            sh(&["ip", "netns", "add", &ns]);
            ns_sh(&ns, &["ip", "link", "set", "lo", "up"]);
        }
        let (client, router, front, back) =
            (self.client(), self.router(), self.front(), self.back());
        for (ns, bridge) in [(&front, "br0"), (&back, "br0")] {
            ns_sh(ns, &["ip", "link", "add", bridge, "type", "bridge"]);
            ns_sh(ns, &["ip", "link", "set", bridge, "up"]);
        }
        veth(&client, "c0", &router, "r-c");
        addr(&client, "c0", &format!("{CLIENT_ADDR}/24"));
        ns_sh(&client, &["ip", "route", "add", "default", "via", ROUTER_CLIENT_SIDE]);
        endpoint_offloads(&client, "c0");

        veth(&router, "r-f", &front, "f-r");
        bridge_port(&front, "f-r");
        addr(&router, "r-c", &format!("{ROUTER_CLIENT_SIDE}/24"));
        addr(&router, "r-f", &format!("{ROUTER_FRONT}/24"));
        ns_sh(&router, &["sysctl", "-qw", "net.ipv4.ip_forward=1"]);

        let pins = self.link_pin_dir();
        std::fs::create_dir_all(&pins).expect("creating the link pin directory");
        for (i, (name, front_addr, back_addr)) in NODES.iter().enumerate() {
            let node = self.node(i);
            let (front_port, back_port) = (format!("f-{name}"), format!("b-{name}"));
            veth(&node, "lb-c", &front, &front_port);
            veth(&node, "lb-b", &back, &back_port);
            bridge_port(&front, &front_port);
            bridge_port(&back, &back_port);
            addr(&node, "lb-c", &format!("{front_addr}/24"));
            addr(&node, "lb-b", &format!("{back_addr}/24"));
            ns_sh(&node, &["ip", "route", "add", "default", "via", ROUTER_FRONT]);
            ns_sh(&node, &["sysctl", "-qw", "net.ipv4.ip_forward=1"]);
            if mode.multipath() {
                addr(&node, "lo", &format!("{VIP}/32"));
            }
            // The bridge ports facing a node must run XDP themselves for
            // the node's XDP_TX/XDP_REDIRECT frames to arrive (see topology.rs).
            for (ns, dev) in [(front.clone(), front_port), (back.clone(), back_port)] {
                let pin = pins.join(&dev);
                in_ns(&ns, move || {
                    let ifindex = lb_ctl::write::netdev::ifindex(&dev).expect("bridge port");
                    crate::testrun::attach_pass_pinned(ifindex, &pin);
                });
            }
        }
        let ecmp = |ns: &str, prefix: &str, hops: &[&str]| {
            let mut args = vec!["ip", "route", "replace", prefix];
            for hop in hops {
                args.extend(["nexthop", "via", hop]);
            }
            ns_sh(ns, &["sysctl", "-qw", "net.ipv4.fib_multipath_hash_policy=1"]);
            ns_sh(ns, &args);
        };
        match mode {
            Mode::Ecmp => ecmp(&router, &format!("{VIP}/32"), &[NODES[0].1, NODES[1].1]),
            // BIRD installs the route; the kernel hashes by layer 4.
            Mode::Bgp { .. } => {
                ns_sh(&router, &["sysctl", "-qw", "net.ipv4.fib_multipath_hash_policy=1"]);
            }
            Mode::Vrrp => {}
        }
        for (name, address) in BACKENDS {
            let web = self.backends.web(name);
            let port = format!("b-{name}");
            veth(&web, "eth0", &back, &port);
            bridge_port(&back, &port);
            addr(&web, "eth0", &format!("{address}/24"));
            endpoint_offloads(&web, "eth0");
            match mode {
                Mode::Vrrp => {
                    ns_sh(&web, &["ip", "route", "add", "default", "via", BACKEND_GATEWAY]);
                }
                Mode::Ecmp | Mode::Bgp { .. } => {
                    ecmp(&web, "default", &[NODES[0].2, NODES[1].2]);
                }
            }
        }
    }

    /// The IPv6 addresses and routes of `start_dual_stack`, beside `build`'s.
    fn build_ipv6(&self, mode: Mode) {
        let (client, router) = (self.client(), self.router());
        addr6(&client, "c0", &format!("{CLIENT_ADDR6}/64"));
        ns_sh(&client, &["ip", "-6", "route", "add", "default", "via", ROUTER_CLIENT_SIDE6]);
        addr6(&router, "r-c", &format!("{ROUTER_CLIENT_SIDE6}/64"));
        addr6(&router, "r-f", &format!("{ROUTER_FRONT6}/64"));
        ns_sh(&router, &["sysctl", "-qw", "net.ipv6.conf.all.forwarding=1"]);
        ns_sh(&router, &["sysctl", "-qw", "net.ipv6.fib_multipath_hash_policy=1"]);
        for (i, (front_addr, back_addr)) in NODES6.iter().enumerate() {
            let node = self.node(i);
            addr6(&node, "lb-c", &format!("{front_addr}/64"));
            addr6(&node, "lb-b", &format!("{back_addr}/64"));
            ns_sh(&node, &["ip", "-6", "route", "add", "default", "via", ROUTER_FRONT6]);
            ns_sh(&node, &["sysctl", "-qw", "net.ipv6.conf.all.forwarding=1"]);
            if mode.multipath() {
                addr6(&node, "lo", &format!("{VIP6}/128"));
            }
        }
        if mode == Mode::Ecmp {
            let mut args = vec!["ip", "-6", "route", "replace", VIP6];
            for (hop, _) in NODES6 {
                args.extend(["nexthop", "via", hop]);
            }
            ns_sh(&router, &args);
        }
        for (name, address) in BACKENDS6 {
            let web = self.backends.web(name);
            addr6(&web, "eth0", &format!("{address}/64"));
            let mut args = vec!["ip", "-6", "route", "replace", "default"];
            for (_, hop) in NODES6 {
                args.extend(["nexthop", "via", hop]);
            }
            ns_sh(&web, &args);
        }
    }

    /// Starts keepalived on node `i` (lb1 MASTER, priority 150; lb2 BACKUP, 100).
    pub fn start_keepalived(&mut self, i: usize) {
        let dir = self.keepalived_dir(i);
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).expect("keepalived directory");
        let conf = dir.join("keepalived.conf");
        std::fs::write(&conf, keepalived_config(i)).expect("keepalived config");
        let log = std::fs::File::create(dir.join("keepalived.log")).expect("keepalived log");
        let pid = |name: &str| dir.join(name).to_string_lossy().into_owned();
        let child = Command::new("ip")
            .args(["netns", "exec", &self.node(i), "keepalived", "--dont-fork", "--log-console"])
            .args(["--log-detail", "--use-file"])
            .arg(&conf)
            .args(["--pid", &pid("keepalived.pid"), "--vrrp_pid", &pid("vrrp.pid")])
            .args(["--checkers_pid", &pid("checkers.pid")])
            .stdin(Stdio::null())
            .stdout(log.try_clone().expect("log"))
            .stderr(log)
            .spawn()
            .expect("starting keepalived (apt-get install keepalived)");
        self.keepalived[i] = Some(child);
    }

    /// Stops keepalived on node `i` (SIGTERM: it gives the VIP up at once,
    /// advertising priority 0).
    pub fn stop_keepalived(&mut self, i: usize) {
        if let Some(child) = self.keepalived[i].take() {
            crate::netns::terminate(child);
        }
    }

    pub fn keepalived_log(&self, i: usize) -> String {
        std::fs::read_to_string(self.keepalived_dir(i).join("keepalived.log")).unwrap_or_default()
    }

    /// Whether node `i` holds the VIP (keepalived put it on lb-c): the
    /// IPv4 one and, as the example config moves it along, the IPv6 one.
    pub fn holds_vip(&self, i: usize) -> bool {
        self.vips_held(i) == [true, true]
    }

    /// Which of the IPv4 and the IPv6 VIP node `i` holds on lb-c.
    fn vips_held(&self, i: usize) -> [bool; 2] {
        let held = ns_sh(&self.node(i), &["ip", "addr", "show", "dev", "lb-c"]);
        [held.contains(&format!("{VIP}/32")), held.contains(&format!("{VIP6}/128"))]
    }

    /// Waits until node `i` holds both VIPs and the other neither; how long it took.
    pub fn wait_vip_on(&self, i: usize, limit: Duration) -> Duration {
        let start = Instant::now();
        while start.elapsed() < limit {
            if self.holds_vip(i) && self.vips_held(1 - i) == [false, false] {
                return start.elapsed();
            }
            std::thread::sleep(Duration::from_millis(10));
        }
        panic!(
            "node {} did not take the VIP within {limit:?}\nkeepalived lb1:\n{}\nkeepalived lb2:\n{}",
            NODES[i].0,
            self.keepalived_log(0),
            self.keepalived_log(1)
        );
    }

    /// `ip route replace` on the router: the VIP's nexthops are now `nodes`.
    pub fn route_vip_to(&self, nodes: &[usize]) {
        let mut args = vec!["ip".to_owned(), "route".into(), "replace".into(), format!("{VIP}/32")];
        for &i in nodes {
            args.extend(["nexthop".into(), "via".into(), NODES[i].1.to_owned()]);
        }
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        ns_sh(&self.router(), &args);
    }

    /// Drops node `i`'s health probes (from its back address) at every
    /// backend, and nothing else: node `i` alone sees them all DOWN. With
    /// `block` false, lets them through again.
    pub fn block_probes_from(&self, i: usize, block: bool) {
        let table = format!("{}-probes", self.prefix);
        for (name, _) in BACKENDS {
            let ns = self.web(name);
            if !block {
                ns_sh(&ns, &["nft", "delete", "table", "inet", &table]);
                continue;
            }
            ns_sh(&ns, &["nft", "add", "table", "inet", &table]);
            let chain = "{ type filter hook input priority 0 ; policy accept ; }";
            let mut add = vec!["nft", "add", "chain", "inet", &table, "input"];
            add.extend(chain.split(' '));
            ns_sh(&ns, &add);
            let drop =
                ["nft", "add", "rule", "inet", &table, "input", "ip", "saddr", NODES[i].2, "drop"];
            ns_sh(&ns, &drop);
        }
    }

    /// The nodes the router's route to the VIP goes through now (by
    /// their addresses, in `NODES` order); empty without a route.
    pub fn next_hops(&self) -> Vec<usize> {
        self.vip_next_hops(false)
    }

    /// `next_hops` for the IPv6 VIP (the nodes' IPv6 addresses).
    pub fn next_hops6(&self) -> Vec<usize> {
        self.vip_next_hops(true)
    }

    /// Waits until the router's route to the VIP goes through `nodes`
    /// exactly; how long it took (polled every 2 ms).
    pub fn wait_next_hops(&self, nodes: &[usize], limit: Duration) -> Duration {
        self.wait_vip_next_hops(false, nodes, limit)
    }

    /// `wait_next_hops` for the IPv6 VIP.
    pub fn wait_next_hops6(&self, nodes: &[usize], limit: Duration) -> Duration {
        self.wait_vip_next_hops(true, nodes, limit)
    }

    fn vip_next_hops(&self, ipv6: bool) -> Vec<usize> {
        let (family, prefix) =
            if ipv6 { ("-6", format!("{VIP6}/128")) } else { ("-4", format!("{VIP}/32")) };
        let route = ns_sh(&self.router(), &["ip", family, "route", "show", &prefix]);
        let words: Vec<&str> = route.split_whitespace().collect();
        let hops: Vec<&str> = words.windows(2).filter(|w| w[0] == "via").map(|w| w[1]).collect();
        let address = |i: usize| if ipv6 { NODES6[i].0 } else { NODES[i].1 };
        (0..NODES.len()).filter(|&i| hops.contains(&address(i))).collect()
    }

    fn wait_vip_next_hops(&self, ipv6: bool, nodes: &[usize], limit: Duration) -> Duration {
        let start = Instant::now();
        while start.elapsed() < limit {
            if self.vip_next_hops(ipv6) == nodes {
                return start.elapsed();
            }
            std::thread::sleep(Duration::from_millis(2));
        }
        let birds: Vec<String> = std::iter::once(self.router_bird.as_ref())
            .chain(self.node_birds.iter().map(Some))
            .flatten()
            .map(|b| {
                let (protocols, routes) =
                    (b.birdc(&["show", "protocols"]), b.birdc(&["show", "route", "all"]));
                format!("{}:\n{protocols}{routes}{}", b.ns, b.log())
            })
            .collect();
        panic!(
            "the router's route to {} did not go through {nodes:?} within {limit:?} (it goes through {:?})\n{}",
            if ipv6 { VIP6 } else { VIP },
            self.vip_next_hops(ipv6),
            birds.join("\n")
        );
    }

    /// What the router's BIRD learnt of the VIP: per announcing node (by
    /// next hop), the large communities on its route (the fingerprint
    /// `(65001, 1, N)` of the services it runs).
    pub fn announced_fingerprints(&self) -> Vec<(String, String)> {
        let bird = self.router_bird.as_ref().expect("Bgp mode");
        let text = bird.birdc(&["show", "route", "for", VIP, "all"]);
        let mut out = Vec::new();
        let mut hop = String::new();
        for line in text.lines().map(str::trim) {
            if let Some(rest) = line.strip_prefix("via ") {
                rest.split_whitespace().next().unwrap_or_default().clone_into(&mut hop);
            }
            if let Some(community) = line.strip_prefix("BGP.large_community:") {
                out.push((hop.clone(), community.trim().to_owned()));
            }
        }
        out
    }

    /// Client packets node `i`'s data plane sent to a backend, over the
    /// TCP services the test traffic uses (HTTP on 80, the echo on 9000):
    /// replies are not counted, so this tells which node the router sends
    /// the VIP's traffic to.
    pub fn client_packets_via(&self, i: usize) -> u64 {
        let pins = &self.nodes[i].pin_dir;
        let vip = VIP.parse().expect("VIP");
        [80, 9000]
            .into_iter()
            .map(|port| {
                let id = crate::counters::service_id(pins, vip, port)
                    .unwrap_or_else(|| panic!("no service on {VIP}:{port} on {}", NODES[i].0));
                crate::counters::service_traffic(pins, id).in_packets
            })
            .sum()
    }

    /// Packets node `i`'s data plane sent on (redirected or bounced).
    pub fn forwarded_by(&self, i: usize) -> u64 {
        let pins = &self.nodes[i].pin_dir;
        crate::counters::get(pins, lb_common::counter::Counter::Redirect)
            + crate::counters::get(pins, lb_common::counter::Counter::Tx)
    }

    fn destroy(&mut self) {
        for i in 0..self.keepalived.len() {
            self.stop_keepalived(i);
        }
        self.router_bird = None;
        self.node_birds.clear();
        self.nodes.clear();
        for ns in self.namespaces() {
            crate::netns::remove(&ns);
        }
        let _ = std::fs::remove_dir_all(self.link_pin_dir());
        for i in 0..NODES.len() {
            let _ = std::fs::remove_dir_all(self.keepalived_dir(i));
        }
    }
}

impl Drop for Ha {
    fn drop(&mut self) {
        self.destroy();
        // The backends' namespaces are gone; `backends` reaps its servers.
    }
}

/// The shipped keepalived example, which the two-node lab and tests run.
const KEEPALIVED_EXAMPLE: &str =
    include_str!(concat!(env!("CARGO_MANIFEST_DIR"), "/../examples/keepalived/keepalived.conf"));

/// keepalived's config for node `i`: the shipped example, made lb2's as its
/// comment says, with faster adverts (VRRPv3, 100 ms) and this build's
/// `lb-ctl` (under target/, which script security would refuse).
fn keepalived_config(i: usize) -> String {
    let mut text = KEEPALIVED_EXAMPLE
        .replace("advert_int 1\n", "advert_int 0.1\n")
        .replace("  enable_script_security\n", "")
        .replace("/usr/local/sbin/lb-ctl", &crate::harness::lb_ctl_bin().to_string_lossy());
    if i == 1 {
        text = text
            .replace("router_id lb1", "router_id lb2")
            .replace("state MASTER", "state BACKUP")
            .replace("priority 150", "priority 100");
    }
    for (wanted, what) in [("advert_int 0.1", "advert_int"), ("lb-ctl health", "script")] {
        assert!(text.contains(wanted), "examples/keepalived/keepalived.conf: no {what} to adapt");
    }
    text
}
