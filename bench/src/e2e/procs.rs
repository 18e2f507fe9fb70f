//! What the benchmark starts, each behind a guard that removes it on drop
//! (also when a measurement panics): the topology, nginx and a UDP echo on
//! each backend, and per target `lb-ctl run`, HAProxy or an nftables table.
use std::{
    fmt::Write as _,
    net::{TcpStream, UdpSocket},
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
    sync::{
        Arc,
        atomic::{AtomicBool, AtomicU64, Ordering},
    },
    thread::JoinHandle,
    time::{Duration, Instant},
};

use lb_testbed::{
    harness::lb_ctl_bin,
    netns::{enter, in_ns, ns_sh, output},
    topology::{BACKENDS, Topology, VIP},
};

use super::{HTTP_PORT, PIN_PATH, Target, UDP_PORT, load};

/// The port each nginx serves its status page on, on its namespace's loopback.
pub const STATUS_PORT: u16 = 8081;
const NFT_TABLE: &str = "lbe_bench";
/// The `fullnat` target's source ports toward each backend.
const FULLNAT_PORTS: &str = "1024-65535";

/// The topology with its backends serving. Fields drop in order: the
/// servers first, the namespaces last.
pub struct Env {
    pub dir: PathBuf,
    pub ksoftirqd: Vec<u32>,
    pub echo: EchoServers,
    pub nginx: Vec<Nginx>,
    pub topo: Topology,
}

impl Env {
    pub fn create(prefix: &str, dir: &Path) -> Self {
        // Topology::create first removes an earlier run's namespaces, and
        // with them any process left inside (an interrupted run).
        let topo = Topology::create(prefix);
        let _ = output(&[&lb_ctl_bin().to_string_lossy(), "down", "--pin-path", PIN_PATH]);
        let _ = std::fs::remove_dir_all(dir);
        std::fs::create_dir_all(dir).expect("creating the benchmark's directory");
        // The client opens tens of thousands of connections per run and
        // HAProxy as many towards the backends: a wide port range, and TIME_WAIT
        // ports reused (per namespace: the host is untouched).
        for ns in [topo.client(), topo.lb()] {
            ns_sh(&ns, &["sysctl", "-qw", "net.ipv4.ip_local_port_range=1024 65535"]);
            ns_sh(&ns, &["sysctl", "-qw", "net.ipv4.tcp_tw_reuse=1"]);
        }
        for forwarding in [Forwarding::Nat, Forwarding::FullNat] {
            let path = dir.join(forwarding.config_file());
            std::fs::write(&path, lb_config(forwarding))
                .unwrap_or_else(|e| panic!("writing {}: {e}", path.display()));
        }
        std::fs::write(dir.join("haproxy.cfg"), haproxy_config()).expect("writing haproxy.cfg");
        std::fs::write(dir.join("nft.conf"), nft_config()).expect("writing nft.conf");
        let nginx =
            BACKENDS.iter().map(|(name, addr)| Nginx::start(&topo, dir, name, addr)).collect();
        let echo = EchoServers::start(&topo);
        let ksoftirqd = super::sample::ksoftirqd_pids();
        Self { dir: dir.to_owned(), ksoftirqd, echo, nginx, topo }
    }

    pub fn start(&self, target: Target) -> Running {
        match target {
            Target::Direct | Target::Direct3 => Running::Plain,
            Target::Lb => Running::Lb(LbCtl::start(self, Forwarding::Nat)),
            Target::FullNat => Running::Lb(LbCtl::start(self, Forwarding::FullNat)),
            Target::Haproxy => Running::Haproxy(Haproxy::start(self)),
            Target::Nftables => {
                ns_sh(
                    &self.topo.lb(),
                    &["nft", "-f", &self.dir.join("nft.conf").to_string_lossy()],
                );
                Running::Nft(NftTable { ns: Some(self.topo.lb()) })
            }
        }
    }

