//! The operator's CLI (SPEC "Commands"): `lb-ctl list`, `service`, `backend`,
//! `stats` and `conns`, each a request to the admin API of `lb-ctl run`
//! (`--admin URL`, else `$LB_ADMIN`, else `http://127.0.0.1:9100`; the token
//! from `--token-file FILE`, else `$LB_TOKEN`).
//!
//! Exit codes, for scripts:
//!
//! - 0: success;
//! - 1: the controller refused the request (a 4xx or 5xx answer: `lb-ctl:
//!   <status>: <error>` on stderr, then each problem as `  key: message`),
//!   or its answer was not understood;
//! - 2: usage error (clap's, or a bad `--admin` URL or token file);
//! - 3: the controller is unreachable (not running, wrong `--admin`, no answer
//!   within 10 s);
//! - 4: authentication failed (401: no token given, or a wrong one).
//!
//! The text output is rendered by pure functions over the API's view types
//! ([`render_list`], [`render_stats`], [`render_conns`]).
use std::{
    fmt::Write as _,
    io::{self, Write as _},
    net::{Ipv4Addr, SocketAddrV4},
    path::PathBuf,
    process::ExitCode,
};

use clap::{Args, Subcommand};
use hyper::Method;
use serde_json::{Value, json};

use crate::{
    api::view::{BackendView, ConnsList, ServiceView, Stats, duration_text},
    changes::parse_backend_address,
    client::{Client, ClientError, encode_component},
    config::MAX_WEIGHT,
};

/// Success.
pub const EXIT_OK: u8 = 0;
/// The controller refused the request (4xx/5xx), or its answer was not understood.
pub const EXIT_REFUSED: u8 = 1;
/// Usage error: clap's, or a bad `--admin` URL or token file.
pub const EXIT_USAGE: u8 = 2;
/// The controller cannot be reached.
pub const EXIT_UNREACHABLE: u8 = 3;
/// Authentication failed (401).
pub const EXIT_AUTH: u8 = 4;

/// The exit codes, as `--help` shows them (`after_help`).
pub const EXIT_CODES: &str = "\
Exit codes:
  0  success
  1  the controller refused the request (4xx/5xx), or its answer was not understood
  2  usage error (arguments, --admin URL, token file)
  3  the controller is unreachable (not running, wrong --admin, no answer within 10 s)
  4  authentication failed (no token given, or a wrong one)";

const DEFAULT_ADMIN: &str = "http://127.0.0.1:9100";

/// Which controller to talk to, and with which token.
#[derive(Debug, Clone, Default, Args)]
pub struct Target {
    /// The admin API of `lb-ctl run` [default: $LB_ADMIN, else http://127.0.0.1:9100]
    #[arg(long, global = true, value_name = "URL")]
    pub admin: Option<String>,
    /// File holding the API token [default: the LB_TOKEN environment variable]
    #[arg(long, global = true, value_name = "FILE")]
    pub token_file: Option<PathBuf>,
}

/// The operator's commands: clients of the admin API.
#[derive(Debug, Subcommand)]
pub enum Operator {
    /// List services and their backends, like `ipvsadm -Ln`.
    #[command(after_help = EXIT_CODES)]
    List {
        /// Only this service.
        service: Option<String>,
        /// Print the API's JSON (`GET /api/v1/services`).
        #[arg(long)]
        json: bool,
    },
    /// Add or remove a service.
    #[command(subcommand, after_help = EXIT_CODES)]
    Service(ServiceCmd),
    /// Add, remove, drain, weigh a service's backends.
    #[command(subcommand, after_help = EXIT_CODES)]
    Backend(BackendCmd),
    /// Traffic per service and backend, rates, packet outcomes, connection table fill.
    #[command(after_help = EXIT_CODES)]
    Stats {
        /// Print the API's JSON (`GET /api/v1/stats`).
        #[arg(long)]
        json: bool,
    },
    /// The connection table, like `ipvsadm -Lnc`.
    #[command(after_help = EXIT_CODES)]
    Conns {
        /// Only this service's connections.
        #[arg(long)]
        service: Option<String>,
        /// At most this many entries (the controller's default: 1000, at most 100000).
        #[arg(long, value_name = "N")]
        limit: Option<usize>,
        /// Print the API's JSON (`GET /api/v1/conns`).
        #[arg(long)]
        json: bool,
    },
}

#[derive(Debug, Subcommand)]
pub enum ServiceCmd {
    /// Add a service, without backends (`backend add` gives it some).
    #[command(after_help = EXIT_CODES)]
    Add {
        /// Letters, digits, '-', '_', '.'.
        #[arg(long)]
        name: String,
        /// The virtual IPv4 address.
        #[arg(long)]
        vip: Ipv4Addr,
        /// 1 to 65535.
        #[arg(long, value_parser = clap::value_parser!(u16).range(1..))]
        port: u16,
        /// [default: tcp]
        #[arg(long, value_parser = ["tcp", "udp"])]
        protocol: Option<String>,
        /// sh = source-IP hash. [default: maglev]
        #[arg(long, value_parser = ["maglev", "rr", "wrr", "lc", "sh"])]
        scheduler: Option<String>,
        /// What a client gets when no backend can take it: a TCP reset / ICMP
        /// port unreachable, or nothing. [default: reject]
        #[arg(long, value_parser = ["reject", "drop"])]
        on_no_backend: Option<String>,
    },
    /// Remove a service and its backends.
    #[command(visible_alias = "delete", after_help = EXIT_CODES)]
    Del { name: String },
}

/// A backend of a service: `SERVICE ADDRESS:PORT`.
#[derive(Debug, Clone, Args)]
pub struct BackendAt {
    /// The service's name.
    pub service: String,
    /// The backend, e.g. 10.77.2.11:80.
    #[arg(value_name = "ADDRESS:PORT", value_parser = parse_backend)]
    pub backend: SocketAddrV4,
}

