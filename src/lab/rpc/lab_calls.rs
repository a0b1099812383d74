//! Lab-only calls, in a `lab.` namespace no XAPI class uses, behind the `vhdsync lab write`
//! and `vhdsync lab hash` commands:
//!
//! * `lab.write(session, vdi, offset, length, data)`: a guest write of `length` bytes at
//!   `offset`. `data` is a seed (an int, or its decimal text) for deterministic pseudo-random
//!   bytes (SplitMix64, little-endian, restarting at the write's first byte), or the string
//!   `"zero"` for zeros. Returns void.
//! * `lab.hash(session, vdi)`: the SHA-256 (lowercase hex) of the VDI's whole content.
//!
//! `vdi` may be a reference or a uuid. The data goes straight to the SR, in bounded chunks,
//! without holding the database lock.

use uuid::Uuid;

use super::args::{Invocation, Param};
use super::dispatch::Message;
use super::faults::StorageCall;
use crate::lab::db::{Class, DbError};
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
];

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
