//! `cargo xtask lab`: the demo of a classic IPVS/HAProxy workshop, in network
//! namespaces (topology in `testbed/src/topology.rs`), with the real controller
//! and XDP program, and a round of requests to show the spreading.
use std::{
    fs,
    path::PathBuf,
    process::{Command, Stdio},
    thread,
    time::{Duration, Instant},
};

use anyhow::{Context as _, Result, bail};

use crate::util::{bin, build, output, require_root, root, run_status, step};

const PREFIX: &str = "lb";
const VIP: &str = "10.77.1.100";
const VIP6: &str = "fd77:1::100";
/// The client's second link, on the backends' LAN: direct-routing replies arrive there.
const CLIENT_BYPASS_IFACE: &str = "c1";

fn state_dir() -> PathBuf {
    root().join("target/lab")
}

fn pid_file() -> PathBuf {
    state_dir().join("lb-ctl.pid")
}

fn forwarder_pid_file() -> PathBuf {
    state_dir().join("admin-forward.pid")
}

/// Where the host reaches the admin API (forwarded into the namespace).
const ADMIN: &str = "127.0.0.1:9100";

fn client(args: &[&str]) -> Command {
    let mut cmd = Command::new("ip");
    cmd.args(["netns", "exec", &format!("{PREFIX}-client")]).args(args);
    cmd
}

pub fn up(keep: bool) -> Result<()> {
    build()?;
    require_root("the lab")?;
    stop_controller();
    remove_data_plane();
    step(
        "creating the topology: client, load balancer, switch, web1..web3, and app1..app3 behind their own router (namespaces lb-*)",
    );
    run_status(Command::new(bin("lb-lab")).args(["up", PREFIX]))?;

    step("starting lb-ctl in the load balancer's namespace");
    fs::create_dir_all(state_dir())?;
    // A copy: the operator may edit it and reload (SIGHUP) without touching the repository.
    let config = state_dir().join("lb.toml");
    fs::copy(root().join("examples/lab.toml"), &config).context("copying examples/lab.toml")?;
    // A new lab starts from the file alone: no runtime changes of an earlier one.
    let _ = fs::remove_file(state_dir().join("lb.state.json"));
    let log_path = state_dir().join("lb-ctl.log");
    let log = fs::File::create(&log_path)?;
    // nsenter (not `ip netns exec`) keeps the host's /sys/fs/bpf, where the maps are pinned.
    let child = Command::new("setsid")
        .arg("nsenter")
        .arg(format!("--net=/var/run/netns/{PREFIX}-lb"))
        .arg(bin("lb-ctl"))
        .args(["run", "--config"])
        .arg(&config)
        .stdin(Stdio::null())
        .stdout(log.try_clone()?)
        .stderr(log)
        .spawn()
        .context("starting lb-ctl")?;
    fs::write(pid_file(), child.id().to_string())?;
    wait_running(&log_path)?;
    eprintln!("lb-ctl is running: config {}, log {}", config.display(), log_path.display());
    let forwarded = match forward_admin() {
        Ok(()) => true,
        Err(e) => {
            eprintln!("warning: {e:#}; use `ip netns exec {PREFIX}-lb target/debug/lb-ctl ...`");
            false
        }
    };

    step("a round of requests from the client to the VIP");
    demo_round()?;
    step("what the data plane counted (lb_counters, non-zero)");
    run_status(Command::new(bin("lb-lab")).args(["counters", "/sys/fs/bpf/lb"]))?;
    // The counters and connections are sampled every second.
    thread::sleep(Duration::from_millis(1100));
    step("the operator's view: lb-ctl list (like ipvsadm -Ln), through the admin API");
    let mut list = if forwarded {
        Command::new(bin("lb-ctl"))
    } else {
        let mut cmd = Command::new("ip");
        cmd.args(["netns", "exec", &format!("{PREFIX}-lb")]).arg(bin("lb-ctl"));
        cmd
    };
    run_status(list.arg("list"))?;

    if keep {
        print_next_steps(&config);
        Ok(())
    } else {
        eprintln!("\n(the lab is removed now; `cargo xtask lab --keep` leaves it running)");
        down()
    }
}

fn wait_running(log: &PathBuf) -> Result<()> {
    let start = Instant::now();
    while start.elapsed() < Duration::from_secs(20) {
        let text = fs::read_to_string(log).unwrap_or_default();
        if text.contains("load balancer running") {
            return Ok(());
        }
        if text.contains("lb-ctl: ") {
            bail!("lb-ctl did not start:\n{text}");
        }
        thread::sleep(Duration::from_millis(100));
    }
    bail!("lb-ctl did not report running within 20 s; see {}", log.display())
}

