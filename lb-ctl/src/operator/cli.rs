//! The operator's CLI: `lb-ctl list`, `service`, `backend`, `stats` and
//! `conns`, each a request to the admin API of `lb-ctl run`
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
//! ([`super::render`]).
use std::{
    fmt::Write as _,
    io::{self, Write as _},
    net::{IpAddr, SocketAddr},
    path::{Path, PathBuf},
    process::ExitCode,
};

use clap::{Args, Subcommand};
use hyper::Method;
use serde_json::{Value, json};

use super::{
    client::{Client, ClientError, encode_component, parse_admin_url},
    render::{
        BackendChange, render_backend_change, render_conns, render_list, render_node, render_stats,
        rotation_summary, service_line,
    },
};
use crate::{
    daemon::{
        api::{
            token,
            trace_route::MAX_COUNT,
            view::{ConnsList, ServiceView, Stats},
        },
        bgp::NodeView,
        trace::{ClientPrefix, Line},
    },
    desired::{bounds::MAX_WEIGHT, changes::parse_backend_address},
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
    /// Stream the data plane's decisions on matching packets as they
    /// happen, one line each: interface, addresses and ports as they
    /// arrived, TCP flags, the decision and why, the backend and service
    /// (`GET /api/v1/trace`). Stop with Ctrl-C, or after --count packets.
    #[command(after_help = EXIT_CODES)]
    Trace {
        /// Only this service's packets.
        #[arg(long)]
        service: Option<String>,
        /// Only packets from or to this client: ADDR or ADDR/LEN.
        #[arg(long, value_name = "ADDR[/LEN]", value_parser = parse_client)]
        client: Option<ClientPrefix>,
        /// Only packets the data plane dropped.
        #[arg(long)]
        drops_only: bool,
        /// Stop after this many packets.
        #[arg(long, value_name = "N", value_parser = clap::value_parser!(u64).range(1..=MAX_COUNT))]
        count: Option<u64>,
        /// One JSON object per line, as the API sends them.
        #[arg(long)]
        json: bool,
    },
    /// Whether the controller is live and the XDP program attached on every
    /// interface (`GET /readyz`): exit 0 if so. For keepalived's
    /// `track_script` (see examples/keepalived/).
    #[command(after_help = EXIT_CODES)]
    Health,
    /// This node's BGP announcements: each VIP, announced or why not, the
    /// drain, the services' fingerprint (equal on nodes that place flows alike).
    #[command(after_help = EXIT_CODES)]
    Node {
        #[command(subcommand)]
        action: Option<NodeCmd>,
        /// Print the API's JSON (`GET /api/v1/node`).
        #[arg(long)]
        json: bool,
    },
}

#[derive(Debug, Subcommand)]
pub enum NodeCmd {
    /// Withdraw every VIP from this node (maintenance): the routers stop
    /// sending it new traffic, what still arrives is forwarded. Kept across
    /// restarts until `node undrain`.
    #[command(after_help = EXIT_CODES)]
    Drain,
    /// Announce again the VIPs this node can serve.
    #[command(after_help = EXIT_CODES)]
    Undrain,
}

#[derive(Debug, Subcommand)]
pub enum ServiceCmd {
    /// Add a service, without backends (`backend add` gives it some).
    #[command(after_help = EXIT_CODES)]
    Add(Box<ServiceAdd>),
    /// Remove a service and its backends.
    #[command(visible_alias = "delete", after_help = EXIT_CODES)]
    Del { name: String },
}