    /// Panics unless `target` answers HTTP and UDP from every backend it
    /// should spread over; doubles as a warm-up (ARP, neighbour entries).
    pub fn check(&self, target: Target) {
        let expected: Vec<String> =
            BACKENDS[..target.backends()].iter().map(|(name, _)| (*name).to_owned()).collect();
        let client = self.topo.client();
        let names = |f: fn(&str, &str, usize) -> Vec<String>| {
            let mut seen: Vec<String> =
                target.addresses().into_iter().flat_map(|a| f(&client, a, 30)).collect();
            seen.sort();
            seen.dedup();
            seen
        };
        let workloads = target.workloads();
        if workloads.iter().any(|w| *w != super::Workload::Udp) {
            let seen = names(load::http_names);
            assert_eq!(seen, expected, "{}: HTTP answered by {seen:?}", target.name());
        }
        if workloads.contains(&super::Workload::Udp) {
            let seen = names(load::udp_names);
            assert_eq!(seen, expected, "{}: UDP answered by {seen:?}", target.name());
        }
    }
}

impl Drop for Env {
    /// The logs and configs go too, unless something failed: then they
    /// stay for a look (the next run clears them).
    fn drop(&mut self) {
        if std::thread::panicking() {
            eprintln!("e2e: logs and configs kept in {}", self.dir.display());
        } else {
            let _ = std::fs::remove_dir_all(&self.dir);
        }
    }
}

/// The target being measured; `stop` removes it and checks it is gone.
pub enum Running {
    Plain,
    Lb(LbCtl),
    Haproxy(Haproxy),
    Nft(NftTable),
}

impl Running {
    /// The process of the target, when it has one: the controller (not the
    /// data plane: XDP runs in softirq) or HAProxy.
    pub fn pid(&self) -> Option<u32> {
        match self {
            Self::Lb(lb) => lb.child.as_ref().map(Child::id),
            Self::Haproxy(h) => h.child.as_ref().map(Child::id),
            Self::Plain | Self::Nft(_) => None,
        }
    }

    pub fn stop(self, env: &Env) {
        match self {
            Self::Plain => {}
            Self::Lb(mut lb) => lb.stop(env),
            Self::Haproxy(mut h) => {
                if let Some(mut child) = h.child.take() {
                    terminate(&mut child);
                }
            }
            Self::Nft(mut table) => table.delete(),
        }
    }
}

/// How the load balancer's services reach their backends.
#[derive(Clone, Copy)]
pub enum Forwarding {
    Nat,
    FullNat,
}

impl Forwarding {
    fn config_file(self) -> &'static str {
        match self {
            Self::Nat => "lb.toml",
            Self::FullNat => "lb-fullnat.toml",
        }
    }
}

fn lb_config(forwarding: Forwarding) -> String {
    // `LB_BENCH_E2E_XDP_MODE=skb` compares generic XDP (the default is
    // driver mode, which veth supports).
    let mode = std::env::var("LB_BENCH_E2E_XDP_MODE").unwrap_or_else(|_| "auto".into());
    let mut text = format!(
        "[dataplane]\ninterfaces = [\"lb-c\", \"lb-b\"]\nxdp_mode = \"{mode}\"\nconntrack_max = 262144\npin_path = \"{PIN_PATH}\"\n"
    );
    let service_keys = match forwarding {
        Forwarding::Nat => String::new(),
        // A connection per request churns ports: the whole port range (no
        // health checks, and HAProxy is not running then, so nothing else
        // here takes a port of it), and a closed flow's port back after
        // 2 s rather than the 2 minutes of TIME_WAIT (a full-NAT service
        // that churns short connections needs that: docs/configuration.md).
        Forwarding::FullNat => {
            text.push_str("tcp_closing_timeout = 2\n");
            format!("forwarding = \"fullnat\"\nsnat_ports = \"{FULLNAT_PORTS}\"\n")
        }
    };
    for (name, port, protocol) in [("web", HTTP_PORT, "tcp"), ("udp", UDP_PORT, "udp")] {
        let _ = write!(
            text,
            "\n[[service]]\nname = \"{name}\"\nvip = \"{VIP}\"\nport = {port}\nprotocol = \"{protocol}\"\nscheduler = \"maglev\"\n{service_keys}"
        );
        for (_, address) in BACKENDS.iter().take(lb_backends()) {
            let _ =
                write!(text, "  [[service.backend]]\n  address = \"{address}\"\n  port = {port}\n");
        }
    }
    text
}