#[derive(Debug, Subcommand)]
pub enum BackendCmd {
    /// Add a backend to a service.
    #[command(after_help = EXIT_CODES)]
    Add {
        #[command(flatten)]
        at: BackendAt,
        /// 0 to 65535; 0 takes no new flows. [default: 1]
        #[arg(long, value_parser = parse_weight)]
        weight: Option<u32>,
    },
    /// Remove a backend; its flows end.
    #[command(visible_alias = "delete", after_help = EXIT_CODES)]
    Del(BackendAt),
    /// No new flows; existing flows continue.
    #[command(after_help = EXIT_CODES)]
    Drain(BackendAt),
    /// Back into rotation after `drain` or `maint`.
    #[command(after_help = EXIT_CODES)]
    Undrain(BackendAt),
    /// Out of rotation at once; health checks continue.
    #[command(after_help = EXIT_CODES)]
    Maint(BackendAt),
    /// Set a backend's weight (0 drains).
    #[command(after_help = EXIT_CODES)]
    Weight {
        #[command(flatten)]
        at: BackendAt,
        /// 0 to 65535.
        #[arg(value_parser = parse_weight)]
        weight: u32,
    },
}

fn parse_backend(text: &str) -> Result<SocketAddrV4, String> {
    parse_backend_address(text)
        .ok_or_else(|| format!("{text:?} is not an IPv4 ADDRESS:PORT (e.g. 10.77.2.11:80)"))
}

fn parse_weight(text: &str) -> Result<u32, String> {
    text.parse::<u32>()
        .ok()
        .filter(|w| *w <= MAX_WEIGHT)
        .ok_or_else(|| format!("{text:?} is not a weight (0 to {MAX_WEIGHT})"))
}

/// Where the token came from, for the message of a 401.
#[derive(Debug, Clone, PartialEq, Eq)]
enum TokenSource {
    None,
    File(PathBuf),
    Env,
}

impl Target {
    /// The client of the API, and where its token came from.
    fn prepare(self) -> Result<(Client, TokenSource), String> {
        let url = self.admin_url()?;
        let (token, source) = self.token()?;
        let client = Client::new(&url, token).map_err(|e| e.to_string())?;
        Ok((client, source))
    }

    /// The admin URL: `--admin`, else `$LB_ADMIN`, else the default.
    fn admin_url(&self) -> Result<String, String> {
        if let Some(admin) = &self.admin {
            return Ok(admin.clone());
        }
        match std::env::var("LB_ADMIN") {
            Ok(admin) if !admin.trim().is_empty() => Ok(admin),
            Ok(_) | Err(std::env::VarError::NotPresent) => Ok(DEFAULT_ADMIN.into()),
            Err(std::env::VarError::NotUnicode(_)) => Err("LB_ADMIN is not valid UTF-8".into()),
        }
    }

    /// The token: `--token-file`, else `$LB_TOKEN` (unset or empty: none).
    fn token(&self) -> Result<(Option<String>, TokenSource), String> {
        if let Some(path) = &self.token_file {
            let text = std::fs::read_to_string(path)
                .map_err(|e| format!("--token-file {}: {e}", path.display()))?;
            let token = text.trim();
            if token.is_empty() {
                return Err(format!("--token-file {}: the file is empty", path.display()));
            }
            return Ok((Some(token.to_owned()), TokenSource::File(path.clone())));
        }
        match std::env::var("LB_TOKEN") {
            Ok(token) if !token.trim().is_empty() => {
                Ok((Some(token.trim().to_owned()), TokenSource::Env))
            }
            Ok(_) | Err(std::env::VarError::NotPresent) => Ok((None, TokenSource::None)),
            Err(std::env::VarError::NotUnicode(_)) => Err("LB_TOKEN is not valid UTF-8".into()),
        }
    }
}

/// Runs one operator command against the controller of `target`; the
/// process's exit code (see the module's documentation).
pub fn run(op: Operator, target: Target) -> ExitCode {
    let prepared = target.prepare();
    let (client, source) = match prepared {
        Ok(prepared) => prepared,
        Err(message) => {
            write_err(&format!("lb-ctl: {message}\n"));
            return ExitCode::from(EXIT_USAGE);
        }
    };
    let runtime = match tokio::runtime::Builder::new_current_thread().enable_all().build() {
        Ok(runtime) => runtime,
        Err(e) => {
            write_err(&format!("lb-ctl: cannot start the runtime: {e}\n"));
            return ExitCode::from(EXIT_REFUSED);
        }
    };
    match runtime.block_on(execute(op, &client)) {
        Ok(text) => {
            write_out(&text);
            ExitCode::from(EXIT_OK)
        }
        Err(e) => {
            write_err(&report(&e, &source));
            ExitCode::from(exit_code(&e))
        }
    }
}

/// The exit code of a failed request.
pub fn exit_code(e: &ClientError) -> u8 {
    match e {
        ClientError::Refused { .. } | ClientError::Protocol(_) => EXIT_REFUSED,
        ClientError::Invalid(_) => EXIT_USAGE,
        ClientError::Unreachable { .. } => EXIT_UNREACHABLE,
        ClientError::Unauthorized(_) => EXIT_AUTH,
    }
}

/// What stderr says of a failed request.
fn report(e: &ClientError, source: &TokenSource) -> String {
    match e {
        ClientError::Refused { status, error, detail } => {
            let mut text = format!("lb-ctl: {status}: {error}\n");
            match detail {
                Value::Null => {}
                Value::Array(problems) => {
                    for problem in problems {
                        match (problem["key"].as_str(), problem["message"].as_str()) {
                            (Some(key), Some(message)) => {
                                let _ = writeln!(text, "  {key}: {message}");
                            }
                            _ => {
                                let _ = writeln!(text, "  {problem}");
                            }
                        }
                    }
                }
                other => {
                    let _ = writeln!(text, "  {other}");
                }
            }
            text
        }
        ClientError::Unauthorized(message) => match source {
            TokenSource::None => format!(
                "lb-ctl: authentication failed: no token was given, and the controller needs one \
                 (use --token-file FILE or set LB_TOKEN); it says: {message}\n"
            ),
            TokenSource::File(path) => format!(
                "lb-ctl: authentication failed: the controller refused the token of --token-file {}: {message}\n",
                path.display()
            ),
            TokenSource::Env => format!(
                "lb-ctl: authentication failed: the controller refused the token of LB_TOKEN: {message}\n"
            ),
        },
        other => format!("lb-ctl: {other}\n"),
    }
}

/// Writes to stdout; a closed pipe (`lb-ctl conns | head`) is not an error.
fn write_out(text: &str) {
    let mut out = io::stdout().lock();
    let _ = out.write_all(text.as_bytes()).and_then(|()| out.flush());
}

