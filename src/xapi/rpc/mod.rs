//! XAPI RPC codecs (XML-RPC and JSON-RPC), shared by the client and the lab host. Sans-IO.
//!
//! Bytes in, typed values out, and back: [`xmlrpc`] and [`jsonrpc`] turn documents into
//! [`Call`]s and [`Response`]s made of [`Value`]s. The wire formats follow the protocol
//! reference (§2.1, §2.2, §2.6, §4) and xapi's own encoders, so the lab host answers what
//! real clients (npm `xen-api`, the Python SDK, `xo-cr-seed`) expect.
//!
//! Decoders take untrusted input: they never panic, reject nesting deeper than
//! [`MAX_NESTING_DEPTH`] before recursing further, and allocate only in proportion to the
//! input actually read. Bounding the input's size is the caller's job.

mod error;
mod message;
mod value;

pub mod jsonrpc;
pub mod xmlrpc;

#[cfg(test)]
mod test_support;

pub use error::{RpcCodecError, XmlPosition};
pub use message::{Call, Response, XapiFault};
pub use value::Value;

/// The deepest nesting of arrays and structs (JSON arrays and objects) a decoder accepts,
/// counting every level of the document, envelopes included. XAPI's deepest values, event
/// batches holding records holding maps, need about six.
pub const MAX_NESTING_DEPTH: usize = 64;
