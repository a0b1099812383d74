//! Routing a call to its handler, with xapi's checks in xapi's order: the name
//! (`MESSAGE_METHOD_UNKNOWN`), the arity (`MESSAGE_PARAMETER_COUNT_MISMATCH`), then the
//! session (`SESSION_INVALID`). Then, before the handler runs, any fault injected for the
//! call (`lab.inject_fault`), so that errors a client makes itself still win.

use super::accessors::Accessor;
use super::args::{Invocation, Param};
use super::event::EventWait;
use super::{accessors, catalog, lab_calls, task};
use crate::lab::db::Class;
use crate::lab::state::Lab;
use crate::xapi::rpc::{Call, Response, Value, XapiFault};

pub(super) type Handler = fn(&Lab, &Invocation) -> Response;
/// A handler that checks a call and says what it waits for (`event.from`); the caller waits,
/// blocking a thread or not.
pub(super) type WaitHandler = fn(&Lab, &Invocation) -> Result<EventWait, XapiFault>;

/// How a message runs.
#[derive(Clone, Copy)]
pub(super) enum Run {
    Now(Handler),
    Wait(WaitHandler),
}

/// What dispatching a call gives: its answer, or a wait whose end is the answer.
pub(crate) enum Dispatched {
    Answer(Response),
    Wait(EventWait),
}

/// A message a namespace defines itself, beyond the accessors derived from its fields.
pub(super) struct Message {
    pub name: &'static str,
    pub params: &'static [Param],
    /// The first parameter is a session, checked before the handler runs.
    pub takes_session: bool,
    /// May also be called as `Async.<namespace>.<name>`, running as a task.
    pub asynchronous: bool,
    pub run: Run,
}

impl Message {
    /// A quick call, not offered as `Async.`.
    pub const fn sync(name: &'static str, params: &'static [Param], run: Handler) -> Message {
        Message {
            name,
            params,
            takes_session: true,
            asynchronous: false,
            run: Run::Now(run),
        }
    }

    /// A call that waits for the database to change (`event.from`).
    pub const fn waiting(
        name: &'static str,
        params: &'static [Param],
        wait: WaitHandler,
    ) -> Message {
        Message {
            name,
            params,
            takes_session: true,
            asynchronous: false,
            run: Run::Wait(wait),
        }
    }

    /// A call that may take a while, also offered as `Async.`, as xapi offers every message
    /// that is neither a getter nor a setter.
    pub const fn long(name: &'static str, params: &'static [Param], run: Handler) -> Message {
        Message {
            asynchronous: true,
            ..Message::sync(name, params, run)
        }
    }

    /// A call made before there is a session (`session.login_with_password`, `system.*`).
    pub const fn sessionless(
        name: &'static str,
        params: &'static [Param],
        run: Handler,
    ) -> Message {
        Message {
            takes_session: false,
            ..Message::sync(name, params, run)
        }
    }
}

pub(super) fn dispatch(lab: &Lab, call: &Call) -> Dispatched {
    match route(lab, call) {
        Ok(dispatched) => dispatched,
        Err(fault) => Dispatched::Answer(Err(fault)),
    }
}

fn route(lab: &Lab, call: &Call) -> Result<Dispatched, XapiFault> {
    let unknown = || XapiFault::new("MESSAGE_METHOD_UNKNOWN", [call.method.as_str()]);
    let (asynchronous, name) = match call.method.strip_prefix("Async.") {
        Some(name) => (true, name),
        None => (false, call.method.as_str()),
    };
    let (namespace, message_name) = name.split_once('.').ok_or_else(unknown)?;
    if let Some(message) = catalog::messages(namespace).find(|m| m.name == message_name) {
        if asynchronous && !message.asynchronous {
            return Err(unknown());
        }
        let invocation = Invocation::new(
            &call.method,
            message.params,
            &call.params,
            message.takes_session,
        )?;
        if message.takes_session {
            check_session(lab, &invocation)?;
        }
        if let Some(answer) = injected(lab, call, asynchronous) {
            return Ok(Dispatched::Answer(answer));
        }
        return Ok(match message.run {
            Run::Now(run) if asynchronous => {
                Dispatched::Answer(task::run_async(lab, run, invocation))
            }
            Run::Now(run) => Dispatched::Answer(run(lab, &invocation)),
            Run::Wait(wait) => Dispatched::Wait(wait(lab, &invocation)?),
        });
    }
    let class = Class::from_name(namespace).ok_or_else(unknown)?;
    let accessor = Accessor::resolve(class, message_name)
        .filter(|_| !asynchronous)
        .ok_or_else(unknown)?;
    let invocation = Invocation::new(&call.method, accessor.params(), &call.params, true)?;
    check_session(lab, &invocation)?;
    if let Some(answer) = injected(lab, call, false) {
        return Ok(Dispatched::Answer(answer));
    }
    Ok(Dispatched::Answer(accessors::run(
        lab,
        class,
        accessor,
        &invocation,
    )))
}

/// The answer of a call that meets an injected fault: its error, or for an `Async.` call a
/// task that failed with it, as xapi reports the errors of asynchronous calls.
fn injected(lab: &Lab, call: &Call, asynchronous: bool) -> Option<Response> {
    let fault = lab_calls::injected(lab, &call.method, &call.params)?;
    if !asynchronous {
        return Some(Err(fault));
    }
    Some(lab.create_task(&call.method).and_then(|task| {
        lab.complete_task(&task, Err(fault))?;
        Ok(Value::from(task))
    }))
}

fn check_session(lab: &Lab, invocation: &Invocation) -> Result<(), XapiFault> {
    let session = invocation.session.as_deref().unwrap_or_default();
    if lab.session_valid(session) {
        Ok(())
    } else {
        Err(XapiFault::new("SESSION_INVALID", [session]))
    }
}
