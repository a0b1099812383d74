//! Talking to XAPI hosts: RPC codecs, host URLs and credentials, TLS.

pub mod client;
pub mod connection;
pub mod rpc;
mod secret;
pub mod tls;
pub mod url;

pub use secret::Secret;
pub use url::HostUrl;
