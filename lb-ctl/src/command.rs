//! The command line of `lb-ctl`, whole: `main.rs` parses it, and the
//! package's man page and shell completions are generated from it
//! (`lb-docgen`, run by `cargo xtask package`), so both always say what
//! the binary accepts.
use std::path::PathBuf;

use clap::{CommandFactory as _, Parser, Subcommand};

use crate::{daemon::logging::LogFormat, desired::model::XdpMode, operator};

#[derive(Parser)]
#[command(
    name = "lb-ctl",
    version,
    about = "XDP layer-4 load balancer: controller and CLI",
    after_help = operator::cli::EXIT_CODES
)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Command,
    #[command(flatten)]
    pub target: operator::cli::Target,
}

#[derive(Subcommand)]
pub enum Command {
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
    Operator(operator::cli::Operator),
}

/// The whole command, as clap sees it (for the man page and completions).
pub fn command() -> clap::Command {
    Cli::command()
}
