//! The classes of the lab host's object database and their fields, after XAPI's datamodel
//! (protocol reference, Appendix A.2 for fields and qualifiers, A.3 for enums).
//!
//! Every record of a class carries every field of its table, maps and sets included even when
//! empty: npm `xen-api` derives its per-record helpers from the first record it sees (§2.7).
//! The generic RPC layer derives `get_<field>`, `set_<field>`, `add_to_<map>` and friends from
//! these tables, so a field's [`Access`] decides which messages exist for it.

use crate::xapi::rpc::Value;

/// The null reference, XAPI's "no object": the one the client's typed records use too.
pub use crate::xapi::records::NULL_REF;
/// An unset datetime: the Unix epoch in XAPI's format.
pub const EPOCH: &str = "19700101T00:00:00Z";

/// The classes the lab host keeps objects of.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Class {
    Pool,
    Host,
    Sr,
    Vdi,
    Vbd,
    Vm,
    Task,
    Session,
    Network,
    Vif,
    Pif,
    Vlan,
}

impl Class {
    pub const ALL: [Class; 12] = [
        Class::Pool,
        Class::Host,
        Class::Sr,
        Class::Vdi,
        Class::Vbd,
        Class::Vm,
        Class::Task,
        Class::Session,
        Class::Network,
        Class::Vif,
        Class::Pif,
        Class::Vlan,
    ];

    /// The name in method names and errors (`VM.get_record`, `HANDLE_INVALID [VM, …]`).
    pub fn name(self) -> &'static str {
        match self {
            Class::Pool => "pool",
            Class::Host => "host",
            Class::Sr => "SR",
            Class::Vdi => "VDI",
            Class::Vbd => "VBD",
            Class::Vm => "VM",
            Class::Task => "task",
            Class::Session => "session",
            Class::Network => "network",
            Class::Vif => "VIF",
            Class::Pif => "PIF",
            Class::Vlan => "VLAN",
        }
    }

    /// The class a method-name prefix stands for; XAPI's names are case-sensitive.
    pub fn from_name(name: &str) -> Option<Class> {
        Class::ALL.into_iter().find(|class| class.name() == name)
    }

    /// The lower-case name events use (`"vm"`), which `event.from` matches without case.
    pub fn event_name(self) -> &'static str {
        match self {
            Class::Pool => "pool",
            Class::Host => "host",
            Class::Sr => "sr",
            Class::Vdi => "vdi",
            Class::Vbd => "vbd",
            Class::Vm => "vm",
            Class::Task => "task",
            Class::Session => "session",
            Class::Network => "network",
            Class::Vif => "vif",
            Class::Pif => "pif",
            Class::Vlan => "vlan",
        }
    }

    pub fn from_event_name(name: &str) -> Option<Class> {
        Class::ALL
            .into_iter()
            .find(|class| class.event_name().eq_ignore_ascii_case(name))
    }

    pub(super) fn index(self) -> usize {
        self as usize
    }

    pub fn fields(self) -> &'static [Field] {
        match self {
            Class::Pool => POOL,
            Class::Host => HOST,
            Class::Sr => SR,
            Class::Vdi => VDI,
            Class::Vbd => VBD,
            Class::Vm => VM,
            Class::Task => TASK,
            Class::Session => SESSION,
            Class::Network => NETWORK,
            Class::Vif => VIF,
            Class::Pif => PIF,
            Class::Vlan => VLAN,
        }
    }

    pub fn field(self, name: &str) -> Option<&'static Field> {
        self.fields().iter().find(|field| field.name == name)
    }

    /// Whether XAPI generates `get_by_name_label` for the class: those whose name comes from
    /// the datamodel's `name` namespace. The pool's name is a plain field, so it has none.
    pub fn has_name_lookup(self) -> bool {
        matches!(
            self,
            Class::Host | Class::Sr | Class::Vdi | Class::Vm | Class::Task | Class::Network
        )
    }

    /// Whether XAPI offers `get_all` and `get_all_records` for the class (the datamodel's
    /// `expose_get_all_messages_for`). Sessions are left out there: their references are
    /// credentials, and listing them would hand every client the others' sessions. npm
    /// `xen-api` watches every class `system.listMethods` shows a `get_all_records` for.
    pub fn lists_all(self) -> bool {
        !matches!(self, Class::Session)
    }

    /// Whether changes to the class's objects are events (the datamodel's `gen_events`),
    /// which sessions are not, for the same reason.
    pub fn has_events(self) -> bool {
        !matches!(self, Class::Session)
    }

    /// Whether objects survive a restart. As in XAPI, whose `session` and `task` tables are
    /// not persisted, sessions and tasks live in memory only.
    pub fn is_persistent(self) -> bool {
        !matches!(self, Class::Task | Class::Session)
    }
}

