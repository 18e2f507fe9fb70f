//! The packet trace (`lb-ctl trace`, `GET /api/v1/trace`): the data plane
//! sends an event for each packet that passes the kernel's filter
//! (`lb_common::trace`); the controller is the ring buffer's one reader
//! (`hub`), turns each event into a record that names the interface, the
//! service and the backend (`record`), and hands it to each subscriber
//! whose filter (`filter`) it matches. The trace is on while at least one
//! subscriber is connected, and off again when the last one leaves.
pub mod filter;
pub mod hub;
pub mod record;

pub use filter::{ClientPrefix, Filter, FilterError};
pub use hub::{Hub, Subscription, TooMany};
pub use record::{Line, Lost, Packet};
