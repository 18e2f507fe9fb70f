//! `lb-ctl`: `run` is the controller daemon; `check` validates a config; the
//! other subcommands are the operator's CLI, a client of the admin API.
use std::{path::PathBuf, process::ExitCode};

use clap::Parser as _;
use lb_ctl::{
    command::{Cli, Command},
    daemon::{
        logging::{self, LogFormat},
        run::{self, Overrides, Refused},
    },
};

fn main() -> ExitCode {
    let cli = Cli::parse();
    match cli.command {
        Command::Check { config } => check(&config),
        Command::Run { config, interfaces, xdp_mode, cleanup_on_exit, log_format, object } => {
            let overrides = Overrides { interfaces, xdp_mode, cleanup_on_exit, object };
            run_controller(config, overrides, log_format)
        }
        Command::Down { config, pin_path } => down(config.as_deref(), pin_path),
        Command::Operator(op) => lb_ctl::operator::cli::run(op, cli.target),
    }
}

fn run_controller(path: PathBuf, overrides: Overrides, log_format: LogFormat) -> ExitCode {
    let config = match run::load(&path, &overrides) {
        Ok(config) => config,
        Err(refused) => {
            eprintln!("lb-ctl: {}: {refused}", path.display());
            return ExitCode::FAILURE;
        }
    };
    if let Err(e) = logging::init(log_format, config.log.syslog) {
        eprintln!("lb-ctl: cannot set up logging: {e}");
        return ExitCode::FAILURE;
    }
    let runtime = match tokio::runtime::Builder::new_current_thread().enable_all().build() {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("lb-ctl: cannot start the runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    match runtime.block_on(run::run(path, overrides, config)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("lb-ctl: {e:#}");
            ExitCode::FAILURE
        }
    }
}

fn down(config: Option<&std::path::Path>, pin_path: Option<PathBuf>) -> ExitCode {
    let pin_path = match (config, pin_path) {
        (_, Some(path)) => path,
        (Some(config), None) => match lb_ctl::desired::config::load(config) {
            Ok(c) => c.dataplane.pin_path,
            Err(e) => {
                eprintln!("lb-ctl: {}: {e}", config.display());
                return ExitCode::FAILURE;
            }
        },
        (None, None) => unreachable!("clap requires --config or --pin-path"),
    };
    let removed = lb_ctl::write::dataplane::pins::remove_all(&pin_path);
    if removed.is_ok() {
        // What skb mode turned off (this run's or a killed controller's).
        let record =
            lb_ctl::write::gro::record_path(&lb_ctl::daemon::api::token::run_dir(), &pin_path);
        for entry in lb_ctl::write::gro::reconcile(&record, &[]) {
            println!("GRO turned back on for {} (below {})", entry.device, entry.interface);
        }
    }
    match removed {
        Ok(0) => {
            println!("nothing pinned at {}", pin_path.display());
            ExitCode::SUCCESS
        }
        Ok(n) => {
            println!("removed the data plane at {} ({n} pins)", pin_path.display());
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("lb-ctl: {e}");
            ExitCode::FAILURE
        }
    }
}

fn check(path: &std::path::Path) -> ExitCode {
    match run::load(path, &Overrides::default()) {
        Ok(config) => {
            let backends: usize = config.services.iter().map(|s| s.backends.len()).sum();
            println!(
                "{}: OK: {} service(s), {} backend(s), interfaces {:?}",
                path.display(),
                config.services.len(),
                backends,
                config.dataplane.interfaces
            );
            ExitCode::SUCCESS
        }
        Err(Refused(problems)) => {
            eprintln!("{}: invalid configuration:", path.display());
            for p in problems {
                eprintln!("  {p}");
            }
            ExitCode::FAILURE
        }
    }
}