fn demo_round() -> Result<()> {
    curl_round("TCP ", &[], &format!("http://{VIP}/"));
    // The dual-stack web service's IPv6 half (-g: the brackets are no glob).
    curl_round("TCP6", &["-6", "-g"], &format!("http://[{VIP6}]/"));
    // Full NAT: backends whose routes do not lead back to the load balancer.
    curl_round("FNAT", &[], &format!("http://{VIP}:8000/"));
    curl_round("FNA6", &["-6", "-g"], &format!("http://[{VIP6}]:8000/"));
    // What app1 saw: its peers on port 80 with a port of snat_ports (its
    // health checks come from the load balancer too, from other ports),
    // in both families.
    let ss = output(
        Command::new("ip")
            .args(["netns", "exec", &format!("{PREFIX}-app1")])
            .args(["ss", "-Htan", "(", "sport", "=", ":80", "and", "dport", ">=", ":61000", ")"]),
    )?;
    let peers: std::collections::BTreeSet<&str> = ss
        .lines()
        .filter_map(|l| l.split_whitespace().last()?.rsplit_once(':').map(|(ip, _)| ip))
        .collect();
    eprintln!(
        "  => app1's side of them (ss -tan) has the peer {peers:?}: the load balancer, not the client"
    );
    for i in 1..=6 {
        let mut cmd = client(&["socat", "-T", "2", "-", &format!("UDP:{VIP}:5353")]);
        let answer = output(cmd.stdin(stdin_of(&format!("hello {i}\n"))?))
            .unwrap_or_else(|e| format!("FAILED: {e}"));
        eprintln!("  UDP {i:>2}: \"hello {i}\" to {VIP}:5353  ->  {}", answer.trim());
    }
    // Direct routing: the answers come back over the client's other link.
    let bypass = format!("/sys/class/net/{CLIENT_BYPASS_IFACE}/statistics/rx_packets");
    let before = output(&mut client(&["cat", &bypass]))?;
    for i in 1..=3 {
        let url = format!("http://{VIP}:8080/");
        let body = output(&mut client(&["curl", "-s", "-m", "3", &url]))
            .unwrap_or_else(|e| format!("FAILED: {e}"));
        eprintln!("  DSR {i:>2}: curl {url}  ->  {}", body.trim());
    }
    let after = output(&mut client(&["cat", &bypass]))?;
    let arrived = after.trim().parse::<u64>()? - before.trim().parse::<u64>()?;
    eprintln!(
        "  => {arrived} packets came back to the client over {CLIENT_BYPASS_IFACE}, not through the load balancer"
    );
    Ok(())
}

/// Twelve `curl`s from the client to `url`, each answer shown, then who answered how often.
fn curl_round(label: &str, flags: &[&str], url: &str) {
    let mut answered_by = std::collections::BTreeMap::<String, u32>::new();
    for i in 1..=12 {
        let mut args = vec!["curl", "-s", "-m", "3"];
        args.extend(flags);
        args.push(url);
        let body = output(&mut client(&args)).unwrap_or_else(|e| format!("FAILED: {e}"));
        let body = body.trim().to_owned();
        let shown = [flags.join(" "), (*url).to_owned()].join(" ");
        eprintln!("  {label} {i:>2}: curl {}  ->  {body}", shown.trim_start());
        *answered_by.entry(body).or_default() += 1;
    }
    let tally: Vec<String> = answered_by.iter().map(|(who, n)| format!("{n} x {who:?}")).collect();
    eprintln!("  => {}", tally.join(", "));
}

fn stdin_of(text: &str) -> Result<Stdio> {
    let path = state_dir().join("udp-payload");
    fs::write(&path, text)?;
    Ok(Stdio::from(fs::File::open(path)?))
}

fn print_next_steps(config: &std::path::Path) {
    let pid = pid_file();
    let log = state_dir().join("lb-ctl.log");
    eprintln!(
        "
The lab is up. Try:
  # a backend answers with its name; UDP echoes name the backend too
  ip netns exec lb-client curl http://{VIP}/
  ip netns exec lb-client curl -6 -g http://[{VIP6}]/      # the same over IPv6 (web6)
  echo hi | ip netns exec lb-client socat - UDP:{VIP}:5353
  # direct routing (web-dsr): the reply skips the load balancer
  ip netns exec lb-client curl http://{VIP}:8080/
  # full NAT (web-fullnat, web6-fullnat): app1..app3 route through their own router;
  # they see the load balancer's 10.77.2.1 / fd77:2::1 as the client
  ip netns exec lb-client curl http://{VIP}:8000/
  ip netns exec lb-client curl -6 -g http://[{VIP6}]:8000/
  ip netns exec lb-app1 ss -tn
  # the kernel maps, with field names (addresses print as [10,77,1,100])
  bpftool map dump name lb_services
  bpftool map dump name lb_backends | head -40
  bpftool map show name lb_conntrack         # its sets (lb-ctl conns lists the flows)
  bpftool map dump name lb_services6         # IPv6 keys: 16 bytes, [253,119,0,1,...]
  bpftool map dump pinned /sys/fs/bpf/lb/lb_counters
  # the outcome counters, named and summed over CPUs
  target/debug/lb-lab counters /sys/fs/bpf/lb
  # the operator's CLI, through the admin API (forwarded to {admin})
  target/debug/lb-ctl list                  # like ipvsadm -Ln
  target/debug/lb-ctl conns                 # like ipvsadm -Lnc
  target/debug/lb-ctl stats
  target/debug/lb-ctl backend drain web 10.77.2.11:80
  target/debug/lb-ctl backend weight web 10.77.2.12:80 3
  target/debug/lb-ctl backend drain web6 [fd77:2::11]:80
  curl -s http://{admin}/api/v1/services
  curl -s http://{admin}/metrics | grep lb_backend_up
  # the stats page (refreshes itself every 2 s): open http://{admin}/ in a browser
  # API changes survive a restart: they are kept in {state}
  # health checks: block web2 and watch it go DOWN, then come back
  ip netns exec lb-web2 nft add table inet demo
  ip netns exec lb-web2 nft add chain inet demo input '{{ type filter hook input priority 0; }}'
  ip netns exec lb-web2 nft add rule inet demo input tcp dport 80 drop
  grep -E 'backend is (UP|DOWN)' {log}
  ip netns exec lb-web2 nft delete table inet demo
  # drain a backend: set its weight to 0 in the config, then reload
  $EDITOR {config}
  kill -HUP $(cat {pid})
  # the controller's log
  less {log}
  # remove everything
  cargo xtask lab down",
        config = config.display(),
        state = config.with_file_name("lb.state.json").display(),
        admin = ADMIN,
        pid = pid.display(),
        log = log.display(),
    );
}