/// `service add`'s options: the body of the new service.
#[derive(Debug, Args)]
pub struct ServiceAdd {
    /// Letters, digits, '-', '_', '.'.
    #[arg(long)]
    pub name: String,
    /// The virtual IP address, IPv4 or IPv6.
    #[arg(long)]
    pub vip: IpAddr,
    /// 1 to 65535.
    #[arg(long, value_parser = clap::value_parser!(u16).range(1..))]
    pub port: u16,
    /// [default: tcp]
    #[arg(long, value_parser = ["tcp", "udp"])]
    pub protocol: Option<String>,
    /// sh = source-IP hash. [default: maglev]
    #[arg(long, value_parser = ["maglev", "rr", "wrr", "lc", "sh"])]
    pub scheduler: Option<String>,
    /// nat (IPVS -m), dsr (IPVS -g: backends hold the VIP and answer
    /// clients directly) or fullnat (the source too, to a pool address:
    /// backends need no route through the load balancer). [default: nat]
    #[arg(long, value_parser = ["nat", "dsr", "fullnat"])]
    pub forwarding: Option<String>,
    /// What a client gets when no backend can take it: a TCP reset / ICMP
    /// port unreachable, or nothing. [default: reject]
    #[arg(long, value_parser = ["reject", "drop"])]
    pub on_no_backend: Option<String>,
    /// Seconds a backend's weight ramps up over once it is usable
    /// (comes UP, is added, is undrained), 0 to 3600. [default: 0]
    #[arg(long, value_parser = clap::value_parser!(u16).range(..=3600))]
    pub slow_start: Option<u16>,
    /// Seconds a client keeps the backend of its last flow (IPVS -p).
    /// [default: none]
    #[arg(long, value_name = "SECONDS")]
    pub persistence: Option<u32>,
    /// The prefix length persistence groups clients by (IPVS -M).
    /// [default: 32, IPv6 128]
    #[arg(long, value_name = "LEN")]
    pub persistence_netmask: Option<u8>,
    /// A network that may connect (repeat for more; Kubernetes'
    /// loadBalancerSourceRanges). [default: anyone]
    #[arg(long = "allow", value_name = "PREFIX")]
    pub allowed_sources: Vec<String>,
    /// fullnat: an address flows leave from (repeat for more, at most 4).
    /// [default: the load balancer's own address toward each backend]
    #[arg(long = "snat-address", value_name = "ADDRESS")]
    pub snat_addresses: Vec<String>,
    /// fullnat: the source ports, FIRST-LAST. [default: 61000-65535]
    #[arg(long, value_name = "FIRST-LAST")]
    pub snat_ports: Option<String>,
}

impl ServiceAdd {
    /// The new service, as the API's body writes it (what is not given
    /// is the API's default).
    fn body(self) -> Value {
        let mut body = json!({"name": self.name, "vip": self.vip.to_string(), "port": self.port});
        if let Some(seconds) = self.slow_start {
            body["slow_start_s"] = json!(seconds);
        }
        if let Some(seconds) = self.persistence {
            body["persistence_s"] = json!(seconds);
        }
        if let Some(len) = self.persistence_netmask {
            body["persistence_netmask"] = json!(len);
        }
        for (key, list) in
            [("allowed_sources", self.allowed_sources), ("snat_addresses", self.snat_addresses)]
        {
            if !list.is_empty() {
                body[key] = json!(list);
            }
        }
        for (key, value) in [
            ("protocol", self.protocol),
            ("scheduler", self.scheduler),
            ("forwarding", self.forwarding),
            ("on_no_backend", self.on_no_backend),
            ("snat_ports", self.snat_ports),
        ] {
            if let Some(value) = value {
                body[key] = Value::String(value);
            }
        }
        body
    }
}

/// A backend of a service: `SERVICE ADDRESS:PORT`.
#[derive(Debug, Clone, Args)]
pub struct BackendAt {
    /// The service's name.
    pub service: String,
    /// The backend, e.g. 10.77.2.11:80.
    #[arg(value_name = "ADDRESS:PORT", value_parser = parse_backend)]
    pub backend: SocketAddr,
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
        /// A sorry server: new flows only while no other backend of the
        /// service is usable (HAProxy `backup`).
        #[arg(long)]
        backup: bool,
        /// Its own slow start in seconds, over the service's, 0 to 3600.
        #[arg(long, value_parser = clap::value_parser!(u16).range(..=3600))]
        slow_start: Option<u16>,
        /// At this many connections it takes no new flow (IPVS -x). [default: no limit]
        #[arg(long, value_name = "N")]
        max_conns: Option<u32>,
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

fn parse_backend(text: &str) -> Result<SocketAddr, String> {
    parse_backend_address(text).ok_or_else(|| {
        format!("{text:?} is not an ADDRESS:PORT (e.g. 10.77.2.11:80, [fd77:2::11]:80)")
    })
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
    /// The one `lb-ctl run` generated on this machine for the admin port.
    Generated(PathBuf),
    /// That one exists but could not be read (another user's), and why.
    Unreadable(PathBuf, String),
}

impl Target {
    /// The client of the API, and where its token came from.
    fn prepare(self) -> Result<(Client, TokenSource), String> {
        let url = self.admin_url()?;
        let (token, source) = self.token(&url, &token::run_dir())?;
        let client = Client::new(&url, token).map_err(|e| e.to_string())?;
        Ok((client, source))
    }

