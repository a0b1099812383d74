//! Typed views of the XAPI records replication reads: VM, VBD, VDI, SR, task, pool, host.
//! Only the fields the engine uses are typed; the rest stay reachable through the generic
//! `call`. A field absent from a record takes its type's default (older hosts lack newer
//! fields); a field of the wrong type is an error naming the class and field.

use std::collections::BTreeMap;

use super::rpc::Value;

/// A string-to-string map field such as `other_config`.
pub type StringMap = BTreeMap<String, String>;

/// XAPI's null reference.
pub const NULL_REF: &str = "OpaqueRef:NULL";

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{class} record: field {field}: {problem}")]
pub struct RecordError {
    pub class: &'static str,
    pub field: String,
    pub problem: String,
}

/// The text inside a task result's `<value>…</value>` (XAPI's XML-RPC serialisation of the
/// result), or the text as is.
pub fn result_reference(result: &str) -> &str {
    let text = result.trim();
    text.strip_prefix("<value>")
        .and_then(|t| t.strip_suffix("</value>"))
        .unwrap_or(text)
}

/// A record class: its XAPI class name and how to read it from a `get_record` answer.
pub trait Record: Sized {
    const CLASS: &'static str;
    fn from_value(value: &Value) -> Result<Self, RecordError>;
}

/// Reads typed fields out of one record struct.
struct Fields<'a> {
    class: &'static str,
    map: &'a BTreeMap<String, Value>,
}

impl<'a> Fields<'a> {
    fn new(class: &'static str, value: &'a Value) -> Result<Fields<'a>, RecordError> {
        let map = value.as_struct().ok_or_else(|| RecordError {
            class,
            field: "(record)".into(),
            problem: format!("expected a struct, found {}", value.kind()),
        })?;
        Ok(Fields { class, map })
    }

    fn wrong(&self, field: &str, expected: &str, found: &Value) -> RecordError {
        wrong_type(self.class, field, expected, found)
    }

    fn text(&self, field: &str) -> Result<String, RecordError> {
        match self.map.get(field) {
            None => Ok(String::new()),
            Some(v) => v
                .as_str()
                .or_else(|| v.as_datetime())
                .map(str::to_owned)
                .ok_or_else(|| self.wrong(field, "a string", v)),
        }
    }

    fn int(&self, field: &str) -> Result<i64, RecordError> {
        match self.map.get(field) {
            None => Ok(0),
            Some(v) => v.as_i64().ok_or_else(|| self.wrong(field, "an int", v)),
        }
    }

    /// A size or count: an int that must not be negative.
    fn size(&self, field: &str) -> Result<u64, RecordError> {
        let value = self.int(field)?;
        u64::try_from(value).map_err(|_| RecordError {
            class: self.class,
            field: field.into(),
            problem: format!("expected a size, found {value}"),
        })
    }

    fn float(&self, field: &str) -> Result<f64, RecordError> {
        match self.map.get(field) {
            None => Ok(0.0),
            Some(v) => v.as_f64().ok_or_else(|| self.wrong(field, "a float", v)),
        }
    }

    fn boolean(&self, field: &str) -> Result<bool, RecordError> {
        self.boolean_or(field, false)
    }

    fn boolean_or(&self, field: &str, absent: bool) -> Result<bool, RecordError> {
        match self.map.get(field) {
            None => Ok(absent),
            Some(v) => v.as_bool().ok_or_else(|| self.wrong(field, "a bool", v)),
        }
    }

    fn strings(&self, field: &str) -> Result<Vec<String>, RecordError> {
        let Some(v) = self.map.get(field) else {
            return Ok(Vec::new());
        };
        let items = v
            .as_array()
            .ok_or_else(|| self.wrong(field, "an array", v))?;
        items
            .iter()
            .map(|item| {
                item.as_str()
                    .map(str::to_owned)
                    .ok_or_else(|| self.wrong(field, "an array of strings", item))
            })
            .collect()
    }

    fn map(&self, field: &str) -> Result<StringMap, RecordError> {
        match self.map.get(field) {
            None => Ok(StringMap::new()),
            Some(v) => read_string_map(self.class, field, v),
        }
    }
}

