//! Runtime changes: what the API changes on top of the config file.
//!
//! A change is checked against the running services (`apply`, pure) and
//! then recorded as the last word on its service or backend (`Changes`).
//! The record is kept in a state file, and replayed over the config file's
//! services at every start and every reload (SIGHUP): the file says what
//! the services are, the API's later word on a service or backend wins.
use std::{
    fs,
    net::SocketAddr,
    path::{Path, PathBuf},
};

use lb_common::abi::LC_MAX_BACKENDS;
use serde::{Deserialize, Serialize};

use super::{
    bounds::MAX_SERVICE_BACKENDS,
    json::{backend_from_json, backend_to_json, from_json, service_from_json, service_to_json},
    model::{AdminState, Backend, CheckTarget, Scheduler, Service},
    problem::{Problem, Problems},
    validate::{self, check_services, family_name, refuse_unchecked_target},
};

/// One change asked through the API.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Change {
    /// A new service; its name must be free.
    AddService(Service),
    /// Creates the service or replaces the one of the same name.
    PutService(Service),
    RemoveService(String),
    /// A new backend of `service`.
    AddBackend {
        service: String,
        backend: Backend,
    },
    /// Creates or replaces a backend of `service` (replay of the record).
    PutBackend {
        service: String,
        backend: Backend,
    },
    /// Changes a backend's weight, operator state, role (`backup`),
    /// connection limit and/or where it is probed: what is `Some` (set).
    SetBackend {
        service: String,
        backend: SocketAddr,
        weight: Option<u32>,
        state: Option<AdminState>,
        edit: BackendEdit,
    },
    RemoveBackend {
        service: String,
        backend: SocketAddr,
    },
}

/// What a `SetBackend` changes besides the weight and state: each field
/// that is set.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct BackendEdit {
    pub backup: Option<bool>,
    pub max_conns: Option<u32>,
    /// `check_address` / `check_port`, each over the backend's own if set.
    pub check: CheckTarget,
}

/// Why a change was refused; nothing was changed.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum ChangeError {
    #[error("{0}")]
    NotFound(String),
    #[error("{0}")]
    Conflict(String),
    #[error("{}", .0.iter().map(ToString::to_string).collect::<Vec<_>>().join("; "))]
    Invalid(Vec<Problem>),
}

impl Change {
    /// The service the change is about.
    pub fn service(&self) -> &str {
        match self {
            Self::AddService(s) | Self::PutService(s) => &s.name,
            Self::RemoveService(name) => name,
            Self::AddBackend { service, .. }
            | Self::PutBackend { service, .. }
            | Self::SetBackend { service, .. }
            | Self::RemoveBackend { service, .. } => service,
        }
    }
}

