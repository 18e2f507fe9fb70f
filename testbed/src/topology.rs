//! The demo topology of a classic IPVS-NAT workshop, in network namespaces:
//!
//! ```text
//!  client 10.77.1.10 ── lb-c [ load balancer, VIP 10.77.1.100 ] lb-b ── switch ── web1 10.77.2.11
//!                             10.77.1.1             10.77.2.1          (bridge)├─ web2 10.77.2.12
//!                                                                              └─ web3 10.77.2.13
//! ```
//!
//! The backends' default route goes through the load balancer (NAT mode).
//! For direct routing (`forwarding = "dsr"`) the backends also hold the VIP
//! on `lo` (not answering ARP for it) and send what they answer from the VIP
//! straight to the client, over a second link of the client's on the
//! backends' LAN (`c1`, standing in for the client's router): those replies
//! never cross the load balancer.
//! Every namespace name starts with a prefix, so the lab (`lb`) and the tests
//! (`lbt`) never collide. Dropping a `Topology` removes it unless `keep` is set.
//!
//! `add_routed_subnet` puts a second backend subnet behind a router of its
//! own (`rtb`) on the backends' LAN: its backends (app1..app3) send
//! everything through that router, which has no route to the client's
//! network; only full NAT reaches them (see there).
//!
//! `create_dual_stack` gives every link an IPv6 address too, alike:
//! fd77:1::/64 on the client's side (the client fd77:1::10, the load
//! balancer fd77:1::1 and the VIP fd77:1::100), fd77:2::/64 on the
//! backends' (the load balancer fd77:2::1, web1..3 fd77:2::11..13, the
//! client's bypass fd77:2::100), each added `nodad`: duplicate address
//! detection would keep an address tentative, unusable, for a second.
use crate::netns::{in_ns, ns_sh, ns_try, sh};

pub const VIP: &str = "10.77.1.100";
pub const CLIENT_ADDR: &str = "10.77.1.10";
/// Client addresses the load balancer has never talked to (one per test that needs one).
pub const FRESH_CLIENT_ADDRS: [&str; 4] = ["10.77.1.20", "10.77.1.21", "10.77.1.22", "10.77.1.23"];
pub const LB_CLIENT_SIDE: &str = "10.77.1.1";
pub const LB_BACKEND_SIDE: &str = "10.77.2.1";
/// The client's leg on the backends' LAN (`c1`, a /32: nothing is routed
/// over it from the client's side), the backends' next hop for replies from
/// the VIP (direct routing).
pub const CLIENT_BYPASS: &str = "10.77.2.100";
/// The client's interface that direct-routing replies arrive on.
pub const CLIENT_BYPASS_IFACE: &str = "c1";
pub const BACKENDS: [(&str, &str); 3] =
    [("web1", "10.77.2.11"), ("web2", "10.77.2.12"), ("web3", "10.77.2.13")];
/// The load balancer's interfaces (inside its namespace).
pub const LB_IFACES: [&str; 2] = ["lb-c", "lb-b"];
/// With `Topology::insert_router`: the client's address on its own subnet
/// behind the router, and the router's two addresses.
pub const ROUTED_CLIENT_ADDR: &str = "10.77.3.10";
pub const ROUTER_CLIENT_SIDE: &str = "10.77.3.1";
pub const ROUTER_LB_SIDE: &str = "10.77.1.2";

/// With `Topology::add_routed_subnet`: the subnet behind the backends'
/// own router, the router's address there and on the backends' LAN, and
/// the backends on it (their default route: the router).
pub const ROUTED_SUBNET: &str = "10.77.4.0/24";
pub const SUBNET_ROUTER: &str = "10.77.4.1";
pub const SUBNET_ROUTER_LAN_SIDE: &str = "10.77.2.2";
pub const ROUTED_BACKENDS: [(&str, &str); 3] =
    [("app1", "10.77.4.11"), ("app2", "10.77.4.12"), ("app3", "10.77.4.13")];
