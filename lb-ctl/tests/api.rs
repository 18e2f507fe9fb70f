//! The admin API's contract, end to end in-process: a controller over
//! in-memory maps (`FakeMaps`, the image the kernel would hold), run by the
//! loop `lb-ctl run` runs it with (`control_loop::run`, with no signals and
//! no kernel), and `api::app` driven with `tower::ServiceExt::oneshot` (or,
//! where the socket matters, served on a loopback listener as `lb-ctl run`
//! serves it).
//!
//! Every error answer is checked for its status and its JSON shape
//! (`{"error": …, "detail": …}`); every refused request for leaving the
//! services, the kernel maps and the state file exactly as they were.
#![allow(clippy::too_many_lines)]

mod common;

use std::{
    collections::{BTreeMap, BTreeSet},
    fs,
    net::SocketAddr,
    path::{Path, PathBuf},
    sync::Arc,
    time::Duration,
};

use axum::{
    Router,
    body::Body,
    http::{HeaderMap, Method, Request, StatusCode, header},
};
use base64::Engine as _;
use http_body_util::BodyExt as _;
use lb_common::{
    abi::{BACKEND_DOWN, BACKEND_IN_USE, PROTO_UDP},
    counter::Counter,
    trace::{TRACE_CLIENT, TRACE_DROPS_ONLY, TRACE_NEW_FLOW, TRACE_PORTS, TraceConf, TraceEvent},
};
use lb_ctl::{
    daemon::{
        api::{self, ApiState},
        bgp,
        control_loop::{self, Signal, Signals},
        controller::{self, Controller},
        run::Overrides,
    },
    desired::config,
    plan::image::Image,
    write::{
        dataplane::fake::FakeMaps,
        reconciler::{self, Reconciler},
    },
};
use serde_json::{Value, json};
use tokio::{
    io::{AsyncReadExt as _, AsyncWriteExt as _},
    net::TcpStream,
    sync::mpsc,
};
use tower::ServiceExt as _;

use common::TempDir;

/// How often the test controller samples (`lb-ctl run`: every second).
const SAMPLE_INTERVAL: Duration = Duration::from_millis(200);

const TOKEN: &str = "s3cret";

/// The token of a harness started without one: as `lb-ctl run` generates
/// one, the harness has one, and presents it unless a test says otherwise.
const HARNESS_TOKEN: &str = "h4rness-t0ken";

/// The address the harness's API believes it listens on: `Host` must name it.
const LISTEN: &str = "127.0.0.1:9100";

/// The config every test starts from.
fn config_text(state_file: &Path) -> String {
    format!(
        r#"
[dataplane]
interfaces = ["lb-test0"]
snat_addresses = ["10.77.9.5"]

[admin]
state_file = "{}"

[[service]]
name = "web"
vip = "10.77.1.100"
port = 80
protocol = "tcp"
scheduler = "maglev"

  [[service.backend]]
  address = "10.77.2.11"
  port = 80

  [[service.backend]]
  address = "10.77.2.12"
  port = 80

[[service]]
name = "dns"
vip = "10.77.1.100"
port = 53
protocol = "udp"

  [[service.backend]]
  address = "10.77.2.21"
  port = 53
"#,
        state_file.display()
    )
}

/// An answer: status, headers, body text.
#[derive(Debug)]
struct Reply {
    status: StatusCode,
    headers: HeaderMap,
    text: String,
}

impl Reply {
    /// The body as JSON, or the text as a JSON string if it is not JSON.
    fn value(&self) -> Value {
        serde_json::from_str(&self.text).unwrap_or_else(|_| Value::String(self.text.clone()))
    }

    fn content_type(&self) -> &str {
        self.headers.get(header::CONTENT_TYPE).and_then(|v| v.to_str().ok()).unwrap_or_default()
    }
}

/// What the fake kernel maps hold, by name rather than by id.
#[derive(Debug, PartialEq, Eq)]
struct Kernel {
    /// `vip:port/proto`.
    services: BTreeSet<String>,
    /// `vip:port/proto` -> `address:port` -> (weight, flags).
    backends: BTreeMap<String, BTreeMap<String, (u32, u16)>>,
}

fn endpoint(addr: [u8; 4], port: u16, proto: u8) -> String {
    let proto = if proto == PROTO_UDP { "udp" } else { "tcp" };
    format!("{}:{port}/{proto}", std::net::Ipv4Addr::from(addr))
}

/// Everything a refused request must leave as it was.
#[derive(Debug, PartialEq)]
struct Snapshot {
    services: Value,
    image: Image,
    state_file: Option<Vec<u8>>,
}

/// The harness sends no signals: its loop runs until the harness is dropped.
struct NoSignals;

impl Signals for NoSignals {
    async fn next(&mut self) -> Signal {
        std::future::pending().await
    }
}

/// The requests of `queue` as a controller busy elsewhere takes them: each
/// only once `gate` lets it, the others waiting in the API's queue.
fn gated(
    mut queue: mpsc::Receiver<controller::Request>,
    gate: Arc<tokio::sync::Semaphore>,
) -> mpsc::Receiver<controller::Request> {
    let (taken, requests) = mpsc::channel(1);
    tokio::spawn(async move {
        loop {
            gate.acquire().await.expect("the gate stays open").forget();
            let Some(request) = queue.recv().await else { break };
            if taken.send(request).await.is_err() {
                break;
            }
        }
    });
    requests
}

/// A controller over fake maps, its loop, and the API in front of it.
struct Lb {
    app: Router,
    fake: FakeMaps,
    state_file: PathBuf,
    /// What the harness's own reads present (the token's bearer).
    admin_auth: Option<String>,
    /// What a request of a test presents when it gives no `Authorization`:
    /// the harness's token, unless the test started it with its own.
    default_auth: Option<String>,
    /// The `Host` the harness's requests give: the listen address.
    host: String,
    controller: tokio::task::JoinHandle<()>,
}

impl Drop for Lb {
    fn drop(&mut self) {
        self.controller.abort();
    }
}

impl Lb {
    /// `lb-ctl run`'s wiring over `dir` (config and state file there).
    async fn start(dir: &Path, token: Option<&str>) -> Self {
        Self::start_queue(dir, token, 64, None, LISTEN).await
    }

    /// `start` with a request queue of `queue` places and, if `gate` is
    /// given, a controller that takes a request off the queue only when
    /// the gate lets it (a controller busy elsewhere, held by the test).
    async fn start_queue(
        dir: &Path,
        token: Option<&str>,
        queue: usize,
        gate: Option<Arc<tokio::sync::Semaphore>>,
        listen: &str,
    ) -> Self {
        let state_file = dir.join("lb.state.json");
        let config_path = dir.join("lb.toml");
        let text = config_text(&state_file);
        fs::write(&config_path, &text).unwrap();
        let config = config::parse(&text).expect("the test config is valid");
        let fake = FakeMaps::default();
        let (handle, _reconciler) = reconciler::spawn(Reconciler::new(fake.clone())).unwrap();
        let (mut controller, stats) =
            Controller::start(config_path, Overrides::default(), config, handle.clone())
                .await
                .expect("the controller starts");
        let (requests_tx, requests) = mpsc::channel::<controller::Request>(queue);
        let mut requests = match gate {
            Some(gate) => gated(requests, gate),
            None => requests,
        };
        let controller = tokio::spawn(async move {
            control_loop::run(&mut controller, &mut requests, &mut NoSignals, SAMPLE_INTERVAL)
                .await;
        });
        let drained = state_file.with_extension("drained");
        let (node, _announcer) = bgp::start(None, None, drained, stats.clone());
        let trace = lb_ctl::daemon::trace::Hub::start(
            lb_ctl::write::dataplane::Maps::trace_tap(&fake).unwrap(),
            stats.clone(),
        );
        let api_state = ApiState {
            requests: requests_tx,
            stats,
            reconciler: handle,
            node,
            renders: Arc::default(),
            trace,
        };
        let access = api::Access {
            token: Arc::from(token.unwrap_or(HARNESS_TOKEN)),
            hosts: api::access::Hosts::new(listen.parse().unwrap(), &[]),
        };
        let app = api::app(api_state, access);
        let admin_auth = Some(format!("Bearer {}", token.unwrap_or(HARNESS_TOKEN)));
        let default_auth = token.is_none().then(|| format!("Bearer {HARNESS_TOKEN}"));
        Self {
            app,
            fake,
            state_file,
            admin_auth,
            default_auth,
            host: listen.to_owned(),
            controller,
        }
    }

    /// The app on a real loopback listener, served as `lb-ctl run` serves it.
    async fn serve(&self) -> Served {
        self.serve_with(api::serve::Limits::default()).await
    }

    async fn serve_with(&self, limits: api::serve::Limits) -> Served {
        let listener = api::bind(SocketAddr::from(([127, 0, 0, 1], 0)), false).await.unwrap();
        self.serve_on(listener, limits)
    }

    fn serve_on(&self, listener: tokio::net::TcpListener, limits: api::serve::Limits) -> Served {
        let addr = listener.local_addr().unwrap();
        let app = self.app.clone();
        let task = tokio::spawn(api::serve::serve(listener, app, limits, std::future::pending()));
        Served { addr, task }
    }

    async fn send(&self, method: Method, path: &str, body: Body, auth: Option<&str>) -> Reply {
        let mut headers =
            vec![(header::HOST, self.host.as_str()), (header::CONTENT_TYPE, "application/json")];
        if let Some(auth) = auth.or(self.default_auth.as_deref()) {
            headers.push((header::AUTHORIZATION, auth));
        }
        self.send_headers(method, path, body, &headers).await
    }

    /// One request with exactly `headers`.
    async fn send_headers(
        &self,
        method: Method,
        path: &str,
        body: Body,
        headers: &[(header::HeaderName, &str)],
    ) -> Reply {
        let mut request = Request::builder().method(method).uri(path);
        for (name, value) in headers {
            request = request.header(name, *value);
        }
        let request = request.body(body).unwrap();
        let response = self.app.clone().oneshot(request).await.unwrap();
        let status = response.status();
        let headers = response.headers().clone();
        let bytes = axum::body::to_bytes(response.into_body(), usize::MAX).await.unwrap();
        Reply { status, headers, text: String::from_utf8_lossy(&bytes).into_owned() }
    }

    /// One request; the answer's status and body (JSON, or text as a JSON string).
    async fn call(
        &self,
        method: Method,
        path: &str,
        body: Option<&str>,
        auth: Option<&str>,
    ) -> (StatusCode, Value) {
        let body = body.map_or_else(Body::empty, |b| Body::from(b.to_owned()));
        let reply = self.send(method, path, body, auth).await;
        (reply.status, reply.value())
    }

    async fn get(&self, path: &str) -> (StatusCode, Value) {
        self.call(Method::GET, path, None, None).await
    }

    /// `GET /api/v1/services`, which must answer.
    async fn services(&self) -> Value {
        let auth = self.admin_auth.as_deref();
        let (status, body) = self.call(Method::GET, "/api/v1/services", None, auth).await;
        assert_eq!(status, StatusCode::OK, "{body}");
        body
    }

    fn image(&self) -> Image {
        self.fake.state.lock().unwrap().clone()
    }

    fn kernel(&self) -> Kernel {
        let image = self.image();
        let services =
            image.v4.services.keys().map(|k| endpoint(k.addr, k.port, k.proto)).collect();
        let mut backends: BTreeMap<String, BTreeMap<String, (u32, u16)>> = BTreeMap::new();
        for b in image.v4.backends.values() {
            backends.entry(endpoint(b.vip, b.vport, b.proto)).or_default().insert(
                format!("{}:{}", std::net::Ipv4Addr::from(b.addr), b.port),
                (b.weight, b.flags),
            );
        }
        Kernel { services, backends }
    }

    /// The backends the kernel holds for `service` (`vip:port/proto`).
    fn kernel_backends(&self, service: &str) -> BTreeMap<String, (u32, u16)> {
        self.kernel().backends.remove(service).unwrap_or_default()
    }

    async fn snapshot(&self) -> Snapshot {
        Snapshot {
            services: self.services().await,
            image: self.image(),
            state_file: fs::read(&self.state_file).ok(),
        }
    }

    /// Sends a request that must be refused with `status`, and checks it
    /// changed nothing; returns the error body.
    async fn refused(
        &self,
        method: Method,
        path: &str,
        body: Option<&str>,
        status: StatusCode,
    ) -> Value {
        self.check_refused(method, path, body, status).await.unwrap_or_else(|e| panic!("{e}"))
    }

    /// `refused`, telling what went wrong instead of panicking.
    /// `refused` for a request with exactly `headers`.
    async fn refused_with(
        &self,
        method: Method,
        path: &str,
        body: Option<&str>,
        headers: &[(header::HeaderName, &str)],
        status: StatusCode,
    ) -> Value {
        let before = self.snapshot().await;
        let body_of = body.map_or_else(Body::empty, |b| Body::from(b.to_owned()));
        let reply = self.send_headers(method.clone(), path, body_of, headers).await;
        let what = format!("{method} {path} with {headers:?}");
        assert_error(reply.status, &reply.value(), status, &what);
        assert_eq!(before, self.snapshot().await, "{what}: the refused request changed the state");
        reply.value()
    }

    async fn check_refused(
        &self,
        method: Method,
        path: &str,
        body: Option<&str>,
        status: StatusCode,
    ) -> Result<Value, String> {
        let before = self.snapshot().await;
        let (got, answer) = self.call(method.clone(), path, body, None).await;
        let what = format!("{method} {path} {}", body.map_or("", |b| truncate(b)));
        if got != status {
            let answer = answer.to_string();
            return Err(format!("{what}: {got} (want {status}): {}", truncate(&answer)));
        }
        if let Err(e) = error_shape(&answer) {
            return Err(format!("{what}: {e}"));
        }
        if before != self.snapshot().await {
            return Err(format!("{what}: the refused request changed the state"));
        }
        Ok(answer)
    }
}

