//! The admin API's routes (docs/api.md). Each handler is also its OpenAPI entry (the
//! `#[utoipa::path]` above it), so the document cannot drift from the code.
// utoipa's expansion of `params(ConnsQuery)` qualifies paths it need not.
#![allow(unused_qualifications)]
use std::{sync::Arc, time::SystemTime};

use axum::{
    Json,
    body::Bytes,
    extract::{
        Extension, Path, Query, State,
        rejection::{BytesRejection, PathRejection, QueryRejection},
    },
    http::{StatusCode, header},
    response::{Html, IntoResponse, Response},
};
use serde::Deserialize;
use tokio::sync::oneshot;
use utoipa::{IntoParams, ToSchema};

use super::{
    ApiState, HandedOver,
    error::{ApiError, ErrorBody},
    metrics, page,
    view::{ConnView, ConnsList, ServiceView, Stats, conn_state_name},
};
use crate::{
    daemon::{bgp::NodeView, controller::Request},
    desired::{
        bounds::{MAX_NAME_LEN, MAX_WEIGHT},
        changes::{BackendEdit, Change, parse_backend_address},
        json::{self, BodyError},
        model::AdminState,
        problem::Problem,
        validate::is_service_name,
        written::{RawBackend, RawService},
    },
    plan::ids::Key,
};

type ApiResult<T> = Result<T, ApiError>;

/// The newest view the controller published.
fn stats(api: &ApiState) -> Arc<Stats> {
    api.stats.borrow().clone()
}

fn find_service(stats: &Stats, name: &str) -> ApiResult<ServiceView> {
    stats
        .services
        .iter()
        .find(|s| s.name == name)
        .cloned()
        .ok_or_else(|| ApiError::not_found(format!("no service named {name:?}")))
}

/// Sends `change` to the controller; answers once the kernel holds it.
/// Until the queue takes it, the request may still time out (and nothing
/// changes); from then on, the answer is the controller's.
async fn change(api: &ApiState, handed_over: &HandedOver, change: Change) -> ApiResult<Arc<Stats>> {
    let (reply, answer) = oneshot::channel();
    let stopped = || ApiError::new(StatusCode::SERVICE_UNAVAILABLE, "the controller is stopping");
    // Waiting for room is cancel-safe; the send that follows cannot fail
    // or wait, so "queued" and "handed over" are one step.
    let room = api.requests.reserve().await.map_err(|_| stopped())?;
    handed_over.set();
    room.send(Request { change, reply });
    Ok(answer.await.map_err(|_| stopped())??)
}

/// A body that is not JSON of the right shape is the client's syntax error
/// (400); a well-formed body with wrong values is 422.
fn body_problems(e: &BodyError) -> ApiError {
    let status = match e {
        BodyError::Malformed(_) => StatusCode::BAD_REQUEST,
        BodyError::Invalid(_) => StatusCode::UNPROCESSABLE_ENTITY,
    };
    ApiError::problems(status, e.problems())
}

/// The service named `name` in a path: the config file's rules.
fn service_name(path: Result<Path<String>, PathRejection>) -> ApiResult<String> {
    let Path(name) = path?;
    if is_service_name(&name) {
        Ok(name)
    } else {
        // No such service can exist. A long name is not echoed back whole.
        let shown: String = name.chars().take(MAX_NAME_LEN).collect();
        let more = if shown.len() < name.len() { "…" } else { "" };
        Err(ApiError::not_found(format!("no service named {shown:?}{more}")))
    }
}

#[utoipa::path(get, path = "/api/v1/services", tag = "services",
    responses((status = 200, description = "Every service with its backends, live", body = [ServiceView])))]
pub async fn list_services(State(api): State<ApiState>) -> Response {
    // Serialized from the shared view: no copy of every backend per request.
    Json(&stats(&api).services).into_response()
}

