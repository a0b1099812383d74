//! `replicate`'s per-VM lease on the source (`replicate::lease`), held by the other commands
//! that write a VM's replication chain: `seed`, `seed-export`, `seed-import` and `failover`.
//! The local lock only keeps them from a `replicate` of the same machine and state directory;
//! the lease keeps them from one on any machine of a fleet.
//!
//! # Which lease
//!
//! The job's own: the key `vhdsync:lease:<job id>:<generation>` on the source VM, so it is
//! the very lease a `replicate` of the job takes for that VM, and the two exclude each other.
//!
//! * `seed-export`, `seed-import` and `failover` name the job file: its job id, its
//!   `lease_ttl`, and its state directory as their site, taken after the VM's local lock
//!   exactly as `replicate` takes it (so a lease left by a killed command of the same site
//!   is taken over at once, as a killed `replicate`'s is).
//! * `seed` (xo-cr-seed's command line) names the job id itself: the seed is only of use to
//!   the job whose id it writes, so that is the job whose lease it takes, on the VM the
//!   snapshot is of. It has no state directory, hence no local lock and no site: if it is
//!   killed its lease is only taken over once it expires, after [`DEFAULT_TTL`].
//!
//! # While the command runs
//!
//! The lease is renewed in the background. Losing it (another run took it over after it
//! could not be renewed) stops the command at its next step, as a kill would, and fails it
//! (exit 1): another run may be writing the chain now. SIGINT or SIGTERM stops the command
//! the same way, releases the lease and exits 130; a second signal exits at once. However
//! the command ends otherwise, the lease is released.
//!
//! # Failover
//!
//! Failover acts on the target, and the disaster it is for may have taken the source with
//! it. So it takes the lease when the source answers, within [`FAILOVER_SOURCE_WAIT`], and
//! is refused (exit 3) only when the source says another run holds it. When the source
//! cannot be asked (no connection or login, a call failing or not answering, the VM gone
//! from it), it fails over without the lease and says so on stderr: a replication of the
//! VM could then still be running on another machine, which the warning tells the operator
//! to stop.
//!
//! [`DEFAULT_TTL`]: crate::replicate::lease::DEFAULT_TTL

use std::sync::Arc;
use std::time::Duration;

use tokio_util::sync::CancellationToken;

use super::CliError;
use super::connect::connect;
use super::signals::Interrupts;
use super::terminal_text;
use crate::replicate::job::Job;
use crate::replicate::lease::{Holder, Lease, LeaseError};
use crate::xapi::client::XapiClient;
use crate::xapi::connect::ConnectError;

/// How long failover waits for the source to log it in and grant the lease before it goes
/// on without: a source site that is gone may drop packets rather than refuse them.
pub const FAILOVER_SOURCE_WAIT: Duration = Duration::from_secs(20);

/// Whose lease, on which VM, for how long.
pub(super) struct LeaseScope {
    pub job_id: String,
    /// The source VM's UUID.
    pub vm: String,
    pub ttl: Duration,
    pub holder: Holder,
}

impl LeaseScope {
    /// The lease `replicate` of `job` takes for `vm`; the caller holds the VM's local lock.
    pub(super) fn of_job(job: &Job, vm: &str) -> LeaseScope {
        LeaseScope {
            job_id: job.job_id.clone(),
            vm: vm.to_lowercase(),
            ttl: job.lease_ttl,
            holder: Holder::this_process(&job.state_dir),
        }
    }

    pub(super) async fn take(&self, source: &XapiClient) -> Result<Lease, LeaseError> {
        Lease::take(source, &self.job_id, &self.vm, self.ttl, &self.holder).await
    }
}

/// Takes the lease of `scope` on `source`, runs `work` under it, and releases it.
pub(super) async fn under_lease<T>(
    source: &Arc<XapiClient>,
    scope: &LeaseScope,
    work: impl Future<Output = Result<T, CliError>>,
) -> Result<T, CliError> {
    let lease = scope.take(source).await?;
    hold_while(source, lease, work).await
}

