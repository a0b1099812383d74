//! What export and import share before their 200 goes out: authentication, the task, the
//! format, the VDIs named by reference or uuid, and how a refusal is answered.
//!
//! Everything is checked before the 200 header, which is cleaner than xapi (it attaches the
//! disks after its 200 and reports some of these failures inside the body); clients cope
//! with both, and the task carries the same error either way (protocol reference §1.5).
//! These functions take the database lock: call them on a blocking thread.

use std::time::{Duration, Instant};

use hyper::HeaderMap;
use uuid::Uuid;

use super::reply::{self, Reply};
use super::request::{Params, basic_credentials};
use crate::lab::Lab;
use crate::lab::sr::SrError;
use crate::xapi::rpc::XapiFault;

/// Why a transfer was refused before its 200, and the answer that says so.
#[derive(Debug)]
pub(super) struct Refusal {
    answer: Answer,
    pub fault: XapiFault,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Answer {
    /// 401: bad or missing credentials.
    Unauthorised,
    /// xapi's bare 404: unknown format, chunked misuse, `Transfer-Encoding`.
    NotFound,
    /// 400: an import that names no VDI.
    BadRequest,
    /// 500: any other failure, the error in the page.
    Internal,
}

impl Refusal {
    pub fn not_found(fault: XapiFault) -> Refusal {
        Refusal {
            answer: Answer::NotFound,
            fault,
        }
    }

    pub fn bad_request(fault: XapiFault) -> Refusal {
        Refusal {
            answer: Answer::BadRequest,
            fault,
        }
    }

    pub fn internal(fault: XapiFault) -> Refusal {
        Refusal {
            answer: Answer::Internal,
            fault,
        }
    }

    /// Fail `task` (if any) with the error, as xapi fails the task of a refused transfer,
    /// and answer. A client that did not authenticate touches no object: its task is left
    /// as it was.
    pub fn answer(self, lab: &Lab, task: Option<&str>) -> Reply {
        if let Some(task) = task.filter(|_| self.answer != Answer::Unauthorised) {
            // A task that does not exist (the refusal may be about that) has nobody to tell.
            let _ = lab.complete_task(task, Err(self.fault.clone()));
        }
        match self.answer {
            Answer::Unauthorised => reply::unauthorised(),
            Answer::NotFound => reply::not_found(),
            Answer::BadRequest => reply::bad_request(&self.fault),
            Answer::Internal => reply::internal_error(&self.fault),
        }
    }
}

/// The transfer's task as the client gave it (`task_id`), which must exist.
pub(super) fn given_task(lab: &Lab, params: &Params) -> Result<Option<String>, Refusal> {
    match params.get_cookie_first("task_id") {
        None => Ok(None),
        Some(task) if lab.task_exists(task) => Ok(Some(task.to_owned())),
        Some(task) => Err(Refusal::internal(XapiFault::new(
            "HANDLE_INVALID",
            ["task", task],
        ))),
    }
}

/// A live `session_id` (cookie or query), or root's credentials by HTTP Basic. xapi turns
/// Basic credentials into a session it logs out after the transfer; checking them leaves the
/// same trace, none.
pub(super) fn authenticate(lab: &Lab, params: &Params, headers: &HeaderMap) -> Result<(), Refusal> {
    let authenticated = match (
        params.get_cookie_first("session_id"),
        basic_credentials(headers),
    ) {
        (Some(session), _) => lab.session_valid(session),
        (None, Some((user, password))) => lab.authenticate_basic(&user, &password),
        (None, None) => false,
    };
    if authenticated {
        return Ok(());
    }
    let user = basic_credentials(headers)
        .map(|(user, _)| user)
        .unwrap_or_default();
    Err(Refusal {
        answer: Answer::Unauthorised,
        fault: XapiFault::new(
            "SESSION_AUTHENTICATION_FAILED",
            [user, "Authentication failure".to_owned()],
        ),
    })
}

/// The formats the lab host transfers.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Format {
    Raw,
    Vhd,
}

