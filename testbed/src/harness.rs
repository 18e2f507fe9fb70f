//! End-to-end harness: the lab topology with the real `lb-ctl run` attached
//! inside the load balancer's namespace, and clients that talk to the VIP.
//! Everything is removed on drop, also when a test panics.
use std::{
    fmt::Write as _,
    io::{BufRead, BufReader, Read, Write},
    net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr, TcpStream, UdpSocket},
    path::{Path, PathBuf},
    process::{Child, Command, ExitStatus, Stdio},
    time::{Duration, Instant},
};

use crate::{
    netns::output,
    topology::{BACKENDS, BACKENDS6, ROUTED_BACKENDS, ROUTED_BACKENDS6, Topology, VIP, VIP6},
};

/// The controller binary: `$LB_CTL` (set by `cargo xtask test`), or the one
/// in the build directory of the test binary (target/debug/lb-ctl).
pub fn lb_ctl_bin() -> PathBuf {
    std::env::var_os("LB_CTL").map_or_else(|| built_bin("lb-ctl"), PathBuf::from)
}

/// A binary of this workspace's build, next to the running one (a binary in
/// target/debug) or one level up (a test in target/debug/deps).
pub fn built_bin(name: &str) -> PathBuf {
    let exe = std::env::current_exe().expect("path of the running binary");
    let dir = exe.parent().expect("binary directory");
    [Some(dir), dir.parent()]
        .into_iter()
        .flatten()
        .map(|d| d.join(name))
        .find(|p| p.exists())
        .unwrap_or_else(|| {
            panic!(
                "{name} not found: run `cargo build -p lb-ctl -p lb-lab` (cargo xtask test does)"
            )
        })
}

/// Health checks of the end-to-end tests, fast so the tests are: HTTP on
/// `/health` (see `server::HealthMode`) for the web service, TCP for the
/// echo, none for the UDP echo (`udp` empty: no `[service.health]`).
pub struct Checks {
    pub web: &'static str,
    pub echo: &'static str,
    pub udp: &'static str,
}

pub const FAST_CHECKS: Checks = Checks {
    web: "check = \"http\"\npath = \"/health\"\nexpect_body = \"Bienvenue\"\ninterval_ms = 200\ntimeout_ms = 100\nrise = 2\nfall = 2\n",
    echo: "check = \"tcp\"\ninterval_ms = 200\ntimeout_ms = 100\nrise = 2\nfall = 2\n",
    udp: "",
};

/// What an end-to-end lab's config holds beyond its three services.
#[derive(Clone, Copy, Default)]
pub struct Setup {
    pub checks: Option<&'static Checks>,
    /// Extra keys of the web service (`scheduler = "rr"`…).
    pub web: &'static str,
    /// Extra keys of the echo service.
    pub echo: &'static str,
    /// Extra keys of the UDP echo service.
    pub udp: &'static str,
    /// Extra tables at the end of the file (`[admin]`, `[log]`).
    pub tables: &'static str,
    /// Extra keys of `[dataplane]` (`tcp_established_timeout = 1`…).
    pub dataplane: &'static str,
    /// `dataplane.conntrack_max`; 65536 when `None`.
    pub conntrack_max: Option<u32>,
    /// The controller's `/etc/resolv.conf`, when it needs its own (it then
    /// runs in a mount namespace of its own, with this file bound there).
    pub resolv_conf: Option<&'static str>,
    /// A dual-stack topology (`Topology::create_dual_stack`), and the three
    /// services again on the IPv6 VIP (`web6`, `echo6`, `udp6`: a service
    /// is of one family), over the backends' IPv6 addresses.
    pub ipv6: bool,
    /// The services over app1..app3, the backends behind their own
    /// router (`Topology::add_routed_subnet`), instead of web1..web3.
    pub routed: bool,
}