/// The same in IPv6, on a dual-stack topology.
pub const ROUTED_SUBNET6: &str = "fd77:4::/64";
pub const SUBNET_ROUTER6: &str = "fd77:4::1";
pub const SUBNET_ROUTER_LAN_SIDE6: &str = "fd77:2::2";
pub const ROUTED_BACKENDS6: [(&str, &str); 3] =
    [("app1", "fd77:4::11"), ("app2", "fd77:4::12"), ("app3", "fd77:4::13")];

/// The IPv6 addresses of `create_dual_stack`, as the IPv4 ones above.
pub const VIP6: &str = "fd77:1::100";
pub const CLIENT_ADDR6: &str = "fd77:1::10";
pub const FRESH_CLIENT_ADDRS6: [&str; 4] = ["fd77:1::20", "fd77:1::21", "fd77:1::22", "fd77:1::23"];
pub const LB_CLIENT_SIDE6: &str = "fd77:1::1";
pub const LB_BACKEND_SIDE6: &str = "fd77:2::1";
pub const CLIENT_BYPASS6: &str = "fd77:2::100";
pub const BACKENDS6: [(&str, &str); 3] =
    [("web1", "fd77:2::11"), ("web2", "fd77:2::12"), ("web3", "fd77:2::13")];

pub struct Topology {
    pub prefix: String,
    /// Leave everything in place when dropped (the lab's `--keep`).
    pub keep: bool,
    /// The backend server processes started by `start_backends`, reaped on destroy.
    servers: Vec<std::process::Child>,
    /// Whether the links have IPv6 addresses too (`create_dual_stack`):
    /// the backends' servers then listen on both.
    pub ipv6: bool,
    /// Whether `add_routed_subnet` added app1..app3 (`start_backends`
    /// then starts their servers too).
    pub routed: bool,
}

impl Topology {
    /// A handle on the topology of `prefix`, without creating anything.
    pub fn named(prefix: &str) -> Self {
        Self {
            prefix: prefix.to_owned(),
            keep: false,
            servers: Vec::new(),
            ipv6: false,
            routed: false,
        }
    }

    pub fn client(&self) -> String {
        format!("{}-client", self.prefix)
    }
    pub fn lb(&self) -> String {
        format!("{}-lb", self.prefix)
    }
    pub fn switch(&self) -> String {
        format!("{}-sw", self.prefix)
    }
    /// The router between the client and the load balancer, once
    /// `insert_router` has put it there.
    pub fn router(&self) -> String {
        format!("{}-rtr", self.prefix)
    }
    /// The router of `add_routed_subnet`, in front of app1..app3.
    pub fn subnet_router(&self) -> String {
        format!("{}-rtb", self.prefix)
    }
    /// A backend's namespace (web1..web3, or app1..app3 of `add_routed_subnet`).
    pub fn web(&self, name: &str) -> String {
        format!("{}-{name}", self.prefix)
    }

    /// Where the lab's XDP_PASS links on the veth peers are pinned.
    fn link_pin_dir(&self) -> std::path::PathBuf {
        std::path::PathBuf::from(format!("/sys/fs/bpf/{}-lab-links", self.prefix))
    }

    /// The file that tells backend `name` how to answer `GET /health`.
    pub fn health_control(&self, name: &str) -> std::path::PathBuf {
        std::env::temp_dir().join(format!("{}-{name}.health", self.prefix))
    }

    /// How backend `name` has answered its health checks so far, in order
    /// (`HealthMode::as_str` of each answer: `ok`, `500`...).
    pub fn health_answers(&self, name: &str) -> Vec<String> {
        self.health_answer_times(name).into_iter().map(|(answer, _)| answer).collect()
    }

    /// As `health_answers`, each with when it was given (Unix microseconds).
    pub fn health_answer_times(&self, name: &str) -> Vec<(String, u128)> {
        let path = crate::server::answers_path(&self.health_control(name));
        std::fs::read_to_string(path)
            .unwrap_or_default()
            .lines()
            .filter_map(|line| {
                let (answer, at) = line.split_once(' ')?;
                Some((answer.to_owned(), at.parse().ok()?))
            })
            .collect()
    }