/// `format=`, case-insensitive, `raw` by default.
pub(super) fn format(params: &Params) -> Result<Format, Refusal> {
    let text = params.get("format").unwrap_or("raw");
    match text.to_ascii_lowercase().as_str() {
        "raw" => Ok(Format::Raw),
        "vhd" => Ok(Format::Vhd),
        "tar" | "qcow2" => Err(Refusal::not_found(internal(format!(
            "Format {text} is not supported by the lab host, which transfers raw and vhd"
        )))),
        _ => Err(Refusal::not_found(internal(format!(
            "Unknown format {text}"
        )))),
    }
}

/// The VDI a `vdi=` or `base=` value names, by reference or uuid: its reference and uuid.
pub(super) fn vdi(lab: &Lab, named: &str) -> Result<(String, Uuid), Refusal> {
    lab.vdi_by_ref_or_uuid(named).ok_or_else(|| {
        let code = if named.starts_with("OpaqueRef:") {
            "HANDLE_INVALID"
        } else {
            "UUID_INVALID"
        };
        Refusal::internal(XapiFault::new(code, ["VDI", named]))
    })
}

pub(super) fn internal(message: impl Into<String>) -> XapiFault {
    XapiFault::new("INTERNAL_ERROR", [message.into()])
}

/// The error a transfer fails with when the disk or the stream lets it down: xapi's
/// `VDI_IO_ERROR`, with what happened added as a second parameter.
pub(super) fn io_error(detail: impl std::fmt::Display) -> XapiFault {
    XapiFault::new(
        "VDI_IO_ERROR",
        ["Device I/O errors".to_owned(), detail.to_string()],
    )
}

/// A storage error of a transfer of `vdi` (a reference) as a XAPI error.
pub(super) fn storage_fault(vdi: &str, operation: &str, error: SrError) -> XapiFault {
    match error {
        SrError::InUse { .. } => XapiFault::new("VDI_IN_USE", [vdi, operation]),
        SrError::ReadOnly { .. } => XapiFault::new("VDI_READONLY", [vdi]),
        // What `VDI.data_destroy` left cannot be read or written.
        SrError::MetadataOnly { .. } => {
            XapiFault::new("VDI_INCOMPATIBLE_TYPE", [vdi, "cbt_metadata"])
        }
        other => io_error(other),
    }
}

/// How often a running transfer updates its task's progress and looks for a cancellation.
const PROGRESS_INTERVAL: Duration = Duration::from_millis(200);

/// A running transfer's task: progress now and then, and cancellation (`task.cancel`), which
/// xapi's transfers also honour.
pub(super) struct TaskProgress<'a> {
    lab: &'a Lab,
    task: &'a str,
    last: Instant,
}

impl<'a> TaskProgress<'a> {
    pub fn new(lab: &'a Lab, task: &'a str) -> TaskProgress<'a> {
        TaskProgress {
            lab,
            task,
            last: Instant::now(),
        }
    }

    /// Record `fraction` done if it is time to; fails with `TASK_CANCELLED` once the task
    /// is being cancelled.
    pub fn update(&mut self, fraction: f64) -> Result<(), XapiFault> {
        if self.last.elapsed() < PROGRESS_INTERVAL {
            return Ok(());
        }
        self.last = Instant::now();
        if self.lab.task_cancelling(self.task) {
            return Err(XapiFault::new("TASK_CANCELLED", [self.task]));
        }
        // Progress is a courtesy; a task destroyed meanwhile must not stop the transfer.
        let _ = self.lab.set_task_progress(self.task, fraction);
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn formats_are_case_insensitive_and_unknown_ones_are_404s() {
        let params = |q: &str| Params::new(Some(q), &HeaderMap::new());
        assert_eq!(format(&params("")).unwrap(), Format::Raw);
        assert_eq!(format(&params("format=VHD")).unwrap(), Format::Vhd);
        let refusal = format(&params("format=zip")).unwrap_err();
        assert_eq!(refusal.answer, Answer::NotFound);
        assert_eq!(refusal.fault, internal("Unknown format zip"));
        assert_eq!(
            format(&params("format=tar")).unwrap_err().answer,
            Answer::NotFound
        );
    }
}
