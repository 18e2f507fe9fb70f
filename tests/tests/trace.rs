//! `lb-ctl trace` end to end: the real controller on the lab topology, the
//! CLI streaming the trace of one client while it makes requests. Each
//! request's SYN names the backend that answered it; a TCP segment's later
//! fragment from that client names its drop; a client outside the filter
//! shows nothing; and when the CLI goes, the trace goes off. Namespaces
//! `lbtr-*`.
use std::{
    io::{BufRead as _, BufReader, Read as _, Write as _},
    net::{SocketAddr, TcpStream},
    process::{Child, Command, Stdio},
    sync::{Arc, Mutex},
    time::{Duration, Instant},
};

use aya::maps::{Array, Map, MapData};
use lb_common::{counter::Counter, trace::TraceConf};
use lb_testbed::{
    harness::{Lab, backend_of, lb_ctl_bin},
    netns::{in_ns, terminate},
    packet::{Ipv4, TCP_ACK, TCP_SYN},
    topology::{BACKENDS, CLIENT_ADDR, FRESH_CLIENT_ADDRS, VIP},
};
use lb_tests::wire::{mac_of, packet_socket, send_frame};
use serde_json::Value;

/// `lb-ctl trace ARGS` in the load balancer's namespace, its lines
/// collected as they come; stopped on drop.
struct Tracing {
    child: Option<Child>,
    lines: Arc<Mutex<Vec<String>>>,
}

impl Tracing {
    fn start(lab: &Lab, args: &[&str]) -> Self {
        let mut child = Command::new("nsenter")
            .env("LB_RUN_DIR", lab.run_dir())
            .arg(format!("--net=/var/run/netns/{}", lab.ns))
            .arg(lb_ctl_bin())
            .arg("trace")
            .args(args)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .spawn()
            .expect("starting lb-ctl trace");
        let stdout = child.stdout.take().expect("its output");
        let lines = Arc::new(Mutex::new(Vec::new()));
        let sink = Arc::clone(&lines);
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines() {
                let Ok(line) = line else { break };
                sink.lock().unwrap().push(line);
            }
        });
        Self { child: Some(child), lines }
    }

    /// The packet lines of `--json`.
    fn packets(&self) -> Vec<Value> {
        let lines = self.lines.lock().unwrap();
        let values = lines.iter().map(|line| {
            serde_json::from_str::<Value>(line)
                .unwrap_or_else(|e| panic!("lb-ctl trace --json printed {line:?}: {e}"))
        });
        values.filter(|l| l["type"] == "packet").collect()
    }

    fn text(&self) -> Vec<String> {
        self.lines.lock().unwrap().clone()
    }

    fn stop(&mut self) {
        if let Some(child) = self.child.take() {
            terminate(child);
        }
    }
}

impl Drop for Tracing {
    fn drop(&mut self) {
        self.stop();
    }
}

/// One `GET /` to the VIP from the calling thread's namespace: the
/// client's port and the backend that answered.
fn request() -> (u16, String) {
    let vip: SocketAddr = format!("{VIP}:80").parse().unwrap();
    let mut stream = TcpStream::connect_timeout(&vip, Duration::from_secs(5)).expect("connect");
    stream.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    let port = stream.local_addr().unwrap().port();
    stream.write_all(b"GET / HTTP/1.1\r\nHost: vip\r\nConnection: close\r\n\r\n").unwrap();
    let mut response = String::new();
    stream.read_to_string(&mut response).expect("the answer");
    let body = response.split("\r\n\r\n").nth(1).unwrap_or_default();
    (port, backend_of(body))
}

/// `lb_trace_conf`'s switch, as pinned.
fn trace_switch(pin_dir: &str) -> u32 {
    let path = format!("{pin_dir}/lb_trace_conf");
    let data = MapData::from_pin(&path).unwrap_or_else(|e| panic!("opening {path}: {e}"));
    let conf: Array<MapData, TraceConf> = Array::try_from(Map::Array(data)).unwrap();
    conf.get(&0, 0).unwrap().on
}

