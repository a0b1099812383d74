//! The export names `VDI.get_nbd_info` hands out: `/<vdi uuid>?session_id=<session ref>`.

use uuid::Uuid;

/// What an export name asks for. Its `Debug` hides the session, a credential.
#[derive(Clone, PartialEq, Eq)]
pub(super) struct ExportName {
    pub vdi: Uuid,
    pub session: String,
}

impl std::fmt::Debug for ExportName {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ExportName")
            .field("vdi", &self.vdi)
            .finish_non_exhaustive()
    }
}

/// The export name `get_nbd_info` gives for `vdi` to the holder of `session`.
pub(crate) fn format(vdi: Uuid, session: &str) -> String {
    format!("/{vdi}?session_id={session}")
}

/// Parse an export name as a client sent it; the error says what is wrong without repeating
/// the name, which may carry a session.
pub(super) fn parse(name: &[u8]) -> Result<ExportName, &'static str> {
    let name = std::str::from_utf8(name).map_err(|_| "the export name is not UTF-8")?;
    let rest = name
        .strip_prefix('/')
        .ok_or("the export name does not start with '/'")?;
    let (vdi, query) = rest
        .split_once('?')
        .ok_or("the export name has no ?session_id=")?;
    let vdi = Uuid::try_parse(vdi).map_err(|_| "the export name's VDI is not a uuid")?;
    let session = form_urlencoded::parse(query.as_bytes())
        .find(|(key, _)| key == "session_id")
        .map(|(_, value)| value.into_owned())
        .filter(|session| !session.is_empty())
        .ok_or("the export name has no session_id")?;
    Ok(ExportName { vdi, session })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn formatted_names_parse_back_and_bad_ones_are_refused_without_echo() {
        let vdi = Uuid::new_v4();
        let name = format(vdi, "OpaqueRef:abc-123");
        let parsed = parse(name.as_bytes()).unwrap();
        assert_eq!(parsed.vdi, vdi);
        assert_eq!(parsed.session, "OpaqueRef:abc-123");
        assert!(!format!("{parsed:?}").contains("abc-123"));
        let with_more = format!("/{vdi}?other=1&session_id=OpaqueRef%3Ax");
        assert_eq!(parse(with_more.as_bytes()).unwrap().session, "OpaqueRef:x");
        for bad in [
            &b"\xff\xfe"[..],
            format!("{vdi}?session_id=s").as_bytes(),
            format!("/{vdi}").as_bytes(),
            b"/not-a-uuid?session_id=s",
            format!("/{vdi}?session_id=").as_bytes(),
            format!("/{vdi}?session=OpaqueRef:s3cr3t").as_bytes(),
        ] {
            let err = parse(bad).unwrap_err();
            assert!(!err.contains("s3cr3t"), "{err}");
        }
    }
}
