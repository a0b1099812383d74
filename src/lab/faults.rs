//! Fault injection: faults a test sets with `lab.inject_fault` (or `vhdsync lab fault`), which
//! the RPC dispatch and the data plane then act on (issue 8 §1).
//!
//! This module only decides; it performs no I/O and reads no clock. The registry says which
//! fault a call or a transfer meets, and [`TransferFaults::step`] says what to do with a
//! transfer's next bytes (wait, pass some of them, end the transfer); the hooks carry that
//! out. Faults live in memory only, like tasks: a restarted lab host has none.
//!
//! Firing: a one-shot fault is removed when it fires (an `rpc_error` after `count` firings);
//! a persistent one stays until cleared. A transfer arms the data-plane faults that exist when
//! it starts and claims each from the registry only when it fires, so a one-shot fault armed
//! by two concurrent transfers fires in one of them, and a fault cleared meanwhile not at all.
//! A `drop_export` after more bytes than the export has never fires and stays.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::Duration;

use crate::xapi::rpc::{Value, XapiFault};

/// A fault's identifier, unique for the life of the lab host.
pub type FaultId = u64;

/// The two directions of the data plane.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Plane {
    Export,
    Import,
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
        }
    }
}

/// Fields every kind takes.
const COMMON_FIELDS: &[&str] = &["kind", "persistent", "vdi"];

/// Each kind and the fields it takes besides the common ones.
const KINDS: &[(&str, &[&str])] = &[
    ("drop_export", &["after_bytes"]),
    ("drop_import", &["after_bytes"]),
    ("fail_export", &[]),
    ("fail_import", &[]),
    ("sr_full", &["on"]),
    ("stall", &["on", "seconds", "after_bytes"]),
    ("embedded_error", &["after_bytes"]),
    ("rpc_error", &["method", "code", "count"]),
    ("bandwidth", &["bytes_per_second", "on"]),
    ("redirect", &["on", "to"]),
];

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
    /// `resolve` finds the VDI a `vdi` member names (by reference or uuid). Fields a kind
    /// does not take are refused, so a misspelt one is not silently ignored.
    pub fn parse(
        members: &BTreeMap<String, Value>,
        resolve: impl FnOnce(&str) -> Option<VdiFilter>,
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
                    },
                },
            },
            "redirect" => FaultKind::Redirect {
                on: plane(given.required_text("on")?)?,
                to: base_url(given.required_text("to")?)?,
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
        other => Err(invalid("on", other, "export or import")),
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
fn is_lab_call(method: &str) -> bool {
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
            FaultKind::FailExport => "fail_export",
            FaultKind::FailImport => "fail_import",
            FaultKind::SrFull { .. } => "sr_full",
            FaultKind::Stall { .. } => "stall",
            FaultKind::EmbeddedError { .. } => "embedded_error",
            FaultKind::RpcError { .. } => "rpc_error",
            FaultKind::Bandwidth { .. } => "bandwidth",
            FaultKind::Redirect { .. } => "redirect",
        }
    }

    /// Whether the fault meets a VDI it could be restricted to: transfers and clones do;
    /// `VDI.create` and arbitrary calls do not.
    fn may_concern_a_vdi(&self) -> bool {
        !matches!(
            self,
            FaultKind::RpcError { .. }
                | FaultKind::Redirect { .. }
                | FaultKind::SrFull {
                    on: SrFullOn::VdiCreate
                }
        )
    }

    /// How many firings a one-shot fault of this kind lasts.
    fn shots(&self) -> u64 {
        match self {
            FaultKind::RpcError { count, .. } => *count,
            _ => 1,
        }
    }

    /// What this fault does to a transfer on `plane`, if anything.
    fn effect(&self, plane: Plane) -> Option<Effect> {
        let cut = |after, how| Some(Effect::Cut { after, how });
        match (self, plane) {
            (FaultKind::DropExport { after_bytes }, Plane::Export)
            | (FaultKind::DropImport { after_bytes }, Plane::Import) => {
                cut(*after_bytes, CutKind::Drop)
            }
            (FaultKind::FailExport, Plane::Export) | (FaultKind::FailImport, Plane::Import) => {
                cut(0, CutKind::Fail)
            }
            (FaultKind::EmbeddedError { after_bytes }, Plane::Export) => {
                cut(*after_bytes, CutKind::Fail)
            }
            (
                FaultKind::Stall {
                    on,
                    seconds,
                    after_bytes,
                },
                _,
            ) if *on == plane => Some(Effect::Stall {
                after: *after_bytes,
                wait: Duration::from_secs(*seconds),
            }),
            (
                FaultKind::Bandwidth {
                    bytes_per_second,
                    on,
                },
                _,
            ) if matches!(
                (on, plane),
                (Planes::Both, _)
                    | (Planes::Export, Plane::Export)
                    | (Planes::Import, Plane::Import)
            ) =>
            {
                Some(Effect::Throttle {
                    rate: *bytes_per_second,
                })
            }
            _ => None,
        }
    }
}

