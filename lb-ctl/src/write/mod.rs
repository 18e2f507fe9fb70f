//! How a plan is written: the reconciler (the one writer of kernel state)
//! applies each new plan as the difference from what the maps hold; the
//! data plane (`dataplane`) is those maps and programs, the real ones or an
//! in-memory copy for tests. Beside them, what the data plane needs of the
//! host's interfaces (`netdev`, `gro`) and the user-space slow path of
//! reassembled datagrams (`reassembled`), which the reconciler starts and
//! feeds with each applied image. And the routes BIRD announces the VIPs
//! from (`vip_routes`).
pub mod dataplane;
pub mod gro;
pub mod netdev;
pub mod reassembled;
pub mod reconciler;
pub mod vip_routes;
