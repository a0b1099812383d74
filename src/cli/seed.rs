//! `seed` (also run as `xo-cr-seed`), `seed-export` and `seed-import`.

use std::ffi::OsString;
use std::io::IsTerminal;
use std::path::Path;
use std::process::ExitCode;
use std::sync::Arc;

use serde_json::json;

use super::CliError;
use super::args::{SeedArgs, SeedExportArgs, SeedImportArgs};
use super::connect::{CommandLineHost, command_line_pair, connect_job, warn_about};
use super::output::print_json;
use super::replicate::load_job;
use super::step_text::{self, Cadence, Due};
use super::terminal_text;
use super::transfer::runtime;
use super::units::human_bytes;
use super::vm_lease::{LeaseScope, under_lease};
use crate::replicate::clock::{Clock, SystemClock};
use crate::replicate::job::Job;
use crate::replicate::keys;
use crate::replicate::lease::{DEFAULT_TTL, Holder};
use crate::replicate::lock::VmLock;
use crate::replicate::plan::Identity;
use crate::replicate::seed::{SeedReport, seed as run_seed, source_vm_of};
use crate::replicate::seed_offline::{ExistingChain, SeedJob, existing_chain, export, import};
use crate::xapi::client::XapiClient;
use crate::xapi::transfer::{Progress, Throttle};

/// The name under which the binary behaves as `vhdsync seed`, for xo-cr-seed runbooks.
pub const XO_CR_SEED: &str = "xo-cr-seed";

/// The command line to parse: as given, or, when run as `xo-cr-seed`, `vhdsync seed` with
/// its arguments. xo-cr-seed verifies no certificate, so neither does this form unless a
/// fingerprint is pinned (a warning says so).
pub fn command_line(args: impl Iterator<Item = OsString>) -> Vec<OsString> {
    let mut args: Vec<OsString> = args.collect();
    let invoked_as = args
        .first()
        .and_then(|a| Path::new(a).file_name())
        .map(|n| n.to_string_lossy().into_owned());
    if invoked_as.as_deref() != Some(XO_CR_SEED) {
        return args;
    }
    let rest = args.split_off(1.min(args.len()));
    let pinned = rest
        .iter()
        .any(|a| a.to_string_lossy().ends_with("-fingerprint"));
    let mut line: Vec<OsString> = vec!["vhdsync".into(), "seed".into()];
    if !pinned && !rest.is_empty() {
        line.push("--insecure".into());
    }
    line.extend(rest);
    line
}

pub fn seed(args: &SeedArgs) -> Result<ExitCode, CliError> {
    let (source, target) = command_line_pair(
        CommandLineHost {
            url: &args.source_url,
            password_file: args.source_password_file.as_deref(),
            fingerprint: args.source_fingerprint.as_deref(),
        },
        CommandLineHost {
            url: &args.target_url,
            password_file: args.target_password_file.as_deref(),
            fingerprint: args.target_fingerprint.as_deref(),
        },
        args.insecure,
    )?;
    if args.insecure {
        eprintln!(
            "vhdsync: warning: host certificates are not verified (pin them with --source-fingerprint/--target-fingerprint)"
        );
    }
    for (what, value) in [
        ("the job id", &args.job_id),
        ("the schedule id", &args.schedule_id),
        ("the snapshot", &args.snapshot_uuid),
        ("the target VM", &args.target_vm_uuid),
    ] {
        crate::replicate::seed::check_uuid(what, value)?;
    }
    warn_about([&source, &target]);
    runtime()?.block_on(async {
        let source = Arc::new(source.connect().await?);
        let target = target.connect().await?;
        let outcome = seed_under_lease(&source, &target, args).await;
        let _ = source.logout().await;
        let _ = target.logout().await;
        let report = outcome?;
        if args.json {
            print_json(&json!(report))?;
        } else {
            println!(
                "seeded: snapshot {} of VM {} is the base of target VM {} ({:?}) on SR {}",
                report.snapshot,
                report.source_vm,
                report.target_vm,
                report.target_name,
                report.target_sr
            );
            for d in &report.disks {
                println!(
                    "  disk {}: {}, source VDI {} -> target VDI {}",
                    d.userdevice,
                    human_bytes(d.virtual_size),
                    d.source_vdi,
                    d.target_vdi
                );
            }
            println!("the job's next replicate of this VM sends a delta");
        }
        Ok(ExitCode::SUCCESS)
    })
}