impl VdiFilter {
    /// Whether a call or transfer known by `names` (a reference, a uuid) is about this VDI.
    fn matches(&self, names: &[&str]) -> bool {
        names
            .iter()
            .any(|n| *n == self.reference || *n == self.uuid)
    }
}

/// A fault in the registry, as `lab.list_faults` shows it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Fault {
    pub id: FaultId,
    pub spec: FaultSpec,
    /// Times it fired so far (a one-shot fault is gone after its last).
    pub fired: u64,
}

impl Fault {
    /// The spec's fields as given to `lab.inject_fault`, plus `id` and `fired`.
    pub fn to_value(&self) -> Value {
        let int = |n: u64| Value::Int(i64::try_from(n).unwrap_or(i64::MAX));
        let mut members = BTreeMap::from([
            ("id".to_owned(), Value::from(self.id.to_string())),
            ("kind".to_owned(), Value::from(self.spec.kind.name())),
            ("persistent".to_owned(), Value::Bool(self.spec.persistent)),
            ("fired".to_owned(), int(self.fired)),
        ]);
        if let Some(vdi) = &self.spec.vdi {
            members.insert("vdi".into(), Value::from(vdi.uuid.as_str()));
        }
        let plane = |p: &Plane| match p {
            Plane::Export => "export",
            Plane::Import => "import",
        };
        let fields: Vec<(&str, Value)> = match &self.spec.kind {
            FaultKind::DropExport { after_bytes }
            | FaultKind::DropImport { after_bytes }
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
        };
        members.extend(fields.into_iter().map(|(k, v)| (k.to_owned(), v)));
        Value::Struct(members)
    }
}

/// What an RPC meets instead of running.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RpcFault {
    /// The XAPI error `code`.
    Error { id: FaultId, code: String },
    /// `SR_FULL`, whose sizes the caller knows.
    SrFull { id: FaultId },
}

/// The lab host's faults. Cheap to share: transfers keep a handle to claim faults as they fire.
#[derive(Debug, Default)]
pub struct Faults {
    registry: Arc<Mutex<Registry>>,
}

#[derive(Debug, Default)]
struct Registry {
    last_id: FaultId,
    faults: Vec<Fault>,
}

impl Registry {
    /// Fire fault `id` if it is still there; a one-shot fault's last firing removes it.
    fn fire(&mut self, id: FaultId) -> bool {
        let Some(at) = self.faults.iter().position(|f| f.id == id) else {
            return false;
        };
        let fault = &mut self.faults[at];
        fault.fired += 1;
        if !fault.spec.persistent && fault.fired >= fault.spec.kind.shots() {
            self.faults.remove(at);
        }
        true
    }

    /// Fire the first fault `pick` accepts, answering what `pick` made of it.
    fn fire_first<T>(&mut self, mut pick: impl FnMut(&Fault) -> Option<T>) -> Option<T> {
        let (id, found) = self
            .faults
            .iter()
            .find_map(|fault| Some((fault.id, pick(fault)?)))?;
        self.fire(id);
        Some(found)
    }
}

