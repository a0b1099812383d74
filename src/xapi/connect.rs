//! From a host's URL and credentials to a logged-in [`XapiClient`]: where the password comes
//! from (a file, else an environment variable, else the URL), how the host's certificate is
//! trusted (a pinned fingerprint, the system roots, or not at all), and what about the way the
//! password is kept its owner should fix ([`CredentialWarning`]).
//!
//! The library never prints: [`credential_warnings`] returns the warnings, for the caller to
//! show (the CLI prints each on stderr).

use std::fmt;
use std::io::Read;
use std::path::{Path, PathBuf};

use super::client::{ClientError, XapiClient};
use super::connection::TransportError;
use super::tls::{Fingerprint, TlsError, Trust};
use super::url::UrlError;
use super::{HostUrl, Secret};

/// The environment variable holding the source host's password, read when no password file
/// is given.
pub const SOURCE_PASSWORD_ENV: &str = "VHDSYNC_SOURCE_PASSWORD";
/// The environment variable holding the target host's password.
pub const TARGET_PASSWORD_ENV: &str = "VHDSYNC_TARGET_PASSWORD";

/// The most of a password file that is read: a password is one short line, and a path
/// pointing at something huge by mistake must not be read whole.
const MAX_PASSWORD_FILE: u64 = 64 << 10;
/// The permission bits that let users other than the owner read a file.
const READABLE_BY_OTHERS: u32 = 0o044;
/// The XAPI error code for a refused user name or password.
const AUTHENTICATION_FAILED: &str = "SESSION_AUTHENTICATION_FAILED";

/// Why a host could not be connected to.
#[derive(Debug, thiserror::Error)]
pub enum ConnectError {
    #[error(transparent)]
    Url(#[from] UrlError),
    /// The pinned fingerprint does not parse.
    #[error(transparent)]
    Trust(#[from] TlsError),
    #[error("password file {}: {source}", path.display())]
    PasswordFile {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{host}: no user name given (put it in the URL, e.g. https://root@host)")]
    NoUser { host: String },
    #[error("{host}: no password given ({})", sources(.env.as_deref()))]
    NoPassword { host: String, env: Option<String> },
    /// The TLS handshake failed: an unverifiable certificate, or one that is not the pinned one.
    #[error(transparent)]
    Tls(TransportError),
    /// The host could not be reached, or did not answer over HTTP.
    #[error(transparent)]
    Unreachable(TransportError),
    /// The host refused the user name or password.
    #[error("the host refused the user name or password: {source}")]
    Authentication { host: String, source: ClientError },
    /// Any other failure of the login call.
    #[error(transparent)]
    Login(ClientError),
}

impl ConnectError {
    /// Whether the caller's input is at fault (a bad URL, fingerprint, password file, or
    /// missing credentials) rather than the host or the network.
    pub fn is_input(&self) -> bool {
        matches!(
            self,
            ConnectError::Url(_)
                | ConnectError::Trust(_)
                | ConnectError::PasswordFile { .. }
                | ConnectError::NoUser { .. }
                | ConnectError::NoPassword { .. }
        )
    }

    fn from_client(host: &HostUrl, error: ClientError) -> ConnectError {
        match error {
            ClientError::NoCredentials { host } => ConnectError::NoUser { host },
            ClientError::Transport(e @ TransportError::Tls { .. }) => ConnectError::Tls(e),
            ClientError::Transport(e) => ConnectError::Unreachable(e),
            e if e.xapi_code() == Some(AUTHENTICATION_FAILED) => ConnectError::Authentication {
                host: host.to_string(),
                source: e,
            },
            e => ConnectError::Login(e),
        }
    }
}

fn sources(env: Option<&str>) -> String {
    match env {
        Some(env) => format!("use a password file, the environment variable {env}, or the URL"),
        None => "use a password file or the URL".to_owned(),
    }
}

/// Something about the way a password is kept that its owner should fix. The connection
/// works regardless.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CredentialWarning {
    /// Passwords are in URLs given on a command line (for these hosts), where `ps` shows them
    /// to every user of the machine and the shell may keep them in its history.
    PasswordOnCommandLine { hosts: Vec<String> },
    /// The password file can be read by users other than its owner.
    PasswordFileReadable { path: PathBuf, mode: u32 },
}

impl fmt::Display for CredentialWarning {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            CredentialWarning::PasswordOnCommandLine { hosts } => write!(
                f,
                "the password for {} is in a URL on the command line, where any user can see \
                 it (ps); use a password file or the environment instead",
                hosts.join(" and ")
            ),
            CredentialWarning::PasswordFileReadable { path, mode } => write!(
                f,
                "password file {} is readable by other users (mode {:04o}); chmod 600 it",
                path.display(),
                mode & 0o7777
            ),
        }
    }
}

/// How to reach and log in to one host.
#[derive(Debug, Clone)]
pub struct HostLogin {
    /// The host, with the user name and perhaps the password.
    pub url: HostUrl,
    /// A file whose first line is the password (which keeps it out of `ps` and shell
    /// history); it overrides the environment and the URL.
    pub password_file: Option<PathBuf>,
    /// An environment variable holding the password, read when there is no password file;
    /// it overrides the URL's password.
    pub password_env: Option<String>,
    pub trust: Trust,
    /// The URL came from a command line, where `ps` shows its password to every user.
    pub url_on_command_line: bool,
}

impl HostLogin {
    /// A login with the URL's credentials only.
    pub fn new(url: HostUrl, trust: Trust) -> HostLogin {
        HostLogin {
            url,
            password_file: None,
            password_env: None,
            trust,
            url_on_command_line: false,
        }
    }