/// `services` after `change`, or why not. Pure: the caller applies the result.
pub fn apply(services: &[Service], change: &Change) -> Result<Vec<Service>, ChangeError> {
    let mut next = services.to_vec();
    let position = |name: &str| next.iter().position(|s| s.name == name);
    let not_found = |name: &str| ChangeError::NotFound(format!("no service named {name:?}"));
    match change {
        Change::AddService(s) => {
            if position(&s.name).is_some() {
                return Err(ChangeError::Conflict(format!(
                    "a service named {:?} already exists",
                    s.name
                )));
            }
            next.push(s.clone());
        }
        Change::PutService(s) => match position(&s.name) {
            Some(i) => next[i] = s.clone(),
            None => next.push(s.clone()),
        },
        Change::RemoveService(name) => {
            let i = position(name).ok_or_else(|| not_found(name))?;
            next.remove(i);
        }
        Change::AddBackend { service, backend } => {
            let i = position(service).ok_or_else(|| not_found(service))?;
            same_family(&next[i], backend)?;
            let at = SocketAddr::new(backend.address, backend.port);
            if find_backend(&next[i], at).is_some() {
                return Err(ChangeError::Conflict(format!(
                    "{at} is already a backend of {service:?}"
                )));
            }
            next[i].backends.push(*backend);
        }
        Change::PutBackend { service, backend } => {
            let i = position(service).ok_or_else(|| not_found(service))?;
            same_family(&next[i], backend)?;
            let at = SocketAddr::new(backend.address, backend.port);
            match find_backend(&next[i], at) {
                Some(j) => next[i].backends[j] = *backend,
                None => next[i].backends.push(*backend),
            }
        }
        Change::SetBackend { service, backend, weight, state, edit } => {
            let i = position(service).ok_or_else(|| not_found(service))?;
            let j =
                find_backend(&next[i], *backend).ok_or_else(|| no_backend(service, *backend))?;
            if edit.check.is_set() && next[i].health.is_none() {
                let key = if edit.check.port.is_some() { "check_port" } else { "check_address" };
                return Err(ChangeError::Invalid(vec![Problem {
                    key: key.into(),
                    message: "no health check to redirect: the service's check is \"none\" or it has no [service.health]".into(),
                }]));
            }
            let b = &mut next[i].backends[j];
            if let Some(w) = weight {
                b.weight = *w;
            }
            if let Some(s) = state {
                b.state = *s;
            }
            if let Some(backup) = edit.backup {
                b.backup = backup;
            }
            if let Some(max_conns) = edit.max_conns {
                b.max_conns = max_conns;
            }
            b.check = edit.check.or(b.check);
        }
        Change::RemoveBackend { service, backend } => {
            let i = position(service).ok_or_else(|| not_found(service))?;
            let j =
                find_backend(&next[i], *backend).ok_or_else(|| no_backend(service, *backend))?;
            next[i].backends.remove(j);
        }
    }
    check(&next, change.service())?;
    Ok(next)
}

/// A backend of another address family than its service's VIP: the data
/// plane rewrites within one family (as `validate` says of a file).
fn same_family(s: &Service, backend: &Backend) -> Result<(), ChangeError> {
    if backend.address.is_ipv4() == s.vip.is_ipv4() {
        return Ok(());
    }
    Err(ChangeError::Invalid(vec![Problem {
        key: "address".into(),
        message: format!(
            "{} is {} and the VIP of {:?} ({}) is not: a service is one address family",
            backend.address,
            family_name(backend.address),
            s.name,
            s.vip
        ),
    }]))
}

fn no_backend(service: &str, at: SocketAddr) -> ChangeError {
    ChangeError::NotFound(format!("{at} is not a backend of {service:?}"))
}

fn find_backend(s: &Service, at: SocketAddr) -> Option<usize> {
    s.backends.iter().position(|b| b.address == at.ip() && b.port == at.port())
}

/// What the config file also refuses, said about the changed service.
fn check(services: &[Service], changed: &str) -> Result<(), ChangeError> {
    let Some(s) = services.iter().find(|s| s.name == changed) else {
        return Ok(());
    };
    if s.backends.len() > MAX_SERVICE_BACKENDS {
        return Err(ChangeError::Invalid(vec![Problem {
            key: "backends".into(),
            message: format!(
                "{} backends; at most {} per service",
                s.backends.len(),
                MAX_SERVICE_BACKENDS
            ),
        }]));
    }
    if s.scheduler == Scheduler::LeastConnections && s.backends.len() > LC_MAX_BACKENDS as usize {
        return Err(ChangeError::Invalid(vec![Problem {
            key: "backends".into(),
            message: format!("lc considers at most {LC_MAX_BACKENDS} backends"),
        }]));
    }
    if s.health.is_none() {
        // A backend added with a `check_*` to a service that checks nothing.
        let mut problems = Problems::default();
        for b in &s.backends {
            refuse_unchecked_target("", b.check, &mut problems);
        }
        if !problems.0.is_empty() {
            return Err(ChangeError::Invalid(
                problems
                    .0
                    .into_iter()
                    .map(|p| Problem { key: p.key.trim_start_matches('.').to_owned(), ..p })
                    .collect(),
            ));
        }
    }
    for other in services.iter().filter(|o| o.name != s.name) {
        if (other.vip, other.port, other.protocol) == (s.vip, s.port, s.protocol) {
            return Err(ChangeError::Conflict(format!(
                "{}:{}/{} is already service {:?}",
                s.vip, s.port, s.protocol, other.name
            )));
        }
        if other.protocol != s.protocol {
            continue;
        }
        if validate::may_share_backends(s, other) {
            continue;
        }
        for b in &s.backends {
            if other.backends.iter().any(|o| (o.address, o.port) == (b.address, b.port)) {
                return Err(ChangeError::Conflict(format!(
                    "{}:{}/{} is already a backend of service {:?}; {}",
                    b.address,
                    b.port,
                    s.protocol,
                    other.name,
                    validate::ONE_SERVICE_PER_BACKEND
                )));
            }
        }
    }
    // Anything else the config file would refuse (a backend at the VIP...).
    let problems = check_services(services);
    if problems.is_empty() { Ok(()) } else { Err(ChangeError::Invalid(problems)) }
}