impl Faults {
    fn registry(&self) -> MutexGuard<'_, Registry> {
        lock(&self.registry)
    }

    /// Add a fault; it applies to calls and to transfers that start from now on.
    pub fn inject(&self, spec: FaultSpec) -> FaultId {
        let mut registry = self.registry();
        registry.last_id += 1;
        let id = registry.last_id;
        registry.faults.push(Fault { id, spec, fired: 0 });
        id
    }

    /// The faults waiting to fire, oldest first.
    pub fn list(&self) -> Vec<Fault> {
        self.registry().faults.clone()
    }

    /// Remove fault `id`, or all of them: how many went.
    pub fn clear(&self, id: Option<FaultId>) -> usize {
        let mut registry = self.registry();
        let before = registry.faults.len();
        registry.faults.retain(|f| id.is_some_and(|id| f.id != id));
        before - registry.faults.len()
    }

    /// The fault a call of `method` meets, and fires: an `rpc_error` for it, else an
    /// `sr_full` on `VDI.create` or `VDI.clone` (of `vdi`, the VDI cloned). Calls in the
    /// `lab.` namespace meet none.
    pub fn on_rpc(&self, method: &str, vdi: Option<&str>) -> Option<RpcFault> {
        if is_lab_call(method) {
            return None;
        }
        let name = method.strip_prefix("Async.").unwrap_or(method);
        let mut registry = self.registry();
        let error = registry.fire_first(|fault| match &fault.spec.kind {
            FaultKind::RpcError {
                method: m, code, ..
            } if m == method || m == name => Some(RpcFault::Error {
                id: fault.id,
                code: code.clone(),
            }),
            _ => None,
        });
        let on = match name {
            "VDI.create" => SrFullOn::VdiCreate,
            "VDI.clone" => SrFullOn::VdiClone,
            _ => return error,
        };
        let names: Vec<&str> = vdi.into_iter().collect();
        error.or_else(|| {
            registry
                .fire_first(|fault| sr_full_for(fault, on, &names))
                .map(|id| RpcFault::SrFull { id })
        })
    }

    /// The base URL a transfer request on `plane` is redirected to, if a `redirect` fault
    /// is waiting for it; the fault fires.
    pub fn on_transfer_request(&self, plane: Plane) -> Option<String> {
        self.registry().fire_first(|fault| match &fault.spec.kind {
            FaultKind::Redirect { on, to } if *on == plane => Some(to.clone()),
            _ => None,
        })
    }

    /// The `sr_full` fault an import into the VDI known by `vdi` meets, and fires.
    pub fn on_import(&self, vdi: &[&str]) -> Option<FaultId> {
        self.registry()
            .fire_first(|fault| sr_full_for(fault, SrFullOn::Import, vdi))
    }

    /// Arm the faults a transfer on `plane` of the VDI known by `vdi` meets; they fire as
    /// [`TransferFaults::step`] reaches them.
    pub fn arm(&self, plane: Plane, vdi: &[&str]) -> TransferFaults {
        let armed = self
            .registry()
            .faults
            .iter()
            .filter(|f| f.spec.vdi.as_ref().is_none_or(|v| v.matches(vdi)))
            .filter_map(|f| {
                Some(Armed {
                    id: f.id,
                    effect: f.spec.kind.effect(plane)?,
                    state: State::Armed,
                })
            })
            .collect();
        TransferFaults {
            registry: Arc::clone(&self.registry),
            armed,
        }
    }
}

fn sr_full_for(fault: &Fault, on: SrFullOn, vdi: &[&str]) -> Option<FaultId> {
    let applies = fault.spec.kind == FaultKind::SrFull { on }
        && fault.spec.vdi.as_ref().is_none_or(|v| v.matches(vdi));
    applies.then_some(fault.id)
}

fn lock(registry: &Mutex<Registry>) -> MutexGuard<'_, Registry> {
    // The registry is consistent between statements; a panic elsewhere leaves it usable.
    registry.lock().unwrap_or_else(PoisonError::into_inner)
}