    /// Makes backend `name` answer its health checks as `mode` says.
    pub fn set_health_mode(&self, name: &str, mode: crate::server::HealthMode) {
        std::fs::write(self.health_control(name), mode.as_str())
            .expect("writing the health control file");
    }

    /// The namespaces `create` makes (not the router of `insert_router`).
    pub fn namespaces(&self) -> Vec<String> {
        let mut all = vec![self.client(), self.lb(), self.switch()];
        all.extend(BACKENDS.iter().map(|(name, _)| self.web(name)));
        all
    }

    /// The namespaces `add_routed_subnet` makes.
    pub fn routed_namespaces(&self) -> Vec<String> {
        let mut all = vec![self.subnet_router()];
        all.extend(ROUTED_BACKENDS.iter().map(|(name, _)| self.web(name)));
        all
    }

    /// Every backend the servers of `start_backends` run on, with its
    /// addresses: web1..web3, and app1..app3 once `add_routed_subnet` made them.
    fn served_backends(&self) -> Vec<(&'static str, Vec<&'static str>)> {
        let mut all: Vec<_> = BACKENDS
            .iter()
            .zip(BACKENDS6)
            .map(|(&(name, v4), (_, v6))| (name, if self.ipv6 { vec![v4, v6] } else { vec![v4] }))
            .collect();
        if self.routed {
            all.extend(ROUTED_BACKENDS.iter().zip(ROUTED_BACKENDS6).map(
                |(&(name, v4), (_, v6))| (name, if self.ipv6 { vec![v4, v6] } else { vec![v4] }),
            ));
        }
        all
    }

    /// Removes leftovers of an earlier run with the same prefix, then builds it.
    pub fn create(prefix: &str) -> Self {
        let mut topo = Self::named(prefix);
        topo.destroy();
        for ns in topo.namespaces() {
            sh(&["ip", "netns", "add", &ns]);
            ns_sh(&ns, &["ip", "link", "set", "lo", "up"]);
        }
        let (client, lb, sw) = (topo.client(), topo.lb(), topo.switch());
        multiqueue_veth(&client, "c0", &lb, "lb-c");
        multiqueue_veth(&lb, "lb-b", &sw, "sw-lb");
        ns_sh(&sw, &["ip", "link", "add", "br0", "type", "bridge"]);
        ns_sh(&sw, &["ip", "link", "set", "br0", "up"]);
        bridge_port(&sw, "sw-lb");

        // The client: its main address plus a few the load balancer has never seen.
        addr(&client, "c0", &format!("{CLIENT_ADDR}/24"));
        for a in FRESH_CLIENT_ADDRS {
            addr(&client, "c0", &format!("{a}/24"));
        }
        ns_sh(&client, &["ip", "route", "add", "default", "via", LB_CLIENT_SIDE]);
        endpoint_offloads(&client, "c0");
        // Replies from the VIP arrive on c1 while the route to the VIP goes
        // through c0: no reverse-path filter.
        veth(&client, CLIENT_BYPASS_IFACE, &sw, "sw-c1");
        bridge_port(&sw, "sw-c1");
        addr(&client, CLIENT_BYPASS_IFACE, &format!("{CLIENT_BYPASS}/32"));
        for conf in ["all", "default", "c0", CLIENT_BYPASS_IFACE] {
            ns_sh(&client, &["sysctl", "-qw", &format!("net.ipv4.conf.{conf}.rp_filter=0")]);
        }

        // The load balancer routes between its two sides and holds the VIP.
        addr(&lb, "lb-c", &format!("{LB_CLIENT_SIDE}/24"));
        addr(&lb, "lb-c", &format!("{VIP}/32"));
        addr(&lb, "lb-b", &format!("{LB_BACKEND_SIDE}/24"));
        ns_sh(&lb, &["sysctl", "-qw", "net.ipv4.ip_forward=1"]);

        for (name, address) in BACKENDS {
            let web = topo.web(name);
            let port = format!("sw-{name}");
            veth(&web, "eth0", &sw, &port);
            bridge_port(&sw, &port);
            addr(&web, "eth0", &format!("{address}/24"));
            ns_sh(&web, &["ip", "route", "add", "default", "via", LB_BACKEND_SIDE]);
            endpoint_offloads(&web, "eth0");
            direct_routing_backend(&web);
        }
        // A veth delivers the frames an XDP program sends to its peer (XDP_TX
        // or XDP_REDIRECT) only if the peer runs NAPI, and for XDP_TX only if
        // the peer has an XDP program itself (veth_xdp_flush): the peers of
        // lb-c and lb-b get a trivial XDP_PASS program, pinned so that it
        // outlives `lb-lab up`.
        let pins = topo.link_pin_dir();
        std::fs::create_dir_all(&pins).expect("creating the link pin directory");
        for (ns, dev) in [(client.clone(), "c0"), (sw.clone(), "sw-lb")] {
            let pin = pins.join(dev);
            in_ns(&ns, move || {
                let ifindex = lb_ctl::write::netdev::ifindex(dev).expect("peer interface");
                crate::testrun::attach_pass_pinned(ifindex, &pin);
            });
        }
        topo
    }