#[utoipa::path(post, path = "/api/v1/services", tag = "services",
    request_body(content = RawService, description = "The config file's `[[service]]` keys, in JSON; `backends` may be empty"),
    responses(
        (status = 201, description = "Created and in the kernel maps", body = ServiceView),
        (status = 400, description = "Not JSON, a wrong type or an unknown field", body = ErrorBody),
        (status = 409, description = "The name, VIP:port or a backend is taken", body = ErrorBody),
        (status = 422, description = "A value is wrong; each problem names its field", body = ErrorBody)))]
pub async fn add_service(
    State(api): State<ApiState>,
    Extension(handed_over): Extension<HandedOver>,
    body: Result<Bytes, BytesRejection>,
) -> ApiResult<(StatusCode, Json<ServiceView>)> {
    let service = json::service_from_json(&body?).map_err(|p| body_problems(&p))?;
    let name = service.name.clone();
    let changed = change(&api, &handed_over, Change::AddService(service)).await?;
    Ok((StatusCode::CREATED, Json(find_service(&changed, &name)?)))
}

#[utoipa::path(get, path = "/api/v1/services/{name}", tag = "services",
    params(("name" = String, Path, description = "The service's name")),
    responses((status = 200, body = ServiceView), (status = 404, body = ErrorBody)))]
pub async fn get_service(
    State(api): State<ApiState>,
    name: Result<Path<String>, PathRejection>,
) -> ApiResult<Json<ServiceView>> {
    Ok(Json(find_service(&stats(&api), &service_name(name)?)?))
}

#[utoipa::path(put, path = "/api/v1/services/{name}", tag = "services",
    params(("name" = String, Path, description = "The service's name")),
    request_body(content = RawService, description = "The whole service; its `name` must be the path's"),
    responses(
        (status = 200, description = "Created or replaced, and in the kernel maps", body = ServiceView),
        (status = 400, body = ErrorBody), (status = 409, body = ErrorBody), (status = 422, body = ErrorBody)))]
pub async fn put_service(
    State(api): State<ApiState>,
    Extension(handed_over): Extension<HandedOver>,
    name: Result<Path<String>, PathRejection>,
    body: Result<Bytes, BytesRejection>,
) -> ApiResult<Json<ServiceView>> {
    let name = service_name(name)?;
    let service = json::service_from_json(&body?).map_err(|p| body_problems(&p))?;
    if service.name != name {
        return Err(ApiError::problems(
            StatusCode::UNPROCESSABLE_ENTITY,
            &[Problem {
                key: "name".into(),
                message: format!("{:?} differs from the path's {name:?}", service.name),
            }],
        ));
    }
    let changed = change(&api, &handed_over, Change::PutService(service)).await?;
    Ok(Json(find_service(&changed, &name)?))
}

#[utoipa::path(delete, path = "/api/v1/services/{name}", tag = "services",
    params(("name" = String, Path, description = "The service's name")),
    responses((status = 204, description = "Removed from the kernel maps"), (status = 404, body = ErrorBody)))]
pub async fn delete_service(
    State(api): State<ApiState>,
    Extension(handed_over): Extension<HandedOver>,
    name: Result<Path<String>, PathRejection>,
) -> ApiResult<StatusCode> {
    change(&api, &handed_over, Change::RemoveService(service_name(name)?)).await?;
    Ok(StatusCode::NO_CONTENT)
}

#[utoipa::path(post, path = "/api/v1/services/{name}/backends", tag = "backends",
    params(("name" = String, Path, description = "The service's name")),
    request_body(content = RawBackend, description = "`address` and `port`; `weight` (default 1) and `state` (default active) optional"),
    responses(
        (status = 201, description = "Added and in the kernel maps: the service with its backends", body = ServiceView),
        (status = 400, body = ErrorBody), (status = 404, body = ErrorBody),
        (status = 409, description = "Already a backend of this or another service", body = ErrorBody),
        (status = 422, body = ErrorBody)))]
