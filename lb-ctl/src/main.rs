//! `lb-ctl`: `run` is the controller daemon; `check` validates a config.
use std::{path::PathBuf, process::ExitCode};

use clap::{Parser, Subcommand};
use lb_ctl::{
    model::XdpMode,
    run::{self, Overrides, Refused},
};

#[derive(Parser)]
#[command(name = "lb-ctl", version, about = "XDP layer-4 load balancer: controller and CLI")]
struct Cli {
    #[command(subcommand)]
    command: Command,
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
    },
    /// Validate a config file: exit 0 with a summary, or 1 with every problem.
    Check {
        #[arg(long)]
        config: PathBuf,
    },
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    match cli.command {
        Command::Check { config } => check(&config),
        Command::Run { config, interfaces, xdp_mode } => {
            init_logging();
            let runtime = match tokio::runtime::Builder::new_current_thread().enable_all().build() {
                Ok(rt) => rt,
                Err(e) => {
                    eprintln!("lb-ctl: cannot start the runtime: {e}");
                    return ExitCode::FAILURE;
                }
            };
            match runtime.block_on(run::run(config, Overrides { interfaces, xdp_mode })) {
                Ok(()) => ExitCode::SUCCESS,
                Err(e) => {
                    if let Some(refused) = e.downcast_ref::<Refused>() {
                        eprintln!("lb-ctl: {refused}");
                    } else {
                        eprintln!("lb-ctl: {e:#}");
                    }
                    ExitCode::FAILURE
                }
            }
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

fn init_logging() {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .with_writer(std::io::stderr)
        .init();
}