/// How the work under a lease ended.
enum Ended<T> {
    Done(Result<T, CliError>),
    Lost,
    Interrupted,
}

/// Runs `work` while `lease` is renewed; stops it when the lease is lost or on SIGINT or
/// SIGTERM; releases the lease however it ends.
pub(super) async fn hold_while<T>(
    source: &Arc<XapiClient>,
    lease: Lease,
    work: impl Future<Output = Result<T, CliError>>,
) -> Result<T, CliError> {
    let mut interrupts = Interrupts::listen();
    let lost = CancellationToken::new();
    let renewal = lease.keep(source.clone(), lost.clone());
    let ended = tokio::select! {
        biased;
        outcome = work => Ended::Done(outcome),
        () = lost.cancelled() => Ended::Lost,
        () = interrupts.next() => Ended::Interrupted,
    };
    if matches!(ended, Ended::Interrupted) {
        eprintln!("vhdsync: interrupted: stopping and releasing the VM's lease");
        // Releasing waits on the source; a second signal need not.
        tokio::spawn(async move {
            interrupts.next().await;
            eprintln!("vhdsync: interrupted again: exiting; the lease expires on its own");
            std::process::exit(130);
        });
    }
    let lost_lease = match renewal.finish().await {
        Ok(lease) => {
            if let Err(e) = lease.release(source).await {
                warn(&format!("the lease is left to expire: {e}"));
            }
            None
        }
        Err(lost) => lost,
    };
    match ended {
        Ended::Done(outcome) => {
            // Lost after the work was done: nothing of it was stopped.
            if let Some(e) = lost_lease {
                warn(&format!("after the work was done: {e}"));
            }
            outcome
        }
        Ended::Lost => Err(match lost_lease {
            Some(e) => e.into(),
            None => CliError::Failed("the lease's renewal stopped: the work was stopped".into()),
        }),
        Ended::Interrupted => Err(CliError::Interrupted(
            "interrupted: stopped before the end; the VM's lease is released".into(),
        )),
    }
}

/// Failover's lease, when the source answers (see the module's text): `Some` with the
/// source and the lease held; `None` (said on stderr) when the source cannot be asked; an
/// error when it refuses.
pub(super) async fn for_failover(
    job: &Job,
    scope: &LeaseScope,
) -> Result<Option<(Arc<XapiClient>, Lease)>, CliError> {
    let asked = tokio::time::timeout(FAILOVER_SOURCE_WAIT, async {
        let login = job.source_login().map_err(|e| {
            // The source's credentials are unusable: it cannot be asked.
            Unasked(ConnectError::from(e).to_string())
        })?;
        let source = connect(&login).await.map_err(|e| Unasked(e.to_string()))?;
        let taken = scope.take(&source).await;
        Ok::<_, Unasked>((source, taken))
    })
    .await;
    let unasked = match asked {
        Ok(Ok((source, Ok(lease)))) => return Ok(Some((Arc::new(source), lease))),
        Ok(Ok((source, Err(e)))) => {
            let _ = source.logout().await;
            match e {
                LeaseError::Host { .. } => Unasked(e.to_string()),
                refused => return Err(refused.into()),
            }
        }
        Ok(Err(unasked)) => unasked,
        Err(_) => Unasked(format!(
            "no answer within {} s",
            FAILOVER_SOURCE_WAIT.as_secs()
        )),
    };
    warn(&format!(
        "the source could not be asked for VM {}'s lease ({}), so failover goes on without it: \
         if a replicate of job {} may still be running on another machine, stop it, or it may \
         write the replica being failed over to",
        scope.vm, unasked.0, scope.job_id
    ));
    Ok(None)
}

/// Why the source could not be asked for the lease.
struct Unasked(String);

fn warn(text: &str) {
    eprintln!("vhdsync: warning: {}", terminal_text::message(text));
}