    /// As `create`, every link with its IPv6 address too (see the top of
    /// this file); returns once no address is tentative any more.
    pub fn create_dual_stack(prefix: &str) -> Self {
        let mut topo = Self::create(prefix);
        topo.add_ipv6();
        topo
    }

    fn add_ipv6(&mut self) {
        let (client, lb) = (self.client(), self.lb());
        addr6(&client, "c0", &format!("{CLIENT_ADDR6}/64"));
        // Deprecated (preferred lifetime 0): usable when bound, never the
        // source the kernel picks (RFC 6724 rule 3), as IPv4's secondaries.
        for a in FRESH_CLIENT_ADDRS6 {
            let cidr = format!("{a}/64");
            ns_sh(
                &client,
                &["ip", "-6", "addr", "add", &cidr, "dev", "c0", "nodad", "preferred_lft", "0"],
            );
        }
        ns_sh(&client, &["ip", "-6", "route", "add", "default", "via", LB_CLIENT_SIDE6]);
        addr6(&client, CLIENT_BYPASS_IFACE, &format!("{CLIENT_BYPASS6}/128"));
        addr6(&lb, "lb-c", &format!("{LB_CLIENT_SIDE6}/64"));
        addr6(&lb, "lb-c", &format!("{VIP6}/128"));
        addr6(&lb, "lb-b", &format!("{LB_BACKEND_SIDE6}/64"));
        ns_sh(&lb, &["sysctl", "-qw", "net.ipv6.conf.all.forwarding=1"]);
        for (name, address) in BACKENDS6 {
            let web = self.web(name);
            addr6(&web, "eth0", &format!("{address}/64"));
            ns_sh(&web, &["ip", "-6", "route", "add", "default", "via", LB_BACKEND_SIDE6]);
            // Direct routing: the VIP on lo (IPv6 answers neighbour
            // solicitations only for the receiving interface's addresses:
            // no arp_ignore needed), answers from it to the client's bypass.
            addr6(&web, "lo", &format!("{VIP6}/128"));
            ns_sh(
                &web,
                &["ip", "-6", "rule", "add", "from", &format!("{VIP6}/128"), "lookup", "100"],
            );
            ns_sh(
                &web,
                &[
                    "ip",
                    "-6",
                    "route",
                    "add",
                    "default",
                    "via",
                    CLIENT_BYPASS6,
                    "dev",
                    "eth0",
                    "table",
                    "100",
                ],
            );
        }
        self.ipv6 = true;
        // The links' own link-local addresses still go through detection.
        wait_untentative(&self.namespaces());
    }