/// Config for the end-to-end tests: HTTP on 80, a line echo on 9000 (for
/// long-lived connections), UDP echo on 5353, each on web1..web3 with the
/// given weights (`None` leaves the backend out).
pub fn config(pin_dir: &str, weights: [Option<u32>; 3], setup: Setup) -> String {
    let mut text = format!(
        "[dataplane]\ninterfaces = [\"lb-c\", \"lb-b\"]\nconntrack_max = {}\npin_path = \"{pin_dir}\"\n",
        setup.conntrack_max.unwrap_or(65_536)
    );
    text.push_str(setup.dataplane);
    let (backends, backends6) =
        if setup.routed { (ROUTED_BACKENDS, ROUTED_BACKENDS6) } else { (BACKENDS, BACKENDS6) };
    let families = if setup.ipv6 {
        &[(VIP, "", backends), (VIP6, "6", backends6)][..]
    } else {
        &[(VIP, "", backends)][..]
    };
    for (vip, suffix, backends) in families {
        for (name, port, protocol) in
            [("web", 80, "tcp"), ("echo", 9000, "tcp"), ("udp", 5353, "udp")]
        {
            let _ = write!(
                text,
                "\n[[service]]\nname = \"{name}{suffix}\"\nvip = \"{vip}\"\nport = {port}\nprotocol = \"{protocol}\"\n"
            );
            match name {
                "web" => text.push_str(setup.web),
                "echo" => text.push_str(setup.echo),
                "udp" => text.push_str(setup.udp),
                _ => {}
            }
            let health = match (setup.checks, name) {
                (Some(c), "web") => Some(c.web),
                (Some(c), "echo") => Some(c.echo),
                (Some(c), "udp") if !c.udp.is_empty() => Some(c.udp),
                _ => None,
            };
            if let Some(health) = health {
                let _ = write!(text, "  [service.health]\n{health}");
            }
            for ((_, address), weight) in backends.iter().zip(weights) {
                if let Some(weight) = weight {
                    let _ = write!(
                        text,
                        "  [[service.backend]]\n  address = \"{address}\"\n  port = {port}\n  weight = {weight}\n"
                    );
                }
            }
        }
    }
    text.push_str(setup.tables);
    text
}

/// The lab topology with one controller on its load balancer; derefs to
/// the controller.
pub struct Lab {
    // Declared first, dropped first: the controller stops before the
    // namespaces go.
    controller: Controller,
    pub topo: Topology,
}

impl std::ops::Deref for Lab {
    type Target = Controller;
    fn deref(&self) -> &Controller {
        &self.controller
    }
}

impl std::ops::DerefMut for Lab {
    fn deref_mut(&mut self) -> &mut Controller {
        &mut self.controller
    }
}

impl Lab {
    /// Topology + backends + `lb-ctl run` with `config(..)` of all three backends.
    pub fn start(prefix: &str) -> Self {
        Self::start_with(prefix, Setup::default(), [Some(1); 3])
    }

    /// As `start`, with health checks.
    pub fn start_with_checks(prefix: &str, checks: Option<&'static Checks>) -> Self {
        Self::start_with(prefix, Setup { checks, ..Setup::default() }, [Some(1); 3])
    }

    /// As `start`, with `setup` and backend weights.
    pub fn start_with(prefix: &str, setup: Setup, weights: [Option<u32>; 3]) -> Self {
        Self::start_prepared(prefix, setup, weights, |_| {})
    }

    /// As `start_with`, with `prepare` run on the topology before the
    /// backends and the controller start (a router in front of the
    /// client, other MTUs, bridges...).
    pub fn start_prepared(
        prefix: &str,
        setup: Setup,
        weights: [Option<u32>; 3],
        prepare: impl FnOnce(&Topology),
    ) -> Self {
        let mut topo =
            if setup.ipv6 { Topology::create_dual_stack(prefix) } else { Topology::create(prefix) };
        if setup.routed {
            topo.add_routed_subnet();
        }
        prepare(&topo);
        topo.start_backends(&built_bin("lb-lab").to_string_lossy());
        let controller = Controller::start(&topo.lb(), &format!("{prefix}-e2e"), setup, weights);
        Self { controller, topo }
    }

