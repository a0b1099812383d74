//! Lab-only calls, in a `lab.` namespace no XAPI class uses, behind the `vhdsync lab write`,
//! `vhdsync lab hash` and `vhdsync lab fault` commands:
//!
//! * `lab.write(session, vdi, offset, length, data)`: a guest write of `length` bytes at
//!   `offset`. `data` is a seed (an int, or its decimal text) for deterministic pseudo-random
//!   bytes (SplitMix64, little-endian, restarting at the write's first byte), or the string
//!   `"zero"` for zeros. Returns void.
//! * `lab.hash(session, vdi)`: the SHA-256 (lowercase hex) of the VDI's whole content.
//! * `lab.inject_fault(session, spec)`: add a fault (see [`crate::lab::faults`]) and return
//!   its id, e.g. `{kind: "drop_export", after_bytes: "1048576", persistent: false,
//!   vdi: "…"}`. Ints may be typed or decimal text, as XML-RPC carries 64-bit ints.
//! * `lab.list_faults(session)`: the faults waiting to fire, as structs like the specs, with
//!   their `id` and how often they `fired`.
//! * `lab.clear_faults(session[, id])`: remove one fault, or all: how many went.
//! * `lab.sessions(session)`: the references (the secrets) of the open sessions, so that a
//!   test can check no client ever prints one.
//! * `lab.set_boot_delay(session, seconds)`: how long a started VM takes to boot (to get its
//!   `guest_metrics`) from now on, an int or a float (or its decimal text) from 0 to 3600;
//!   saved with the lab. Returns void.
//! * `lab.get_boot_delay(session)`: that delay, in seconds (a float).
//!
//! `vdi` (and a `boot_failure`'s `vm`) may be a reference or a uuid. The data goes straight to the SR, in bounded chunks,
//! without holding the database lock. The faults injected here are met by every other call,
//! through [`injected`], and by the data plane; `lab.` calls are never faulted.

use std::time::Duration;

use uuid::Uuid;

use super::args::{Fallback, Invocation, Param};
use super::dispatch::Message;
use super::xapi_errors::StorageCall;
use crate::lab::db::{Class, DbError};
use crate::lab::faults::{FaultSpec, RpcFault, VdiFilter, VmFilter};
use crate::lab::state::Lab;
use crate::xapi::rpc::{Response, Value, XapiFault};

pub(super) const MESSAGES: &[Message] = &[
    Message::sync(
        "write",
        &[
            Param::Required("vdi"),
            Param::Required("offset"),
            Param::Required("length"),
            Param::Required("data"),
        ],
        write,
    ),
    Message::sync("hash", &[Param::Required("vdi")], hash),
    Message::sync("inject_fault", &[Param::Required("spec")], inject_fault),
    Message::sync("list_faults", &[], list_faults),
    Message::sync("sessions", &[], sessions),
    Message::sync(
        "clear_faults",
        &[Param::Optional("id", Fallback::Text(""))],
        clear_faults,
    ),
    Message::sync(
        "set_boot_delay",
        &[Param::Required("seconds")],
        set_boot_delay,
    ),
    Message::sync("get_boot_delay", &[], get_boot_delay),
];

/// The longest boot delay: an hour is already a guest that never boots for any test.
const MAX_BOOT_DELAY: Duration = Duration::from_secs(3600);

/// The `data` argument asking for zeros.
pub const ZERO: &str = "zero";

/// Bytes generated and written per step, bounding memory whatever the write's length.
const CHUNK: usize = 4 << 20;

fn write(lab: &Lab, call: &Invocation) -> Response {
    let (vdi, uuid) = resolve(lab, call.text(0)?)?;
    let offset = non_negative(call, 1, "offset")?;
    let length = non_negative(call, 2, "length")?;
    let mut source = match call.value(3) {
        Value::String(text) if text == ZERO => Source::Zeros,
        other => Source::Random(SplitMix64(
            other
                .as_i64()
                .ok_or_else(|| XapiFault::new("FIELD_TYPE_ERROR", ["data"]))? as u64,
        )),
    };
    let sr = lab.sr();
    let storage = StorageCall {
        vdi: &vdi,
        sr: "",
        operation: "write",
    };
    let size = sr.virtual_size(uuid).map_err(|e| storage.fault(e))?;
    if offset.checked_add(length).is_none_or(|end| end > size) {
        return Err(XapiFault::new(
            "INVALID_VALUE",
            [
                "length".to_owned(),
                format!("{length} bytes at offset {offset} end past the virtual size {size}"),
            ],
        ));
    }
    let mut buffer = vec![0u8; CHUNK.min(usize::try_from(length).unwrap_or(CHUNK))];
    let mut done = 0u64;
    while done < length {
        let n = usize::try_from(length - done).map_or(buffer.len(), |left| left.min(buffer.len()));
        source.fill(&mut buffer[..n]);
        sr.write(uuid, offset + done, &buffer[..n])
            .map_err(|e| storage.fault(e))?;
        done += n as u64;
    }
    Ok(Value::void())
}