/// `Lb::serve`'s listener, stopped on drop.
struct Served {
    addr: SocketAddr,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for Served {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// Reads one HTTP/1.1 answer: its status and body (JSON, or text as a JSON string).
async fn read_answer(stream: &mut TcpStream) -> (StatusCode, Value) {
    let mut got = Vec::new();
    let mut buf = [0_u8; 4096];
    loop {
        if let Some(end) = got.windows(4).position(|w| w == b"\r\n\r\n") {
            let head = String::from_utf8_lossy(&got[..end]).into_owned();
            let status = head.split(' ').nth(1).and_then(|s| s.parse::<u16>().ok());
            let status = status.unwrap_or_else(|| panic!("not an HTTP answer: {head:?}"));
            let length = head.lines().find_map(|line| {
                let (name, value) = line.split_once(':')?;
                name.eq_ignore_ascii_case("content-length").then(|| value.trim().parse().unwrap())
            });
            let length: usize = length.unwrap_or_else(|| panic!("no Content-Length: {head:?}"));
            if got.len() >= end + 4 + length {
                let text = String::from_utf8_lossy(&got[end + 4..end + 4 + length]).into_owned();
                let body = serde_json::from_str(&text).unwrap_or(Value::String(text));
                return (StatusCode::from_u16(status).unwrap(), body);
            }
        }
        let n = stream.read(&mut buf).await.expect("reading the answer");
        assert!(n > 0, "closed before a whole answer: {:?}", String::from_utf8_lossy(&got));
        got.extend_from_slice(&buf[..n]);
    }
}

fn truncate(text: &str) -> &str {
    let end = text.char_indices().nth(200).map_or(text.len(), |(i, _)| i);
    &text[..end]
}

/// `status`, and the API's one error shape: `{"error": "<what>", "detail": …}`.
#[track_caller]
fn assert_error(got: StatusCode, body: &Value, status: StatusCode, what: &str) {
    assert_eq!(got, status, "{what}: {body}");
    assert_error_shape(body, what);
}

#[track_caller]
fn assert_error_shape(body: &Value, what: &str) {
    if let Err(e) = error_shape(body) {
        panic!("{what}: {e}");
    }
}

fn error_shape(body: &Value) -> Result<(), String> {
    let Some(object) = body.as_object() else {
        return Err(format!("not a JSON object: {body}"));
    };
    let error = object.get("error").and_then(Value::as_str);
    if error.is_none_or(str::is_empty) {
        return Err(format!("no \"error\" sentence: {body}"));
    }
    if !object.contains_key("detail") || object.len() != 2 {
        return Err(format!("not {{\"error\", \"detail\"}}: {body}"));
    }
    Ok(())
}

/// Whether an error body names `field`: a problem whose key is the field
/// (or ends with it: `backend[0].address`), or a message that quotes it.
fn names(body: &Value, field: &str) -> bool {
    let keyed = body["detail"].as_array().is_some_and(|problems| {
        problems.iter().any(|p| {
            let key = p["key"].as_str().unwrap_or_default();
            key == field || key.ends_with(&format!(".{field}"))
        })
    });
    let quoted = [format!("`{field}`"), format!("\"{field}\""), format!("{field}:")]
        .iter()
        .any(|q| body["error"].as_str().unwrap_or_default().contains(q.as_str()));
    keyed || quoted
}

#[track_caller]
fn assert_names(body: &Value, field: &str) {
    assert!(names(body, field), "the error should name {field:?}: {body}");
}

fn service<'a>(list: &'a Value, name: &str) -> Option<&'a Value> {
    list.as_array().unwrap().iter().find(|s| s["name"] == name)
}

fn backend<'a>(service: &'a Value, at: &str) -> Option<&'a Value> {
    service["backends"]
        .as_array()
        .unwrap()
        .iter()
        .find(|b| format!("{}:{}", b["address"].as_str().unwrap(), b["port"]) == at)
}

/// A service's settings: its view without the live numbers, its services
/// and backends in name order.
fn settings(services: &Value) -> Value {
    let mut services = services.as_array().unwrap().clone();
    services.sort_by_key(|s| s["name"].as_str().unwrap().to_owned());
    for s in &mut services {
        let s = s.as_object_mut().unwrap();
        for live in ["traffic", "rates"] {
            s.remove(live);
        }
        let backends = s.get_mut("backends").unwrap().as_array_mut().unwrap();
        backends.sort_by_key(|b| format!("{}:{}", b["address"].as_str().unwrap(), b["port"]));
        for b in backends {
            let b = b.as_object_mut().unwrap();
            for live in ["traffic", "rates", "conns", "health"] {
                b.remove(live);
            }
        }
    }
    Value::Array(services)
}

const WEB: &str = "10.77.1.100:80/tcp";
const DNS: &str = "10.77.1.100:53/udp";

// ---- Reads ----

#[tokio::test]
async fn reads_answer_the_running_state() {
    let dir = TempDir::new("reads");
    let lb = Lb::start(&dir.0, None).await;

    let services = lb.services().await;
    assert_eq!(services.as_array().unwrap().len(), 2, "{services}");
    let web = service(&services, "web").expect("web is listed");
    assert_eq!(web["vip"], "10.77.1.100");
    assert_eq!(web["port"], 80);
    assert_eq!(web["protocol"], "tcp");
    assert_eq!(web["scheduler"], "maglev");
    assert_eq!(web["backends_in_rotation"], 2);
    let b = backend(web, "10.77.2.11:80").expect("10.77.2.11:80 is listed");
    assert_eq!(b["weight"], 1);
    assert_eq!(b["state"], "active");
    assert_eq!(b["in_rotation"], true);
    assert_eq!(b["health"]["status"], "UNCHECKED");
    let dns = service(&services, "dns").expect("dns is listed");
    assert_eq!(dns["protocol"], "udp");
    assert_eq!(dns["backends"].as_array().unwrap().len(), 1);

    let (status, one) = lb.get("/api/v1/services/web").await;
    assert_eq!(status, StatusCode::OK, "{one}");
    assert_eq!(&one, web);
    let (status, body) = lb.get("/api/v1/services/nope").await;
    assert_error(status, &body, StatusCode::NOT_FOUND, "GET /api/v1/services/nope");

    let (status, overview) = lb.get("/api/v1/stats").await;
    assert_eq!(status, StatusCode::OK, "{overview}");
    assert_eq!(overview["version"], env!("CARGO_PKG_VERSION"));
    assert_eq!(overview["services"], services);
    assert!(overview["packets"].as_object().is_some_and(|p| !p.is_empty()), "{overview}");
    assert!(overview["conntrack"]["capacity"].as_u64().is_some_and(|c| c > 0), "{overview}");
    assert_eq!(overview["runtime_changes"]["services"], 0);
    assert_eq!(overview["runtime_changes"]["backends"], 0);
    assert_eq!(
        overview["runtime_changes"]["state_file"].as_str(),
        Some(lb.state_file.display().to_string().as_str())
    );

    // The kernel holds the config's services.
    let kernel = lb.kernel();
    assert_eq!(kernel.services, BTreeSet::from([WEB.to_owned(), DNS.to_owned()]));
    assert_eq!(kernel.backends[WEB].keys().collect::<Vec<_>>(), ["10.77.2.11:80", "10.77.2.12:80"]);
}

