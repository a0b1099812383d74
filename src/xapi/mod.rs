//! Talking to XAPI hosts.

pub mod rpc;
