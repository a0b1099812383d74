//! The lab host's RPC surface: XAPI calls as [`Call`]s in, [`Response`]s out, over the object
//! database and the file SR. The HTTP server decodes XML-RPC and JSON-RPC into calls and
//! encodes the responses; nothing here knows the wire.
//!
//! [`Lab::handle`] may block: `event.from` waits up to its timeout for changes, and storage
//! calls do file I/O. Call it from a blocking thread (`tokio::task::spawn_blocking`). The HTTP
//! server instead dispatches on a blocking thread and awaits an `event.from` wait without one
//! (`Lab::dispatch`).
//!
//! How a call is routed (`dispatch`): `system.listMethods`; then the messages a namespace
//! defines itself (`VM.snapshot`, `session.login_with_password`, `event.from`, `lab.write`,
//! … one module per class); then the accessors every class has, derived from its fields
//! (`accessors`). `Async.<Class>.<message>` runs a message as a task.

mod accessors;
mod args;
mod catalog;
mod cbt;
mod dispatch;
mod event;
mod guest;
mod hidden;
mod host;
pub mod init;
mod lab_calls;
mod live;
mod mac;
mod network;
mod nvram;
mod session;
mod setter_rules;
mod sr;
mod task;
mod vbd;
mod vdi;
mod vif;
mod vlan;
mod vm;
mod vm_spec;
mod vtpm;
mod xapi_errors;

use crate::lab::db::{Class, Db};
use crate::lab::state::Lab;
use crate::xapi::rpc::{Call, Response, Value};

pub(crate) use dispatch::Dispatched;
pub(crate) use event::EventWaits;
pub use event::MAX_WAITS_PER_SESSION;
pub(crate) use guest::{complete_boot, resume_boots};
pub(crate) use task::RunningTasks;

/// The one method xapi answers without its `Status` envelope over XML-RPC.
pub const LIST_METHODS: &str = "system.listMethods";

/// The `data` argument of `lab.write` that writes zeros instead of seeded random bytes.
pub use lab_calls::ZERO as LAB_WRITE_ZEROS;

impl Lab {
    /// Answer one call as XAPI would, including its errors.
    pub fn handle(&self, call: &Call) -> Response {
        match self.dispatch(call) {
            Dispatched::Answer(answer) => answer,
            Dispatched::Wait(wait) => wait.block(self),
        }
    }

    /// Answer one call, or say what it waits for: the async form of [`Lab::handle`]. Blocks
    /// like it, but never for a wait.
    pub(crate) fn dispatch(&self, call: &Call) -> Dispatched {
        tracing::debug!(method = %call.method, "lab RPC");
        dispatch::dispatch(self, call)
    }
}

/// The reference of the lab's one host, which runs everything.
fn this_host(db: &Db) -> String {
    db.refs(Class::Host).next().cloned().unwrap_or_default()
}

/// Now, as a XAPI datetime (`YYYYMMDDTHH:MM:SSZ`).
fn now() -> Value {
    // The VHD time stamp already formats UTC, as RFC 3339 with dashes; XAPI's basic form is
    // the same without them.
    let iso = crate::vhd::VhdTimestamp::from_system_time(std::time::SystemTime::now()).to_string();
    Value::DateTime(iso.replace('-', ""))
}
