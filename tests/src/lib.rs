//! What only the privileged tests use, beside the shared test bed
//! (`lb_testbed`): the checks of a packet case (`expect`), an independent
//! model of the data plane for the hostile corpus (`oracle`), bulk sends
//! (`bulk`) and raw packet sockets (`wire`).
pub mod bulk;
pub mod expect;
pub mod oracle;
pub mod wire;