pub async fn add_backend(
    State(api): State<ApiState>,
    Extension(handed_over): Extension<HandedOver>,
    name: Result<Path<String>, PathRejection>,
    body: Result<Bytes, BytesRejection>,
) -> ApiResult<(StatusCode, Json<ServiceView>)> {
    let service = service_name(name)?;
    let backend = json::backend_from_json(&body?).map_err(|p| body_problems(&p))?;
    let changed =
        change(&api, &handed_over, Change::AddBackend { service: service.clone(), backend })
            .await?;
    Ok((StatusCode::CREATED, Json(find_service(&changed, &service)?)))
}

/// `PATCH` body: what to change on a backend.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct BackendPatch {
    /// 0 to 65535; 0 drains.
    weight: Option<i64>,
    /// `active`, `drain` (no new flows) or `maint` (out at once, probes continue).
    state: Option<String>,
    /// `true`: a sorry server, new flows only while no primary is usable.
    backup: Option<bool>,
    /// At this many connections it takes no new flow (0: no limit).
    max_conns: Option<i64>,
    /// Probe it at this address instead of its own (its service has a check).
    check_address: Option<String>,
    /// Probe it on this port instead of its own (its service has a check).
    check_port: Option<i64>,
}

impl BackendPatch {
    fn validate(self) -> ApiResult<(Option<u32>, Option<AdminState>, BackendEdit)> {
        let mut problems = Vec::new();
        // The backend's own keys, checked as a body of them would be.
        let mut edit = BackendEdit { backup: self.backup, ..BackendEdit::default() };
        if self.max_conns.is_some() || self.check_address.is_some() || self.check_port.is_some() {
            let mut raw = serde_json::json!({"address": "192.0.2.1", "port": 1});
            if let Some(n) = self.max_conns {
                raw["max_conns"] = n.into();
            }
            if let Some(a) = &self.check_address {
                raw["check_address"] = a.clone().into();
            }
            if let Some(p) = self.check_port {
                raw["check_port"] = p.into();
            }
            match json::backend_from_json(raw.to_string().as_bytes()) {
                Ok(b) => {
                    edit.max_conns = self.max_conns.map(|_| b.max_conns);
                    edit.check = b.check;
                }
                Err(e) => problems.extend(e.problems().iter().cloned()),
            }
        }
        let weight = self.weight.and_then(|w| match u32::try_from(w) {
            Ok(w) if w <= MAX_WEIGHT => Some(w),
            _ => {
                problems.push(Problem {
                    key: "weight".into(),
                    message: format!("{w} is out of range (0 to {MAX_WEIGHT})"),
                });
                None
            }
        });
        let state = self.state.and_then(|s| match s.as_str() {
            "active" => Some(AdminState::Active),
            "drain" => Some(AdminState::Drain),
            "maint" => Some(AdminState::Maint),
            other => {
                problems.push(Problem {
                    key: "state".into(),
                    message: format!("{other:?} is not one of active, drain, maint"),
                });
                None
            }
        });
        if problems.is_empty()
            && weight.is_none()
            && state.is_none()
            && edit == BackendEdit::default()
        {
            problems.push(Problem {
                key: "body".into(),
                message: "nothing to change: give \"weight\", \"state\", \"backup\", \"max_conns\", \"check_address\" or \"check_port\"".into(),
            });
        }
        if problems.is_empty() {
            Ok((weight, state, edit))
        } else {
            Err(ApiError::problems(StatusCode::UNPROCESSABLE_ENTITY, &problems))
        }
    }
}

/// The `{name}` and `{backend}` (`address:port`) of a backend's path.
fn backend_path(
    path: Result<Path<(String, String)>, PathRejection>,
) -> ApiResult<(String, std::net::SocketAddr)> {
    let Path((name, backend)) = path?;
    let name = service_name(Ok(Path(name)))?;
    let at = parse_backend_address(&backend).ok_or_else(|| {
        ApiError::problems(
            StatusCode::BAD_REQUEST,
            &[Problem {
                key: "backend".into(),
                message: format!(
                    "{backend:?} is not an address:port (10.77.2.11:80, [fd77:2::11]:80)"
                ),
            }],
        )
    })?;
    Ok((name, at))
}

