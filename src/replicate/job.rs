//! Job files: one TOML file per replication job (issue 6 §1). These files are written by hand
//! and read by cron, so every error names the file, the line and the key, and an unknown key
//! (a typo) is an error rather than a silently ignored setting.
//!
//! Passwords are not read here: the runner reads the password files or the environment when
//! it connects, so a parsed `Job` never holds one except inside a URL, whose `Debug` and
//! `Display` redact it.

use std::ffi::OsString;
use std::fmt;
use std::ops::Range;
use std::path::{Path, PathBuf};

use toml::Spanned;
use toml::de::{DeArray, DeTable, DeValue};
use uuid::Uuid;

use super::transport::{Transport, TransportSettings};
use crate::units::parse_rate;
use crate::xapi::HostUrl;
use crate::xapi::connect::{HostLogin, SOURCE_PASSWORD_ENV, TARGET_PASSWORD_ENV, trust_for};
use crate::xapi::tls::{Fingerprint, TlsError};
use crate::xapi::transfer::MAX_NBD_CONCURRENCY;

/// Namespace of the ids derived from a job's name when `job_id` / `schedule_id` are absent.
/// Never change it: the ids are written into host metadata (`xo:backup:job`,
/// `xo:backup:schedule`), and new ids would orphan every existing replica chain, so the next
/// run would send a new full copy. For the same reason, renaming a job changes its derived
/// ids; set `job_id` and `schedule_id` explicitly to rename a job and keep its chains.
pub const ID_NAMESPACE: Uuid = uuid::uuid!("5583a396-055e-425a-82d2-a3959f92f70f");

const TOP_KEYS: &[&str] = &[
    "name",
    "source",
    "target",
    "target_sr",
    "vms",
    "retention",
    "job_id",
    "schedule_id",
    "full_interval",
    "snapshot_retention",
    "concurrency",
    "max_rate",
    "state_dir",
    "source_password_file",
    "target_password_file",
    "tls",
    "network_map",
    "new_mac_addresses",
    "health_check",
    "health_check_timeout",
    "metrics_file",
    "lease_ttl",
    "cbt",
    "transport",
    "nbd_concurrency",
    "purge_snapshot_data",
];
/// Xen Orchestra's `healthCheckTimeout` default.
pub const DEFAULT_HEALTH_CHECK_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(600);
/// The shortest `lease_ttl`.
const MIN_LEASE_TTL: std::time::Duration = std::time::Duration::from_secs(2);
const TLS_KEYS: &[&str] = &["source_fingerprint", "target_fingerprint", "insecure"];

/// A replication job, validated: UUIDs are canonical (lowercase, hyphenated), URLs and
/// fingerprints parse, counts are in range, and paths are absolute or relative to the
/// current directory (relative paths in the file are resolved against the file's directory).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Job {
    pub name: String,
    pub source: HostSpec,
    pub target: HostSpec,
    pub target_sr: String,
    /// The VM UUIDs listed, without duplicates, in the file's order; empty when the job
    /// selects by tag only.
    pub vms: Vec<String>,
    /// `tag:NAME` entries: every source VM carrying one of these tags, resolved at each run
    /// (`replicate::selection`). Without duplicates, in the file's order.
    pub vm_tags: Vec<String>,
    /// Replicas kept on the target, at least 1.
    pub retention: u32,
    pub job_id: String,
    pub schedule_id: String,
    /// Force a full copy once the delta chain reaches this length; 0 never forces one.
    pub full_interval: u32,
    /// Source snapshots kept, at least 1: the newest is the base of the next delta.
    pub snapshot_retention: u32,
    /// VMs replicated in parallel, at least 1.
    pub concurrency: u32,
    /// The job's bandwidth limit in bytes per second, shared by all its transfers
    /// (Xen Orchestra's `maxExportRate`); `None` for no limit.
    pub max_rate: Option<u64>,
    /// `[tls] insecure`: accept any certificate from a host without a pinned fingerprint.
    pub insecure: bool,
    /// Where the per-VM lock files live.
    pub state_dir: PathBuf,
    /// `[network_map]`: source network (UUID or name) -> target network (UUID or name),
    /// in the file's order; the first rule of the replica's network mapping.
    pub network_map: Vec<(String, String)>,
    /// Replica interfaces get MACs of the target's choosing instead of the source's.
    pub new_mac_addresses: bool,
    /// Run the health check after each successful cycle.
    pub health_check: bool,
    /// How long a health-checked guest may take to boot.
    pub health_check_timeout: std::time::Duration,
    /// Where `replicate` writes the job's metrics after each run, in the Prometheus text
    /// format (node_exporter's textfile collector reads `*.prom` files), replaced atomically.
    pub metrics_file: Option<PathBuf>,
    /// How long each VM's lease on the source lasts unless renewed (`replicate::lease`).
    pub lease_ttl: std::time::Duration,
    /// `cbt`, `transport`, `nbd_concurrency`, `purge_snapshot_data`.
    pub transport: TransportSettings,
}