/// How a transfer is cut short.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CutKind {
    /// The connection closes with nothing more said; the task fails.
    Drop,
    /// The task fails with `VDI_IO_ERROR`, and an export says so in an embedded 500.
    Fail,
}

/// A transfer cut short by fault `fault` after `at` bytes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Cut {
    pub fault: FaultId,
    pub at: u64,
    pub how: CutKind,
}

impl std::fmt::Display for Cut {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let what = match self.how {
            CutKind::Drop => "connection dropped",
            CutKind::Fail => "transfer failed",
        };
        write!(
            f,
            "{what} after {} bytes by injected fault {}",
            self.at, self.fault
        )
    }
}

/// What to do with a transfer's next bytes: wait, pass the first `pass` of them, then end
/// the transfer if `cut`. Without a cut, `pass` is at least one byte.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Step {
    pub wait: Duration,
    pub pass: usize,
    pub cut: Option<Cut>,
}

/// The faults one transfer has armed.
#[derive(Debug)]
pub struct TransferFaults {
    registry: Arc<Mutex<Registry>>,
    armed: Vec<Armed>,
}

#[derive(Debug)]
struct Armed {
    id: FaultId,
    effect: Effect,
    state: State,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum State {
    /// Not fired yet.
    Armed,
    /// A limit that fired and holds for the rest of the transfer.
    Holding,
    /// Fired, or claimed by someone else or cleared before it could.
    Spent,
}

#[derive(Debug, Clone, Copy)]
enum Effect {
    Cut { after: u64, how: CutKind },
    Stall { after: u64, wait: Duration },
    Throttle { rate: u64 },
}

/// A throttled transfer passes at most this fraction of a second's worth of bytes at a time,
/// so its pace stays even whatever its frame size.
const THROTTLE_SLICES_PER_SECOND: u64 = 8;
/// … but never fewer bytes than this at a time.
const THROTTLE_MIN_SLICE: u64 = 512;

impl TransferFaults {
    /// Claim fault `at` from the registry as it fires: `false` if it is gone.
    fn claim(&mut self, at: usize, then: State) -> bool {
        let fired = lock(&self.registry).fire(self.armed[at].id);
        self.armed[at].state = if fired { then } else { State::Spent };
        fired
    }

    /// The transfer has passed `done` bytes, has `len` more at hand, and started `elapsed`
    /// ago: what to do with them.
    pub fn step(&mut self, done: u64, len: usize, elapsed: Duration) -> Step {
        let mut wait = Duration::ZERO;
        let mut limit = len as u64;
        let mut rate: Option<u64> = None;
        for at in 0..self.armed.len() {
            let Armed { effect, state, .. } = self.armed[at];
            match effect {
                Effect::Stall { after, wait: stall } if state == State::Armed => {
                    if after > done {
                        limit = limit.min(after - done);
                    } else if self.claim(at, State::Spent) {
                        wait = wait.saturating_add(stall);
                    }
                }
                Effect::Throttle { rate: r }
                    if state == State::Holding
                        || (state == State::Armed && self.claim(at, State::Holding)) =>
                {
                    rate = Some(rate.map_or(r, |other| other.min(r)));
                }
                _ => {}
            }
        }
        if let Some(rate) = rate {
            limit = limit.min((rate / THROTTLE_SLICES_PER_SECOND).max(THROTTLE_MIN_SLICE));
        }
        let cut = self.cut_within(done, &mut limit);
        if let Some(rate) = rate {
            let due = Duration::try_from_secs_f64((done + limit) as f64 / rate as f64)
                .unwrap_or(Duration::MAX);
            wait = wait.saturating_add(due.saturating_sub(elapsed));
        }
        Step {
            wait,
            pass: limit as usize,
            cut,
        }
    }

