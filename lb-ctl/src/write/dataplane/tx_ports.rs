//! The redirect targets' devmap, `lb_tx_ports` (slot -> interface): what
//! aya 0.14's `DevMap` does not do for the reconciler, reading the slots
//! that hold an interface (what an adopted data plane redirects to) and
//! emptying a slot (the kernel can: `dev_map_delete_elem`, through `sys`).
use std::collections::BTreeMap;

use aya::maps::{DevMap, MapData, MapError};
use lb_common::abi::MAX_TX_PORTS;

use super::{DataplaneError, sys};

/// The slots that hold an interface, with its ifindex.
pub fn read(tx_ports: &DevMap<MapData>) -> Result<BTreeMap<u32, u32>, DataplaneError> {
    let mut ports = BTreeMap::new();
    for slot in 0..MAX_TX_PORTS {
        match tx_ports.get(slot, 0) {
            Ok(port) => {
                ports.insert(slot, port.if_index);
            }
            Err(MapError::KeyNotFound) => {}
            Err(e) => {
                return Err(DataplaneError::kernel(
                    format!("reading slot {slot} of lb_tx_ports"),
                    e,
                ));
            }
        }
    }
    Ok(ports)
}

/// Empties `slot` (an empty slot stays so).
pub fn delete(tx_ports: &DevMap<MapData>, slot: u32) -> Result<(), DataplaneError> {
    match sys::devmap_delete(tx_ports, slot) {
        // An empty slot is what we want.
        Err(e) if e.raw_os_error() == Some(libc::ENOENT) => Ok(()),
        done => done,
    }
    .map_err(|e| DataplaneError::kernel(format!("clearing slot {slot} of lb_tx_ports"), e))
}