/// One host of a job.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HostSpec {
    /// May carry credentials; its `Debug` and `Display` never show the password.
    pub url: HostUrl,
    /// `source_password_file` / `target_password_file`; never set together with a password
    /// in the URL, so which one applies is never ambiguous.
    pub password_file: Option<PathBuf>,
    /// `[tls] source_fingerprint` / `target_fingerprint` as written; it parses as a
    /// [`Fingerprint`].
    pub fingerprint: Option<String>,
}

impl HostSpec {
    fn login(&self, password_env: &str, insecure: bool) -> Result<HostLogin, TlsError> {
        Ok(HostLogin {
            password_file: self.password_file.clone(),
            password_env: Some(password_env.to_owned()),
            ..HostLogin::new(
                self.url.clone(),
                trust_for(self.fingerprint.as_deref(), insecure)?,
            )
        })
    }
}

/// A problem in a job file: `job.toml:4: retention: must be at least 1, found 0`. The line is
/// 1-based, 0 when there is none (a missing key, an unreadable file) and then not shown; the
/// key is dotted for `[tls]` keys (`tls.insecure`) and empty for TOML syntax errors.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct JobError {
    pub path: PathBuf,
    pub line: usize,
    pub key: String,
    pub message: String,
}

impl fmt::Display for JobError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.path.display())?;
        if self.line > 0 {
            write!(f, ":{}", self.line)?;
        }
        if !self.key.is_empty() {
            write!(f, ": {}", self.key)?;
        }
        write!(f, ": {}", self.message)
    }
}

impl std::error::Error for JobError {}

impl Job {
    /// How to log in to the source host: its password from the job's password file, else
    /// [`SOURCE_PASSWORD_ENV`], else the URL.
    pub fn source_login(&self) -> Result<HostLogin, TlsError> {
        self.source.login(SOURCE_PASSWORD_ENV, self.insecure)
    }

    /// How to log in to the target host: its password from the job's password file, else
    /// [`TARGET_PASSWORD_ENV`], else the URL.
    pub fn target_login(&self) -> Result<HostLogin, TlsError> {
        self.target.login(TARGET_PASSWORD_ENV, self.insecure)
    }

    /// Reads and parses the job file at `path`.
    pub fn load(path: &Path) -> Result<Job, JobError> {
        let text = std::fs::read_to_string(path).map_err(|e| JobError {
            path: path.to_path_buf(),
            line: 0,
            key: String::new(),
            message: format!("cannot read the job file: {e}"),
        })?;
        Job::parse(&text, path)
    }

