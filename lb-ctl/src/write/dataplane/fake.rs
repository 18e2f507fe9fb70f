//! In-memory maps: what the kernel would hold, for tests of the reconciler.
use std::sync::{Arc, Mutex};

use std::{collections::VecDeque, time::Duration};

use lb_common::trace::{TraceConf, TraceEvent};

use super::{ConnEntry, Counts, DataplaneError, FlowWriter, MapReader, Maps, TraceTap};
use crate::plan::{
    diff::Op,
    ids::{BackendKey, held_backend_key},
    image::Image,
    settings::Settings,
};

/// Applies ops to an `Image`; `fail_after` makes the n-th op fail, to test
/// that a failed apply is retried correctly. `writes` records every op that
/// went through, in order, so that tests can replay what a reader would
/// have seen between two writes.
#[derive(Clone, Default)]
pub struct FakeMaps {
    pub state: Arc<Mutex<Image>>,
    pub writes: Arc<Mutex<Vec<Op>>>,
    pub fail_after: Arc<Mutex<Option<usize>>>,
    /// Like `fail_after`, but only that one write fails (a transient error).
    pub fail_once_after: Arc<Mutex<Option<usize>>>,
    /// Ticks moved on by hand (`Maps::advance_clock`).
    pub ticks: Arc<Mutex<u64>>,
    /// What the maps' settings should be (`Maps::settings`): none by default.
    pub settings: Settings,
    /// The packet trace's kernel side (`FakeTrace`).
    pub trace: Arc<Mutex<FakeTrace>>,
}

/// What a test sees of the trace and feeds it: the configuration the
/// controller wrote last, every one it wrote, and the events the "data
/// plane" sends once the trace is on (as the kernel would, it sends none
/// while it is off).
#[derive(Debug, Default)]
pub struct FakeTrace {
    pub conf: TraceConf,
    pub confs: Vec<TraceConf>,
    pub pending: VecDeque<TraceEvent>,
    /// Reported by `lost`.
    pub lost: (u64, u64),
}

struct FakeTap {
    trace: Arc<Mutex<FakeTrace>>,
    image: Arc<Mutex<Image>>,
}

impl TraceTap for FakeTap {
    fn set(&mut self, conf: &TraceConf) -> Result<(), DataplaneError> {
        let mut trace = self.trace.lock().unwrap();
        trace.conf = *conf;
        trace.confs.push(*conf);
        Ok(())
    }

    fn read(
        &mut self,
        timeout: Duration,
        into: &mut Vec<TraceEvent>,
    ) -> Result<(), DataplaneError> {
        {
            let mut trace = self.trace.lock().unwrap();
            if trace.conf.on != 0 && !trace.pending.is_empty() {
                into.extend(trace.pending.drain(..));
                return Ok(());
            }
        }
        std::thread::sleep(timeout.min(Duration::from_millis(5)));
        Ok(())
    }

    fn lost(&self) -> Result<(u64, u64), DataplaneError> {
        Ok(self.trace.lock().unwrap().lost)
    }

    fn backend(&self, family: u8, id: u32) -> Option<BackendKey> {
        let image = self.image.lock().unwrap();
        match family {
            4 => image.v4.backends.get(&id).map(held_backend_key),
            6 => image.v6.backends.get(&id).map(held_backend_key),
            _ => None,
        }
    }
}

impl Maps for FakeMaps {
    fn settings(&self) -> &Settings {
        &self.settings
    }

    fn recount_connections(
        &mut self,
        _backends: &std::collections::BTreeMap<u32, u32>,
        _moved_by_kernel: &std::collections::BTreeSet<u32>,
    ) -> Result<std::collections::BTreeMap<u32, lb_common::abi::BackendConns>, DataplaneError> {
        Ok(std::collections::BTreeMap::new())
    }

    /// Like pinned maps: what a previous reconciler left, if anything.
    fn read_image(&mut self) -> Result<Option<Image>, DataplaneError> {
        let image = self.state.lock().unwrap();
        Ok((*image != Image::default()).then(|| image.clone()))
    }

