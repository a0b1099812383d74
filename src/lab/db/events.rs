//! What `event.from` reports (protocol reference §2.6), computed from the database's
//! generations the way xapi does: an object changed after the token is reported once, as
//! `add` if it was also created after it, else `mod`, with its current record; a deletion
//! after the token is reported as `del` unless the object was also created after it.

use std::collections::BTreeSet;
use std::fmt;

use super::schema::Class;
use super::{Db, DbError};

/// An `event.from` token: xapi writes two 20-digit counters, the database generation and a
/// message counter the lab host does not have (always zero). `""` means "from the start".
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub struct Token(pub u64);

impl Token {
    pub fn parse(text: &str) -> Result<Token, DbError> {
        let invalid = || DbError::TokenInvalid {
            token: text.to_owned(),
        };
        if text.is_empty() {
            return Ok(Token(0));
        }
        let generation = match text.split_once(',') {
            Some((generation, messages)) => {
                messages.parse::<u64>().map_err(|_| invalid())?;
                generation
            }
            None => text,
        };
        generation.parse().map(Token).map_err(|_| invalid())
    }
}

impl fmt::Display for Token {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:020},{:020}", self.0, 0)
    }
}

/// Which objects an `event.from` caller watches: `"*"`, class names (any case) or
/// `"class/ref"` for one object. Names of classes the lab host lacks, or whose changes are
/// no events (sessions), watch nothing.
#[derive(Debug, Clone, Default)]
pub struct Subscription {
    everything: bool,
    classes: BTreeSet<Class>,
    objects: BTreeSet<(Class, String)>,
}

impl Subscription {
    pub fn parse<'a>(names: impl IntoIterator<Item = &'a str>) -> Subscription {
        let mut subscription = Subscription::default();
        for name in names {
            if name == "*" {
                subscription.everything = true;
            } else if let Some((class, reference)) = name.split_once('/') {
                if let Some(class) = Class::from_event_name(class) {
                    subscription.objects.insert((class, reference.to_owned()));
                }
            } else if let Some(class) = Class::from_event_name(name) {
                subscription.classes.insert(class);
            }
        }
        subscription
    }

    fn matches(&self, class: Class, reference: &str) -> bool {
        class.has_events()
            && (self.everything
                || self.classes.contains(&class)
                || self.objects.contains(&(class, reference.to_owned())))
    }

    /// Every class with something watched, for `valid_ref_counts`.
    pub fn classes(&self) -> Vec<Class> {
        Class::ALL
            .into_iter()
            .filter(|class| {
                class.has_events()
                    && (self.everything
                        || self.classes.contains(class)
                        || self.objects.iter().any(|(c, _)| c == class))
            })
            .collect()
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ChangeKind {
    Add,
    Mod,
    Del,
}

impl ChangeKind {
    pub fn name(self) -> &'static str {
        match self {
            ChangeKind::Add => "add",
            ChangeKind::Mod => "mod",
            ChangeKind::Del => "del",
        }
    }
}

/// One event: the object's latest change after the token.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Change {
    /// The generation of the change, which is the event's id.
    pub id: u64,
    pub class: Class,
    pub kind: ChangeKind,
    pub reference: String,
}

impl Db {
    /// The token for "now": `event.from` with it reports only later changes.
    pub fn token(&self) -> Token {
        Token(self.generation)
    }