fn write_err(text: &str) {
    let _ = io::stderr().lock().write_all(text.as_bytes());
}

const SERVICES: &str = "/api/v1/services";

fn service_path(name: &str) -> String {
    format!("{SERVICES}/{}", encode_component(name))
}

fn backend_path(at: &BackendAt) -> String {
    format!("{}/backends/{}", service_path(&at.service), at.backend)
}

/// The API's JSON answer to `GET path`, indented, its keys in the API's order.
async fn get_pretty(client: &Client, path: &str) -> Result<String, ClientError> {
    let (_, bytes) = client.request(Method::GET, path, None).await?;
    let not_understood = |why: &dyn std::fmt::Display| {
        ClientError::Protocol(format!(
            "GET {path}: the answer of the controller at {} is not understood: {why}",
            client.url()
        ))
    };
    serde_json::from_slice::<serde::de::IgnoredAny>(&bytes).map_err(|e| not_understood(&e))?;
    let text = std::str::from_utf8(&bytes).map_err(|e| not_understood(&e))?;
    Ok(indent_json(text))
}

/// Valid JSON `text` indented by two spaces, like `serde_json::to_string_pretty`
/// but keeping the keys in their order; with a final newline.
fn indent_json(text: &str) -> String {
    let mut out = String::with_capacity(text.len() * 2);
    let mut depth = 0_usize;
    let (mut in_string, mut escaped) = (false, false);
    let mut chars = text.chars().peekable();
    let newline = |out: &mut String, depth: usize| {
        out.push('\n');
        out.push_str(&"  ".repeat(depth));
    };
    while let Some(c) = chars.next() {
        if in_string {
            out.push(c);
            match (escaped, c) {
                (true, _) => escaped = false,
                (false, '\\') => escaped = true,
                (false, '"') => in_string = false,
                _ => {}
            }
            continue;
        }
        match c {
            '"' => {
                in_string = true;
                out.push(c);
            }
            '{' | '[' => {
                out.push(c);
                while chars.next_if(char::is_ascii_whitespace).is_some() {}
                if let Some(close) = chars.next_if(|n| matches!((c, n), ('{', '}') | ('[', ']'))) {
                    out.push(close);
                } else {
                    depth += 1;
                    newline(&mut out, depth);
                }
            }
            '}' | ']' => {
                depth = depth.saturating_sub(1);
                newline(&mut out, depth);
                out.push(c);
            }
            ',' => {
                out.push(c);
                newline(&mut out, depth);
            }
            ':' => out.push_str(": "),
            c if c.is_ascii_whitespace() => {}
            c => out.push(c),
        }
    }
    out.push('\n');
    out
}

/// Sends the request of `op`; what to print on stdout.
async fn execute(op: Operator, client: &Client) -> Result<String, ClientError> {
    match op {
        Operator::List { service, json } => {
            let path = service.as_deref().map_or_else(|| SERVICES.to_owned(), service_path);
            if json {
                return get_pretty(client, &path).await;
            }
            let services = match service {
                None => client.get_json::<Vec<ServiceView>>(&path).await?,
                Some(_) => vec![client.get_json::<ServiceView>(&path).await?],
            };
            Ok(render_list(&services))
        }
        Operator::Service(ServiceCmd::Add {
            name,
            vip,
            port,
            protocol,
            scheduler,
            on_no_backend,
        }) => {
            let mut body = json!({"name": name, "vip": vip.to_string(), "port": port});
            for (key, value) in
                [("protocol", protocol), ("scheduler", scheduler), ("on_no_backend", on_no_backend)]
            {
                if let Some(value) = value {
                    body[key] = Value::String(value);
                }
            }
            let view: ServiceView = client.send_json(Method::POST, SERVICES, Some(body)).await?;
            Ok(format!(
                "{}: added: {}; {}\n",
                view.name,
                service_line(&view),
                rotation_summary(&view)
            ))
        }
        Operator::Service(ServiceCmd::Del { name }) => {
            client.request(Method::DELETE, &service_path(&name), None).await?;
            Ok(format!("{name}: removed, with its backends\n"))
        }
        Operator::Backend(cmd) => backend(cmd, client).await,
        Operator::Stats { json } => {
            let path = "/api/v1/stats";
            if json {
                return get_pretty(client, path).await;
            }
            Ok(render_stats(&client.get_json::<Stats>(path).await?))
        }
        Operator::Conns { service, limit, json } => {
            let mut query = Vec::new();
            if let Some(name) = &service {
                query.push(format!("service={}", encode_component(name)));
            }
            if let Some(limit) = limit {
                query.push(format!("limit={limit}"));
            }
            let path = if query.is_empty() {
                "/api/v1/conns".to_owned()
            } else {
                format!("/api/v1/conns?{}", query.join("&"))
            };
            if json {
                return get_pretty(client, &path).await;
            }
            Ok(render_conns(&client.get_json::<ConnsList>(&path).await?))
        }
    }
}

/// What a backend command did, in the words of [`render_backend_change`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum BackendChange {
    Added,
    Removed,
    Drained,
    Undrained,
    Maint,
    Weight(u32),
}

async fn backend(cmd: BackendCmd, client: &Client) -> Result<String, ClientError> {
    let set = |at: BackendAt, body: Value, change| async move {
        let view: ServiceView =
            client.send_json(Method::PATCH, &backend_path(&at), Some(body)).await?;
        Ok(render_backend_change(&view, at.backend, change))
    };
    match cmd {
        BackendCmd::Add { at, weight } => {
            let mut body =
                json!({"address": at.backend.ip().to_string(), "port": at.backend.port()});
            if let Some(weight) = weight {
                body["weight"] = json!(weight);
            }
            let path = format!("{}/backends", service_path(&at.service));
            let view: ServiceView = client.send_json(Method::POST, &path, Some(body)).await?;
            Ok(render_backend_change(&view, at.backend, BackendChange::Added))
        }
        BackendCmd::Del(at) => {
            let view: ServiceView =
                client.send_json(Method::DELETE, &backend_path(&at), None).await?;
            Ok(render_backend_change(&view, at.backend, BackendChange::Removed))
        }
        BackendCmd::Drain(at) => set(at, json!({"state": "drain"}), BackendChange::Drained).await,
        BackendCmd::Undrain(at) => {
            set(at, json!({"state": "active"}), BackendChange::Undrained).await
        }
        BackendCmd::Maint(at) => set(at, json!({"state": "maint"}), BackendChange::Maint).await,
        BackendCmd::Weight { at, weight } => {
            set(at, json!({"weight": weight}), BackendChange::Weight(weight)).await
        }
    }
}

