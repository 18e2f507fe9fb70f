//! What only the privileged tests use, beside the shared test bed
//! (`lb_testbed`): the checks of a packet case (`expect`), an independent
//! model of the data plane for the hostile corpus (`oracle`), bulk sends
//! (`bulk`), raw packet sockets (`wire`), and the Debian package installed
//! in a scratch root (`debian`).
pub mod bulk;
pub mod debian;
pub mod expect;
pub mod oracle;
pub mod wire;