    /// The changes after `since` to watched objects, oldest first.
    pub fn changes_since(
        &self,
        watched: &Subscription,
        since: Token,
    ) -> Result<Vec<Change>, DbError> {
        let Token(since) = since;
        // Token 0 is a fresh start: it needs no deletions, only every object as an `add`.
        if since != 0 && since < self.deletions_known_since {
            return Err(DbError::EventsLost);
        }
        let mut changes = Vec::new();
        for class in Class::ALL {
            for (reference, row) in self.table(class) {
                if row.modified > since && watched.matches(class, reference) {
                    changes.push(Change {
                        id: row.modified,
                        class,
                        kind: if row.created > since {
                            ChangeKind::Add
                        } else {
                            ChangeKind::Mod
                        },
                        reference: reference.clone(),
                    });
                }
            }
        }
        changes.extend(
            self.deletions
                .iter()
                .filter(|d| d.generation > since && d.created <= since)
                .filter(|d| watched.matches(d.class, &d.reference))
                .map(|d| Change {
                    id: d.generation,
                    class: d.class,
                    kind: ChangeKind::Del,
                    reference: d.reference.clone(),
                }),
        );
        changes.sort_by_key(|change| change.id);
        Ok(changes)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::lab::db::{PasswordHash, Record};

    #[test]
    fn tokens_round_trip_and_bad_ones_are_refused() {
        let token = Token(1234);
        assert_eq!(
            token.to_string(),
            "00000000000000001234,00000000000000000000"
        );
        assert_eq!(Token::parse(&token.to_string()), Ok(token));
        assert_eq!(Token::parse(""), Ok(Token(0)));
        assert_eq!(Token::parse("17"), Ok(Token(17)));
        for bad in ["x", "1,", ",1", "-1,0", "1,2,3"] {
            assert!(Token::parse(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn changes_collapse_per_object_and_report_deletions_of_seen_objects() {
        let mut db = Db::new(PasswordHash::new("pw"));
        let seen = db.insert(Class::Vm, Record::new());
        let gone = db.insert(Class::Vm, Record::new());
        let token = db.token();
        db.set(Class::Vm, &seen, "name_label", "a".into()).unwrap();
        db.set(Class::Vm, &seen, "name_label", "b".into()).unwrap();
        db.remove(Class::Vm, &gone).unwrap();
        let fresh = db.insert(Class::Vm, Record::new());
        db.remove(Class::Vm, &fresh).unwrap();
        let everything = Subscription::parse(["*"]);
        let changes = db.changes_since(&everything, token).unwrap();
        let kinds: Vec<_> = changes
            .iter()
            .map(|c| (c.reference.as_str(), c.kind))
            .collect();
        assert_eq!(
            kinds,
            vec![
                (seen.as_str(), ChangeKind::Mod),
                (gone.as_str(), ChangeKind::Del)
            ]
        );
        assert!(
            db.changes_since(&everything, db.token())
                .unwrap()
                .is_empty()
        );
        let from_start = db.changes_since(&everything, Token(0)).unwrap();
        assert_eq!(from_start.len(), 1);
        assert_eq!(from_start[0].kind, ChangeKind::Add);
    }

    #[test]
    fn subscriptions_match_classes_without_case_and_single_objects() {
        let mut db = Db::new(PasswordHash::new("pw"));
        let vm = db.insert(Class::Vm, Record::new());
        let other = db.insert(Class::Vm, Record::new());
        let _vdi = db.insert(Class::Vdi, Record::new());
        let by_class = Subscription::parse(["Vm", "nonsense"]);
        assert_eq!(db.changes_since(&by_class, Token(0)).unwrap().len(), 2);
        let one = format!("vm/{vm}");
        let by_object = Subscription::parse([one.as_str()]);
        let changes = db.changes_since(&by_object, Token(0)).unwrap();
        assert_eq!(changes.len(), 1);
        assert_ne!(changes[0].reference, other);
        assert_eq!(by_object.classes(), vec![Class::Vm]);
    }

    #[test]
    fn sessions_are_never_events_even_when_asked_for() {
        let mut db = Db::new(PasswordHash::new("pw"));
        let vm = db.insert(Class::Vm, Record::new());
        let session = db.insert(Class::Session, Record::new());
        for names in [
            &["*"][..],
            &["session", "vm"],
            &[&format!("session/{session}")],
        ] {
            let watched = Subscription::parse(names.iter().copied());
            let changes = db.changes_since(&watched, Token(0)).unwrap();
            assert!(
                changes.iter().all(|c| c.class != Class::Session),
                "{names:?}: {changes:?}"
            );
            assert!(!watched.classes().contains(&Class::Session), "{names:?}");
        }
        let everything = Subscription::parse(["*"]);
        let token = db.token();
        db.remove(Class::Session, &session).unwrap();
        assert!(db.changes_since(&everything, token).unwrap().is_empty());
        let changes = db.changes_since(&everything, Token(0)).unwrap();
        assert_eq!(changes.len(), 1);
        assert_eq!(changes[0].reference, vm);
    }
}