fn plural(n: usize, one: &str, many: &str) -> String {
    format!("{n} {}", if n == 1 { one } else { many })
}

/// `4 backends, 3 in rotation`.
fn rotation_summary(view: &ServiceView) -> String {
    format!(
        "{}, {} in rotation",
        plural(view.backends.len(), "backend", "backends"),
        view.backends_in_rotation
    )
}

/// One line saying what is now true of the backend `at` of `view`:
/// `web: 10.77.2.14:80 added (weight 1); 4 backends, 4 in rotation`.
fn render_backend_change(view: &ServiceView, at: SocketAddrV4, change: BackendChange) -> String {
    let what = match change {
        BackendChange::Added => "added".to_owned(),
        BackendChange::Removed => "removed".to_owned(),
        BackendChange::Drained => "draining: no new flows, existing flows continue".to_owned(),
        BackendChange::Undrained => "active".to_owned(),
        BackendChange::Maint => {
            "in maintenance: out of rotation, health checks continue".to_owned()
        }
        BackendChange::Weight(0) => {
            "weight set to 0: no new flows, existing flows continue".to_owned()
        }
        BackendChange::Weight(w) => format!("weight set to {w}"),
    };
    let address = at.ip().to_string();
    let found = view.backends.iter().find(|b| b.address == address && b.port == at.port());
    let state = match (change, found) {
        (BackendChange::Removed, _) | (_, None) => String::new(),
        (_, Some(b)) => format!(" ({})", backend_state(b)),
    };
    format!("{}: {at} {what}{state}; {}\n", view.name, rotation_summary(view))
}

/// `weight 1`, then whatever keeps it from being a plain active backend in
/// rotation: `weight 1, drain, health DOWN, out of rotation`.
fn backend_state(b: &BackendView) -> String {
    let mut parts = vec![format!("weight {}", b.weight)];
    if b.state != "active" {
        parts.push(b.state.clone());
    }
    if b.health.status != "UNCHECKED" {
        parts.push(format!("health {}", b.health.status));
    }
    if !b.in_rotation {
        parts.push("out of rotation".into());
    }
    parts.join(", ")
}

/// IPVS's name of a forwarding method.
fn forward_name(forwarding: &str) -> &str {
    match forwarding {
        "nat" => "Masq",
        "dsr" => "Route",
        "tunnel" => "Tunnel",
        other => other,
    }
}

/// `TCP  10.77.1.100:80 maglev reject check=http (web)`.
fn service_line(s: &ServiceView) -> String {
    let mut flags = String::new();
    if !s.on_no_backend.is_empty() {
        flags = format!(" {}", s.on_no_backend);
    }
    if let Some(health) = &s.health {
        let _ = write!(flags, " check={}", health.check);
    }
    format!(
        "{:<4} {}:{} {}{flags} ({})",
        s.protocol.to_uppercase(),
        s.vip,
        s.port,
        s.scheduler,
        s.name
    )
}

/// `lb-ctl list`: like `ipvsadm -Ln`, with the backends' state and health.
pub fn render_list(services: &[ServiceView]) -> String {
    let row = |addr: &str,
               fwd: &str,
               weight: &str,
               active: &str,
               inact: &str,
               state: &str,
               health: &str| {
        format!(
            "  -> {addr:<28} {fwd:<7} {weight:<6} {active:<10} {inact:<9} {state:<6} {health}\n"
        )
    };
    let mut text = String::from("Prot LocalAddress:Port Scheduler Flags\n");
    text.push_str(&row(
        "RemoteAddress:Port",
        "Forward",
        "Weight",
        "ActiveConn",
        "InActConn",
        "State",
        "Health",
    ));
    for s in services {
        text.push_str(&service_line(s));
        text.push('\n');
        for b in &s.backends {
            let mut health = b.health.status.clone();
            if b.health.status == "DOWN"
                && let Some(check) = &b.health.last_check
            {
                let _ = write!(health, " ({})", check.detail);
            }
            text.push_str(&row(
                &format!("{}:{}", b.address, b.port),
                forward_name(&s.forwarding),
                &b.weight.to_string(),
                &b.conns.active.to_string(),
                &b.conns.inactive.to_string(),
                &b.state,
                &health,
            ));
        }
    }
    text
}

/// A counter in at most 8 characters, as `ipvsadm --stats` prints it.
fn large(n: u64) -> String {
    match n {
        0..100_000_000 => n.to_string(),
        100_000_000..100_000_000_000 => format!("{}K", n / 1_000),
        100_000_000_000..100_000_000_000_000 => format!("{}M", n / 1_000_000),
        100_000_000_000_000..100_000_000_000_000_000 => format!("{}G", n / 1_000_000_000),
        _ => format!("{}T", n / 1_000_000_000_000),
    }
}

/// A per-second rate, rounded, as a counter.
#[allow(clippy::cast_sign_loss)]
fn rate(r: f64) -> String {
    // `as` saturates: NaN and negatives give 0.
    large(r.round() as u64)
}