    /// The earliest cut among the next `limit` bytes, which it shortens to the bytes before
    /// the cut. A cut exactly at the end of the bytes at hand waits: the transfer may end
    /// there.
    fn cut_within(&mut self, done: u64, limit: &mut u64) -> Option<Cut> {
        loop {
            let (at, after, how) = self
                .armed
                .iter()
                .enumerate()
                .filter(|(_, a)| a.state == State::Armed)
                .filter_map(|(at, a)| match a.effect {
                    Effect::Cut { after, how } if after < done + *limit => Some((at, after, how)),
                    _ => None,
                })
                .min_by_key(|(_, after, _)| *after)?;
            if self.claim(at, State::Spent) {
                // A cut is never armed behind the bytes already passed: it would have fired.
                let at_byte = after.max(done);
                *limit = at_byte - done;
                return Some(Cut {
                    fault: self.armed[at].id,
                    at: at_byte,
                    how,
                });
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec(members: &[(&str, Value)]) -> Result<FaultSpec, SpecError> {
        let members = members
            .iter()
            .map(|(k, v)| ((*k).to_owned(), v.clone()))
            .collect();
        FaultSpec::parse(&members, |name| {
            (name == "disk" || name == "OpaqueRef:disk").then(|| VdiFilter {
                reference: "OpaqueRef:disk".into(),
                uuid: "disk".into(),
            })
        })
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
        ];
        for (members, expected) in cases {
            let error = spec(members).unwrap_err();
            assert_eq!(&XapiFault::from(error), expected, "{members:?}");
        }
    }

    fn rpc_error(method: &str, count: u64, persistent: bool) -> FaultSpec {
        FaultSpec {
            kind: FaultKind::RpcError {
                method: method.into(),
                code: "SR_BACKEND_FAILURE_44".into(),
                count,
            },
            persistent,
            vdi: None,
        }
    }

    #[test]
    fn rpc_errors_fire_count_times_then_go_and_persistent_ones_stay() {
        let faults = Faults::default();
        let id = faults.inject(rpc_error("VDI.clone", 2, false));
        assert_eq!(faults.on_rpc("VM.clone", None), None);
        let expected = Some(RpcFault::Error {
            id,
            code: "SR_BACKEND_FAILURE_44".into(),
        });
        assert_eq!(faults.on_rpc("VDI.clone", Some("x")), expected);
        assert_eq!(faults.list()[0].fired, 1);
        // The Async form of a method meets its faults too.
        assert_eq!(faults.on_rpc("Async.VDI.clone", None), expected);
        assert_eq!(faults.on_rpc("VDI.clone", None), None);
        assert!(faults.list().is_empty());

        let persistent = faults.inject(rpc_error("VM.start", 1, true));
        for _ in 0..3 {
            assert!(matches!(
                faults.on_rpc("VM.start", None),
                Some(RpcFault::Error { id, .. }) if id == persistent
            ));
        }
        assert_eq!(faults.list()[0].fired, 3);
        // Only the Async form, when asked for.
        faults.inject(rpc_error("Async.VM.snapshot", 1, false));
        assert_eq!(faults.on_rpc("VM.snapshot", None), None);
        assert!(faults.on_rpc("Async.VM.snapshot", None).is_some());
    }

    #[test]
    fn sr_full_matches_its_operation_and_vdi() {
        let faults = Faults::default();
        let on = |on, vdi: Option<&str>| FaultSpec {
            kind: FaultKind::SrFull { on },
            persistent: false,
            vdi: vdi.map(|uuid| VdiFilter {
                reference: format!("OpaqueRef:{uuid}"),
                uuid: uuid.into(),
            }),
        };
        let create = faults.inject(on(SrFullOn::VdiCreate, None));
        let clone = faults.inject(on(SrFullOn::VdiClone, Some("a")));
        let import = faults.inject(on(SrFullOn::Import, Some("a")));
        assert_eq!(faults.on_rpc("VDI.clone", Some("OpaqueRef:b")), None);
        assert_eq!(
            faults.on_rpc("VDI.clone", Some("OpaqueRef:a")),
            Some(RpcFault::SrFull { id: clone })
        );
        assert_eq!(faults.on_rpc("VDI.clone", Some("OpaqueRef:a")), None);
        assert_eq!(
            faults.on_rpc("Async.VDI.create", None),
            Some(RpcFault::SrFull { id: create })
        );
        assert_eq!(faults.on_import(&["OpaqueRef:b", "b"]), None);
        assert_eq!(faults.on_import(&["OpaqueRef:a", "a"]), Some(import));
        assert!(faults.list().is_empty());
    }

    #[test]
    fn lab_calls_are_never_faulted() {
        let faults = Faults::default();
        faults.inject(FaultSpec {
            kind: FaultKind::RpcError {
                method: "lab.hash".into(),
                code: "X".into(),
                count: 1,
            },
            persistent: true,
            vdi: None,
        });
        assert_eq!(faults.on_rpc("lab.hash", None), None);
        assert_eq!(faults.on_rpc("Async.lab.hash", None), None);
    }

    #[test]
    fn clearing_one_or_all() {
        let faults = Faults::default();
        let a = faults.inject(rpc_error("VM.start", 1, false));
        let b = faults.inject(rpc_error("VM.start", 1, true));
        let c = faults.inject(rpc_error("VM.start", 1, false));
        assert_eq!(faults.clear(Some(b)), 1);
        assert_eq!(faults.clear(Some(b)), 0);
        let ids: Vec<_> = faults.list().iter().map(|f| f.id).collect();
        assert_eq!(ids, [a, c]);
        assert_eq!(faults.clear(None), 2);
        assert!(faults.list().is_empty());
        // Ids are never reused.
        assert!(faults.inject(rpc_error("VM.start", 1, false)) > c);
    }

    fn data(kind: FaultKind, persistent: bool) -> FaultSpec {
        FaultSpec {
            kind,
            persistent,
            vdi: None,
        }
    }

    const ZERO: Duration = Duration::ZERO;

    #[test]
    fn a_drop_cuts_at_the_exact_byte_and_fires_once() {
        let faults = Faults::default();
        let id = faults.inject(data(FaultKind::DropExport { after_bytes: 1000 }, false));
        let mut transfer = faults.arm(Plane::Export, &["OpaqueRef:x", "x"]);
        // An import meets no export fault.
        assert!(faults.arm(Plane::Import, &[]).armed.is_empty());
        let step = transfer.step(0, 600, ZERO);
        assert_eq!((step.pass, step.cut), (600, None));
        let step = transfer.step(600, 600, ZERO);
        let cut = Cut {
            fault: id,
            at: 1000,
            how: CutKind::Drop,
        };
        assert_eq!((step.pass, step.cut), (400, Some(cut)));
        assert_eq!(
            cut.to_string(),
            format!("connection dropped after 1000 bytes by injected fault {id}")
        );
        assert!(faults.list().is_empty());
        // A transfer armed afterwards passes everything.
        let step = faults.arm(Plane::Export, &[]).step(0, 5000, ZERO);
        assert_eq!((step.pass, step.cut), (5000, None));
    }

    #[test]
    fn a_cut_at_the_very_end_waits_for_more_bytes() {
        let faults = Faults::default();
        faults.inject(data(FaultKind::EmbeddedError { after_bytes: 100 }, false));
        let mut transfer = faults.arm(Plane::Export, &[]);
        assert_eq!(transfer.step(0, 100, ZERO).cut, None);
        // The export ended there: the fault never fired and stays.
        assert_eq!(faults.list().len(), 1);
        let step = transfer.step(100, 10, ZERO);
        assert_eq!(step.pass, 0);
        assert_eq!(step.cut.map(|c| (c.at, c.how)), Some((100, CutKind::Fail)));
    }

    #[test]
    fn a_one_shot_fault_armed_by_two_transfers_fires_in_one() {
        let faults = Faults::default();
        faults.inject(data(FaultKind::FailImport, false));
        let mut first = faults.arm(Plane::Import, &[]);
        let mut second = faults.arm(Plane::Import, &[]);
        assert!(first.step(0, 10, ZERO).cut.is_some());
        assert_eq!(second.step(0, 10, ZERO).cut, None);

        // Persistent: both fire, and it stays.
        faults.inject(data(FaultKind::DropImport { after_bytes: 5 }, true));
        let mut first = faults.arm(Plane::Import, &[]);
        let mut second = faults.arm(Plane::Import, &[]);
        assert_eq!(first.step(0, 10, ZERO).pass, 5);
        assert_eq!(second.step(0, 10, ZERO).pass, 5);
        assert_eq!(faults.list()[0].fired, 2);

        // Cleared before it fires: it does not.
        let mut third = faults.arm(Plane::Import, &[]);
        faults.clear(None);
        assert_eq!(third.step(0, 10, ZERO).cut, None);
    }

    #[test]
    fn faults_restricted_to_a_vdi_meet_only_its_transfers() {
        let faults = Faults::default();
        faults.inject(FaultSpec {
            kind: FaultKind::FailExport,
            persistent: true,
            vdi: Some(VdiFilter {
                reference: "OpaqueRef:a".into(),
                uuid: "a".into(),
            }),
        });
        assert!(
            faults
                .arm(Plane::Export, &["OpaqueRef:b", "b"])
                .armed
                .is_empty()
        );
        assert_eq!(
            faults.arm(Plane::Export, &["OpaqueRef:a", "a"]).armed.len(),
            1
        );
        assert_eq!(faults.arm(Plane::Export, &["a"]).armed.len(), 1);
    }

    #[test]
    fn a_stall_waits_once_at_its_byte() {
        let faults = Faults::default();
        faults.inject(data(
            FaultKind::Stall {
                on: Plane::Import,
                seconds: 3,
                after_bytes: 50,
            },
            false,
        ));
        let mut transfer = faults.arm(Plane::Import, &[]);
        let step = transfer.step(0, 80, ZERO);
        assert_eq!((step.wait, step.pass), (ZERO, 50));
        let step = transfer.step(50, 30, ZERO);
        assert_eq!((step.wait, step.pass), (Duration::from_secs(3), 30));
        let step = transfer.step(80, 30, ZERO);
        assert_eq!((step.wait, step.pass), (ZERO, 30));
        assert!(faults.list().is_empty());
    }

    #[test]
    fn bandwidth_paces_the_bytes_in_slices() {
        let faults = Faults::default();
        faults.inject(data(
            FaultKind::Bandwidth {
                bytes_per_second: 8000,
                on: Planes::Export,
            },
            true,
        ));
        assert!(faults.arm(Plane::Import, &[]).armed.is_empty());
        let mut transfer = faults.arm(Plane::Export, &[]);
        // At most 1/8 s worth at a time, each due when the rate allows it.
        let step = transfer.step(0, 100_000, ZERO);
        assert_eq!(step.pass, 1000);
        assert_eq!(step.wait, Duration::from_millis(125));
        let step = transfer.step(4000, 100_000, Duration::from_millis(200));
        assert_eq!(step.pass, 1000);
        assert_eq!(step.wait, Duration::from_millis(425));
        // Behind schedule: no wait.
        let step = transfer.step(4000, 10, Duration::from_secs(9));
        assert_eq!((step.wait, step.pass), (ZERO, 10));
        // A persistent limit fires once per transfer.
        assert_eq!(faults.list()[0].fired, 1);
    }

    #[test]
    fn listed_faults_show_their_fields() {
        let faults = Faults::default();
        faults.inject(FaultSpec {
            kind: FaultKind::Stall {
                on: Plane::Export,
                seconds: 2,
                after_bytes: 0,
            },
            persistent: true,
            vdi: Some(VdiFilter {
                reference: "OpaqueRef:a".into(),
                uuid: "a".into(),
            }),
        });
        let listed = faults.list()[0].to_value();
        let expected = Value::from(BTreeMap::from([
            ("id", Value::from("1")),
            ("kind", "stall".into()),
            ("persistent", true.into()),
            ("fired", int(0)),
            ("vdi", "a".into()),
            ("on", "export".into()),
            ("seconds", int(2)),
            ("after_bytes", int(0)),
        ]));
        assert_eq!(listed, expected);
    }
}