    /// Puts a router between the client and the load balancer, before
    /// the controller starts:
    ///
    /// ```text
    ///  client 10.77.3.10 ── c0 ─── r1 [ router ] r0 ─── lb-c  load balancer
    ///                         10.77.3.1   10.77.1.2     10.77.1.1, VIP
    /// ```
    ///
    /// The router's link towards the client (`r1`) has MTU
    /// `mtu_towards_client`; every other link keeps 1500, and nothing clamps
    /// the TCP MSS: a backend learns of the narrow link only from the
    /// router's ICMP "fragmentation needed", which goes to the VIP.
    pub fn insert_router(&self, mtu_towards_client: u32) {
        let (client, lb, router) = (self.client(), self.lb(), self.router());
        // Deleting c0 deletes its peer lb-c too; its XDP_PASS link goes with
        // it, so its pin goes as well.
        ns_sh(&client, &["ip", "link", "del", "c0"]);
        let pins = self.link_pin_dir();
        let _ = std::fs::remove_file(pins.join("c0"));
        sh(&["ip", "netns", "add", &router]);
        ns_sh(&router, &["ip", "link", "set", "lo", "up"]);
        multiqueue_veth(&router, "r0", &lb, "lb-c");
        veth(&client, "c0", &router, "r1");
        addr(&lb, "lb-c", &format!("{LB_CLIENT_SIDE}/24"));
        addr(&lb, "lb-c", &format!("{VIP}/32"));
        ns_sh(&lb, &["ip", "route", "add", "10.77.3.0/24", "via", ROUTER_LB_SIDE]);
        addr(&router, "r0", &format!("{ROUTER_LB_SIDE}/24"));
        addr(&router, "r1", &format!("{ROUTER_CLIENT_SIDE}/24"));
        let mtu = mtu_towards_client.to_string();
        ns_sh(&router, &["ip", "link", "set", "r1", "mtu", &mtu]);
        ns_sh(&router, &["ip", "route", "add", "default", "via", LB_CLIENT_SIDE]);
        ns_sh(&router, &["sysctl", "-qw", "net.ipv4.ip_forward=1"]);
        endpoint_offloads(&router, "r0");
        endpoint_offloads(&router, "r1");
        addr(&client, "c0", &format!("{ROUTED_CLIENT_ADDR}/24"));
        ns_sh(&client, &["ip", "route", "add", "default", "via", ROUTER_CLIENT_SIDE]);
        endpoint_offloads(&client, "c0");
        // r0 receives what lb_xdp redirects or sends back (see `create`).
        let pin = pins.join("r0");
        in_ns(&router, move || {
            let ifindex = lb_ctl::write::netdev::ifindex("r0").expect("router interface");
            crate::testrun::attach_pass_pinned(ifindex, &pin);
        });
    }

    /// Sets the MTU of the client's link to the load balancer (both ends,
    /// `c0` and `lb-c`), before the controller attaches.
    pub fn set_client_link_mtu(&self, mtu: u32) {
        let mtu = mtu.to_string();
        ns_sh(&self.client(), &["ip", "link", "set", "c0", "mtu", &mtu]);
        ns_sh(&self.lb(), &["ip", "link", "set", "lb-c", "mtu", &mtu]);
    }

    /// Removes every namespace of this prefix and the processes inside them.
    pub fn destroy(&mut self) {
        for ns in
            self.namespaces().into_iter().chain([self.router()]).chain(self.routed_namespaces())
        {
            crate::netns::remove(&ns);
        }
        for (name, _) in BACKENDS.iter().chain(&ROUTED_BACKENDS) {
            let control = self.health_control(name);
            let _ = std::fs::remove_file(crate::server::answers_path(&control));
            let _ = std::fs::remove_file(control);
        }
        let _ = std::fs::remove_dir_all(self.link_pin_dir());
        for mut server in self.servers.drain(..) {
            let _ = server.kill();
            let _ = server.wait();
        }
    }

    /// Starts the backend servers (HTTP, line echo, UDP echo) as processes of
    /// `lb_lab` (the `lb-lab` binary) inside each backend's namespace.
    pub fn start_backends(&mut self, lb_lab: &str) {
        let backends = self.served_backends();
        for (name, addresses) in &backends {
            let ns = self.web(name);
            // A crashed earlier run's answers are not this run's.
            let _ = std::fs::remove_file(crate::server::answers_path(&self.health_control(name)));
            let server = std::process::Command::new("ip")
                .args(["netns", "exec", &ns, lb_lab, "serve", name, &addresses.join(",")])
                .arg(self.health_control(name))
                .stdin(std::process::Stdio::null())
                .stdout(std::process::Stdio::null())
                // Not the caller's stderr: a pipe held open by servers that
                // outlive `lb-lab up` would keep its reader waiting.
                .stderr(std::process::Stdio::null())
                .spawn()
                .unwrap_or_else(|e| panic!("starting the {name} server: {e}"));
            self.servers.push(server);
        }
        for (name, addresses) in backends {
            let ns = self.web(name);
            for address in addresses {
                let ready = (0..100).any(|_| {
                    let up =
                        ns_try(&ns, &["bash", "-c", &format!("exec 3<>/dev/tcp/{address}/80")]);
                    if !up {
                        std::thread::sleep(std::time::Duration::from_millis(50));
                    }
                    up
                });
                assert!(ready, "the {name} server did not start listening on {address}");
            }
        }
    }

