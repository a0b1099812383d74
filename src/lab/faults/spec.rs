//! Fault specs: what `lab.inject_fault` (or `vhdsync lab fault`) is given, read with errors
//! naming the field, and shown back the same way by `lab.list_faults`.

use std::collections::BTreeMap;

use crate::xapi::rpc::{Value, XapiFault};

/// The two directions of the data plane.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Plane {
    Export,
    Import,
    /// The NBD server's reads (only `drop_nbd` acts there).
    Nbd,
}

/// The planes a bandwidth limit applies to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Planes {
    Export,
    Import,
    Both,
}

/// The operations an `sr_full` fault can refuse.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SrFullOn {
    VdiCreate,
    VdiClone,
    Import,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum FaultKind {
    /// The export body ends (the connection closes) after this many bytes.
    DropExport { after_bytes: u64 },
    /// The import stops reading and closes the connection after this many body bytes.
    DropImport { after_bytes: u64 },
    /// An NBD connection closes once it has sent this many bytes of read data.
    DropNbd { after_bytes: u64 },
    /// The export fails with `VDI_IO_ERROR` after its 200, the error embedded in the body.
    FailExport,
    /// The import fails with `VDI_IO_ERROR` before applying anything.
    FailImport,
    /// The operation is refused with `SR_FULL`.
    SrFull { on: SrFullOn },
    /// Nothing is sent or read for `seconds` once `after_bytes` have passed.
    Stall {
        on: Plane,
        seconds: u64,
        after_bytes: u64,
    },
    /// xapi's quirk: an `HTTP/1.1 500` response inside the export body after this many bytes.
    EmbeddedError { after_bytes: u64 },
    /// `method` (or `Async.method`) answers the XAPI error `code`.
    RpcError {
        method: String,
        code: String,
        count: u64,
    },
    /// The data plane moves at most this many bytes per second.
    Bandwidth { bytes_per_second: u64, on: Planes },
    /// A transfer request on `on` is answered `302 Found` to the host at base URL `to`, with
    /// the same path and query, as a pool member that does not hold the SR answers.
    Redirect { on: Plane, to: String },
    /// The next VM started (or only `vm`) fails to boot: `VM.start` succeeds, but its guest
    /// agent never reports (`hang`), or the VM crashes back to Halted after the boot delay
    /// (`crash`).
    BootFailure {
        mode: BootFailure,
        vm: Option<VmFilter>,
    },
}

/// How a boot fails.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BootFailure {
    /// The VM runs but never gets `guest_metrics`: a guest stuck before its agent starts.
    Hang,
    /// The VM halts when it would have reported, as a guest that crashes while booting.
    Crash,
}

impl BootFailure {
    fn name(self) -> &'static str {
        match self {
            BootFailure::Hang => "hang",
            BootFailure::Crash => "crash",
        }
    }
}

/// The VM a boot fault is restricted to, by both of its names.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VmFilter {
    pub reference: String,
    pub uuid: String,
}

/// The VDI a fault is restricted to, by both of its names, since a transfer or a call may
/// name it either way.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VdiFilter {
    pub reference: String,
    pub uuid: String,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FaultSpec {
    pub kind: FaultKind,
    pub persistent: bool,
    pub vdi: Option<VdiFilter>,
}

/// Why a spec given to `lab.inject_fault` was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SpecError {
    #[error("the fault has no {field}")]
    Missing { field: String },
    #[error("{field} must be {expected}, not {found}")]
    WrongType {
        field: String,
        expected: &'static str,
        found: &'static str,
    },
    #[error("{field} = {value:?}: {reason}")]
    Invalid {
        field: String,
        value: String,
        reason: String,
    },
    #[error("no VDI {0}")]
    UnknownVdi(String),
    #[error("no VM {0}")]
    UnknownVm(String),
}

