//! `lb-ctl`: `run` is the controller daemon; `check` validates a config; the
//! other subcommands are the operator's CLI, a client of the admin API.
use std::{path::PathBuf, process::ExitCode};

use clap::{Parser, Subcommand};
use lb_ctl::{
    logging::{self, LogFormat},
    model::XdpMode,
    run::{self, Overrides, Refused},
};

#[derive(Parser)]
#[command(name = "lb-ctl", version, about = "XDP layer-4 load balancer: controller and CLI")]
struct Cli {
    #[command(subcommand)]
    command: Command,
    #[command(flatten)]
    target: lb_ctl::cli::Target,
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
        /// Logs on stderr as text or as one JSON object per line.
        #[arg(long, value_enum, default_value_t = LogFormat::Text)]
        log_format: LogFormat,
    },
    /// Validate a config file: exit 0 with a summary, or 1 with every problem.
    Check {
        #[arg(long)]
        config: PathBuf,
    },
    #[command(flatten)]
    Operator(lb_ctl::cli::Operator),
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    match cli.command {
        Command::Check { config } => check(&config),
        Command::Run { config, interfaces, xdp_mode, log_format } => {
            run_controller(config, Overrides { interfaces, xdp_mode }, log_format)
        }
        Command::Operator(op) => lb_ctl::cli::run(op, cli.target),
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