fn hash(lab: &Lab, call: &Invocation) -> Response {
    let (vdi, uuid) = resolve(lab, call.text(0)?)?;
    let storage = StorageCall {
        vdi: &vdi,
        sr: "",
        operation: "hash",
    };
    let digest = lab.sr().hash(uuid).map_err(|e| storage.fault(e))?;
    Ok(Value::from(digest))
}

fn inject_fault(lab: &Lab, call: &Invocation) -> Response {
    let spec = FaultSpec::parse(
        call.record(0)?,
        |named| {
            let (reference, uuid) = lab.vdi_by_ref_or_uuid(named)?;
            Some(VdiFilter {
                reference,
                uuid: uuid.to_string(),
            })
        },
        |named| {
            let (reference, uuid) = lab.vm_by_ref_or_uuid(named)?;
            Some(VmFilter { reference, uuid })
        },
    )?;
    let id = lab.faults().inject(spec);
    Ok(Value::from(id.to_string()))
}

fn list_faults(lab: &Lab, _: &Invocation) -> Response {
    let faults: Vec<Value> = lab.faults().list().iter().map(|f| f.to_value()).collect();
    Ok(Value::Array(faults))
}

fn sessions(lab: &Lab, _: &Invocation) -> Response {
    let open = lab.with_db(|db| {
        db.records(Class::Session)
            .map(|(reference, _)| Value::from(reference.as_str()))
            .collect()
    });
    Ok(Value::Array(open))
}

fn clear_faults(lab: &Lab, call: &Invocation) -> Response {
    let id = match call.value(0) {
        Value::String(all) if all.is_empty() => None,
        given => Some(
            given
                .as_i64()
                .and_then(|n| u64::try_from(n).ok())
                .ok_or_else(|| {
                    let shown = match given {
                        Value::Int(n) => n.to_string(),
                        other => other.as_str().unwrap_or(other.kind()).to_owned(),
                    };
                    XapiFault::new("INVALID_VALUE", ["id".to_owned(), shown])
                })?,
        ),
    };
    let cleared = lab.faults().clear(id);
    Ok(Value::Int(i64::try_from(cleared).unwrap_or(i64::MAX)))
}

fn set_boot_delay(lab: &Lab, call: &Invocation) -> Response {
    let given = call.value(0);
    let seconds = given
        .as_f64()
        .or_else(|| given.as_str().and_then(|t| t.trim().parse().ok()))
        .ok_or_else(|| XapiFault::new("FIELD_TYPE_ERROR", ["seconds"]))?;
    let delay = Duration::try_from_secs_f64(seconds)
        .ok()
        .filter(|delay| *delay <= MAX_BOOT_DELAY)
        .ok_or_else(|| {
            XapiFault::new(
                "INVALID_VALUE",
                [
                    "seconds".to_owned(),
                    format!(
                        "{seconds}: a boot delay is from 0 to {} s",
                        MAX_BOOT_DELAY.as_secs()
                    ),
                ],
            )
        })?;
    lab.set_boot_delay(delay);
    Ok(Value::void())
}

fn get_boot_delay(lab: &Lab, _: &Invocation) -> Response {
    Ok(Value::Double(lab.boot_delay().as_secs_f64()))
}