#[utoipa::path(patch, path = "/api/v1/services/{name}/backends/{backend}", tag = "backends",
    params(("name" = String, Path, description = "The service's name"),
           ("backend" = String, Path, description = "`address:port`, e.g. 10.77.2.11:80")),
    request_body(content = BackendPatch),
    responses(
        (status = 200, description = "Changed and in the kernel maps: the service with its backends", body = ServiceView),
        (status = 400, body = ErrorBody), (status = 404, body = ErrorBody), (status = 422, body = ErrorBody)))]
pub async fn patch_backend(
    State(api): State<ApiState>,
    Extension(handed_over): Extension<HandedOver>,
    path: Result<Path<(String, String)>, PathRejection>,
    body: Result<Bytes, BytesRejection>,
) -> ApiResult<Json<ServiceView>> {
    let (service, backend) = backend_path(path)?;
    let wanted: BackendPatch = json::from_json(&body?).map_err(|p| body_problems(&p))?;
    let (weight, admin_state, edit) = wanted.validate()?;
    let set =
        Change::SetBackend { service: service.clone(), backend, weight, state: admin_state, edit };
    let changed = change(&api, &handed_over, set).await?;
    Ok(Json(find_service(&changed, &service)?))
}

#[utoipa::path(delete, path = "/api/v1/services/{name}/backends/{backend}", tag = "backends",
    params(("name" = String, Path, description = "The service's name"),
           ("backend" = String, Path, description = "`address:port`")),
    responses(
        (status = 200, description = "Removed from the kernel maps: the service with its remaining backends", body = ServiceView),
        (status = 400, body = ErrorBody), (status = 404, body = ErrorBody)))]
pub async fn delete_backend(
    State(api): State<ApiState>,
    Extension(handed_over): Extension<HandedOver>,
    path: Result<Path<(String, String)>, PathRejection>,
) -> ApiResult<Json<ServiceView>> {
    let (service, backend) = backend_path(path)?;
    let changed =
        change(&api, &handed_over, Change::RemoveBackend { service: service.clone(), backend })
            .await?;
    Ok(Json(find_service(&changed, &service)?))
}

#[utoipa::path(get, path = "/api/v1/stats", tag = "stats",
    responses((status = 200, description = "Services, backends, packet outcomes, connection table", body = Stats)))]
pub async fn get_stats(State(api): State<ApiState>) -> Response {
    Json(stats(&api).as_ref()).into_response()
}

/// Most connections one answer lists.
const MAX_CONNS_LIMIT: usize = 100_000;

#[derive(Debug, Deserialize, IntoParams)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
pub struct ConnsQuery {
    /// Only this service's connections.
    service: Option<String>,
    /// At most this many entries (default 1000, at most 100000).
    limit: Option<usize>,
}

#[utoipa::path(get, path = "/api/v1/conns", tag = "stats", params(ConnsQuery),
    responses(
        (status = 200, description = "The connection table, like `ipvsadm -Lnc`", body = ConnsList),
        (status = 400, body = ErrorBody), (status = 404, body = ErrorBody)))]
pub async fn list_conns(
    State(api): State<ApiState>,
    query: Result<Query<ConnsQuery>, QueryRejection>,
) -> ApiResult<Json<ConnsList>> {
    let Query(query) = query?;
    let limit = query.limit.unwrap_or(1000).min(MAX_CONNS_LIMIT);
    let now = stats(&api);
    let only = query.service.as_deref().map(|name| find_service(&now, name)).transpose()?;
    // The view's VIP is the model's address printed: it parses back (a
    // service is of one family: its entries are in its family's table).
    let filter = only.as_ref().and_then(ServiceView::key);
    let (listed, total) = api
        .reconciler
        .connections(limit, filter)
        .await
        .map_err(|e| ApiError::new(StatusCode::INTERNAL_SERVER_ERROR, e.to_string()))?;
    let by_key: std::collections::HashMap<Key, &str> =
        now.services.iter().filter_map(|s| Some((s.key()?, s.name.as_str()))).collect();
    let conns: Vec<ConnView> = listed
        .iter()
        .map(|c| {
            let e = c.entry;
            let protocol = if e.service.proto == lb_common::abi::PROTO_UDP { "udp" } else { "tcp" };
            ConnView {
                protocol: protocol.into(),
                client: e.client.to_string(),
                service: by_key.get(&e.service).map(|s| (*s).to_owned()),
                vip: e.service.socket().to_string(),
                backend: c.backend.map(|b| b.socket().to_string()),
                state: conn_state_name(e.conn.state).into(),
                idle_ms: e.idle.as_millis() as u64,
                expires_in_ms: e.expires_in.as_millis() as u64,
                snat: e.snat.map(|s| s.to_string()),
            }
        })
        .collect();
    Ok(Json(ConnsList { total, truncated: total > conns.len(), conns }))
}

