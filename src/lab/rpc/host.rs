//! `host.get_servertime`: the host's clock, which runners on several machines share to judge
//! when a lease on a VM expires (`replicate::lease`), whatever their own clocks say.

use super::args::{Invocation, Param};
use super::dispatch::Message;
use crate::lab::db::Class;
use crate::lab::state::Lab;
use crate::xapi::rpc::Response;

pub(super) const MESSAGES: &[Message] = &[Message::sync(
    "get_servertime",
    &[Param::Required("host")],
    get_servertime,
)];

/// xapi answers with a datetime in UTC (`YYYYMMDDTHH:MM:SSZ`), after checking the reference.
fn get_servertime(lab: &Lab, call: &Invocation) -> Response {
    let host = call.text(0)?;
    lab.with_db(|db| db.record(Class::Host, host).map(drop))?;
    Ok(super::now())
}