/// The last word of the API on each service and backend, in the order the
/// words were said. Replaying them in that order over the config file's
/// services gives what the API left, also when a change depended on an
/// earlier one (a backend moved from one service to another, a service
/// removed and its VIP:port given to a new one).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Changes {
    words: Vec<Word>,
}

/// The last word on one service, or on one backend of a service.
#[derive(Clone, Debug, PartialEq, Eq)]
struct Word {
    service: String,
    /// `None`: the word is about the whole service.
    backend: Option<SocketAddr>,
    said: Said,
}

#[derive(Clone, Debug, PartialEq, Eq)]
enum Said {
    // Boxed: a service is ten times a backend's size.
    Service(Box<Service>),
    Backend(Backend),
    Removed,
}

/// What a replay could not apply (the config file changed under it).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Skipped {
    pub what: String,
    pub why: String,
}

impl Changes {
    pub fn is_empty(&self) -> bool {
        self.words.is_empty()
    }

    /// How many services and backends carry a runtime word.
    pub fn len(&self) -> (usize, usize) {
        let services = self.words.iter().filter(|w| w.backend.is_none()).count();
        (services, self.words.len() - services)
    }

    /// Records `change`, which turned services into `after` (from `apply`),
    /// as the last word on what it changed.
    pub fn record(&mut self, change: &Change, after: &[Service]) {
        let service = change.service().to_owned();
        let (backend, said) = match change {
            Change::AddService(s) | Change::PutService(s) => {
                (None, Said::Service(Box::new(s.clone())))
            }
            Change::RemoveService(_) => (None, Said::Removed),
            Change::AddBackend { backend, .. } | Change::PutBackend { backend, .. } => {
                (Some(SocketAddr::new(backend.address, backend.port)), Said::Backend(*backend))
            }
            Change::SetBackend { backend: at, .. } => {
                let now = after
                    .iter()
                    .find(|s| s.name == service)
                    .and_then(|s| find_backend(s, *at).map(|j| s.backends[j]));
                let Some(b) = now else { return };
                (Some(*at), Said::Backend(b))
            }
            Change::RemoveBackend { backend: at, .. } => (Some(*at), Said::Removed),
        };
        // A word on a whole service says what its backends are: older words
        // on them are void.
        self.words.retain(|w| w.service != service || (backend.is_some() && w.backend != backend));
        self.words.push(Word { service, backend, said });
    }

    /// The config file's `base` services with every word applied in order.
    /// A word that no longer fits (its service is gone from the file, or the
    /// file gave its backend to another service) is skipped and reported.
    /// A word on a backend whose service the file no longer checks keeps
    /// its weight and state, and loses its check target (reported too):
    /// dropping a health check must not put a drained backend back.
    pub fn replay(&self, base: &[Service]) -> (Vec<Service>, Vec<Skipped>) {
        let mut services = base.to_vec();
        let mut skipped = Vec::new();
        for word in &self.words {
            let mut change = word.change();
            let untargeted = drop_unchecked_target(&services, &mut change);
            match apply(&services, &change) {
                Ok(next) => {
                    services = next;
                    if untargeted {
                        skipped.push(Skipped {
                            what: format!("{}: its check_address and check_port", word.describe()),
                            why: "the service checks nothing now".into(),
                        });
                    }
                }
                // Removing what the file no longer has is already done.
                Err(ChangeError::NotFound(_)) if word.said == Said::Removed => {}
                Err(e) => skipped.push(Skipped { what: word.describe(), why: e.to_string() }),
            }
        }
        (services, skipped)
    }
}

