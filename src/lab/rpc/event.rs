//! `event.from` and `event.inject` (protocol reference §2.6), enough for npm `xen-api` with
//! event watching on: it injects an event on the pool to get a token, then loops on
//! `event.from` with a 60 s timeout, and waits for `Async.*` tasks through those events.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use super::args::{Invocation, Param};
use super::dispatch::Message;
use super::live;
use crate::lab::db::{Change, ChangeKind, Class, Db, Subscription, Token};
use crate::lab::state::Lab;
use crate::xapi::rpc::{Response, Value, XapiFault};

pub(super) const MESSAGES: &[Message] = &[
    Message::sync(
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

fn from(lab: &Lab, call: &Invocation) -> Response {
    let classes = call.strings(0)?;
    let token = Token::parse(call.text(1)?)?;
    let timeout = call.float(2)?;
    let watched = Subscription::parse(classes.iter().map(String::as_str));
    let wait = if timeout.is_finite() && timeout > 0.0 {
        Duration::try_from_secs_f64(timeout).map_or(MAX_WAIT, |d| d.min(MAX_WAIT))
    } else {
        Duration::ZERO
    };
    lab.wait_for(
        Instant::now() + wait,
        |db| match db.changes_since(&watched, token) {
            Err(error) => Some(Err(error.into())),
            Ok(changes) if changes.is_empty() => None,
            Ok(changes) => Some(Ok(batch(lab, db, &watched, changes))),
        },
        |db| Ok(batch(lab, db, &watched, Vec::new())),
    )
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