/// A `(string -> string) map` field's value, such as a `get_other_config` answer.
pub fn read_string_map(
    class: &'static str,
    field: &str,
    value: &Value,
) -> Result<StringMap, RecordError> {
    let members = value
        .as_struct()
        .ok_or_else(|| wrong_type(class, field, "a map", value))?;
    members
        .iter()
        .map(|(key, item)| {
            // Map values are strings in every map replication touches; a number or bool is
            // kept in its text form rather than refused.
            let text = match item {
                Value::String(s) | Value::DateTime(s) => s.clone(),
                Value::Int(i) => i.to_string(),
                Value::Bool(b) => b.to_string(),
                Value::Double(d) => d.to_string(),
                other => return Err(wrong_type(class, field, "a map of strings", other)),
            };
            Ok((key.clone(), text))
        })
        .collect()
}

fn wrong_type(class: &'static str, field: &str, expected: &str, found: &Value) -> RecordError {
    RecordError {
        class,
        field: field.into(),
        problem: format!("expected {expected}, found {}", found.kind()),
    }
}

/// The `VM` fields replication reads.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct VmRecord {
    pub uuid: String,
    pub name_label: String,
    pub name_description: String,
    pub power_state: String,
    pub is_a_template: bool,
    pub is_a_snapshot: bool,
    pub is_control_domain: bool,
    pub snapshot_of: String,
    pub snapshots: Vec<String>,
    pub snapshot_time: String,
    pub vbds: Vec<String>,
    pub vifs: Vec<String>,
    pub vtpms: Vec<String>,
    pub other_config: StringMap,
    pub blocked_operations: StringMap,
    pub tags: Vec<String>,
}

impl Record for VmRecord {
    const CLASS: &'static str = "VM";
    fn from_value(value: &Value) -> Result<Self, RecordError> {
        let f = Fields::new(Self::CLASS, value)?;
        Ok(VmRecord {
            uuid: f.text("uuid")?,
            name_label: f.text("name_label")?,
            name_description: f.text("name_description")?,
            power_state: f.text("power_state")?,
            is_a_template: f.boolean("is_a_template")?,
            is_a_snapshot: f.boolean("is_a_snapshot")?,
            is_control_domain: f.boolean("is_control_domain")?,
            snapshot_of: f.text("snapshot_of")?,
            snapshots: f.strings("snapshots")?,
            snapshot_time: f.text("snapshot_time")?,
            vbds: f.strings("VBDs")?,
            vifs: f.strings("VIFs")?,
            vtpms: f.strings("VTPMs")?,
            other_config: f.map("other_config")?,
            blocked_operations: f.map("blocked_operations")?,
            tags: f.strings("tags")?,
        })
    }
}

/// The `VBD` fields replication reads.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct VbdRecord {
    pub uuid: String,
    pub vm: String,
    pub vdi: String,
    pub userdevice: String,
    pub kind: String,
    pub mode: String,
    pub bootable: bool,
    pub empty: bool,
}

impl VbdRecord {
    /// A disk, as opposed to a CD drive or an empty slot.
    pub fn is_disk(&self) -> bool {
        self.kind == "Disk" && !self.empty && self.vdi != NULL_REF && !self.vdi.is_empty()
    }
}

impl Record for VbdRecord {
    const CLASS: &'static str = "VBD";
    fn from_value(value: &Value) -> Result<Self, RecordError> {
        let f = Fields::new(Self::CLASS, value)?;
        Ok(VbdRecord {
            uuid: f.text("uuid")?,
            vm: f.text("VM")?,
            vdi: f.text("VDI")?,
            userdevice: f.text("userdevice")?,
            kind: f.text("type")?,
            mode: f.text("mode")?,
            bootable: f.boolean("bootable")?,
            empty: f.boolean("empty")?,
        })
    }
}

