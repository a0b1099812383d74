//! Logging in to the hosts a command names, on its command line or in its job file, with the
//! library's [`HostLogin`]; the credential warnings it finds are printed here, on stderr.

use std::path::Path;

use super::CliError;
use crate::replicate::job::Job;
use crate::replicate::preflight;
use crate::xapi::HostUrl;
use crate::xapi::client::XapiClient;
use crate::xapi::connect::{
    ConnectError, HostLogin, SOURCE_PASSWORD_ENV, TARGET_PASSWORD_ENV, credential_warnings,
    trust_for,
};

/// A host as the command line names it: its URL, password file and pinned fingerprint.
pub struct CommandLineHost<'a> {
    pub url: &'a str,
    pub password_file: Option<&'a Path>,
    pub fingerprint: Option<&'a str>,
}

/// The source and the target a command line names, with the global `--insecure`; their
/// passwords' environment variables are [`SOURCE_PASSWORD_ENV`] and [`TARGET_PASSWORD_ENV`].
pub fn command_line_pair(
    source: CommandLineHost,
    target: CommandLineHost,
    insecure: bool,
) -> Result<(HostLogin, HostLogin), CliError> {
    let login = |host: CommandLineHost, password_env: &str| -> Result<HostLogin, ConnectError> {
        Ok(HostLogin {
            password_file: host.password_file.map(Path::to_path_buf),
            password_env: Some(password_env.to_owned()),
            url_on_command_line: true,
            ..HostLogin::new(
                HostUrl::parse(host.url)?,
                trust_for(host.fingerprint, insecure)?,
            )
        })
    };
    Ok((
        login(source, SOURCE_PASSWORD_ENV)?,
        login(target, TARGET_PASSWORD_ENV)?,
    ))
}

/// Print what the owner of these credentials should fix, each warning once.
pub fn warn_about<'a>(logins: impl IntoIterator<Item = &'a HostLogin>) {
    for warning in credential_warnings(logins) {
        eprintln!("vhdsync: warning: {warning}");
    }
}

/// Log in to one host, after its credential warnings.
pub async fn connect(login: &HostLogin) -> Result<XapiClient, CliError> {
    warn_about([login]);
    Ok(login.connect().await?)
}

fn insecure_warning(job: &Job) {
    if job.insecure {
        eprintln!("vhdsync: warning: [tls] insecure: host certificates are not verified");
    }
}

/// Connect to both hosts of a job, each password looked for before either host is
/// contacted; an untrusted certificate's error says how to trust it.
pub async fn connect_job(job: &Job) -> Result<(XapiClient, XapiClient), CliError> {
    insecure_warning(job);
    let source = job.source_login().map_err(ConnectError::from)?;
    let target = job.target_login().map_err(ConnectError::from)?;
    warn_about([&source, &target]);
    Ok(preflight::connect(job).await?)
}

/// Connect to a job's target only: failover and status must work with the source site gone.
pub async fn connect_job_target(job: &Job) -> Result<XapiClient, CliError> {
    insecure_warning(job);
    connect(&job.target_login().map_err(ConnectError::from)?).await
}