    /// Parses a job file's `text`; `path` is named in errors and anchors relative paths.
    pub fn parse(text: &str, path: &Path) -> Result<Job, JobError> {
        let doc = Doc { text, path };
        let root = DeTable::parse(text).map_err(|e| {
            let mut error = doc.error(
                e.span(),
                "",
                format!("invalid TOML: {}", e.message().trim_end()),
            );
            // The parser's messages ("duplicate key") do not name the key; its line does.
            error.key = doc.key_on_line(error.line).unwrap_or_default().to_string();
            error
        })?;
        let top = Table {
            doc: &doc,
            prefix: "",
            entries: root.get_ref(),
        };
        top.check_keys(TOP_KEYS)?;
        let no_tls = DeTable::new();
        let tls = Table {
            doc: &doc,
            prefix: "tls.",
            entries: match top.get("tls") {
                Some(entry) => entry.table()?,
                None => &no_tls,
            },
        };
        tls.check_keys(TLS_KEYS)?;

        let name_entry = top.require("name")?;
        let name = name_entry.str()?;
        if name.trim().is_empty() {
            return Err(name_entry.error("must not be empty"));
        }
        if name.chars().any(char::is_control) {
            // The name goes into VM and snapshot names on the hosts.
            return Err(name_entry.error("must not contain control characters"));
        }
        let source = host(&top, &tls, "source")?;
        let target = host(&top, &tls, "target")?;
        let target_sr = top.require("target_sr")?.uuid()?;
        let (vms, vm_tags) = vms(top.require("vms")?)?;
        let retention = top.require("retention")?.count(1)?;
        let job_id = match top.get("job_id") {
            Some(entry) => entry.uuid()?,
            None => derived_id("job", name),
        };
        let schedule_id = match top.get("schedule_id") {
            Some(entry) => entry.uuid()?,
            None => derived_id("schedule", name),
        };
        let full_interval = top.get("full_interval").map_or(Ok(0), |e| e.count(0))?;
        let snapshot_retention = top
            .get("snapshot_retention")
            .map_or(Ok(1), |e| e.count(1))?;
        let concurrency = top.get("concurrency").map_or(Ok(2), |e| e.count(1))?;
        let max_rate = top.get("max_rate").map(|e| e.rate()).transpose()?;
        let insecure = tls.get("insecure").map_or(Ok(false), |e| e.bool())?;
        let state_dir = match top.get("state_dir") {
            Some(entry) => entry.path()?,
            None => default_state_dir(std::env::var_os("XDG_STATE_HOME"), std::env::var_os("HOME"))
                .ok_or_else(|| {
                    doc.error(
                        None,
                        "state_dir",
                        "not set, and neither XDG_STATE_HOME nor HOME is set to place the default",
                    )
                })?,
        };
        let network_map = match top.get("network_map") {
            Some(entry) => network_map(&doc, entry)?,
            None => Vec::new(),
        };
        let new_mac_addresses = top
            .get("new_mac_addresses")
            .map_or(Ok(false), |e| e.bool())?;
        let health_check = top.get("health_check").map_or(Ok(false), |e| e.bool())?;
        let health_check_timeout = match top.get("health_check_timeout") {
            Some(entry) => {
                let timeout = duration(entry)?;
                if timeout.is_zero() {
                    return Err(entry.error("must be longer than 0s"));
                }
                timeout
            }
            None => DEFAULT_HEALTH_CHECK_TIMEOUT,
        };
        let metrics_file = top.get("metrics_file").map(|e| e.path()).transpose()?;
        let lease_ttl = match top.get("lease_ttl") {
            Some(entry) => {
                let ttl = duration(entry)?;
                // The host's clock counts seconds, and renewal comes every third of it.
                if ttl < MIN_LEASE_TTL {
                    return Err(entry.error("must be at least 2s"));
                }
                ttl
            }
            None => crate::replicate::lease::DEFAULT_TTL,
        };
        let transport = transport_settings(&top)?;
        Ok(Job {
            name: name.to_string(),
            source,
            target,
            target_sr,
            vms,
            vm_tags,
            retention,
            job_id,
            schedule_id,
            full_interval,
            snapshot_retention,
            concurrency,
            max_rate,
            insecure,
            state_dir,
            network_map,
            new_mac_addresses,
            health_check,
            health_check_timeout,
            metrics_file,
            lease_ttl,
            transport,
        })
    }
}

/// `cbt`, `transport`, `nbd_concurrency` (1 to 16) and `purge_snapshot_data`, which needs
/// `cbt` (only a tracked snapshot's data can be destroyed) and a transport that can read
/// changes since a base whose data is gone.
fn transport_settings(top: &Table<'_>) -> Result<TransportSettings, JobError> {
    let defaults = TransportSettings::default();
    let cbt = top.get("cbt").map_or(Ok(false), |e| e.bool())?;
    let transport = match top.get("transport") {
        Some(entry) => entry.str()?.parse().map_err(|e: String| entry.error(e))?,
        None => defaults.transport,
    };
    let nbd_concurrency = match top.get("nbd_concurrency") {
        Some(entry) => {
            let count = entry.count(1)?;
            if count > MAX_NBD_CONCURRENCY as u32 {
                return Err(entry.error(format!(
                    "at most {MAX_NBD_CONCURRENCY} NBD connections per disk, found {count}"
                )));
            }
            count
        }
        None => defaults.nbd_concurrency,
    };
    let purge_snapshot_data = match top.get("purge_snapshot_data") {
        Some(entry) => {
            let purge = entry.bool()?;
            if purge && !cbt {
                return Err(entry.error(
                    "needs cbt = true: only a snapshot with a change log can lose its data",
                ));
            }
            if purge && transport == Transport::Stream {
                return Err(entry.error(
                    "needs transport \"auto\" or \"nbd\": a base without data can only be \
                     read from with CBT and NBD",
                ));
            }
            purge
        }
        None => false,
    };
    Ok(TransportSettings {
        transport,
        cbt,
        nbd_concurrency,
        purge_snapshot_data,
    })
}