/// Who may change a field, after the datamodel's qualifiers.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Access {
    /// RO/runtime: maintained by the server only.
    Runtime,
    /// RO/constructor: given at creation (`<class>.create`), read-only afterwards.
    Constructor,
    /// RW: `set_<field>`, and `add_to_`/`remove_from_` for maps, `add_`/`remove_` for sets.
    ReadWrite,
    /// RO/constructor in the datamodel, but XAPI has an explicit `set_<field>` message for
    /// it (`VDI.set_name_label`, `VM.set_start_delay`, `VM.set_memory_static_max`, …): the
    /// setter exists, the map and set modifiers do not.
    Setter,
    /// RO/runtime in the datamodel with an explicit setter message (`VDI.set_snapshot_of`,
    /// `SR.set_shared`, `task.set_progress`, …): settable afterwards, ignored by `create`.
    RuntimeSetter,
}

impl Access {
    /// Whether `set_<field>` exists.
    pub fn has_setter(self) -> bool {
        !matches!(self, Access::Runtime | Access::Constructor)
    }

    /// Whether `<class>.create` takes the field from its record argument.
    pub fn given_at_creation(self) -> bool {
        matches!(
            self,
            Access::Constructor | Access::Setter | Access::ReadWrite
        )
    }
}

/// A field's API type, as far as the wire and validation are concerned.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Kind {
    Text,
    /// A string restricted to these values; the first is the default unless the field says.
    Enum(&'static [&'static str]),
    /// A reference to an object of the named XAPI class.
    Ref(&'static str),
    Int,
    Float,
    Bool,
    DateTime,
    /// A set of strings (refs, enums or text).
    Set,
    IntSet,
    /// A (string -> string) map; with `Some`, the keys are restricted to those values.
    Map(Option<&'static [&'static str]>),
}

/// Why a value does not fit a field.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Rejection {
    WrongType,
    /// Not one of the enum's values; holds the offending value.
    NotInEnum(String),
}

impl Kind {
    fn default_value(self) -> Value {
        match self {
            Kind::Text => Value::void(),
            Kind::Enum(values) => Value::from(values[0]),
            Kind::Ref(_) => Value::from(NULL_REF),
            Kind::Int => Value::Int(0),
            Kind::Float => Value::Double(0.0),
            Kind::Bool => Value::Bool(false),
            Kind::DateTime => Value::DateTime(EPOCH.into()),
            Kind::Set | Kind::IntSet => Value::Array(Vec::new()),
            Kind::Map(_) => Value::Struct(Default::default()),
        }
    }

    /// The value as stored, from what a client sent. Ints may come as decimal strings (xapi's
    /// own XML-RPC form) and floats as ints or strings; map values that are numbers or
    /// booleans are stringified, as loosely typed JSON clients send them.
    pub fn accept(self, value: &Value) -> Result<Value, Rejection> {
        match self {
            Kind::Text | Kind::Ref(_) => text(value).map(Value::from),
            Kind::Enum(values) => {
                let text = text(value)?;
                check_enum(values, text)?;
                Ok(Value::from(text))
            }
            Kind::Int => value.as_i64().map(Value::Int).ok_or(Rejection::WrongType),
            Kind::Float => value
                .as_f64()
                .or_else(|| value.as_str().and_then(|t| t.trim().parse().ok()))
                .map(Value::Double)
                .ok_or(Rejection::WrongType),
            Kind::Bool => value.as_bool().map(Value::Bool).ok_or(Rejection::WrongType),
            Kind::DateTime => value
                .as_datetime()
                .map(|t| Value::DateTime(t.to_owned()))
                .ok_or(Rejection::WrongType),
            Kind::Set => {
                let items = value.as_array().ok_or(Rejection::WrongType)?;
                let texts = items.iter().map(text).collect::<Result<Vec<_>, _>>()?;
                Ok(Value::from(texts))
            }
            Kind::IntSet => {
                let items = value.as_array().ok_or(Rejection::WrongType)?;
                let ints = items
                    .iter()
                    .map(|item| item.as_i64().ok_or(Rejection::WrongType))
                    .collect::<Result<Vec<_>, _>>()?;
                Ok(Value::from(ints))
            }
            Kind::Map(keys) => {
                let members = value.as_struct().ok_or(Rejection::WrongType)?;
                let mut map = std::collections::BTreeMap::new();
                for (key, member) in members {
                    if let Some(keys) = keys {
                        check_enum(keys, key)?;
                    }
                    map.insert(key.clone(), Value::from(map_value(member)?));
                }
                Ok(Value::Struct(map))
            }
        }
    }

    /// Check a map key given on its own (`add_to_<map>`, `remove_from_<map>`).
    pub fn accept_key(self, key: &str) -> Result<(), Rejection> {
        match self {
            Kind::Map(Some(keys)) => check_enum(keys, key),
            _ => Ok(()),
        }
    }
}

fn text(value: &Value) -> Result<&str, Rejection> {
    value.as_str().ok_or(Rejection::WrongType)
}