impl From<SpecError> for XapiFault {
    fn from(error: SpecError) -> XapiFault {
        match error {
            SpecError::Missing { field } | SpecError::WrongType { field, .. } => {
                XapiFault::new("FIELD_TYPE_ERROR", [field])
            }
            SpecError::Invalid { field, value, .. } => {
                XapiFault::new("INVALID_VALUE", [field, value])
            }
            SpecError::UnknownVdi(name) if name.starts_with("OpaqueRef:") => {
                XapiFault::new("HANDLE_INVALID", ["VDI".to_owned(), name])
            }
            SpecError::UnknownVdi(name) => XapiFault::new("UUID_INVALID", ["VDI".to_owned(), name]),
            SpecError::UnknownVm(name) if name.starts_with("OpaqueRef:") => {
                XapiFault::new("HANDLE_INVALID", ["VM".to_owned(), name])
            }
            SpecError::UnknownVm(name) => XapiFault::new("UUID_INVALID", ["VM".to_owned(), name]),
        }
    }
}

/// Fields every kind takes.
const COMMON_FIELDS: &[&str] = &["kind", "persistent", "vdi"];

/// Each kind and the fields it takes besides the common ones.
const KINDS: &[(&str, &[&str])] = &[
    ("drop_export", &["after_bytes"]),
    ("drop_import", &["after_bytes"]),
    ("drop_nbd", &["after_bytes"]),
    ("fail_export", &[]),
    ("fail_import", &[]),
    ("sr_full", &["on"]),
    ("stall", &["on", "seconds", "after_bytes"]),
    ("embedded_error", &["after_bytes"]),
    ("rpc_error", &["method", "code", "count"]),
    ("bandwidth", &["bytes_per_second", "on"]),
    ("redirect", &["on", "to"]),
    ("boot_failure", &["mode", "vm"]),
];

/// The fault kinds, as `lab.inject_fault` and `vhdsync lab fault` name them.
pub fn kind_names() -> impl Iterator<Item = &'static str> {
    KINDS.iter().map(|(kind, _)| *kind)
}

/// A spec's members, read with errors naming the field.
struct Members<'a>(&'a BTreeMap<String, Value>);

impl Members<'_> {
    fn text(&self, field: &str) -> Result<Option<&str>, SpecError> {
        self.0
            .get(field)
            .map(|value| {
                value
                    .as_str()
                    .ok_or_else(|| wrong_type(field, "a string", value))
            })
            .transpose()
    }

    fn required_text(&self, field: &str) -> Result<&str, SpecError> {
        self.text(field)?.ok_or_else(|| SpecError::Missing {
            field: field.to_owned(),
        })
    }

    /// A count of bytes, seconds or calls: an int, or its decimal text as XML-RPC carries
    /// 64-bit ints; at least `min`.
    fn count(&self, field: &str, min: u64) -> Result<Option<u64>, SpecError> {
        let Some(value) = self.0.get(field) else {
            return Ok(None);
        };
        let n = value
            .as_i64()
            .ok_or_else(|| wrong_type(field, "an int", value))?;
        match u64::try_from(n) {
            Ok(n) if n >= min => Ok(Some(n)),
            _ => Err(invalid(field, n, format!("must be at least {min}"))),
        }
    }

    fn required_count(&self, field: &str, min: u64) -> Result<u64, SpecError> {
        self.count(field, min)?.ok_or_else(|| SpecError::Missing {
            field: field.to_owned(),
        })
    }

    fn flag(&self, field: &str) -> Result<bool, SpecError> {
        match self.0.get(field) {
            None => Ok(false),
            Some(Value::Bool(b)) => Ok(*b),
            Some(Value::String(text)) if text == "true" => Ok(true),
            Some(Value::String(text)) if text == "false" => Ok(false),
            Some(value) => Err(wrong_type(field, "a boolean", value)),
        }
    }
}

fn wrong_type(field: &str, expected: &'static str, found: &Value) -> SpecError {
    SpecError::WrongType {
        field: field.to_owned(),
        expected,
        found: found.kind(),
    }
}

fn invalid(field: &str, value: impl ToString, reason: impl Into<String>) -> SpecError {
    SpecError::Invalid {
        field: field.to_owned(),
        value: value.to_string(),
        reason: reason.into(),
    }
}