/// The error an injected fault makes a call answer, if it meets one: an `rpc_error`, or an
/// `sr_full` on `VDI.create` or `VDI.clone`. `params` are the call's, the session first.
pub(super) fn injected(lab: &Lab, method: &str, params: &[Value]) -> Option<XapiFault> {
    // `VDI.create`'s record, or the VDI `VDI.clone` clones.
    let argument = params.get(1);
    match lab
        .faults()
        .on_rpc(method, argument.and_then(Value::as_str))?
    {
        RpcFault::Error { id, code } => Some(XapiFault::new(
            code,
            [format!("injected by the lab host (fault {id})")],
        )),
        RpcFault::SrFull { .. } => {
            let requested = match argument {
                Some(Value::Struct(record)) => record
                    .get("virtual_size")
                    .and_then(Value::as_i64)
                    .and_then(|n| u64::try_from(n).ok()),
                Some(Value::String(vdi)) => lab
                    .vdi_by_ref_or_uuid(vdi)
                    .and_then(|(_, uuid)| lab.sr().virtual_size(uuid).ok()),
                _ => None,
            };
            Some(lab.injected_sr_full(requested.unwrap_or(0)))
        }
    }
}

fn resolve(lab: &Lab, vdi: &str) -> Result<(String, Uuid), XapiFault> {
    lab.vdi_by_ref_or_uuid(vdi).ok_or_else(|| {
        DbError::UuidInvalid {
            class: Class::Vdi,
            uuid: vdi.to_owned(),
        }
        .into()
    })
}

fn non_negative(call: &Invocation, index: usize, name: &str) -> Result<u64, XapiFault> {
    let n = call.int(index)?;
    u64::try_from(n).map_err(|_| XapiFault::new("INVALID_VALUE", [name.to_owned(), n.to_string()]))
}

impl Lab {
    /// `SR_FULL [requested; maximum]` (protocol reference §4) for an injected fault, the
    /// SR's free space as the maximum.
    pub(crate) fn injected_sr_full(&self, requested: u64) -> XapiFault {
        let sr = self.sr();
        let free = match (sr.physical_size(), sr.physical_utilisation()) {
            (Ok(size), Ok(used)) => size.saturating_sub(used),
            _ => 0,
        };
        XapiFault::new("SR_FULL", [requested.to_string(), free.to_string()])
    }

    /// The VDI named by a reference or a uuid: its reference and uuid.
    pub fn vdi_by_ref_or_uuid(&self, vdi: &str) -> Option<(String, Uuid)> {
        self.with_db(|db| {
            let reference = if db.exists(Class::Vdi, vdi) {
                vdi.to_owned()
            } else {
                db.by_uuid(Class::Vdi, vdi).ok()?.clone()
            };
            let uuid = db.text(Class::Vdi, &reference, "uuid").ok()?.parse().ok()?;
            Some((reference, uuid))
        })
    }
}

impl Lab {
    /// The VM named by a reference or a uuid: its reference and uuid.
    fn vm_by_ref_or_uuid(&self, vm: &str) -> Option<(String, String)> {
        self.with_db(|db| {
            let reference = if db.exists(Class::Vm, vm) {
                vm.to_owned()
            } else {
                db.by_uuid(Class::Vm, vm).ok()?.clone()
            };
            let uuid = db.text(Class::Vm, &reference, "uuid").ok()?.to_owned();
            Some((reference, uuid))
        })
    }
}

/// Where a guest write's bytes come from.
enum Source {
    Zeros,
    Random(SplitMix64),
}

impl Source {
    fn fill(&mut self, buffer: &mut [u8]) {
        match self {
            Source::Zeros => buffer.fill(0),
            Source::Random(generator) => {
                for word in buffer.chunks_mut(8) {
                    let bytes = generator.next().to_le_bytes();
                    word.copy_from_slice(&bytes[..word.len()]);
                }
            }
        }
    }
}

/// SplitMix64: tiny, fast and fully determined by its seed, which is all a simulated guest
/// needs. Chunks are multiples of 8 bytes, so chunking does not change the stream.
struct SplitMix64(u64);

impl SplitMix64 {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn random_data_depends_only_on_the_seed() {
        let mut whole = vec![0u8; 20];
        Source::Random(SplitMix64(7)).fill(&mut whole);
        let mut again = vec![0u8; 20];
        Source::Random(SplitMix64(7)).fill(&mut again);
        assert_eq!(whole, again);
        let mut other = vec![0u8; 20];
        Source::Random(SplitMix64(8)).fill(&mut other);
        assert_ne!(whole, other);
        let mut zeros = vec![1u8; 5];
        Source::Zeros.fill(&mut zeros);
        assert_eq!(zeros, [0; 5]);
    }
}
