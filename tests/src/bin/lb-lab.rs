//! The lab's plumbing, as a command: `lb-lab up PREFIX LB_LAB_BIN` builds the
//! topology and starts the backends, `lb-lab down PREFIX` removes it, and
//! `lb-lab serve NAME ADDR` is a backend's server process, and
//! `lb-lab counters PIN_DIR` prints the data plane's outcome counters.
use std::process::ExitCode;

use lb_tests::{server, topology::Topology};

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    match args.iter().map(String::as_str).collect::<Vec<_>>().as_slice() {
        ["up", prefix] => {
            let mut topo = Topology::create(prefix);
            let me = std::env::current_exe().expect("path of lb-lab");
            topo.start_backends(&me.to_string_lossy());
            topo.keep = true;
            ExitCode::SUCCESS
        }
        ["down", prefix] => {
            Topology::named(prefix).destroy();
            ExitCode::SUCCESS
        }
        ["listen", addr, first_port, count] => listen(addr, first_port, count),
        ["counters", pin_dir] => {
            for (name, value) in lb_tests::counters::read(pin_dir) {
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
                "usage: lb-lab up PREFIX | down PREFIX | listen ADDR FIRST_PORT COUNT | serve NAME ADDR [HEALTH_CONTROL_FILE] | counters PIN_DIR"
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
    lb_tests::raise_fd_limit();
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