/// `[network_map]`: every value a non-empty string without control characters.
fn network_map<'a>(doc: &'a Doc<'a>, entry: Entry<'a>) -> Result<Vec<(String, String)>, JobError> {
    let table = Table {
        doc,
        prefix: "network_map.",
        entries: entry.table()?,
    };
    let mut rules: Vec<(String, String, usize)> = Vec::new();
    for (key, _) in table.entries.iter() {
        let name = key.get_ref().as_ref();
        let Some(value) = table.get(name) else {
            continue;
        };
        let target = value.str()?;
        if name.is_empty() || target.trim().is_empty() {
            return Err(value.error("source and target networks must not be empty"));
        }
        if name.chars().chain(target.chars()).any(char::is_control) {
            return Err(value.error("must not contain control characters"));
        }
        rules.push((name.to_owned(), target.to_owned(), key.span().start));
    }
    rules.sort_by_key(|(_, _, at)| *at);
    Ok(rules.into_iter().map(|(s, t, _)| (s, t)).collect())
}

/// `source` or `target` with its password file and pinned fingerprint.
fn host(top: &Table<'_>, tls: &Table<'_>, side: &'static str) -> Result<HostSpec, JobError> {
    let url_entry = top.require(side)?;
    let url = HostUrl::parse(url_entry.str()?).map_err(|e| url_entry.error(e.to_string()))?;
    let password_file = match top.get(&format!("{side}_password_file")) {
        Some(entry) if url.password.is_some() => {
            return Err(entry.error(format!(
                "the {side} URL already has a password; give it in one place only"
            )));
        }
        Some(entry) => Some(entry.path()?),
        None => None,
    };
    let fingerprint = match tls.get(&format!("{side}_fingerprint")) {
        Some(entry) => {
            let text = entry.str()?;
            Fingerprint::parse(text).map_err(|e| entry.error(e.to_string()))?;
            Some(text.to_string())
        }
        None => None,
    };
    Ok(HostSpec {
        url,
        password_file,
        fingerprint,
    })
}

/// The prefix of a `vms` entry that selects the source's VMs carrying a tag.
pub const TAG_PREFIX: &str = "tag:";
/// The longest tag a job may name; XAPI sets no limit, but a tag is a short label.
const MAX_TAG_CHARS: usize = 256;

/// `vms`: VM UUIDs and `tag:NAME` entries, each once.
fn vms(entry: Entry<'_>) -> Result<(Vec<String>, Vec<String>), JobError> {
    let items = entry.array("VM UUIDs or tag:NAME")?;
    if items.is_empty() {
        return Err(entry.error("must list at least one VM UUID or tag:NAME"));
    }
    let mut vms: Vec<(String, usize)> = Vec::with_capacity(items.len());
    let mut tags: Vec<(String, usize)> = Vec::new();
    for item in items.iter() {
        let item_entry = Entry {
            value: item,
            ..entry
        };
        let line = entry.doc.line(item.span());
        let at = |message: String| entry.doc.error(Some(item.span()), "vms", message);
        let (list, name, is_tag) = match item_entry.str()?.strip_prefix(TAG_PREFIX) {
            Some(tag) => {
                if tag.is_empty() {
                    return Err(at("tag: needs a tag name, e.g. tag:nightly".into()));
                }
                if tag.chars().any(char::is_control) || tag.chars().count() > MAX_TAG_CHARS {
                    return Err(at(format!(
                        "a tag name must have at most {MAX_TAG_CHARS} characters and no control characters"
                    )));
                }
                (&mut tags, tag.to_owned(), true)
            }
            None => (&mut vms, item_entry.uuid()?, false),
        };
        if let Some((_, first)) = list.iter().find(|(seen, _)| *seen == name) {
            let what = if is_tag {
                format!("tag {name:?}")
            } else {
                format!("VM {name}")
            };
            return Err(at(format!(
                "{what} is listed twice (first on line {first})"
            )));
        }
        list.push((name, line));
    }
    let names = |list: Vec<(String, usize)>| list.into_iter().map(|(name, _)| name).collect();
    Ok((names(vms), names(tags)))
}

