//! Typed XAPI operations: every call replication, seeding and failover make, as methods on
//! [`XapiClient`] with typed arguments and results, so no caller spells a method name.
//!
//! One kind of I/O (floor 2): these carry out calls; which calls to make, and with which
//! metadata, is decided above (`replicate`).

mod host;
mod maps;
mod network;
mod vdi;
mod vm;
mod vm_update;

pub use maps::{Class, MapName};
pub use network::NewVif;
pub use vdi::NewVdi;
pub use vm::{VM_CONSTRUCTOR_FIELDS, VmDisk, constructor_fields};

use super::client::{ClientError, XapiClient};
use super::records::StringMap;
use super::rpc::Value;

/// A `(string -> string) map` as the value XAPI takes, e.g. for `VM.create`'s `other_config`.
pub fn map_value(map: &StringMap) -> Value {
    Value::Struct(
        map.iter()
            .map(|(k, v)| (k.clone(), Value::from(v.as_str())))
            .collect(),
    )
}

/// A record struct from (field, value) pairs.
fn record(fields: impl IntoIterator<Item = (&'static str, Value)>) -> Value {
    Value::Struct(fields.into_iter().map(|(k, v)| (k.to_owned(), v)).collect())
}

impl XapiClient {
    /// A call whose answer does not matter once it succeeded.
    async fn call_unit(&self, method: &str, params: Vec<Value>) -> Result<(), ClientError> {
        self.call(method, params).await.map(drop)
    }
}
