//! `event.from` and `event.inject` (protocol reference §2.6), enough for npm `xen-api` with
//! event watching on: it injects an event on the pool to get a token, then loops on
//! `event.from` with a 60 s timeout, and waits for `Async.*` tasks through those events.
//!
//! A waiting `event.from` holds no thread when it comes over HTTP: it awaits the database's
//! changes (see [`EventWait::wait`]) and ends when its client goes away, which drops it. It also
//! ends, with `SESSION_INVALID`, when its session does, as xapi's does. A session may have at
//! most [`MAX_WAITS_PER_SESSION`] waiting at once; more are refused with xapi's `TOO_BUSY`.

use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

use super::args::{Invocation, Param};
use super::dispatch::Message;
use super::{live, xapi_errors};
use crate::lab::db::{Change, ChangeKind, Class, Db, Subscription, Token};
use crate::lab::state::Lab;
use crate::xapi::rpc::{Response, Value, XapiFault};

pub(super) const MESSAGES: &[Message] = &[
    Message::waiting(
        "from",
        &[
            Param::Required("classes"),
            Param::Required("token"),
            Param::Required("timeout"),
        ],
        from,
    ),
    Message::sync(
        "inject",
        &[Param::Required("class"), Param::Required("ref")],
        inject,
    ),
];

/// The longest `event.from` waits, whatever the caller asks: clients re-poll anyway.
const MAX_WAIT: Duration = Duration::from_secs(3600);

/// `event.from` calls one session may have waiting at once. A client needs one (npm
/// `xen-api` keeps one open); this leaves room for several watchers sharing a session while
/// bounding what one session can hold.
pub const MAX_WAITS_PER_SESSION: usize = 16;

fn from(lab: &Lab, call: &Invocation) -> Result<EventWait, XapiFault> {
    let classes = call.strings(0)?;
    let token = Token::parse(call.text(1)?)?;
    let timeout = call.float(2)?;
    let watched = Subscription::parse(classes.iter().map(String::as_str));
    let wait = if timeout.is_finite() && timeout > 0.0 {
        Duration::try_from_secs_f64(timeout).map_or(MAX_WAIT, |d| d.min(MAX_WAIT))
    } else {
        Duration::ZERO
    };
    let session = call.session.clone().unwrap_or_default();
    let slot = lab.event_waits().enter(lab, &session)?;
    Ok(EventWait {
        watched,
        token,
        deadline: Instant::now() + wait,
        slot,
    })
}

/// An `event.from` call, checked, that waits for a change it watches or for its deadline.
pub(crate) struct EventWait {
    watched: Subscription,
    token: Token,
    deadline: Instant,
    /// Its place among its session's waits, given back when the wait ends or is dropped.
    slot: WaitSlot,
}

impl EventWait {
    /// Wait blocking this thread (for callers of [`Lab::handle`]).
    pub(crate) fn block(self, lab: &Lab) -> Response {
        lab.wait_for(
            self.deadline,
            |db| self.ready(lab, db),
            |db| self.empty(lab, db),
        )
    }

    /// Wait without holding a thread: the database is looked at on a blocking thread (its lock
    /// may be held by a long storage call) after each change, until something watched changed
    /// or the deadline passed. Dropping the future ends the wait.
    pub(crate) async fn wait(self, lab: Lab) -> Response {
        // Subscribed before the first look, so that no change slips in between.
        let mut changes = lab.watch_changes();
        let deadline = tokio::time::Instant::from_std(self.deadline);
        let this = Arc::new(self);
        loop {
            let timed_out = Instant::now() >= this.deadline;
            let (looker, wait) = (lab.clone(), Arc::clone(&this));
            let looked = tokio::task::spawn_blocking(move || {
                looker.with_db(|db| match wait.ready(&looker, db) {
                    None if timed_out => Some(wait.empty(&looker, db)),
                    answer => answer,
                })
            })
            .await;
            match looked {
                Ok(Some(answer)) => return answer,
                Ok(None) => {}
                Err(e) => return Err(xapi_errors::internal(format!("event.from: {e}"))),
            }
            match tokio::time::timeout_at(deadline, changes.changed()).await {
                // A change, or the deadline: look again.
                Ok(Ok(())) | Err(_) => {}
                // The lab is going away (it cannot while `lab` is held): sleep out the wait.
                Ok(Err(_)) => tokio::time::sleep_until(deadline).await,
            }
        }
    }

