//! The database as a JSON document, for the state file: the persistent classes' records (not
//! sessions or tasks), their secrets, the generation counter, the root password's hash and
//! the lab's settings.
//!
//! ```json
//! {"format": 1, "generation": 42,
//!  "root_password": {"salt": "<hex>", "sha256": "<hex>"},
//!  "settings": {"boot_delay_ms": 2000},
//!  "objects": {"VM": {"OpaqueRef:…": {"uuid": "…", "memory_static_max": 1073741824, …}}},
//!  "secrets": {"OpaqueRef:…": "<a VTPM's contents>"}}
//! ```
//!
//! Values are plain JSON; loading re-types them by the schema (an int stays an int, a
//! datetime becomes a datetime again). Fields added to the schema since the file was written
//! take their defaults; fields it no longer has are dropped. A file without `settings` or
//! `secrets` (written before them) gets the default settings and no secrets; a secret whose
//! object is gone is dropped.

use std::collections::BTreeMap;

use serde_json::{Map, Value as Json, json};

use super::schema::{Class, Kind};
use super::{Db, PasswordHash, Record, Row, Settings};
use crate::xapi::rpc::Value;

const FORMAT: u64 = 1;

/// Why a state document could not be read, naming the object and field at fault.
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct StateFormatError(String);

impl Db {
    /// The persistent part of the database as a JSON document.
    pub fn to_state_json(&self) -> Vec<u8> {
        let (salt, sha256) = self.root_password.to_hex();
        let objects: Map<String, Json> = Class::ALL
            .into_iter()
            .filter(|class| class.is_persistent())
            .map(|class| {
                let rows: Map<String, Json> = self
                    .records(class)
                    .map(|(reference, record)| {
                        let fields = record
                            .iter()
                            .map(|(name, value)| (name.clone(), to_json(value)))
                            .collect();
                        (reference.clone(), Json::Object(fields))
                    })
                    .collect();
                (class.name().to_owned(), Json::Object(rows))
            })
            .collect();
        let secrets: Map<String, Json> = self
            .secrets
            .iter()
            .map(|(reference, value)| (reference.clone(), Json::from(value.as_str())))
            .collect();
        let boot_delay_ms = u64::try_from(self.settings.boot_delay.as_millis()).unwrap_or(u64::MAX);
        let document = json!({
            "format": FORMAT,
            "generation": self.generation,
            "root_password": {"salt": salt, "sha256": sha256},
            "settings": {"boot_delay_ms": boot_delay_ms},
            "objects": objects,
            "secrets": secrets,
        });
        serde_json::to_vec_pretty(&document).expect("JSON values always serialise")
    }

    /// Read a document written by [`Db::to_state_json`]. Every loaded object counts as
    /// created at the saved generation, and deletions before it are forgotten.
    pub fn from_state_json(bytes: &[u8]) -> Result<Db, StateFormatError> {
        let fail = |detail: String| StateFormatError(detail);
        let document: Json =
            serde_json::from_slice(bytes).map_err(|e| fail(format!("not JSON: {e}")))?;
        let format = document.get("format").and_then(Json::as_u64);
        if format != Some(FORMAT) {
            return Err(fail(format!(
                "format {format:?}: this version reads format {FORMAT}"
            )));
        }
        let password = document
            .get("root_password")
            .and_then(|p| {
                PasswordHash::from_hex(p.get("salt")?.as_str()?, p.get("sha256")?.as_str()?)
            })
            .ok_or_else(|| fail("root_password: missing or malformed".into()))?;
        // Generation 0 would make loaded objects invisible to a token of "" (0).
        let generation = document
            .get("generation")
            .and_then(Json::as_u64)
            .ok_or_else(|| fail("generation: missing or not a number".into()))?
            .max(1);
        let mut db = Db::new(password);
        db.generation = generation;
        db.deletions_known_since = generation;
        let objects = document.get("objects").and_then(Json::as_object);
        for class in Class::ALL.into_iter().filter(|c| c.is_persistent()) {
            let rows = objects
                .and_then(|o| o.get(class.name()))
                .and_then(Json::as_object);
            for (reference, fields) in rows.into_iter().flatten() {
                let record = record_from_json(class, reference, fields)?;
                db.table_mut(class).insert(
                    reference.clone(),
                    Row {
                        record,
                        created: generation,
                        modified: generation,
                    },
                );
            }
        }
        db.settings = settings_from_json(document.get("settings"))?;
        let secrets = document.get("secrets").and_then(Json::as_object);
        for (reference, value) in secrets.into_iter().flatten() {
            let value = value
                .as_str()
                .ok_or_else(|| fail(format!("secrets: {reference}: {value} is not a string")))?;
            let owned = Class::ALL
                .into_iter()
                .any(|class| db.exists(class, reference));
            if owned {
                db.secrets.insert(reference.clone(), value.to_owned());
            }
        }
        db.rebuild_links();
        for class in Class::ALL {
            for row in db.table_mut(class).values_mut() {
                super::derived::refresh(class, &mut row.record);
            }
        }
        db.unsaved = false;
        Ok(db)
    }
}

/// The settings saved, each taking its default when missing.
fn settings_from_json(settings: Option<&Json>) -> Result<Settings, StateFormatError> {
    let mut read = Settings::default();
    let Some(settings) = settings else {
        return Ok(read);
    };
    if let Some(delay) = settings.get("boot_delay_ms") {
        let ms = delay.as_u64().ok_or_else(|| {
            StateFormatError(format!(
                "settings: boot_delay_ms: {delay} is not a number of milliseconds"
            ))
        })?;
        read.boot_delay = std::time::Duration::from_millis(ms);
    }
    Ok(read)
}

