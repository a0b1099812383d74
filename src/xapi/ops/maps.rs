//! `(string -> string) map` fields such as `other_config`: set and remove entries in as few
//! calls as the map allows.

use crate::xapi::client::{ClientError, XapiClient};
use crate::xapi::records::StringMap;
use crate::xapi::rpc::Value;

/// The classes whose map fields replication writes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Class {
    Vm,
    Vdi,
}

impl Class {
    fn name(self) -> &'static str {
        match self {
            Class::Vm => "VM",
            Class::Vdi => "VDI",
        }
    }
}

/// The map fields replication writes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum MapName {
    OtherConfig,
    /// VM only.
    BlockedOperations,
}

impl MapName {
    fn name(self) -> &'static str {
        match self {
            MapName::OtherConfig => "other_config",
            MapName::BlockedOperations => "blocked_operations",
        }
    }
}

impl XapiClient {
    /// Set map entries in as few calls as the map allows. The map is read once: an entry
    /// it already holds is left alone, an absent key is added, a changed one is removed and
    /// added again (`add_to_<map>` refuses an existing key with `MAP_DUPLICATE_KEY`;
    /// `remove_from_<map>` ignores a missing one). A key another client added since the
    /// read is replaced the same way. Why: each call is a round trip to the host, and a
    /// cycle sets dozens of keys.
    pub async fn set_entries(
        &self,
        class: Class,
        reference: &str,
        map: MapName,
        entries: &[(&str, &str)],
    ) -> Result<(), ClientError> {
        let field = MapField {
            host: self,
            class,
            reference,
            map,
        };
        let mut held = field.read().await?;
        self.set_entries_in(class, reference, map, &mut held, entries)
            .await
    }

    /// [`XapiClient::set_entries`] against `held`, the map as the caller just read it (with
    /// the object's record), which saves reading it again; `held` follows the writes.
    pub async fn set_entries_in(
        &self,
        class: Class,
        reference: &str,
        map: MapName,
        held: &mut StringMap,
        entries: &[(&str, &str)],
    ) -> Result<(), ClientError> {
        let field = MapField {
            host: self,
            class,
            reference,
            map,
        };
        for (key, value) in entries {
            match held.get(*key) {
                Some(current) if current == value => {}
                Some(_) => field.replace(key, value).await?,
                None => match field.add(key, value).await {
                    Err(e) if e.xapi_code() == Some("MAP_DUPLICATE_KEY") => {
                        field.replace(key, value).await?
                    }
                    added => added?,
                },
            }
            held.insert((*key).to_owned(), (*value).to_owned());
        }
        Ok(())
    }

    /// [`XapiClient::set_entries`] with every entry of `map`.
    pub async fn set_map(
        &self,
        class: Class,
        reference: &str,
        map: MapName,
        entries: &StringMap,
    ) -> Result<(), ClientError> {
        let pairs: Vec<(&str, &str)> = entries
            .iter()
            .map(|(k, v)| (k.as_str(), v.as_str()))
            .collect();
        self.set_entries(class, reference, map, &pairs).await
    }

    /// The whole map, e.g. a VM's `other_config`.
    pub async fn map_entries(
        &self,
        class: Class,
        reference: &str,
        map: MapName,
    ) -> Result<StringMap, ClientError> {
        MapField {
            host: self,
            class,
            reference,
            map,
        }
        .read()
        .await
    }

    /// Add one entry, failing with `MAP_DUPLICATE_KEY` when the key is there: the host's one
    /// atomic test-and-set, which a lease relies on (`replicate::lease`).
    pub async fn add_entry(
        &self,
        class: Class,
        reference: &str,
        map: MapName,
        key: &str,
        value: &str,
    ) -> Result<(), ClientError> {
        MapField {
            host: self,
            class,
            reference,
            map,
        }
        .add(key, value)
        .await
    }

    /// Remove map entries. For more than one key the map is read first and only the keys
    /// it holds are removed; a single key is removed blind, which costs the same one call.
    pub async fn remove_entries(
        &self,
        class: Class,
        reference: &str,
        map: MapName,
        keys: &[&str],
    ) -> Result<(), ClientError> {
        let field = MapField {
            host: self,
            class,
            reference,
            map,
        };
        let held = match keys.len() {
            0 => return Ok(()),
            1 => None,
            _ => Some(field.read().await?),
        };
        for key in keys {
            if held.as_ref().is_none_or(|held| held.contains_key(*key)) {
                field.remove(key).await?;
            }
        }
        Ok(())
    }

    /// Remove the entries of `keys` that `held` holds, `held` being the map as the caller
    /// just read it (with the object's record); `held` follows the removals.
    pub async fn remove_entries_in(
        &self,
        class: Class,
        reference: &str,
        map: MapName,
        held: &mut StringMap,
        keys: &[&str],
    ) -> Result<(), ClientError> {
        let field = MapField {
            host: self,
            class,
            reference,
            map,
        };
        for key in keys {
            if held.remove(*key).is_some() {
                field.remove(key).await?;
            }
        }
        Ok(())
    }
}

/// One map field of one object on a host, e.g. a VM's `other_config`.
struct MapField<'a> {
    host: &'a XapiClient,
    class: Class,
    reference: &'a str,
    map: MapName,
}

impl MapField<'_> {
    async fn read(&self) -> Result<StringMap, ClientError> {
        self.host
            .get_string_map(self.class.name(), self.reference, self.map.name())
            .await
    }

    async fn add(&self, key: &str, value: &str) -> Result<(), ClientError> {
        let params = vec![
            Value::from(self.reference),
            Value::from(key),
            Value::from(value),
        ];
        self.host.call_unit(&self.method("add_to"), params).await
    }

    async fn replace(&self, key: &str, value: &str) -> Result<(), ClientError> {
        self.remove(key).await?;
        self.add(key, value).await
    }

    async fn remove(&self, key: &str) -> Result<(), ClientError> {
        let params = vec![Value::from(self.reference), Value::from(key)];
        self.host
            .call_unit(&self.method("remove_from"), params)
            .await
    }

    fn method(&self, verb: &str) -> String {
        format!("{}.{verb}_{}", self.class.name(), self.map.name())
    }
}
