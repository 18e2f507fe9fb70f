//! `lb-ctl`: `run` is the controller daemon; `check` validates a config; the
//! other subcommands are the operator's CLI, a client of the admin API.
use std::{path::PathBuf, process::ExitCode};

use clap::{Parser, Subcommand};
use lb_ctl::{
    daemon::{
        logging::{self, LogFormat},
        run::{self, Overrides, Refused},
    },
    desired::model::XdpMode,
};

#[derive(Parser)]
#[command(
    name = "lb-ctl",
    version,
    about = "XDP layer-4 load balancer: controller and CLI",
    after_help = lb_ctl::operator::cli::EXIT_CODES
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
    #[command(flatten)]
    target: lb_ctl::operator::cli::Target,
}

#[derive(Subcommand)]
enum Command {
    /// Load and attach the data plane, apply the config, run until SIGTERM.
    /// SIGHUP reloads the config file.
    Run {
        #[arg(long)]
        config: PathBuf,
        /// Interface to attach to (repeatable); replaces dataplane.interfaces.
        #[arg(long = "iface")]
        interfaces: Vec<String>,
        /// Overrides dataplane.xdp_mode.
        #[arg(long, value_enum)]
        xdp_mode: Option<XdpMode>,
        /// At SIGTERM, detach the data plane and remove its pins (by default
        /// it keeps forwarding, for the next `lb-ctl run` to adopt).
        #[arg(long)]
        cleanup_on_exit: bool,
        /// Logs on stderr as text or as one JSON object per line.
        #[arg(long, value_enum, default_value_t = LogFormat::Text)]
        log_format: LogFormat,
        /// Load the data plane from this XDP object instead of the one built
        /// into lb-ctl (an upgrade or a fix of the data plane alone). Its maps
        /// must match the pinned ones; its programs replace the running ones
        /// on the same links.
        #[arg(long, value_name = "FILE")]
        object: Option<PathBuf>,
    },
    /// Validate a config file: exit 0 with a summary, or 1 with every problem.
    Check {
        #[arg(long)]
        config: PathBuf,
    },
    /// Remove a data plane left running: detach its programs and unpin its
    /// maps (open connections are reset). Refused while `lb-ctl run` runs on it.
    Down {
        /// The config whose dataplane.pin_path to clean.
        #[arg(long, conflicts_with = "pin_path", required_unless_present = "pin_path")]
        config: Option<PathBuf>,
        /// The pin directory itself (dataplane.pin_path).
        #[arg(long)]
        pin_path: Option<PathBuf>,
    },
    #[command(flatten)]
    Operator(lb_ctl::operator::cli::Operator),
}

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
