//! Talking to XAPI hosts: RPC codecs, host URLs and credentials, TLS, typed records, typed
//! operations, tasks, and VDI transfers between hosts.

pub mod client;
pub mod connect;
pub mod connection;
mod objects;
pub mod ops;
pub mod records;
pub mod rpc;
mod rpc_pool;
mod secret;
pub mod task;
pub mod tls;
pub mod transfer;
pub mod url;

pub use self::url::HostUrl;
pub use secret::Secret;