/// A map value as text: strings as they are, scalars in their usual notation.
pub fn map_value(value: &Value) -> Result<String, Rejection> {
    match value {
        Value::String(text) => Ok(text.clone()),
        Value::Int(n) => Ok(n.to_string()),
        Value::Double(x) => Ok(x.to_string()),
        Value::Bool(b) => Ok(b.to_string()),
        _ => Err(Rejection::WrongType),
    }
}

fn check_enum(values: &[&str], text: &str) -> Result<(), Rejection> {
    if values.contains(&text) {
        Ok(())
    } else {
        Err(Rejection::NotInEnum(text.to_owned()))
    }
}

/// A field's default when none is given, where the kind's own default does not fit.
#[derive(Debug, Clone, Copy, PartialEq)]
enum Init {
    Text(&'static str),
    Int(i64),
    Float(f64),
    Bool(bool),
}

#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Field {
    pub name: &'static str,
    pub kind: Kind,
    pub access: Access,
    init: Option<Init>,
}

impl Field {
    pub fn default_value(&self) -> Value {
        match self.init {
            None => self.kind.default_value(),
            Some(Init::Text(text)) => Value::from(text),
            Some(Init::Int(n)) => Value::Int(n),
            Some(Init::Float(x)) => Value::Double(x),
            Some(Init::Bool(b)) => Value::Bool(b),
        }
    }

    pub fn is_map(&self) -> bool {
        matches!(self.kind, Kind::Map(_))
    }

    pub fn is_set(&self) -> bool {
        matches!(self.kind, Kind::Set | Kind::IntSet)
    }

    const fn or(self, init: Init) -> Field {
        Field {
            init: Some(init),
            ..self
        }
    }
}

/// RO/runtime.
const fn ro(name: &'static str, kind: Kind) -> Field {
    Field {
        name,
        kind,
        access: Access::Runtime,
        init: None,
    }
}

/// RO/constructor.
const fn rc(name: &'static str, kind: Kind) -> Field {
    Field {
        access: Access::Constructor,
        ..ro(name, kind)
    }
}

/// RO with an explicit setter message.
const fn st(name: &'static str, kind: Kind) -> Field {
    Field {
        access: Access::Setter,
        ..ro(name, kind)
    }
}

/// RO/runtime with an explicit setter message.
const fn rs(name: &'static str, kind: Kind) -> Field {
    Field {
        access: Access::RuntimeSetter,
        ..ro(name, kind)
    }
}

/// RW.
const fn rw(name: &'static str, kind: Kind) -> Field {
    Field {
        access: Access::ReadWrite,
        ..ro(name, kind)
    }
}

/// A one-to-many link between objects: `child.foreign_key` names a `parent`, whose `set`
/// lists those children. The database keeps the set in step with the foreign keys.
#[derive(Debug, Clone, Copy)]
pub struct Relation {
    pub child: Class,
    pub foreign_key: &'static str,
    pub parent: Class,
    pub set: &'static str,
}

pub const RELATIONS: &[Relation] = &[
    Relation {
        child: Class::Vbd,
        foreign_key: "VM",
        parent: Class::Vm,
        set: "VBDs",
    },
    Relation {
        child: Class::Vbd,
        foreign_key: "VDI",
        parent: Class::Vdi,
        set: "VBDs",
    },
    Relation {
        child: Class::Vdi,
        foreign_key: "SR",
        parent: Class::Sr,
        set: "VDIs",
    },
    Relation {
        child: Class::Vm,
        foreign_key: "snapshot_of",
        parent: Class::Vm,
        set: "snapshots",
    },
    Relation {
        child: Class::Vdi,
        foreign_key: "snapshot_of",
        parent: Class::Vdi,
        set: "snapshots",
    },
    Relation {
        child: Class::Vm,
        foreign_key: "parent",
        parent: Class::Vm,
        set: "children",
    },
    Relation {
        child: Class::Vm,
        foreign_key: "resident_on",
        parent: Class::Host,
        set: "resident_VMs",
    },
    Relation {
        child: Class::Task,
        foreign_key: "subtask_of",
        parent: Class::Task,
        set: "subtasks",
    },
    Relation {
        child: Class::Vif,
        foreign_key: "VM",
        parent: Class::Vm,
        set: "VIFs",
    },
    Relation {
        child: Class::Vif,
        foreign_key: "network",
        parent: Class::Network,
        set: "VIFs",
    },
    Relation {
        child: Class::Pif,
        foreign_key: "network",
        parent: Class::Network,
        set: "PIFs",
    },
    Relation {
        child: Class::Pif,
        foreign_key: "host",
        parent: Class::Host,
        set: "PIFs",
    },
    Relation {
        child: Class::Vlan,
        foreign_key: "tagged_PIF",
        parent: Class::Pif,
        set: "VLAN_slave_of",
    },
];