    /// The client of the API with no token: for what needs none (`health`,
    /// which keepalived runs as root every few seconds). Sending the
    /// generated token there would hand it to whatever listens on the port
    /// while the controller is down.
    fn prepare_without_token(self) -> Result<(Client, TokenSource), String> {
        let client = Client::new(&self.admin_url()?, None).map_err(|e| e.to_string())?;
        Ok((client, TokenSource::None))
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

    /// The token: `--token-file`, else `$LB_TOKEN`, else (for a controller
    /// on this machine's loopback) the one `lb-ctl run` generated for the
    /// URL's port under `run_dir`; else none.
    fn token(&self, url: &str, run_dir: &Path) -> Result<(Option<String>, TokenSource), String> {
        if let Some(path) = &self.token_file {
            let token = token::read_any(path).map_err(|e| format!("--token-file {e}"))?;
            return Ok((Some(token), TokenSource::File(path.clone())));
        }
        match std::env::var("LB_TOKEN") {
            Ok(token) if !token.trim().is_empty() => {
                return Ok((Some(token.trim().to_owned()), TokenSource::Env));
            }
            Ok(_) | Err(std::env::VarError::NotPresent) => {}
            Err(std::env::VarError::NotUnicode(_)) => {
                return Err("LB_TOKEN is not valid UTF-8".into());
            }
        }
        let Some(port) = loopback_port(url) else {
            return Ok((None, TokenSource::None));
        };
        let path = token::generated_path(run_dir, port);
        match token::read_any(&path) {
            Ok(token) => Ok((Some(token), TokenSource::Generated(path))),
            Err(token::TokenError::Io { source, .. })
                if source.kind() == io::ErrorKind::NotFound =>
            {
                Ok((None, TokenSource::None))
            }
            // Without it the request may still succeed (`health` needs no
            // token); a 401 will say why there was none.
            Err(e) => Ok((None, TokenSource::Unreadable(path, e.to_string()))),
        }
    }
}

/// The port of an admin URL that names this machine's loopback, where a
/// generated token may be found.
fn loopback_port(url: &str) -> Option<u16> {
    let (host, port, _) = parse_admin_url(url).ok()?;
    let loopback = host.eq_ignore_ascii_case("localhost")
        || host.parse::<IpAddr>().is_ok_and(|ip| ip.is_loopback());
    loopback.then_some(port)
}

/// The client `op` talks through: with the token for everything but
/// `health`, whose `/readyz` is open (see `Target::prepare_without_token`).
fn client_for(op: &Operator, target: Target) -> Result<(Client, TokenSource), String> {
    match op {
        Operator::Health => target.prepare_without_token(),
        _ => target.prepare(),
    }
}

/// Runs one operator command against the controller of `target`; the
/// process's exit code (see the module's documentation).
pub fn run(op: Operator, target: Target) -> ExitCode {
    let prepared = client_for(&op, target);
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
            TokenSource::Generated(path) => format!(
                "lb-ctl: authentication failed: the controller refused the token lb-ctl run generated in {} \
                 (it uses admin.token_file instead? then pass --token-file): {message}\n",
                path.display()
            ),
            TokenSource::Unreadable(_, why) => format!(
                "lb-ctl: authentication failed: the token lb-ctl run generated cannot be read ({why}); \
                 run as its owner, or use --token-file FILE or LB_TOKEN; it says: {message}\n",
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
const NODE: &str = "/api/v1/node";

fn service_path(name: &str) -> String {
    format!("{SERVICES}/{}", encode_component(name))
}

fn backend_path(at: &BackendAt) -> String {
    format!("{}/backends/{}", service_path(&at.service), at.backend)
}

/// The API's JSON answer to `GET path`, indented, its keys in the API's order.
async fn get_pretty(client: &Client, path: &str) -> Result<String, ClientError> {
    let (_, bytes) = client.request(Method::GET, path, None).await?;
    indent_json(&bytes).map_err(|e| {
        ClientError::Protocol(format!(
            "GET {path}: the answer of the controller at {} is not understood: {e}",
            client.url()
        ))
    })
}

/// The JSON `text` indented by two spaces, as `serde_json::to_string_pretty`
/// does, but streamed from the text so that objects keep their keys in the
/// order they came in (a `Value` would sort them); with a final newline.
fn indent_json(text: &[u8]) -> Result<String, serde_json::Error> {
    let mut from = serde_json::Deserializer::from_slice(text);
    let mut out = Vec::with_capacity(text.len() * 2);
    serde_transcode::transcode(&mut from, &mut serde_json::Serializer::pretty(&mut out))?;
    from.end()?;
    out.push(b'\n');
    Ok(String::from_utf8(out).expect("serde_json writes UTF-8"))
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
        Operator::Service(ServiceCmd::Add(add)) => {
            let body = add.body();
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
        Operator::Health => {
            client.request(Method::GET, "/readyz", None).await?;
            Ok("ready: the controller is live and the data plane attached\n".into())
        }
        Operator::Node { action, json } => node(action, json, client).await,
        Operator::Stats { json } => {
            let path = "/api/v1/stats";
            if json {
                return get_pretty(client, path).await;
            }
            Ok(render_stats(&client.get_json::<Stats>(path).await?))
        }
        Operator::Trace { service, client: prefix, drops_only, count, json } => {
            let path = trace_path(service.as_deref(), prefix, drops_only, count);
            trace(client, &path, json).await
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

/// `GET /api/v1/trace` with the filter as its query.
fn trace_path(
    service: Option<&str>,
    client: Option<ClientPrefix>,
    drops_only: bool,
    count: Option<u64>,
) -> String {
    let mut query = Vec::new();
    if let Some(name) = service {
        query.push(format!("service={}", encode_component(name)));
    }
    if let Some(prefix) = client {
        query.push(format!("client={}", encode_component(&prefix.to_string())));
    }
    if drops_only {
        query.push("drops_only=true".to_owned());
    }
    if let Some(n) = count {
        query.push(format!("count={n}"));
    }
    if query.is_empty() {
        "/api/v1/trace".to_owned()
    } else {
        format!("/api/v1/trace?{}", query.join("&"))
    }
}

/// Prints each line of the trace as it comes (the API's JSON, or plain).
async fn trace(client: &Client, path: &str, json: bool) -> Result<String, ClientError> {
    let mut unreadable = None;
    client
        .stream_lines(path, |line| {
            if json {
                let mut text = String::from_utf8_lossy(line).into_owned();
                text.push('\n');
                write_out(&text);
                return true;
            }
            match serde_json::from_slice::<Line>(line) {
                Ok(line) => {
                    write_out(&format!("{}\n", line.plain()));
                    true
                }
                Err(e) => {
                    unreadable = Some(e.to_string());
                    false
                }
            }
        })
        .await?;
    match unreadable {
        Some(e) => Err(ClientError::Protocol(format!(
            "GET {path}: a line of the trace from {} is not understood: {e}",
            client.url()
        ))),
        None => Ok(String::new()),
    }
}

fn parse_client(text: &str) -> Result<ClientPrefix, String> {
    ClientPrefix::parse(text).map_err(|e| e.to_string())
}

/// `lb-ctl node [drain | undrain]`.
async fn node(action: Option<NodeCmd>, json: bool, client: &Client) -> Result<String, ClientError> {
    let view: NodeView = match action {
        None if json => return get_pretty(client, NODE).await,
        None => client.get_json(NODE).await?,
        Some(NodeCmd::Drain) => {
            client.send_json(Method::POST, &format!("{NODE}/drain"), Some(json!({}))).await?
        }
        Some(NodeCmd::Undrain) => {
            client.send_json(Method::POST, &format!("{NODE}/undrain"), Some(json!({}))).await?
        }
    };
    if json {
        return Ok(format!("{}\n", serde_json::to_string_pretty(&view).unwrap_or_default()));
    }
    Ok(render_node(&view))
}

async fn backend(cmd: BackendCmd, client: &Client) -> Result<String, ClientError> {
    let set = |at: BackendAt, body: Value, change| async move {
        let view: ServiceView =
            client.send_json(Method::PATCH, &backend_path(&at), Some(body)).await?;
        Ok(render_backend_change(&view, at.backend, change))
    };
    match cmd {
        BackendCmd::Add { at, weight, backup, slow_start, max_conns } => {
            let mut body =
                json!({"address": at.backend.ip().to_string(), "port": at.backend.port()});
            if let Some(weight) = weight {
                body["weight"] = json!(weight);
            }
            if backup {
                body["backup"] = json!(true);
            }
            if let Some(seconds) = slow_start {
                body["slow_start_s"] = json!(seconds);
            }
            if let Some(n) = max_conns {
                body["max_conns"] = json!(n);
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

#[cfg(test)]
mod tests {
    use clap::{CommandFactory as _, Parser};

    use super::*;
    use crate::operator::{
        client::tests::{answer, serve_once},
        render::tests::{backend, web},
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
        let Operator::Backend(BackendCmd::Add { at, weight, backup, .. }) = cli.op else {
            panic!()
        };
        assert_eq!(
            (at.service.as_str(), at.backend.to_string(), weight, backup),
            ("web", "10.77.2.14:80".into(), Some(3), false)
        );
        let cli =
            parse(&["backend", "add", "web", "10.77.2.14:80", "--backup", "--slow-start", "30"])
                .unwrap();
        let Operator::Backend(BackendCmd::Add { backup, slow_start, .. }) = cli.op else {
            panic!()
        };
        assert!(backup);
        assert_eq!(slow_start, Some(30));
        let cli = parse(&["backend", "add", "web", "10.77.2.14:80", "--max-conns", "100"]).unwrap();
        let Operator::Backend(BackendCmd::Add { max_conns, .. }) = cli.op else { panic!() };
        assert_eq!(max_conns, Some(100));
        let cli = parse(&[
            "service",
            "add",
            "--name",
            "api",
            "--vip",
            "10.77.1.101",
            "--port",
            "443",
            "--persistence",
            "300",
            "--persistence-netmask",
            "24",
            "--allow",
            "10.0.0.0/8",
            "--allow",
            "192.0.2.0/24",
            "--forwarding",
            "fullnat",
            "--snat-address",
            "10.77.2.1",
            "--snat-ports",
            "40000-40063",
        ])
        .unwrap();
        let Operator::Service(ServiceCmd::Add(add)) = cli.op else { panic!() };
        let ServiceAdd {
            persistence,
            persistence_netmask,
            allowed_sources,
            forwarding,
            snat_addresses,
            snat_ports,
            ..
        } = *add;
        assert_eq!((persistence, persistence_netmask), (Some(300), Some(24)));
        assert_eq!(allowed_sources, ["10.0.0.0/8", "192.0.2.0/24"]);
        assert_eq!(forwarding.as_deref(), Some("fullnat"));
        assert_eq!(
            (snat_addresses, snat_ports.as_deref()),
            (vec!["10.77.2.1".to_owned()], Some("40000-40063"))
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
            Operator::Service(ServiceCmd::Add(ref add))
                if add.port == 53 && add.protocol.as_deref() == Some("udp") && add.scheduler.is_none()
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
    fn trace_parses_into_its_api_path() {
        let Operator::Trace { service, client, drops_only, count, json } = parse(&[
            "trace",
            "--service",
            "a b",
            "--client",
            "fd77::/16",
            "--drops-only",
            "--count",
            "3",
        ])
        .unwrap()
        .op
        else {
            panic!()
        };
        assert!(drops_only && !json);
        assert_eq!(
            trace_path(service.as_deref(), client, drops_only, count),
            "/api/v1/trace?service=a%20b&client=fd77%3A%3A%2F16&drops_only=true&count=3"
        );
        assert_eq!(trace_path(None, None, false, None), "/api/v1/trace");
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
            (&["backend", "add", "web", "10.77.2.14:80", "--slow-start", "3601"], "3601"),
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
            (&["trace", "--client", "10.77.1.0/33"], "10.77.1.0/33"),
            (&["trace", "--client", "somewhere"], "somewhere"),
            (&["trace", "--count", "0"], "0"),
            (&["trace", "--count", "1000001"], "1000001"),
        ] {
            let e = parse(args).unwrap_err();
            assert_eq!(e.exit_code(), 2, "{args:?}");
            assert!(e.to_string().contains(named), "{args:?}: {e}");
        }
    }

    #[test]
    fn json_is_indented_in_the_api_order() {
        let raw = r#"{"name":"web","port":80,"backends":[],"health":{},"x":["a\\\"{,:",{"k":[1, 2]}],"n":null}"#;
        let text = indent_json(raw.as_bytes()).unwrap();
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
            indent_json(sorted.to_string().as_bytes()).unwrap(),
            format!("{}\n", serde_json::to_string_pretty(&sorted).unwrap())
        );
        assert_eq!(indent_json(b"[ ]").unwrap(), "[]\n");
        assert_eq!(indent_json(b"3").unwrap(), "3\n");
    }

    #[test]
    fn indented_json_keeps_the_api_digits_and_refuses_what_is_not_json() {
        // The rates of `stats`: a float read back must print as it was written.
        let mut bits = 0x1234_5678_9abc_def1_u64;
        for _ in 0..10_000 {
            bits ^= bits << 13;
            bits ^= bits >> 7;
            bits ^= bits << 17;
            let rate = f64::from_bits(bits >> 2); // Positive and finite.
            let raw = serde_json::to_string(&json!({ "rate": rate })).unwrap();
            let number = &raw["{\"rate\":".len()..raw.len() - 1];
            assert_eq!(
                indent_json(raw.as_bytes()).unwrap(),
                format!("{{\n  \"rate\": {number}\n}}\n")
            );
        }
        for bad in [&b""[..], b"{", b"{} {}", b"[1,]", b"<html>", b"\"\xff\""] {
            assert!(indent_json(bad).is_err(), "{:?}", String::from_utf8_lossy(bad));
        }
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
        let token = |t: &Target| t.token(DEFAULT_ADMIN, &dir);
        assert_eq!(
            token(&target).unwrap(),
            (Some("s3cret".into()), TokenSource::File(file.clone()))
        );
        std::fs::write(&file, "\n").unwrap();
        assert!(token(&target).unwrap_err().contains("empty"));
        let missing = Target { admin: None, token_file: Some(dir.join("missing")) };
        assert!(token(&missing).unwrap_err().contains("missing"));
        std::fs::remove_dir_all(&dir).unwrap();
        let explicit = Target { admin: Some("http://10.0.0.1:9100".into()), token_file: None };
        assert_eq!(explicit.admin_url().unwrap(), "http://10.0.0.1:9100");
    }

    /// `health` never carries a token, even one given explicitly: it asks an
    /// open route, and while the controller is down whatever holds its port
    /// would be handed the token.
    #[test]
    fn health_sends_no_token_and_the_other_commands_do() {
        let dir = std::env::temp_dir().join(format!("lb-ctl-cli-health-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let file = dir.join("token");
        std::fs::write(&file, "s3cret\n").unwrap();
        let target = || Target { admin: None, token_file: Some(file.clone()) };
        let (health, _) = client_for(&Operator::Health, target()).unwrap();
        assert!(!health.has_token(), "health carried the token");
        let list = Operator::List { service: None, json: false };
        let (listing, _) = client_for(&list, target()).unwrap();
        assert!(listing.has_token(), "list went without its token");
        std::fs::remove_dir_all(&dir).unwrap();
    }

    /// Without --token-file or LB_TOKEN, the CLI finds the token `lb-ctl
    /// run` generated for the port of a loopback admin URL, and only there.
    #[test]
    fn the_generated_token_is_found_for_a_loopback_controller() {
        if std::env::var_os("LB_TOKEN").is_some() {
            return; // The environment's token comes first; nothing to see.
        }
        let dir = std::env::temp_dir().join(format!("lb-ctl-cli-gen-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        let (made, path, _) = token::generated(&dir, 9188).unwrap();
        let target = Target::default();
        for url in
            ["http://127.0.0.1:9188", "localhost:9188", "http://[::1]:9188/", "127.0.0.2:9188"]
        {
            let (found, source) = target.token(url, &dir).unwrap();
            assert_eq!(found.as_deref(), Some(&*made), "{url}");
            assert_eq!(source, TokenSource::Generated(path.clone()), "{url}");
        }
        // Another port, another machine: none.
        for url in ["http://127.0.0.1:9189", "http://10.0.0.1:9188", "http://lb1:9188"] {
            assert_eq!(target.token(url, &dir).unwrap(), (None, TokenSource::None), "{url}");
        }
        let _ = std::fs::remove_dir_all(&dir);
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