/// A duration such as "90s", "10m" or "1h".
fn duration(entry: Entry<'_>) -> Result<std::time::Duration, JobError> {
    humantime::parse_duration(entry.str()?)
        .map_err(|e| entry.error(format!("{e} (a duration such as 90s, 10m or 1h)")))
}

/// The stable id of `kind` ("job" or "schedule") for a job named `name`.
fn derived_id(kind: &str, name: &str) -> String {
    Uuid::new_v5(&ID_NAMESPACE, format!("{kind}:{name}").as_bytes()).to_string()
}

/// The XDG base directory rule: `$XDG_STATE_HOME/vhdsync` when it is an absolute path (the
/// specification says to ignore relative ones), else `$HOME/.local/state/vhdsync`.
fn default_state_dir(xdg_state_home: Option<OsString>, home: Option<OsString>) -> Option<PathBuf> {
    let xdg = xdg_state_home
        .map(PathBuf::from)
        .filter(|p| p.is_absolute());
    let base = match xdg {
        Some(dir) => dir,
        None => PathBuf::from(home.filter(|h| !h.is_empty())?).join(".local/state"),
    };
    Some(base.join("vhdsync"))
}

/// The job file being parsed, for errors and relative paths.
struct Doc<'a> {
    text: &'a str,
    path: &'a Path,
}

impl Doc<'_> {
    /// The 1-based line of a byte offset span.
    fn line(&self, span: Range<usize>) -> usize {
        let end = span.start.min(self.text.len());
        self.text.as_bytes()[..end]
            .iter()
            .filter(|&&b| b == b'\n')
            .count()
            + 1
    }

    /// The bare key assigned on a 1-based line (`retention = 4` gives `retention`), if any.
    fn key_on_line(&self, line: usize) -> Option<&str> {
        let text = self.text.lines().nth(line.checked_sub(1)?)?;
        let (key, _) = text.split_once('=')?;
        let key = key.trim();
        let bare = |c: char| c.is_ascii_alphanumeric() || matches!(c, '_' | '-' | '.');
        (!key.is_empty() && key.chars().all(bare)).then_some(key)
    }

    fn error(&self, at: Option<Range<usize>>, key: &str, message: impl Into<String>) -> JobError {
        JobError {
            path: self.path.to_path_buf(),
            line: at.map_or(0, |span| self.line(span)),
            key: key.to_string(),
            message: message.into(),
        }
    }
}

/// One table of the file: the top level (prefix "") or `[tls]` (prefix "tls.").
struct Table<'a> {
    doc: &'a Doc<'a>,
    prefix: &'static str,
    entries: &'a DeTable<'a>,
}

impl<'a> Table<'a> {
    /// Refuses the first unknown key in file order, so a typo is not silently ignored.
    fn check_keys(&self, known: &[&str]) -> Result<(), JobError> {
        let unknown = self
            .entries
            .iter()
            .map(|(key, _)| key)
            .filter(|key| !known.contains(&key.get_ref().as_ref()))
            .min_by_key(|key| key.span().start);
        let Some(key) = unknown else {
            return Ok(());
        };
        let name = key.get_ref().as_ref();
        let hint = if let Some(near) = known.iter().find(|k| edit_distance(k, name) <= 2) {
            format!("unknown key; did you mean `{}{near}`?", self.prefix)
        } else if !self.prefix.is_empty() && TOP_KEYS.contains(&name) {
            "unknown key in [tls]; top-level keys must come before the [tls] header".to_string()
        } else {
            format!("unknown key; expected one of: {}", known.join(", "))
        };
        Err(self
            .doc
            .error(Some(key.span()), &format!("{}{name}", self.prefix), hint))
    }

    fn get(&self, key: &str) -> Option<Entry<'a>> {
        let (name, value) = self.entries.get_key_value(key)?;
        Some(Entry {
            doc: self.doc,
            prefix: self.prefix,
            key: name.get_ref().as_ref(),
            value,
        })
    }

    fn require(&self, key: &str) -> Result<Entry<'a>, JobError> {
        self.get(key).ok_or_else(|| {
            self.doc.error(
                None,
                &format!("{}{key}", self.prefix),
                "required key is missing",
            )
        })
    }
}

