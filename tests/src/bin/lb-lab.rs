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
                "usage: lb-lab up PREFIX | down PREFIX | serve NAME ADDR [HEALTH_CONTROL_FILE] | counters PIN_DIR"
            );
            ExitCode::from(2)
        }
    }
}
