//! XAPI errors the handlers raise, with the parameters xapi gives them (protocol reference
//! §4), and the translation of storage errors into them.

use crate::lab::sr::SrError;
use crate::xapi::rpc::XapiFault;

/// `OPERATION_BLOCKED [ref, reason]`: the reason is the `blocked_operations` value.
pub(super) fn operation_blocked(reference: &str, reason: &str) -> XapiFault {
    XapiFault::new("OPERATION_BLOCKED", [reference, reason])
}

pub(super) fn operation_not_allowed(reason: &str) -> XapiFault {
    XapiFault::new("OPERATION_NOT_ALLOWED", [reason])
}

/// `VM_BAD_POWER_STATE [vm, expected, actual]`, with the states in lower case as xapi
/// writes them.
pub(super) fn bad_power_state(vm: &str, expected: &str, actual: &str) -> XapiFault {
    XapiFault::new(
        "VM_BAD_POWER_STATE",
        [
            vm.to_owned(),
            expected.to_lowercase(),
            actual.to_lowercase(),
        ],
    )
}

/// `VM_IS_TEMPLATE [vm]`: templates, snapshots included, cannot run.
pub(super) fn vm_is_template(vm: &str) -> XapiFault {
    XapiFault::new("VM_IS_TEMPLATE", [vm])
}

pub(super) fn vdi_in_use(vdi: &str, operation: &str) -> XapiFault {
    XapiFault::new("VDI_IN_USE", [vdi, operation])
}

pub(super) fn internal(message: impl std::fmt::Display) -> XapiFault {
    XapiFault::new("INTERNAL_ERROR", [message.to_string()])
}

/// Which VDI a storage call was about, to name it in the error.
#[derive(Debug, Clone, Copy)]
pub(super) struct StorageCall<'a> {
    pub vdi: &'a str,
    pub sr: &'a str,
    /// The `vdi_operations` name, for `VDI_IN_USE`.
    pub operation: &'static str,
}

impl StorageCall<'_> {
    /// The XAPI error a storage error amounts to. Errors with no XAPI counterpart (I/O,
    /// malformed files) become `INTERNAL_ERROR` with the whole story, file names included.
    pub fn fault(self, error: SrError) -> XapiFault {
        match error {
            SrError::Full {
                requested,
                available,
                ..
            } => XapiFault::new("SR_FULL", [requested.to_string(), available.to_string()]),
            SrError::InUse { .. } => vdi_in_use(self.vdi, self.operation),
            SrError::ReadOnly { .. } => XapiFault::new("VDI_READONLY", [self.vdi]),
            SrError::NotFound { .. } => XapiFault::new("VDI_MISSING", [self.sr, self.vdi]),
            // What SM's file SR answers: error 79, "VDI Invalid size".
            SrError::Shrink { .. } => XapiFault::new(
                "SR_BACKEND_FAILURE_79",
                ["", "VDI Invalid size [opterr=shrinking not allowed]", ""],
            ),
            // SM's `CBTChangedBlocksError`.
            SrError::ChangedBlocks { reason, .. } => XapiFault::new(
                "SR_BACKEND_FAILURE_460",
                [
                    String::new(),
                    format!("Failed to calculate changed blocks for given VDIs. [opterr={reason}]"),
                    String::new(),
                ],
            ),
            SrError::NoChangeLog { .. } => XapiFault::new("VDI_NO_CBT_METADATA", [self.vdi]),
            SrError::MetadataOnly { .. } => {
                XapiFault::new("VDI_INCOMPATIBLE_TYPE", [self.vdi, "cbt_metadata"])
            }
            SrError::Writable { .. } => {
                operation_not_allowed(&format!("VDI is not a snapshot: {}", self.vdi))
            }
            other => internal(other),
        }
    }
}