impl FaultSpec {
    /// Read a spec such as `{kind: "drop_export", after_bytes: "1048576", vdi: "…"}`.
    /// `resolve` finds the VDI a `vdi` member names and `resolve_vm` the VM a `vm` member
    /// names (by reference or uuid). Fields a kind does not take are refused, so a misspelt
    /// one is not silently ignored.
    pub fn parse(
        members: &BTreeMap<String, Value>,
        resolve: impl FnOnce(&str) -> Option<VdiFilter>,
        resolve_vm: impl FnOnce(&str) -> Option<VmFilter>,
    ) -> Result<FaultSpec, SpecError> {
        let given = Members(members);
        let name = given.required_text("kind")?;
        let not_a_kind = || invalid("kind", name, "not a fault kind");
        let (_, fields) = KINDS
            .iter()
            .find(|(kind, _)| *kind == name)
            .ok_or_else(not_a_kind)?;
        if let Some((field, value)) = members
            .iter()
            .find(|(f, _)| !COMMON_FIELDS.contains(&f.as_str()) && !fields.contains(&f.as_str()))
        {
            return Err(invalid(
                field,
                shown(value),
                format!("{name} takes no {field}"),
            ));
        }
        let after_bytes = || given.required_count("after_bytes", 0);
        let kind = match name {
            "drop_export" => FaultKind::DropExport {
                after_bytes: after_bytes()?,
            },
            "drop_import" => FaultKind::DropImport {
                after_bytes: after_bytes()?,
            },
            "drop_nbd" => FaultKind::DropNbd {
                after_bytes: after_bytes()?,
            },
            "fail_export" => FaultKind::FailExport,
            "fail_import" => FaultKind::FailImport,
            "sr_full" => FaultKind::SrFull {
                on: match given.required_text("on")? {
                    "VDI.create" => SrFullOn::VdiCreate,
                    "VDI.clone" => SrFullOn::VdiClone,
                    "import" => SrFullOn::Import,
                    other => return Err(invalid("on", other, "VDI.create, VDI.clone or import")),
                },
            },
            "stall" => FaultKind::Stall {
                on: plane(given.required_text("on")?)?,
                seconds: given.required_count("seconds", 0)?,
                after_bytes: given.count("after_bytes", 0)?.unwrap_or(0),
            },
            "embedded_error" => FaultKind::EmbeddedError {
                after_bytes: after_bytes()?,
            },
            "rpc_error" => rpc_error(&given)?,
            "bandwidth" => FaultKind::Bandwidth {
                bytes_per_second: given.required_count("bytes_per_second", 1)?,
                on: match given.text("on")?.unwrap_or("both") {
                    "both" => Planes::Both,
                    other => match plane(other)? {
                        Plane::Export => Planes::Export,
                        Plane::Import => Planes::Import,
                        Plane::Nbd => return Err(invalid("on", other, "export, import or both")),
                    },
                },
            },
            "redirect" => FaultKind::Redirect {
                on: match given.required_text("on")? {
                    "nbd" => return Err(invalid("on", "nbd", "export or import")),
                    other => plane(other)?,
                },
                to: base_url(given.required_text("to")?)?,
            },
            "boot_failure" => FaultKind::BootFailure {
                mode: match given.text("mode")?.unwrap_or("hang") {
                    "hang" => BootFailure::Hang,
                    "crash" => BootFailure::Crash,
                    other => return Err(invalid("mode", other, "hang or crash")),
                },
                vm: given
                    .text("vm")?
                    .map(|named| {
                        resolve_vm(named).ok_or_else(|| SpecError::UnknownVm(named.into()))
                    })
                    .transpose()?,
            },
            _ => return Err(not_a_kind()),
        };
        let persistent = given.flag("persistent")?;
        if let Some(count) = members.get("count").filter(|_| persistent) {
            return Err(invalid(
                "count",
                shown(count),
                "a persistent fault fires on every call",
            ));
        }
        let vdi = match given.text("vdi")? {
            None => None,
            Some(named) if !kind.may_concern_a_vdi() => {
                return Err(invalid("vdi", named, format!("{name} concerns no VDI")));
            }
            Some(named) => Some(resolve(named).ok_or_else(|| SpecError::UnknownVdi(named.into()))?),
        };
        Ok(FaultSpec {
            kind,
            persistent,
            vdi,
        })
    }
}

