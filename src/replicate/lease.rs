//! The per-VM lease on the source host: at most one run replicates a VM of a job at a time
//! across machines, where the per-VM lock (`lock`, an flock in the state directory) only
//! guards one machine. Schedulers such as Kubernetes CronJobs or Nomad periodic jobs may
//! start a job's run on any node, with a fresh state directory each time.
//!
//! # The arbiter
//!
//! XAPI has one atomic operation on a map: `add_to_other_config` fails with
//! `MAP_DUPLICATE_KEY` when the key exists. Removing a key and adding it back is not a
//! compare-and-swap: two runners that both saw an expired lease could both remove and add it,
//! and both believe they won. So every change of the lease adds a *new* key, numbered one
//! above the newest: `vhdsync:lease:<job_id>:<generation>`. Taking a free or expired lease,
//! renewing it and releasing it all add generation n+1 after reading generation n; of two
//! runners that read the same n, exactly one adds n+1. Older generations are removed
//! afterwards, which is tidying only. After adding, the taker reads the map again and holds
//! the lease only when its generation is still the newest (a runner that read an old map,
//! where the newest key had already been tidied away, may add a number below the newest; it
//! then removes its key and backs off).
//!
//! A released lease stays as one key marked `released`: its generation must never go back
//! to 1, or a runner paused between its read and its add could take a lease someone else
//! holds. That one key is the only trace a run leaves on the source VM.
//!
//! # Time
//!
//! A lease carries its expiry in the *source host's* time (`host.get_servertime` on the pool
//! master), so runners on machines whose clocks disagree still agree on when it expires. It
//! is renewed every third of its time to live while the cycle runs; a renewal that finds
//! the lease taken over stops the cycle, and so does failing to renew it for five sixths of
//! its time to live (another runner may take it over at its expiry). A killed runner's
//! lease is taken over once it expires, or at once by the next run on the same machine and
//! state directory (its *site*): a run takes the lease only while it holds the local lock
//! of that state directory, which the kernel released when the killed run died, so a lease
//! of its own site can only be a dead run's.
//!
//! # Hostile values
//!
//! Anyone who may edit the source VM may write these keys. A value is read only up to
//! [`MAX_VALUE_BYTES`], its holder text is shortened and stripped of control characters, and a
//! newest key that is not a lease stops the run with an error naming the key rather than
//! being taken over: an unknown format may be a newer vhdsync's lease.

use std::os::unix::fs::MetadataExt;
use std::sync::Arc;
use std::time::Duration;

use serde::{Deserialize, Serialize};
use time::OffsetDateTime;
use time::format_description::well_known::Rfc3339;
use tokio::task::JoinHandle;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use super::keys;
use crate::xapi::client::{ClientError, XapiClient};
use crate::xapi::ops::{Class, MapName};
use crate::xapi::records::{StringMap, VmRecord};

/// The prefix of every lease key; the job id and the generation follow.
pub const KEY_PREFIX: &str = "vhdsync:lease:";
/// A job's lease lasts this long unless its file sets `lease_ttl`.
pub const DEFAULT_TTL: Duration = Duration::from_secs(600);
/// A lease value longer than this is not ours.
pub const MAX_VALUE_BYTES: usize = 1024;
/// The holder text shown to users is cut to this many characters.
const MAX_HOLDER_CHARS: usize = 200;
/// The longest run id accepted (ours are 36-character UUIDs).
const MAX_RUN_CHARS: usize = 64;
/// The longest site accepted (ours are a host name and two numbers).
const MAX_SITE_CHARS: usize = 300;
/// Old generations removed per change, so a map stuffed with keys cannot make a run issue
/// thousands of calls; the rest go at the next change.
const MAX_TIDIED: usize = 16;
/// Rounds of read-then-add lost to other runners before giving up.
const MAX_ATTEMPTS: usize = 4;

/// The key of a job's lease at `generation`.
pub fn key(job_id: &str, generation: u64) -> String {
    format!("{KEY_PREFIX}{job_id}:{generation}")
}