    /// The password: the file's first line, else the environment variable, else the URL's.
    pub fn password(&self) -> Result<Secret, ConnectError> {
        if let Some(path) = &self.password_file {
            return read_password_file(path);
        }
        self.password_env
            .as_deref()
            .and_then(Secret::from_env)
            .or_else(|| self.url.password.clone())
            .ok_or_else(|| ConnectError::NoPassword {
                host: self.url.to_string(),
                env: self.password_env.clone(),
            })
    }

    /// Log in.
    pub async fn connect(&self) -> Result<XapiClient, ConnectError> {
        let password = self.password()?;
        XapiClient::connect(self.url.clone(), &self.trust, Some(password))
            .await
            .map_err(|e| ConnectError::from_client(&self.url, e))
    }
}

/// What the owner of these logins' credentials should fix, each said once: one warning for
/// all the hosts whose password is on the command line, one per password file that users
/// other than its owner can read. Empty when there is nothing to fix.
pub fn credential_warnings<'a>(
    logins: impl IntoIterator<Item = &'a HostLogin>,
) -> Vec<CredentialWarning> {
    let mut on_command_line = Vec::new();
    let mut warnings = Vec::new();
    for login in logins {
        if login.url_on_command_line && login.url.password.is_some() {
            on_command_line.push(login.url.to_string());
        }
        if let Some(path) = &login.password_file
            && let Some(mode) = readable_by_others(path)
        {
            let warning = CredentialWarning::PasswordFileReadable {
                path: path.clone(),
                mode,
            };
            if !warnings.contains(&warning) {
                warnings.push(warning);
            }
        }
    }
    if !on_command_line.is_empty() {
        warnings.insert(
            0,
            CredentialWarning::PasswordOnCommandLine {
                hosts: on_command_line,
            },
        );
    }
    warnings
}

/// The trust for one host: its pinned fingerprint when given, else none at all when
/// `insecure`, else the system's root certificates.
pub fn trust_for(fingerprint: Option<&str>, insecure: bool) -> Result<Trust, TlsError> {
    match (fingerprint, insecure) {
        (Some(text), _) => Fingerprint::parse(text).map(Trust::Pinned),
        (None, true) => Ok(Trust::Insecure),
        (None, false) => Ok(Trust::SystemRoots),
    }
}

/// A password kept in a file: its first line, without the line ending.
fn read_password_file(path: &Path) -> Result<Secret, ConnectError> {
    let fail = |source| ConnectError::PasswordFile {
        path: path.to_path_buf(),
        source,
    };
    let mut text = String::new();
    std::fs::File::open(path)
        .map_err(fail)?
        .take(MAX_PASSWORD_FILE)
        .read_to_string(&mut text)
        .map_err(fail)?;
    Ok(Secret::new(text.lines().next().unwrap_or_default()))
}

/// The file's permission bits when users other than its owner can read it. A file that
/// cannot be examined gives no warning: reading it then fails with the reason.
#[cfg(unix)]
fn readable_by_others(path: &Path) -> Option<u32> {
    use std::os::unix::fs::PermissionsExt;
    let mode = std::fs::metadata(path).ok()?.permissions().mode();
    (mode & READABLE_BY_OTHERS != 0).then_some(mode)
}