/// Puts `frames` on the client's link as they are.
fn send_frames(client: &str, frames: Vec<Vec<u8>>) {
    in_ns(client, move || {
        let (fd, addr) = packet_socket("c0");
        for frame in frames {
            assert!(send_frame(&fd, &addr, &frame), "a frame is sent");
            std::thread::sleep(Duration::from_millis(5));
        }
    });
}

fn wait_until(what: &str, limit: Duration, mut done: impl FnMut() -> bool) {
    let deadline = Instant::now() + limit;
    while !done() {
        assert!(Instant::now() < deadline, "{what}: not within {limit:?}");
        std::thread::sleep(Duration::from_millis(50));
    }
}

#[test]
#[expect(clippy::too_many_lines, reason = "one story: JSON, plain text, drops only, off")]
fn a_traced_clients_syns_name_the_backends_that_answered() {
    let lab = Lab::start("lbtr1");
    assert_eq!(trace_switch(&lab.pin_dir), 0, "off while nobody traces");
    let mut tracing = Tracing::start(&lab, &["--client", CLIENT_ADDR, "--json"]);
    wait_until("the trace on", Duration::from_secs(5), || trace_switch(&lab.pin_dir) == 1);

    let client = lab.topo.client();
    let answered = in_ns(&client, || (0..12).map(|_| request()).collect::<Vec<_>>());
    // Frames put on the client's link as they are: a TCP segment's later
    // fragment from the traced client (before its first), and SYNs and a
    // cut frame from another client, which the filter leaves out.
    let stranger = FRESH_CLIENT_ADDRS[0];
    let (lb_mac, client_mac) = (mac_of(&lab.ns, "lb-c"), mac_of(&client, "c0"));
    let vip = VIP.parse().unwrap();
    let mut fragment =
        Ipv4::tcp((CLIENT_ADDR.parse().unwrap(), 40_777), (vip, 80), TCP_ACK, &[7; 64]);
    fragment.frag_off = 8;
    let fragment_frame = fragment.frame(lb_mac, client_mac);
    let mut frames = vec![fragment_frame.clone()];
    for port in 0..5 {
        let syn = Ipv4::tcp((stranger.parse().unwrap(), 41_000 + port), (vip, 80), TCP_SYN, b"");
        frames.push(syn.frame(lb_mac, client_mac));
    }
    let mut cut = frames[1].clone();
    cut.truncate(14 + 20 + 10);
    frames.push(cut);
    send_frames(&client, frames);
    let strangers_counted = lb_testbed::counters::get(&lab.pin_dir, Counter::DropMalformed);
    assert!(strangers_counted >= 1, "the stranger's cut frame went through the data plane");

    let names: std::collections::BTreeMap<String, String> =
        BACKENDS.iter().map(|(name, addr)| (format!("{addr}:80"), (*name).to_owned())).collect();
    let syn_of = |port: u16, packets: &[Value]| {
        packets
            .iter()
            .find(|p| p["src"] == format!("{CLIENT_ADDR}:{port}") && p["tcp_flags"] == "S")
            .cloned()
    };
    wait_until(
        "every request's SYN and the fragment's drop traced",
        Duration::from_secs(5),
        || {
            let packets = tracing.packets();
            answered.iter().all(|(port, _)| syn_of(*port, &packets).is_some())
                && packets.iter().any(|p| p["reason"] == "drop_fragment")
        },
    );
    let packets = tracing.packets();
    for (port, backend) in &answered {
        let syn = syn_of(*port, &packets).unwrap();
        assert_eq!(syn["decision"], "forwarded", "{syn}");
        assert_eq!(syn["flow"], "new", "{syn}");
        assert_eq!(syn["service"], "web", "{syn}");
        let traced = syn["backend"].as_str().unwrap_or_default();
        assert_eq!(
            names.get(traced),
            Some(backend),
            "port {port}: traced to {traced}, answered by {backend}"
        );
    }
    let drop = packets.iter().find(|p| p["reason"] == "drop_fragment").unwrap();
    assert_eq!(drop["decision"], "dropped");
    assert_eq!(drop["src"], CLIENT_ADDR, "a later fragment has no ports: {drop}");
    let line: lb_ctl::daemon::trace::Line = serde_json::from_value(drop.clone()).unwrap();
    eprintln!("the fragment, as plain text: {}", line.plain());
    // The replies are traced too, as reverse NAT to the client.
    assert!(
        packets.iter().any(|p| p["flow"] == "reply"
            && p["dst"].as_str().is_some_and(|d| d.starts_with(CLIENT_ADDR))),
        "a reply to the client"
    );
    let strangers: Vec<&Value> = packets
        .iter()
        .filter(|p| {
            [&p["src"], &p["dst"]]
                .iter()
                .any(|a| a.as_str().is_some_and(|a| a.starts_with(stranger)))
        })
        .collect();
    assert!(strangers.is_empty(), "a client outside the filter was traced: {strangers:?}");

    // The reader gone, the trace goes off.
    tracing.stop();
    wait_until("the trace off", Duration::from_secs(5), || trace_switch(&lab.pin_dir) == 0);

    // Plain text: a request, its SYN first, then the fragment again.
    let mut plain = Tracing::start(&lab, &["--client", CLIENT_ADDR]);
    wait_until("the trace on again", Duration::from_secs(5), || trace_switch(&lab.pin_dir) == 1);
    let (port, backend) = in_ns(&client, request);
    send_frames(&client, vec![fragment_frame.clone()]);
    let drop_line = format!("{CLIENT_ADDR} > {VIP}: dropped drop_fragment");
    wait_until("the plain trace of the fragment", Duration::from_secs(5), || {
        plain.text().iter().any(|l| l.ends_with(&drop_line))
    });
    plain.stop();
    let text = plain.text();
    eprintln!("lb-ctl trace --client {CLIENT_ADDR}:\n{}", text.join("\n"));
    let address = BACKENDS.iter().find(|(name, _)| *name == backend).unwrap().1;
    assert!(
        text[0].contains(&format!("{CLIENT_ADDR}:{port} > {VIP}:80 [S]: forwarded"))
            && text[0].contains(&format!("to {address}:80 (new flow) service web")),
        "the SYN first, to {backend}: {text:?}"
    );
    wait_until("the trace off again", Duration::from_secs(5), || trace_switch(&lab.pin_dir) == 0);

    // Drops only, ending by itself after --count packets: the request's
    // packets are not drops, the fragment is.
    let (ns, run_dir) = (lab.ns.clone(), lab.run_dir());
    let counted = std::thread::spawn(move || {
        Command::new("nsenter")
            .env("LB_RUN_DIR", run_dir)
            .arg(format!("--net=/var/run/netns/{ns}"))
            .arg(lb_ctl_bin())
            .args(["trace", "--client", CLIENT_ADDR, "--drops-only", "--count", "1"])
            .stdin(Stdio::null())
            .output()
            .expect("lb-ctl trace")
    });
    wait_until("the trace on, drops only", Duration::from_secs(5), || {
        trace_switch(&lab.pin_dir) == 1
    });
    in_ns(&client, request);
    send_frames(&client, vec![fragment_frame]);
    let counted = counted.join().unwrap();
    let out = String::from_utf8_lossy(&counted.stdout);
    assert!(counted.status.success(), "{}", String::from_utf8_lossy(&counted.stderr));
    assert_eq!(out.lines().count(), 1, "{out}");
    assert!(out.trim_end().ends_with(&drop_line), "{out}");
    wait_until("the trace off at the count", Duration::from_secs(5), || {
        trace_switch(&lab.pin_dir) == 0
    });

    let plain = lab.ctl(&["trace", "--client", "10.77.1.10/24"]);
    assert!(!plain.status.success(), "host bits past the length are refused");
    assert!(String::from_utf8_lossy(&plain.stderr).contains("the network is 10.77.1.0/24"));
}