/// Clears the check target of `change`'s backend when its service in
/// `services` has no health check; whether it did.
fn drop_unchecked_target(services: &[Service], change: &mut Change) -> bool {
    let Change::PutBackend { service, backend } = change else { return false };
    let unchecked = services.iter().any(|s| s.name == *service && s.health.is_none());
    if !unchecked || backend.check == CheckTarget::default() {
        return false;
    }
    backend.check = CheckTarget::default();
    true
}

impl Word {
    /// The change that says this word again.
    fn change(&self) -> Change {
        let service = self.service.clone();
        match (&self.said, self.backend) {
            (Said::Service(s), _) => Change::PutService((**s).clone()),
            (Said::Backend(b), _) => Change::PutBackend { service, backend: *b },
            (Said::Removed, None) => Change::RemoveService(service),
            (Said::Removed, Some(backend)) => Change::RemoveBackend { service, backend },
        }
    }

    fn describe(&self) -> String {
        let what = match self.backend {
            None => format!("service {:?}", self.service),
            Some(at) => format!("backend {at} of {:?}", self.service),
        };
        if self.said == Said::Removed { format!("removal of {what}") } else { what }
    }
}

// ---- The state file ----

/// The state file's layout version: a file of another version is refused.
const STATE_VERSION: u32 = 1;

#[derive(Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct StateFile {
    version: u32,
    /// The words, oldest first.
    changes: Vec<StoredWord>,
}

/// `{"service": "web", "set": {…}}`, `{"service": "web", "backend":
/// "10.77.2.11:80", "set": {…}}`, or either with `"removed": true`.
#[derive(Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct StoredWord {
    service: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    backend: Option<String>,
    /// The service or backend as the API shows it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    set: Option<serde_json::Value>,
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    removed: bool,
}

#[derive(Debug, thiserror::Error)]
pub enum StateError {
    #[error("cannot read the state file {path}: {source}")]
    Read { path: PathBuf, source: std::io::Error },
    #[error(
        "the state file {path} is not usable: {what} (fix or remove it; it holds the changes made through the API)"
    )]
    Invalid { path: PathBuf, what: String },
    #[error("cannot write the state file {path}: {source}")]
    Write { path: PathBuf, source: std::io::Error },
}

/// The default state file: `lb.toml` -> `lb.state.json`, next to it.
pub fn default_state_path(config: &Path) -> PathBuf {
    let stem = config.file_stem().map_or_else(|| "lb".into(), |s| s.to_string_lossy().into_owned());
    config.with_file_name(format!("{stem}.state.json"))
}

impl Changes {
    /// Reads the state file; a missing file means no runtime changes.
    pub fn load(path: &Path) -> Result<Self, StateError> {
        let text = match fs::read(path) {
            Ok(text) => text,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Self::default()),
            Err(source) => return Err(StateError::Read { path: path.to_owned(), source }),
        };
        Self::from_json(&text).map_err(|what| StateError::Invalid { path: path.to_owned(), what })
    }

    fn from_json(text: &[u8]) -> Result<Self, String> {
        let file: StateFile = from_json(text).map_err(|e| e.to_string())?;
        if file.version != STATE_VERSION {
            return Err(format!(
                "version {} (this lb-ctl reads version {STATE_VERSION})",
                file.version
            ));
        }
        let words = file
            .changes
            .into_iter()
            .enumerate()
            .map(|(i, stored)| stored.read().map_err(|e| format!("changes[{i}]: {e}")))
            .collect::<Result<_, _>>()?;
        Ok(Self { words })
    }

    fn to_json(&self) -> StateFile {
        let changes = self
            .words
            .iter()
            .map(|w| StoredWord {
                service: w.service.clone(),
                backend: w.backend.map(|at| at.to_string()),
                set: match &w.said {
                    Said::Service(s) => Some(service_to_json(s)),
                    Said::Backend(b) => Some(backend_to_json(b)),
                    Said::Removed => None,
                },
                removed: w.said == Said::Removed,
            })
            .collect();
        StateFile { version: STATE_VERSION, changes }
    }

    /// Writes the state file atomically: a reader (or a crash) sees the old
    /// file or the new one, never half of one.
    pub fn save(&self, path: &Path) -> Result<(), StateError> {
        let failed = |source| StateError::Write { path: path.to_owned(), source };
        let mut text = serde_json::to_vec_pretty(&self.to_json()).map_err(|e| failed(e.into()))?;
        text.push(b'\n');
        // Private (0600), through a temporary that is never a followed link.
        crate::desired::private_file::write_atomically(path, &text).map_err(failed)
    }
}