    /// `who_answers` from the client namespace.
    pub fn who_answers(&self, requests: usize) -> Vec<String> {
        crate::netns::in_ns(&self.topo.client(), move || who_answers(requests))
    }

    /// `who_answers_at` the IPv6 VIP, from the client namespace.
    pub fn who_answers6(&self, requests: usize) -> Vec<String> {
        crate::netns::in_ns(&self.topo.client(), move || who_answers_at(VIP6, requests))
    }
}

/// `lb-ctl run` in namespace `ns`, on a config written by `config(..)`, with
/// its files in a temporary directory and its pins in `/sys/fs/bpf/NAME`;
/// stopped and its pins removed on drop.
pub struct Controller {
    pub ns: String,
    pub dir: PathBuf,
    pub config_path: PathBuf,
    pub pin_dir: String,
    setup: Setup,
    /// Arguments of `lb-ctl run` after `--config FILE`.
    run_args: Vec<String>,
    ctl: Option<Child>,
}

impl Controller {
    /// Writes the config and starts `lb-ctl run`; returns once it runs.
    pub fn start(ns: &str, name: &str, setup: Setup, weights: [Option<u32>; 3]) -> Self {
        let dir = std::env::temp_dir().join(name);
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).expect("test directory");
        let pin_dir = format!("/sys/fs/bpf/{name}");
        // A crashed earlier run's data plane is not this test's to adopt.
        let _ = std::fs::remove_dir_all(&pin_dir);
        let config_path = dir.join("lb.toml");
        std::fs::write(&config_path, config(&pin_dir, weights, setup)).expect("writing config");
        let mut controller = Self {
            ns: ns.to_owned(),
            dir,
            config_path,
            pin_dir,
            setup,
            run_args: Vec::new(),
            ctl: None,
        };
        controller.spawn_ctl();
        controller.wait_log("load balancer running", 1);
        controller
    }

    /// Where this controller keeps what it generates (`LB_RUN_DIR`: its
    /// admin token), and where its CLI looks: the lab's own, not the host's
    /// `/run/lb-ctl`, so that no test shares a token with another or leaves
    /// one behind.
    pub fn run_dir(&self) -> PathBuf {
        self.dir.join("run")
    }

    /// The `Authorization` header for this controller when it was given no
    /// `token_file`: the token it generated (which its CLI finds by itself).
    pub fn bearer(&self) -> String {
        let path = lb_ctl::daemon::api::token::generated_path(&self.run_dir(), 9100);
        let token = std::fs::read_to_string(&path)
            .unwrap_or_else(|e| panic!("the generated token {}: {e}", path.display()));
        format!("Bearer {}", token.trim())
    }

    /// The process id of `lb-ctl run`.
    pub fn pid(&self) -> u32 {
        self.ctl.as_ref().expect("lb-ctl runs").id()
    }

    pub fn log_path(&self) -> PathBuf {
        self.dir.join("lb-ctl.log")
    }

    pub fn log(&self) -> String {
        std::fs::read_to_string(self.log_path()).unwrap_or_default()
    }

    fn spawn_ctl(&mut self) {
        let log = std::fs::File::create(self.log_path()).expect("log file");
        let mut command = match self.setup.resolv_conf {
            None => Command::new("nsenter"),
            Some(text) => {
                let resolv = self.dir.join("resolv.conf");
                std::fs::write(&resolv, text).expect("writing resolv.conf");
                // One process all along (unshare and sh exec): signals reach lb-ctl.
                let mut c = Command::new("unshare");
                c.args(["--mount", "--propagation", "private", "sh", "-c"])
                    .arg("mount --bind \"$0\" /etc/resolv.conf && exec nsenter \"$@\"")
                    .arg(resolv);
                c
            }
        };
        let child = command
            .env("LB_RUN_DIR", self.run_dir())
            .arg(format!("--net=/var/run/netns/{}", self.ns))
            .arg(lb_ctl_bin())
            .args(["run", "--config"])
            .arg(&self.config_path)
            .args(&self.run_args)
            .stdin(Stdio::null())
            .stdout(log.try_clone().expect("log file"))
            .stderr(log)
            .spawn()
            .expect("starting lb-ctl");
        self.ctl = Some(child);
    }

    /// Waits until `needle` has appeared `count` times in the controller's log.
    pub fn wait_log(&mut self, needle: &str, count: usize) {
        let deadline = Instant::now() + Duration::from_secs(20);
        while Instant::now() < deadline {
            if self.log().matches(needle).count() >= count {
                return;
            }
            if let Some(status) = self.ctl.as_mut().and_then(|c| c.try_wait().ok().flatten()) {
                panic!("lb-ctl exited ({status}) before {needle:?}:\n{}", self.log());
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        panic!("no {needle:?} (x{count}) in the lb-ctl log within 20 s:\n{}", self.log());
    }

    /// Log lines that contain every one of `parts`.
    pub fn count_lines(&self, parts: &[&str]) -> usize {
        self.log().lines().filter(|l| parts.iter().all(|p| l.contains(p))).count()
    }

    /// Waits until `count` log lines contain every one of `parts`; returns
    /// how long that took.
    pub fn wait_lines(&self, parts: &[&str], count: usize, limit: Duration) -> Duration {
        let start = Instant::now();
        while start.elapsed() < limit {
            if self.count_lines(parts) >= count {
                return start.elapsed();
            }
            std::thread::sleep(Duration::from_millis(10));
        }
        panic!("no {count} log line(s) with {parts:?} within {limit:?}:\n{}", self.log());
    }

    /// Runs `lb-ctl ARGS` (the operator's CLI) in the load balancer's
    /// namespace, where the admin API listens on its loopback.
    pub fn ctl(&self, args: &[&str]) -> std::process::Output {
        Command::new("nsenter")
            .env("LB_RUN_DIR", self.run_dir())
            .arg(format!("--net=/var/run/netns/{}", self.ns))
            .arg(lb_ctl_bin())
            .args(args)
            .stdin(Stdio::null())
            .output()
            .expect("running the lb-ctl CLI")
    }

    /// `ctl`, which must succeed; its standard output.
    pub fn ctl_ok(&self, args: &[&str]) -> String {
        let out = self.ctl(args);
        assert!(
            out.status.success(),
            "`lb-ctl {}` failed ({}): {}{}",
            args.join(" "),
            out.status,
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    /// The reassembly slow path's counters (datagrams forwarded, dropped)
    /// once `forwarded` reaches `want`, or after 3 s. With `want` 0 (the
    /// test asserts that nothing reached it), read after one publication
    /// period of the controller's stats (a second), so the zero is not
    /// the figure published before the traffic.
    pub fn reassembled(&self, want: u64) -> (u64, u64) {
        if want == 0 {
            std::thread::sleep(Duration::from_millis(1200));
        }
        let deadline = Instant::now() + Duration::from_secs(3);
        loop {
            let json = self.ctl_ok(&["stats", "--json"]);
            let stats: lb_ctl::daemon::api::view::Stats =
                serde_json::from_str(&json).unwrap_or_else(|e| panic!("stats --json: {e}\n{json}"));
            let got = (stats.reassembled.forwarded, stats.reassembled.dropped);
            if want == 0 || got.0 >= want || Instant::now() > deadline {
                return got;
            }
            std::thread::sleep(Duration::from_millis(200));
        }
    }

    /// `lb-ctl list --json`: every service as the API shows it.
    pub fn services(&self) -> Vec<lb_ctl::daemon::api::view::ServiceView> {
        let json = self.ctl_ok(&["list", "--json"]);
        serde_json::from_str(&json).unwrap_or_else(|e| panic!("list --json: {e}\n{json}"))
    }

    /// The backend `address:port` as `lb-ctl list --json` shows it.
    pub fn backend_view(&self, address: &str, port: u16) -> lb_ctl::daemon::api::view::BackendView {
        self.services()
            .into_iter()
            .flat_map(|s| s.backends)
            .find(|b| b.address == address && b.port == port)
            .unwrap_or_else(|| panic!("no backend {address}:{port} in lb-ctl list --json"))
    }

    /// Stops `lb-ctl run` (SIGTERM) and starts it again on the same files;
    /// returns once it runs.
    pub fn restart(&mut self) {
        let status = self.stop();
        assert!(status.success(), "lb-ctl exited with {status}:\n{}", self.log());
        self.start_again();
    }

    /// As `restart`, the new `lb-ctl run` with `args` after its config.
    pub fn restart_with(&mut self, args: &[&str]) {
        self.run_args = args.iter().map(|a| (*a).to_owned()).collect();
        self.restart();
    }

    /// Kills `lb-ctl run` (SIGKILL: no chance to clean up) and starts it
    /// again on the same files; returns once it runs.
    pub fn kill_and_restart(&mut self, pause: Duration) {
        let mut child = self.ctl.take().expect("lb-ctl runs");
        let _ = child.kill();
        let _ = child.wait();
        std::thread::sleep(pause);
        self.start_again();
    }

    /// Kills `lb-ctl run` (SIGKILL) and leaves it dead (`start_again`
    /// starts it).
    pub fn kill(&mut self) {
        let mut child = self.ctl.take().expect("lb-ctl runs");
        let _ = child.kill();
        let _ = child.wait();
    }

    /// Starts `lb-ctl run` again after `kill` or `stop`; returns once it runs.
    pub fn start_again(&mut self) {
        let before = self.log();
        self.spawn_ctl();
        // spawn_ctl truncates the log: keep the first run's for failures.
        let _ = std::fs::write(self.dir.join("lb-ctl.first.log"), before);
        self.wait_log("load balancer running", 1);
    }

    /// Rewrites the config and sends SIGHUP; returns once it is applied.
    pub fn reload(&mut self, weights: [Option<u32>; 3]) {
        let text = config(&self.pin_dir, weights, self.setup);
        self.reload_text(&text, "configuration reloaded");
    }

    /// Writes `text` as the config file and sends SIGHUP; returns once the
    /// log says `outcome` once more.
    pub fn reload_text(&mut self, text: &str, outcome: &str) {
        let before = self.log().matches(outcome).count();
        std::fs::write(&self.config_path, text).expect("writing config");
        self.signal("-HUP");
        self.wait_log(outcome, before + 1);
    }

    /// The config file this controller was started with, for `weights`.
    pub fn config_text(&self, weights: [Option<u32>; 3]) -> String {
        config(&self.pin_dir, weights, self.setup)
    }

    fn signal(&self, sig: &str) {
        let pid = self.ctl.as_ref().expect("lb-ctl runs").id().to_string();
        assert!(output(&["kill", sig, &pid]).status.success(), "kill {sig} {pid}");
    }

    /// SIGTERM; returns the exit status.
    pub fn stop(&mut self) -> ExitStatus {
        self.signal("-TERM");
        self.wait_exit()
    }

    /// Whether `lb-ctl run` is still running.
    pub fn is_running(&mut self) -> bool {
        self.ctl.as_mut().is_some_and(|c| c.try_wait().ok().flatten().is_none())
    }

    /// Sends SIGTERM and returns at once (`wait_exit` waits for the exit).
    pub fn terminate(&self) {
        self.signal("-TERM");
    }

    /// Waits (at most 10 s) for `lb-ctl run` to exit after a signal; its status.
    pub fn wait_exit(&mut self) -> ExitStatus {
        let mut child = self.ctl.take().expect("lb-ctl runs");
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            if let Some(status) = child.try_wait().expect("waiting for lb-ctl") {
                return status;
            }
            if Instant::now() > deadline {
                let _ = child.kill();
                panic!("lb-ctl did not exit within 10 s of SIGTERM:\n{}", self.log());
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

impl Drop for Controller {
    fn drop(&mut self) {
        if let Some(child) = self.ctl.take() {
            crate::netns::terminate(child);
        }
        let _ = std::fs::remove_dir_all(Path::new(&self.pin_dir));
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

const IO_TIMEOUT: Duration = Duration::from_secs(3);

fn connect(vip: &str, port: u16) -> std::io::Result<TcpStream> {
    let vip: IpAddr = vip.parse().map_err(std::io::Error::other)?;
    let stream = TcpStream::connect_timeout(&SocketAddr::new(vip, port), IO_TIMEOUT)?;
    stream.set_read_timeout(Some(IO_TIMEOUT))?;
    stream.set_write_timeout(Some(IO_TIMEOUT))?;
    Ok(stream)
}

/// One HTTP GET to the VIP; returns the body (`Bienvenue sur WEB2\n`).
/// Call from a thread inside the client namespace.
pub fn http_get() -> std::io::Result<String> {
    http_get_port(80)
}

/// `GET /` on the VIP's `port`; the body.
pub fn http_get_port(port: u16) -> std::io::Result<String> {
    http_get_at(VIP, port)
}

/// `GET /` on `vip` (either family) and `port`; the body.
pub fn http_get_at(vip: &str, port: u16) -> std::io::Result<String> {
    let mut stream = connect(vip, port)?;
    stream.write_all(b"GET / HTTP/1.1\r\nHost: vip\r\nConnection: close\r\n\r\n")?;
    let mut response = String::new();
    stream.read_to_string(&mut response)?;
    Ok(response.split("\r\n\r\n").nth(1).unwrap_or_default().to_owned())
}

/// A long-lived connection to the VIP's line echo (port 9000).
pub struct EchoConn {
    writer: TcpStream,
    reader: BufReader<TcpStream>,
}

impl EchoConn {
    pub fn open() -> std::io::Result<Self> {
        Self::open_port(crate::server::ECHO_PORT)
    }

    /// A connection to a line echo service on the VIP's `port`.
    pub fn open_port(port: u16) -> std::io::Result<Self> {
        Self::open_at(VIP, port)
    }

    /// A connection to a line echo service on `vip` (either family) and `port`.
    pub fn open_at(vip: &str, port: u16) -> std::io::Result<Self> {
        let writer = connect(vip, port)?;
        let reader = BufReader::new(writer.try_clone()?);
        Ok(Self { writer, reader })
    }

    /// Sends a line; returns the name of the backend that echoed it.
    pub fn exchange(&mut self, line: &str) -> std::io::Result<String> {
        self.writer.write_all(format!("{line}\n").as_bytes())?;
        let mut reply = String::new();
        self.reader.read_line(&mut reply)?;
        let (name, echoed) = reply.trim_end().split_once(' ').unwrap_or(("", ""));
        if echoed != line {
            return Err(std::io::Error::other(format!(
                "echo mismatch: sent {line:?}, got {reply:?}"
            )));
        }
        Ok(name.to_owned())
    }
}

/// One UDP query to the VIP's echo; returns the backend's name.
pub fn udp_query(payload: &str) -> std::io::Result<String> {
    udp_query_at(VIP, payload)
}

/// One UDP query to the echo on `vip` (either family); the backend's name.
pub fn udp_query_at(vip: &str, payload: &str) -> std::io::Result<String> {
    let vip: IpAddr = vip.parse().map_err(std::io::Error::other)?;
    let any: IpAddr =
        if vip.is_ipv6() { Ipv6Addr::UNSPECIFIED.into() } else { Ipv4Addr::UNSPECIFIED.into() };
    let socket = UdpSocket::bind((any, 0))?;
    socket.set_read_timeout(Some(IO_TIMEOUT))?;
    socket.send_to(payload.as_bytes(), (vip, 5353))?;
    let mut buf = [0_u8; 1500];
    let n = socket.recv(&mut buf)?;
    let reply = String::from_utf8_lossy(&buf[..n]).into_owned();
    let (name, echoed) = reply.split_once(' ').unwrap_or(("", ""));
    if echoed != payload {
        return Err(std::io::Error::other(format!("udp echo mismatch: {reply:?}")));
    }
    Ok(name.to_owned())
}

/// `METHOD path` on `addr` with an optional JSON body and `Authorization`
/// header; returns the status and the body. Call from a thread inside the
/// right namespace.
pub fn http_request(
    addr: &str,
    method: &str,
    path: &str,
    body: Option<&str>,
    authorization: Option<&str>,
) -> std::io::Result<(u16, String)> {
    http_request_within(addr, method, path, body, authorization, IO_TIMEOUT)
}

/// As `http_request`, waiting up to `patience` for the answer.
pub fn http_request_within(
    addr: &str,
    method: &str,
    path: &str,
    body: Option<&str>,
    authorization: Option<&str>,
    patience: Duration,
) -> std::io::Result<(u16, String)> {
    let mut stream = TcpStream::connect(addr)?;
    stream.set_read_timeout(Some(patience))?;
    let auth = authorization.map(|a| format!("Authorization: {a}\r\n")).unwrap_or_default();
    let body = body.unwrap_or_default();
    let request = format!(
        "{method} {path} HTTP/1.1\r\nHost: {addr}\r\n{auth}Content-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    );
    stream.write_all(request.as_bytes())?;
    let mut response = String::new();
    stream.read_to_string(&mut response)?;
    let status = response.split(' ').nth(1).and_then(|s| s.parse().ok()).unwrap_or(0);
    let body = response.split_once("\r\n\r\n").map(|(_, b)| b.to_owned()).unwrap_or_default();
    Ok((status, body))
}

/// The status of `GET path` on `addr` (0 if there was no answer).
pub fn http_status(addr: &str, path: &str, authorization: Option<&str>) -> u16 {
    http_request(addr, "GET", path, None, authorization).map_or(0, |(status, _)| status)
}

/// The backend name in an HTTP body (`Bienvenue sur WEB2` -> `web2`).
pub fn backend_of(body: &str) -> String {
    body.trim().rsplit(' ').next().unwrap_or_default().to_lowercase()
}

/// The backend named by an HTTP body, if it names one of the lab's
/// backends (web1..web3, app1..app3): an empty or foreign answer is no answer.
pub fn answering_backend(body: &str) -> Option<String> {
    let name = backend_of(body);
    BACKENDS.iter().chain(&ROUTED_BACKENDS).any(|(n, _)| *n == name).then_some(name)
}

/// The backends that answer `requests` HTTP GETs in a row, in order; each
/// answer must name one of them. Call from a thread inside the client
/// namespace.
pub fn who_answers(requests: usize) -> Vec<String> {
    who_answers_at(VIP, requests)
}

/// As `who_answers`, to `vip` (either family).
pub fn who_answers_at(vip: &str, requests: usize) -> Vec<String> {
    (0..requests)
        .map(|i| {
            let body = http_get_at(vip, 80).unwrap_or_else(|e| panic!("request {i} failed: {e}"));
            answering_backend(&body)
                .unwrap_or_else(|| panic!("request {i} was not answered by a backend: {body:?}"))
        })
        .collect()
}

/// Calls `probe` every 50 ms until it returns `Some`, for at most `limit`;
/// panics naming `what` and the last value seen otherwise. For state that
/// the controller updates on its own clock (the once-a-second recount).
pub fn wait_for<T, L: std::fmt::Debug>(
    what: &str,
    limit: Duration,
    mut probe: impl FnMut() -> Result<T, L>,
) -> T {
    let deadline = Instant::now() + limit;
    loop {
        match probe() {
            Ok(value) => return value,
            Err(last) if Instant::now() >= deadline => {
                panic!("{what}: not within {limit:?}; last seen {last:?}")
            }
            Err(_) => std::thread::sleep(Duration::from_millis(50)),
        }
    }
}