/// The generation of a key of `job_id`'s lease; `None` for any other key. Only plain
/// decimal numbers count, so each generation has exactly one key.
fn generation_of(key: &str, job_id: &str) -> Option<u64> {
    let digits = key
        .strip_prefix(KEY_PREFIX)?
        .strip_prefix(job_id)?
        .strip_prefix(':')?;
    let canonical = !digits.is_empty()
        && digits.len() <= 20
        && digits.bytes().all(|b| b.is_ascii_digit())
        && (digits == "0" || !digits.starts_with('0'));
    canonical.then(|| digits.parse().ok()).flatten()
}

/// One generation of a lease, as its value holds it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LeaseRecord {
    /// The holding run's random id: what "this is mine" compares.
    pub run: String,
    /// Who holds it, for people: pid, machine and state directory.
    pub holder: String,
    /// The machine and state directory whose local lock the holder held (see [`Holder`]);
    /// empty in leases that do not say.
    pub site: String,
    /// Unix seconds on the source host's clock.
    pub expires: i64,
    pub released: bool,
}

/// The value's JSON form.
#[derive(Serialize, Deserialize)]
struct Wire {
    run: String,
    holder: String,
    #[serde(default, skip_serializing_if = "String::is_empty")]
    site: String,
    /// RFC 3339, UTC.
    expires: String,
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    released: bool,
}

impl LeaseRecord {
    pub fn to_value(&self) -> String {
        let wire = Wire {
            run: self.run.clone(),
            holder: self.holder.clone(),
            site: self.site.clone(),
            expires: keys::rfc3339(self.expires),
            released: self.released,
        };
        serde_json::to_string(&wire).unwrap_or_default()
    }

    /// Parses a value; the error says what is wrong with it.
    pub fn parse(value: &str) -> Result<LeaseRecord, String> {
        if value.len() > MAX_VALUE_BYTES {
            return Err(format!(
                "{} bytes, more than a lease's {MAX_VALUE_BYTES}",
                value.len()
            ));
        }
        let wire: Wire =
            serde_json::from_str(value).map_err(|e| format!("not a lease's JSON: {e}"))?;
        if wire.run.is_empty()
            || wire.run.chars().count() > MAX_RUN_CHARS
            || wire.run.chars().any(char::is_control)
        {
            return Err("its run id is empty, too long or has control characters".into());
        }
        if wire.site.chars().count() > MAX_SITE_CHARS || wire.site.chars().any(char::is_control) {
            return Err("its site is too long or has control characters".into());
        }
        let expires = OffsetDateTime::parse(&wire.expires, &Rfc3339)
            .map_err(|_| format!("expires {:?} is not an RFC 3339 time", shown(&wire.expires)))?
            .unix_timestamp();
        Ok(LeaseRecord {
            run: wire.run,
            holder: shown(&wire.holder),
            site: wire.site,
            expires,
            released: wire.released,
        })
    }

    /// Free to take at `now` (the source host's time) by a run of `site` that holds that
    /// site's local lock.
    fn is_free_for(&self, site: &str, now: i64) -> bool {
        self.released || self.expires <= now || (!self.site.is_empty() && self.site == site)
    }
}

/// Text from the source fit to show: control characters replaced, at most
/// [`MAX_HOLDER_CHARS`] characters.
fn shown(text: &str) -> String {
    let mut out: String = text
        .chars()
        .take(MAX_HOLDER_CHARS)
        .map(|c| if c.is_control() { '?' } else { c })
        .collect();
    if text.chars().nth(MAX_HOLDER_CHARS).is_some() {
        out.push('…');
    }
    out
}

/// A job's lease as one read of the VM's `other_config` shows it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Snapshot {
    /// The newest generation, 0 when there is no lease key.
    pub generation: u64,
    pub state: LeaseState,
    /// The keys of older generations, to tidy away.
    pub older: Vec<String>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum LeaseState {
    /// No lease key at all.
    None,
    Record(LeaseRecord),
    /// The newest key's value is not a lease: why.
    Malformed(String),
}

/// The lease of `job_id` in a VM's `other_config`.
pub fn read(other_config: &StringMap, job_id: &str) -> Snapshot {
    let mut generations: Vec<(u64, &str)> = other_config
        .iter()
        .filter_map(|(k, v)| generation_of(k, job_id).map(|g| (g, v.as_str())))
        .collect();
    generations.sort_unstable_by_key(|(g, _)| *g);
    let Some((generation, value)) = generations.pop() else {
        return Snapshot {
            generation: 0,
            state: LeaseState::None,
            older: Vec::new(),
        };
    };
    let state = match LeaseRecord::parse(value) {
        Ok(record) => LeaseState::Record(record),
        Err(why) => LeaseState::Malformed(why),
    };
    Snapshot {
        generation,
        state,
        older: generations.iter().map(|(g, _)| key(job_id, *g)).collect(),
    }
}

