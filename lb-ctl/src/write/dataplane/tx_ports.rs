//! The redirect targets, `lb_tx_ports` (slot -> interface) and
//! `lb_tx_slots` (ifindex -> slot): slots follow the configured order, so
//! after a restart with fewer or other interfaces an adopted data plane's
//! entries of the interfaces that went must go too.
use aya::maps::{DevMap, HashMap, MapData};
use lb_common::abi::MAX_TX_PORTS;

use super::{DataplaneError, sys};

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
    for slot in first..MAX_TX_PORTS {
        delete(tx_ports, slot).map_err(|e| {
            DataplaneError::kernel(format!("clearing slot {slot} of lb_tx_ports"), e)
        })?;
    }
    Ok(())
}

fn delete(tx_ports: &DevMap<MapData>, slot: u32) -> std::io::Result<()> {
    match sys::devmap_delete(tx_ports, slot) {
        // An empty slot is what we want.
        Err(e) if e.raw_os_error() == Some(libc::ENOENT) => Ok(()),
        done => done,
    }
}