    /// Adds a backend subnet behind a router of its own, before the
    /// backends and the controller start:
    ///
    /// ```text
    ///  load balancer lb-b ── switch ── eth0 [ router rtb ] br0 ─┬─ app1 10.77.4.11
    ///  10.77.2.1             (bridge)  10.77.2.2   10.77.4.1    ├─ app2 10.77.4.12
    ///                                                           └─ app3 10.77.4.13
    /// ```
    ///
    /// The backends' default route is the router, and the router knows
    /// only its two subnets: a NAT-mode reply (to the client's address)
    /// ends there, undeliverable; a full-NAT one (to the load balancer's
    /// 10.77.2.1) is delivered. The load balancer reaches 10.77.4.0/24
    /// through the router. No new veth receives a frame that XDP
    /// redirected: what the load balancer sends arrives at the switch's
    /// `sw-lb` (with its XDP_PASS program, see `create`) and is bridged on.
    /// On a dual-stack topology, the same in IPv6: the router fd77:2::2 and
    /// fd77:4::1, app1..app3 fd77:4::11..13.
    pub fn add_routed_subnet(&mut self) {
        let (lb, sw, router) = (self.lb(), self.switch(), self.subnet_router());
        for ns in self.routed_namespaces() {
            sh(&["ip", "netns", "add", &ns]);
            ns_sh(&ns, &["ip", "link", "set", "lo", "up"]);
        }
        veth(&router, "eth0", &sw, "sw-rtb");
        bridge_port(&sw, "sw-rtb");
        addr(&router, "eth0", &format!("{SUBNET_ROUTER_LAN_SIDE}/24"));
        ns_sh(&router, &["ip", "link", "add", "br0", "type", "bridge"]);
        ns_sh(&router, &["ip", "link", "set", "br0", "up"]);
        addr(&router, "br0", &format!("{SUBNET_ROUTER}/24"));
        ns_sh(&router, &["sysctl", "-qw", "net.ipv4.ip_forward=1"]);
        endpoint_offloads(&router, "eth0");
        for (name, address) in ROUTED_BACKENDS {
            let app = self.web(name);
            let port = format!("br-{name}");
            veth(&app, "eth0", &router, &port);
            bridge_port(&router, &port);
            addr(&app, "eth0", &format!("{address}/24"));
            ns_sh(&app, &["ip", "route", "add", "default", "via", SUBNET_ROUTER]);
            endpoint_offloads(&app, "eth0");
        }
        ns_sh(&lb, &["ip", "route", "add", ROUTED_SUBNET, "via", SUBNET_ROUTER_LAN_SIDE]);
        if self.ipv6 {
            addr6(&router, "eth0", &format!("{SUBNET_ROUTER_LAN_SIDE6}/64"));
            addr6(&router, "br0", &format!("{SUBNET_ROUTER6}/64"));
            ns_sh(&router, &["sysctl", "-qw", "net.ipv6.conf.all.forwarding=1"]);
            for (name, address) in ROUTED_BACKENDS6 {
                let app = self.web(name);
                addr6(&app, "eth0", &format!("{address}/64"));
                ns_sh(&app, &["ip", "-6", "route", "add", "default", "via", SUBNET_ROUTER6]);
            }
            let (subnet, via) = (ROUTED_SUBNET6, SUBNET_ROUTER_LAN_SIDE6);
            ns_sh(&lb, &["ip", "-6", "route", "add", subnet, "via", via]);
            wait_untentative(&self.routed_namespaces());
        }
        self.routed = true;
    }
}