fn record_from_json(
    class: Class,
    reference: &str,
    fields: &Json,
) -> Result<Record, StateFormatError> {
    let fields = fields
        .as_object()
        .ok_or_else(|| StateFormatError(format!("{} {reference}: not an object", class.name())))?;
    class
        .fields()
        .iter()
        .map(|field| {
            let value = match fields.get(field.name) {
                None => field.default_value(),
                Some(json) => from_json(field.kind, json).ok_or_else(|| {
                    StateFormatError(format!(
                        "{} {reference}: field {}: {json} does not fit its type",
                        class.name(),
                        field.name
                    ))
                })?,
            };
            Ok((field.name.to_owned(), value))
        })
        .collect()
}

fn to_json(value: &Value) -> Json {
    match value {
        Value::String(text) | Value::DateTime(text) => Json::from(text.as_str()),
        Value::Int(n) => Json::from(*n),
        Value::Double(x) => Json::from(*x),
        Value::Bool(b) => Json::from(*b),
        Value::Array(items) => Json::Array(items.iter().map(to_json).collect()),
        Value::Struct(members) => Json::Object(
            members
                .iter()
                .map(|(k, v)| (k.clone(), to_json(v)))
                .collect(),
        ),
        Value::Nil => Json::Null,
    }
}

fn from_json(kind: Kind, json: &Json) -> Option<Value> {
    let text = |j: &Json| j.as_str().map(Value::from);
    Some(match kind {
        Kind::Text | Kind::Enum(_) | Kind::Ref(_) => text(json)?,
        Kind::Int => Value::Int(json.as_i64()?),
        Kind::Float => Value::Double(json.as_f64()?),
        Kind::Bool => Value::Bool(json.as_bool()?),
        Kind::DateTime => Value::DateTime(json.as_str()?.to_owned()),
        Kind::Set => Value::Array(json.as_array()?.iter().map(text).collect::<Option<_>>()?),
        Kind::IntSet => Value::Array(
            json.as_array()?
                .iter()
                .map(|j| j.as_i64().map(Value::Int))
                .collect::<Option<_>>()?,
        ),
        Kind::Map(_) => Value::Struct(
            json.as_object()?
                .iter()
                .map(|(k, v)| Some((k.clone(), text(v)?)))
                .collect::<Option<BTreeMap<_, _>>>()?,
        ),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn persistent_objects_round_trip_with_their_types_and_links() {
        let mut db = Db::new(PasswordHash::new("pw"));
        let vm = db.insert(Class::Vm, Record::new());
        db.set(Class::Vm, &vm, "memory_static_max", Value::Int(1 << 40))
            .unwrap();
        db.set(
            Class::Vm,
            &vm,
            "snapshot_time",
            Value::DateTime("20250319T04:16:24Z".into()),
        )
        .unwrap();
        let vbd = db.insert(
            Class::Vbd,
            [("VM".to_owned(), Value::from(vm.as_str()))].into(),
        );
        db.insert(Class::Session, Record::new());
        let loaded = Db::from_state_json(&db.to_state_json()).unwrap();
        assert_eq!(loaded.record(Class::Vm, &vm), db.record(Class::Vm, &vm));
        assert_eq!(loaded.set_items(Class::Vm, &vm, "VBDs").unwrap(), vec![vbd]);
        assert_eq!(
            loaded.count(Class::Session),
            0,
            "sessions are not persisted"
        );
        assert!(loaded.root_password().verify("pw"));
        assert_eq!(loaded.generation(), db.generation());
    }

    #[test]
    fn settings_and_secrets_round_trip_and_secrets_follow_their_objects() {
        let mut db = Db::new(PasswordHash::new("pw"));
        let vm = db.insert(Class::Vm, Record::new());
        let vtpm = db.insert(
            Class::Vtpm,
            [("VM".to_owned(), Value::from(vm.as_str()))].into(),
        );
        db.set_secret(Class::Vtpm, &vtpm, "c2VjcmV0".into())
            .unwrap();
        assert!(
            db.set_secret(Class::Vtpm, "OpaqueRef:gone", "x".into())
                .is_err()
        );
        let settings = Settings {
            boot_delay: std::time::Duration::from_millis(250),
        };
        db.set_settings(settings);
        let loaded = Db::from_state_json(&db.to_state_json()).unwrap();
        assert_eq!(loaded.settings(), settings);
        assert_eq!(loaded.secret(&vtpm), Some("c2VjcmV0"));
        assert_eq!(
            loaded.set_items(Class::Vm, &vm, "VTPMs").unwrap(),
            vec![vtpm.clone()]
        );

        // A file from before settings and secrets loads with the defaults.
        let mut old: Json = serde_json::from_slice(&db.to_state_json()).unwrap();
        let document = old.as_object_mut().unwrap();
        document.remove("settings");
        document.remove("secrets");
        let loaded = Db::from_state_json(&serde_json::to_vec(&old).unwrap()).unwrap();
        assert_eq!(loaded.settings(), Settings::default());
        assert_eq!(loaded.secret(&vtpm), None);

        db.remove(Class::Vtpm, &vtpm).unwrap();
        assert_eq!(db.secret(&vtpm), None, "a secret goes with its object");
    }

    #[test]
    fn ill_typed_fields_are_reported_with_their_object() {
        let mut db = Db::new(PasswordHash::new("pw"));
        let vm = db.insert(Class::Vm, Record::new());
        let text = String::from_utf8(db.to_state_json()).unwrap();
        let broken = text.replace("\"domid\": -1", "\"domid\": \"minus one\"");
        let error = Db::from_state_json(broken.as_bytes()).err().unwrap();
        let message = error.to_string();
        assert!(
            message.contains(&vm) && message.contains("domid"),
            "{message}"
        );
    }
}
