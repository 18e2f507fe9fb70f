//! Services and backends in JSON: the admin API's bodies and the state
//! file's records. In, they have the config file's keys (the same written
//! shapes, the same checks); out, they read back in unchanged.
use std::fmt;

use super::{
    checks::to_hex,
    model::{Backend, CheckTarget, Forwarding, Probe, Service, Tls},
    names::{Check, Named as _, OnNoBackend},
    problem::{Problem, Problems},
    validate::{check_service_set, validate_backend, validate_service},
    written::{RawBackend, RawService},
};

/// Why a JSON body was refused.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum BodyError {
    /// Not JSON, or not of the expected shape (a wrong type, an unknown or
    /// missing field): the one problem the parser stopped at.
    Malformed(Problem),
    /// Well-formed, with wrong values: every problem found.
    Invalid(Vec<Problem>),
}

impl BodyError {
    pub fn problems(&self) -> &[Problem] {
        match self {
            Self::Malformed(p) => std::slice::from_ref(p),
            Self::Invalid(problems) => problems,
        }
    }
}

impl fmt::Display for BodyError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let problems: Vec<String> = self.problems().iter().map(ToString::to_string).collect();
        f.write_str(&problems.join("; "))
    }
}

/// A service from an API body (the config file's keys, in JSON).
pub fn service_from_json(body: &[u8]) -> Result<Service, BodyError> {
    let raw: RawService = from_json(body)?;
    let mut problems = Problems::default();
    let service = validate_service("", raw, &mut problems);
    check_service_set(std::slice::from_ref(&service), &mut problems);
    finish_json(service, problems)
}

/// A backend from an API body (`{"address", "port", "weight", "state"}`).
pub fn backend_from_json(body: &[u8]) -> Result<Backend, BodyError> {
    let raw: RawBackend = from_json(body)?;
    let mut problems = Problems::default();
    let backend = validate_backend("", &raw, &mut problems);
    finish_json(backend, problems)
}

/// A service as the API shows it and the state file keeps it: the config
/// file's keys, so that `service_from_json` reads it back unchanged.
pub fn service_to_json(s: &Service) -> serde_json::Value {
    use serde_json::json;
    let health = s.health.as_ref().map(|h| {
        let mut v = json!({
            "interval_ms": h.interval.as_millis() as u64,
            "timeout_ms": h.timeout.as_millis() as u64,
            "rise": h.rise,
            "fall": h.fall,
        });
        v["check"] = json!(Check::of(&h.probe).name());
        add_probe(&mut v, &h.probe);
        add_check_target(&mut v, h.target);
        v
    });
    let mut v = json!({
        "name": s.name,
        "vip": s.vip.to_string(),
        "port": s.port,
        "protocol": s.protocol.to_string(),
        "scheduler": s.scheduler.name(),
        "forwarding": s.forwarding.name(),
        "on_no_backend": OnNoBackend::of(s.reject).name(),
        "backends": s.backends.iter().map(backend_to_json).collect::<Vec<_>>(),
    });
    if let Some(h) = health {
        v["health"] = h;
    }
    if !s.slow_start.is_zero() {
        v["slow_start_s"] = json!(s.slow_start.as_secs());
    }
    if let Some(p) = s.persistence {
        v["persistence_s"] = json!(p.timeout.as_secs());
        v["persistence_netmask"] = json!(p.netmask);
    }
    if !s.allowed_sources.is_empty() {
        v["allowed_sources"] =
            json!(s.allowed_sources.iter().map(ToString::to_string).collect::<Vec<_>>());
    }
    if s.forwarding == Forwarding::FullNat {
        if !s.snat.addresses.is_empty() {
            v["snat_addresses"] =
                json!(s.snat.addresses.iter().map(ToString::to_string).collect::<Vec<_>>());
        }
        v["snat_ports"] = json!(s.snat.ports.to_string());
    }
    v
}

/// Each check type's own keys, as `checks` reads them.
fn add_probe(v: &mut serde_json::Value, probe: &Probe) {
    use serde_json::json;
    match probe {
        Probe::Tcp => {}
        Probe::Http { path, expect_status, expect_body, tls } => {
            v["path"] = json!(path);
            v["expect_status"] = json!(expect_status);
            if let Some(body) = expect_body {
                v["expect_body"] = json!(body);
            }
            if let Some(Tls { sni, ca_file, verify }) = tls {
                if let Some(sni) = sni {
                    v["sni"] = json!(sni);
                }
                if let Some(ca_file) = ca_file {
                    v["ca_file"] = json!(ca_file.display().to_string());
                }
                v["verify"] = json!(verify);
            }
        }
        Probe::Udp { send, expect } => {
            // Text where it is text, so that it reads as it was written.
            match std::str::from_utf8(send) {
                Ok(text) if !text.contains(|c: char| c.is_control()) => v["send"] = json!(text),
                _ => v["send_hex"] = json!(to_hex(send)),
            }
            if let Some(expect) = expect {
                v["expect"] = json!(expect);
            }
        }
        Probe::Script { command, dynamic_weight } => {
            v["command"] = json!(command);
            v["dynamic_weight"] = json!(dynamic_weight);
        }
    }
}

/// A backend as the API shows it; `backend_from_json` reads it back.
pub fn backend_to_json(b: &Backend) -> serde_json::Value {
    let mut v = serde_json::json!({
        "address": b.address.to_string(),
        "port": b.port,
        "weight": b.weight,
        "state": b.state.name(),
    });
    if b.backup {
        v["backup"] = serde_json::json!(true);
    }
    if let Some(slow_start) = b.slow_start {
        v["slow_start_s"] = serde_json::json!(slow_start.as_secs());
    }
    if b.max_conns != 0 {
        v["max_conns"] = serde_json::json!(b.max_conns);
    }
    add_check_target(&mut v, b.check);
    v
}

/// `check_address` and `check_port`, where set (absent: not overridden).
fn add_check_target(v: &mut serde_json::Value, target: CheckTarget) {
    if let Some(address) = target.address {
        v["check_address"] = serde_json::json!(address.to_string());
    }
    if let Some(port) = target.port {
        v["check_port"] = serde_json::json!(port);
    }
}

/// Deserializes one JSON value (nothing may follow it), naming the field a
/// type error is about.
pub fn from_json<T: serde::de::DeserializeOwned>(body: &[u8]) -> Result<T, BodyError> {
    let mut de = serde_json::Deserializer::from_slice(body);
    let malformed = |path: String, message: String| {
        // serde_path_to_error says "." for the top and "?" where it lost track.
        let key = if path == "." || path.contains('?') { "body".to_owned() } else { path };
        BodyError::Malformed(Problem { key, message })
    };
    let value = serde_path_to_error::deserialize(&mut de)
        .map_err(|e| malformed(e.path().to_string(), e.into_inner().to_string()))?;
    de.end().map_err(|e| malformed(".".into(), e.to_string()))?;
    Ok(value)
}

/// Keys of JSON problems name fields from the body's top (`port`, not `.port`).
fn finish_json<T>(value: T, problems: Problems) -> Result<T, BodyError> {
    if problems.0.is_empty() {
        return Ok(value);
    }
    Err(BodyError::Invalid(
        problems
            .0
            .into_iter()
            .map(|p| Problem { key: p.key.trim_start_matches('.').to_owned(), ..p })
            .collect(),
    ))
}