/// What a run that wants the lease does about a [`Snapshot`] at `now`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Decision {
    /// Add this generation.
    Take(u64),
    HeldBy(LeaseRecord),
    Refuse(String),
}

/// `site` is the deciding run's (see [`Holder::site`]); it must hold that site's local lock.
pub fn decide(snapshot: &Snapshot, site: &str, now: i64) -> Decision {
    let next = || match snapshot.generation.checked_add(1) {
        Some(next) => Decision::Take(next),
        None => Decision::Refuse("its generation is at its limit".into()),
    };
    match &snapshot.state {
        LeaseState::None => next(),
        LeaseState::Record(record) if record.is_free_for(site, now) => next(),
        LeaseState::Record(record) => Decision::HeldBy(record.clone()),
        LeaseState::Malformed(why) => Decision::Refuse(why.clone()),
    }
}

#[derive(Debug, thiserror::Error)]
pub enum LeaseError {
    #[error(
        "another run is replicating VM {vm}: {holder} holds its lease on the source until {}",
        keys::rfc3339(*expires)
    )]
    Held {
        vm: String,
        holder: String,
        expires: i64,
    },
    #[error(
        "VM {vm}: the source's other_config key {key} is not a vhdsync lease ({why}); if no \
         run holds the VM, remove it: xe vm-param-remove uuid={vm} param-name=other-config \
         param-key={key}"
    )]
    Malformed {
        vm: String,
        key: String,
        why: String,
    },
    #[error("VM {vm}: other runs kept changing its lease on the source; try again later")]
    Contended { vm: String },
    #[error("VM {vm}: {holder} took over its lease on the source; this run stopped")]
    Lost { vm: String, holder: String },
    #[error(
        "VM {vm}: its lease on the source could not be renewed before it expired, so this run \
         stopped: {cause}"
    )]
    Expired { vm: String, cause: String },
    #[error("VM {vm}: lease on the source: {source}")]
    Host { vm: String, source: ClientError },
}

impl LeaseError {
    /// Another run has the VM: the same situation as a held local lock.
    pub fn is_held_elsewhere(&self) -> bool {
        matches!(self, LeaseError::Held { .. } | LeaseError::Contended { .. })
    }
}

/// Who a run is, in the lease it writes.
#[derive(Debug, Clone)]
pub struct Holder {
    pub run: String,
    pub holder: String,
    /// The machine and state directory: the host name and the directory's device and
    /// inode numbers, so that two containers sharing a host name and a path but not the
    /// directory are two sites.
    pub site: String,
}

impl Holder {
    /// This process, with a fresh run id: `pid 42 on backup-7f9c, state dir /var/lib/vhdsync`.
    /// It holds the local lock of `state_dir` for the job and VM (see [`Lease::take`]).
    pub fn this_process(state_dir: &std::path::Path) -> Holder {
        let hostname = hostname();
        let site = match std::fs::metadata(state_dir) {
            Ok(meta) => shown(&format!("{hostname} {}:{}", meta.dev(), meta.ino())),
            // No directory to name: no site, so no takeover before expiry.
            Err(_) => String::new(),
        };
        Holder {
            site,
            ..Holder::described(&hostname, &format!(", state dir {}", state_dir.display()))
        }
    }

    /// This process when it has no state directory, so no local lock (`seed`, whose command
    /// line names no job file): `pid 42 on backup-7f9c, no state dir`. It has no site: if it
    /// is killed, its lease is taken over only once it expires.
    pub fn this_process_without_state_dir() -> Holder {
        Holder::described(&hostname(), ", no state dir")
    }

    fn described(hostname: &str, rest: &str) -> Holder {
        let on = if hostname.is_empty() {
            String::new()
        } else {
            format!(" on {hostname}")
        };
        Holder {
            run: uuid::Uuid::new_v4().to_string(),
            holder: shown(&format!("pid {}{on}{rest}", std::process::id())),
            site: String::new(),
        }
    }
}