/// `lb-ctl stats`: a summary line, the totals and the rates per service and
/// backend (like `ipvsadm -Ln --stats` and `--rate`), the packet outcomes.
pub fn render_stats(stats: &Stats) -> String {
    let mut text = format!("lb-ctl {}, up {}; ", stats.version, duration_text(stats.uptime_s));
    let ct = stats.conntrack;
    if ct.capacity > 0 {
        let fill = ct.entries as f64 * 100.0 / ct.capacity as f64;
        let _ =
            writeln!(text, "conntrack {} of {} entries ({fill:.1}% full)", ct.entries, ct.capacity);
    } else {
        let _ = writeln!(text, "conntrack {} entries", ct.entries);
    }
    let changes = &stats.runtime_changes;
    if changes.services + changes.backends > 0 {
        let _ = write!(
            text,
            "changed through the API: {}, {}",
            plural(changes.services, "service", "services"),
            plural(changes.backends, "backend", "backends")
        );
        if let Some(file) = &changes.state_file {
            let _ = write!(text, " (kept in {file})");
        }
        text.push('\n');
    }

    // (label, totals, rates) per row.
    let mut rows: Vec<(String, [u64; 5], [f64; 5])> = Vec::new();
    for s in &stats.services {
        let (t, r) = (s.traffic, s.rates);
        rows.push((
            format!("{:<4} {}:{} ({})", s.protocol.to_uppercase(), s.vip, s.port, s.name),
            [t.new_flows, t.in_packets, t.out_packets, t.in_bytes, t.out_bytes],
            [r.new_flows, r.in_packets, r.out_packets, r.in_bytes, r.out_bytes],
        ));
        for b in &s.backends {
            let (t, r) = (b.traffic, b.rates);
            rows.push((
                format!("  -> {}:{}", b.address, b.port),
                [t.new_flows, t.in_packets, t.out_packets, t.in_bytes, t.out_bytes],
                [r.new_flows, r.in_packets, r.out_packets, r.in_bytes, r.out_bytes],
            ));
        }
    }
    let first = "Prot LocalAddress:Port";
    let width = rows.iter().map(|(l, ..)| l.chars().count()).max().unwrap_or(0).max(28);
    let table = |heads: [&str; 5], cells: &dyn Fn(usize) -> [String; 5]| {
        let mut t = format!("\n{first:<width$}");
        for h in heads {
            let _ = write!(t, " {h:>8}");
        }
        t.push_str("\n  -> RemoteAddress:Port\n");
        for (i, (label, ..)) in rows.iter().enumerate() {
            let _ = write!(t, "{label:<width$}");
            for c in cells(i) {
                let _ = write!(t, " {c:>8}");
            }
            t.push('\n');
        }
        t
    };
    text.push_str(&table(["Conns", "InPkts", "OutPkts", "InBytes", "OutBytes"], &|i| {
        rows[i].1.map(large)
    }));
    text.push_str(&table(["CPS", "InPPS", "OutPPS", "InBPS", "OutBPS"], &|i| rows[i].2.map(rate)));

    // The outcomes in the data plane's order, then any this build does not know.
    let known = lb_common::counter::Counter::ALL.iter().map(|c| c.name());
    let mut outcomes: Vec<(&str, u64)> =
        known.filter_map(|n| stats.packets.get(n).map(|v| (n, *v))).collect();
    for (name, count) in &stats.packets {
        if !outcomes.iter().any(|(n, _)| n == name) {
            outcomes.push((name, *count));
        }
    }
    outcomes.retain(|(_, count)| *count > 0);
    if outcomes.is_empty() {
        text.push_str("\nPacket outcomes: none yet\n");
    } else {
        text.push_str("\nPacket outcomes since the data plane started:\n");
        let width = outcomes.iter().map(|(n, _)| n.len()).max().unwrap_or(0);
        for (name, count) in outcomes {
            let _ = writeln!(text, "  {name:<width$} {count:>14}");
        }
    }
    text
}

/// `mm:ss` of a number of milliseconds (minutes past 99 widen it).
fn expire(ms: u64) -> String {
    let s = ms / 1000;
    format!("{:02}:{:02}", s / 60, s % 60)
}

/// `lb-ctl conns`: like `ipvsadm -Lnc`, then `N of M connections` when
/// the answer stopped at the limit.
pub fn render_conns(list: &ConnsList) -> String {
    let row = |pro: &str, expire: &str, state: &str, source: &str, virt: &str, dest: &str| {
        format!("{pro:<3} {expire:<6} {state:<11} {source:<21} {virt:<21} {dest}\n")
    };
    let mut text = row("pro", "expire", "state", "source", "virtual", "destination");
    for c in &list.conns {
        text.push_str(&row(
            &c.protocol.to_uppercase(),
            &expire(c.expires_in_ms),
            &c.state,
            &c.client,
            &c.vip,
            c.backend.as_deref().unwrap_or("-"),
        ));
    }
    if list.truncated {
        let _ = writeln!(text, "{} of {} connections", list.conns.len(), list.total);
    }
    text
}

#[cfg(test)]
mod tests {
    use clap::{CommandFactory as _, Parser};

    use super::*;
    use crate::{
        api::view::{
            CheckView, ConnView, ConnsView, ConntrackView, HealthCheckView, HealthView, RatesView,
            TrafficView,
        },
        client::tests::{answer, serve_once},
    };

    /// The way main.rs wires it.
    #[derive(Debug, Parser)]
    #[command(name = "lb-ctl")]
    struct Cli {
        #[command(subcommand)]
        command: Command,
        #[command(flatten)]
        target: Target,
    }

    #[derive(Debug, clap::Subcommand)]
    enum Command {
        Run {
            #[arg(long)]
            config: PathBuf,
        },
        Check {
            #[arg(long)]
            config: PathBuf,
        },
        #[command(flatten)]
        Operator(Operator),
    }

    #[derive(Debug)]
    struct Parsed {
        op: Operator,
        target: Target,
    }

    fn parse(args: &[&str]) -> Result<Parsed, clap::Error> {
        let cli = Cli::try_parse_from(std::iter::once("lb-ctl").chain(args.iter().copied()))?;
        match cli.command {
            Command::Operator(op) => Ok(Parsed { op, target: cli.target }),
            other => panic!("{other:?}"),
        }
    }

    fn backend(last: u8, weight: u32, state: &str, health: &str, active: u32) -> BackendView {
        BackendView {
            address: format!("10.77.2.{last}"),
            port: 80,
            weight,
            state: state.into(),
            in_rotation: weight > 0 && state == "active" && health != "DOWN",
            health: HealthView { status: health.into(), last_check: None },
            conns: ConnsView { active, inactive: 0 },
            traffic: TrafficView::default(),
            rates: RatesView::default(),
        }
    }

    fn web() -> ServiceView {
        let backends = vec![
            backend(11, 1, "active", "UP", 3),
            backend(12, 10, "drain", "UP", 12345),
            backend(13, 1, "maint", "DOWN", 0),
        ];
        ServiceView {
            name: "web".into(),
            vip: "10.77.1.100".into(),
            port: 80,
            protocol: "tcp".into(),
            scheduler: "maglev".into(),
            forwarding: "nat".into(),
            on_no_backend: "reject".into(),
            health: Some(HealthCheckView {
                check: "http".into(),
                path: Some("/".into()),
                expect_status: Some(200),
                interval_ms: 2000,
                timeout_ms: 1000,
                rise: 2,
                fall: 3,
                ..HealthCheckView::default()
            }),
            backends_in_rotation: 1,
            backends,
            ..ServiceView::default()
        }
    }