/// The admin API listens on the load balancer namespace's loopback; a socat
/// on the host's 127.0.0.1:9100 forwards to it, so `lb-ctl list`, curl and a
/// browser on the host reach it as they would on a real load balancer.
fn forward_admin() -> Result<()> {
    let escaped = ADMIN.replace(':', "\\:");
    let inner = format!("EXEC:ip netns exec {PREFIX}-lb socat STDIO TCP\\:{escaped}");
    let child = Command::new("setsid")
        .args(["socat", "TCP-LISTEN:9100,bind=127.0.0.1,reuseaddr,fork", &inner])
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .context("starting socat to forward the admin API")?;
    fs::write(forwarder_pid_file(), child.id().to_string())?;
    // The listener is up within a few milliseconds; the API answers through it.
    let deadline = Instant::now() + Duration::from_secs(5);
    while Instant::now() < deadline {
        if std::net::TcpStream::connect(ADMIN).is_ok() {
            return Ok(());
        }
        thread::sleep(Duration::from_millis(50));
    }
    bail!("the admin API forwarder did not listen on {ADMIN} (is the port taken?)")
}

/// Stops the lab's controller (SIGTERM, so it detaches cleanly) and the
/// admin forwarder, if they run.
fn stop_controller() {
    stop_pid_file(&forwarder_pid_file());
    stop_pid_file(&pid_file());
}

fn stop_pid_file(file: &std::path::Path) {
    let Ok(pid) = fs::read_to_string(file) else {
        return;
    };
    let pid = pid.trim().to_owned();
    let _ = fs::remove_file(file);
    if Command::new("kill").args(["-TERM", &pid]).output().is_ok_and(|o| o.status.success()) {
        let deadline = Instant::now() + Duration::from_secs(5);
        while Instant::now() < deadline && PathBuf::from(format!("/proc/{pid}")).exists() {
            thread::sleep(Duration::from_millis(50));
        }
    }
}

/// The lab's controller leaves its data plane pinned when it stops (for the
/// next controller to adopt); the lab removes it.
fn remove_data_plane() {
    if bin("lb-ctl").exists() {
        let _ = Command::new(bin("lb-ctl"))
            .args(["down", "--pin-path", "/sys/fs/bpf/lb"])
            .stdout(Stdio::null())
            .status();
    }
}

pub fn down() -> Result<()> {
    require_root("removing the lab")?;
    stop_controller();
    remove_data_plane();
    let lab = bin("lb-lab");
    if lab.exists() {
        run_status(Command::new(lab).args(["down", PREFIX]))?;
    } else {
        // Not built yet: nothing of ours can exist beyond namespaces.
        for ns in ["client", "lb", "sw", "web1", "web2", "web3", "rtb", "app1", "app2", "app3"] {
            let _ = Command::new("ip").args(["netns", "del", &format!("{PREFIX}-{ns}")]).output();
        }
    }
    eprintln!("lab removed");
    Ok(())
}

/// `cargo xtask lab ha`: the two-node demo (`lb-lab ha`), removed at the end.
pub fn ha() -> Result<()> {
    build()?;
    require_root("the lab")?;
    run_status(Command::new(bin("lb-lab")).arg("ha"))
}

/// `cargo xtask lab bgp [--rounds N]`: the BGP demo (`lb-lab bgp`), each
/// event repeated N times (median times), removed at the end.
pub fn bgp(rounds: Option<&str>) -> Result<()> {
    build()?;
    require_root("the lab")?;
    let mut command = Command::new(bin("lb-lab"));
    command.arg("bgp");
    if let Some(rounds) = rounds {
        command.arg(rounds);
    }
    run_status(&mut command)
}
