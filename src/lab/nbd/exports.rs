//! What the NBD server asks of the lab: whether a network offers NBD, with TLS or without,
//! and the VDI an export name stands for, once its session is checked.

use std::sync::Arc;

use super::export_name;
use super::negotiation::Security;
use crate::image::Chain;
use crate::lab::Lab;
use crate::lab::db::{Class, Db, strings};
use crate::xapi::rpc::Value;

/// The network purposes that offer NBD, with TLS first: xapi lets only one of the two be on
/// any network at a time.
pub(crate) const NBD_PURPOSES: [&str; 2] = ["nbd", "insecure_nbd"];

/// How NBD is offered, if any network has an NBD purpose.
pub(super) fn security(db: &Db) -> Option<Security> {
    let purposes: Vec<String> = db
        .records(Class::Network)
        .filter_map(|(_, record)| record.get("purpose"))
        .flat_map(strings)
        .collect();
    if purposes.iter().any(|p| p == NBD_PURPOSES[0]) {
        Some(Security::Tls)
    } else if purposes.iter().any(|p| p == NBD_PURPOSES[1]) {
        Some(Security::Plain)
    } else {
        None
    }
}

/// An export being served: the VDI's chain as it was when the client asked for it.
pub(super) struct Served {
    pub chain: Arc<Chain>,
    pub size: u64,
    /// The VDI's reference and UUID, which faults name it by.
    pub names: [String; 2],
}

/// The export `name` names: a valid session, a managed VDI with its data. The error says why
/// not, for the logs, without the session.
pub(super) fn open(lab: &Lab, name: &[u8]) -> Result<Served, String> {
    let name = export_name::parse(name).map_err(str::to_owned)?;
    if !lab.session_valid(&name.session) {
        return Err(format!("VDI {}: the session is invalid", name.vdi));
    }
    let vdi = name.vdi;
    let reference = lab.with_db(|db| {
        let reference = db
            .by_uuid(Class::Vdi, &vdi.to_string())
            .map_err(|_| format!("VDI {vdi}: no such VDI"))?;
        let record = db
            .record(Class::Vdi, reference)
            .map_err(|e| format!("VDI {vdi}: {e}"))?;
        if record.get("managed").and_then(Value::as_bool) == Some(false) {
            return Err(format!(
                "VDI {vdi}: a hidden chain parent, not a VDI of its own"
            ));
        }
        if record.get("type").and_then(Value::as_str) == Some("cbt_metadata") {
            return Err(format!("VDI {vdi}: its data was destroyed (cbt_metadata)"));
        }
        Ok(reference.to_owned())
    })?;
    let chain = lab.sr().chain(vdi).map_err(|e| e.to_string())?;
    Ok(Served {
        size: chain.virtual_size(),
        chain: Arc::new(chain),
        names: [reference, vdi.to_string()],
    })
}