    /// The answer if there is one now: the changes watched since the token, or an error.
    fn ready(&self, lab: &Lab, db: &Db) -> Option<Response> {
        let session = self.slot.session.as_str();
        if !db.exists(Class::Session, session) {
            return Some(Err(XapiFault::new("SESSION_INVALID", [session])));
        }
        match db.changes_since(&self.watched, self.token) {
            Err(error) => Some(Err(error.into())),
            Ok(changes) if changes.is_empty() => None,
            Ok(changes) => Some(Ok(batch(lab, db, &self.watched, changes))),
        }
    }

    /// The answer at the deadline with nothing to report: no events and the current token.
    fn empty(&self, lab: &Lab, db: &Db) -> Response {
        Ok(batch(lab, db, &self.watched, Vec::new()))
    }
}

/// How many `event.from` calls each session has waiting.
#[derive(Debug, Default)]
pub(crate) struct EventWaits(Mutex<HashMap<String, usize>>);

impl EventWaits {
    fn enter(&self, lab: &Lab, session: &str) -> Result<WaitSlot, XapiFault> {
        let mut waits = self.0.lock().unwrap_or_else(PoisonError::into_inner);
        let count = waits.entry(session.to_owned()).or_default();
        if *count >= MAX_WAITS_PER_SESSION {
            return Err(XapiFault::new("TOO_BUSY", Vec::<String>::new()));
        }
        *count += 1;
        Ok(WaitSlot {
            lab: lab.clone(),
            session: session.to_owned(),
        })
    }

    fn leave(&self, session: &str) {
        let mut waits = self.0.lock().unwrap_or_else(PoisonError::into_inner);
        if let Some(count) = waits.get_mut(session) {
            *count -= 1;
            if *count == 0 {
                waits.remove(session);
            }
        }
    }
}

/// One waiting `event.from` of a session; dropping it gives the place back.
struct WaitSlot {
    lab: Lab,
    session: String,
}

impl Drop for WaitSlot {
    fn drop(&mut self) {
        self.lab.event_waits().leave(&self.session);
    }
}

/// The `event.from` result: the events, live object counts and the next token.
fn batch(lab: &Lab, db: &Db, watched: &Subscription, changes: Vec<Change>) -> Value {
    let events = changes
        .into_iter()
        .map(|change| event(lab, db, change))
        .collect();
    let counts: BTreeMap<String, Value> = watched
        .classes()
        .into_iter()
        .map(|class| {
            let count = i64::try_from(db.count(class)).unwrap_or(i64::MAX);
            (class.event_name().to_owned(), Value::Int(count))
        })
        .collect();
    Value::Struct(
        [
            ("events".to_owned(), Value::Array(events)),
            ("valid_ref_counts".to_owned(), Value::Struct(counts)),
            ("token".to_owned(), Value::from(db.token().to_string())),
        ]
        .into(),
    )
}

fn event(lab: &Lab, db: &Db, change: Change) -> Value {
    let mut members: BTreeMap<String, Value> = [
        ("id".to_owned(), Value::from(change.id.to_string())),
        ("timestamp".to_owned(), Value::from("0.0")),
        ("class".to_owned(), Value::from(change.class.event_name())),
        ("operation".to_owned(), Value::from(change.kind.name())),
        ("ref".to_owned(), Value::from(change.reference.as_str())),
    ]
    .into();
    if change.kind != ChangeKind::Del
        && let Ok(snapshot) = live::present(lab, db, change.class, &change.reference)
    {
        members.insert("snapshot".into(), snapshot);
    }
    Value::Struct(members)
}

fn inject(lab: &Lab, call: &Invocation) -> Response {
    let (class_name, reference) = (call.text(0)?, call.text(1)?);
    let class = Class::from_event_name(class_name)
        .ok_or_else(|| XapiFault::new("HANDLE_INVALID", [class_name, reference]))?;
    lab.with_db_mut(|db| {
        let token = db.touch(class, reference)?;
        Ok(Value::from(token.to_string()))
    })
}