/// The `VIF` fields a replica's interfaces are made from.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct VifRecord {
    pub uuid: String,
    pub device: String,
    pub network: String,
    pub vm: String,
    pub mac: String,
    pub mtu: i64,
    pub other_config: StringMap,
    pub qos_algorithm_type: String,
    pub qos_algorithm_params: StringMap,
    pub locking_mode: String,
    pub ipv4_allowed: Vec<String>,
    pub ipv6_allowed: Vec<String>,
}

impl Record for VifRecord {
    const CLASS: &'static str = "VIF";
    fn from_value(value: &Value) -> Result<Self, RecordError> {
        let f = Fields::new(Self::CLASS, value)?;
        Ok(VifRecord {
            uuid: f.text("uuid")?,
            device: f.text("device")?,
            network: f.text("network")?,
            vm: f.text("VM")?,
            mac: f.text("MAC")?,
            mtu: f.int("MTU")?,
            other_config: f.map("other_config")?,
            qos_algorithm_type: f.text("qos_algorithm_type")?,
            qos_algorithm_params: f.map("qos_algorithm_params")?,
            locking_mode: f.text("locking_mode")?,
            ipv4_allowed: f.strings("ipv4_allowed")?,
            ipv6_allowed: f.strings("ipv6_allowed")?,
        })
    }
}

/// The `network` fields the network mapping reads.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct NetworkRecord {
    pub uuid: String,
    pub name_label: String,
    pub bridge: String,
    pub pifs: Vec<String>,
    pub other_config: StringMap,
}

impl Record for NetworkRecord {
    const CLASS: &'static str = "network";
    fn from_value(value: &Value) -> Result<Self, RecordError> {
        let f = Fields::new(Self::CLASS, value)?;
        Ok(NetworkRecord {
            uuid: f.text("uuid")?,
            name_label: f.text("name_label")?,
            bridge: f.text("bridge")?,
            pifs: f.strings("PIFs")?,
            other_config: f.map("other_config")?,
        })
    }
}

/// The `PIF` fields the network mapping reads: its VLAN and whether it is the management
/// interface.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct PifRecord {
    pub uuid: String,
    pub network: String,
    pub vlan: i64,
    pub management: bool,
}

impl Record for PifRecord {
    const CLASS: &'static str = "PIF";
    fn from_value(value: &Value) -> Result<Self, RecordError> {
        let f = Fields::new(Self::CLASS, value)?;
        Ok(PifRecord {
            uuid: f.text("uuid")?,
            network: f.text("network")?,
            vlan: f.int("VLAN")?,
            management: f.boolean("management")?,
        })
    }
}

/// The `VDI` fields replication reads.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct VdiRecord {
    pub uuid: String,
    pub name_label: String,
    pub name_description: String,
    pub sr: String,
    pub virtual_size: u64,
    pub physical_utilisation: u64,
    pub kind: String,
    pub read_only: bool,
    /// False for the hidden parents of VHD chains (file SRs' "base copy" VDIs), which only
    /// the storage manager uses; absent means managed.
    pub managed: bool,
    pub is_a_snapshot: bool,
    pub snapshot_of: String,
    pub snapshot_time: String,
    pub vbds: Vec<String>,
    pub other_config: StringMap,
    pub sm_config: StringMap,
    pub tags: Vec<String>,
}