// Enums (Appendix A.3), ordered so the first value is the usual default.
pub const VM_POWER_STATES: &[&str] = &["Halted", "Paused", "Running", "Suspended"];
pub const VM_OPERATIONS: &[&str] = &[
    "snapshot",
    "clone",
    "copy",
    "create_template",
    "revert",
    "checkpoint",
    "snapshot_with_quiesce",
    "provision",
    "start",
    "start_on",
    "pause",
    "unpause",
    "clean_shutdown",
    "clean_reboot",
    "hard_shutdown",
    "power_state_reset",
    "hard_reboot",
    "suspend",
    "csvm",
    "resume",
    "resume_on",
    "pool_migrate",
    "migrate_send",
    "get_boot_record",
    "send_sysrq",
    "send_trigger",
    "query_services",
    "shutdown",
    "call_plugin",
    "changing_memory_live",
    "awaiting_memory_live",
    "changing_dynamic_range",
    "changing_static_range",
    "changing_memory_limits",
    "changing_shadow_memory",
    "changing_shadow_memory_live",
    "changing_VCPUs",
    "changing_VCPUs_live",
    "changing_NVRAM",
    "assert_operation_valid",
    "data_source_op",
    "update_allowed_operations",
    "make_into_template",
    "import",
    "export",
    "metadata_export",
    "reverting",
    "destroy",
    "create_vtpm",
];
pub const VDI_TYPES: &[&str] = &[
    "user",
    "system",
    "ephemeral",
    "suspend",
    "crashdump",
    "ha_statefile",
    "metadata",
    "redo_log",
    "rrd",
    "pvs_cache",
    "cbt_metadata",
];
pub const TASK_STATUSES: &[&str] = &["pending", "success", "failure", "cancelling", "cancelled"];
pub const VBD_TYPES: &[&str] = &["Disk", "CD", "Floppy"];
pub const VBD_MODES: &[&str] = &["RW", "RO"];
const ON_NORMAL_EXIT: &[&str] = &["destroy", "restart"];
const ON_SOFTREBOOT: &[&str] = &["soft_reboot", "destroy", "restart", "preserve"];
const ON_CRASH: &[&str] = &[
    "restart",
    "destroy",
    "coredump_and_destroy",
    "coredump_and_restart",
    "preserve",
    "rename_restart",
];
const DOMAIN_TYPES: &[&str] = &["hvm", "pv", "pv_in_pvh", "pvh", "unspecified"];
const ON_BOOT: &[&str] = &["persist", "reset"];
const HOST_DISPLAY: &[&str] = &[
    "enabled",
    "disable_on_reboot",
    "disabled",
    "enable_on_reboot",
];
const TELEMETRY_FREQUENCY: &[&str] = &["weekly", "daily", "monthly"];
const UPDATE_SYNC_FREQUENCY: &[&str] = &["weekly", "daily"];
const UPDATES_APPLIED: &[&str] = &["unknown", "yes", "no"];
const NUMA_POLICY: &[&str] = &["default_policy", "any", "best_effort"];
/// The keys `VM.set_bios_strings` accepts (xapi's settable BIOS string keys).
const BIOS_STRING_KEYS: &[&str] = &[
    "bios-vendor",
    "bios-version",
    "system-manufacturer",
    "system-product-name",
    "system-version",
    "system-serial-number",
    "enclosure-asset-tag",
];

use Kind::{Bool, DateTime, Float, Int, IntSet, Set, Text};

const MAP: Kind = Kind::Map(None);

const fn r(class: &'static str) -> Kind {
    Kind::Ref(class)
}

const fn e(values: &'static [&'static str]) -> Kind {
    Kind::Enum(values)
}

