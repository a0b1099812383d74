//! The lab host's HTTP server: the XAPI RPC endpoints and the VDI data plane, over plain TCP
//! or TLS with a self-signed certificate kept in the lab's directory.
//!
//! | request | handler |
//! |---|---|
//! | `POST /jsonrpc` | JSON-RPC v1/v2, `content-type: application/json` exactly |
//! | any other `POST` | XML-RPC with xapi's `Status` envelope (`system.listMethods` bare) |
//! | `GET /export_raw_vdi[/]` | a VDI as a VHD stream (a delta with `base=`) or raw |
//! | `PUT /import_raw_vdi[/]` | a VHD stream or raw bytes onto an existing VDI |
//!
//! Transfers follow xapi (protocol reference §1): `session_id` (cookie or query) or HTTP
//! Basic, `task_id` or a task of their own named in a `task-id` header, no `Content-Length`
//! on the 200 and the body ending when the connection closes, failures after the 200 written
//! into the body as an `HTTP/1.1 500` response, and the task as the authority on success.
//! Memory stays bounded whatever the disk size: bodies flow through bounded channels in
//! frames of at most a block, and RPC requests are capped at 1 MiB, collected into one buffer
//! whatever their segmentation. What each client may hold (connections, time to send a
//! request) is bounded too: see [`Limits`].
//!
//! [`LabServer`] runs on the caller's tokio runtime; the `Lab` calls, which block, run on its
//! blocking threads, except the waits of `event.from`, which hold none.

mod body;
mod error;
mod export;
mod import;
mod reply;
mod request;
mod route;
mod rpc;
mod server;
pub(crate) mod tls;
mod transfer;

pub use error::HttpError;
pub use rpc::MAX_RPC_BODY;
pub use server::{LabServer, Limits};
