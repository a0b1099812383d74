//! The lab host's object database: pool, host, SR, VDI, VBD, VM, task, session, network,
//! VIF, PIF and VLAN records, keyed by `OpaqueRef:<uuid>`, in memory. Pure data: no files, no
//! clock beyond the datetimes it is given, no storage; the RPC layer drives it and `state`
//! saves it.
//!
//! Every record holds every field of its class ([`schema`]): inserts fill in defaults, so all
//! records of a class have the same field set. The database keeps the derived sides of
//! links (`VM.VBDs`, `SR.VDIs`, `VDI.snapshots`, …) in step with the foreign keys and
//! recomputes fields such as `allowed_operations`. Every change bumps a generation counter and
//! stamps the object with it, which is what `event.from` reports (see `events`).

mod derived;
mod events;
mod password;
mod persist;
pub mod schema;

use std::collections::{BTreeMap, VecDeque};

use crate::xapi::rpc::{Value, XapiFault};

pub use events::{Change, ChangeKind, Subscription, Token};
pub use password::PasswordHash;
pub use persist::StateFormatError;
pub use schema::{Access, Class, EPOCH, Field, Kind, NULL_REF, Rejection};

/// A record: every field of its class, by name.
pub type Record = BTreeMap<String, Value>;

/// Deletions remembered for `event.from`; a token older than the oldest forgotten one gets
/// `EVENTS_LOST`, which makes clients reload everything.
const MAX_DELETIONS: usize = 65_536;

/// A new reference, unguessable since session references are credentials.
pub fn new_ref() -> String {
    format!("OpaqueRef:{}", uuid::Uuid::new_v4())
}

#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum DbError {
    #[error("{} {reference}: no such object", class.name())]
    HandleInvalid { class: Class, reference: String },
    #[error("{} with uuid {uuid:?}: no such object", class.name())]
    UuidInvalid { class: Class, uuid: String },
    #[error("{} {reference}: {field} already has the key {key:?}", class.name())]
    MapDuplicateKey {
        class: Class,
        field: &'static str,
        reference: String,
        key: String,
    },
    #[error("{field}: a value of the wrong type")]
    FieldType { field: String },
    #[error("{field}: {value:?} is not a valid value")]
    InvalidValue { field: String, value: String },
    #[error("events were lost: the token is older than the oldest remembered deletion")]
    EventsLost,
    #[error("{token:?} is not an event token")]
    TokenInvalid { token: String },
}

impl DbError {
    /// The error for a value a client gave for `field` that the field's kind refused.
    pub fn rejected(field: &str, rejection: Rejection) -> DbError {
        match rejection {
            Rejection::WrongType => DbError::FieldType {
                field: field.to_owned(),
            },
            Rejection::NotInEnum(value) => DbError::InvalidValue {
                field: field.to_owned(),
                value,
            },
        }
    }
}

impl From<DbError> for XapiFault {
    fn from(error: DbError) -> XapiFault {
        match error {
            DbError::HandleInvalid { class, reference } => {
                XapiFault::new("HANDLE_INVALID", [class.name().to_owned(), reference])
            }
            DbError::UuidInvalid { class, uuid } => {
                XapiFault::new("UUID_INVALID", [class.name().to_owned(), uuid])
            }
            DbError::MapDuplicateKey {
                class,
                field,
                reference,
                key,
            } => XapiFault::new(
                "MAP_DUPLICATE_KEY",
                [class.name().to_owned(), field.to_owned(), reference, key],
            ),
            DbError::FieldType { field } => XapiFault::new("FIELD_TYPE_ERROR", [field]),
            DbError::InvalidValue { field, value } => {
                XapiFault::new("INVALID_VALUE", [field, value])
            }
            DbError::EventsLost => XapiFault::new("EVENTS_LOST", Vec::<String>::new()),
            DbError::TokenInvalid { token } => {
                XapiFault::new("EVENT_FROM_TOKEN_PARSE_FAILURE", [token])
            }
        }
    }
}

/// An object and when it was created and last changed, in generations.
#[derive(Clone)]
struct Row {
    record: Record,
    created: u64,
    modified: u64,
}

/// A deleted object, remembered so `event.from` can report the deletion.
#[derive(Clone)]
struct Deletion {
    generation: u64,
    class: Class,
    reference: String,
    created: u64,
}