/// This machine's host name, empty when unknown.
fn hostname() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .map(|h| h.trim().to_owned())
        .unwrap_or_default()
}

/// A held lease.
#[derive(Debug, Clone)]
pub struct Lease {
    vm: String,
    vm_ref: String,
    job_id: String,
    /// The pool master, whose clock the lease's times are in.
    master: String,
    generation: u64,
    record: LeaseRecord,
    ttl: Duration,
}

impl Lease {
    /// Takes `job_id`'s lease on source VM `vm` (a UUID) for `ttl`, or says who holds it.
    /// The caller holds the local lock of `me`'s state directory for this job and VM: that is
    /// what makes a lease of `me`'s own site a dead run's, free to take at once.
    pub async fn take(
        source: &XapiClient,
        job_id: &str,
        vm: &str,
        ttl: Duration,
        me: &Holder,
    ) -> Result<Lease, LeaseError> {
        let host = |source| LeaseError::Host {
            vm: vm.to_owned(),
            source,
        };
        let vm_ref = source.get_by_uuid::<VmRecord>(vm).await.map_err(host)?;
        let master = source.pool_master().await.map_err(host)?;
        let mut lease = Lease {
            vm: vm.to_owned(),
            vm_ref,
            job_id: job_id.to_owned(),
            master,
            generation: 0,
            record: LeaseRecord {
                run: me.run.clone(),
                holder: me.holder.clone(),
                site: me.site.clone(),
                expires: 0,
                released: false,
            },
            ttl,
        };
        for _ in 0..MAX_ATTEMPTS {
            let now = lease.server_time(source).await?;
            let before = lease.read(source).await?;
            let generation = match decide(&before, &me.site, now) {
                Decision::Take(generation) => generation,
                Decision::HeldBy(record) => return Err(lease.held(record)),
                Decision::Refuse(why) => return Err(lease.malformed(before.generation, why)),
            };
            lease.record.expires = now.saturating_add(ttl_seconds(ttl));
            if !lease.add(source, generation).await? {
                continue; // Another runner added this generation first.
            }
            let after = lease.read(source).await?;
            if after.generation == generation {
                lease.generation = generation;
                lease.tidy(source, &after.older).await;
                return Ok(lease);
            }
            // We read an old map: a newer generation exists. Ours is only clutter.
            lease.remove(source, &key(job_id, generation)).await;
        }
        Err(LeaseError::Contended { vm: vm.to_owned() })
    }

    /// The generation held, for tests and logs.
    pub fn generation(&self) -> u64 {
        self.generation
    }

    /// Extends the lease by its time to live from now, on the source host's clock.
    pub async fn renew(&mut self, source: &XapiClient) -> Result<(), LeaseError> {
        let now = self.server_time(source).await?;
        let mut record = self.record.clone();
        record.expires = now.saturating_add(ttl_seconds(self.ttl));
        self.advance(source, record).await
    }

    /// Marks the lease released, so the next run need not wait for it to expire.
    pub async fn release(mut self, source: &XapiClient) -> Result<(), LeaseError> {
        let record = LeaseRecord {
            released: true,
            ..self.record.clone()
        };
        self.advance(source, record).await
    }

    /// Replaces our generation by the next, holding `record`; [`LeaseError::Lost`] when
    /// another runner added that generation first.
    async fn advance(
        &mut self,
        source: &XapiClient,
        record: LeaseRecord,
    ) -> Result<(), LeaseError> {
        let next = self.generation.checked_add(1).ok_or_else(|| {
            self.malformed(self.generation, "its generation is at its limit".into())
        })?;
        let old = self.record.clone();
        self.record = record;
        if !self.add(source, next).await? {
            self.record = old;
            let now = self.read(source).await?;
            let holder = match now.state {
                LeaseState::Record(record) => record.holder,
                _ => "another run".to_owned(),
            };
            return Err(LeaseError::Lost {
                vm: self.vm.clone(),
                holder,
            });
        }
        let previous = key(&self.job_id, self.generation);
        self.generation = next;
        self.remove(source, &previous).await;
        Ok(())
    }