    fn dns() -> ServiceView {
        ServiceView {
            name: "dns".into(),
            vip: "10.77.1.53".into(),
            port: 53,
            protocol: "udp".into(),
            scheduler: "sh".into(),
            forwarding: "nat".into(),
            on_no_backend: "drop".into(),
            backends_in_rotation: 1,
            backends: vec![BackendView {
                address: "10.77.2.21".into(),
                port: 53,
                weight: 1,
                state: "active".into(),
                in_rotation: true,
                health: HealthView { status: "UNCHECKED".into(), last_check: None },
                ..BackendView::default()
            }],
            ..ServiceView::default()
        }
    }

    #[test]
    fn the_cli_is_well_formed() {
        Cli::command().debug_assert();
        let mut cli = Cli::command();
        cli.build();
        for path in
            [&["list"][..], &["service"], &["service", "add"], &["backend", "weight"], &["conns"]]
        {
            let mut command = &mut cli;
            for name in path {
                command = command.find_subcommand_mut(name).unwrap();
            }
            let help = command.render_long_help().to_string();
            assert!(help.contains("4  authentication failed"), "{path:?}: {help}");
            assert!(help.contains("--admin <URL>"), "{path:?}: {help}");
        }
        let run = Cli::try_parse_from(["lb-ctl", "run", "--config", "/c"]).unwrap();
        assert!(matches!(run.command, Command::Run { .. }));
    }

    #[test]
    fn commands_parse() {
        let cli =
            parse(&["backend", "add", "web", "10.77.2.14:80", "--weight", "3", "--admin", "x:1"])
                .unwrap();
        assert_eq!(cli.target.admin.as_deref(), Some("x:1"));
        let Operator::Backend(BackendCmd::Add { at, weight }) = cli.op else { panic!() };
        assert_eq!(
            (at.service.as_str(), at.backend.to_string(), weight),
            ("web", "10.77.2.14:80".into(), Some(3))
        );

        let cli = parse(&["--token-file", "/t", "backend", "weight", "web", "10.77.2.14:80", "0"])
            .unwrap();
        assert_eq!(cli.target.token_file, Some(PathBuf::from("/t")));
        assert!(matches!(cli.op, Operator::Backend(BackendCmd::Weight { weight: 0, .. })));

        let cli = parse(&[
            "service",
            "add",
            "--name",
            "dns",
            "--vip",
            "10.77.1.53",
            "--port",
            "53",
            "--protocol",
            "udp",
            "--on-no-backend",
            "drop",
        ])
        .unwrap();
        assert!(matches!(
            cli.op,
            Operator::Service(ServiceCmd::Add { port: 53, ref protocol, scheduler: None, .. })
                if protocol.as_deref() == Some("udp")
        ));
        assert!(matches!(
            parse(&["conns", "--service", "web", "--limit", "5", "--json"]).unwrap().op,
            Operator::Conns { limit: Some(5), json: true, .. }
        ));
        assert!(matches!(
            parse(&["service", "delete", "web"]).unwrap().op,
            Operator::Service(ServiceCmd::Del { .. })
        ));
    }

    #[test]
    fn bad_arguments_are_usage_errors_naming_the_value() {
        for (args, named) in [
            (&["backend", "add", "web", "junk"][..], "junk"),
            (&["backend", "drain", "web", "10.77.2.14"], "10.77.2.14"),
            (&["backend", "del", "web", "10.77.2.14:0"], "10.77.2.14:0"),
            (&["backend", "maint", "web", "::1:80"], "::1:80"),
            (&["backend", "weight", "web", "10.77.2.14:80", "65536"], "65536"),
            (&["backend", "weight", "web", "10.77.2.14:80", "-1"], "-1"),
            (
                &["service", "add", "--name", "w", "--vip", "10.0.0.300", "--port", "80"],
                "10.0.0.300",
            ),
            (&["service", "add", "--name", "w", "--vip", "10.0.0.1", "--port", "0"], "0"),
            (
                &[
                    "service",
                    "add",
                    "--name",
                    "w",
                    "--vip",
                    "10.0.0.1",
                    "--port",
                    "80",
                    "--scheduler",
                    "x",
                ],
                "x",
            ),
            (&["conns", "--limit", "many"], "many"),
        ] {
            let e = parse(args).unwrap_err();
            assert_eq!(e.exit_code(), 2, "{args:?}");
            assert!(e.to_string().contains(named), "{args:?}: {e}");
        }
    }

    #[test]
    fn the_list_is_aligned_like_ipvsadm() {
        let text = render_list(&[web(), dns()]);
        let expected = "\
Prot LocalAddress:Port Scheduler Flags
  -> RemoteAddress:Port           Forward Weight ActiveConn InActConn State  Health
TCP  10.77.1.100:80 maglev reject check=http (web)
  -> 10.77.2.11:80                Masq    1      3          0         active UP
  -> 10.77.2.12:80                Masq    10     12345      0         drain  UP
  -> 10.77.2.13:80                Masq    1      0          0         maint  DOWN
UDP  10.77.1.53:53 sh drop (dns)
  -> 10.77.2.21:53                Masq    1      0          0         active UNCHECKED
";
        assert_eq!(text, expected, "\n{text}");
    }

    #[test]
    fn a_down_backend_shows_its_last_check() {
        let mut s = web();
        s.backends[2].health.last_check = Some(CheckView {
            ok: false,
            detail: "connection refused".into(),
            ..CheckView::default()
        });
        assert!(render_list(&[s]).contains(" maint  DOWN (connection refused)\n"));
    }

    #[test]
    fn no_services_is_the_headers_alone() {
        assert_eq!(
            render_list(&[]),
            "Prot LocalAddress:Port Scheduler Flags\n  -> RemoteAddress:Port           Forward Weight ActiveConn InActConn State  Health\n"
        );
        let stats = render_stats(&Stats { version: "0.1.0".into(), ..Stats::default() });
        assert!(stats.starts_with("lb-ctl 0.1.0, up 0s; conntrack 0 entries\n"), "{stats}");
        assert!(stats.ends_with("Packet outcomes: none yet\n"), "{stats}");
        assert_eq!(
            render_conns(&ConnsList::default()),
            "pro expire state       source                virtual               destination\n"
        );
    }

