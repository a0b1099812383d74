//! vhdsync: incremental VHD replication between XenServer / XCP-ng hosts.
//!
//! The crate is layered (see DESIGN.md): imports only go down.
//! 1. [`vhd`] and [`xapi::rpc`]: pure codecs, no I/O.
//! 2. [`image`]: VHD files on disk.
//! 4. [`cli`]: the command line, the only place that prints or picks exit codes.

pub mod bench;
pub mod cli;
pub mod fsio;
pub mod image;
pub mod lab;
pub mod replicate;
pub mod stream;
pub mod vhd;
pub mod xapi;
