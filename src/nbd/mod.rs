//! The NBD (Network Block Device) protocol, client side: how XenServer / XCP-ng hosts serve a
//! VDI's bytes (`VDI.get_nbd_info` names the address, port, export name and certificate).
//!
//! - [`handshake`], [`transmission`]: the sans-IO codec. State machines that take the
//!   server's bytes and return "need N more bytes", a decoded value, or an [`NbdError`]
//!   naming the phase, the field and its position; they hand out the bytes to send. Every
//!   length a server sends is checked against a bound before anything is sized from it.
//! - [`server`]: the same messages from the server's side, for test servers.
//! - [`client`]: a thin async client over any `AsyncRead + AsyncWrite`, with STARTTLS
//!   through rustls and the host trust of [`crate::xapi::tls`].
//!
//! Spoken: the fixed newstyle handshake; `NBD_OPT_STARTTLS`; `NBD_OPT_GO` and `NBD_OPT_INFO`
//! with the export's size, flags and block size constraints, falling back to
//! `NBD_OPT_EXPORT_NAME` where `NBD_OPT_GO` is unknown (older xapi-nbd); `NBD_OPT_ABORT`;
//! `NBD_CMD_READ` with simple replies, pipelined; `NBD_CMD_DISC`. Not spoken: writes,
//! structured replies and block status (xapi-nbd has no `base:allocation`, and changed
//! blocks come from XAPI's CBT bitmaps instead), extended headers.
//!
//! Why no crate: none fits. `nbd` (0.3) is blocking over `Read + Write + Seek` with no TLS;
//! `tokio-nbd` and `nbd-async` are servers; the `libnbd` bindings need the C library and its
//! GnuTLS, outside this crate's rustls trust (pinned fingerprints) and its sans-IO rule.

pub mod client;
mod error;
pub mod handshake;
pub mod server;
pub mod transmission;
pub mod wire;

pub use client::{NbdClient, NbdTls};
pub use error::{NbdError, Phase};
pub use handshake::{BlockSizes, ExportInfo};
pub use wire::{ReplyCode, ServerError};
