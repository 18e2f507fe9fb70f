//! The redirect targets, `lb_tx_ports` (slot -> interface) and
//! `lb_tx_slots` (ifindex -> slot): slots follow the configured order, so
//! after a restart with fewer or other interfaces an adopted data plane's
//! entries of the interfaces that went must go too.
use std::os::fd::{AsFd as _, AsRawFd as _};

use aya::maps::{DevMap, HashMap, IterableMap as _, MapData};
use lb_common::abi::MAX_TX_PORTS;

use super::DataplaneError;

const BPF_MAP_DELETE_ELEM: libc::c_long = 3;

/// Removes from `lb_tx_slots` every interface not in `configured`
/// (ifindexes): the data plane then hands its packets to tc (`NO_TX_SLOT`)
/// instead of redirecting them by a slot that is now another interface's.
pub fn forget_unconfigured(
    tx_slots: &mut HashMap<MapData, u32, u32>,
    configured: &[u32],
) -> Result<(), DataplaneError> {
    let held: Vec<u32> = tx_slots
        .keys()
        .collect::<Result<_, _>>()
        .map_err(|e| DataplaneError::kernel("reading lb_tx_slots", e))?;
    for index in held.iter().filter(|i| !configured.contains(i)) {
        match tx_slots.remove(index) {
            Ok(()) | Err(aya::maps::MapError::KeyNotFound) => {}
            Err(e) => {
                return Err(DataplaneError::kernel(
                    format!("removing ifindex {index} from lb_tx_slots"),
                    e,
                ));
            }
        }
    }
    Ok(())
}

/// Empties the slots of `lb_tx_ports` from `first` on (aya 0.14's `DevMap`
/// cannot delete, the kernel can: `dev_map_delete_elem`).
pub fn clear_slots_from(tx_ports: &DevMap<MapData>, first: u32) -> Result<(), DataplaneError> {
    let fd = tx_ports.map().fd().as_fd().as_raw_fd();
    for slot in first..MAX_TX_PORTS {
        delete(fd, slot).map_err(|e| {
            DataplaneError::kernel(format!("clearing slot {slot} of lb_tx_ports"), e)
        })?;
    }
    Ok(())
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

fn delete(fd: i32, slot: u32) -> std::io::Result<()> {
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
