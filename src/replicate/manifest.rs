//! `manifest.json` of an offline seed: what seed-import needs to recreate the VM, the disks
//! (userdevice, size, UUIDs), the source snapshot they come from, and each seed file's sizes
//! and digests.

use std::collections::BTreeMap;
use std::io::Read;
use std::path::Path;

use serde::{Deserialize, Serialize};

use crate::fsio::regular::open_regular;
use crate::xapi::rpc::Value;

pub const MANIFEST: &str = "manifest.json";
pub const FORMAT: &str = "vhdsync-seed";
/// Larger manifests are refused before reading: a VM record and a few disks take a few KiB.
const MAX_MANIFEST: u64 = 4 << 20;

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Manifest {
    pub format: String,
    pub version: u32,
    pub job_name: String,
    pub job_id: String,
    pub schedule_id: String,
    /// The source VM (its live uuid, `xo:backup:vm`).
    pub vm_uuid: String,
    pub vm_name: String,
    /// The source snapshot the seed was exported from: the base of the first delta.
    pub snapshot_uuid: String,
    /// Its `xo:backup:datetime`.
    pub snapshot_datetime: String,
    /// The VM record subset `VM.create` takes, plus `name_label`, `tags`, `other_config`.
    pub vm_record: serde_json::Value,
    pub disks: Vec<ManifestDisk>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ManifestDisk {
    pub userdevice: String,
    pub virtual_size: u64,
    pub name_label: String,
    /// The source snapshot's VDI (the replica's `xo:copy_of`).
    pub snapshot_vdi: String,
    /// The live VM's VDI the snapshot was taken of.
    pub vm_vdi: String,
    /// The seed file, relative to the manifest.
    pub file: String,
    pub file_size: u64,
    pub file_sha256: String,
    /// The VHD stream inside: its exact length (the import's Content-Length) and digest.
    pub stream_length: u64,
    pub stream_sha256: String,
    pub frames: u64,
}

#[derive(Debug, thiserror::Error)]
#[error("{path}: {problem}")]
pub struct ManifestError {
    pub path: String,
    pub problem: String,
}

impl Manifest {
    pub fn load(dir: &Path) -> Result<Manifest, ManifestError> {
        let path = dir.join(MANIFEST);
        let fail = |problem: String| ManifestError {
            path: path.display().to_string(),
            problem,
        };
        let file = open_regular(&path).map_err(|e| fail(e.to_string()))?;
        let len = file.metadata().map_err(|e| fail(e.to_string()))?.len();
        if len > MAX_MANIFEST {
            return Err(fail(format!(
                "{len} bytes, more than a manifest can be ({MAX_MANIFEST})"
            )));
        }
        let mut text = Vec::with_capacity(len as usize);
        // Bounded even if the file grows after the size check.
        file.take(MAX_MANIFEST + 1)
            .read_to_end(&mut text)
            .map_err(|e| fail(e.to_string()))?;
        let manifest: Manifest = serde_json::from_slice(&text).map_err(|e| fail(e.to_string()))?;
        manifest.check().map_err(fail)?;
        Ok(manifest)
    }

    /// What a reader relies on: the format, unique userdevices, plain file names.
    pub fn check(&self) -> Result<(), String> {
        if self.format != FORMAT || self.version != 1 {
            return Err(format!(
                "format {:?} version {}, expected {FORMAT:?} version 1",
                self.format, self.version
            ));
        }
        if self.disks.is_empty() {
            return Err("no disks".into());
        }
        for (i, disk) in self.disks.iter().enumerate() {
            if self.disks[..i]
                .iter()
                .any(|d| d.userdevice == disk.userdevice)
            {
                return Err(format!("disk {} listed twice", disk.userdevice));
            }
            let plain = Path::new(&disk.file)
                .file_name()
                .is_some_and(|n| n == disk.file.as_str());
            if !plain {
                return Err(format!(
                    "disk {}: file {:?} is not a plain file name",
                    disk.userdevice, disk.file
                ));
            }
        }
        Ok(())
    }

    /// The VM record as XAPI values, for `VM.create`.
    pub fn vm_record_value(&self) -> Value {
        from_json(&self.vm_record)
    }
}

/// A JSON value as an XAPI value: numbers that fit are ints, objects are structs.
fn from_json(json: &serde_json::Value) -> Value {
    match json {
        serde_json::Value::Null => Value::Nil,
        serde_json::Value::Bool(b) => Value::Bool(*b),
        serde_json::Value::Number(n) => match n.as_i64() {
            Some(i) => Value::Int(i),
            None => Value::Double(n.as_f64().unwrap_or(0.0)),
        },
        serde_json::Value::String(s) => Value::String(s.clone()),
        serde_json::Value::Array(items) => Value::Array(items.iter().map(from_json).collect()),
        serde_json::Value::Object(members) => Value::Struct(
            members
                .iter()
                .map(|(k, v)| (k.clone(), from_json(v)))
                .collect::<BTreeMap<_, _>>(),
        ),
    }
}

/// The fields of `record` (a `VM.get_record` answer) named in `fields`, as JSON.
pub fn record_subset(record: &Value, fields: &[&str]) -> serde_json::Value {
    let mut out = serde_json::Map::new();
    if let Some(map) = record.as_struct() {
        for field in fields {
            if let Some(value) = map.get(*field) {
                out.insert(
                    (*field).to_owned(),
                    serde_json::to_value(value).unwrap_or(serde_json::Value::Null),
                );
            }
        }
    }
    serde_json::Value::Object(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn manifest() -> Manifest {
        Manifest {
            format: FORMAT.into(),
            version: 1,
            job_name: "n".into(),
            job_id: "j".into(),
            schedule_id: "s".into(),
            vm_uuid: "vm".into(),
            vm_name: "web01".into(),
            snapshot_uuid: "snap".into(),
            snapshot_datetime: "20240115T10:20:30Z".into(),
            vm_record: serde_json::json!({"VCPUs_max": 2, "platform": {"acpi": "1"}}),
            disks: vec![ManifestDisk {
                userdevice: "0".into(),
                virtual_size: 1 << 20,
                name_label: "disk".into(),
                snapshot_vdi: "sv".into(),
                vm_vdi: "vv".into(),
                file: "disk-0.seed".into(),
                file_size: 100,
                file_sha256: "00".into(),
                stream_length: 4096,
                stream_sha256: "00".into(),
                frames: 1,
            }],
        }
    }

    #[test]
    fn round_trip_and_checks() {
        let m = manifest();
        let text = serde_json::to_string(&m).unwrap();
        assert_eq!(serde_json::from_str::<Manifest>(&text).unwrap(), m);
        let record = m.vm_record_value();
        assert_eq!(record.get("VCPUs_max"), Some(&Value::Int(2)));
        assert_eq!(
            record.get("platform").and_then(|p| p.get("acpi")),
            Some(&Value::from("1"))
        );
        let mut bad = m.clone();
        bad.disks[0].file = "../etc/passwd".into();
        assert!(bad.check().unwrap_err().contains("not a plain file name"));
        let mut twice = m.clone();
        twice.disks.push(m.disks[0].clone());
        assert!(twice.check().unwrap_err().contains("listed twice"));
        let mut other = m;
        other.version = 2;
        assert!(other.check().is_err());
    }
}