const VM: &[Field] = &[
    ro("uuid", Text),
    ro("allowed_operations", Set),
    ro("current_operations", MAP),
    rw("name_label", Text),
    rw("name_description", Text),
    rc("power_state", e(VM_POWER_STATES)),
    rw("user_version", Int).or(Init::Int(1)),
    rw("is_a_template", Bool),
    rs("is_default_template", Bool),
    st("suspend_VDI", r("VDI")),
    ro("resident_on", r("host")),
    ro("scheduled_to_be_resident_on", r("host")),
    rw("affinity", r("host")),
    ro("memory_overhead", Int),
    rc("memory_target", Int),
    // The memory and vCPU fields have explicit setters in XAPI (`set_memory_static_max`, …),
    // which Xen Orchestra's replica update uses.
    st("memory_static_max", Int),
    st("memory_dynamic_max", Int),
    st("memory_dynamic_min", Int),
    st("memory_static_min", Int),
    rw("VCPUs_params", MAP),
    st("VCPUs_max", Int).or(Init::Int(1)),
    st("VCPUs_at_startup", Int).or(Init::Int(1)),
    rw("actions_after_softreboot", e(ON_SOFTREBOOT)),
    rw("actions_after_shutdown", e(ON_NORMAL_EXIT)),
    rw("actions_after_reboot", e(ON_NORMAL_EXIT)).or(Init::Text("restart")),
    st("actions_after_crash", e(ON_CRASH)),
    ro("consoles", Set),
    ro("VIFs", Set),
    ro("VBDs", Set),
    ro("VUSBs", Set),
    ro("crash_dumps", Set),
    ro("VTPMs", Set),
    rw("PV_bootloader", Text),
    rw("PV_kernel", Text),
    rw("PV_ramdisk", Text),
    rw("PV_args", Text),
    rw("PV_bootloader_args", Text),
    rw("PV_legacy_args", Text),
    st("HVM_boot_policy", Text),
    rw("HVM_boot_params", MAP),
    st("HVM_shadow_multiplier", Float).or(Init::Float(1.0)),
    rw("platform", MAP),
    rw("PCI_bus", Text),
    rw("other_config", MAP),
    ro("domid", Int).or(Init::Int(-1)),
    ro("domarch", Text),
    rc("last_boot_CPU_flags", MAP),
    ro("is_control_domain", Bool),
    ro("metrics", r("VM_metrics")),
    ro("guest_metrics", r("VM_guest_metrics")),
    rc("last_booted_record", Text),
    rw("recommendations", Text),
    rw("xenstore_data", MAP),
    st("ha_always_run", Bool),
    st("ha_restart_priority", Text),
    ro("is_a_snapshot", Bool),
    ro("snapshot_of", r("VM")),
    ro("snapshots", Set),
    ro("snapshot_time", DateTime),
    ro("transportable_snapshot_id", Text),
    ro("blobs", MAP),
    rw("tags", Set),
    rw("blocked_operations", Kind::Map(Some(VM_OPERATIONS))),
    ro("snapshot_info", MAP),
    ro("snapshot_metadata", Text),
    ro("parent", r("VM")),
    ro("children", Set),
    rs("bios_strings", Kind::Map(Some(BIOS_STRING_KEYS))),
    st("protection_policy", r("VMPP")),
    st("snapshot_schedule", r("VMSS")),
    rc("is_vmss_snapshot", Bool),
    st("appliance", r("VM_appliance")),
    st("start_delay", Int),
    st("shutdown_delay", Int),
    st("order", Int),
    ro("VGPUs", Set),
    ro("attached_PCIs", Set),
    rw("suspend_SR", r("SR")),
    rc("version", Int),
    rc("generation_id", Text),
    rw("hardware_platform_version", Int),
    st("has_vendor_device", Bool),
    ro("requires_reboot", Bool),
    rc("reference_label", Text),
    st("domain_type", e(DOMAIN_TYPES)),
    st("NVRAM", MAP),
    ro("pending_guidances", Set),
    ro("pending_guidances_recommended", Set),
    ro("pending_guidances_full", Set),
];

const VBD: &[Field] = &[
    ro("uuid", Text),
    ro("allowed_operations", Set),
    ro("current_operations", MAP),
    rc("VM", r("VM")),
    rc("VDI", r("VDI")),
    rc("device", Text),
    rw("userdevice", Text),
    rw("bootable", Bool),
    st("mode", e(VBD_MODES)),
    rw("type", e(VBD_TYPES)),
    rw("unpluggable", Bool).or(Init::Bool(true)),
    ro("storage_lock", Bool),
    rc("empty", Bool),
    rw("other_config", MAP),
    rc("currently_attached", Bool),
    ro("status_code", Int),
    ro("status_detail", Text),
    ro("runtime_properties", MAP),
    rw("qos_algorithm_type", Text),
    rw("qos_algorithm_params", MAP),
    ro("qos_supported_algorithms", Set),
];

const VDI: &[Field] = &[
    ro("uuid", Text),
    // XAPI renames VDIs with explicit `set_name_label` / `set_name_description` messages.
    st("name_label", Text),
    st("name_description", Text),
    ro("allowed_operations", Set),
    ro("current_operations", MAP),
    rc("SR", r("SR")),
    ro("VBDs", Set),
    ro("crash_dumps", Set),
    rc("virtual_size", Int),
    ro("physical_utilisation", Int),
    rc("type", e(VDI_TYPES)),
    st("sharable", Bool),
    rc("read_only", Bool),
    rw("other_config", MAP),
    ro("storage_lock", Bool),
    ro("location", Text),
    ro("managed", Bool).or(Init::Bool(true)),
    ro("missing", Bool),
    ro("parent", r("VDI")),
    rw("xenstore_data", MAP),
    rw("sm_config", MAP),
    rs("is_a_snapshot", Bool),
    rs("snapshot_of", r("VDI")),
    ro("snapshots", Set),
    rs("snapshot_time", DateTime),
    rw("tags", Set),
    rs("allow_caching", Bool),
    rs("on_boot", e(ON_BOOT)),
    rs("metadata_of_pool", r("pool")),
    ro("metadata_latest", Bool),
    ro("is_tools_iso", Bool),
    ro("cbt_enabled", Bool),
];