#[cfg(not(unix))]
fn readable_by_others(_path: &Path) -> Option<u32> {
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    fn login(url: &str) -> HostLogin {
        HostLogin::new(HostUrl::parse(url).unwrap(), Trust::Insecure)
    }

    #[test]
    fn a_password_file_gives_its_first_line_and_overrides_the_url() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("pw");
        std::fs::write(&path, "p@ss:w/rd#?%\nignored\n").unwrap();
        let mut login = login("http://root:from-url@host");
        login.password_file = Some(path.clone());
        assert_eq!(login.password().unwrap().expose(), "p@ss:w/rd#?%");
        std::fs::write(&path, "").unwrap();
        assert_eq!(login.password().unwrap().expose(), "");
    }

    #[test]
    fn an_unreadable_password_file_names_the_file() {
        let mut login = login("http://root@host");
        login.password_file = Some("/nonexistent/vhdsync.pw".into());
        let error = login.password().unwrap_err();
        assert!(
            matches!(error, ConnectError::PasswordFile { .. }),
            "{error}"
        );
        assert!(error.is_input());
        assert!(
            error.to_string().contains("/nonexistent/vhdsync.pw"),
            "{error}"
        );
    }

    #[test]
    fn no_password_anywhere_is_an_input_error_naming_the_sources() {
        let mut login = login("http://root@host");
        login.password_env = Some("VHDSYNC_TEST_UNSET_PASSWORD_VARIABLE".into());
        let error = login.password().unwrap_err();
        assert!(matches!(error, ConnectError::NoPassword { .. }), "{error}");
        assert!(error.is_input());
        assert!(
            error
                .to_string()
                .contains("VHDSYNC_TEST_UNSET_PASSWORD_VARIABLE"),
            "{error}"
        );
    }

    #[test]
    fn passwords_in_command_line_urls_warn_once() {
        let mut source = login("http://root:secret@source:8080");
        let mut target = login("https://root:terces@target");
        assert_eq!(
            credential_warnings([&source, &target]),
            vec![],
            "URLs from a file are not in ps"
        );
        source.url_on_command_line = true;
        target.url_on_command_line = true;
        let warnings = credential_warnings([&source, &target]);
        assert_eq!(
            warnings,
            vec![CredentialWarning::PasswordOnCommandLine {
                hosts: vec!["http://source:8080".into(), "https://target:443".into()]
            }]
        );
        let text = warnings[0].to_string();
        assert!(
            !text.contains("secret") && !text.contains("terces"),
            "{text}"
        );
        let mut user_only = login("http://root@host");
        user_only.url_on_command_line = true;
        assert_eq!(credential_warnings([&user_only]), vec![]);
    }

    #[cfg(unix)]
    #[test]
    fn a_password_file_others_can_read_warns_with_its_mode() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("pw");
        std::fs::write(&path, "secret\n").unwrap();
        let mut login = login("http://root@host");
        login.password_file = Some(path.clone());
        for (mode, warns) in [(0o600, false), (0o400, false), (0o640, true), (0o644, true)] {
            std::fs::set_permissions(&path, std::fs::Permissions::from_mode(mode)).unwrap();
            // The same file for both hosts is one warning.
            let warnings = credential_warnings([&login, &login]);
            assert!(warnings.len() <= 1, "{warnings:?}");
            assert_eq!(!warnings.is_empty(), warns, "mode {mode:o}: {warnings:?}");
            if warns {
                let text = warnings[0].to_string();
                assert!(text.contains(&format!("{mode:04o}")), "{text}");
                assert!(text.contains(&path.display().to_string()), "{text}");
            }
        }
    }

    #[test]
    fn trust_from_a_pin_or_the_insecure_switch() {
        assert_eq!(trust_for(None, false).unwrap(), Trust::SystemRoots);
        assert_eq!(trust_for(None, true).unwrap(), Trust::Insecure);
        let pin = format!("sha256:{}", "ab".repeat(32));
        assert!(matches!(
            trust_for(Some(&pin), true).unwrap(),
            Trust::Pinned(_)
        ));
        assert!(trust_for(Some("sha256:nothex"), false).is_err());
    }
}
