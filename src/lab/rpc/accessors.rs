//! The messages XAPI generates for every class from its fields: `get_all`,
//! `get_all_records`, `get_record`, `get_by_uuid`, `get_by_name_label`, `get_<field>`, and
//! for writable fields `set_<field>`, `add_to_<map>` / `remove_from_<map>` and
//! `add_<set>` / `remove_<set>` (protocol reference §2.3, §2.4). Sessions, like xapi's, have
//! no `get_all` or `get_all_records` ([`Class::lists_all`]).

use super::args::{Invocation, Param};
use super::{live, setter_rules};
use crate::lab::db::{
    Access, Class, Db, DbError, Field, Kind, NULL_REF, Record, schema::map_value,
};
use crate::lab::state::Lab;
use crate::xapi::rpc::{Response, Value, XapiFault};

#[derive(Debug, Clone, Copy)]
pub(super) enum Accessor {
    GetAll,
    GetAllRecords,
    GetRecord,
    GetByUuid,
    GetByNameLabel,
    Get(&'static Field),
    Set(&'static Field),
    AddToMap(&'static Field),
    RemoveFromMap(&'static Field),
    AddToSet(&'static Field),
    RemoveFromSet(&'static Field),
}

const SELF: &[Param] = &[Param::Required("self")];
const SELF_VALUE: &[Param] = &[Param::Required("self"), Param::Required("value")];
const SELF_KEY: &[Param] = &[Param::Required("self"), Param::Required("key")];
const SELF_KEY_VALUE: &[Param] = &[
    Param::Required("self"),
    Param::Required("key"),
    Param::Required("value"),
];

fn writable(field: &Field) -> bool {
    field.access == Access::ReadWrite
}

impl Accessor {
    pub fn resolve(class: Class, name: &str) -> Option<Accessor> {
        match name {
            "get_all" if class.lists_all() => return Some(Accessor::GetAll),
            "get_all_records" if class.lists_all() => return Some(Accessor::GetAllRecords),
            "get_record" => return Some(Accessor::GetRecord),
            "get_by_uuid" => return Some(Accessor::GetByUuid),
            "get_by_name_label" if class.has_name_lookup() => {
                return Some(Accessor::GetByNameLabel);
            }
            _ => {}
        }
        let field = |prefix: &str, fits: fn(&Field) -> bool| {
            name.strip_prefix(prefix)
                .and_then(|field| class.field(field))
                .filter(|field| fits(field))
        };
        // `add_to_`/`remove_from_` before `add_`/`remove_`, which they also start with.
        field("get_", |_| true)
            .map(Accessor::Get)
            .or_else(|| field("set_", |f| f.access.has_setter()).map(Accessor::Set))
            .or_else(|| field("add_to_", |f| writable(f) && f.is_map()).map(Accessor::AddToMap))
            .or_else(|| {
                field("remove_from_", |f| writable(f) && f.is_map()).map(Accessor::RemoveFromMap)
            })
            .or_else(|| field("add_", |f| writable(f) && f.is_set()).map(Accessor::AddToSet))
            .or_else(|| {
                field("remove_", |f| writable(f) && f.is_set()).map(Accessor::RemoveFromSet)
            })
    }

    pub fn params(self) -> &'static [Param] {
        match self {
            Accessor::GetAll | Accessor::GetAllRecords => &[],
            Accessor::GetByUuid => &[Param::Required("uuid")],
            Accessor::GetByNameLabel => &[Param::Required("label")],
            Accessor::GetRecord | Accessor::Get(_) => SELF,
            Accessor::Set(_) | Accessor::AddToSet(_) | Accessor::RemoveFromSet(_) => SELF_VALUE,
            Accessor::AddToMap(_) => SELF_KEY_VALUE,
            Accessor::RemoveFromMap(_) => SELF_KEY,
        }
    }

    /// The accessor names a class answers, for `system.listMethods`: every candidate name
    /// that [`Accessor::resolve`] accepts, so the list and the routing cannot disagree.
    pub fn names(class: Class) -> Vec<String> {
        const WHOLE_CLASS: [&str; 5] = [
            "get_all",
            "get_all_records",
            "get_record",
            "get_by_uuid",
            "get_by_name_label",
        ];
        const PER_FIELD: [&str; 6] = ["get_", "set_", "add_to_", "remove_from_", "add_", "remove_"];
        let per_field = class
            .fields()
            .iter()
            .flat_map(|field| PER_FIELD.map(|prefix| format!("{prefix}{}", field.name)));
        WHOLE_CLASS
            .map(String::from)
            .into_iter()
            .chain(per_field)
            .filter(|name| Accessor::resolve(class, name).is_some())
            .collect()
    }
}

pub(super) fn run(lab: &Lab, class: Class, accessor: Accessor, call: &Invocation) -> Response {
    match accessor {
        Accessor::GetAll => {
            lab.with_db(|db| Ok(Value::from(db.refs(class).cloned().collect::<Vec<_>>())))
        }
        Accessor::GetAllRecords => lab.with_db(|db| {
            let records = db
                .refs(class)
                .map(|reference| Ok((reference.clone(), live::present(lab, db, class, reference)?)))
                .collect::<Result<_, DbError>>()?;
            Ok(Value::Struct(records))
        }),
        Accessor::GetRecord => {
            let reference = call.text(0)?;
            lab.with_db(|db| Ok(live::present(lab, db, class, reference)?))
        }
        Accessor::GetByUuid => {
            let uuid = call.text(0)?;
            lab.with_db(|db| Ok(Value::from(db.by_uuid(class, uuid)?.as_str())))
        }
        Accessor::GetByNameLabel => {
            let label = call.text(0)?;
            lab.with_db(|db| Ok(Value::from(db.by_name_label(class, label))))
        }
        Accessor::Get(field) => {
            let reference = call.text(0)?;
            lab.with_db(|db| {
                let record = live::present(lab, db, class, reference)?;
                Ok(record.get(field.name).cloned().unwrap_or(Value::Nil))
            })
        }
        Accessor::Set(field) => {
            let reference = call.text(0)?;
            let value = field
                .kind
                .accept(call.value(1))
                .map_err(|r| DbError::rejected(field.name, r))?;
            lab.with_db_mut(|db| {
                db.record(class, reference)?;
                check_target_exists(db, field, &value)?;
                setter_rules::check(db, class, reference, field, &value)?;
                db.set(class, reference, field.name, value)?;
                Ok(Value::void())
            })
        }
        Accessor::AddToMap(field) => {
            let (reference, key) = (call.text(0)?, call.text(1)?);
            field
                .kind
                .accept_key(key)
                .map_err(|r| DbError::rejected(field.name, r))?;
            let value = map_value(call.value(2)).map_err(|r| DbError::rejected("value", r))?;
            lab.with_db_mut(|db| {
                db.add_to_map(class, reference, field.name, key, value)?;
                Ok(Value::void())
            })
        }
        Accessor::RemoveFromMap(field) => {
            let (reference, key) = (call.text(0)?, call.text(1)?);
            field
                .kind
                .accept_key(key)
                .map_err(|r| DbError::rejected(field.name, r))?;
            lab.with_db_mut(|db| {
                db.set_map_entry(class, reference, field.name, key, None)?;
                Ok(Value::void())
            })
        }
        Accessor::AddToSet(field) | Accessor::RemoveFromSet(field) => {
            let reference = call.text(0)?;
            let item = Value::from(call.text(1)?);
            lab.with_db_mut(|db| {
                if matches!(accessor, Accessor::AddToSet(_)) {
                    db.add_to_set(class, reference, field.name, item)?;
                } else {
                    db.remove_from_set(class, reference, field.name, &item)?;
                }
                Ok(Value::void())
            })
        }
    }
}

/// A reference stored into a field must name an existing object of a class the lab host
/// has, or be null; references to classes it lacks are kept as given.
fn check_target_exists(db: &Db, field: &Field, value: &Value) -> Result<(), XapiFault> {
    let Kind::Ref(target) = field.kind else {
        return Ok(());
    };
    let reference = value.as_str().unwrap_or(NULL_REF);
    match Class::from_name(target) {
        Some(class) if reference != NULL_REF && !db.exists(class, reference) => {
            Err(DbError::HandleInvalid {
                class,
                reference: reference.to_owned(),
            }
            .into())
        }
        _ => Ok(()),
    }
}

/// The fields of a record given to `<class>.create`, each checked against its kind. Fields
/// the server maintains (RO/runtime) and names the class lacks are ignored, as xapi ignores
/// them; missing ones take their defaults when the object is inserted.
pub(super) fn constructor_fields(
    class: Class,
    given: &std::collections::BTreeMap<String, Value>,
) -> Result<Record, XapiFault> {
    class
        .fields()
        .iter()
        .filter(|field| field.access.given_at_creation())
        .filter_map(|field| Some((field, given.get(field.name)?)))
        .map(|(field, value)| {
            let value = field
                .kind
                .accept(value)
                .map_err(|r| DbError::rejected(field.name, r))?;
            Ok((field.name.to_owned(), value))
        })
        .collect()
}