const SR: &[Field] = &[
    ro("uuid", Text),
    // Renamed through explicit `set_name_label` / `set_name_description` messages in XAPI.
    st("name_label", Text),
    st("name_description", Text),
    ro("allowed_operations", Set),
    ro("current_operations", MAP),
    ro("VDIs", Set),
    ro("PBDs", Set),
    ro("virtual_allocation", Int),
    ro("physical_utilisation", Int),
    rc("physical_size", Int),
    rc("type", Text),
    rc("content_type", Text),
    rs("shared", Bool),
    rw("other_config", MAP),
    rw("tags", Set),
    rw("sm_config", MAP),
    ro("blobs", MAP),
    ro("local_cache_enabled", Bool),
    ro("introduced_by", r("DR_task")),
    ro("clustered", Bool),
    ro("is_tools_sr", Bool),
];

const TASK: &[Field] = &[
    ro("uuid", Text),
    ro("name_label", Text),
    ro("name_description", Text),
    ro("allowed_operations", Set),
    ro("current_operations", MAP),
    ro("created", DateTime),
    ro("finished", DateTime),
    // Status, progress, result and error info have explicit setters (`task.set_progress`, …).
    rs("status", e(TASK_STATUSES)),
    ro("resident_on", r("host")),
    rs("progress", Float),
    ro("type", Text).or(Init::Text("<none/>")),
    rs("result", Text),
    rs("error_info", Set),
    rw("other_config", MAP),
    ro("subtask_of", r("task")),
    ro("subtasks", Set),
    ro("backtrace", Text).or(Init::Text("()")),
];

const SESSION: &[Field] = &[
    ro("uuid", Text),
    ro("this_host", r("host")),
    ro("this_user", r("user")),
    ro("last_active", DateTime),
    ro("pool", Bool),
    rw("other_config", MAP),
    ro("is_local_superuser", Bool),
    ro("subject", r("subject")),
    ro("validation_time", DateTime),
    ro("auth_user_sid", Text),
    ro("auth_user_name", Text),
    rc("rbac_permissions", Set),
    ro("tasks", Set),
    rc("parent", r("session")),
    ro("originator", Text),
    ro("client_certificate", Bool),
];

const POOL: &[Field] = &[
    ro("uuid", Text),
    rw("name_label", Text),
    rw("name_description", Text),
    ro("master", r("host")),
    rw("default_SR", r("SR")),
    rw("suspend_image_SR", r("SR")),
    rw("crash_dump_SR", r("SR")),
    rw("other_config", MAP),
    ro("ha_enabled", Bool),
    ro("ha_configuration", MAP),
    ro("ha_statefiles", Set),
    rs("ha_host_failures_to_tolerate", Int),
    ro("ha_plan_exists_for", Int),
    rw("ha_allow_overcommit", Bool),
    ro("ha_overcommitted", Bool),
    ro("blobs", MAP),
    rw("tags", Set),
    rw("gui_config", MAP),
    rw("health_check_config", MAP),
    ro("wlb_url", Text),
    ro("wlb_username", Text),
    rw("wlb_enabled", Bool),
    rw("wlb_verify_cert", Bool),
    ro("redo_log_enabled", Bool),
    ro("redo_log_vdi", r("VDI")),
    ro("vswitch_controller", Text),
    ro("restrictions", MAP),
    ro("metadata_VDIs", Set),
    ro("ha_cluster_stack", Text),
    ro("allowed_operations", Set),
    ro("current_operations", MAP),
    ro("guest_agent_config", MAP),
    ro("cpu_info", MAP),
    rw("policy_no_vendor_device", Bool),
    rw("live_patching_disabled", Bool),
    rs("igmp_snooping_enabled", Bool),
    st("uefi_certificates", Text),
    st("custom_uefi_certificates", Text),
    rw("is_psr_pending", Bool),
    ro("tls_verification_enabled", Bool),
    ro("repositories", Set),
    ro("client_certificate_auth_enabled", Bool),
    ro("client_certificate_auth_name", Text),
    ro("repository_proxy_url", Text),
    ro("repository_proxy_username", Text),
    ro("repository_proxy_password", r("secret")),
    rw("migration_compression", Bool),
    rw("coordinator_bias", Bool).or(Init::Bool(true)),
    st("local_auth_max_threads", Int).or(Init::Int(8)),
    st("ext_auth_max_threads", Int).or(Init::Int(1)),
    ro("telemetry_uuid", r("secret")),
    ro("telemetry_frequency", e(TELEMETRY_FREQUENCY)),
    rs("telemetry_next_collection", DateTime),
    ro("last_update_sync", DateTime),
    ro("update_sync_frequency", e(UPDATE_SYNC_FREQUENCY)),
    ro("update_sync_day", Int),
    rs("update_sync_enabled", Bool),
];