impl StoredWord {
    fn read(self) -> Result<Word, String> {
        let backend = self
            .backend
            .as_deref()
            .map(|at| {
                parse_backend_address(at).ok_or(format!("backend {at:?} is not an address:port"))
            })
            .transpose()?;
        let said = match (self.set, self.removed, backend) {
            (None, true, _) => Said::Removed,
            (Some(v), false, None) => Said::Service(Box::new(
                service_from_json(v.to_string().as_bytes()).map_err(|e| e.to_string())?,
            )),
            (Some(v), false, Some(_)) => Said::Backend(
                backend_from_json(v.to_string().as_bytes()).map_err(|e| e.to_string())?,
            ),
            _ => return Err("needs exactly one of \"set\" and \"removed\": true".into()),
        };
        Ok(Word { service: self.service, backend, said })
    }
}

/// `address:port` of a backend, as API paths write it: `10.77.2.11:80`,
/// `[fd77:2::11]:80`.
pub fn parse_backend_address(text: &str) -> Option<SocketAddr> {
    text.parse::<SocketAddr>().ok().filter(|at| at.port() != 0)
}

#[cfg(test)]
mod tests {
    use std::net::Ipv4Addr;

    use super::*;
    use crate::desired::model::testing::service;

    fn at(last: u8) -> SocketAddr {
        SocketAddr::new(Ipv4Addr::new(10, 77, 2, last).into(), 80)
    }

    fn backend(last: u8, weight: u32) -> Backend {
        Backend {
            address: at(last).ip(),
            port: 80,
            weight,
            state: AdminState::Active,
            check: CheckTarget::default(),
            backup: false,
            slow_start: None,
            max_conns: 0,
        }
    }

    #[test]
    fn each_change_names_what_is_missing_or_taken() {
        let mut api = service("api", 81, &[(21, 1)]);
        api.backends[0].port = 80;
        let base = vec![service("web", 80, &[(11, 1)]), api];
        let add =
            |s: &str, last| Change::AddBackend { service: s.into(), backend: backend(last, 1) };
        assert!(matches!(apply(&base, &add("nope", 12)), Err(ChangeError::NotFound(_))));
        assert!(matches!(apply(&base, &add("web", 11)), Err(ChangeError::Conflict(_))));
        let e = apply(&base, &add("web", 21)).unwrap_err();
        assert!(e.to_string().contains("already a backend of service \"api\""), "{e}");
        assert!(matches!(
            apply(&base, &Change::AddService(service("web", 90, &[]))),
            Err(ChangeError::Conflict(_))
        ));
        let e = apply(&base, &Change::AddService(service("other", 80, &[]))).unwrap_err();
        assert!(e.to_string().contains("is already service \"web\""), "{e}");
        let set = Change::SetBackend {
            service: "web".into(),
            backend: at(99),
            weight: Some(2),
            state: None,
            edit: BackendEdit::default(),
        };
        assert!(matches!(apply(&base, &set), Err(ChangeError::NotFound(_))));
        let next = apply(&base, &add("web", 12)).unwrap();
        assert_eq!(next[0].backends.len(), 2);
        assert_eq!(base[0].backends.len(), 1, "apply is pure");
    }