/// A scalar as text, for an error naming the value.
fn shown(value: &Value) -> String {
    match value {
        Value::String(text) => text.clone(),
        Value::Int(n) => n.to_string(),
        Value::Bool(b) => b.to_string(),
        Value::Double(x) => x.to_string(),
        other => other.kind().to_owned(),
    }
}

fn plane(text: &str) -> Result<Plane, SpecError> {
    match text {
        "export" => Ok(Plane::Export),
        "import" => Ok(Plane::Import),
        "nbd" => Ok(Plane::Nbd),
        other => Err(invalid("on", other, "export, import or nbd")),
    }
}

/// A redirect's target: `http(s)://host[:port]`, without a path, which the request's own
/// path and query follow.
fn base_url(text: &str) -> Result<String, SpecError> {
    let authority = text
        .strip_prefix("http://")
        .or_else(|| text.strip_prefix("https://"))
        .unwrap_or_default();
    if authority.is_empty() || authority.contains(['/', '?', '#', '@', ' ']) {
        return Err(invalid("to", text, "a base URL such as http://10.0.0.2:80"));
    }
    Ok(text.to_owned())
}

fn rpc_error(given: &Members) -> Result<FaultKind, SpecError> {
    let method = given.required_text("method")?;
    if !method.contains('.') {
        return Err(invalid("method", method, "a method such as VDI.clone"));
    }
    if is_lab_call(method) {
        return Err(invalid("method", method, "lab calls are never faulted"));
    }
    let code = given.required_text("code")?;
    if code.is_empty() {
        return Err(invalid(
            "code",
            code,
            "an error code such as SR_BACKEND_FAILURE",
        ));
    }
    Ok(FaultKind::RpcError {
        method: method.to_owned(),
        code: code.to_owned(),
        count: given.count("count", 1)?.unwrap_or(1),
    })
}

/// The lab's own calls, which control the faults and so are never faulted themselves.
pub(super) fn is_lab_call(method: &str) -> bool {
    method
        .strip_prefix("Async.")
        .unwrap_or(method)
        .starts_with("lab.")
}

impl FaultKind {
    fn name(&self) -> &'static str {
        match self {
            FaultKind::DropExport { .. } => "drop_export",
            FaultKind::DropImport { .. } => "drop_import",
            FaultKind::DropNbd { .. } => "drop_nbd",
            FaultKind::FailExport => "fail_export",
            FaultKind::FailImport => "fail_import",
            FaultKind::SrFull { .. } => "sr_full",
            FaultKind::Stall { .. } => "stall",
            FaultKind::EmbeddedError { .. } => "embedded_error",
            FaultKind::RpcError { .. } => "rpc_error",
            FaultKind::Bandwidth { .. } => "bandwidth",
            FaultKind::Redirect { .. } => "redirect",
            FaultKind::BootFailure { .. } => "boot_failure",
        }
    }

    /// Whether the fault meets a VDI it could be restricted to: transfers and clones do;
    /// `VDI.create` and arbitrary calls do not.
    fn may_concern_a_vdi(&self) -> bool {
        !matches!(
            self,
            FaultKind::RpcError { .. }
                | FaultKind::Redirect { .. }
                | FaultKind::BootFailure { .. }
                | FaultKind::SrFull {
                    on: SrFullOn::VdiCreate
                }
        )
    }

    /// How many firings a one-shot fault of this kind lasts.
    pub(super) fn shots(&self) -> u64 {
        match self {
            FaultKind::RpcError { count, .. } => *count,
            _ => 1,
        }
    }
}

impl VdiFilter {
    /// Whether a call or transfer known by `names` (a reference, a uuid) is about this VDI.
    pub(super) fn matches(&self, names: &[&str]) -> bool {
        names
            .iter()
            .any(|n| *n == self.reference || *n == self.uuid)
    }
}

impl VmFilter {
    /// Whether the VM known by `names` (a reference, a uuid) is this one.
    pub(super) fn matches(&self, names: &[&str]) -> bool {
        names
            .iter()
            .any(|n| *n == self.reference || *n == self.uuid)
    }
}