    /// Keeps renewing the lease in the background until [`Renewal::finish`]; when it is
    /// lost, or cannot be renewed for five sixths of its time to live, cancels `cycle`.
    pub fn keep(self, source: Arc<XapiClient>, cycle: CancellationToken) -> Renewal {
        let stop = CancellationToken::new();
        let stopped = stop.clone();
        let task = tokio::spawn(async move {
            let mut lease = self;
            let every = (lease.ttl / 3).max(Duration::from_millis(100));
            let give_up = lease.ttl * 5 / 6;
            let mut renewed = Instant::now();
            loop {
                tokio::select! {
                    () = stopped.cancelled() => return Ok(lease),
                    () = tokio::time::sleep(every) => {}
                }
                let error = match lease.renew(&source).await {
                    Ok(()) => {
                        renewed = Instant::now();
                        continue;
                    }
                    Err(lost @ LeaseError::Lost { .. }) => lost,
                    Err(e) if renewed.elapsed() >= give_up => LeaseError::Expired {
                        vm: lease.vm.clone(),
                        cause: e.to_string(),
                    },
                    Err(e) => {
                        tracing::warn!(vm = lease.vm, "renewing the lease failed, retrying: {e}");
                        continue;
                    }
                };
                cycle.cancel();
                return Err(error);
            }
        });
        Renewal { stop, task }
    }

    async fn server_time(&self, source: &XapiClient) -> Result<i64, LeaseError> {
        source
            .server_time(&self.master)
            .await
            .map_err(|e| self.host(e))
    }

    async fn read(&self, source: &XapiClient) -> Result<Snapshot, LeaseError> {
        let map = source
            .map_entries(Class::Vm, &self.vm_ref, MapName::OtherConfig)
            .await
            .map_err(|e| self.host(e))?;
        Ok(read(&map, &self.job_id))
    }

    /// Adds generation `generation` holding our record: false when it exists already.
    async fn add(&self, source: &XapiClient, generation: u64) -> Result<bool, LeaseError> {
        let added = source
            .add_entry(
                Class::Vm,
                &self.vm_ref,
                MapName::OtherConfig,
                &key(&self.job_id, generation),
                &self.record.to_value(),
            )
            .await;
        match added {
            Ok(()) => Ok(true),
            Err(e) if e.xapi_code() == Some("MAP_DUPLICATE_KEY") => Ok(false),
            Err(e) => Err(self.host(e)),
        }
    }

    /// Removes old generations, a few at a time; a failure only leaves clutter.
    async fn tidy(&self, source: &XapiClient, older: &[String]) {
        for key in older.iter().rev().take(MAX_TIDIED) {
            self.remove(source, key).await;
        }
    }

    async fn remove(&self, source: &XapiClient, key: &str) {
        let removed = source
            .remove_entries(Class::Vm, &self.vm_ref, MapName::OtherConfig, &[key])
            .await;
        if let Err(e) = removed {
            tracing::warn!(vm = self.vm, key, "cannot remove an old lease key: {e}");
        }
    }

    fn host(&self, source: ClientError) -> LeaseError {
        LeaseError::Host {
            vm: self.vm.clone(),
            source,
        }
    }

    fn held(&self, record: LeaseRecord) -> LeaseError {
        LeaseError::Held {
            vm: self.vm.clone(),
            holder: record.holder,
            expires: record.expires,
        }
    }

    fn malformed(&self, generation: u64, why: String) -> LeaseError {
        LeaseError::Malformed {
            vm: self.vm.clone(),
            key: key(&self.job_id, generation),
            why,
        }
    }
}

/// Whole seconds, at least one: the host's clock counts seconds.
fn ttl_seconds(ttl: Duration) -> i64 {
    i64::try_from(ttl.as_secs().max(1)).unwrap_or(i64::MAX)
}

/// The background renewal of a lease while its cycle runs.
pub struct Renewal {
    stop: CancellationToken,
    task: JoinHandle<Result<Lease, LeaseError>>,
}

impl Renewal {
    /// Stops renewing: the lease, still held, or why it was lost.
    pub async fn finish(self) -> Result<Lease, Option<LeaseError>> {
        self.stop.cancel();
        match self.task.await {
            Ok(Ok(lease)) => Ok(lease),
            Ok(Err(e)) => Err(Some(e)),
            // The renewal task panicked: the lease expires on its own.
            Err(_) => Err(None),
        }
    }
}

#[cfg(test)]
mod tests;