    #[test]
    fn conns_are_listed_like_ipvsadm_lnc() {
        let conn =
            |protocol: &str, client: &str, backend: Option<&str>, state: &str, ms| ConnView {
                protocol: protocol.into(),
                client: client.into(),
                vip: "10.77.1.100:80".into(),
                backend: backend.map(Into::into),
                service: Some("web".into()),
                state: state.into(),
                idle_ms: 0,
                expires_in_ms: ms,
            };
        let list = ConnsList {
            total: 5000,
            truncated: true,
            conns: vec![
                conn("tcp", "10.77.0.2:53211", Some("10.77.2.11:80"), "ESTABLISHED", 899_999),
                conn("udp", "10.77.0.2:5353", None, "UDP", 1_500),
                conn("tcp", "255.255.255.255:65535", Some("10.77.2.12:80"), "SYN", 7_200_000),
            ],
        };
        let expected = "\
pro expire state       source                virtual               destination
TCP 14:59  ESTABLISHED 10.77.0.2:53211       10.77.1.100:80        10.77.2.11:80
UDP 00:01  UDP         10.77.0.2:5353        10.77.1.100:80        -
TCP 120:00 SYN         255.255.255.255:65535 10.77.1.100:80        10.77.2.12:80
3 of 5000 connections
";
        assert_eq!(render_conns(&list), expected);
        let whole = ConnsList { truncated: false, total: 3, ..list };
        assert!(!render_conns(&whole).contains("connections"));
        assert_eq!(expire(0), "00:00");
        assert_eq!(expire(60_000), "01:00");
    }

    #[test]
    fn stats_show_totals_rates_and_outcomes() {
        let mut s = web();
        s.traffic = TrafficView {
            in_packets: 1_000,
            in_bytes: 123_456_789_012,
            out_packets: 900,
            out_bytes: 64_000,
            new_flows: 10,
        };
        s.rates = RatesView {
            in_packets: 12.4,
            in_bytes: 2000.6,
            new_flows: f64::NAN,
            ..RatesView::default()
        };
        s.backends[0].traffic.in_packets = 7;
        let stats = Stats {
            version: "0.1.0".into(),
            uptime_s: 2 * 86_400 + 3 * 3600 + 4 * 60 + 5,
            services: vec![s, dns()],
            packets: [("tx", 12_345), ("pass_not_ipv4", 0), ("drop_no_backend", 2), ("future", 1)]
                .into_iter()
                .map(|(n, c)| (n.to_owned(), c))
                .collect(),
            conntrack: ConntrackView { entries: 1234, capacity: 1_048_576 },
            ..Stats::default()
        };
        let text = render_stats(&stats);
        let expected = "\
lb-ctl 0.1.0, up 2d 3h 4m 5s; conntrack 1234 of 1048576 entries (0.1% full)

Prot LocalAddress:Port          Conns   InPkts  OutPkts  InBytes OutBytes
  -> RemoteAddress:Port
TCP  10.77.1.100:80 (web)          10     1000      900  123456M    64000
  -> 10.77.2.11:80                  0        7        0        0        0
  -> 10.77.2.12:80                  0        0        0        0        0
  -> 10.77.2.13:80                  0        0        0        0        0
UDP  10.77.1.53:53 (dns)            0        0        0        0        0
  -> 10.77.2.21:53                  0        0        0        0        0

Prot LocalAddress:Port            CPS    InPPS   OutPPS    InBPS   OutBPS
  -> RemoteAddress:Port
TCP  10.77.1.100:80 (web)           0       12        0     2001        0
  -> 10.77.2.11:80                  0        0        0        0        0
  -> 10.77.2.12:80                  0        0        0        0        0
  -> 10.77.2.13:80                  0        0        0        0        0
UDP  10.77.1.53:53 (dns)            0        0        0        0        0
  -> 10.77.2.21:53                  0        0        0        0        0

Packet outcomes since the data plane started:
  tx                       12345
  drop_no_backend              2
  future                       1
";
        assert_eq!(text, expected, "\n{text}");
    }

    #[test]
    fn a_long_service_name_widens_the_stats_labels() {
        let mut s = dns();
        s.name = "a-rather-long-service-name".into();
        let text = render_stats(&Stats { services: vec![s], ..Stats::default() });
        let label = "UDP  10.77.1.53:53 (a-rather-long-service-name)";
        let row = format!("{label}{}", "        0".repeat(5));
        let head = format!(
            "{:<47}    Conns   InPkts  OutPkts  InBytes OutBytes",
            "Prot LocalAddress:Port"
        );
        assert_eq!(label.len(), 47);
        assert!(text.contains(&format!("\n{head}\n  -> RemoteAddress:Port\n{row}\n")), "{text}");
    }

    #[test]
    fn json_is_indented_in_the_api_order() {
        let raw = r#"{"name":"web","port":80,"backends":[],"health":{},"x":["a\\\"{,:",{"k":[1, 2]}],"n":null}"#;
        let text = indent_json(raw);
        let expected = r#"{
  "name": "web",
  "port": 80,
  "backends": [],
  "health": {},
  "x": [
    "a\\\"{,:",
    {
      "k": [
        1,
        2
      ]
    }
  ],
  "n": null
}
"#;
        assert_eq!(text, expected);
        let value: Value = serde_json::from_str(raw).unwrap();
        assert_eq!(serde_json::from_str::<Value>(&text).unwrap(), value);
        // The same layout as serde_json's (which sorts the keys).
        let sorted: Value = serde_json::from_str(r#"{"a":[1,{"b":[]}],"c":{}}"#).unwrap();
        assert_eq!(
            indent_json(&sorted.to_string()),
            format!("{}\n", serde_json::to_string_pretty(&sorted).unwrap())
        );
        assert_eq!(indent_json("[ ]"), "[]\n");
        assert_eq!(indent_json("3"), "3\n");
    }

    #[test]
    fn large_numbers_fit_eight_columns() {
        assert_eq!(large(99_999_999), "99999999");
        assert_eq!(large(100_000_000), "100000K");
        assert_eq!(large(123_456_789_012), "123456M");
        assert_eq!(large(u64::MAX), "18446744T");
    }

