//! The daemon, `lb-ctl run` (`run`): it loads the desired state, has it
//! planned and written, and then keeps it so. One task owns the
//! controller's state (`controller`) and moves it on at each event of its
//! loop (`control_loop`): a change through the admin API (`api`), a health
//! transition (`health`), a reload, a sample of the counters; the VIPs it
//! can serve are announced through BIRD (`bgp`). The weights it plans
//! with are the operator's, or a health check's (`weights`). Beside them
//! what a long-running process needs: its logs (`logging`), its open-file
//! limit (`limits`), its capabilities (`caps`), and telling systemd how it
//! is doing (`notify`).
pub mod api;
pub mod bgp;
pub mod caps;
pub mod control_loop;
pub mod controller;
pub mod health;
pub mod limits;
pub mod logging;
pub mod notify;
pub mod run;
pub mod trace;
pub mod weights;