/// The object database. Not `Debug`: session references are credentials.
#[derive(Clone)]
pub struct Db {
    tables: [BTreeMap<String, Row>; Class::ALL.len()],
    generation: u64,
    deletions: VecDeque<Deletion>,
    /// Deletions up to this generation may have been forgotten.
    deletions_known_since: u64,
    root_password: PasswordHash,
    /// A persistent object changed since the last [`Db::take_unsaved`].
    unsaved: bool,
}

/// Read-only `Value::Nil`, returned for fields a record does not have.
static NIL: Value = Value::Nil;

impl Db {
    pub fn new(root_password: PasswordHash) -> Db {
        Db {
            tables: Default::default(),
            generation: 0,
            deletions: VecDeque::new(),
            deletions_known_since: 0,
            root_password,
            unsaved: true,
        }
    }

    pub fn root_password(&self) -> &PasswordHash {
        &self.root_password
    }

    /// The current generation: the number of changes ever made.
    pub fn generation(&self) -> u64 {
        self.generation
    }

    /// Whether a persistent object changed since the last [`Db::take_unsaved`].
    pub fn is_unsaved(&self) -> bool {
        self.unsaved
    }

    /// Whether a persistent object changed since the last call; clears the flag.
    pub fn take_unsaved(&mut self) -> bool {
        std::mem::take(&mut self.unsaved)
    }

    /// Flag the state as unsaved again, after a save failed.
    pub fn mark_unsaved(&mut self) {
        self.unsaved = true;
    }

    fn table(&self, class: Class) -> &BTreeMap<String, Row> {
        &self.tables[class.index()]
    }

    fn table_mut(&mut self, class: Class) -> &mut BTreeMap<String, Row> {
        &mut self.tables[class.index()]
    }

    pub fn exists(&self, class: Class, reference: &str) -> bool {
        self.table(class).contains_key(reference)
    }

    pub fn record(&self, class: Class, reference: &str) -> Result<&Record, DbError> {
        self.table(class)
            .get(reference)
            .map(|row| &row.record)
            .ok_or_else(|| DbError::HandleInvalid {
                class,
                reference: reference.to_owned(),
            })
    }

    /// One field of an object; `Nil` for a field its class does not have. Every read and
    /// change goes through here, so a misspelt field name is caught in debug builds.
    pub fn get(&self, class: Class, reference: &str, field: &str) -> Result<&Value, DbError> {
        debug_assert!(
            class.field(field).is_some(),
            "{} has no field {field}",
            class.name()
        );
        Ok(self.record(class, reference)?.get(field).unwrap_or(&NIL))
    }

    /// A text field (string, enum or ref); empty for other kinds.
    pub fn text(&self, class: Class, reference: &str, field: &str) -> Result<&str, DbError> {
        Ok(self.get(class, reference, field)?.as_str().unwrap_or(""))
    }

    /// The items of a set field.
    pub fn set_items(
        &self,
        class: Class,
        reference: &str,
        field: &str,
    ) -> Result<Vec<String>, DbError> {
        Ok(strings(self.get(class, reference, field)?))
    }

    pub fn refs(&self, class: Class) -> impl Iterator<Item = &String> {
        self.table(class).keys()
    }

    pub fn records(&self, class: Class) -> impl Iterator<Item = (&String, &Record)> {
        self.table(class).iter().map(|(r, row)| (r, &row.record))
    }

    pub fn count(&self, class: Class) -> usize {
        self.table(class).len()
    }

    pub fn by_uuid(&self, class: Class, uuid: &str) -> Result<&String, DbError> {
        self.records(class)
            .find(|(_, record)| record.get("uuid").and_then(Value::as_str) == Some(uuid))
            .map(|(reference, _)| reference)
            .ok_or_else(|| DbError::UuidInvalid {
                class,
                uuid: uuid.to_owned(),
            })
    }

    pub fn by_name_label(&self, class: Class, label: &str) -> Vec<String> {
        self.records(class)
            .filter(|(_, record)| record.get("name_label").and_then(Value::as_str) == Some(label))
            .map(|(reference, _)| reference.clone())
            .collect()
    }