    #[test]
    fn a_change_says_what_is_now_true() {
        let mut s = web();
        s.health = None;
        s.backends = vec![
            backend(11, 1, "active", "UNCHECKED", 0),
            backend(14, 1, "active", "UNCHECKED", 0),
        ];
        s.backends_in_rotation = 2;
        let at = |last| SocketAddrV4::new(Ipv4Addr::new(10, 77, 2, last), 80);
        assert_eq!(
            render_backend_change(&s, at(14), BackendChange::Added),
            "web: 10.77.2.14:80 added (weight 1); 2 backends, 2 in rotation\n"
        );
        assert_eq!(
            render_backend_change(&s, at(15), BackendChange::Removed),
            "web: 10.77.2.15:80 removed; 2 backends, 2 in rotation\n"
        );
        let s = web();
        assert_eq!(
            render_backend_change(&s, at(12), BackendChange::Drained),
            "web: 10.77.2.12:80 draining: no new flows, existing flows continue \
             (weight 10, drain, health UP, out of rotation); 3 backends, 1 in rotation\n"
        );
    }

    #[test]
    fn failures_are_reported_with_their_exit_code() {
        let refused = ClientError::Refused {
            status: hyper::StatusCode::UNPROCESSABLE_ENTITY,
            error: "port: 0 is out of range; vip: \"x\" is not an IPv4 address".into(),
            detail: json!([{"key": "port", "message": "0 is out of range"}, {"key": "vip", "message": "\"x\" is not an IPv4 address"}]),
        };
        assert_eq!(exit_code(&refused), 1);
        assert_eq!(
            report(&refused, &TokenSource::None),
            "lb-ctl: 422 Unprocessable Entity: port: 0 is out of range; vip: \"x\" is not an IPv4 address\n  \
             port: 0 is out of range\n  vip: \"x\" is not an IPv4 address\n"
        );
        let unauthorized = ClientError::Unauthorized("wrong token".into());
        assert_eq!(exit_code(&unauthorized), 4);
        assert!(
            report(&unauthorized, &TokenSource::Env)
                .contains("refused the token of LB_TOKEN: wrong token")
        );
        assert!(report(&unauthorized, &TokenSource::None).contains("no token was given"));
        let unreachable = ClientError::Unreachable {
            url: "http://127.0.0.1:9100".into(),
            source: io::Error::from(io::ErrorKind::ConnectionRefused),
        };
        assert_eq!(exit_code(&unreachable), 3);
        assert_eq!(
            report(&unreachable, &TokenSource::None),
            "lb-ctl: cannot reach the controller at http://127.0.0.1:9100: connection refused — is `lb-ctl run` running?\n"
        );
        assert_eq!(exit_code(&ClientError::Protocol(String::new())), 1);
        assert_eq!(exit_code(&ClientError::Invalid(String::new())), 2);
    }

    #[test]
    fn a_token_file_is_read_and_checked() {
        let dir = std::env::temp_dir().join(format!("lb-ctl-cli-test-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let file = dir.join("token");
        std::fs::write(&file, "  s3cret\n").unwrap();
        let target = Target { admin: None, token_file: Some(file.clone()) };
        assert_eq!(
            target.token().unwrap(),
            (Some("s3cret".into()), TokenSource::File(file.clone()))
        );
        std::fs::write(&file, "\n").unwrap();
        assert!(target.token().unwrap_err().contains("empty"));
        let missing = Target { admin: None, token_file: Some(dir.join("missing")) };
        assert!(missing.token().unwrap_err().contains("missing"));
        std::fs::remove_dir_all(&dir).unwrap();
        let explicit = Target { admin: Some("http://10.0.0.1:9100".into()), token_file: None };
        assert_eq!(explicit.admin_url().unwrap(), "http://10.0.0.1:9100");
    }

    #[tokio::test]
    async fn backend_add_posts_the_backend_and_says_what_happened() {
        let mut s = web();
        s.health = None;
        s.backends = vec![backend(14, 3, "active", "UNCHECKED", 0)];
        s.backends_in_rotation = 1;
        let (url, server) =
            serve_once(answer("201 Created", &serde_json::to_string(&s).unwrap())).await;
        let client = Client::new(&url, None).unwrap();
        let op = parse(&["backend", "add", "web", "10.77.2.14:80", "--weight", "3"]).unwrap().op;
        let text = execute(op, &client).await.unwrap();
        assert_eq!(text, "web: 10.77.2.14:80 added (weight 3); 1 backend, 1 in rotation\n");
        let seen = server.await.unwrap();
        assert!(seen.head.starts_with("POST /api/v1/services/web/backends HTTP/1.1\r\n"));
        let body: Value = serde_json::from_str(&seen.body).unwrap();
        assert_eq!(body, json!({"address": "10.77.2.14", "port": 80, "weight": 3}));
    }

    #[tokio::test]
    async fn paths_and_queries_are_encoded() {
        let body = r#"{"total":0,"truncated":false,"conns":[]}"#;
        let (url, server) = serve_once(answer("200 OK", body)).await;
        let client = Client::new(&url, None).unwrap();
        let op = parse(&["conns", "--service", "a b/c", "--limit", "10"]).unwrap().op;
        execute(op, &client).await.unwrap();
        let seen = server.await.unwrap();
        assert!(
            seen.head.starts_with("GET /api/v1/conns?service=a%20b%2Fc&limit=10 HTTP/1.1\r\n"),
            "{}",
            seen.head
        );
    }

    #[tokio::test]
    async fn drain_patches_the_state() {
        let (url, server) =
            serve_once(answer("200 OK", &serde_json::to_string(&web()).unwrap())).await;
        let client = Client::new(&url, None).unwrap();
        let op = parse(&["backend", "drain", "web", "10.77.2.12:80"]).unwrap().op;
        let text = execute(op, &client).await.unwrap();
        assert!(text.starts_with("web: 10.77.2.12:80 draining"), "{text}");
        let seen = server.await.unwrap();
        assert!(
            seen.head.starts_with("PATCH /api/v1/services/web/backends/10.77.2.12:80 HTTP/1.1\r\n")
        );
        assert_eq!(serde_json::from_str::<Value>(&seen.body).unwrap(), json!({"state": "drain"}));
    }
}