    /// A backend added with a `check_*` to a service that checks nothing
    /// is refused, naming the field.
    #[test]
    fn a_check_target_needs_a_checked_service() {
        let web = service("web", 80, &[(11, 1)]);
        let mut redirected = backend(12, 1);
        redirected.check.port = Some(8081);
        let add = Change::AddBackend { service: "web".into(), backend: redirected };
        let Err(ChangeError::Invalid(problems)) = apply(std::slice::from_ref(&web), &add) else {
            panic!("a check_port on an unchecked service was taken");
        };
        assert_eq!(problems.len(), 1, "{problems:?}");
        assert_eq!(problems[0].key, "check_port");
        assert!(problems[0].message.starts_with("no health check to redirect"), "{problems:?}");
        let mut checked = web;
        checked.health = Some(crate::desired::model::HealthCheck {
            probe: crate::desired::model::Probe::Tcp,
            interval: std::time::Duration::from_secs(2),
            timeout: std::time::Duration::from_secs(1),
            rise: 2,
            fall: 3,
            target: CheckTarget::default(),
        });
        let next = apply(&[checked], &add).expect("taken by a checked service");
        assert_eq!(next[0].backends[1].check.port, Some(8081));
    }

    /// A backend drained through the API, whose check went to another port,
    /// stays drained when the file stops checking its service; only its
    /// check target goes, and the replay says so.
    #[test]
    fn a_file_that_stops_checking_keeps_a_drained_backend_drained() {
        let mut checked = service("web", 80, &[(11, 1)]);
        checked.health = Some(crate::desired::model::HealthCheck {
            probe: crate::desired::model::Probe::Tcp,
            interval: std::time::Duration::from_secs(2),
            timeout: std::time::Duration::from_secs(1),
            rise: 2,
            fall: 3,
            target: CheckTarget::default(),
        });
        checked.backends[0].check.port = Some(8081);
        let drain = Change::SetBackend {
            service: "web".into(),
            backend: at(11),
            weight: None,
            state: Some(AdminState::Drain),
            edit: BackendEdit::default(),
        };
        let mut changes = Changes::default();
        changes.record(&drain, &apply(std::slice::from_ref(&checked), &drain).unwrap());
        let unchecked = service("web", 80, &[(11, 1)]);
        let (services, skipped) = changes.replay(std::slice::from_ref(&unchecked));
        assert_eq!(services[0].backends[0].state, AdminState::Drain);
        assert_eq!(services[0].backends[0].check, CheckTarget::default());
        assert_eq!(skipped.len(), 1, "{skipped:?}");
        assert!(skipped[0].why.contains("checks nothing"), "{skipped:?}");
        // Still checked: the word replays whole, target included.
        let (services, skipped) = changes.replay(std::slice::from_ref(&checked));
        assert_eq!(services[0].backends[0].check.port, Some(8081));
        assert!(skipped.is_empty(), "{skipped:?}");
    }

    #[test]
    fn replay_gives_the_same_services_as_the_changes_did() {
        let base = vec![service("web", 80, &[(11, 1), (12, 1)]), service("api", 81, &[(21, 1)])];
        let changes_in_order = [
            Change::AddBackend { service: "web".into(), backend: backend(13, 5) },
            Change::SetBackend {
                service: "web".into(),
                backend: at(11),
                weight: None,
                state: Some(AdminState::Drain),
                edit: BackendEdit::default(),
            },
            Change::RemoveBackend { service: "web".into(), backend: at(12) },
            Change::RemoveService("api".into()),
            Change::AddService(service("dns", 53, &[(31, 1)])),
            Change::SetBackend {
                service: "dns".into(),
                backend: SocketAddr::new(Ipv4Addr::new(10, 77, 2, 31).into(), 53),
                weight: Some(7),
                state: None,
                edit: BackendEdit::default(),
            },
        ];
        let mut services = base.clone();
        let mut changes = Changes::default();
        for c in &changes_in_order {
            services = apply(&services, c).unwrap();
            changes.record(c, &services);
        }
        let (replayed, skipped) = changes.replay(&base);
        assert!(skipped.is_empty(), "{skipped:?}");
        let sorted = |mut v: Vec<Service>| {
            v.sort_by(|a, b| a.name.cmp(&b.name));
            for s in &mut v {
                s.backends.sort_by_key(|b| (b.address, b.port));
            }
            v
        };
        assert_eq!(sorted(replayed), sorted(services.clone()));
        // Through the state file and back.
        let again = Changes::from_json(&serde_json::to_vec(&changes.to_json()).unwrap()).unwrap();
        assert_eq!(again, changes);
    }