/// How many of the backends the load balancer spreads over:
/// `LB_BENCH_E2E_LB_BACKENDS=1` puts it in front of web1 alone, the same
/// box as `direct`, which tells the data plane's cost from the cost of
/// three servers sharing two CPUs.
pub(super) fn lb_backends() -> usize {
    std::env::var("LB_BENCH_E2E_LB_BACKENDS")
        .ok()
        .and_then(|n| n.parse::<usize>().ok())
        .map_or(BACKENDS.len(), |n| n.clamp(1, BACKENDS.len()))
}

fn haproxy_config() -> String {
    let mut text = format!(
        "global\n    maxconn 8000\n\ndefaults\n    mode tcp\n    timeout connect 5s\n    timeout client 30s\n    timeout server 30s\n\nfrontend vip\n    bind {VIP}:{HTTP_PORT}\n    default_backend web\n\nbackend web\n    balance roundrobin\n"
    );
    for (name, address) in BACKENDS {
        let _ = writeln!(text, "    server {name} {address}:{HTTP_PORT}");
    }
    text
}

fn nft_config() -> String {
    let map = BACKENDS
        .iter()
        .enumerate()
        .map(|(i, (_, address))| format!("{i} : {address}"))
        .collect::<Vec<_>>()
        .join(", ");
    let n = BACKENDS.len();
    format!(
        "table ip {NFT_TABLE} {{\n  chain prerouting {{\n    type nat hook prerouting priority dstnat; policy accept;\n    ip daddr {VIP} tcp dport {HTTP_PORT} dnat to numgen inc mod {n} map {{ {map} }}\n    ip daddr {VIP} udp dport {UDP_PORT} dnat to numgen inc mod {n} map {{ {map} }}\n  }}\n}}\n"
    )
}

