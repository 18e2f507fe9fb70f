//! In-memory maps: what the kernel would hold, for tests of the reconciler.
use std::sync::{Arc, Mutex};

use super::{ConnEntry, Counts, DataplaneError, FlowWriter, MapReader, Maps};
use crate::plan::{diff::Op, image::Image, settings::Settings};

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
}

impl Maps for FakeMaps {
    fn settings(&self) -> &Settings {
        &self.settings
    }

    fn recount_connections(
        &mut self,
        _backends: &std::collections::BTreeMap<u32, u32>,
        _lc_services: &std::collections::BTreeSet<u32>,
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

    fn handshake_backend(
        &self,
        _flow: &super::AnyFlow,
        _now: u32,
    ) -> Result<Option<u32>, DataplaneError> {
        Ok(None)
    }
}

impl FlowWriter for FakeHandles {
    fn place_handshake(
        &self,
        _flow: &super::AnyFlow,
        _backend_id: u32,
        _now: u32,
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
}
