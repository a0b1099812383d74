//! The lab host's TLS identity: a self-signed certificate generated once and kept in
//! `DIR/tls` (`cert.pem`, and `key.pem` readable by its owner only), so that its fingerprint
//! stays the same across restarts and clients can pin it, as they pin a XenServer host's.
//! The lab's NBD server presents the same certificate, as xapi-nbd presents the host's.

use std::path::Path;
use std::sync::Arc;

use rustls::ServerConfig;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};

use super::HttpError;
use crate::fsio::atomic;
use crate::xapi::tls::Fingerprint;

const TLS_DIR: &str = "tls";
const CERT_FILE: &str = "cert.pem";
const KEY_FILE: &str = "key.pem";
/// Names the certificate is valid for; clients that check names connect by these.
const NAMES: [&str; 3] = ["localhost", "127.0.0.1", "::1"];

/// The certificate's subject as `VDI.get_nbd_info` gives it: its first name that is no
/// wildcard, as xapi picks it.
pub(crate) const SUBJECT: &str = NAMES[0];

/// Server configurations and the certificate clients pin.
pub(crate) struct Identity {
    /// For HTTPS (ALPN `http/1.1`).
    pub config: Arc<ServerConfig>,
    /// For NBD's STARTTLS (no ALPN).
    pub nbd_config: Arc<ServerConfig>,
    pub fingerprint: Fingerprint,
    /// The certificate, PEM-encoded, as `VDI.get_nbd_info` hands it out.
    pub cert_pem: String,
}

/// The identity kept in `lab_dir`, generated on first use.
pub(crate) fn load_or_create(lab_dir: &Path) -> Result<Identity, HttpError> {
    let dir = lab_dir.join(TLS_DIR);
    let (cert_path, key_path) = (dir.join(CERT_FILE), dir.join(KEY_FILE));
    if !cert_path.exists() || !key_path.exists() {
        create(&dir)?;
    }
    let bad = |path: &Path| {
        let path = path.to_path_buf();
        move |e: rustls::pki_types::pem::Error| HttpError::Certificate {
            path,
            message: e.to_string(),
        }
    };
    let cert_pem =
        std::fs::read_to_string(&cert_path).map_err(HttpError::io("read", &cert_path))?;
    let cert = CertificateDer::from_pem_slice(cert_pem.as_bytes()).map_err(bad(&cert_path))?;
    let key = PrivateKeyDer::from_pem_file(&key_path).map_err(bad(&key_path))?;
    let fingerprint = Fingerprint::of_der(&cert);
    let server_config = |alpn: Vec<Vec<u8>>| {
        let mut config =
            ServerConfig::builder_with_provider(Arc::new(rustls::crypto::ring::default_provider()))
                .with_safe_default_protocol_versions()
                .and_then(|builder| {
                    builder
                        .with_no_client_auth()
                        .with_single_cert(vec![cert.clone()], key.clone_key())
                })
                .map_err(|e| HttpError::Certificate {
                    path: cert_path.clone(),
                    message: e.to_string(),
                })?;
        config.alpn_protocols = alpn;
        Ok::<_, HttpError>(Arc::new(config))
    };
    Ok(Identity {
        config: server_config(vec![b"http/1.1".to_vec()])?,
        nbd_config: server_config(Vec::new())?,
        fingerprint,
        cert_pem,
    })
}

/// Generate a certificate and key into `dir`. Each file is written to a temp file and renamed
/// into place, the key first, so a crash leaves no certificate without its key.
fn create(dir: &Path) -> Result<(), HttpError> {
    std::fs::create_dir_all(dir).map_err(HttpError::io("create directory", dir))?;
    let names: Vec<String> = NAMES.iter().map(|n| n.to_string()).collect();
    let generated =
        rcgen::generate_simple_self_signed(names).map_err(|e| HttpError::Certificate {
            path: dir.join(CERT_FILE),
            message: format!("generating a self-signed certificate: {e}"),
        })?;
    write_private(
        &dir.join(KEY_FILE),
        generated.signing_key.serialize_pem().as_bytes(),
    )?;
    write_private(&dir.join(CERT_FILE), generated.cert.pem().as_bytes())
}

/// Replace `path` with `bytes` readable by its owner only (mode 0600), atomically.
fn write_private(path: &Path, bytes: &[u8]) -> Result<(), HttpError> {
    atomic::write_private(path, bytes).map_err(|e| HttpError::Io {
        action: e.action,
        path: e.path,
        source: e.source,
    })
}

#[cfg(test)]
mod tests {
    use std::os::unix::fs::PermissionsExt;

    use super::*;

    #[test]
    fn the_identity_is_made_once_with_a_private_key_and_kept() {
        let dir = tempfile::tempdir().unwrap();
        let first = load_or_create(dir.path()).unwrap();
        let key = dir.path().join(TLS_DIR).join(KEY_FILE);
        let mode = std::fs::metadata(&key).unwrap().permissions().mode();
        assert_eq!(mode & 0o777, 0o600);
        let again = load_or_create(dir.path()).unwrap();
        assert_eq!(first.fingerprint, again.fingerprint);
        assert!(first.fingerprint.to_string().starts_with("sha256:"));
    }
}
