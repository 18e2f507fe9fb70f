//! The lab's plumbing, as a command: `lb-lab up PREFIX` builds the
//! topology (dual stack, with the backend subnet behind its own router)
//! and starts the backends, `lb-lab down PREFIX` removes it, and
//! `lb-lab serve NAME ADDR` is a backend's server process, and
//! `lb-lab counters PIN_DIR` prints the data plane's outcome counters, and
//! `lb-lab ha` shows two load balancers with keepalived moving the VIP under
//! a live connection (then removes them), and `lb-lab bgp [ROUNDS]` two
//! announcing the VIP by BGP to a router, each event that withdraws one
//! measured (`bgp`).
mod bgp;

use std::process::ExitCode;

use lb_testbed::{server, topology::Topology};

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    match args.iter().map(String::as_str).collect::<Vec<_>>().as_slice() {
        ["up", prefix] => {
            let mut topo = Topology::create_dual_stack(prefix);
            topo.add_routed_subnet();
            let me = std::env::current_exe().expect("path of lb-lab");
            topo.start_backends(&me.to_string_lossy());
            topo.keep = true;
            ExitCode::SUCCESS
        }
        ["ha"] => {
            ha_demo();
            ExitCode::SUCCESS
        }
        ["bgp", rest @ ..] => {
            let rounds = match rest {
                [] => 1,
                [n] => match n.parse::<usize>() {
                    Ok(n) if (1..=20).contains(&n) => n,
                    _ => {
                        eprintln!("lb-lab bgp: ROUNDS is 1 to 20, not {n:?}");
                        return ExitCode::from(2);
                    }
                },
                _ => {
                    eprintln!("usage: lb-lab bgp [ROUNDS]");
                    return ExitCode::from(2);
                }
            };
            bgp::demo(rounds);
            ExitCode::SUCCESS
        }
        ["down", prefix] => {
            Topology::named(prefix).destroy();
            ExitCode::SUCCESS
        }
        ["listen", addr, first_port, count] => listen(addr, first_port, count),
        ["counters", pin_dir] => {
            for (name, value) in lb_testbed::counters::read(pin_dir) {
                if value > 0 {
                    println!("  {name:<20} {value}");
                }
            }
            ExitCode::SUCCESS
        }
        ["serve", name, addr, rest @ ..] => {
            match server::serve(name, addr, rest.first().map(Into::into)) {
                Ok(()) => ExitCode::SUCCESS,
                Err(e) => {
                    eprintln!("lb-lab serve {name} {addr}: {e}");
                    ExitCode::FAILURE
                }
            }
        }
        _ => {
            eprintln!(
                "usage: lb-lab up PREFIX | down PREFIX | ha | bgp [ROUNDS] | listen ADDR FIRST_PORT COUNT | serve NAME ADDR [HEALTH_CONTROL_FILE] | counters PIN_DIR"
            );
            ExitCode::from(2)
        }
    }
}

/// Synthetic backends for the health-check benchmark: `count` listeners
/// from `first_port` on, never accepting (the kernel completes the TCP
/// handshakes a TCP probe needs), held until the process is killed.
fn listen(addr: &str, first_port: &str, count: &str) -> ExitCode {
    let (Ok(first), Ok(count)) = (first_port.parse::<u16>(), count.parse::<u16>()) else {
        eprintln!("lb-lab listen: ports must be numbers");
        return ExitCode::from(2);
    };
    lb_testbed::raise_fd_limit();
    let mut listeners = Vec::with_capacity(usize::from(count));
    for port in first..first.saturating_add(count) {
        match std::net::TcpListener::bind((addr, port)) {
            Ok(l) => listeners.push(l),
            Err(e) => {
                eprintln!("lb-lab listen: {addr}:{port}: {e}");
                return ExitCode::FAILURE;
            }
        }
    }
    println!("listening on {} ports", listeners.len());
    loop {
        std::thread::park();
    }
}

/// Two nodes, lb1 MASTER and lb2 BACKUP, each with `lb-ctl run` and
/// keepalived (examples/keepalived/); a long-lived connection and a stream
/// of requests run while lb1's keepalived stops and starts again.
fn ha_demo() {
    use std::time::Duration;

    use lb_testbed::{
        ha::{Ha, Mode, NODES},
        traffic::Traffic,
    };
    let step = |text: &str| eprintln!("\n==> {text}");
    step("two load balancers (namespaces lbha-lb1, lbha-lb2) with keepalived, same lb-ctl config");
    let mut ha = Ha::start("lbha", Mode::Vrrp);
    let holder = |ha: &Ha| if ha.holds_vip(0) { NODES[0].0 } else { NODES[1].0 };
    eprintln!("  the VIP and the backends' gateway are on {}", holder(&ha));
    step("a long-lived connection (a line every 5 ms) and a new connection every 10 ms");
    let traffic = Traffic::start(&ha.client(), 1);
    std::thread::sleep(Duration::from_secs(1));
    step("keepalived stops on lb1 (as in a maintenance): lb2 takes the VIP");
    ha.stop_keepalived(0);
    let took = ha.wait_vip_on(1, Duration::from_secs(5));
    eprintln!("  the VIP is on {} after {took:?}", holder(&ha));
    std::thread::sleep(Duration::from_secs(1));
    step("keepalived starts again on lb1: with the higher priority, it takes the VIP back");
    ha.start_keepalived(0);
    let took = ha.wait_vip_on(0, Duration::from_secs(10));
    eprintln!("  the VIP is on {} after {took:?}", holder(&ha));
    std::thread::sleep(Duration::from_secs(1));
    let (requests, echoes) = traffic.finish();
    let echo = &echoes[0];
    eprintln!(
        "  the long-lived connection: {} lines, all answered by {:?}, error: {}",
        echo.lines,
        echo.backends,
        echo.error.as_deref().unwrap_or("none")
    );
    eprintln!(
        "  new connections: {} made, {} failed, longest wait between two successes {:?}",
        requests.done,
        requests.failed.len(),
        requests.longest_gap
    );
    eprintln!("\n(the two-node lab is removed now)");
}