    fn reader(&self) -> Result<Arc<dyn MapReader>, DataplaneError> {
        Ok(Arc::new(FakeHandles))
    }

    fn trace_tap(&self) -> Result<Box<dyn TraceTap>, DataplaneError> {
        Ok(Box::new(FakeTap { trace: Arc::clone(&self.trace), image: Arc::clone(&self.state) }))
    }

    fn flow_writer(&self) -> Result<Arc<dyn FlowWriter>, DataplaneError> {
        Ok(Arc::new(FakeHandles))
    }

    fn advance_clock(&mut self) -> Result<(), DataplaneError> {
        *self.ticks.lock().unwrap() += 1;
        Ok(())
    }

    fn apply(&mut self, op: &Op) -> Result<(), DataplaneError> {
        if let Some(n) = self.fail_after.lock().unwrap().as_mut() {
            if *n == 0 {
                return Err(DataplaneError::kernel("fake map write", "injected failure"));
            }
            *n -= 1;
        }
        {
            let mut once = self.fail_once_after.lock().unwrap();
            match once.as_mut() {
                Some(0) => {
                    *once = None;
                    return Err(DataplaneError::kernel("fake map write", "injected failure"));
                }
                Some(n) => *n -= 1,
                None => {}
            }
        }
        self.state.lock().unwrap().apply(op);
        self.writes.lock().unwrap().push(op.clone());
        Ok(())
    }
}

/// The in-memory maps count nothing, hold no connections (placing one
/// keeps nothing) and are attached nowhere.
struct FakeHandles;

impl MapReader for FakeHandles {
    fn counts(&self, services: &[u32], backends: &[u32]) -> Result<Counts, DataplaneError> {
        Ok(Counts {
            outcomes: vec![0; lb_common::counter::Counter::ALL.len()],
            services: services.iter().map(|id| (*id, lb_common::abi::Traffic::default())).collect(),
            backends: backends.iter().map(|id| (*id, lb_common::abi::Traffic::default())).collect(),
        })
    }

    fn connections(
        &self,
        _limit: usize,
        _to: Option<crate::plan::ids::Key>,
    ) -> Result<(Vec<ConnEntry>, usize), DataplaneError> {
        Ok((Vec::new(), 0))
    }

    fn attachment_problems(&self) -> Vec<String> {
        Vec::new()
    }

    fn flow_entry(
        &self,
        _flow: &super::AnyFlow,
    ) -> Result<(Option<lb_common::abi::Conn>, u32), DataplaneError> {
        Ok((None, 0))
    }

    fn handshake_record(
        &self,
        _flow: &super::AnyFlow,
        _now: u32,
    ) -> Result<Option<(u32, u32)>, DataplaneError> {
        Ok(None)
    }

    fn persisted(
        &self,
        _key: &super::AnyPersistKey,
    ) -> Result<Option<lb_common::abi::Persist>, DataplaneError> {
        Ok(None)
    }

    fn backend_conns(&self, _id: u32) -> Result<lb_common::abi::BackendConns, DataplaneError> {
        Ok(lb_common::abi::BackendConns::default())
    }
}

impl FlowWriter for FakeHandles {
    fn place_handshake(
        &self,
        _flow: &super::AnyFlow,
        _backend_id: u32,
        _now: u32,
        _flags: u32,
    ) -> Result<(), DataplaneError> {
        Ok(())
    }

    fn place_flow(
        &self,
        _flow: &super::AnyFlow,
        _conn: &lb_common::abi::Conn,
    ) -> Result<(), DataplaneError> {
        Ok(())
    }

    fn remember(
        &self,
        _key: &super::AnyPersistKey,
        _value: lb_common::abi::Persist,
    ) -> Result<(), DataplaneError> {
        Ok(())
    }

    fn count_conn(&self, _id: u32) -> Result<(), DataplaneError> {
        Ok(())
    }
}
