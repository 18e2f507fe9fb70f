//! Types and pure logic shared by the XDP program (`lb-ebpf`), the controller
//! (`lb-ctl`) and the tests. `no_std`: everything here also compiles for BPF.
#![no_std]

pub mod abi;
pub mod addr;
pub mod conn_table;
pub mod counter;
pub mod csum;
pub mod fullnat;
pub mod hash;
pub mod trace;
