//! Sessions: `session.login_with_password` and `session.logout`, and the credential checks
//! the HTTP data plane shares. The only user is `root`. Session references are credentials:
//! they are never logged.

use super::args::{Fallback, Invocation, Param};
use super::dispatch::Message;
use super::{now, this_host};
use crate::lab::db::{Class, Record};
use crate::lab::state::Lab;
use crate::xapi::rpc::{Response, Value, XapiFault};

pub(super) const MESSAGES: &[Message] = &[
    Message::sessionless(
        "login_with_password",
        &[
            Param::Required("uname"),
            Param::Required("pwd"),
            Param::Optional("version", Fallback::Text("1.1")),
            Param::Optional("originator", Fallback::Text("")),
        ],
        login_with_password,
    ),
    Message::sync("logout", &[], logout),
];

const ROOT: &str = "root";

/// Live sessions kept; a login beyond this ends the oldest, as xapi does at its limit, so
/// clients that never log out cannot grow the database without bound.
const MAX_SESSIONS: usize = 500;

fn login_with_password(lab: &Lab, call: &Invocation) -> Response {
    let (user, password) = (call.text(0)?, call.text(1)?);
    call.text(2)?;
    let originator = call.text(3)?;
    if !lab.authenticate_basic(user, password) {
        return Err(XapiFault::new(
            "SESSION_AUTHENTICATION_FAILED",
            [user, "Authentication failure"],
        ));
    }
    lab.with_db_mut(|db| {
        db.evict_oldest(Class::Session, MAX_SESSIONS - 1, |_| true);
        let host = this_host(db);
        let time = now();
        let fields: Record = [
            ("this_host".to_owned(), Value::from(host)),
            ("last_active".to_owned(), time.clone()),
            ("validation_time".to_owned(), time),
            ("is_local_superuser".to_owned(), Value::Bool(true)),
            ("auth_user_name".to_owned(), Value::from(ROOT)),
            ("originator".to_owned(), Value::from(originator)),
        ]
        .into();
        Ok(Value::from(db.insert(Class::Session, fields)))
    })
}

fn logout(lab: &Lab, call: &Invocation) -> Response {
    let session = call.session.as_deref().unwrap_or_default();
    lab.with_db_mut(|db| {
        db.remove(Class::Session, session)?;
        Ok(Value::void())
    })
}

impl Lab {
    /// Whether `user` and `password` are the root credentials (for HTTP Basic auth too).
    pub fn authenticate_basic(&self, user: &str, password: &str) -> bool {
        user == ROOT && self.with_db(|db| db.root_password().verify(password))
    }

    /// Whether `session` is a live session reference.
    pub fn session_valid(&self, session: &str) -> bool {
        self.with_db(|db| db.exists(Class::Session, session))
    }
}