const HOST: &[Field] = &[
    ro("uuid", Text),
    rw("name_label", Text),
    rw("name_description", Text),
    ro("memory_overhead", Int),
    ro("allowed_operations", Set),
    ro("current_operations", MAP),
    ro("API_version_major", Int),
    ro("API_version_minor", Int),
    ro("API_version_vendor", Text),
    ro("API_version_vendor_implementation", MAP),
    ro("enabled", Bool).or(Init::Bool(true)),
    rc("software_version", MAP),
    rw("other_config", MAP),
    rc("capabilities", Set),
    ro("cpu_configuration", MAP),
    ro("sched_policy", Text),
    ro("supported_bootloaders", Set),
    ro("resident_VMs", Set),
    rw("logging", MAP),
    ro("PIFs", Set),
    rw("suspend_image_sr", r("SR")),
    rw("crash_dump_sr", r("SR")),
    ro("crashdumps", Set),
    ro("patches", Set),
    ro("updates", Set),
    ro("PBDs", Set),
    ro("host_CPUs", Set),
    ro("cpu_info", MAP),
    rw("hostname", Text),
    rw("address", Text),
    ro("metrics", r("host_metrics")),
    ro("license_params", MAP),
    ro("ha_statefiles", Set),
    ro("ha_network_peers", Set),
    ro("blobs", MAP),
    rw("tags", Set),
    ro("external_auth_type", Text),
    ro("external_auth_service_name", Text),
    ro("external_auth_configuration", MAP),
    ro("edition", Text),
    rw("license_server", MAP),
    ro("bios_strings", MAP),
    ro("power_on_mode", Text),
    ro("power_on_config", MAP),
    rc("local_cache_sr", r("SR")),
    ro("chipset_info", MAP),
    ro("PCIs", Set),
    ro("PGPUs", Set),
    ro("PUSBs", Set),
    st("ssl_legacy", Bool),
    rw("guest_VCPUs_params", MAP),
    rw("display", e(HOST_DISPLAY)),
    ro("virtual_hardware_platform_versions", IntSet),
    ro("control_domain", r("VM")),
    ro("updates_requiring_reboot", Set),
    ro("features", Set),
    st("iscsi_iqn", Text),
    st("multipathing", Bool),
    st("uefi_certificates", Text),
    ro("certificates", Set),
    ro("editions", Set),
    ro("pending_guidances", Set),
    ro("tls_verification_enabled", Bool),
    ro("last_software_update", DateTime),
    rs("https_only", Bool),
    ro("latest_synced_updates_applied", e(UPDATES_APPLIED)),
    rs("numa_affinity_policy", e(NUMA_POLICY)),
    ro("pending_guidances_recommended", Set),
    ro("pending_guidances_full", Set),
    ro("last_update_hash", Text),
];

// Networking (the datamodel's `network`, `VIF`, `PIF` and `VLAN`). A VLAN is a PIF too: the
// untagged PIF `VLAN.create` makes on the network, whose `VLAN` is the tag; physical PIFs
// have -1.
pub const NETWORK_PURPOSES: &[&str] = &["nbd", "insecure_nbd"];
pub const NETWORK_LOCKING_MODES: &[&str] = &["unlocked", "disabled"];
pub const VIF_LOCKING_MODES: &[&str] = &["network_default", "locked", "unlocked", "disabled"];
const VIF_IP_CONFIGURATION_MODES: &[&str] = &["None", "Static"];
const PIF_IP_CONFIGURATION_MODES: &[&str] = &["None", "DHCP", "Static"];
const PIF_IPV6_CONFIGURATION_MODES: &[&str] = &["None", "DHCP", "Static", "Autoconf"];
const PRIMARY_ADDRESS_TYPES: &[&str] = &["IPv4", "IPv6"];
const IGMP_STATUSES: &[&str] = &["unknown", "enabled", "disabled"];

const NETWORK: &[Field] = &[
    ro("uuid", Text),
    rw("name_label", Text),
    rw("name_description", Text),
    ro("allowed_operations", Set),
    ro("current_operations", MAP),
    ro("VIFs", Set),
    ro("PIFs", Set),
    rw("MTU", Int).or(Init::Int(1500)),
    rw("other_config", MAP),
    rc("bridge", Text),
    rc("managed", Bool).or(Init::Bool(true)),
    ro("blobs", MAP),
    rw("tags", Set),
    // `network.set_default_locking_mode`, which refuses while a VIF on it is attached.
    rs("default_locking_mode", e(NETWORK_LOCKING_MODES)),
    ro("assigned_ips", MAP),
    // Changed through `network.add_purpose` / `remove_purpose` only.
    ro("purpose", Set),
];

const VIF: &[Field] = &[
    ro("uuid", Text),
    ro("allowed_operations", Set),
    ro("current_operations", MAP),
    rc("device", Text),
    rc("network", r("network")),
    rc("VM", r("VM")),
    rc("MAC", Text),
    rc("MTU", Int).or(Init::Int(1500)),
    rw("other_config", MAP),
    rc("currently_attached", Bool),
    ro("status_code", Int),
    ro("status_detail", Text),
    ro("runtime_properties", MAP),
    rw("qos_algorithm_type", Text),
    rw("qos_algorithm_params", MAP),
    ro("qos_supported_algorithms", Set),
    ro("MAC_autogenerated", Bool),
    // `VIF.set_locking_mode`, `set_ipv4_allowed`, `set_ipv6_allowed` (and `add_`/`remove_`
    // messages for the two address sets) are explicit messages in XAPI.
    st("locking_mode", e(VIF_LOCKING_MODES)),
    st("ipv4_allowed", Set),
    st("ipv6_allowed", Set),
    ro("ipv4_configuration_mode", e(VIF_IP_CONFIGURATION_MODES)),
    ro("ipv4_addresses", Set),
    ro("ipv4_gateway", Text),
    ro("ipv6_configuration_mode", e(VIF_IP_CONFIGURATION_MODES)),
    ro("ipv6_addresses", Set),
    ro("ipv6_gateway", Text),
];

