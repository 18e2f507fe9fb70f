//! The operator's side: the CLI (`lb-ctl list`, `service`, `backend`,
//! `stats`, `conns`), each command a request to the admin API of a running
//! `lb-ctl run` through its HTTP client, and the text it prints.
pub mod cli;
pub mod client;
pub mod render;
