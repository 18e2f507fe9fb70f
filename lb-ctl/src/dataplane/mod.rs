//! The kernel maps behind a trait, so the reconciler can be tested against an
//! in-memory copy (`fake`) and run against the real thing (`kernel`).
pub mod fake;
pub mod kernel;

use std::collections::BTreeMap;

use lb_common::abi::{Backend, BackendConns};

use crate::plan::Op;

#[derive(Debug, thiserror::Error)]
pub enum DataplaneError {
    #[error("{what}: {source}")]
    Kernel {
        what: String,
        #[source]
        source: Box<dyn std::error::Error + Send + Sync>,
    },
}

impl DataplaneError {
    pub fn kernel(
        what: impl Into<String>,
        source: impl Into<Box<dyn std::error::Error + Send + Sync>>,
    ) -> Self {
        Self::Kernel { what: what.into(), source: source.into() }
    }
}

/// Writes to the data plane's maps. Every write is idempotent (a put of what
/// is there, a delete of what is gone, succeed), so a failed apply can be
/// retried from the last image known to be in place.
pub trait Maps: Send {
    fn apply(&mut self, op: &Op) -> Result<(), DataplaneError>;

    /// Advances the next-hop epoch: every cached FIB answer becomes stale
    /// and is looked up again by the next packet that needs it.
    fn advance_nexthop_epoch(&mut self) -> Result<(), DataplaneError>;

    /// Counts each backend's active (established) and inactive connections
    /// in the connection table, removes expired entries, and publishes the
    /// counts to the data plane (`lc`) and the caller.
    /// `backends`: the backends in use (the applied image's).
    fn recount_connections(
        &mut self,
        backends: &BTreeMap<u32, Backend>,
    ) -> Result<BTreeMap<u32, BackendConns>, DataplaneError>;
}