#[utoipa::path(get, path = "/api/v1/node", tag = "node",
    responses((status = 200, description = "Each VIP, whether this node announces it and why not; the drain; the services' fingerprint", body = NodeView)))]
pub async fn get_node(State(api): State<ApiState>) -> Json<NodeView> {
    Json(api.node.view())
}

#[utoipa::path(post, path = "/api/v1/node/drain", tag = "node",
    responses(
        (status = 200, description = "Every VIP withdrawn from the routing table BIRD reads (kept across restarts); traffic that still arrives is forwarded", body = NodeView),
        (status = 409, description = "No [bgp] in the config: nothing is announced", body = ErrorBody)))]
pub async fn drain_node(State(api): State<ApiState>) -> ApiResult<Json<NodeView>> {
    Ok(Json(api.node.drain(true).await?))
}

#[utoipa::path(post, path = "/api/v1/node/undrain", tag = "node",
    responses(
        (status = 200, description = "The VIPs this node can serve announced again", body = NodeView),
        (status = 409, description = "No [bgp] in the config: nothing is announced", body = ErrorBody)))]
pub async fn undrain_node(State(api): State<ApiState>) -> ApiResult<Json<NodeView>> {
    Ok(Json(api.node.drain(false).await?))
}

#[utoipa::path(get, path = "/metrics", tag = "monitoring",
    responses((status = 200, description = "Prometheus/OpenMetrics text format", content_type = "application/openmetrics-text", body = String)))]
pub async fn get_metrics(State(api): State<ApiState>) -> Response {
    match api.renders.metrics.get(stats(&api), metrics::render).await {
        Ok(body) => (
            [(header::CONTENT_TYPE, "application/openmetrics-text; version=1.0.0; charset=utf-8")],
            body,
        )
            .into_response(),
        Err(e) => e.into_response(),
    }
}

#[utoipa::path(get, path = "/healthz", tag = "monitoring",
    responses((status = 200, description = "The controller answers", body = String)))]
pub async fn healthz() -> &'static str {
    "ok\n"
}

#[utoipa::path(get, path = "/readyz", tag = "monitoring",
    responses((status = 200, description = "The data plane is attached on every interface and the controller's loop is live (keepalived's track_script runs `lb-ctl health`, which asks this)", body = String),
              (status = 503, description = "Not ready", body = ErrorBody)))]
pub async fn readyz(State(api): State<ApiState>) -> Response {
    match stats(&api).not_ready() {
        Some(why) => ApiError::new(StatusCode::SERVICE_UNAVAILABLE, why).into_response(),
        None => "ready\n".into_response(),
    }
}

#[utoipa::path(get, path = "/", tag = "monitoring",
    responses((status = 200, description = "The stats page (HTML, refreshes itself every 2 s)", content_type = "text/html", body = String)))]
pub async fn stats_page(State(api): State<ApiState>) -> ApiResult<Html<Bytes>> {
    // The clock the page shows is its view's render time (the view is a
    // second old at most).
    let now = SystemTime::now()
        .duration_since(SystemTime::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64);
    let page = api.renders.page.get(stats(&api), move |view| page::render(view, now)).await?;
    Ok(Html(page))
}