/// One key's value, with where it is, so errors point at it.
#[derive(Clone, Copy)]
struct Entry<'a> {
    doc: &'a Doc<'a>,
    prefix: &'static str,
    key: &'a str,
    value: &'a Spanned<DeValue<'a>>,
}

impl<'a> Entry<'a> {
    fn error(&self, message: impl Into<String>) -> JobError {
        self.doc.error(
            Some(self.value.span()),
            &format!("{}{}", self.prefix, self.key),
            message,
        )
    }

    fn wrong_type(&self, expected: &str) -> JobError {
        self.error(format!(
            "expected {expected}, found {}",
            self.value.get_ref().type_str()
        ))
    }

    fn str(&self) -> Result<&'a str, JobError> {
        match self.value.get_ref() {
            DeValue::String(s) => Ok(s.as_ref()),
            _ => Err(self.wrong_type("a string")),
        }
    }

    fn bool(&self) -> Result<bool, JobError> {
        self.value
            .get_ref()
            .as_bool()
            .ok_or_else(|| self.wrong_type("true or false"))
    }

    fn array(&self, of: &str) -> Result<&'a DeArray<'a>, JobError> {
        match self.value.get_ref() {
            DeValue::Array(items) => Ok(items),
            _ => Err(self.wrong_type(&format!("an array of {of}"))),
        }
    }

    fn table(&self) -> Result<&'a DeTable<'a>, JobError> {
        match self.value.get_ref() {
            DeValue::Table(table) => Ok(table),
            _ => Err(self.wrong_type("a table")),
        }
    }

    /// A whole number from `min` to `u32::MAX`.
    /// Bytes per second: a whole number, or a size string such as "50MiB".
    fn rate(&self) -> Result<u64, JobError> {
        let text = match self.value.get_ref() {
            DeValue::Integer(int) => i64::from_str_radix(int.as_str(), int.radix())
                .map_err(|_| self.error(format!("{int} is out of range")))?
                .to_string(),
            DeValue::String(s) => s.to_string(),
            _ => return Err(self.wrong_type("a rate such as \"50MiB\" or a byte count")),
        };
        parse_rate(&text).map_err(|e| self.error(e))
    }

    fn count(&self, min: u32) -> Result<u32, JobError> {
        let DeValue::Integer(int) = self.value.get_ref() else {
            return Err(self.wrong_type("a whole number"));
        };
        let value = i64::from_str_radix(int.as_str(), int.radix()).ok();
        match value.map(u32::try_from) {
            Some(Ok(n)) if n >= min => Ok(n),
            Some(Ok(n)) => Err(self.error(format!("must be at least {min}, found {n}"))),
            _ => Err(self.error(format!(
                "must be a whole number from {min} to {}, found {int}",
                u32::MAX
            ))),
        }
    }

    /// A UUID in its canonical form (lowercase, hyphenated), as XAPI writes them.
    fn uuid(&self) -> Result<String, JobError> {
        let text = self.str()?;
        Uuid::try_parse(text)
            .map(|uuid| uuid.to_string())
            .map_err(|_| {
                self.error(format!(
                    "expected a UUID (8-4-4-4-12 hex digits), found {text:?}"
                ))
            })
    }

    /// A path; a relative one is taken from the job file's directory, not from wherever cron
    /// happens to run.
    fn path(&self) -> Result<PathBuf, JobError> {
        let text = self.str()?;
        if text.is_empty() {
            return Err(self.error("must not be empty"));
        }
        if text.starts_with('~') {
            // No shell expands it here, and a directory literally named `~` is never meant.
            return Err(self.error("`~` is not expanded in job files; write the full path"));
        }
        let base = self.doc.path.parent().unwrap_or(Path::new(""));
        Ok(base.join(text))
    }
}

/// Levenshtein distance, for "did you mean" hints on misspelt keys.
fn edit_distance(a: &str, b: &str) -> usize {
    let b: Vec<char> = b.chars().collect();
    let mut row: Vec<usize> = (0..=b.len()).collect();
    for (i, ca) in a.chars().enumerate() {
        let mut diagonal = row[0];
        row[0] = i + 1;
        for (j, &cb) in b.iter().enumerate() {
            let substitute = diagonal + usize::from(ca != cb);
            diagonal = row[j + 1];
            row[j + 1] = substitute.min(row[j] + 1).min(row[j + 1] + 1);
        }
    }
    row[b.len()]
}

#[cfg(test)]
mod tests;
