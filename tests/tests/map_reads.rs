//! The controller's batch read of a hash map (`sys::hash_entries`, which
//! the full-NAT expiry walks its maps with), against aya's walk of the
//! same map an entry at a time. Run as root.
use std::{collections::BTreeMap, path::PathBuf};

use aya::maps::{HashMap, Map, MapData};
use lb_ctl::write::dataplane::sys;
use lb_testbed::netns::output;

/// A hash map of `entries` (u32 keys, u64 values), pinned for the test's
/// length and unpinned when dropped.
struct Pinned(PathBuf);

impl Pinned {
    fn create(entries: u32) -> Self {
        let path = PathBuf::from(format!("/sys/fs/bpf/lbt-map-reads-{}", std::process::id()));
        let _ = std::fs::remove_file(&path);
        let pin = path.to_string_lossy().into_owned();
        let entries = entries.to_string();
        let args = [
            "bpftool",
            "map",
            "create",
            &pin,
            "type",
            "hash",
            "key",
            "4",
            "value",
            "8",
            "entries",
            &entries,
            "name",
            "lbt_reads",
        ];
        let out = output(&args);
        assert!(out.status.success(), "{args:?}: {}", String::from_utf8_lossy(&out.stderr));
        Self(path)
    }

    fn open(&self) -> HashMap<MapData, u32, u64> {
        let data = MapData::from_pin(&self.0).expect("the pinned map");
        HashMap::try_from(Map::from_map_data(data).expect("a map")).expect("a u32 -> u64 hash")
    }
}

impl Drop for Pinned {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.0);
    }
}

/// An empty map, then one full to its last entry (so that buckets hold
/// several entries: a batch of one entry must grow to take a bucket whole),
/// read in batches of 1, 7 and 4096: every entry once, as aya's walk sees
/// them, whatever the batch.
#[test]
fn a_batch_read_sees_every_entry_once() {
    let pinned = Pinned::create(512);
    let mut map = pinned.open();
    for batch in [1, 7, 4096] {
        let read = sys::hash_entries(&map, batch).expect("reading the empty map");
        assert!(read.is_empty(), "batch {batch}: {read:?}");
    }
    for key in 0..512_u32 {
        map.insert(key, u64::from(key) * 1000 + 7, 0).expect("an insert");
    }
    let walked: BTreeMap<u32, u64> = map.iter().map(|e| e.expect("an entry")).collect();
    assert_eq!(walked.len(), 512);
    for batch in [1, 7, 4096] {
        let read = sys::hash_entries(&map, batch).expect("reading the map");
        assert_eq!(read.len(), 512, "batch {batch}: each entry once");
        let read: BTreeMap<u32, u64> = read.into_iter().collect();
        assert_eq!(read, walked, "batch {batch}");
    }
}
