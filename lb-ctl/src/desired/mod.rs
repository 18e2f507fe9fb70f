//! What is desired: the services and the data plane's settings, as the
//! config file says them and the admin API changes them. Everything that
//! comes in is checked here, once, into plain data (`model`) that the rest
//! of the controller trusts:
//!
//! - `config`: the config file, from its text to a `Config`;
//! - `json`: services and backends in JSON (the API's bodies, the state
//!   file's records);
//! - `written`, `validate`, `checks`, `snat`, `names`, `bounds`, `problem`: what both read
//!   (the shapes as written, their checks (`checks`: each health check type's keys;
//!   `snat`: a full-NAT service's pool), the name of every choice, the
//!   bounds on every value, and how a problem is named);
//! - `changes`: the API's changes on top of the config file, kept in the
//!   state file (`private_file`).
pub mod bounds;
pub mod changes;
pub mod checks;
pub mod config;
pub mod json;
pub mod model;
pub mod names;
pub mod private_file;
pub mod problem;
pub mod snat;
pub mod validate;
pub mod written;
