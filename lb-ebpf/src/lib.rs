//! Empty host-side library: lets `lb-ctl` name this crate as a build dependency so
//! cargo rebuilds the object when it changes. The program is `src/main.rs`.
#![no_std]