/// The seed, under the job's lease on the VM the snapshot is of (see `vm_lease`).
async fn seed_under_lease(
    source: &Arc<XapiClient>,
    target: &XapiClient,
    args: &SeedArgs,
) -> Result<SeedReport, CliError> {
    let snapshot = args.snapshot_uuid.to_lowercase();
    let scope = LeaseScope {
        // Canonical, as a job file's: the key must be the one `replicate` of the job uses.
        job_id: uuid::Uuid::try_parse(&args.job_id)
            .map_err(|e| CliError::Input(format!("the job id {:?}: {e}", args.job_id)))?
            .to_string(),
        vm: source_vm_of(source, &snapshot).await?,
        ttl: DEFAULT_TTL,
        holder: Holder::this_process_without_state_dir(),
    };
    let work = async {
        Ok(run_seed(
            source,
            target,
            &snapshot,
            &args.target_vm_uuid.to_lowercase(),
            &args.job_id,
            &args.schedule_id,
            &SystemClock,
        )
        .await?)
    };
    under_lease(source, &scope, work).await
}

/// The identity of `vm`'s replicas under `job`; `vm` must be one of the job's VMs: listed,
/// or any UUID for a job with tags.
pub(super) fn job_identity(job: &Job, vm: &str) -> Result<Identity, CliError> {
    let listed = job.vms.iter().any(|v| v.eq_ignore_ascii_case(vm));
    // A job with tags may have selected any VM of the source; only a UUID can be one.
    if !listed && (job.vm_tags.is_empty() || uuid::Uuid::try_parse(vm).is_err()) {
        return Err(CliError::Input(format!(
            "--vm {vm}: not a VM of job {:?}",
            job.name
        )));
    }
    Ok(Identity {
        job_id: job.job_id.clone(),
        schedule_id: job.schedule_id.clone(),
        vm_uuid: vm.to_lowercase(),
        sr_uuid: job.target_sr.clone(),
    })
}

/// `max_rate`: the command's, else the job's.
fn seed_job(job: &Job, vm: &str, max_rate: Option<u64>) -> Result<SeedJob, CliError> {
    Ok(SeedJob {
        name: job.name.clone(),
        id: job_identity(job, vm)?,
        clock: std::sync::Arc::new(SystemClock),
        throttle: max_rate.or(job.max_rate).map(Throttle::new),
    })
}

/// The VM's lock, as `replicate` takes it: no cycle runs while this command does.
pub(super) fn lock(job: &Job, vm: &str) -> Result<VmLock, CliError> {
    Ok(VmLock::acquire(
        &job.state_dir,
        &job.job_id,
        vm,
        SystemClock.now(),
    )?)
}

/// One line per disk every few seconds on a terminal; otherwise timestamped lines at
/// `replicate`'s cadence (each tenth, at least every 10 s); nothing for JSON.
fn progress(json: bool) -> impl FnMut(&str, &Progress) + Send {
    let tty = !json && std::io::stderr().is_terminal();
    let mut last = std::time::Instant::now();
    let mut cadences: std::collections::HashMap<String, Cadence> = Default::default();
    move |disk: &str, p: &Progress| {
        if json {
            return;
        }
        let disk_shown = terminal_text::name(disk);
        if tty {
            if last.elapsed().as_secs() >= 2 {
                last = std::time::Instant::now();
                eprintln!("vhdsync: disk {disk_shown}: {}", step_text::progress(p));
            }
        } else {
            let said = match cadences.entry(disk.to_owned()).or_default().update(p) {
                Due::Nothing => return,
                Due::ToSend(total) => step_text::to_send(total),
                Due::Progress => step_text::progress(p),
            };
            let now = step_text::timestamp(time::OffsetDateTime::now_utc());
            eprintln!("{now} disk {disk_shown}: {said}");
        }
    }
}