impl Record for VdiRecord {
    const CLASS: &'static str = "VDI";
    fn from_value(value: &Value) -> Result<Self, RecordError> {
        let f = Fields::new(Self::CLASS, value)?;
        Ok(VdiRecord {
            uuid: f.text("uuid")?,
            name_label: f.text("name_label")?,
            name_description: f.text("name_description")?,
            sr: f.text("SR")?,
            virtual_size: f.size("virtual_size")?,
            physical_utilisation: f.size("physical_utilisation")?,
            kind: f.text("type")?,
            read_only: f.boolean("read_only")?,
            managed: f.boolean_or("managed", true)?,
            is_a_snapshot: f.boolean("is_a_snapshot")?,
            snapshot_of: f.text("snapshot_of")?,
            snapshot_time: f.text("snapshot_time")?,
            vbds: f.strings("VBDs")?,
            other_config: f.map("other_config")?,
            sm_config: f.map("sm_config")?,
            tags: f.strings("tags")?,
        })
    }
}

/// The `SR` fields replication reads.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct SrRecord {
    pub uuid: String,
    pub name_label: String,
    pub kind: String,
    pub content_type: String,
    pub physical_size: u64,
    pub physical_utilisation: u64,
    pub vdis: Vec<String>,
    pub other_config: StringMap,
}

impl Record for SrRecord {
    const CLASS: &'static str = "SR";
    fn from_value(value: &Value) -> Result<Self, RecordError> {
        let f = Fields::new(Self::CLASS, value)?;
        Ok(SrRecord {
            uuid: f.text("uuid")?,
            name_label: f.text("name_label")?,
            kind: f.text("type")?,
            content_type: f.text("content_type")?,
            physical_size: f.size("physical_size")?,
            physical_utilisation: f.size("physical_utilisation")?,
            vdis: f.strings("VDIs")?,
            other_config: f.map("other_config")?,
        })
    }
}

/// A task's `status`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TaskStatus {
    Pending,
    Success,
    Failure,
    Cancelling,
    Cancelled,
}

impl TaskStatus {
    fn parse(text: &str) -> Option<TaskStatus> {
        Some(match text {
            "pending" => TaskStatus::Pending,
            "success" => TaskStatus::Success,
            "failure" => TaskStatus::Failure,
            "cancelling" => TaskStatus::Cancelling,
            "cancelled" => TaskStatus::Cancelled,
            _ => return None,
        })
    }

    pub fn is_finished(self) -> bool {
        matches!(
            self,
            TaskStatus::Success | TaskStatus::Failure | TaskStatus::Cancelled
        )
    }
}

/// The `task` fields the engine reads.
#[derive(Debug, Clone, PartialEq)]
pub struct TaskRecord {
    pub uuid: String,
    pub name_label: String,
    pub status: TaskStatus,
    pub progress: f64,
    /// XAPI's XML-RPC serialisation of the result, e.g. `<value>OpaqueRef:…</value>`.
    pub result: String,
    pub error_info: Vec<String>,
}

impl TaskRecord {
    /// The reference inside `result`'s `<value>…</value>`.
    pub fn result_ref(&self) -> &str {
        result_reference(&self.result)
    }
}

impl Record for TaskRecord {
    const CLASS: &'static str = "task";
    fn from_value(value: &Value) -> Result<Self, RecordError> {
        let f = Fields::new(Self::CLASS, value)?;
        let status_text = f.text("status")?;
        let status = TaskStatus::parse(&status_text).ok_or_else(|| RecordError {
            class: Self::CLASS,
            field: "status".into(),
            problem: format!("unknown status {status_text:?}"),
        })?;
        Ok(TaskRecord {
            uuid: f.text("uuid")?,
            name_label: f.text("name_label")?,
            status,
            progress: f.float("progress")?,
            result: f.text("result")?,
            error_info: f.strings("error_info")?,
        })
    }
}

/// The `pool` fields the engine reads.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct PoolRecord {
    pub uuid: String,
    pub name_label: String,
    pub master: String,
    pub default_sr: String,
    pub other_config: StringMap,
}

