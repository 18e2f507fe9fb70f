//! Reads the data plane's counters from pinned maps (named from lb-common's
//! `Counter`, so no list is kept by hand here).
use aya::maps::{Map, MapData, PerCpuArray};
use lb_common::{abi::Traffic, counter::Counter};

fn per_cpu<V: aya::Pod>(pin_dir: &str, name: &str) -> PerCpuArray<MapData, V> {
    let path = format!("{pin_dir}/{name}");
    let data = MapData::from_pin(&path).unwrap_or_else(|e| panic!("opening {path}: {e}"));
    PerCpuArray::try_from(Map::PerCpuArray(data)).unwrap_or_else(|e| panic!("{path}: {e}"))
}

/// Every outcome counter, summed over CPUs, in `Counter` order.
pub fn read(pin_dir: &str) -> Vec<(&'static str, u64)> {
    let map = per_cpu::<u64>(pin_dir, "lb_counters");
    Counter::ALL
        .iter()
        .map(|c| {
            let total = map.get(&(*c as u32), 0).map_or(0, |v| v.iter().sum());
            (c.name(), total)
        })
        .collect()
}

/// One counter, summed over CPUs.
pub fn get(pin_dir: &str, counter: Counter) -> u64 {
    read(pin_dir).into_iter().find(|(n, _)| *n == counter.name()).map_or(0, |(_, v)| v)
}

/// Traffic of one backend id, summed over CPUs.
pub fn backend_traffic(pin_dir: &str, backend_id: u32) -> Traffic {
    traffic(pin_dir, "lb_be_stats", backend_id)
}

/// Traffic of one service id, summed over CPUs.
pub fn service_traffic(pin_dir: &str, service_id: u32) -> Traffic {
    traffic(pin_dir, "lb_svc_stats", service_id)
}

fn traffic(pin_dir: &str, map: &str, id: u32) -> Traffic {
    let map = per_cpu::<Traffic>(pin_dir, map);
    let mut total = Traffic::default();
    if let Ok(values) = map.get(&id, 0) {
        for v in values.iter() {
            total.add(v);
        }
    }
    total
}

/// The id of the service on `vip:port` (TCP) in the pinned `lb_services`.
pub fn service_id(pin_dir: &str, vip: std::net::Ipv4Addr, port: u16) -> Option<u32> {
    let path = format!("{pin_dir}/lb_services");
    let data = MapData::from_pin(&path).unwrap_or_else(|e| panic!("opening {path}: {e}"));
    let map: aya::maps::HashMap<MapData, lb_common::abi::Endpoint, lb_common::abi::Service> =
        aya::maps::HashMap::try_from(Map::HashMap(data)).unwrap_or_else(|e| panic!("{path}: {e}"));
    let key = lb_common::abi::Endpoint::new(vip.octets(), port, lb_common::abi::PROTO_TCP);
    map.get(&key, 0).ok().map(|s| s.id)
}

/// The id of backend `address:port` in the pinned `lb_backends`.
pub fn backend_id(pin_dir: &str, address: std::net::Ipv4Addr, port: u16) -> u32 {
    use aya::maps::Array;
    let path = format!("{pin_dir}/lb_backends");
    let data = MapData::from_pin(&path).unwrap_or_else(|e| panic!("opening {path}: {e}"));
    let backends: Array<MapData, lb_common::abi::Backend> =
        Array::try_from(Map::Array(data)).expect("lb_backends");
    (0..lb_common::abi::MAX_BACKENDS)
        .find(|i| {
            backends
                .get(i, 0)
                .is_ok_and(|b| b.addr == address.octets() && b.port == port && b.flags != 0)
        })
        .unwrap_or_else(|| panic!("no backend {address}:{port}"))
}

/// The connection counts of backend `address:port` (as `lb_be_conns` holds
/// them after the controller's last recount).
pub fn backend_conns(
    pin_dir: &str,
    address: std::net::Ipv4Addr,
    port: u16,
) -> lb_common::abi::BackendConns {
    use aya::maps::Array;
    let id = backend_id(pin_dir, address, port);
    let path = format!("{pin_dir}/lb_be_conns");
    let data = MapData::from_pin(&path).unwrap_or_else(|e| panic!("opening {path}: {e}"));
    let conns: Array<MapData, lb_common::abi::BackendConns> =
        Array::try_from(Map::Array(data)).expect("lb_be_conns");
    conns.get(&id, 0).unwrap_or_default()
}
