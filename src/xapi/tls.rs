//! TLS for talking to hosts. XenServer hosts use self-signed certificates, so besides the
//! system roots a host can be trusted by pinning the SHA-256 fingerprint of its certificate;
//! `Insecure` is an explicit opt-out. Handshake signatures are verified in every mode.

use std::fmt;
use std::sync::{Arc, Mutex};

use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::crypto::{CryptoProvider, verify_tls12_signature, verify_tls13_signature};
use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
use rustls::{ClientConfig, DigitallySignedStruct, RootCertStore, SignatureScheme};
use sha2::{Digest, Sha256};

/// A certificate's SHA-256 fingerprint, shown as `sha256:<hex>`.
#[derive(Clone, Copy, PartialEq, Eq, Hash)]
pub struct Fingerprint(pub [u8; 32]);

impl Fingerprint {
    pub fn of_der(der: &[u8]) -> Fingerprint {
        Fingerprint(Sha256::digest(der).into())
    }

    /// Accepts `sha256:<hex>`, plain hex, and colon-separated hex, in any case.
    pub fn parse(text: &str) -> Result<Fingerprint, TlsError> {
        let hex_part = text.trim();
        let hex_part = hex_part
            .strip_prefix("sha256:")
            .or_else(|| hex_part.strip_prefix("SHA256:"))
            .unwrap_or(hex_part)
            .replace(':', "");
        let bytes = hex::decode(&hex_part)
            .ok()
            .and_then(|b| <[u8; 32]>::try_from(b).ok())
            .ok_or_else(|| TlsError::BadFingerprint(text.to_string()))?;
        Ok(Fingerprint(bytes))
    }
}

impl fmt::Display for Fingerprint {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "sha256:{}", hex::encode(self.0))
    }
}

impl fmt::Debug for Fingerprint {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(self, f)
    }
}

/// How a host's certificate is trusted.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Trust {
    /// The system's root certificates, with host name checks.
    SystemRoots,
    /// Exactly this certificate, whoever signed it.
    Pinned(Fingerprint),
    /// Any certificate (the user opted out of verification).
    Insecure,
}

#[derive(Debug, Clone, thiserror::Error)]
pub enum TlsError {
    #[error("bad certificate fingerprint {0:?}: expected sha256:<64 hex digits>")]
    BadFingerprint(String),
    #[error("no usable system root certificates: {0}")]
    NoRoots(String),
    #[error("TLS setup: {0}")]
    Setup(String),
}

fn provider() -> Arc<CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

/// A client configuration for `trust`. `observed` receives the fingerprint the server
/// presented, whatever the outcome, so a mismatch can show both values and `trust` can print it.
pub fn client_config(
    trust: &Trust,
    observed: Arc<Mutex<Option<Fingerprint>>>,
) -> Result<Arc<ClientConfig>, TlsError> {
    let builder = ClientConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()
        .map_err(|e| TlsError::Setup(e.to_string()))?;
    let config = match trust {
        Trust::SystemRoots => {
            let mut roots = RootCertStore::empty();
            let found = rustls_native_certs::load_native_certs();
            for cert in found.certs {
                let _ = roots.add(cert);
            }
            if roots.is_empty() {
                return Err(TlsError::NoRoots(format!("{:?}", found.errors)));
            }
            builder.with_root_certificates(roots).with_no_client_auth()
        }
        Trust::Pinned(expected) => builder
            .dangerous()
            .with_custom_certificate_verifier(Arc::new(FingerprintVerifier {
                expected: Some(*expected),
                observed,
                provider: provider(),
            }))
            .with_no_client_auth(),
        Trust::Insecure => builder
            .dangerous()
            .with_custom_certificate_verifier(Arc::new(FingerprintVerifier {
                expected: None,
                observed,
                provider: provider(),
            }))
            .with_no_client_auth(),
    };
    Ok(Arc::new(config))
}

/// Accepts the certificate whose fingerprint is `expected` (or any, when `None`), and still
/// checks that the server holds its key.
#[derive(Debug)]
struct FingerprintVerifier {
    expected: Option<Fingerprint>,
    observed: Arc<Mutex<Option<Fingerprint>>>,
    provider: Arc<CryptoProvider>,
}

impl ServerCertVerifier for FingerprintVerifier {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp_response: &[u8],
        _now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        let presented = Fingerprint::of_der(end_entity);
        if let Ok(mut slot) = self.observed.lock() {
            *slot = Some(presented);
        }
        match self.expected {
            Some(expected) if expected != presented => Err(rustls::Error::General(format!(
                "certificate fingerprint mismatch: pinned {expected}, host presented {presented}"
            ))),
            _ => Ok(ServerCertVerified::assertion()),
        }
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        verify_tls12_signature(
            message,
            cert,
            dss,
            &self.provider.signature_verification_algorithms,
        )
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        verify_tls13_signature(
            message,
            cert,
            dss,
            &self.provider.signature_verification_algorithms,
        )
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.provider
            .signature_verification_algorithms
            .supported_schemes()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fingerprint_forms() {
        let fp = Fingerprint::of_der(b"cert");
        let shown = fp.to_string();
        assert!(shown.starts_with("sha256:") && shown.len() == 7 + 64);
        assert_eq!(Fingerprint::parse(&shown).unwrap(), fp);
        let colons = hex::encode(fp.0)
            .as_bytes()
            .chunks(2)
            .map(|c| std::str::from_utf8(c).unwrap().to_uppercase())
            .collect::<Vec<_>>()
            .join(":");
        assert_eq!(Fingerprint::parse(&colons).unwrap(), fp);
        assert!(Fingerprint::parse("sha256:abcd").is_err());
    }
}