    /// Add an object built from `fields`; returns its new reference. Fields the class does
    /// not have are dropped and missing ones take their defaults; a missing or empty `uuid`
    /// gets a fresh one. The derived sides of links start empty and are maintained from here.
    pub fn insert(&mut self, class: Class, mut fields: Record) -> String {
        let reference = new_ref();
        let mut record: Record = class
            .fields()
            .iter()
            .map(|field| {
                let value = fields
                    .remove(field.name)
                    .unwrap_or_else(|| field.default_value());
                (field.name.to_owned(), value)
            })
            .collect();
        if record
            .get("uuid")
            .and_then(Value::as_str)
            .unwrap_or("")
            .is_empty()
        {
            record.insert("uuid".into(), Value::from(uuid::Uuid::new_v4().to_string()));
        }
        for relation in schema::RELATIONS.iter().filter(|r| r.parent == class) {
            record.insert(relation.set.into(), Value::Array(Vec::new()));
        }
        derived::refresh(class, &mut record);
        let generation = self.bump(class);
        let links: Vec<_> = schema::RELATIONS
            .iter()
            .filter(|r| r.child == class)
            .map(|r| (r, text_of(&record, r.foreign_key)))
            .collect();
        self.table_mut(class).insert(
            reference.clone(),
            Row {
                record,
                created: generation,
                modified: generation,
            },
        );
        for (relation, parent) in links {
            self.link(relation.parent, &parent, relation.set, &reference, true);
        }
        reference
    }

    /// Recompute the fields derived from the rest of the record, as xapi's
    /// `update_allowed_operations` does; an object whose derived fields were current is left
    /// as it was (no event).
    pub fn refresh_derived(&mut self, class: Class, reference: &str) -> Result<(), DbError> {
        let record = self.record(class, reference)?;
        let mut fresh = record.clone();
        derived::refresh(class, &mut fresh);
        if &fresh != record {
            self.modify(class, reference, |_| {})?;
        }
        Ok(())
    }

    /// Replace one field's value; the caller has checked it fits the field's kind.
    pub fn set(
        &mut self,
        class: Class,
        reference: &str,
        field: &str,
        value: Value,
    ) -> Result<(), DbError> {
        let old = self.get(class, reference, field)?.clone();
        if old == value {
            return Ok(());
        }
        let new_parent = value.as_str().unwrap_or("").to_owned();
        self.modify(class, reference, |record| {
            record.insert(field.to_owned(), value);
        })?;
        for relation in schema::RELATIONS
            .iter()
            .filter(|r| r.child == class && r.foreign_key == field)
        {
            let old_parent = old.as_str().unwrap_or("");
            self.link(relation.parent, old_parent, relation.set, reference, false);
            self.link(relation.parent, &new_parent, relation.set, reference, true);
        }
        Ok(())
    }

    /// `add_to_<map>`: fails with `MAP_DUPLICATE_KEY` when the key is already there.
    pub fn add_to_map(
        &mut self,
        class: Class,
        reference: &str,
        field: &'static str,
        key: &str,
        value: String,
    ) -> Result<(), DbError> {
        let present = self.get(class, reference, field)?.get(key).is_some();
        if present {
            return Err(DbError::MapDuplicateKey {
                class,
                field,
                reference: reference.to_owned(),
                key: key.to_owned(),
            });
        }
        self.set_map_entry(class, reference, field, key, Some(value))
    }

    /// Set (`Some`) or remove (`None`) one key of a map field. Removing a missing key
    /// succeeds without a change, as `remove_from_<map>` does.
    pub fn set_map_entry(
        &mut self,
        class: Class,
        reference: &str,
        field: &str,
        key: &str,
        value: Option<String>,
    ) -> Result<(), DbError> {
        let current = self.get(class, reference, field)?;
        let unchanged = match &value {
            Some(v) => current.get(key).and_then(Value::as_str) == Some(v.as_str()),
            None => current.get(key).is_none(),
        };
        if unchanged {
            return Ok(());
        }
        self.modify(class, reference, |record| {
            if let Some(Value::Struct(map)) = record.get_mut(field) {
                match value {
                    Some(v) => map.insert(key.to_owned(), Value::from(v)),
                    None => map.remove(key),
                };
            }
        })
    }

    /// Add an item to a set field (`add_<set>`); an item already there is not repeated.
    pub fn add_to_set(
        &mut self,
        class: Class,
        reference: &str,
        field: &str,
        item: Value,
    ) -> Result<(), DbError> {
        let present = self
            .get(class, reference, field)?
            .as_array()
            .is_some_and(|items| items.contains(&item));
        if present {
            return Ok(());
        }
        self.modify(class, reference, |record| {
            if let Some(Value::Array(items)) = record.get_mut(field) {
                items.push(item);
            }
        })
    }