impl Drop for Topology {
    fn drop(&mut self) {
        if !self.keep {
            self.destroy();
        }
    }
}

pub(crate) fn veth(ns_a: &str, a: &str, ns_b: &str, b: &str) {
    veth_pair(ns_a, a, ns_b, b, 1);
}

/// A veth pair with a queue per CPU on both ends, like a NIC with RSS: the
/// load balancer's links, so that its XDP program runs on every CPU at once
/// (a veth polls each receive queue with one NAPI, on one CPU at a time;
/// with one queue, a busy load balancer's work piles onto one CPU and into
/// ksoftirqd while the other idles).
pub(crate) fn multiqueue_veth(ns_a: &str, a: &str, ns_b: &str, b: &str) {
    veth_pair(ns_a, a, ns_b, b, std::thread::available_parallelism().map_or(1, usize::from));
}

fn veth_pair(ns_a: &str, a: &str, ns_b: &str, b: &str, queues: usize) {
    let queues = queues.to_string();
    let q = ["numtxqueues", &queues, "numrxqueues", &queues];
    let mut args = vec!["ip", "link", "add", a, "netns", ns_a];
    args.extend(q);
    args.extend(["type", "veth", "peer", "name", b, "netns", ns_b]);
    args.extend(q);
    sh(&args);
    ns_sh(ns_a, &["ip", "link", "set", a, "up"]);
    ns_sh(ns_b, &["ip", "link", "set", b, "up"]);
}

pub(crate) fn bridge_port(sw: &str, port: &str) {
    ns_sh(sw, &["ip", "link", "set", port, "master", "br0"]);
}

/// What IPVS's direct routing asks of a real server: the VIP on `lo`, never
/// announced or answered in ARP (only the load balancer may draw the VIP's
/// traffic), and answers from the VIP sent to the client's side directly
/// (policy routing by source: NAT replies keep going through the load
/// balancer).
fn direct_routing_backend(web: &str) {
    addr(web, "lo", &format!("{VIP}/32"));
    for (key, value) in [("arp_ignore", "1"), ("arp_announce", "2")] {
        for conf in ["all", "eth0"] {
            ns_sh(web, &["sysctl", "-qw", &format!("net.ipv4.conf.{conf}.{key}={value}")]);
        }
    }
    ns_sh(web, &["ip", "rule", "add", "from", &format!("{VIP}/32"), "lookup", "100"]);
    ns_sh(web, &["ip", "route", "add", "default", "via", CLIENT_BYPASS, "table", "100"]);
}

/// Waits until no IPv6 address in `namespaces` is tentative (duplicate
/// address detection of the links' own link-local addresses).
fn wait_untentative(namespaces: &[String]) {
    for ns in namespaces {
        let settled = (0..60).any(|_| {
            let tentative = ns_sh(ns, &["ip", "-6", "addr", "show", "tentative"]);
            if !tentative.trim().is_empty() {
                std::thread::sleep(std::time::Duration::from_millis(50));
            }
            tentative.trim().is_empty()
        });
        assert!(settled, "{ns}: IPv6 addresses still tentative after 3 s");
    }
}

pub(crate) fn addr(ns: &str, dev: &str, cidr: &str) {
    ns_sh(ns, &["ip", "addr", "add", cidr, "dev", dev]);
}

/// An IPv6 address, usable at once (`nodad`).
pub(crate) fn addr6(ns: &str, dev: &str, cidr: &str) {
    ns_sh(ns, &["ip", "-6", "addr", "add", cidr, "dev", dev, "nodad"]);
}

/// Hosts that send through the XDP load balancer must put complete checksums
/// on the wire: a veth's default TX checksum offload leaves them partial, and
/// an XDP frame has no skb to carry that state across a redirect (real NICs
/// receive complete checksums from the wire).
pub(crate) fn endpoint_offloads(ns: &str, dev: &str) {
    ns_sh(ns, &["ethtool", "-K", dev, "tx", "off"]);
}
