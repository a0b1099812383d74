//! Real third-party clients from npm, installed at test time with `npm ci` from the lockfile
//! in `tests/npm`, and running them. Without `node`/`npm`, or when `npm ci` cannot reach the
//! registry, [`clients`] prints a note and returns `None` (the test passes), unless
//! `VHDSYNC_REQUIRE_NPM_CLIENTS` is set (`.ci/run` sets it), where it panics.

use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use serde_json::Value as Json;
use sha2::{Digest, Sha256};

pub const REQUIRE: &str = "VHDSYNC_REQUIRE_NPM_CLIENTS";
/// Generous bounds for loopback work that takes about a second, so a hang fails instead of
/// stalling the suite; `npm ci` downloads about 70 small packages.
pub const CLIENT_TIMEOUT: Duration = Duration::from_secs(120);
const NPM_CI_TIMEOUT: Duration = Duration::from_secs(600);

// ---------------------------------------------------------------------------------------
// Installing the clients

/// Why the clients could not be installed.
#[derive(Debug)]
pub enum Setup {
    /// No node/npm, or no registry: a skip, outside CI.
    Unavailable(String),
    /// Anything else, e.g. a lockfile `npm ci` refuses: always a failure.
    Broken(String),
}

/// The directory holding the client scripts and their `node_modules`, or `None` when the
/// test is to be skipped. `npm ci` runs once per lockfile: its result is cached under
/// cargo's target tmp dir, keyed by a hash of `package.json` and `package-lock.json`.
pub fn clients() -> Option<&'static Path> {
    static INSTALLED: OnceLock<Result<PathBuf, Setup>> = OnceLock::new();
    match INSTALLED.get_or_init(install) {
        Ok(dir) => Some(dir),
        Err(Setup::Unavailable(why)) if std::env::var_os(REQUIRE).is_none() => {
            // Straight to stderr: `eprintln!` output is captured and shown only for failures,
            // and a skip must be visible.
            let _ = writeln!(
                std::io::stderr(),
                "npm_clients: SKIPPED, {why} (set {REQUIRE}=1 to make this a failure)"
            );
            None
        }
        Err(Setup::Unavailable(why) | Setup::Broken(why)) => panic!("npm clients: {why}"),
    }
}

pub fn install() -> Result<PathBuf, Setup> {
    for tool in ["node", "npm"] {
        let found = Command::new(tool)
            .arg("--version")
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()
            .is_ok_and(|status| status.success());
        if !found {
            return Err(Setup::Unavailable(format!("`{tool}` is not installed")));
        }
    }
    let source = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/npm");
    let manifests = ["package.json", "package-lock.json"];
    let mut hash = Sha256::new();
    for name in manifests {
        hash.update(std::fs::read(source.join(name)).map_err(broken(name))?);
    }
    let key = hex::encode(&hash.finalize()[..8]);
    let cache = Path::new(env!("CARGO_TARGET_TMPDIR")).join("npm-clients");
    let dir = cache.join(&key);
    // npm writes this file last, after a complete install.
    if !dir.join("node_modules/.package-lock.json").exists() {
        // Install beside the cache and rename into place, so an interrupted or concurrent
        // install never leaves a half-filled directory under the key.
        std::fs::create_dir_all(&cache).map_err(broken("the npm cache directory"))?;
        let staging = tempfile::tempdir_in(&cache).map_err(broken("a staging directory"))?;
        for name in manifests {
            std::fs::copy(source.join(name), staging.path().join(name)).map_err(broken(name))?;
        }
        let mut npm = Command::new("npm");
        // No install scripts: these packages need none, and the test should run no code
        // from the registry beyond the clients themselves.
        npm.args(["ci", "--ignore-scripts", "--no-audit", "--no-fund"])
            .current_dir(staging.path());
        let output = run_with_timeout(&mut npm, NPM_CI_TIMEOUT);
        if !output.success {
            let log = format!("{}{}", output.stdout, output.stderr);
            return Err(if is_network_error(&log) {
                Setup::Unavailable(format!("`npm ci` cannot reach the registry:\n{log}"))
            } else {
                Setup::Broken(format!("`npm ci` failed:\n{log}"))
            });
        }
        let staged = staging.keep();
        if std::fs::rename(&staged, &dir).is_err() {
            // Another test process installed the same key first; use that one.
            let _ = std::fs::remove_dir_all(&staged);
        }
    }
    // The scripts are copied on every run, so edits need no reinstall.
    for entry in std::fs::read_dir(&source).map_err(broken("tests/npm"))? {
        let path = entry.map_err(broken("tests/npm"))?.path();
        if path.extension().is_some_and(|e| e == "mjs") {
            let name = path.file_name().unwrap();
            std::fs::copy(&path, dir.join(name)).map_err(broken("a client script"))?;
        }
    }
    Ok(dir)
}

pub fn broken(what: &str) -> impl Fn(std::io::Error) -> Setup + '_ {
    move |e| Setup::Broken(format!("{what}: {e}"))
}

/// npm's error codes for a registry it cannot reach.
pub fn is_network_error(log: &str) -> bool {
    [
        "ENOTFOUND",
        "EAI_AGAIN",
        "ECONNREFUSED",
        "ECONNRESET",
        "ETIMEDOUT",
        "ENETUNREACH",
        "EHOSTUNREACH",
    ]
    .iter()
    .any(|code| log.contains(code))
}

// ---------------------------------------------------------------------------------------
// Processes

pub struct Output {
    pub success: bool,
    pub stdout: String,
    pub stderr: String,
}

/// Run `command` to its end, or kill it after `timeout` and fail.
pub fn run_with_timeout(command: &mut Command, timeout: Duration) -> Output {
    let mut child = command
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap_or_else(|e| panic!("cannot start {command:?}: {e}"));
    let stdout = drain(child.stdout.take().unwrap());
    let stderr = drain(child.stderr.take().unwrap());
    let deadline = Instant::now() + timeout;
    let status = loop {
        if let Some(status) = child.try_wait().unwrap() {
            break status;
        }
        if Instant::now() >= deadline {
            let _ = child.kill();
            let _ = child.wait();
            panic!(
                "{command:?} did not finish within {timeout:?}\nstdout:\n{}\nstderr:\n{}",
                stdout.join().unwrap(),
                stderr.join().unwrap()
            );
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    Output {
        success: status.success(),
        stdout: stdout.join().unwrap(),
        stderr: stderr.join().unwrap(),
    }
}

pub fn drain(mut pipe: impl Read + Send + 'static) -> std::thread::JoinHandle<String> {
    std::thread::spawn(move || {
        let mut text = String::new();
        let _ = pipe.read_to_string(&mut text);
        text
    })
}

/// Run one of the Node scripts and parse the JSON document it prints.
pub fn node(clients: &Path, script: &str, args: &[(&str, &str)]) -> Json {
    let mut command = Command::new("node");
    command.arg(script).current_dir(clients);
    for (name, value) in args {
        command.arg(format!("--{name}")).arg(value);
    }
    let output = run_with_timeout(&mut command, CLIENT_TIMEOUT);
    assert!(
        output.success,
        "{script} failed\nstdout:\n{}\nstderr:\n{}",
        output.stdout, output.stderr
    );
    serde_json::from_str(&output.stdout)
        .unwrap_or_else(|e| panic!("{script} printed no JSON ({e}):\n{}", output.stdout))
}