    /// Remove an item from a set field (`remove_<set>`); a missing item is no error.
    pub fn remove_from_set(
        &mut self,
        class: Class,
        reference: &str,
        field: &str,
        item: &Value,
    ) -> Result<(), DbError> {
        let present = self
            .get(class, reference, field)?
            .as_array()
            .is_some_and(|items| items.contains(item));
        if !present {
            return Ok(());
        }
        self.modify(class, reference, |record| {
            if let Some(Value::Array(items)) = record.get_mut(field) {
                items.retain(|i| i != item);
            }
        })
    }

    /// Delete an object; returns its last record. Links from other objects to it are left
    /// dangling, as in XAPI (a snapshot's `snapshot_of` outlives the VM).
    pub fn remove(&mut self, class: Class, reference: &str) -> Result<Record, DbError> {
        if !self.exists(class, reference) {
            return Err(DbError::HandleInvalid {
                class,
                reference: reference.to_owned(),
            });
        }
        let generation = self.bump(class);
        let row = self
            .table_mut(class)
            .remove(reference)
            .expect("checked above");
        for relation in schema::RELATIONS.iter().filter(|r| r.child == class) {
            let parent = text_of(&row.record, relation.foreign_key);
            self.link(relation.parent, &parent, relation.set, reference, false);
        }
        self.deletions.push_back(Deletion {
            generation,
            class,
            reference: reference.to_owned(),
            created: row.created,
        });
        if self.deletions.len() > MAX_DELETIONS
            && let Some(forgotten) = self.deletions.pop_front()
        {
            self.deletions_known_since = forgotten.generation;
        }
        Ok(row.record)
    }

    /// Delete the oldest objects of `class` that `eligible` accepts, beyond the newest `keep`
    /// of them. Age is creation order.
    pub fn evict_oldest(&mut self, class: Class, keep: usize, eligible: impl Fn(&Record) -> bool) {
        let mut candidates: Vec<(u64, String)> = self
            .table(class)
            .iter()
            .filter(|(_, row)| eligible(&row.record))
            .map(|(reference, row)| (row.created, reference.clone()))
            .collect();
        if candidates.len() <= keep {
            return;
        }
        candidates.sort_unstable();
        let excess = candidates.len() - keep;
        for (_, reference) in candidates.into_iter().take(excess) {
            drop(self.remove(class, &reference));
        }
    }

    /// Mark an object as changed without changing it (`event.inject`); returns the token
    /// from just before, so `event.from` with it reports this change.
    pub fn touch(&mut self, class: Class, reference: &str) -> Result<Token, DbError> {
        let before = Token(self.generation);
        self.modify(class, reference, |_| {})?;
        Ok(before)
    }

    /// Apply `change` to a record, recompute its derived fields and stamp the generation.
    fn modify(
        &mut self,
        class: Class,
        reference: &str,
        change: impl FnOnce(&mut Record),
    ) -> Result<(), DbError> {
        if !self.exists(class, reference) {
            return Err(DbError::HandleInvalid {
                class,
                reference: reference.to_owned(),
            });
        }
        let generation = self.bump(class);
        let row = self
            .table_mut(class)
            .get_mut(reference)
            .expect("checked above");
        change(&mut row.record);
        derived::refresh(class, &mut row.record);
        row.modified = generation;
        Ok(())
    }

    /// Add (`present`) or remove `child` in the set `set` of `parent`, if that object exists.
    fn link(&mut self, class: Class, parent: &str, set: &str, child: &str, present: bool) {
        let item = Value::from(child);
        let result = if present {
            self.add_to_set(class, parent, set, item)
        } else {
            self.remove_from_set(class, parent, set, &item)
        };
        // A null or dangling foreign key links to nothing.
        drop(result);
    }

    fn bump(&mut self, class: Class) -> u64 {
        self.generation += 1;
        if class.is_persistent() {
            self.unsaved = true;
        }
        self.generation
    }