impl Record for PoolRecord {
    const CLASS: &'static str = "pool";
    fn from_value(value: &Value) -> Result<Self, RecordError> {
        let f = Fields::new(Self::CLASS, value)?;
        Ok(PoolRecord {
            uuid: f.text("uuid")?,
            name_label: f.text("name_label")?,
            master: f.text("master")?,
            default_sr: f.text("default_SR")?,
            other_config: f.map("other_config")?,
        })
    }
}

/// The `host` fields the engine reads.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct HostRecord {
    pub uuid: String,
    pub name_label: String,
    pub address: String,
    pub api_version_major: i64,
    pub api_version_minor: i64,
    pub software_version: StringMap,
}

impl Record for HostRecord {
    const CLASS: &'static str = "host";
    fn from_value(value: &Value) -> Result<Self, RecordError> {
        let f = Fields::new(Self::CLASS, value)?;
        Ok(HostRecord {
            uuid: f.text("uuid")?,
            name_label: f.text("name_label")?,
            address: f.text("address")?,
            api_version_major: f.int("API_version_major")?,
            api_version_minor: f.int("API_version_minor")?,
            software_version: f.map("software_version")?,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn record(fields: &[(&str, Value)]) -> Value {
        Value::Struct(
            fields
                .iter()
                .map(|(k, v)| ((*k).to_owned(), v.clone()))
                .collect(),
        )
    }

    #[test]
    fn reads_xml_rpc_ints_sent_as_text_and_maps() {
        let value = record(&[
            ("uuid", Value::from("u")),
            ("virtual_size", Value::from("4294967296")),
            (
                "other_config",
                record(&[("xo:copy_of", Value::from("abc"))]),
            ),
            ("VBDs", Value::Array(vec![Value::from("OpaqueRef:1")])),
        ]);
        let vdi = VdiRecord::from_value(&value).unwrap();
        assert_eq!(vdi.virtual_size, 4 << 30);
        assert_eq!(vdi.other_config["xo:copy_of"], "abc");
        assert_eq!(vdi.vbds, ["OpaqueRef:1"]);
        assert!(!vdi.read_only, "an absent field takes its default");
        assert!(vdi.managed, "a VDI is managed unless it says otherwise");
        let hidden = record(&[("managed", Value::Bool(false))]);
        assert!(!VdiRecord::from_value(&hidden).unwrap().managed);
    }

    #[test]
    fn a_mistyped_field_names_class_and_field() {
        let value = record(&[("virtual_size", Value::Bool(true))]);
        let err = VdiRecord::from_value(&value).unwrap_err();
        assert_eq!((err.class, err.field.as_str()), ("VDI", "virtual_size"));
        let negative = record(&[("virtual_size", Value::Int(-1))]);
        assert!(VdiRecord::from_value(&negative).is_err());
        let not_a_struct = TaskRecord::from_value(&Value::from("x")).unwrap_err();
        assert!(not_a_struct.to_string().contains("task record"));
    }

    #[test]
    fn task_status_and_result_reference() {
        let value = record(&[
            ("status", Value::from("success")),
            ("result", Value::from("<value>OpaqueRef:abc</value>")),
        ]);
        let task = TaskRecord::from_value(&value).unwrap();
        assert_eq!(task.status, TaskStatus::Success);
        assert!(task.status.is_finished());
        assert_eq!(task.result_ref(), "OpaqueRef:abc");
        let odd = record(&[("status", Value::from("exploded"))]);
        assert!(TaskRecord::from_value(&odd).is_err());
    }

    #[test]
    fn vbd_disk_detection() {
        let disk = VbdRecord {
            kind: "Disk".into(),
            vdi: "OpaqueRef:1".into(),
            ..VbdRecord::default()
        };
        assert!(disk.is_disk());
        let cd = VbdRecord {
            kind: "CD".into(),
            ..disk.clone()
        };
        assert!(!cd.is_disk());
        let empty = VbdRecord {
            vdi: NULL_REF.into(),
            ..disk
        };
        assert!(!empty.is_disk());
    }
}