/// SIGTERM, then SIGKILL after 5 s; reaps the child.
fn terminate(child: &mut Child) -> Option<std::process::ExitStatus> {
    if let Ok(pid) = i32::try_from(child.id()) {
        // SAFETY: kill(2) on our own child's pid, not yet reaped.
        unsafe { libc::kill(pid, libc::SIGTERM) };
    }
    let deadline = Instant::now() + Duration::from_secs(5);
    while Instant::now() < deadline {
        if let Ok(Some(status)) = child.try_wait() {
            return Some(status);
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    let _ = child.kill();
    let _ = child.wait();
    None
}

/// Spawns `args` inside network namespace `ns` (only the network: the
/// host's bpffs stays visible), output to `log`.
fn spawn_in(ns: &str, args: &[&str], log: &Path) -> Child {
    let log = std::fs::File::create(log).expect("creating a log file");
    Command::new("nsenter")
        .arg(format!("--net=/var/run/netns/{ns}"))
        .args(args)
        .stdin(Stdio::null())
        .stdout(log.try_clone().expect("log file"))
        .stderr(log)
        .spawn()
        .unwrap_or_else(|e| panic!("starting {args:?} in {ns}: {e}"))
}

/// nginx on one backend: one worker, keep-alive, a tiny body from memory,
/// and a status page whose counters tell requests and accepted connections.
pub struct Nginx {
    child: Child,
    pub ns: String,
    /// Every process of the backend's namespace (master and worker), for
    /// their CPU times.
    pub pids: Vec<u32>,
}

impl Nginx {
    fn start(topo: &Topology, dir: &Path, name: &str, addr: &str) -> Self {
        let dir = dir.join(name);
        std::fs::create_dir_all(&dir).expect("nginx directory");
        let d = dir.display();
        let conf = format!(
            "daemon off;\nworker_processes 1;\npid {d}/nginx.pid;\nerror_log {d}/error.log warn;\nevents {{ worker_connections 8192; }}\nhttp {{\n  access_log off;\n  keepalive_requests 10000000;\n  client_body_temp_path {d}/body;\n  server {{\n    listen {addr}:{HTTP_PORT} backlog=4096;\n    location / {{ default_type text/plain; return 200 \"{name}\\n\"; }}\n  }}\n  server {{\n    listen 127.0.0.1:{STATUS_PORT};\n    location = /status {{ stub_status; }}\n  }}\n}}\n"
        );
        let path = dir.join("nginx.conf");
        std::fs::write(&path, conf).expect("writing nginx.conf");
        let ns = topo.web(name);
        let (p, c, e) = (dir.to_string_lossy(), path.to_string_lossy(), dir.join("error.log"));
        let args = ["nginx", "-p", &p, "-c", &c, "-e", &e.to_string_lossy()];
        let mut child = spawn_in(&ns, &args, &dir.join("stderr.log"));
        let deadline = Instant::now() + Duration::from_secs(10);
        while super::sample::nginx_status(&ns).is_none() {
            if let Ok(Some(status)) = child.try_wait() {
                let log = std::fs::read_to_string(dir.join("stderr.log")).unwrap_or_default();
                panic!("nginx on {name} exited ({status}): {log}");
            }
            assert!(Instant::now() < deadline, "nginx on {name} did not answer within 10 s");
            std::thread::sleep(Duration::from_millis(50));
        }
        let pids = String::from_utf8_lossy(&output(&["ip", "netns", "pids", &ns]).stdout)
            .split_whitespace()
            .filter_map(|p| p.parse().ok())
            .collect();
        Self { child, ns, pids }
    }
}

impl Drop for Nginx {
    fn drop(&mut self) {
        terminate(&mut self.child);
    }
}

/// A UDP echo on each backend, threads of this process: the reply is the
/// backend's name, a space, and the datagram.
pub struct EchoServers {
    stop: Arc<AtomicBool>,
    /// Datagrams answered, per backend.
    pub served: Vec<Arc<AtomicU64>>,
    threads: Vec<JoinHandle<()>>,
}

impl EchoServers {
    fn start(topo: &Topology) -> Self {
        let stop = Arc::new(AtomicBool::new(false));
        let mut served = Vec::new();
        let mut threads = Vec::new();
        for (name, addr) in BACKENDS {
            let (ns, count, stop) =
                (topo.web(name), Arc::new(AtomicU64::new(0)), Arc::clone(&stop));
            served.push(Arc::clone(&count));
            let (ready_tx, ready_rx) = std::sync::mpsc::channel();
            threads.push(std::thread::spawn(move || {
                enter(&ns);
                let socket = UdpSocket::bind((addr, UDP_PORT))
                    .unwrap_or_else(|e| panic!("UDP echo on {addr}:{UDP_PORT}: {e}"));
                // Wakes up now and then to see whether to stop.
                socket.set_read_timeout(Some(Duration::from_millis(100))).expect("timeout");
                ready_tx.send(()).expect("echo ready");
                echo(&socket, name, &count, &stop);
            }));
            ready_rx.recv().unwrap_or_else(|_| panic!("the UDP echo on {name} did not start"));
        }
        Self { stop, served, threads }
    }
}

fn echo(socket: &UdpSocket, name: &str, count: &AtomicU64, stop: &AtomicBool) {
    let mut buf = [0_u8; 2048];
    let prefix = format!("{name} ");
    let mut reply = prefix.clone().into_bytes();
    while !stop.load(Ordering::Relaxed) {
        let Ok((n, peer)) = socket.recv_from(&mut buf) else { continue };
        reply.truncate(prefix.len());
        reply.extend_from_slice(&buf[..n]);
        if socket.send_to(&reply, peer).is_ok() {
            count.fetch_add(1, Ordering::Relaxed);
        }
    }
}

impl Drop for EchoServers {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        for thread in self.threads.drain(..) {
            let _ = thread.join();
        }
    }
}

/// `lb-ctl run --cleanup-on-exit` in the load balancer's namespace.
pub struct LbCtl {
    child: Option<Child>,
    config: PathBuf,
    log: PathBuf,
    ns: String,
}

impl LbCtl {
    fn start(env: &Env, forwarding: Forwarding) -> Self {
        let (config, log, ns) =
            (env.dir.join(forwarding.config_file()), env.dir.join("lb-ctl.log"), env.topo.lb());
        let bin = lb_ctl_bin();
        let args = [
            &*bin.to_string_lossy(),
            "run",
            "--cleanup-on-exit",
            "--config",
            &config.to_string_lossy(),
        ]
        .map(str::to_owned);
        let child = spawn_in(&ns, &args.iter().map(String::as_str).collect::<Vec<_>>(), &log);
        let mut lb = Self { child: Some(child), config, log, ns };
        lb.wait_running();
        lb
    }

    fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    fn wait_running(&mut self) {
        let deadline = Instant::now() + Duration::from_secs(30);
        while !self.log_text().contains("load balancer running") {
            if let Some(status) = self.child.as_mut().and_then(|c| c.try_wait().ok().flatten()) {
                panic!("lb-ctl exited ({status}) before running:\n{}", self.log_text());
            }
            assert!(
                Instant::now() < deadline,
                "lb-ctl not running within 30 s:\n{}",
                self.log_text()
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// SIGTERM (it detaches and unpins), `lb-ctl down` for good measure,
    /// then checks that no program is left on the load balancer's links:
    /// HAProxy and nftables must see the kernel's own path.
    fn stop(&mut self, env: &Env) {
        if let Some(mut child) = self.child.take() {
            let status = terminate(&mut child);
            assert!(
                status.is_some_and(|s| s.success()),
                "lb-ctl did not exit cleanly ({status:?}):\n{}",
                self.log_text()
            );
        }
        let bin = lb_ctl_bin();
        let out =
            output(&[&bin.to_string_lossy(), "down", "--config", &self.config.to_string_lossy()]);
        assert!(out.status.success(), "lb-ctl down: {}", String::from_utf8_lossy(&out.stderr));
        let attached = ns_sh(&env.topo.lb(), &["bpftool", "net", "show"]);
        assert!(
            !attached.lines().any(|l| l.starts_with("lb-c(") || l.starts_with("lb-b(")),
            "programs still attached in {} after lb-ctl stopped:\n{attached}",
            self.ns
        );
    }
}

impl Drop for LbCtl {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            terminate(&mut child);
            let config = self.config.to_string_lossy();
            let _ = output(&[&lb_ctl_bin().to_string_lossy(), "down", "--config", &config]);
        }
    }
}

/// HAProxy in the load balancer's namespace, in the foreground.
pub struct Haproxy {
    child: Option<Child>,
}

impl Haproxy {
    fn start(env: &Env) -> Self {
        let (cfg, log) = (env.dir.join("haproxy.cfg"), env.dir.join("haproxy.log"));
        let args = ["haproxy", "-db", "-f", &cfg.to_string_lossy()].map(str::to_owned);
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        let mut child = spawn_in(&env.topo.lb(), &args, &log);
        let deadline = Instant::now() + Duration::from_secs(10);
        while !in_ns(&env.topo.lb(), || TcpStream::connect((VIP, HTTP_PORT)).is_ok()) {
            if let Ok(Some(status)) = child.try_wait() {
                let log = std::fs::read_to_string(&log).unwrap_or_default();
                panic!("haproxy exited ({status}):\n{log}");
            }
            assert!(
                Instant::now() < deadline,
                "haproxy not listening on {VIP}:{HTTP_PORT} within 10 s"
            );
            std::thread::sleep(Duration::from_millis(20));
        }
        Self { child: Some(child) }
    }
}

impl Drop for Haproxy {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            terminate(&mut child);
        }
    }
}

/// The DNAT table in the load balancer's namespace.
pub struct NftTable {
    ns: Option<String>,
}

impl NftTable {
    fn delete(&mut self) {
        if let Some(ns) = self.ns.take() {
            ns_sh(&ns, &["nft", "delete", "table", "ip", NFT_TABLE]);
        }
    }
}

impl Drop for NftTable {
    fn drop(&mut self) {
        if let Some(ns) = self.ns.take()
            && !lb_testbed::netns::ns_try(&ns, &["nft", "delete", "table", "ip", NFT_TABLE])
        {
            eprintln!("e2e: could not delete nft table {NFT_TABLE} in {ns}");
        }
    }
}