const PIF: &[Field] = &[
    ro("uuid", Text),
    rc("device", Text),
    rc("network", r("network")),
    rc("host", r("host")),
    rc("MAC", Text),
    rc("MTU", Int).or(Init::Int(1500)),
    rc("VLAN", Int).or(Init::Int(-1)),
    ro("metrics", r("PIF_metrics")),
    ro("physical", Bool),
    ro("currently_attached", Bool).or(Init::Bool(true)),
    ro("ip_configuration_mode", e(PIF_IP_CONFIGURATION_MODES)),
    ro("IP", Text),
    ro("netmask", Text),
    ro("gateway", Text),
    ro("DNS", Text),
    ro("bond_slave_of", r("Bond")),
    ro("bond_master_of", Set),
    ro("VLAN_master_of", r("VLAN")),
    ro("VLAN_slave_of", Set),
    ro("management", Bool),
    rw("other_config", MAP),
    rs("disallow_unplug", Bool),
    ro("tunnel_access_PIF_of", Set),
    ro("tunnel_transport_PIF_of", Set),
    ro("ipv6_configuration_mode", e(PIF_IPV6_CONFIGURATION_MODES)),
    ro("IPv6", Set),
    ro("ipv6_gateway", Text),
    ro("primary_address_type", e(PRIMARY_ADDRESS_TYPES)),
    rc("managed", Bool).or(Init::Bool(true)),
    ro("properties", MAP),
    ro("capabilities", Set),
    ro("igmp_snooping_status", e(IGMP_STATUSES)),
    ro("sriov_physical_PIF_of", Set),
    ro("sriov_logical_PIF_of", Set),
    ro("PCI", r("PCI")),
];

const VLAN: &[Field] = &[
    ro("uuid", Text),
    rc("tagged_PIF", r("PIF")),
    ro("untagged_PIF", r("PIF")),
    rc("tag", Int).or(Init::Int(-1)),
    rw("other_config", MAP),
];

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn field_tables_match_the_datamodel_counts_and_have_unique_names() {
        // The rows of Appendix A.2; its VM and VBD headers count one removed field more.
        let expected = [
            (Class::Vm, 89),
            (Class::Vbd, 21),
            (Class::Vdi, 32),
            (Class::Sr, 21),
            (Class::Task, 17),
            (Class::Session, 16),
            (Class::Pool, 57),
            (Class::Host, 70),
            // From XAPI's datamodel (`network`, `VIF`, `PIF`, `VLAN`), removed fields
            // (`VIF.metrics`) left out.
            (Class::Network, 16),
            (Class::Vif, 26),
            (Class::Pif, 35),
            (Class::Vlan, 5),
        ];
        for (class, count) in expected {
            let fields = class.fields();
            assert_eq!(fields.len(), count, "{}", class.name());
            let mut names: Vec<_> = fields.iter().map(|f| f.name).collect();
            names.sort_unstable();
            names.dedup();
            assert_eq!(names.len(), count, "duplicate field in {}", class.name());
        }
    }

    #[test]
    fn relations_name_existing_fields_of_the_right_kinds() {
        for relation in RELATIONS {
            let fk = relation.child.field(relation.foreign_key).unwrap();
            assert!(matches!(fk.kind, Kind::Ref(_)), "{}", fk.name);
            assert!(relation.parent.field(relation.set).unwrap().is_set());
        }
    }

    #[test]
    fn values_are_accepted_in_their_wire_forms() {
        assert_eq!(Kind::Int.accept(&Value::from("42")), Ok(Value::Int(42)));
        assert_eq!(Kind::Float.accept(&Value::Int(1)), Ok(Value::Double(1.0)));
        assert_eq!(
            Kind::Int.accept(&Value::Bool(true)),
            Err(Rejection::WrongType)
        );
        assert_eq!(
            Kind::Enum(VBD_MODES).accept(&Value::from("RX")),
            Err(Rejection::NotInEnum("RX".into()))
        );
        let map = Value::Struct([("n".to_owned(), Value::Int(3))].into());
        assert_eq!(
            Kind::Map(None).accept(&map),
            Ok(Value::Struct([("n".to_owned(), Value::from("3"))].into()))
        );
        let blocked = Value::Struct([("fly".to_owned(), Value::from("no"))].into());
        assert_eq!(
            Kind::Map(Some(VM_OPERATIONS)).accept(&blocked),
            Err(Rejection::NotInEnum("fly".into()))
        );
    }
}