    #[test]
    fn moves_between_services_replay_in_the_order_they_were_made() {
        let base = vec![service("web", 80, &[(11, 1)]), service("dns", 53, &[])];
        let mut moved = backend(11, 1);
        moved.port = 80;
        let mut services = base.clone();
        let mut changes = Changes::default();
        let mut a_dns = service("a-dns", 53, &[]);
        a_dns.protocol = crate::desired::model::Protocol::Tcp;
        for c in [
            // 10.77.2.11:80 moves from web to a new service on another port...
            Change::RemoveBackend { service: "web".into(), backend: at(11) },
            Change::AddService(service("api", 81, &[])),
            Change::AddBackend { service: "api".into(), backend: moved },
            // ...and dns's VIP:port goes to a new service that sorts before it.
            Change::RemoveService("dns".into()),
            Change::AddService(a_dns),
        ] {
            services = apply(&services, &c).unwrap();
            changes.record(&c, &services);
        }
        let (replayed, skipped) = changes.replay(&base);
        assert!(skipped.is_empty(), "{skipped:?}");
        assert_eq!(replayed, services);
    }

    #[test]
    fn replay_skips_what_the_file_no_longer_allows_and_says_so() {
        let mut changes = Changes::default();
        let add = Change::AddBackend { service: "web".into(), backend: backend(13, 1) };
        let base = vec![service("web", 80, &[(11, 1)])];
        changes.record(&add, &apply(&base, &add).unwrap());
        // The file now gives 10.77.2.13:80 to another service, and drops "web".
        let edited = vec![service("api", 81, &[(13, 1)])];
        let (services, skipped) = changes.replay(&edited);
        assert_eq!(services, edited);
        assert_eq!(skipped.len(), 1);
        assert!(skipped[0].why.contains("no service named \"web\""), "{skipped:?}");
    }

    #[test]
    fn state_file_is_written_atomically_and_read_back() {
        let dir = std::env::temp_dir().join(format!("lb-changes-{}", std::process::id()));
        fs::create_dir_all(&dir).unwrap();
        let path = dir.join("lb.state.json");
        assert_eq!(Changes::load(&path).unwrap(), Changes::default(), "no file: no changes");
        let mut changes = Changes::default();
        let c = Change::AddService(service("web", 80, &[(11, 3)]));
        changes.record(&c, &apply(&[], &c).unwrap());
        changes.save(&path).unwrap();
        assert_eq!(Changes::load(&path).unwrap(), changes);
        assert!(!path.with_extension("json.tmp").exists());
        fs::write(&path, b"{\"version\": 9, \"changes\": []}").unwrap();
        let e = Changes::load(&path).unwrap_err().to_string();
        assert!(e.contains("version 9"), "{e}");
        fs::write(
            &path,
            b"{\"version\": 1, \"changes\": [{\"service\": \"x\", \"set\": {\"port\": 1}}]}",
        )
        .unwrap();
        let e = Changes::load(&path).unwrap_err().to_string();
        assert!(e.contains("changes[0]"), "{e}");
        fs::write(&path, b"{\"version\": 1, \"changes\": [{\"service\": \"x\"}]}").unwrap();
        let e = Changes::load(&path).unwrap_err().to_string();
        assert!(e.contains("exactly one of"), "{e}");
        fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn backend_addresses_in_paths() {
        assert_eq!(parse_backend_address("10.77.2.11:80"), Some(at(11)));
        for bad in ["10.77.2.11", "10.77.2.11:0", "10.77.2.300:80", "::1:80", "a:b", ""] {
            assert_eq!(parse_backend_address(bad), None, "{bad}");
        }
    }
}