impl FaultSpec {
    /// The spec's fields as given to `lab.inject_fault`.
    pub(super) fn to_members(&self) -> BTreeMap<String, Value> {
        let int = count_value;
        let mut members = BTreeMap::from([
            ("kind".to_owned(), Value::from(self.kind.name())),
            ("persistent".to_owned(), Value::Bool(self.persistent)),
        ]);
        if let Some(vdi) = &self.vdi {
            members.insert("vdi".into(), Value::from(vdi.uuid.as_str()));
        }
        let plane = |p: &Plane| match p {
            Plane::Export => "export",
            Plane::Import => "import",
            Plane::Nbd => "nbd",
        };
        let fields: Vec<(&str, Value)> = match &self.kind {
            FaultKind::DropExport { after_bytes }
            | FaultKind::DropImport { after_bytes }
            | FaultKind::DropNbd { after_bytes }
            | FaultKind::EmbeddedError { after_bytes } => {
                vec![("after_bytes", int(*after_bytes))]
            }
            FaultKind::FailExport | FaultKind::FailImport => vec![],
            FaultKind::SrFull { on } => vec![(
                "on",
                Value::from(match on {
                    SrFullOn::VdiCreate => "VDI.create",
                    SrFullOn::VdiClone => "VDI.clone",
                    SrFullOn::Import => "import",
                }),
            )],
            FaultKind::Stall {
                on,
                seconds,
                after_bytes,
            } => vec![
                ("on", Value::from(plane(on))),
                ("seconds", int(*seconds)),
                ("after_bytes", int(*after_bytes)),
            ],
            FaultKind::RpcError {
                method,
                code,
                count,
            } => vec![
                ("method", Value::from(method.as_str())),
                ("code", Value::from(code.as_str())),
                ("count", int(*count)),
            ],
            FaultKind::Bandwidth {
                bytes_per_second,
                on,
            } => vec![
                ("bytes_per_second", int(*bytes_per_second)),
                (
                    "on",
                    Value::from(match on {
                        Planes::Export => "export",
                        Planes::Import => "import",
                        Planes::Both => "both",
                    }),
                ),
            ],
            FaultKind::Redirect { on, to } => vec![
                ("on", Value::from(plane(on))),
                ("to", Value::from(to.as_str())),
            ],
            FaultKind::BootFailure { mode, vm } => {
                let mut fields = vec![("mode", Value::from(mode.name()))];
                if let Some(vm) = vm {
                    fields.push(("vm", Value::from(vm.uuid.as_str())));
                }
                fields
            }
        };
        members.extend(fields.into_iter().map(|(k, v)| (k.to_owned(), v)));
        members
    }
}