pub fn seed_export(args: &SeedExportArgs) -> Result<ExitCode, CliError> {
    let job = load_job(&args.job)?;
    let seed = seed_job(&job, &args.vm, args.max_rate)?;
    let _lock = lock(&job, &seed.id.vm_uuid)?;
    runtime()?.block_on(async {
        let (source, target) = connect_job(&job).await?;
        let chain = existing_chain(&source, &target, &seed.id).await;
        let _ = target.logout().await;
        let refused = match chain {
            Ok(Some(chain)) if !args.force => Err(chain_refusal(&job, &seed.id.vm_uuid, &chain)),
            Ok(_) => Ok(()),
            Err(e) => Err(e.into()),
        };
        if let Err(e) = refused {
            let _ = source.logout().await;
            return Err(e);
        }
        let source = Arc::new(source);
        let work = async {
            let mut display = progress(args.json);
            Ok(export(&source, &seed, &args.output, args.level, &mut display).await?)
        };
        // Taken after the read-only check above, before the export writes on the source.
        let scope = LeaseScope::of_job(&job, &seed.id.vm_uuid);
        let outcome = under_lease(&source, &scope, work).await;
        let _ = source.logout().await;
        let manifest = outcome?;
        if args.json {
            print_json(&json!(manifest))?;
        } else {
            println!(
                "exported VM {} ({}) as snapshot {} into {}",
                terminal_text::name(&manifest.vm_name),
                manifest.vm_uuid,
                manifest.snapshot_uuid,
                args.output.display()
            );
            for d in &manifest.disks {
                println!(
                    "  disk {}: {} ({} of VHD stream in {}, {} frames; virtual size {})",
                    d.userdevice,
                    d.file,
                    human_bytes(d.stream_length),
                    human_bytes(d.file_size),
                    d.frames,
                    human_bytes(d.virtual_size)
                );
            }
            println!(
                "carry the directory to the target site, then run: vhdsync seed-import --job {} {}",
                args.job.display(),
                args.output.display()
            );
        }
        Ok(ExitCode::SUCCESS)
    })
}

/// Why `seed-export` will not replace a valid chain, and what doing it costs.
fn chain_refusal(job: &Job, vm: &str, chain: &ExistingChain) -> CliError {
    CliError::Input(format!(
        "VM {vm} already has a valid chain in job {:?}: {} {}{} on the target, and the exported source snapshot {} as its base. A seed's snapshot becomes the job's base, so the next replicate would send a full copy, up to {} (the virtual size of the VM's disks; only allocated blocks are sent), until the seed is imported. Pass --force to export anyway",
        job.name,
        chain.kind.label(),
        chain.restore_point,
        chain
            .datetime
            .map_or_else(String::new, |at| format!(" of {}", keys::rfc3339(at))),
        chain.base,
        human_bytes(chain.full_size),
    ))
}

pub fn seed_import(args: &SeedImportArgs) -> Result<ExitCode, CliError> {
    let job = load_job(&args.job)?;
    let manifest = crate::replicate::manifest::Manifest::load(&args.dir)?;
    let seed = seed_job(&job, &manifest.vm_uuid, args.max_rate)?;
    let _lock = lock(&job, &seed.id.vm_uuid)?;
    runtime()?.block_on(async {
        let (source, target) = connect_job(&job).await?;
        let source = Arc::new(source);
        let work = async {
            let mut display = progress(args.json);
            Ok(import(&source, &target, &seed, &args.dir, &mut display).await?)
        };
        let scope = LeaseScope::of_job(&job, &seed.id.vm_uuid);
        let outcome = under_lease(&source, &scope, work).await;
        let _ = source.logout().await;
        let _ = target.logout().await;
        let report = outcome?;
        if args.json {
            print_json(&json!(report))?;
        } else {
            println!(
                "imported replica {} ({:?}), linked to source snapshot {}",
                report.replica, report.replica_name, report.snapshot
            );
            for d in &report.disks {
                println!(
                    "  disk {}: {} ({}) -> VDI {}",
                    d.userdevice,
                    d.file,
                    human_bytes(d.stream_bytes),
                    d.replica_vdi
                );
            }
            println!("the job's next replicate of this VM sends a delta");
        }
        Ok(ExitCode::SUCCESS)
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn line(args: &[&str]) -> Vec<String> {
        command_line(args.iter().map(OsString::from))
            .into_iter()
            .map(|a| a.to_string_lossy().into_owned())
            .collect()
    }

    #[test]
    fn runs_as_xo_cr_seed_by_its_name() {
        assert_eq!(
            line(&["/usr/local/bin/xo-cr-seed", "a", "b"]),
            ["vhdsync", "seed", "--insecure", "a", "b"]
        );
        assert_eq!(
            line(&["xo-cr-seed", "-h"]),
            ["vhdsync", "seed", "--insecure", "-h"]
        );
        assert_eq!(line(&["xo-cr-seed"]), ["vhdsync", "seed"]);
        assert_eq!(
            line(&["xo-cr-seed", "--source-fingerprint", "sha256:00"]),
            ["vhdsync", "seed", "--source-fingerprint", "sha256:00"]
        );
        assert_eq!(line(&["vhdsync", "seed", "x"]), ["vhdsync", "seed", "x"]);
    }
}
