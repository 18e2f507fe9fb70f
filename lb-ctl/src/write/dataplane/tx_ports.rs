//! The redirect targets' devmap, `lb_tx_ports` (slot -> interface): what
//! aya 0.14's `DevMap` does not do for the reconciler, reading the slots
//! that hold an interface (what an adopted data plane redirects to) and
//! emptying a slot (the kernel can: `dev_map_delete_elem`).
use std::{
    collections::BTreeMap,
    os::fd::{AsFd as _, AsRawFd as _},
};

use aya::maps::{DevMap, IterableMap as _, MapData, MapError};
use lb_common::abi::MAX_TX_PORTS;

use super::DataplaneError;

const BPF_MAP_DELETE_ELEM: libc::c_long = 3;

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
    let fd = tx_ports.map().fd().as_fd().as_raw_fd();
    delete_elem(fd, slot)
        .map_err(|e| DataplaneError::kernel(format!("clearing slot {slot} of lb_tx_ports"), e))
}

/// `union bpf_attr`'s element member, as BPF_MAP_DELETE_ELEM reads it.
#[repr(C)]
struct ElemAttr {
    map_fd: u32,
    _pad: u32,
    key: u64,
    value: u64,
    flags: u64,
}

fn delete_elem(fd: i32, slot: u32) -> std::io::Result<()> {
    let mut attr = ElemAttr {
        map_fd: fd.cast_unsigned(),
        _pad: 0,
        key: (&raw const slot) as u64,
        value: 0,
        flags: 0,
    };
    // SAFETY: bpf(2) with a correctly sized attribute; the key is a u32
    // (the devmap's key size) that outlives the call.
    let rc = unsafe {
        libc::syscall(libc::SYS_bpf, BPF_MAP_DELETE_ELEM, &raw mut attr, size_of::<ElemAttr>())
    };
    if rc == 0 {
        return Ok(());
    }
    let e = std::io::Error::last_os_error();
    // An empty slot is what we want.
    if e.raw_os_error() == Some(libc::ENOENT) { Ok(()) } else { Err(e) }
}
