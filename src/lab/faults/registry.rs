//! The registry of armed faults: which fault a call, a transfer request or an import meets,
//! and their firing (a one-shot fault goes after its last firing, a persistent one stays).

use std::sync::{Arc, Mutex, MutexGuard, PoisonError};

use super::FaultId;
use super::spec::{BootFailure, FaultKind, FaultSpec, Plane, SrFullOn, count_value, is_lab_call};
use super::transfer::TransferFaults;
use crate::xapi::rpc::Value;

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
        let mut members = self.spec.to_members();
        members.insert("id".to_owned(), Value::from(self.id.to_string()));
        members.insert("fired".to_owned(), count_value(self.fired));
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

/// The faults waiting to fire, shared by the [`Faults`] handle and the transfers that armed them.
#[derive(Debug, Default)]
pub(super) struct Registry {
    last_id: FaultId,
    pub(super) faults: Vec<Fault>,
}

impl Registry {
    /// Fire fault `id` if it is still there; a one-shot fault's last firing removes it.
    pub(super) fn fire(&mut self, id: FaultId) -> bool {
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

    /// How the boot of the VM known by `vm` (a reference, a uuid) fails, if a `boot_failure`
    /// fault waits for it; the fault fires.
    pub fn on_boot(&self, vm: &[&str]) -> Option<BootFailure> {
        self.registry().fire_first(|fault| match &fault.spec.kind {
            FaultKind::BootFailure { mode, vm: only }
                if only.as_ref().is_none_or(|f| f.matches(vm)) =>
            {
                Some(*mode)
            }
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
        TransferFaults::arm(&self.registry, plane, vdi)
    }
}

fn sr_full_for(fault: &Fault, on: SrFullOn, vdi: &[&str]) -> Option<FaultId> {
    let applies = fault.spec.kind == FaultKind::SrFull { on }
        && fault.spec.vdi.as_ref().is_none_or(|v| v.matches(vdi));
    applies.then_some(fault.id)
}

pub(super) fn lock(registry: &Mutex<Registry>) -> MutexGuard<'_, Registry> {
    // The registry is consistent between statements; a panic elsewhere leaves it usable.
    registry.lock().unwrap_or_else(PoisonError::into_inner)
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use super::*;
    use crate::lab::faults::VdiFilter;

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
            ("fired", Value::Int(0)),
            ("vdi", "a".into()),
            ("on", "export".into()),
            ("seconds", Value::Int(2)),
            ("after_bytes", Value::Int(0)),
        ]));
        assert_eq!(listed, expected);
    }
}