/// `GET /api/v1/node` without `[bgp]`: every VIP withheld saying why, the
/// services' fingerprint, which a weight changed through the API moves;
/// a drain is refused (409) and changes nothing.
#[tokio::test]
async fn the_node_view_names_each_vip_and_a_drain_needs_bgp() {
    let dir = TempDir::new("node");
    let lb = Lb::start(&dir.0, None).await;
    let (status, node) = lb.get("/api/v1/node").await;
    assert_eq!(status, StatusCode::OK, "{node}");
    assert_eq!((&node["bgp"], &node["drained"]), (&json!(false), &json!(false)), "{node}");
    assert_eq!(
        node["vips"],
        json!([{"vip": "10.77.1.100", "services": ["web", "dns"], "announced": false, "withheld": "no [bgp] in the config"}])
    );
    let fingerprint = node["fingerprint"].as_str().unwrap().to_owned();
    assert!(fingerprint.len() == 8 && fingerprint.chars().all(|c| c.is_ascii_hexdigit()), "{node}");

    for action in ["drain", "undrain"] {
        let reply =
            lb.send(Method::POST, &format!("/api/v1/node/{action}"), Body::empty(), None).await;
        assert_error(reply.status, &reply.value(), StatusCode::CONFLICT, action);
        assert!(reply.text.contains("no [bgp]"), "{}", reply.text);
    }
    assert!(!dir.0.join("lb.state.drained").exists(), "a refused drain left its file");

    let reply = lb
        .send(
            Method::PATCH,
            "/api/v1/services/web/backends/10.77.2.11:80",
            Body::from(r#"{"weight": 3}"#),
            None,
        )
        .await;
    assert!(reply.status.is_success(), "{}", reply.text);
    // The announcer follows the controller's publication.
    let deadline = std::time::Instant::now() + Duration::from_secs(3);
    loop {
        let (_, node) = lb.get("/api/v1/node").await;
        if node["fingerprint"] != fingerprint {
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "the fingerprint did not follow the weight: {node}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[tokio::test]
async fn the_connection_table_is_listed_and_filtered() {
    let dir = TempDir::new("conns");
    let lb = Lb::start(&dir.0, None).await;

    let (status, conns) = lb.get("/api/v1/conns").await;
    assert_eq!(status, StatusCode::OK, "{conns}");
    assert_eq!(conns, json!({"total": 0, "truncated": false, "conns": []}));
    let (status, conns) = lb.get("/api/v1/conns?service=web&limit=10").await;
    assert_eq!(status, StatusCode::OK, "{conns}");
    assert_eq!(conns["total"], 0);

    let (status, body) = lb.get("/api/v1/conns?service=nope").await;
    assert_error(status, &body, StatusCode::NOT_FOUND, "?service=nope");
    for query in ["limit=abc", "limit=-1", "colour=red"] {
        let (status, body) = lb.get(&format!("/api/v1/conns?{query}")).await;
        assert_error(status, &body, StatusCode::BAD_REQUEST, query);
    }
}

/// An event as the data plane sends it: a SYN from `client` to web's VIP,
/// placed on backend `backend_id` (or, past the fake's backends, named by nothing).
fn traced_syn(client: [u8; 4], backend_id: u32) -> TraceEvent {
    let mut src = [0; 16];
    src[..4].copy_from_slice(&client);
    let mut dst = [0; 16];
    dst[..4].copy_from_slice(&[10, 77, 1, 100]);
    TraceEvent {
        src,
        dst,
        ifindex: 1,
        service_id: 0,
        backend_id,
        counter: Counter::Redirect as u32,
        sport: 40_000,
        dport: 80,
        family: 4,
        proto: 6,
        tcp_flags: 0x02,
        flags: TRACE_PORTS | TRACE_NEW_FLOW,
    }
}

/// Waits (up to 2 s) until the fake data plane's trace switch is `on`.
async fn trace_switch(lb: &Lb, on: u32) -> TraceConf {
    for _ in 0..200 {
        let conf = lb.fake.trace.lock().unwrap().conf;
        if conf.on == on {
            return conf;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    panic!("the trace switch never became {on}");
}

/// Reads `n` lines of a streamed answer's body.
async fn lines(body: &mut Body, n: usize) -> Vec<Value> {
    let mut text = String::new();
    while text.matches('\n').count() < n {
        let frame = tokio::time::timeout(Duration::from_secs(5), body.frame())
            .await
            .expect("a line within 5 s")
            .expect("the stream goes on")
            .unwrap();
        text.push_str(&String::from_utf8_lossy(&frame.into_data().unwrap()));
    }
    text.lines().map(|l| serde_json::from_str(l).unwrap()).collect()
}

async fn open_trace(lb: &Lb, query: &str) -> axum::response::Response {
    let request = Request::builder()
        .uri(format!("/api/v1/trace{query}"))
        .header(header::HOST, lb.host.as_str())
        .header(header::AUTHORIZATION, lb.default_auth.clone().unwrap())
        .body(Body::empty())
        .unwrap();
    lb.app.clone().oneshot(request).await.unwrap()
}

#[tokio::test]
async fn a_trace_streams_the_matching_packets_and_ends_the_trace_with_it() {
    let dir = TempDir::new("trace");
    let lb = Lb::start(&dir.0, None).await;
    let web1 = {
        let image = lb.image();
        *image.v4.backends.iter().find(|(_, b)| b.addr == [10, 77, 2, 11]).unwrap().0
    };
    let response = open_trace(&lb, "?client=10.77.1.10&count=2").await;
    assert_eq!(response.status(), StatusCode::OK);
    assert_eq!(response.headers()[header::CONTENT_TYPE], "application/x-ndjson");
    // On, with the client in the kernel's filter.
    let conf = trace_switch(&lb, 1).await;
    assert_eq!(conf.flags, TRACE_CLIENT);
    assert_eq!(
        (conf.client_family, conf.client_len, &conf.client[..4]),
        (4, 32, &[10, 77, 1, 10][..])
    );
    {
        let mut trace = lb.fake.trace.lock().unwrap();
        trace.pending.push_back(traced_syn([10, 77, 1, 10], web1));
        // Another client: the kernel would not send it; were it sent, the
        // subscriber's own filter keeps it out.
        trace.pending.push_back(traced_syn([10, 77, 9, 9], web1));
        trace.pending.push_back(traced_syn([10, 77, 1, 10], 4242));
    }
    let mut body = response.into_body();
    let got = lines(&mut body, 2).await;
    assert_eq!(got[0]["type"], "packet");
    assert_eq!(got[0]["src"], "10.77.1.10:40000");
    assert_eq!(got[0]["dst"], "10.77.1.100:80");
    assert_eq!(got[0]["decision"], "forwarded");
    assert_eq!(got[0]["reason"], "redirect");
    assert_eq!(got[0]["flow"], "new");
    assert_eq!(got[0]["backend"], "10.77.2.11:80");
    assert_eq!(got[0]["service"], "web");
    assert_eq!(got[0]["tcp_flags"], "S");
    // A backend id the maps do not hold: no backend named, the service by its VIP.
    assert_eq!(got[1]["src"], "10.77.1.10:40000");
    assert!(got[1].get("backend").is_none(), "{}", got[1]);
    assert_eq!(got[1]["service"], "web");
    // Two packets asked for: the stream ends, and with it the trace.
    let end = tokio::time::timeout(Duration::from_secs(5), body.frame()).await.unwrap();
    assert!(end.is_none(), "the stream ends after --count packets");
    drop(body);
    trace_switch(&lb, 0).await;
}

#[tokio::test]
async fn a_trace_is_off_once_its_last_reader_leaves_and_readers_are_bounded() {
    let dir = TempDir::new("trace-bounds");
    let lb = Lb::start(&dir.0, None).await;
    let first = open_trace(&lb, "?drops_only=true").await;
    assert_eq!(first.status(), StatusCode::OK);
    assert_eq!(trace_switch(&lb, 1).await.flags, TRACE_DROPS_ONLY);
    // A second reader who wants everything: the kernel filters nothing.
    let second = open_trace(&lb, "?service=web").await;
    assert_eq!(second.status(), StatusCode::OK);
    for _ in 0..200 {
        if lb.fake.trace.lock().unwrap().conf.flags == 0 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert_eq!(lb.fake.trace.lock().unwrap().conf.flags, 0);
    // At the limit, and one past it.
    let mut open = vec![first, second];
    while open.len() < lb_ctl::daemon::trace::hub::MAX_SUBSCRIBERS {
        let r = open_trace(&lb, "").await;
        assert_eq!(r.status(), StatusCode::OK);
        open.push(r);
    }
    let (status, body) = lb.get("/api/v1/trace").await;
    assert_error(status, &body, StatusCode::TOO_MANY_REQUESTS, "one trace too many");
    // A reader that goes away (its connection dropped, however abruptly)
    // makes room, and the last one turns the trace off.
    open.pop();
    let written = lb.fake.trace.lock().unwrap().confs.len();
    let again = open_trace(&lb, "").await;
    assert_eq!(again.status(), StatusCode::OK);
    open.push(again);
    // The reader has written the filter for the readers now, and it is on.
    for _ in 0..200 {
        if lb.fake.trace.lock().unwrap().confs.len() > written {
            break;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert_eq!(lb.fake.trace.lock().unwrap().confs.last().map(|c| c.on), Some(1));
    drop(open);
    trace_switch(&lb, 0).await;
}

#[tokio::test]
async fn trace_parameters_are_checked_and_named() {
    let dir = TempDir::new("trace-params");
    let lb = Lb::start(&dir.0, None).await;
    for (query, names) in [
        ("client=somewhere", "client"),
        ("client=10.77.1.10/33", "client"),
        ("client=10.77.1.10/24", "client"),
        ("client=fd77::1/129", "client"),
        ("count=0", "count"),
        ("count=1000001", "count"),
        ("count=-1", "count"),
        ("drops_only=maybe", "drops_only"),
        ("colour=red", "colour"),
    ] {
        let (status, body) = lb.get(&format!("/api/v1/trace?{query}")).await;
        assert_error(status, &body, StatusCode::BAD_REQUEST, query);
        let error = body["error"].as_str().unwrap();
        assert!(error.contains(names), "{query}: the error names {names}: {error}");
    }
    let (status, body) = lb.get("/api/v1/trace?service=nope").await;
    assert_error(status, &body, StatusCode::NOT_FOUND, "?service=nope");
    // None of these turned the trace on.
    assert!(lb.fake.trace.lock().unwrap().confs.iter().all(|c| c.on == 0));
}

#[tokio::test]
async fn probes_metrics_and_the_page_answer() {
    let dir = TempDir::new("monitoring");
    let lb = Lb::start(&dir.0, None).await;

    let metrics = lb.send(Method::GET, "/metrics", Body::empty(), None).await;
    assert_eq!(metrics.status, StatusCode::OK, "{}", metrics.text);
    assert!(
        metrics.content_type().starts_with("application/openmetrics-text"),
        "{}",
        metrics.content_type()
    );
    assert!(metrics.text.trim_end().ends_with("# EOF"), "OpenMetrics ends with # EOF");
    assert!(metrics.text.contains("web"), "the metrics name the services");

    for (path, text) in [("/healthz", "ok"), ("/readyz", "ready")] {
        let reply = lb.send(Method::GET, path, Body::empty(), None).await;
        assert_eq!(reply.status, StatusCode::OK, "{path}: {}", reply.text);
        assert_eq!(reply.text.trim(), text, "{path}");
    }

    let page = lb.send(Method::GET, "/", Body::empty(), None).await;
    assert_eq!(page.status, StatusCode::OK, "{}", page.text);
    assert!(page.content_type().starts_with("text/html"), "{}", page.content_type());
    assert!(page.text.to_ascii_lowercase().contains("<html"), "an HTML page");
    assert!(page.text.contains("web") && page.text.contains("dns"), "the page lists the services");

    let (status, doc) = lb.get("/api/v1/openapi.json").await;
    assert_eq!(status, StatusCode::OK, "{doc}");
    assert!(doc["openapi"].as_str().is_some_and(|v| v.starts_with('3')), "{doc}");
    assert!(doc["paths"].as_object().is_some_and(|p| !p.is_empty()));
}

// ---- Services ----

#[tokio::test]
async fn services_are_added_replaced_and_removed() {
    let dir = TempDir::new("services");
    let lb = Lb::start(&dir.0, None).await;
    let api = r#"{"name": "api", "vip": "10.77.1.101", "port": 443,
        "backends": [{"address": "10.77.2.31", "port": 8443, "weight": 3}]}"#;

    // POST: 201, and the kernel holds it once answered.
    let services_before = lb.kernel().services.len();
    let (status, created) = lb.call(Method::POST, "/api/v1/services", Some(api), None).await;
    assert_eq!(status, StatusCode::CREATED, "{created}");
    assert_eq!(created["name"], "api");
    assert_eq!(created["scheduler"], "maglev", "defaults apply");
    assert_eq!(created["backends"][0]["weight"], 3);
    let kernel = lb.kernel();
    assert_eq!(kernel.services.len(), services_before + 1);
    assert!(kernel.services.contains("10.77.1.101:443/tcp"), "{kernel:?}");
    assert_eq!(
        kernel.backends["10.77.1.101:443/tcp"]["10.77.2.31:8443"],
        (3, BACKEND_IN_USE),
        "{kernel:?}"
    );
    let (status, got) = lb.get("/api/v1/services/api").await;
    assert_eq!(status, StatusCode::OK, "{got}");
    assert_eq!(got, created);

    // Conflicts: the name, the VIP:port/proto, a backend of another service.
    let body = lb.refused(Method::POST, "/api/v1/services", Some(api), StatusCode::CONFLICT).await;
    assert!(body["error"].as_str().unwrap().contains("api"), "{body}");
    let same_vip = r#"{"name": "web2", "vip": "10.77.1.100", "port": 80, "protocol": "tcp"}"#;
    lb.refused(Method::POST, "/api/v1/services", Some(same_vip), StatusCode::CONFLICT).await;
    let taken_backend = r#"{"name": "web3", "vip": "10.77.1.102", "port": 80,
        "backends": [{"address": "10.77.2.11", "port": 80}]}"#;
    let body = lb
        .refused(Method::POST, "/api/v1/services", Some(taken_backend), StatusCode::CONFLICT)
        .await;
    assert!(body["error"].as_str().unwrap().contains("10.77.2.11:80"), "{body}");
    // The same VIP and port over UDP is another service.
    let web_udp = r#"{"name": "web-udp", "vip": "10.77.1.100", "port": 80, "protocol": "udp"}"#;
    let (status, body) = lb.call(Method::POST, "/api/v1/services", Some(web_udp), None).await;
    assert_eq!(status, StatusCode::CREATED, "{body}");
    assert!(lb.kernel().services.contains("10.77.1.100:80/udp"));

    // PUT replaces: the kernel holds the new backends only.
    let web = r#"{"name": "web", "vip": "10.77.1.100", "port": 80, "scheduler": "wrr",
        "backends": [{"address": "10.77.2.13", "port": 80, "weight": 2}]}"#;
    let (status, replaced) = lb.call(Method::PUT, "/api/v1/services/web", Some(web), None).await;
    assert_eq!(status, StatusCode::OK, "{replaced}");
    assert_eq!(replaced["scheduler"], "wrr");
    assert_eq!(replaced["backends"].as_array().unwrap().len(), 1);
    assert_eq!(
        lb.kernel_backends(WEB),
        BTreeMap::from([("10.77.2.13:80".into(), (2, BACKEND_IN_USE))])
    );

    // The body's name must be the path's.
    let other = web.replace(r#""name": "web""#, r#""name": "other""#);
    let body = lb
        .refused(
            Method::PUT,
            "/api/v1/services/web",
            Some(&other),
            StatusCode::UNPROCESSABLE_ENTITY,
        )
        .await;
    assert_names(&body, "name");
    // PUT conflicts like POST.
    let onto_dns = r#"{"name": "web", "vip": "10.77.1.100", "port": 53, "protocol": "udp"}"#;
    lb.refused(Method::PUT, "/api/v1/services/web", Some(onto_dns), StatusCode::CONFLICT).await;

    // PUT of a new name creates it.
    let new = r#"{"name": "new", "vip": "10.77.1.103", "port": 25,
        "backends": [{"address": "10.77.2.51", "port": 25}]}"#;
    let (status, body) = lb.call(Method::PUT, "/api/v1/services/new", Some(new), None).await;
    assert!(status.is_success(), "{status}: {body}");
    assert_eq!(body["name"], "new");
    assert!(lb.kernel_backends("10.77.1.103:25/tcp").contains_key("10.77.2.51:25"));
    assert!(service(&lb.services().await, "new").is_some());

    // DELETE: 204 with no body, gone from the kernel; again: 404.
    let reply = lb.send(Method::DELETE, "/api/v1/services/dns", Body::empty(), None).await;
    assert_eq!(reply.status, StatusCode::NO_CONTENT, "{}", reply.text);
    assert!(reply.text.is_empty(), "{}", reply.text);
    let kernel = lb.kernel();
    assert!(!kernel.services.contains(DNS), "{kernel:?}");
    assert!(!kernel.backends.contains_key(DNS), "{kernel:?}");
    assert!(service(&lb.services().await, "dns").is_none());
    let body =
        lb.refused(Method::DELETE, "/api/v1/services/dns", None, StatusCode::NOT_FOUND).await;
    assert!(body["error"].as_str().unwrap().contains("dns"), "{body}");
    lb.refused(Method::GET, "/api/v1/services/dns", None, StatusCode::NOT_FOUND).await;
}

#[tokio::test]
async fn an_ipv6_service_is_served_like_any() {
    let dir = TempDir::new("ipv6");
    let lb = Lb::start(&dir.0, None).await;
    let web6 = r#"{"name": "web6", "vip": "fd77:1::100", "port": 80,
        "backends": [{"address": "fd77:2::11", "port": 80}, {"address": "fd77:2::12", "port": 80}]}"#;
    let (status, created) = lb.call(Method::POST, "/api/v1/services", Some(web6), None).await;
    assert_eq!(status, StatusCode::CREATED, "{created}");
    // Address fields are the address alone, as `IpAddr` prints it.
    assert_eq!(created["vip"], "fd77:1::100");
    assert!(backend(&created, "fd77:2::11:80").is_some(), "{created}");
    let image = lb.image();
    assert_eq!((image.v6.services.len(), image.v6.backends.len()), (1, 2), "{image:?}");

    // A backend path is `[address]:port`, also percent-encoded; the bare
    // form is not an address:port.
    let (status, web) = lb
        .call(
            Method::PATCH,
            "/api/v1/services/web6/backends/[fd77:2::11]:80",
            Some(r#"{"weight": 4}"#),
            None,
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{web}");
    let encoded = "/api/v1/services/web6/backends/%5Bfd77:2::12%5D:80";
    let (status, web) = lb.call(Method::PATCH, encoded, Some(r#"{"state": "drain"}"#), None).await;
    assert_eq!(status, StatusCode::OK, "{web}");
    let weights: Vec<(u32, &str)> = web["backends"]
        .as_array()
        .unwrap()
        .iter()
        .map(|b| (b["weight"].as_u64().unwrap() as u32, b["state"].as_str().unwrap()))
        .collect();
    assert_eq!(weights, [(4, "active"), (1, "drain")], "{web}");
    let body = lb
        .refused(
            Method::PATCH,
            "/api/v1/services/web6/backends/fd77:2::11:80",
            Some(r#"{"weight": 5}"#),
            StatusCode::BAD_REQUEST,
        )
        .await;
    assert!(body["error"].as_str().unwrap().contains("[fd77:2::11]:80"), "{body}");
    // One family per service: an IPv4 backend of an IPv6 service is refused.
    let body = lb
        .refused(
            Method::POST,
            "/api/v1/services/web6/backends",
            Some(r#"{"address": "10.77.2.19", "port": 80}"#),
            StatusCode::UNPROCESSABLE_ENTITY,
        )
        .await;
    assert!(body.to_string().contains("10.77.2.19"), "{body}");

    // The connection listing filters by an IPv6 service (the fake maps hold none).
    let (status, conns) = lb.get("/api/v1/conns?service=web6").await;
    assert_eq!(status, StatusCode::OK, "{conns}");
    assert_eq!(conns["total"], 0);

    // The metrics and the page bracket IPv6 endpoints.
    let metrics = lb.send(Method::GET, "/metrics", Body::empty(), None).await;
    assert!(metrics.text.contains(r#"vip="[fd77:1::100]:80""#), "{}", metrics.text);
    assert!(metrics.text.contains(r#"backend="[fd77:2::11]:80""#), "{}", metrics.text);
    let page = lb.send(Method::GET, "/", Body::empty(), None).await;
    assert!(page.text.contains("[fd77:1::100]:80/tcp"), "{}", page.text);

    let reply = lb.send(Method::DELETE, "/api/v1/services/web6", Body::empty(), None).await;
    assert_eq!(reply.status, StatusCode::NO_CONTENT, "{}", reply.text);
    assert_eq!(lb.image().v6, Image::default().v6, "nothing of it stays");
}

// ---- Backends ----

#[tokio::test]
async fn backends_are_added_changed_and_removed() {
    let dir = TempDir::new("backends");
    let lb = Lb::start(&dir.0, None).await;
    let backends = "/api/v1/services/web/backends";

    // POST: 201 with the service, its backends include the new one; in the kernel.
    let new = r#"{"address": "10.77.2.13", "port": 80, "weight": 5}"#;
    let (status, web) = lb.call(Method::POST, backends, Some(new), None).await;
    assert_eq!(status, StatusCode::CREATED, "{web}");
    assert_eq!(web["name"], "web");
    let b = backend(&web, "10.77.2.13:80").expect("the answer lists the new backend");
    assert_eq!(b["weight"], 5);
    assert_eq!(b["state"], "active");
    assert_eq!(lb.kernel_backends(WEB).get("10.77.2.13:80"), Some(&(5, BACKEND_IN_USE)));

    // Defaults: weight 1, active; a state may be given.
    let drained = r#"{"address": "10.77.2.14", "port": 80, "state": "drain"}"#;
    let (status, web) = lb.call(Method::POST, backends, Some(drained), None).await;
    assert_eq!(status, StatusCode::CREATED, "{web}");
    let b = backend(&web, "10.77.2.14:80").unwrap();
    assert_eq!((b["weight"].clone(), b["state"].clone()), (json!(1), json!("drain")));
    assert_eq!(b["in_rotation"], false);

    // Refused: already there, owned by another service, unknown service.
    lb.refused(Method::POST, backends, Some(new), StatusCode::CONFLICT).await;
    let api = r#"{"name": "api", "vip": "10.77.1.101", "port": 80}"#;
    let (status, body) = lb.call(Method::POST, "/api/v1/services", Some(api), None).await;
    assert_eq!(status, StatusCode::CREATED, "{body}");
    let body = lb
        .refused(
            Method::POST,
            "/api/v1/services/api/backends",
            Some(r#"{"address": "10.77.2.11", "port": 80}"#),
            StatusCode::CONFLICT,
        )
        .await;
    assert!(body["error"].as_str().unwrap().contains("web"), "names the owner: {body}");
    lb.refused(Method::POST, "/api/v1/services/nope/backends", Some(new), StatusCode::NOT_FOUND)
        .await;
    // A backend at the service's own VIP:port.
    lb.refused(
        Method::POST,
        backends,
        Some(r#"{"address": "10.77.1.100", "port": 80}"#),
        StatusCode::UNPROCESSABLE_ENTITY,
    )
    .await;

    // PATCH the weight: 200 with the new weight, in the kernel.
    let one = "/api/v1/services/web/backends/10.77.2.11:80";
    let (status, web) = lb.call(Method::PATCH, one, Some(r#"{"weight": 7}"#), None).await;
    assert_eq!(status, StatusCode::OK, "{web}");
    assert_eq!(backend(&web, "10.77.2.11:80").unwrap()["weight"], 7);
    assert_eq!(lb.kernel_backends(WEB)["10.77.2.11:80"], (7, BACKEND_IN_USE));

    // Drain: out of rotation, weight kept; in the kernel, weight 0 but not down.
    let (status, web) = lb.call(Method::PATCH, one, Some(r#"{"state": "drain"}"#), None).await;
    assert_eq!(status, StatusCode::OK, "{web}");
    let b = backend(&web, "10.77.2.11:80").unwrap();
    assert_eq!(b["state"], "drain");
    assert_eq!(b["in_rotation"], false);
    assert_eq!(b["weight"], 7, "draining keeps the weight");
    assert_eq!(lb.kernel_backends(WEB)["10.77.2.11:80"], (0, BACKEND_IN_USE));

    // Maint: out at once (down in the kernel).
    let (status, web) = lb.call(Method::PATCH, one, Some(r#"{"state": "maint"}"#), None).await;
    assert_eq!(status, StatusCode::OK, "{web}");
    let b = backend(&web, "10.77.2.11:80").unwrap();
    assert_eq!((b["state"].clone(), b["in_rotation"].clone()), (json!("maint"), json!(false)));
    assert_eq!(lb.kernel_backends(WEB)["10.77.2.11:80"], (0, BACKEND_IN_USE | BACKEND_DOWN));

    // Both at once, back to active.
    let both = r#"{"weight": 2, "state": "active"}"#;
    let (status, web) = lb.call(Method::PATCH, one, Some(both), None).await;
    assert_eq!(status, StatusCode::OK, "{web}");
    let b = backend(&web, "10.77.2.11:80").unwrap();
    assert_eq!((b["weight"].clone(), b["in_rotation"].clone()), (json!(2), json!(true)));
    assert_eq!(lb.kernel_backends(WEB)["10.77.2.11:80"], (2, BACKEND_IN_USE));

    // Refused PATCHes.
    let body = lb.refused(Method::PATCH, one, Some("{}"), StatusCode::UNPROCESSABLE_ENTITY).await;
    assert!(body["error"].as_str().unwrap().contains("weight"), "says what may change: {body}");
    let body = lb
        .refused(Method::PATCH, one, Some(r#"{"weight": 70000}"#), StatusCode::UNPROCESSABLE_ENTITY)
        .await;
    assert_names(&body, "weight");
    let body = lb
        .refused(Method::PATCH, one, Some(r#"{"weight": -1}"#), StatusCode::UNPROCESSABLE_ENTITY)
        .await;
    assert_names(&body, "weight");
    let body = lb
        .refused(
            Method::PATCH,
            one,
            Some(r#"{"state": "sleepy"}"#),
            StatusCode::UNPROCESSABLE_ENTITY,
        )
        .await;
    assert_names(&body, "state");
    let body =
        lb.refused(Method::PATCH, one, Some(r#"{"weight": "3"}"#), StatusCode::BAD_REQUEST).await;
    assert_names(&body, "weight");
    let body = lb
        .refused(
            Method::PATCH,
            one,
            Some(r#"{"weight": 3, "colour": "red"}"#),
            StatusCode::BAD_REQUEST,
        )
        .await;
    assert!(body.to_string().contains("colour"), "{body}");
    lb.refused(
        Method::PATCH,
        "/api/v1/services/web/backends/10.77.2.99:80",
        Some(r#"{"weight": 3}"#),
        StatusCode::NOT_FOUND,
    )
    .await;
    lb.refused(
        Method::PATCH,
        "/api/v1/services/nope/backends/10.77.2.11:80",
        Some(r#"{"weight": 3}"#),
        StatusCode::NOT_FOUND,
    )
    .await;
    // A backend of another service is not this one's.
    lb.refused(
        Method::PATCH,
        "/api/v1/services/web/backends/10.77.2.21:53",
        Some(r#"{"weight": 3}"#),
        StatusCode::NOT_FOUND,
    )
    .await;
    for bad in ["10.77.2.300:80", "10.77.2.11", "10.77.2.11:0", "10.77.2.11:65536", "web"] {
        let path = format!("/api/v1/services/web/backends/{bad}");
        let body = lb
            .refused(Method::PATCH, &path, Some(r#"{"weight": 3}"#), StatusCode::BAD_REQUEST)
            .await;
        assert_names(&body, "backend");
    }

    // DELETE: 200 with the remaining backends, gone from the kernel; again: 404.
    let (status, web) = lb.call(Method::DELETE, one, None, None).await;
    assert_eq!(status, StatusCode::OK, "{web}");
    assert!(backend(&web, "10.77.2.11:80").is_none(), "{web}");
    assert!(backend(&web, "10.77.2.12:80").is_some(), "{web}");
    assert!(!lb.kernel_backends(WEB).contains_key("10.77.2.11:80"));
    lb.refused(Method::DELETE, one, None, StatusCode::NOT_FOUND).await;
    let body = lb
        .refused(
            Method::DELETE,
            "/api/v1/services/web/backends/10.77.2.300:80",
            None,
            StatusCode::BAD_REQUEST,
        )
        .await;
    assert_names(&body, "backend");
    lb.refused(
        Method::DELETE,
        "/api/v1/services/nope/backends/10.77.2.12:80",
        None,
        StatusCode::NOT_FOUND,
    )
    .await;
}

/// Concurrent requests for the same change: one wins, the others are told
/// it is taken, and the kernel holds it once.
#[tokio::test]
async fn concurrent_changes_are_serialized() {
    let dir = TempDir::new("concurrent");
    let lb = Lb::start(&dir.0, None).await;
    let mut tasks = tokio::task::JoinSet::new();
    for _ in 0..16 {
        let app = lb.app.clone();
        tasks.spawn(async move {
            let request = Request::post("/api/v1/services/web/backends")
                .header(header::HOST, LISTEN)
                .header(header::AUTHORIZATION, format!("Bearer {HARNESS_TOKEN}"))
                .header(header::CONTENT_TYPE, "application/json")
                .body(Body::from(r#"{"address": "10.77.2.13", "port": 80}"#))
                .unwrap();
            app.oneshot(request).await.unwrap().status()
        });
    }
    let mut statuses = Vec::new();
    while let Some(status) = tasks.join_next().await {
        statuses.push(status.unwrap());
    }
    let created = statuses.iter().filter(|s| **s == StatusCode::CREATED).count();
    let conflicts = statuses.iter().filter(|s| **s == StatusCode::CONFLICT).count();
    assert_eq!((created, conflicts), (1, 15), "{statuses:?}");
    assert_eq!(lb.kernel_backends(WEB).len(), 3);
    let (_, web) = lb.get("/api/v1/services/web").await;
    assert_eq!(web["backends"].as_array().unwrap().len(), 3);
}

// ---- Bad input ----

/// Every refusal names its field and changes nothing.
#[tokio::test]
async fn bad_bodies_are_refused_and_change_nothing() {
    let dir = TempDir::new("bad-bodies");
    let lb = Lb::start(&dir.0, None).await;
    // A change first, so that the state file exists and must stay as it is.
    let (status, body) = lb
        .call(
            Method::POST,
            "/api/v1/services/web/backends",
            Some(r#"{"address": "10.77.2.13", "port": 80}"#),
            None,
        )
        .await;
    assert_eq!(status, StatusCode::CREATED, "{body}");
    assert!(lb.state_file.exists());

    let backends = "/api/v1/services/web/backends";
    let bad_400 = StatusCode::BAD_REQUEST;
    let bad_422 = StatusCode::UNPROCESSABLE_ENTITY;
    // (body, status, field named)
    let cases: &[(&str, StatusCode, &str)] = &[
        (r#"{"address": "10.77.2.14", "port": 80, "colour": "red"}"#, bad_400, "colour"),
        (r#"{"address": "10.77.2.14", "port": "80"}"#, bad_400, "port"),
        (r#"{"address": 10, "port": 80}"#, bad_400, "address"),
        (r#"{"address": "10.77.2.14", "port": 80, "weight": 1.5}"#, bad_400, "weight"),
        (r#"{"port": 80}"#, bad_400, "address"),
        (r#"{"address": "10.77.2.300", "port": 80}"#, bad_422, "address"),
        (r#"{"address": "::1", "port": 80}"#, bad_422, "address"),
        (r#"{"address": "0.0.0.0", "port": 80}"#, bad_422, "address"),
        (r#"{"address": "10.77.2.14", "port": 0}"#, bad_422, "port"),
        (r#"{"address": "10.77.2.14", "port": 65536}"#, bad_422, "port"),
        (r#"{"address": "10.77.2.14", "port": -80}"#, bad_422, "port"),
        (r#"{"address": "10.77.2.14", "port": 80, "weight": 65536}"#, bad_422, "weight"),
        (r#"{"address": "10.77.2.14", "port": 80, "weight": -1}"#, bad_422, "weight"),
        (r#"{"address": "10.77.2.14", "port": 80, "state": "sleepy"}"#, bad_422, "state"),
    ];
    for (body, status, field) in cases {
        let answer = lb.refused(Method::POST, backends, Some(body), *status).await;
        assert_names(&answer, field);
    }
    for body in [
        "address=10.77.2.14&port=80",
        "",
        "{",
        "[]",
        "null",
        r#"{"address": "10.77.2.14", "port": 80"#,
    ] {
        lb.refused(Method::POST, backends, Some(body), bad_400).await;
    }

    // A whole service: the same rules, nested keys named from the body's top.
    let services = "/api/v1/services";
    let cases: &[(&str, StatusCode, &str)] = &[
        (
            r#"{"name": "api", "vip": "10.77.1.101", "port": 80, "colour": "red"}"#,
            bad_400,
            "colour",
        ),
        (r#"{"name": "api", "vip": "10.77.1.101", "port": "80"}"#, bad_400, "port"),
        (r#"{"name": "api", "vip": "fe80::1", "port": 80}"#, bad_422, "vip"),
        (r#"{"name": "api", "vip": "10.77.1.101", "port": 0}"#, bad_422, "port"),
        (
            r#"{"name": "api", "vip": "10.77.1.101", "port": 80, "protocol": "sctp"}"#,
            bad_422,
            "protocol",
        ),
        (
            r#"{"name": "api", "vip": "10.77.1.101", "port": 80, "scheduler": "random"}"#,
            bad_422,
            "scheduler",
        ),
        (r#"{"name": "a/b", "vip": "10.77.1.101", "port": 80}"#, bad_422, "name"),
        (r#"{"name": "..", "vip": "10.77.1.101", "port": 80}"#, bad_422, "name"),
        (
            r#"{"name": "api", "vip": "10.77.1.101", "port": 80, "backends": [{"address": "10.77.2.300", "port": 80}]}"#,
            bad_422,
            "address",
        ),
        (
            r#"{"name": "api", "vip": "10.77.1.101", "port": 80, "backends": [{"address": "10.77.2.41", "port": 80, "weight": 65536}]}"#,
            bad_422,
            "weight",
        ),
        (
            r#"{"name": "api", "vip": "10.77.1.101", "port": 80, "backends": [{"address": "10.77.2.41", "port": 80}, {"address": "10.77.2.41", "port": 80}]}"#,
            bad_422,
            "backend[1]",
        ),
        (
            r#"{"name": "api", "vip": "10.77.1.101", "port": 80, "health": {"check": "http", "interval_ms": 100, "timeout_ms": 500}}"#,
            bad_422,
            "timeout_ms",
        ),
    ];
    for (body, status, field) in cases {
        let answer = lb.refused(Method::POST, services, Some(body), *status).await;
        assert_names(&answer, field);
        let put = body.replace(r#""name": "api""#, r#""name": "web""#);
        let answer = lb.refused(Method::PUT, "/api/v1/services/web", Some(&put), *status).await;
        assert_names(&answer, field);
    }
    lb.refused(Method::POST, services, Some("name=api"), bad_400).await;
    lb.refused(Method::PUT, "/api/v1/services/web", Some("name=web"), bad_400).await;
    lb.refused(
        Method::PATCH,
        "/api/v1/services/web/backends/10.77.2.11:80",
        Some("weight=3"),
        bad_400,
    )
    .await;

    // Too large: 413, in JSON, on every route that takes a body.
    let huge =
        format!(r#"{{"address": "10.77.2.14", "port": 80, "pad": "{}"}}"#, "x".repeat(10 << 20));
    for (method, path) in [
        (Method::POST, backends),
        (Method::POST, services),
        (Method::PUT, "/api/v1/services/web"),
        (Method::PATCH, "/api/v1/services/web/backends/10.77.2.11:80"),
    ] {
        lb.refused(method, path, Some(&huge), StatusCode::PAYLOAD_TOO_LARGE).await;
    }
}

/// The body limit is 1 MiB exactly: a body of that size is read whole, one
/// byte more is 413 in JSON and changes nothing.
#[tokio::test]
async fn a_body_of_exactly_the_limit_is_read_and_one_byte_more_is_413() {
    // docs/api.md's limit, not `api::MAX_BODY_BYTES`: a test that read the
    // constant would follow it wherever it went.
    const LIMIT: usize = 1 << 20;
    let dir = TempDir::new("body-limit");
    let lb = Lb::start(&dir.0, None).await;
    let backends = "/api/v1/services/web/backends";
    // A valid new backend, padded with spaces (JSON whitespace) to `len` bytes.
    let padded = |len: usize| {
        let json = r#"{"address": "10.77.2.14", "port": 80"#;
        let body = format!("{json}{}}}", " ".repeat(len - json.len() - 1));
        assert_eq!(body.len(), len);
        body
    };

    let answer = lb
        .refused(Method::POST, backends, Some(&padded(LIMIT + 1)), StatusCode::PAYLOAD_TOO_LARGE)
        .await;
    assert!(answer["error"].as_str().unwrap().contains("limit"), "{answer}");
    // At the limit, a body that is not JSON is refused for what it says.
    lb.refused(Method::POST, backends, Some(&"x".repeat(LIMIT)), StatusCode::BAD_REQUEST).await;
    // And a valid one is read and made.
    let (status, body) = lb.call(Method::POST, backends, Some(&padded(LIMIT)), None).await;
    assert_eq!(status, StatusCode::CREATED, "a body of exactly {LIMIT} bytes: {body}");
    assert!(lb.kernel_backends(WEB).contains_key("10.77.2.14:80"), "{:?}", lb.kernel());
}

/// A client that sends its headers and then stalls is answered 408 after
/// 10 s (not before), in JSON, and nothing changes. Over a real listener
/// (the timeout bounds reading the body off the socket), on tokio's paused
/// clock: it skips ahead to the next timer whenever every task waits.
#[tokio::test(start_paused = true)]
async fn a_stalled_request_is_answered_408_after_the_request_timeout() {
    // docs/api.md's timeout, not `api::REQUEST_TIMEOUT` (see the body limit).
    const TIMEOUT: Duration = Duration::from_secs(10);
    let dir = TempDir::new("stalled");
    let lb = Lb::start(&dir.0, None).await;
    let served = lb.serve().await;
    let before = lb.snapshot().await;
    let body = r#"{"address": "10.77.2.14", "port": 80}"#;
    let head = |framing: String| {
        format!(
            "POST /api/v1/services/web/backends HTTP/1.1\r\nHost: {LISTEN}\r\nAuthorization: Bearer {HARNESS_TOKEN}\r\nContent-Type: application/json\r\n{framing}\r\n\r\n"
        )
    };
    let announced = head(format!("Content-Length: {}", body.len()));
    for (what, sent) in [
        ("a body announced but not sent", announced.clone()),
        ("half the body announced", format!("{announced}{}", &body[..body.len() / 2])),
        (
            "a chunked body never ended",
            format!("{}{:x}\r\n{body}\r\n", head("Transfer-Encoding: chunked".into()), body.len()),
        ),
    ] {
        let mut stream = TcpStream::connect(served.addr).await.unwrap();
        stream.write_all(sent.as_bytes()).await.unwrap();
        let sent_at = tokio::time::Instant::now();
        let (status, answer) = tokio::time::timeout(2 * TIMEOUT, read_answer(&mut stream))
            .await
            .unwrap_or_else(|_| panic!("{what}: no answer within {:?}", 2 * TIMEOUT));
        let waited = sent_at.elapsed();
        assert_error(status, &answer, StatusCode::REQUEST_TIMEOUT, what);
        assert!(
            waited >= TIMEOUT && waited < TIMEOUT + Duration::from_secs(1),
            "{what}: answered after {waited:?}"
        );
        assert_eq!(before, lb.snapshot().await, "{what}: the stalled request changed the state");
    }
}

/// Bodies that are not JSON (or not of the right shape) are the client's
/// syntax error: 400 (and no change), whatever the parser's complaint.
#[tokio::test]
async fn bodies_that_are_not_json_are_400() {
    let dir = TempDir::new("not-json");
    let lb = Lb::start(&dir.0, None).await;
    let backends = "/api/v1/services/web/backends";
    let mut wrong = Vec::new();
    for body in [
        // Trailing garbage after a valid object.
        r#"{"address": "10.77.2.14", "port": 80} x"#,
        r#"{"address": "10.77.2.15", "port": 80}{"address": "10.77.2.16", "port": 80}"#,
        // A trailing comma.
        r#"{"address": "10.77.2.17", "port": 80,}"#,
        // A key that is not a string.
        r"{1: 2}",
        // An invalid escape.
        r#"{"address": "10.77.2.\q", "port": 80}"#,
        // A raw control character inside a string.
        "{\"address\": \"10.77.2.18\n\", \"port\": 80}",
        // Not a number.
        r#"{"address": "10.77.2.19", "port": 08}"#,
        // JSON, but not of the right shape: a key given twice.
        r#"{"address": "10.77.2.20", "address": "10.77.2.21", "port": 80}"#,
    ] {
        if let Err(e) =
            lb.check_refused(Method::POST, backends, Some(body), StatusCode::BAD_REQUEST).await
        {
            wrong.push(e);
        }
    }
    // The same through PATCH and PUT.
    for (method, path, body) in [
        (Method::PATCH, "/api/v1/services/web/backends/10.77.2.11:80", r#"{"weight": 5} x"#),
        (
            Method::PUT,
            "/api/v1/services/web",
            r#"{"name": "web", "vip": "10.77.1.100", "port": 80} x"#,
        ),
        (
            Method::POST,
            "/api/v1/services",
            r#"{"name": "api", "vip": "10.77.1.101", "port": 80} x"#,
        ),
    ] {
        if let Err(e) = lb.check_refused(method, path, Some(body), StatusCode::BAD_REQUEST).await {
            wrong.push(e);
        }
    }
    assert!(
        wrong.is_empty(),
        "{} bodies that are not JSON were not refused with 400:\n{}",
        wrong.len(),
        wrong.join("\n")
    );
}

/// A wrong value is 422 whatever its text: the status must not depend on
/// the words a value happens to contain.
#[tokio::test]
async fn wrong_values_are_422_whatever_they_say() {
    let dir = TempDir::new("wrong-values");
    let lb = Lb::start(&dir.0, None).await;
    let mut wrong = Vec::new();
    for (path, body, field) in [
        ("/api/v1/services/web/backends", r#"{"address": "expected", "port": 80}"#, "address"),
        (
            "/api/v1/services/web/backends",
            r#"{"address": "10.77.2.14", "port": 80, "state": "EOF"}"#,
            "state",
        ),
        (
            "/api/v1/services",
            r#"{"name": "unexpected name", "vip": "10.77.1.101", "port": 80}"#,
            "name",
        ),
        (
            "/api/v1/services",
            r#"{"name": "api", "vip": "10.77.1.101", "port": 80, "scheduler": "missing field"}"#,
            "scheduler",
        ),
        ("/api/v1/services/web/backends/10.77.2.11:80", r#"{"state": "invalid type"}"#, "state"),
    ] {
        let method = if path.contains(':') { Method::PATCH } else { Method::POST };
        match lb.check_refused(method, path, Some(body), StatusCode::UNPROCESSABLE_ENTITY).await {
            Ok(answer) if names(&answer, field) => {}
            Ok(answer) => wrong.push(format!("{path} {body}: does not name {field}: {answer}")),
            Err(e) => wrong.push(e),
        }
    }
    assert!(wrong.is_empty(), "{} wrong values were not 422:\n{}", wrong.len(), wrong.join("\n"));
}

/// Odd paths: 4xx in JSON, never 5xx, never a change.
#[tokio::test]
async fn odd_paths_are_refused_in_json() {
    let dir = TempDir::new("paths");
    let lb = Lb::start(&dir.0, None).await;
    let patch = Some(r#"{"weight": 3}"#);
    let backend_body = Some(r#"{"address": "10.77.2.14", "port": 80}"#);
    let web_body = Some(r#"{"name": "web", "vip": "10.77.1.100", "port": 80}"#);
    for (method, path, body) in [
        (Method::GET, "/api/v1/services/..", None),
        (Method::GET, "/api/v1/services/.", None),
        (Method::DELETE, "/api/v1/services/..", None),
        (Method::PUT, "/api/v1/services/..", web_body),
        (Method::POST, "/api/v1/services/../backends", backend_body),
        (Method::GET, "/api/v1/services/%00%ff", None),
        (Method::DELETE, "/api/v1/services/%00%ff", None),
        (Method::PUT, "/api/v1/services/%00%ff", web_body),
        (Method::POST, "/api/v1/services/%00%ff/backends", backend_body),
        (Method::GET, "/api/v1/services/%2e%2e", None),
        (Method::GET, "/api/v1/services/we%2Fb", None),
        (Method::GET, "/api/v1/services/%C3%A9", None),
        (Method::PATCH, "/api/v1/services/web/backends/%2e%2e", patch),
        (Method::DELETE, "/api/v1/services/web/backends/%2e%2e", None),
        (Method::PATCH, "/api/v1/services/web/backends/%00%ff", patch),
        (Method::DELETE, "/api/v1/services/web/backends/10.77.2.11%3A80%00", None),
        (Method::PATCH, "/api/v1/services/%00/backends/10.77.2.11:80", patch),
        (Method::GET, "/api/v1/services/web/backends/10.77.2.11:80/..", None),
        (Method::GET, "/api/v1/../v1/services", None),
        (Method::GET, "/api/v1/conns?service=%ff", None),
        (Method::GET, "/api/v1/conns?limit=99999999999999999999999", None),
    ] {
        let before = lb.snapshot().await;
        let what = format!("{method} {path}");
        let (status, answer) = lb.call(method, path, body, None).await;
        assert!(status.is_client_error(), "{what}: {status} {answer}");
        assert_error_shape(&answer, &what);
        assert!(before == lb.snapshot().await, "{what} changed the state");
    }

    // Unknown routes: 404; known routes, wrong method: 405; both in JSON.
    for path in ["/api/v2/services", "/api/v1/nothing", "/api/v1/services/web/nothing", "/nothing"]
    {
        let body = lb.refused(Method::GET, path, None, StatusCode::NOT_FOUND).await;
        assert!(body["error"].as_str().unwrap().contains("no route"), "{path}: {body}");
    }
    for (method, path) in [
        (Method::DELETE, "/api/v1/stats"),
        (Method::POST, "/healthz"),
        (Method::DELETE, "/api/v1/services"),
        (Method::PATCH, "/api/v1/services/web"),
        (Method::GET, "/api/v1/services/web/backends"),
        (Method::GET, "/api/v1/services/web/backends/10.77.2.11:80"),
        (Method::POST, "/api/v1/openapi.json"),
    ] {
        lb.refused(method, path, None, StatusCode::METHOD_NOT_ALLOWED).await;
    }
}

// ---- Auth ----

#[tokio::test]
async fn a_token_guards_everything_but_probes_and_metrics() {
    let dir = TempDir::new("auth");
    let lb = Lb::start(&dir.0, Some(TOKEN)).await;
    let bearer = format!("Bearer {TOKEN}");
    let basic = |user: &str, password: &str| {
        let credentials =
            base64::engine::general_purpose::STANDARD.encode(format!("{user}:{password}"));
        format!("Basic {credentials}")
    };

    for path in ["/api/v1/services", "/api/v1/stats", "/api/v1/conns", "/", "/api/v1/openapi.json"]
    {
        let reply = lb.send(Method::GET, path, Body::empty(), None).await;
        assert_error(reply.status, &reply.value(), StatusCode::UNAUTHORIZED, path);
        assert!(
            reply.headers.contains_key(header::WWW_AUTHENTICATE),
            "{path}: {:?}",
            reply.headers
        );
        for wrong in ["Bearer wrong", "Bearer s3cre", "Bearer s3cret2", "s3cret", "Token s3cret"] {
            let reply = lb.send(Method::GET, path, Body::empty(), Some(wrong)).await;
            assert_error(reply.status, &reply.value(), StatusCode::UNAUTHORIZED, wrong);
        }
        let reply = lb.send(Method::GET, path, Body::empty(), Some(&basic("admin", "wrong"))).await;
        assert_error(
            reply.status,
            &reply.value(),
            StatusCode::UNAUTHORIZED,
            "wrong Basic password",
        );
        let (status, body) = lb.call(Method::GET, path, None, Some(&bearer)).await;
        assert_eq!(status, StatusCode::OK, "{path} with the token: {body}");
    }
    // The page takes HTTP Basic with the token as password.
    let page = lb.send(Method::GET, "/", Body::empty(), Some(&basic("admin", TOKEN))).await;
    assert_eq!(page.status, StatusCode::OK, "{}", page.text);
    assert!(page.content_type().starts_with("text/html"));

    // Probes and metrics need no token.
    for path in ["/healthz", "/readyz", "/metrics"] {
        let reply = lb.send(Method::GET, path, Body::empty(), None).await;
        assert_eq!(reply.status, StatusCode::OK, "{path}: {}", reply.text);
    }

    // A change without the token is refused and changes nothing.
    let new = r#"{"address": "10.77.2.13", "port": 80}"#;
    lb.refused(Method::POST, "/api/v1/services/web/backends", Some(new), StatusCode::UNAUTHORIZED)
        .await;
    lb.refused(Method::DELETE, "/api/v1/services/web", None, StatusCode::UNAUTHORIZED).await;
    let (status, body) =
        lb.call(Method::POST, "/api/v1/services/web/backends", Some(new), Some(&bearer)).await;
    assert_eq!(status, StatusCode::CREATED, "{body}");
    assert!(lb.kernel_backends(WEB).contains_key("10.77.2.13:80"));

    // Without it, not even whether a route exists.
    let (status, body) = lb.call(Method::GET, "/api/v1/nothing", None, None).await;
    assert_error(status, &body, StatusCode::UNAUTHORIZED, "unknown route without the token");

    // With the token, errors are the routes' own.
    let (status, body) = lb.call(Method::GET, "/api/v1/nothing", None, Some(&bearer)).await;
    assert_error(status, &body, StatusCode::NOT_FOUND, "unknown route with the token");
}

// ---- The OpenAPI document against the routes ----

/// The admin API's routes, as docs/api.md's route table lists them.
const DOCUMENTED_ROUTES: &[(&str, &str)] = &[
    ("get", "/api/v1/services"),
    ("post", "/api/v1/services"),
    ("get", "/api/v1/services/{name}"),
    ("put", "/api/v1/services/{name}"),
    ("delete", "/api/v1/services/{name}"),
    ("post", "/api/v1/services/{name}/backends"),
    ("patch", "/api/v1/services/{name}/backends/{backend}"),
    ("delete", "/api/v1/services/{name}/backends/{backend}"),
    ("get", "/api/v1/stats"),
    ("get", "/api/v1/conns"),
    ("get", "/api/v1/trace"),
    ("get", "/api/v1/node"),
    ("post", "/api/v1/node/drain"),
    ("post", "/api/v1/node/undrain"),
    ("get", "/metrics"),
    ("get", "/healthz"),
    ("get", "/readyz"),
    ("get", "/"),
];

const METHODS: [&str; 8] = ["get", "put", "post", "delete", "options", "head", "patch", "trace"];

#[tokio::test]
async fn the_openapi_document_matches_the_routes() {
    let dir = TempDir::new("openapi");
    let lb = Lb::start(&dir.0, None).await;
    let (status, doc) = lb.get("/api/v1/openapi.json").await;
    assert_eq!(status, StatusCode::OK, "{doc}");
    let paths = doc["paths"].as_object().expect("the document has paths");

    let mut operations = Vec::new();
    for (path, item) in paths {
        for (method, operation) in item.as_object().unwrap() {
            if !METHODS.contains(&method.as_str()) {
                continue;
            }
            let responses = operation["responses"].as_object();
            assert!(
                responses.is_some_and(|r| !r.is_empty()),
                "{method} {path} documents no response"
            );
            operations.push((method.clone(), path.clone()));
        }
    }
    for (method, path) in DOCUMENTED_ROUTES {
        assert!(
            operations.iter().any(|(m, p)| m == method && p == path),
            "{method} {path} (a route docs/api.md lists) is not in the document; it has {operations:?}"
        );
    }

    // Every documented operation is a route: valid calls, deletions last
    // (backend before its service).
    operations.sort_by_key(|(m, p)| (m == "delete", std::cmp::Reverse(p.len())));
    for (method, path) in &operations {
        let mut concrete = path.replace("{name}", "web").replace("{backend}", "10.77.2.11:80");
        if path == "/api/v1/trace" {
            // A stream: one packet, and it ends.
            lb.fake.trace.lock().unwrap().pending.push_back(traced_syn([10, 77, 1, 10], 1));
            concrete.push_str("?count=1");
        }
        let body = match (method.as_str(), path.as_str()) {
            ("post", "/api/v1/services") => Some(
                r#"{"name": "extra", "vip": "10.77.1.101", "port": 8080,
                    "backends": [{"address": "10.77.2.41", "port": 8080}]}"#,
            ),
            ("put", "/api/v1/services/{name}") => Some(
                r#"{"name": "web", "vip": "10.77.1.100", "port": 80,
                    "backends": [{"address": "10.77.2.11", "port": 80}, {"address": "10.77.2.12", "port": 80}]}"#,
            ),
            ("post", "/api/v1/services/{name}/backends") => {
                Some(r#"{"address": "10.77.2.14", "port": 80}"#)
            }
            ("patch", _) => Some(r#"{"weight": 2}"#),
            _ => None,
        };
        let method = Method::from_bytes(method.to_ascii_uppercase().as_bytes()).unwrap();
        let what = format!("{method} {concrete} (documented as {path})");
        let reply = lb
            .send(
                method,
                &concrete,
                body.map_or_else(Body::empty, |b| Body::from(b.to_owned())),
                None,
            )
            .await;
        assert_ne!(reply.status, StatusCode::METHOD_NOT_ALLOWED, "{what}: {}", reply.text);
        let no_route = reply.status == StatusCode::NOT_FOUND
            && reply.value()["error"].as_str().is_some_and(|e| e.starts_with("no route"));
        assert!(!no_route, "{what}: {}", reply.text);
        // The harness has no [bgp] (no root for its device): a drain is a 409.
        let no_bgp = path.starts_with("/api/v1/node/") && reply.status == StatusCode::CONFLICT;
        assert!(reply.status.is_success() || no_bgp, "{what}: {} {}", reply.status, reply.text);
    }
}

// ---- Failures inside the controller ----

/// The state file cannot be written: the change is undone in the kernel and
/// the answer is a JSON 500; the next change, once the file is writable, works.
#[tokio::test]
async fn a_change_that_cannot_be_kept_is_undone() {
    let dir = TempDir::new("state-unwritable");
    let lb = Lb::start(&dir.0, None).await;
    // A directory where the state file goes: the rename over it fails.
    fs::create_dir_all(&lb.state_file).unwrap();
    let before = (lb.services().await, lb.image());
    let new = r#"{"address": "10.77.2.13", "port": 80}"#;
    let (status, body) =
        lb.call(Method::POST, "/api/v1/services/web/backends", Some(new), None).await;
    assert_error(status, &body, StatusCode::INTERNAL_SERVER_ERROR, "state file unwritable");
    assert!(before == (lb.services().await, lb.image()), "the refused change was left in place");
    let leftovers: Vec<_> = fs::read_dir(&dir.0).unwrap().map(|e| e.unwrap().file_name()).collect();
    assert!(!leftovers.iter().any(|n| n.to_string_lossy().ends_with(".tmp")), "{leftovers:?}");

    fs::remove_dir(&lb.state_file).unwrap();
    let (status, body) =
        lb.call(Method::POST, "/api/v1/services/web/backends", Some(new), None).await;
    assert_eq!(status, StatusCode::CREATED, "{body}");
    assert!(lb.kernel_backends(WEB).contains_key("10.77.2.13:80"));
}

/// A kernel map write fails midway: the answer is a JSON 500 and the maps
/// hold what they held (never a half-applied change), also after a
/// few rounds of the controller's loop.
#[tokio::test]
async fn a_failed_kernel_write_leaves_no_half_applied_change() {
    let dir = TempDir::new("kernel-failure");
    let lb = Lb::start(&dir.0, None).await;
    let mut half_applied = Vec::new();
    for (method, path, body, fail_after) in [
        // The new backend's entry is written, then a write fails.
        (
            Method::POST,
            "/api/v1/services/web/backends",
            Some(r#"{"address": "10.77.2.13", "port": 80}"#),
            1,
        ),
        // The service entry is removed, then a write fails.
        (Method::DELETE, "/api/v1/services/dns", None, 2),
    ] {
        let what = format!("{method} {path} failing after {fail_after} writes");
        let before = (lb.services().await, lb.kernel());
        *lb.fake.fail_after.lock().unwrap() = Some(fail_after);
        let (status, answer) = lb.call(method, path, body, None).await;
        *lb.fake.fail_after.lock().unwrap() = None;
        assert_error(status, &answer, StatusCode::INTERNAL_SERVER_ERROR, &what);
        assert_eq!(before.0, lb.services().await, "{what}: the API shows what it refused");
        tokio::time::sleep(SAMPLE_INTERVAL * 3).await;
        let kernel = lb.kernel();
        if kernel != before.1 {
            half_applied.push(format!("{what}:\n  before {:?}\n  after  {kernel:?}", before.1));
        }
    }
    assert!(
        half_applied.is_empty(),
        "after the 500, the kernel maps hold part of the refused change (the API still shows the old state):\n{}",
        half_applied.join("\n")
    );
}

// ---- Persistence ----

/// Changes made through the API survive a restart: a second controller over
/// the same config and state file serves the same services and programs the
/// same backends into its (new) maps.
#[tokio::test]
async fn changes_survive_a_restart() {
    let dir = TempDir::new("restart");
    let (services, kernel) = {
        let lb = Lb::start(&dir.0, None).await;
        assert!(!lb.state_file.exists(), "no change yet, no state file");
        for (method, path, body, status) in [
            (
                Method::POST,
                "/api/v1/services/web/backends",
                Some(r#"{"address": "10.77.2.13", "port": 80, "weight": 3}"#),
                StatusCode::CREATED,
            ),
            (
                Method::PATCH,
                "/api/v1/services/web/backends/10.77.2.11:80",
                Some(r#"{"weight": 9, "state": "drain"}"#),
                StatusCode::OK,
            ),
            (Method::DELETE, "/api/v1/services/web/backends/10.77.2.12:80", None, StatusCode::OK),
            (
                Method::POST,
                "/api/v1/services",
                Some(
                    r#"{"name": "api", "vip": "10.77.1.101", "port": 443, "scheduler": "rr",
                    "backends": [{"address": "10.77.2.31", "port": 443, "state": "maint"}]}"#,
                ),
                StatusCode::CREATED,
            ),
            (Method::DELETE, "/api/v1/services/dns", None, StatusCode::NO_CONTENT),
        ] {
            let (got, answer) = lb.call(method.clone(), path, body, None).await;
            assert_eq!(got, status, "{method} {path}: {answer}");
        }
        assert!(lb.state_file.exists(), "the changes are kept in the state file");
        let stored: Value = serde_json::from_slice(&fs::read(&lb.state_file).unwrap()).unwrap();
        assert!(stored.is_object(), "{stored}");
        let (_, overview) = lb.get("/api/v1/stats").await;
        assert!(overview["runtime_changes"]["services"].as_u64().unwrap() >= 2, "{overview}");
        (lb.services().await, lb.kernel())
    };

    let lb = Lb::start(&dir.0, None).await;
    let again = lb.services().await;
    assert_eq!(settings(&again), settings(&services));
    let web = service(&again, "web").unwrap();
    let b11 = backend(web, "10.77.2.11:80").unwrap();
    assert_eq!((b11["weight"].clone(), b11["state"].clone()), (json!(9), json!("drain")));
    assert!(backend(web, "10.77.2.12:80").is_none());
    assert_eq!(backend(web, "10.77.2.13:80").unwrap()["weight"], 3);
    assert!(service(&again, "dns").is_none());
    assert_eq!(service(&again, "api").unwrap()["scheduler"], "rr");

    let restored = lb.kernel();
    assert_eq!(restored, kernel, "the new maps hold the same services and backends");
    assert!(!restored.services.contains(DNS));
    assert_eq!(
        restored.backends[WEB],
        BTreeMap::from([
            ("10.77.2.11:80".into(), (0, BACKEND_IN_USE)),
            ("10.77.2.13:80".into(), (3, BACKEND_IN_USE)),
        ])
    );
    assert_eq!(
        restored.backends["10.77.1.101:443/tcp"]["10.77.2.31:443"],
        (0, BACKEND_IN_USE | BACKEND_DOWN)
    );
}

/// `check_address` / `check_port` of a service and of a backend: shown as
/// written, bounded (a port at 65535 and 1, one past refused naming the
/// field), refused where nothing is checked, and kept across a restart.
#[tokio::test]
async fn check_targets_round_trip_are_bounded_and_survive_a_restart() {
    let dir = TempDir::new("check-target");
    let services = {
        let lb = Lb::start(&dir.0, None).await;
        let api = r#"{"name": "api", "vip": "10.77.1.101", "port": 443,
            "health": {"check": "http", "path": "/health", "check_port": 65535, "check_address": "10.77.3.1"},
            "backends": [{"address": "10.77.2.31", "port": 443, "check_port": 1}]}"#;
        let (status, answer) = lb.call(Method::POST, "/api/v1/services", Some(api), None).await;
        assert_eq!(status, StatusCode::CREATED, "{answer}");
        let added = r#"{"address": "10.77.2.32", "port": 443, "check_address": "10.77.3.32", "check_port": 8081}"#;
        let path = "/api/v1/services/api/backends";
        let (status, answer) = lb.call(Method::POST, path, Some(added), None).await;
        assert_eq!(status, StatusCode::CREATED, "{answer}");
        let (_, view) = lb.get("/api/v1/services/api").await;
        assert_eq!(view["health"]["check_port"], 65535, "{view}");
        assert_eq!(view["health"]["check_address"], "10.77.3.1", "{view}");
        let b32 = backend(&view, "10.77.2.32:443").unwrap();
        assert_eq!(
            (b32["check_address"].clone(), b32["check_port"].clone()),
            (json!("10.77.3.32"), json!(8081))
        );
        assert_eq!(backend(&view, "10.77.2.31:443").unwrap()["check_port"], 1);
        assert!(backend(&view, "10.77.2.31:443").unwrap()["check_address"].is_null());

        for (path, body, field) in [
            (path, r#"{"address": "10.77.2.33", "port": 443, "check_port": 65536}"#, "check_port"),
            (path, r#"{"address": "10.77.2.33", "port": 443, "check_port": 0}"#, "check_port"),
            (
                path,
                r#"{"address": "10.77.2.33", "port": 443, "check_address": "ff02::1"}"#,
                "check_address",
            ),
            // The web service has no [service.health]: nothing to redirect.
            (
                "/api/v1/services/web/backends",
                r#"{"address": "10.77.2.13", "port": 80, "check_port": 8081}"#,
                "check_port",
            ),
            (
                "/api/v1/services",
                r#"{"name": "x", "vip": "10.77.1.102", "port": 80, "health": {"check": "none", "check_port": 8081}}"#,
                "health.check_port",
            ),
        ] {
            let answer =
                lb.refused(Method::POST, path, Some(body), StatusCode::UNPROCESSABLE_ENTITY).await;
            assert_names(&answer, field);
        }
        let stored = fs::read_to_string(&lb.state_file).unwrap();
        assert!(stored.contains("10.77.3.32"), "the state file keeps the check_address: {stored}");
        lb.services().await
    };

    let lb = Lb::start(&dir.0, None).await;
    let again = lb.services().await;
    assert_eq!(settings(&again), settings(&services));
    let b32 = backend(service(&again, "api").unwrap(), "10.77.2.32:443").unwrap();
    assert_eq!(
        (b32["check_address"].clone(), b32["check_port"].clone()),
        (json!("10.77.3.32"), json!(8081))
    );
}

/// Persistence, allowed sources and connection limits go in as the file
/// writes them, come back in the views, are refused by name, and survive
/// a restart (the state file keeps them, a backend added over the API too).
#[tokio::test]
async fn persistence_sources_and_limits_round_trip_and_survive_a_restart() {
    let dir = TempDir::new("persist");
    let services = {
        let lb = Lb::start(&dir.0, None).await;
        let api = r#"{"name": "api", "vip": "10.77.1.101", "port": 443,
            "persistence_s": 300, "persistence_netmask": 24,
            "allowed_sources": ["10.77.0.0/16", "192.0.2.7"],
            "backends": [{"address": "10.77.2.31", "port": 443, "max_conns": 100}]}"#;
        let (status, answer) = lb.call(Method::POST, "/api/v1/services", Some(api), None).await;
        assert_eq!(status, StatusCode::CREATED, "{answer}");
        let added = r#"{"address": "10.77.2.32", "port": 443, "max_conns": 2}"#;
        let path = "/api/v1/services/api/backends";
        let (status, answer) = lb.call(Method::POST, path, Some(added), None).await;
        assert_eq!(status, StatusCode::CREATED, "{answer}");
        let (_, view) = lb.get("/api/v1/services/api").await;
        assert_eq!(
            (view["persistence_s"].clone(), view["persistence_netmask"].clone()),
            (json!(300), json!(24))
        );
        assert_eq!(view["allowed_sources"], json!(["10.77.0.0/16", "192.0.2.7/32"]), "{view}");
        assert_eq!(backend(&view, "10.77.2.32:443").unwrap()["max_conns"], 2);
        assert_eq!(backend(&view, "10.77.2.31:443").unwrap()["max_conns"], 100);
        for (path, body, field) in [
            (path, r#"{"address": "10.77.2.33", "port": 443, "max_conns": -1}"#, "max_conns"),
            (
                "/api/v1/services",
                r#"{"name": "x", "vip": "10.77.1.102", "port": 80, "allowed_sources": ["10.0.0.0/8", "fd00::/8"]}"#,
                "allowed_sources[1]",
            ),
            (
                "/api/v1/services",
                r#"{"name": "x", "vip": "10.77.1.102", "port": 80, "persistence_netmask": 24}"#,
                "persistence_netmask",
            ),
        ] {
            let answer =
                lb.refused(Method::POST, path, Some(body), StatusCode::UNPROCESSABLE_ENTITY).await;
            assert_names(&answer, field);
        }
        lb.services().await
    };
    let lb = Lb::start(&dir.0, None).await;
    let again = lb.services().await;
    assert_eq!(settings(&again), settings(&services));
    let api = service(&again, "api").unwrap();
    assert_eq!(api["allowed_sources"], json!(["10.77.0.0/16", "192.0.2.7/32"]));
    assert_eq!(backend(api, "10.77.2.32:443").unwrap()["max_conns"], 2);
}

/// A full-NAT service's pool goes in as the file writes it, comes back in
/// the view (the ports even when defaulted, `[dataplane]`'s pool when it
/// names none), is refused by name (a VIP in `[dataplane]`'s pool too),
/// and survives a restart.
#[tokio::test]
async fn a_full_nat_pool_round_trips_and_survives_a_restart() {
    let dir = TempDir::new("fullnat");
    let services = {
        let lb = Lb::start(&dir.0, None).await;
        let pooled = r#"{"name": "pooled", "vip": "10.77.1.101", "port": 443,
            "forwarding": "fullnat", "snat_addresses": ["10.77.2.1", "10.77.2.2"],
            "snat_ports": "40000-40063", "backends": [{"address": "10.77.3.31", "port": 443}]}"#;
        let routed = r#"{"name": "routed", "vip": "10.77.1.101", "port": 80,
            "forwarding": "fullnat", "backends": [{"address": "10.77.3.31", "port": 80}]}"#;
        for body in [pooled, routed] {
            let (status, answer) =
                lb.call(Method::POST, "/api/v1/services", Some(body), None).await;
            assert_eq!(status, StatusCode::CREATED, "{answer}");
        }
        let (_, view) = lb.get("/api/v1/services/pooled").await;
        assert_eq!(view["forwarding"], "fullnat");
        assert_eq!(view["snat_addresses"], json!(["10.77.2.1", "10.77.2.2"]), "{view}");
        assert_eq!(view["snat_ports"], "40000-40063");
        // It names no pool: it takes `[dataplane]`'s, and shows it.
        let (_, view) = lb.get("/api/v1/services/routed").await;
        assert_eq!(
            (&view["snat_addresses"], &view["snat_ports"]),
            (&json!(["10.77.9.5"]), &json!("61000-65535"))
        );
        for (body, field) in [
            (
                r#"{"name": "x", "vip": "10.77.1.102", "port": 80, "snat_ports": "1-2"}"#,
                "snat_ports",
            ),
            (
                r#"{"name": "x", "vip": "10.77.1.102", "port": 80, "forwarding": "fullnat", "snat_addresses": ["fd77::1"]}"#,
                "snat_addresses[0]",
            ),
            (
                r#"{"name": "x", "vip": "10.77.1.102", "port": 80, "forwarding": "fullnat", "snat_ports": "9-8"}"#,
                "snat_ports",
            ),
            // A VIP the running `[dataplane]` pool holds.
            (r#"{"name": "x", "vip": "10.77.9.5", "port": 80}"#, "vip"),
        ] {
            let answer = lb
                .refused(
                    Method::POST,
                    "/api/v1/services",
                    Some(body),
                    StatusCode::UNPROCESSABLE_ENTITY,
                )
                .await;
            assert_names(&answer, field);
        }
        lb.services().await
    };
    let lb = Lb::start(&dir.0, None).await;
    let again = lb.services().await;
    assert_eq!(settings(&again), settings(&services));
    let pooled = service(&again, "pooled").unwrap();
    assert_eq!(pooled["snat_ports"], "40000-40063");
    assert_eq!(pooled["snat_addresses"], json!(["10.77.2.1", "10.77.2.2"]));
}

/// A backend's `max_conns` is in `/metrics` as
/// `lb_backend_max_connections` beside its connection gauges, and on the
/// page beside its connections; a backend without a limit has no such
/// series (and a `-`); a limit changed over the API shows at once, and one
/// removed goes.
#[tokio::test]
async fn a_backends_limit_is_a_gauge_and_a_column() {
    let dir = TempDir::new("limit-gauge");
    let lb = Lb::start(&dir.0, None).await;
    let api = r#"{"name": "api", "vip": "10.77.1.101", "port": 443,
        "backends": [{"address": "10.77.2.31", "port": 443},
                     {"address": "10.77.2.32", "port": 443, "max_conns": 2}]}"#;
    let (status, answer) = lb.call(Method::POST, "/api/v1/services", Some(api), None).await;
    assert_eq!(status, StatusCode::CREATED, "{answer}");
    let limits = |text: &str| -> Vec<String> {
        text.lines()
            .filter(|l| l.starts_with("lb_backend_max_connections{service=\"api\""))
            .map(str::to_owned)
            .collect()
    };
    let metrics = lb.send(Method::GET, "/metrics", Body::empty(), None).await;
    assert_eq!(
        limits(&metrics.text),
        [r#"lb_backend_max_connections{service="api",backend="10.77.2.32:443"} 2"#],
        "{}",
        metrics.text
    );
    for beside in ["lb_backend_active_connections{", "lb_backend_inactive_connections{"] {
        assert!(
            metrics
                .text
                .contains(&format!("{beside}service=\"api\",backend=\"10.77.2.32:443\"}} 0")),
            "{beside}: {}",
            metrics.text
        );
    }
    let page = lb.send(Method::GET, "/", Body::empty(), None).await;
    assert!(page.text.contains("<th>Limit</th>"), "{}", page.text);
    assert!(page.text.contains("<td class=\"n\">2</td>"), "{}", page.text);

    let path = "/api/v1/services/api/backends/10.77.2.32:443";
    for (body, want) in [(r#"{"max_conns": 5}"#, Some(5)), (r#"{"max_conns": 0}"#, None)] {
        let (status, view) = lb.call(Method::PATCH, path, Some(body), None).await;
        assert_eq!(status, StatusCode::OK, "{view}");
        let metrics = lb.send(Method::GET, "/metrics", Body::empty(), None).await;
        let want: Vec<String> = want
            .map(|n| {
                format!(
                    r#"lb_backend_max_connections{{service="api",backend="10.77.2.32:443"}} {n}"#
                )
            })
            .into_iter()
            .collect();
        assert_eq!(limits(&metrics.text), want, "after {body}");
    }
}

/// PATCH changes a backend's role, limit and check target in place (not
/// only its weight and state); each is checked as in a body, and a check
/// target where nothing is probed is refused; the change survives a restart.
#[tokio::test]
async fn patch_changes_backup_limit_and_check_target_in_place() {
    let dir = TempDir::new("patch");
    {
        let lb = Lb::start(&dir.0, None).await;
        let api = r#"{"name": "api", "vip": "10.77.1.101", "port": 443, "health": {"check": "tcp"},
            "backends": [{"address": "10.77.2.31", "port": 443}, {"address": "10.77.2.32", "port": 443}]}"#;
        let (status, answer) = lb.call(Method::POST, "/api/v1/services", Some(api), None).await;
        assert_eq!(status, StatusCode::CREATED, "{answer}");
        let path = "/api/v1/services/api/backends/10.77.2.32:443";
        let body = r#"{"backup": true, "max_conns": 50, "check_port": 8081}"#;
        let (status, view) = lb.call(Method::PATCH, path, Some(body), None).await;
        assert_eq!(status, StatusCode::OK, "{view}");
        let b = backend(&view, "10.77.2.32:443").unwrap();
        assert_eq!(
            (b["backup"].clone(), b["max_conns"].clone(), b["check_port"].clone()),
            (json!(true), json!(50), json!(8081))
        );
        let (status, view) = lb.call(Method::PATCH, path, Some(r#"{"backup": false}"#), None).await;
        assert_eq!(status, StatusCode::OK, "{view}");
        let b = backend(&view, "10.77.2.32:443").unwrap();
        assert_eq!((b["backup"].clone(), b["max_conns"].clone()), (json!(false), json!(50)));
        for (body, field) in
            [(r#"{"max_conns": -1}"#, "max_conns"), (r#"{"check_port": 0}"#, "check_port")]
        {
            let answer =
                lb.refused(Method::PATCH, path, Some(body), StatusCode::UNPROCESSABLE_ENTITY).await;
            assert_names(&answer, field);
        }
        let answer = lb
            .refused(
                Method::PATCH,
                "/api/v1/services/web/backends/10.77.2.11:80",
                Some(r#"{"check_port": 8081}"#),
                StatusCode::UNPROCESSABLE_ENTITY,
            )
            .await;
        assert_names(&answer, "check_port");
    }
    let lb = Lb::start(&dir.0, None).await;
    let again = lb.services().await;
    let b = backend(service(&again, "api").unwrap(), "10.77.2.32:443").unwrap().clone();
    assert_eq!(
        (b["backup"].clone(), b["max_conns"].clone(), b["check_port"].clone()),
        (json!(false), json!(50), json!(8081))
    );
}

/// What moves between services survives a restart too: a backend moved
/// from one service to another, and a service re-created under a new name
/// on the same VIP:port. (The state file keeps the last word per service and
/// backend; replaying them in name order must not trip over the words that
/// freed what a later one takes.)
#[tokio::test]
async fn moves_survive_a_restart() {
    let dir = TempDir::new("moves");
    let (services, kernel) = {
        let lb = Lb::start(&dir.0, None).await;
        for (method, path, body, status) in [
            (
                Method::POST,
                "/api/v1/services",
                Some(r#"{"name": "api", "vip": "10.77.1.101", "port": 80}"#),
                StatusCode::CREATED,
            ),
            // 10.77.2.11:80 moves from web to api.
            (Method::DELETE, "/api/v1/services/web/backends/10.77.2.11:80", None, StatusCode::OK),
            (
                Method::POST,
                "/api/v1/services/api/backends",
                Some(r#"{"address": "10.77.2.11", "port": 80}"#),
                StatusCode::CREATED,
            ),
            // dns becomes a-dns, same VIP:port/udp and backend.
            (Method::DELETE, "/api/v1/services/dns", None, StatusCode::NO_CONTENT),
            (
                Method::POST,
                "/api/v1/services",
                Some(
                    r#"{"name": "a-dns", "vip": "10.77.1.100", "port": 53, "protocol": "udp",
                    "backends": [{"address": "10.77.2.21", "port": 53}]}"#,
                ),
                StatusCode::CREATED,
            ),
        ] {
            let (got, answer) = lb.call(method.clone(), path, body, None).await;
            assert_eq!(got, status, "{method} {path}: {answer}");
        }
        (lb.services().await, lb.kernel())
    };
    let names = |v: &Value| {
        v.as_array()
            .unwrap()
            .iter()
            .map(|s| s["name"].as_str().unwrap().to_owned())
            .collect::<BTreeSet<_>>()
    };
    assert_eq!(names(&services), BTreeSet::from(["a-dns".into(), "api".into(), "web".into()]));

    let lb = Lb::start(&dir.0, None).await;
    let again = lb.services().await;
    let mut lost = Vec::new();
    if service(&again, "a-dns").is_none() {
        lost.push("service a-dns (10.77.1.100:53/udp, re-created under a new name)".to_owned());
    }
    if service(&again, "api").and_then(|api| backend(api, "10.77.2.11:80")).is_none() {
        lost.push("backend 10.77.2.11:80 of api (moved from web)".to_owned());
    }
    assert!(
        lost.is_empty(),
        "after a restart, lost: {}; services now {:?}",
        lost.join(", "),
        names(&again)
    );
    assert_eq!(settings(&again), settings(&services));
    assert_eq!(lb.kernel(), kernel);
}

// ---- Hostile clients ----

/// A web page the operator opens can send requests to the API, with a
/// rebound DNS name or from its own origin. None of them changes or
/// reads anything, even with the token (a browser holding Basic
/// credentials for the page sends them along).
#[tokio::test]
async fn web_pages_can_neither_change_nor_read_anything() {
    let dir = TempDir::new("hostile-browser");
    let lb = Lb::start(&dir.0, None).await;
    let bearer = format!("Bearer {HARNESS_TOKEN}");
    let add = "/api/v1/services/web/backends";
    let new = r#"{"address": "10.77.2.13", "port": 80}"#;
    let (host, auth, json, text) = (
        header::HOST,
        header::AUTHORIZATION,
        (header::CONTENT_TYPE, "application/json"),
        (header::CONTENT_TYPE, "text/plain"),
    );
    let origin = |o: &'static str| (header::ORIGIN, o);

    // A cross-origin text/plain POST (no CORS preflight): refused.
    for headers in [
        vec![(host.clone(), LISTEN), text.clone(), origin("http://evil.example")],
        vec![(host.clone(), LISTEN), text.clone(), origin("null")],
        vec![
            (host.clone(), LISTEN),
            (auth.clone(), &bearer),
            text.clone(),
            origin("http://evil.example"),
        ],
    ] {
        let answer =
            lb.refused_with(Method::POST, add, Some(new), &headers, StatusCode::FORBIDDEN).await;
        assert!(answer["error"].as_str().unwrap().contains("Origin"), "{answer}");
    }
    // Same origin but not JSON (a form, text/plain, none): 415.
    for content_type in ["text/plain", "application/x-www-form-urlencoded", "multipart/form-data"] {
        let headers =
            [(host.clone(), LISTEN), (auth.clone(), &bearer), (header::CONTENT_TYPE, content_type)];
        let answer = lb
            .refused_with(
                Method::POST,
                add,
                Some(new),
                &headers,
                StatusCode::UNSUPPORTED_MEDIA_TYPE,
            )
            .await;
        assert!(answer["error"].as_str().unwrap().contains("application/json"), "{answer}");
    }
    for method in [Method::POST, Method::PUT, Method::PATCH] {
        let headers = [(host.clone(), LISTEN), (auth.clone(), bearer.as_str())];
        lb.refused_with(method, add, Some(new), &headers, StatusCode::UNSUPPORTED_MEDIA_TYPE).await;
    }
    let headers = [(host.clone(), LISTEN), (auth.clone(), bearer.as_str()), text.clone()];
    lb.refused_with(
        Method::DELETE,
        "/api/v1/services/web",
        None,
        &headers,
        StatusCode::UNSUPPORTED_MEDIA_TYPE,
    )
    .await;

    // A JSON POST from a foreign origin (what a page gets past a preflight
    // it cannot pass anyway): refused.
    let headers = [
        (host.clone(), LISTEN),
        (auth.clone(), bearer.as_str()),
        json.clone(),
        origin("http://evil.example:9100"),
    ];
    lb.refused_with(Method::POST, add, Some(new), &headers, StatusCode::FORBIDDEN).await;

    // DNS rebinding: the page's own name in Host. Changes and reads refused,
    // naming the host.
    for foreign in ["evil.example:9100", "evil.example", "127.0.0.1:9101", "127.0.0.2:9100"] {
        let headers = [(host.clone(), foreign), (auth.clone(), bearer.as_str()), json.clone()];
        let answer =
            lb.refused_with(Method::POST, add, Some(new), &headers, StatusCode::FORBIDDEN).await;
        assert!(answer["error"].as_str().unwrap().contains(foreign), "{answer}");
        lb.refused_with(
            Method::DELETE,
            "/api/v1/services/web",
            None,
            &headers,
            StatusCode::FORBIDDEN,
        )
        .await;
        for read in [
            "/api/v1/services",
            "/api/v1/stats",
            "/api/v1/conns",
            "/",
            "/api/v1/openapi.json",
            "/metrics",
        ] {
            let reply = lb.send_headers(Method::GET, read, Body::empty(), &headers).await;
            assert_error(reply.status, &reply.value(), StatusCode::FORBIDDEN, read);
        }
    }
    // No Host at all: 400.
    let headers = [(auth.clone(), bearer.as_str()), json.clone()];
    lb.refused_with(Method::POST, add, Some(new), &headers, StatusCode::BAD_REQUEST).await;

    // The API's own origin, its names, JSON, the token: made.
    for (h, o) in [(LISTEN, "http://127.0.0.1:9100"), ("localhost:9100", "http://localhost:9100")] {
        let headers = [(host.clone(), h), (auth.clone(), bearer.as_str()), json.clone(), origin(o)];
        let reply =
            lb.send_headers(Method::GET, "/api/v1/services/web", Body::empty(), &headers).await;
        assert_eq!(reply.status, StatusCode::OK, "{h}: {}", reply.text);
    }
    let headers = [
        (host.clone(), LISTEN),
        (auth.clone(), bearer.as_str()),
        (header::CONTENT_TYPE, "application/json; charset=utf-8"),
        origin("http://127.0.0.1:9100"),
    ];
    let reply = lb.send_headers(Method::POST, add, Body::from(new), &headers).await;
    assert_eq!(reply.status, StatusCode::CREATED, "{}", reply.text);
    assert!(lb.kernel_backends(WEB).contains_key("10.77.2.13:80"));
}

/// With the token `lb-ctl run` generates (no `admin.token_file`), every
/// request without it is refused but the probes' and Prometheus'; and the
/// CLI on this machine finds it by itself: `lb-ctl backend drain` just works.
#[tokio::test]
async fn the_generated_token_is_required_and_the_cli_finds_it() {
    let dir = TempDir::new("generated-token");
    let run_dir = dir.0.join("run");
    let listener = api::bind(SocketAddr::from(([127, 0, 0, 1], 0)), false).await.unwrap();
    let listen = listener.local_addr().unwrap();
    let (token, path, created) = api::token::generated(&run_dir, listen.port()).unwrap();
    assert!(created, "{}", path.display());
    let lb = Lb::start_queue(&dir.0, Some(&token), 64, None, &listen.to_string()).await;
    let _served = lb.serve_on(listener, api::serve::Limits::default());
    let host = listen.to_string();
    let json = (header::CONTENT_TYPE, "application/json");

    let new = r#"{"address": "10.77.2.13", "port": 80}"#;
    let without = [(header::HOST, host.as_str()), json.clone()];
    lb.refused_with(
        Method::POST,
        "/api/v1/services/web/backends",
        Some(new),
        &without,
        StatusCode::UNAUTHORIZED,
    )
    .await;
    let wrong = [
        (header::HOST, host.as_str()),
        json.clone(),
        (header::AUTHORIZATION, "Bearer h4rness-t0ken"),
    ];
    lb.refused_with(Method::DELETE, "/api/v1/services/web", None, &wrong, StatusCode::UNAUTHORIZED)
        .await;
    for read in ["/api/v1/services", "/api/v1/stats", "/api/v1/conns", "/", "/api/v1/openapi.json"]
    {
        let reply = lb.send_headers(Method::GET, read, Body::empty(), &without).await;
        assert_error(reply.status, &reply.value(), StatusCode::UNAUTHORIZED, read);
    }
    for open in ["/healthz", "/readyz", "/metrics"] {
        let reply = lb.send_headers(Method::GET, open, Body::empty(), &without).await;
        assert_eq!(reply.status, StatusCode::OK, "{open}: {}", reply.text);
    }

    // The real CLI, told nothing but the address (as keepalived and the
    // operator call it), over the real listener.
    let cli = |args: &[&str]| {
        let mut command = std::process::Command::new(env!("CARGO_BIN_EXE_lb-ctl"));
        command
            .arg("--admin")
            .arg(format!("http://{listen}"))
            .args(args)
            .env("LB_RUN_DIR", &run_dir)
            .env_remove("LB_TOKEN")
            .env_remove("LB_ADMIN");
        command
    };
    let mut drain = cli(&["backend", "drain", "web", "10.77.2.11:80"]);
    let out = tokio::task::spawn_blocking(move || drain.output().unwrap()).await.unwrap();
    assert!(out.status.success(), "lb-ctl backend drain: {out:?}");
    let services = lb.services().await;
    let web = service(&services, "web").unwrap();
    assert_eq!(backend(web, "10.77.2.11:80").unwrap()["state"], "drain", "{web}");
    // Without the generated file (another machine's run dir), exit 4.
    let mut list = cli(&["list"]);
    list.env("LB_RUN_DIR", dir.0.join("elsewhere"));
    let out = tokio::task::spawn_blocking(move || list.output().unwrap()).await.unwrap();
    assert_eq!(out.status.code(), Some(4), "{out:?}");
}

/// Raises this process's soft limit on open files to its hard limit (the
/// flood below holds a few thousand sockets, both ends in this process).
fn raise_open_file_limit(wanted: u64) {
    let mut limit = libc::rlimit { rlim_cur: 0, rlim_max: 0 };
    // SAFETY: getrlimit/setrlimit read and write the struct given, nothing else.
    unsafe {
        assert_eq!(libc::getrlimit(libc::RLIMIT_NOFILE, &raw mut limit), 0);
        if limit.rlim_cur < wanted {
            limit.rlim_cur = limit.rlim_max.min(wanted);
            assert_eq!(libc::setrlimit(libc::RLIMIT_NOFILE, &raw const limit), 0);
        }
    }
    assert!(limit.rlim_cur >= wanted, "the open-file limit {} is below {wanted}", limit.rlim_cur);
}

/// 2,000 connections that send nothing and a client trickling its headers
/// do not lock the operator out: `/readyz` and an authenticated change
/// still answer within seconds, and the server keeps at most 256 of the
/// idle ones (the others are closed to make room).
#[tokio::test]
async fn an_idle_flood_and_a_slow_client_do_not_lock_the_api_out() {
    const IDLE: usize = 2000;
    const CAP: usize = 256; // docs/api.md's, not `api::serve::MAX_CONNECTIONS`.
    raise_open_file_limit(2 * IDLE as u64 + 512);
    let dir = TempDir::new("flood");
    let lb = Lb::start(&dir.0, None).await;
    let served = lb.serve().await;

    let mut slow = TcpStream::connect(served.addr).await.unwrap();
    slow.write_all(b"GET /readyz HTTP/1.1\r\nHo").await.unwrap();
    let mut idle = Vec::with_capacity(IDLE);
    for _ in 0..IDLE {
        idle.push(TcpStream::connect(served.addr).await.expect("connecting"));
    }
    let _ = slow.write_all(b"st: 127.0.0.1:9100\r\nX-Slow: 1").await;

    let started = tokio::time::Instant::now();
    let request = |head: String| async move {
        let mut stream = TcpStream::connect(served.addr).await.unwrap();
        stream.write_all(head.as_bytes()).await.unwrap();
        read_answer(&mut stream).await
    };
    let ready = format!("GET /readyz HTTP/1.1\r\nHost: {LISTEN}\r\n\r\n");
    let (status, body) = tokio::time::timeout(Duration::from_secs(3), request(ready))
        .await
        .expect("/readyz answered within 3 s");
    assert_eq!(status, StatusCode::OK, "{body}");
    let new = r#"{"address": "10.77.2.13", "port": 80}"#;
    let post = format!(
        "POST /api/v1/services/web/backends HTTP/1.1\r\nHost: {LISTEN}\r\nAuthorization: Bearer {HARNESS_TOKEN}\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n{new}",
        new.len()
    );
    let (status, body) = tokio::time::timeout(Duration::from_secs(3), request(post))
        .await
        .expect("an authenticated POST answered within 3 s");
    assert_eq!(status, StatusCode::CREATED, "{body}");
    assert!(started.elapsed() < Duration::from_secs(5), "{:?}", started.elapsed());

    // The server closed all but at most CAP of the idle ones.
    tokio::time::sleep(Duration::from_millis(200)).await;
    let mut buf = [0_u8; 16];
    let open = idle
        .iter()
        .filter(|s| matches!(s.try_read(&mut buf), Err(e) if e.kind() == std::io::ErrorKind::WouldBlock))
        .count();
    assert!(open <= CAP, "{open} idle connections still open; at most {CAP} are kept");
}

/// A client that never finishes its headers, and one that keeps an idle
/// connection after its answer, are closed after 10 s (not before): on
/// tokio's paused clock.
#[tokio::test(start_paused = true)]
async fn slow_headers_and_idle_keep_alive_are_closed_after_10_s() {
    const TIMEOUT: Duration = Duration::from_secs(10); // docs/api.md's.
    let dir = TempDir::new("slowloris");
    let lb = Lb::start(&dir.0, None).await;
    let served = lb.serve().await;
    let closed_after = |mut stream: TcpStream| async move {
        let start = tokio::time::Instant::now();
        let mut buf = [0_u8; 4096];
        loop {
            let read = tokio::time::timeout(3 * TIMEOUT, stream.read(&mut buf))
                .await
                .unwrap_or_else(|_| panic!("still open after {:?}", 3 * TIMEOUT));
            if read.is_err() || read.is_ok_and(|n| n == 0) {
                return start.elapsed();
            }
        }
    };
    let mut slow = TcpStream::connect(served.addr).await.unwrap();
    slow.write_all(format!("GET /readyz HTTP/1.1\r\nHost: {LISTEN}\r\nX-Slow:").as_bytes())
        .await
        .unwrap();
    let waited = closed_after(slow).await;
    assert!(
        waited >= TIMEOUT && waited < TIMEOUT + Duration::from_secs(1),
        "slow headers: {waited:?}"
    );

    let mut kept = TcpStream::connect(served.addr).await.unwrap();
    kept.write_all(format!("GET /healthz HTTP/1.1\r\nHost: {LISTEN}\r\n\r\n").as_bytes())
        .await
        .unwrap();
    let (status, _) = read_answer(&mut kept).await;
    assert_eq!(status, StatusCode::OK);
    let waited = closed_after(kept).await;
    assert!(
        waited >= TIMEOUT && waited < TIMEOUT + Duration::from_secs(1),
        "idle keep-alive: {waited:?}"
    );
}

/// A request that times out changed nothing, ever; one whose change was
/// handed to the controller gets the controller's real answer, however
/// late. The controller is held busy for 15 s with a queue of one place:
/// the first change is queued (handed over), the second cannot be.
#[tokio::test(start_paused = true)]
async fn a_timed_out_request_changes_nothing_and_a_handed_over_one_gets_its_answer() {
    const TIMEOUT: Duration = Duration::from_secs(10); // docs/api.md's.
    let dir = TempDir::new("handover");
    let gate = Arc::new(tokio::sync::Semaphore::new(0));
    let lb = Lb::start_queue(&dir.0, None, 1, Some(gate.clone()), LISTEN).await;
    let before = lb.snapshot().await;
    let post = |address: &'static str| {
        let app = lb.app.clone();
        tokio::spawn(async move {
            let body = format!(r#"{{"address": "{address}", "port": 80}}"#);
            let request = Request::post("/api/v1/services/web/backends")
                .header(header::HOST, LISTEN)
                .header(header::AUTHORIZATION, format!("Bearer {HARNESS_TOKEN}"))
                .header(header::CONTENT_TYPE, "application/json")
                .body(Body::from(body))
                .unwrap();
            let started = tokio::time::Instant::now();
            let status = app.oneshot(request).await.unwrap().status();
            (status, started.elapsed())
        })
    };
    let queued = post("10.77.2.13");
    tokio::task::yield_now().await;
    let not_queued = post("10.77.2.14");
    let (status, waited) = not_queued.await.unwrap();
    assert_eq!(status, StatusCode::REQUEST_TIMEOUT, "the change that found no room");
    assert!(waited >= TIMEOUT && waited < TIMEOUT + Duration::from_secs(1), "{waited:?}");
    assert_eq!(before, lb.snapshot().await, "nothing changed yet");

    tokio::time::sleep(Duration::from_secs(5)).await;
    gate.add_permits(1000);
    let (status, waited) = queued.await.unwrap();
    assert_eq!(
        status,
        StatusCode::CREATED,
        "the handed-over change answered {status} after {waited:?}"
    );
    assert!(waited >= Duration::from_secs(15), "{waited:?}");
    tokio::time::sleep(Duration::from_secs(1)).await;
    let kernel = lb.kernel_backends(WEB);
    assert!(kernel.contains_key("10.77.2.13:80"), "{kernel:?}");
    assert!(!kernel.contains_key("10.77.2.14:80"), "the 408'd change was made: {kernel:?}");
    let state = fs::read_to_string(&lb.state_file).unwrap();
    assert!(!state.contains("10.77.2.14"), "{state}");
}

/// Every field with a bound, at the bound and one past it: accepted, then
/// 422 naming the field and nothing changed. docs/configuration.md's numbers.
#[tokio::test]
async fn every_bounded_field_is_accepted_at_its_bound_and_refused_past_it() {
    let dir = TempDir::new("bounds");
    let lb = Lb::start(&dir.0, None).await;
    let mut port = 1000;
    let mut service = |name: &str, health: Value, backends: usize| {
        port += 1;
        let backends: Vec<Value> = (0..backends)
            .map(|i| json!({"address": format!("10.78.{}.{}", i / 250, i % 250 + 1), "port": port}))
            .collect();
        let mut s = json!({"name": name, "vip": "10.77.1.200", "port": port, "backends": backends});
        if !health.is_null() {
            s["health"] = health;
        }
        s.to_string()
    };
    let http = |path: &str, body: &str| json!({"check": "http", "path": path, "expect_body": body});
    let name_at = "n".repeat(63);
    let path_at = format!("/{}", "p".repeat(1023));
    let body_at = "b".repeat(1024);
    let udp = |send: &str| json!({"check": "udp", "send": send}).to_string();
    let udp = |n: usize| serde_json::from_str::<Value>(&udp(&"s".repeat(n))).unwrap();
    let slow = |seconds: i64, service: String| {
        let mut v: Value = serde_json::from_str(&service).unwrap();
        v["slow_start_s"] = json!(seconds);
        v.to_string()
    };
    let missing = json!({"check": "script", "command": ["/nonexistent/check"]});
    for (what, body, field) in [
        ("send", service("s", udp(1025), 0), "send"),
        ("slow_start_s", slow(3601, service("slow", Value::Null, 0)), "slow_start_s"),
        ("command", service("c", missing, 0), "command"),
        ("name", service(&"n".repeat(64), Value::Null, 0), "name"),
        ("path", service("p", http(&format!("{path_at}p"), "ok"), 0), "path"),
        ("expect_body", service("b", http("/", &format!("{body_at}b")), 0), "expect_body"),
        ("backends", service("many", Value::Null, 1025), "backend"),
    ] {
        let answer = lb
            .refused(
                Method::POST,
                "/api/v1/services",
                Some(&body),
                StatusCode::UNPROCESSABLE_ENTITY,
            )
            .await;
        assert_names(&answer, field);
        assert!(answer.to_string().len() < 2000, "{what}: the answer echoes the value: {answer}");
    }
    for (what, body) in [
        ("name", service(&name_at, Value::Null, 0)),
        ("path and expect_body", service("pb", http(&path_at, &body_at), 0)),
        ("backends", service("many", Value::Null, 1024)),
        ("send", service("s", udp(1024), 0)),
        ("slow_start_s", slow(3600, service("slow", Value::Null, 0))),
    ] {
        let (status, answer) = lb.call(Method::POST, "/api/v1/services", Some(&body), None).await;
        assert_eq!(status, StatusCode::CREATED, "{what} at its bound: {answer}");
    }
    // One more backend to the service at its bound: 422, nothing changed.
    let answer = lb
        .refused(
            Method::POST,
            "/api/v1/services/many/backends",
            Some(r#"{"address": "10.79.0.1", "port": 80}"#),
            StatusCode::UNPROCESSABLE_ENTITY,
        )
        .await;
    assert_names(&answer, "backends");
    // A name past the bound in a path: 404 without echoing it whole.
    let long = "n".repeat(5000);
    let (status, answer) = lb.get(&format!("/api/v1/services/{long}")).await;
    assert_error(status, &answer, StatusCode::NOT_FOUND, "a 5000-character name");
    assert!(answer.to_string().len() < 500, "{answer}");
}

/// `/metrics` and the stats page at the largest config accepted (256
/// services of 63-character names, 64 backends each: 16384 in all) stay
/// under docs/api.md's bounds. Prints the sizes and render times.
#[tokio::test]
async fn metrics_and_the_page_stay_bounded_at_the_largest_config() {
    const METRICS_BOUND: usize = 32 << 20; // docs/api.md's.
    const PAGE_BOUND: usize = 12 << 20;
    use std::fmt::Write as _;
    let dir = TempDir::new("largest");
    let state_file = dir.0.join("lb.state.json");
    let mut text = format!(
        "[dataplane]\ninterfaces = [\"lb-test0\"]\n\n[admin]\nstate_file = \"{}\"\n",
        state_file.display()
    );
    for s in 0..256_u32 {
        let name = format!("{s:03}{}", "s".repeat(60));
        let _ = write!(
            text,
            "\n[[service]]\nname = \"{name}\"\nvip = \"10.200.{}.{}\"\nport = 65535\n[service.health]\ncheck = \"tcp\"\ninterval_ms = 3600000\ntimeout_ms = 1000\n",
            s / 250,
            s % 250 + 1
        );
        for b in 0..64_u32 {
            let n = s * 64 + b;
            let _ = write!(
                text,
                "[[service.backend]]\naddress = \"10.{}.{}.{}\"\nport = 65535\n",
                100 + n / 62500,
                n / 250 % 250,
                n % 250 + 1
            );
        }
    }
    let config = config::parse(&text).expect("the largest config is valid");
    let config_path = dir.0.join("lb.toml");
    fs::write(&config_path, &text).unwrap();
    let (handle, _task) = reconciler::spawn(Reconciler::new(FakeMaps::default())).unwrap();
    let (_controller, stats) =
        Controller::start(config_path, Overrides::default(), config, handle).await.unwrap();
    let stats = stats.borrow().clone();
    let started = std::time::Instant::now();
    let metrics = api::metrics::render(&stats);
    let metrics_time = started.elapsed();
    let started = std::time::Instant::now();
    let page = api::page::render(&stats, 0);
    let page_time = started.elapsed();
    println!(
        "largest config: /metrics {} bytes in {metrics_time:?}, page {} bytes in {page_time:?}",
        metrics.len(),
        page.len()
    );
    assert!(metrics.len() < METRICS_BOUND, "/metrics: {} bytes", metrics.len());
    assert!(page.len() < PAGE_BOUND, "page: {} bytes", page.len());
}