/// A count as an int member, as `lab.list_faults` shows counts.
pub(super) fn count_value(n: u64) -> Value {
    Value::Int(i64::try_from(n).unwrap_or(i64::MAX))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::lab::faults::Faults;

    fn spec(members: &[(&str, Value)]) -> Result<FaultSpec, SpecError> {
        let members = members
            .iter()
            .map(|(k, v)| ((*k).to_owned(), v.clone()))
            .collect();
        FaultSpec::parse(
            &members,
            |name| {
                (name == "disk" || name == "OpaqueRef:disk").then(|| VdiFilter {
                    reference: "OpaqueRef:disk".into(),
                    uuid: "disk".into(),
                })
            },
            |name| {
                (name == "web" || name == "OpaqueRef:web").then(|| VmFilter {
                    reference: "OpaqueRef:web".into(),
                    uuid: "web".into(),
                })
            },
        )
    }

    #[test]
    fn boot_failures_hang_by_default_and_may_name_a_vm() {
        let hang = spec(&[kind("boot_failure")]).unwrap();
        assert_eq!(
            hang.kind,
            FaultKind::BootFailure {
                mode: BootFailure::Hang,
                vm: None
            }
        );
        let crash = spec(&[
            kind("boot_failure"),
            ("mode", "crash".into()),
            ("vm", "OpaqueRef:web".into()),
        ])
        .unwrap();
        let shown = crash.to_members();
        assert_eq!(shown["mode"], Value::from("crash"));
        assert_eq!(shown["vm"], Value::from("web"));
        let faults = Faults::default();
        faults.inject(crash);
        assert_eq!(faults.on_boot(&["OpaqueRef:other", "other"]), None);
        assert_eq!(
            faults.on_boot(&["OpaqueRef:web", "web"]),
            Some(BootFailure::Crash)
        );
        assert_eq!(faults.on_boot(&["OpaqueRef:web", "web"]), None, "one-shot");
        // Boot faults meet no call and no transfer.
        faults.inject(hang);
        assert_eq!(faults.on_rpc("VM.start", None), None);
        assert_eq!(faults.on_boot(&["any"]), Some(BootFailure::Hang));
    }

    fn kind(name: &str) -> (&'static str, Value) {
        ("kind", Value::from(name))
    }

    fn int(n: i64) -> Value {
        Value::Int(n)
    }

    #[test]
    fn redirects_fire_once_on_their_plane_and_need_a_base_url() {
        let faults = Faults::default();
        let redirect = spec(&[
            kind("redirect"),
            ("on", "import".into()),
            ("to", "http://10.0.0.2:8080".into()),
        ])
        .unwrap();
        faults.inject(redirect);
        assert_eq!(faults.on_transfer_request(Plane::Export), None);
        assert_eq!(
            faults.on_transfer_request(Plane::Import).as_deref(),
            Some("http://10.0.0.2:8080")
        );
        assert_eq!(faults.on_transfer_request(Plane::Import), None, "one-shot");
        for bad in ["10.0.0.2", "http://", "http://h/path", "ftp://h"] {
            let refused = spec(&[
                kind("redirect"),
                ("on", "export".into()),
                ("to", bad.into()),
            ]);
            assert!(
                matches!(&refused, Err(SpecError::Invalid { field, .. }) if field == "to"),
                "{bad}: {refused:?}"
            );
        }
    }

    #[test]
    fn only_stalls_and_drops_reach_nbd_connections() {
        let stall = spec(&[kind("stall"), ("on", "nbd".into()), ("seconds", int(3))]).unwrap();
        assert_eq!(
            stall.kind,
            FaultKind::Stall {
                on: Plane::Nbd,
                seconds: 3,
                after_bytes: 0
            }
        );
        let faults = Faults::default();
        faults.inject(stall);
        let step = faults
            .arm(Plane::Nbd, &[])
            .step(0, 10, std::time::Duration::ZERO);
        assert_eq!(
            (step.wait, step.pass, step.cut),
            (std::time::Duration::from_secs(3), 10, None)
        );
        for refused in [
            spec(&[
                kind("redirect"),
                ("on", "nbd".into()),
                ("to", "http://h".into()),
            ]),
            spec(&[
                kind("bandwidth"),
                ("bytes_per_second", int(10)),
                ("on", "nbd".into()),
            ]),
        ] {
            assert!(
                matches!(&refused, Err(SpecError::Invalid { field, .. }) if field == "on"),
                "{refused:?}"
            );
        }
    }

    #[test]
    fn specs_take_ints_as_ints_or_decimal_text() {
        let typed = spec(&[kind("drop_export"), ("after_bytes", int(1 << 20))]).unwrap();
        let text = spec(&[kind("drop_export"), ("after_bytes", "1048576".into())]).unwrap();
        assert_eq!(typed, text);
        assert_eq!(
            typed,
            FaultSpec {
                kind: FaultKind::DropExport {
                    after_bytes: 1 << 20
                },
                persistent: false,
                vdi: None,
            }
        );
        let full = spec(&[
            kind("rpc_error"),
            ("method", "VDI.clone".into()),
            ("code", "SR_BACKEND_FAILURE_44".into()),
            ("count", "3".into()),
            ("vdi", Value::from("x")),
        ]);
        assert_eq!(
            XapiFault::from(full.unwrap_err()),
            XapiFault::new("INVALID_VALUE", ["vdi", "x"])
        );
        let restricted = spec(&[
            kind("stall"),
            ("on", "import".into()),
            ("seconds", int(2)),
            ("persistent", Value::Bool(true)),
            ("vdi", "OpaqueRef:disk".into()),
        ])
        .unwrap();
        assert!(restricted.persistent);
        assert_eq!(restricted.vdi.unwrap().uuid, "disk");
        let bandwidth = spec(&[kind("bandwidth"), ("bytes_per_second", int(10))]).unwrap();
        assert_eq!(
            bandwidth.kind,
            FaultKind::Bandwidth {
                bytes_per_second: 10,
                on: Planes::Both
            }
        );
    }

    #[test]
    fn bad_specs_name_the_field() {
        let cases: &[(&[(&str, Value)], XapiFault)] = &[
            (&[], XapiFault::new("FIELD_TYPE_ERROR", ["kind"])),
            (
                &[kind("explode")],
                XapiFault::new("INVALID_VALUE", ["kind", "explode"]),
            ),
            (
                &[kind("drop_export")],
                XapiFault::new("FIELD_TYPE_ERROR", ["after_bytes"]),
            ),
            (
                &[kind("drop_export"), ("after_bytes", "1M".into())],
                XapiFault::new("FIELD_TYPE_ERROR", ["after_bytes"]),
            ),
            (
                &[kind("drop_export"), ("after_bytes", int(-1))],
                XapiFault::new("INVALID_VALUE", ["after_bytes", "-1"]),
            ),
            (
                &[
                    kind("drop_export"),
                    ("after_bytes", int(1)),
                    ("seconds", int(5)),
                ],
                XapiFault::new("INVALID_VALUE", ["seconds", "5"]),
            ),
            (
                &[kind("sr_full"), ("on", "VM.start".into())],
                XapiFault::new("INVALID_VALUE", ["on", "VM.start"]),
            ),
            (
                &[
                    kind("sr_full"),
                    ("on", "VDI.create".into()),
                    ("vdi", "disk".into()),
                ],
                XapiFault::new("INVALID_VALUE", ["vdi", "disk"]),
            ),
            (
                &[kind("fail_export"), ("vdi", "nope".into())],
                XapiFault::new("UUID_INVALID", ["VDI", "nope"]),
            ),
            (
                &[kind("fail_export"), ("persistent", int(1))],
                XapiFault::new("FIELD_TYPE_ERROR", ["persistent"]),
            ),
            (
                &[
                    kind("rpc_error"),
                    ("method", "lab.hash".into()),
                    ("code", "X".into()),
                ],
                XapiFault::new("INVALID_VALUE", ["method", "lab.hash"]),
            ),
            (
                &[
                    kind("rpc_error"),
                    ("method", "VM.start".into()),
                    ("code", "X".into()),
                    ("count", int(0)),
                ],
                XapiFault::new("INVALID_VALUE", ["count", "0"]),
            ),
            (
                &[
                    kind("rpc_error"),
                    ("method", "VM.start".into()),
                    ("code", "X".into()),
                    ("count", int(2)),
                    ("persistent", Value::Bool(true)),
                ],
                XapiFault::new("INVALID_VALUE", ["count", "2"]),
            ),
            (
                &[kind("bandwidth"), ("bytes_per_second", int(0))],
                XapiFault::new("INVALID_VALUE", ["bytes_per_second", "0"]),
            ),
            (
                &[kind("stall"), ("on", "both".into()), ("seconds", int(1))],
                XapiFault::new("INVALID_VALUE", ["on", "both"]),
            ),
            (
                &[kind("boot_failure"), ("mode", "explode".into())],
                XapiFault::new("INVALID_VALUE", ["mode", "explode"]),
            ),
            (
                &[kind("boot_failure"), ("vm", "OpaqueRef:nope".into())],
                XapiFault::new("HANDLE_INVALID", ["VM", "OpaqueRef:nope"]),
            ),
            (
                &[kind("boot_failure"), ("vdi", "disk".into())],
                XapiFault::new("INVALID_VALUE", ["vdi", "disk"]),
            ),
            (
                &[
                    kind("drop_export"),
                    ("after_bytes", int(1)),
                    ("vm", "web".into()),
                ],
                XapiFault::new("INVALID_VALUE", ["vm", "web"]),
            ),
        ];
        for (members, expected) in cases {
            let error = spec(members).unwrap_err();
            assert_eq!(&XapiFault::from(error), expected, "{members:?}");
        }
    }
}
