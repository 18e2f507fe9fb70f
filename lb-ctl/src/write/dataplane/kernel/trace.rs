//! The packet trace's kernel handle (`TraceTap`): `lb_trace_conf` written,
//! the `lb_trace` ring buffer drained every `timeout` (the data plane sends
//! without waking its reader),
//! `lb_trace_cpu`'s losses summed, and the backends the events name read
//! from the backend tables, each on descriptors of its own.
use std::{os::fd::AsFd as _, time::Duration};

use aya::{
    Pod,
    maps::{Array, IterableMap as _, Map, MapData, PerCpuArray, RingBuf},
};
use lb_common::{
    abi::Backend,
    trace::{TraceConf, TraceCpu, TraceEvent},
};

use super::{KernelMaps, err, handles::reopen};
use crate::{
    plan::ids::{BackendKey, held_backend_key},
    write::dataplane::{DataplaneError, TraceTap},
};

pub(super) struct KernelTrace {
    conf: Array<MapData, TraceConf>,
    ring: RingBuf<MapData>,
    cpus: PerCpuArray<MapData, TraceCpu>,
    backends: Array<MapData, Backend>,
    backends6: Array<MapData, Backend<[u8; 16]>>,
}

impl KernelTrace {
    pub(super) fn of(maps: &KernelMaps) -> Result<Self, DataplaneError> {
        // The three maps stay in the object (nothing else takes them).
        let data = |name: &str| match maps.ebpf.map(name) {
            Some(Map::Array(m) | Map::PerCpuArray(m) | Map::RingBuf(m)) => Ok(m),
            Some(_) => Err(DataplaneError::kernel(name, "not the map type this build expects")),
            None => Err(DataplaneError::kernel(name, "missing from the object")),
        };
        Ok(Self {
            conf: reopen("lb_trace_conf", data("lb_trace_conf")?.fd().as_fd())?,
            ring: reopen("lb_trace", data("lb_trace")?.fd().as_fd())?,
            cpus: reopen("lb_trace_cpu", data("lb_trace_cpu")?.fd().as_fd())?,
            backends: reopen(maps.v4.names().backends, maps.v4.backends.map().fd().as_fd())?,
            backends6: reopen(maps.v6.names().backends, maps.v6.backends.map().fd().as_fd())?,
        })
    }
}

/// Reads one event out of a ring buffer record (the kernel sends whole
/// events; anything shorter is skipped).
fn event_of(bytes: &[u8]) -> Option<TraceEvent> {
    if bytes.len() < size_of::<TraceEvent>() {
        return None;
    }
    // SAFETY: `TraceEvent` is plain old data (repr(C), integers only) and
    // the record holds at least its size; read unaligned.
    Some(unsafe { bytes.as_ptr().cast::<TraceEvent>().read_unaligned() })
}

fn backend_of<A: crate::plan::ids::MapAddr + Pod>(
    array: &Array<MapData, Backend<A>>,
    id: u32,
) -> Option<BackendKey> {
    array
        .get(&id, 0)
        .ok()
        .filter(|b| b.flags & lb_common::abi::BACKEND_IN_USE != 0)
        .map(|b| held_backend_key(&b))
}

impl TraceTap for KernelTrace {
    fn set(&mut self, conf: &TraceConf) -> Result<(), DataplaneError> {
        self.conf.set(0, *conf, 0).map_err(err("writing lb_trace_conf"))
    }

    fn read(
        &mut self,
        timeout: Duration,
        into: &mut Vec<TraceEvent>,
    ) -> Result<(), DataplaneError> {
        let before = into.len();
        while let Some(item) = self.ring.next() {
            into.extend(event_of(&item));
        }
        if into.len() > before {
            return Ok(());
        }
        // The data plane sends without waking the reader (a wakeup per
        // event cost microseconds): the ring is drained on this clock.
        std::thread::sleep(timeout);
        while let Some(item) = self.ring.next() {
            into.extend(event_of(&item));
        }
        Ok(())
    }

    fn lost(&self) -> Result<(u64, u64), DataplaneError> {
        let values = self.cpus.get(&0, 0).map_err(err("reading lb_trace_cpu"))?;
        Ok(values.iter().fold((0, 0), |(r, f), cpu| (r + cpu.rate_limited, f + cpu.ring_full)))
    }

    fn backend(&self, family: u8, id: u32) -> Option<BackendKey> {
        match family {
            4 => backend_of(&self.backends, id),
            6 => backend_of(&self.backends6, id),
            _ => None,
        }
    }
}