    /// Make every derived link set list exactly the objects whose foreign key names its
    /// owner, keeping the order of members already listed. Used after loading a saved state.
    fn rebuild_links(&mut self) {
        for relation in schema::RELATIONS {
            let mut children: BTreeMap<String, Vec<String>> = BTreeMap::new();
            for (child, record) in self.records(relation.child) {
                children
                    .entry(text_of(record, relation.foreign_key))
                    .or_default()
                    .push(child.clone());
            }
            for (parent, row) in self.table_mut(relation.parent).iter_mut() {
                let valid = children.remove(parent.as_str()).unwrap_or_default();
                let mut members: Vec<String> = strings(&row.record[relation.set])
                    .into_iter()
                    .filter(|m| valid.contains(m))
                    .collect();
                for child in valid {
                    if !members.contains(&child) {
                        members.push(child);
                    }
                }
                row.record
                    .insert(relation.set.to_owned(), Value::from(members));
            }
        }
    }
}

fn text_of(record: &Record, field: &str) -> String {
    record
        .get(field)
        .and_then(Value::as_str)
        .unwrap_or("")
        .to_owned()
}

/// The strings of a set value.
pub fn strings(value: &Value) -> Vec<String> {
    value
        .as_array()
        .unwrap_or_default()
        .iter()
        .filter_map(|item| item.as_str().map(str::to_owned))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn db() -> Db {
        Db::new(PasswordHash::new("pw"))
    }

    fn record(pairs: &[(&str, Value)]) -> Record {
        pairs
            .iter()
            .map(|(k, v)| ((*k).to_owned(), v.clone()))
            .collect()
    }

    #[test]
    fn inserts_fill_every_field_and_links_follow_foreign_keys() {
        let mut db = db();
        let vm = db.insert(Class::Vm, record(&[("name_label", "a".into())]));
        assert_eq!(
            db.record(Class::Vm, &vm).unwrap().len(),
            Class::Vm.fields().len()
        );
        let vbd = db.insert(Class::Vbd, record(&[("VM", vm.as_str().into())]));
        assert_eq!(
            db.set_items(Class::Vm, &vm, "VBDs").unwrap(),
            vec![vbd.clone()]
        );
        let other = db.insert(Class::Vm, Record::new());
        db.set(Class::Vbd, &vbd, "VM", other.as_str().into())
            .unwrap();
        assert!(db.set_items(Class::Vm, &vm, "VBDs").unwrap().is_empty());
        assert_eq!(
            db.set_items(Class::Vm, &other, "VBDs").unwrap(),
            vec![vbd.clone()]
        );
        db.remove(Class::Vbd, &vbd).unwrap();
        assert!(db.set_items(Class::Vm, &other, "VBDs").unwrap().is_empty());
    }

    #[test]
    fn map_semantics_match_xapi() {
        let mut db = db();
        let vm = db.insert(Class::Vm, Record::new());
        db.add_to_map(Class::Vm, &vm, "other_config", "k", "1".into())
            .unwrap();
        let duplicate = db
            .add_to_map(Class::Vm, &vm, "other_config", "k", "2".into())
            .unwrap_err();
        assert!(matches!(duplicate, DbError::MapDuplicateKey { .. }));
        let before = db.generation();
        db.set_map_entry(Class::Vm, &vm, "other_config", "missing", None)
            .unwrap();
        assert_eq!(
            db.generation(),
            before,
            "removing a missing key changes nothing"
        );
    }

    #[test]
    fn eviction_removes_only_the_oldest_eligible_objects() {
        let mut db = db();
        let done = |db: &mut Db| db.insert(Class::Task, record(&[("status", "success".into())]));
        let oldest = done(&mut db);
        let pending = db.insert(Class::Task, Record::new());
        let newer = done(&mut db);
        let newest = done(&mut db);
        db.evict_oldest(Class::Task, 2, |task| {
            task["status"] != Value::from("pending")
        });
        assert!(!db.exists(Class::Task, &oldest));
        for kept in [&pending, &newer, &newest] {
            assert!(db.exists(Class::Task, kept));
        }
    }

    #[test]
    fn rebuilding_links_heals_sets_and_keeps_order() {
        let mut db = db();
        let vm = db.insert(Class::Vm, Record::new());
        let a = db.insert(Class::Vbd, record(&[("VM", vm.as_str().into())]));
        let b = db.insert(Class::Vbd, record(&[("VM", vm.as_str().into())]));
        let row = db.table_mut(Class::Vm).get_mut(&vm).unwrap();
        row.record.insert(
            "VBDs".into(),
            Value::from(vec![b.as_str(), "OpaqueRef:gone"]),
        );
        db.rebuild_links();
        assert_eq!(db.set_items(Class::Vm, &vm, "VBDs").unwrap(), vec![b, a]);
    }
}
