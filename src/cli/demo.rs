//! `vhdsync demo`: the product in one command. Two lab hosts in this process, a VM with two
//! disks of random data, a full replication, guest writes, a delta replication through the
//! same job file and code path as `vhdsync replicate` (both over the export path), then the
//! source offers NBD and a third run sends scattered 4 KiB writes as a delta over CBT + NBD,
//! 64 KiB extents instead of 2 MiB blocks. Then proof: the replica's content equals the
//! source snapshot's, and starting the replica is refused.

use std::path::Path;
use std::process::ExitCode;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use super::CliError;
use super::args::DemoArgs;
use super::connect::connect_job;
use super::terminal_text;
use super::transfer::runtime;
use super::units::{human_bytes, human_rate};
use crate::lab::Lab;
use crate::lab::http::LabServer;
use tokio_util::sync::CancellationToken;

use crate::replicate::clock::SystemClock;
use crate::replicate::job::Job;
use crate::replicate::run::{CycleEvent, CycleReport};
use crate::replicate::runner::{RunOptions, VmOutcome, run_job};
use crate::xapi::client::XapiClient;
use crate::xapi::records::VmRecord;
use crate::xapi::rpc::Value;
use crate::xapi::transfer::TransferOptions;

const MIB: u64 = 1 << 20;
const PASSWORD: &str = "demo";
const DISKS: [u64; 2] = [256 * MIB, 64 * MIB];
/// The third run's guest writes: this many of 4 KiB, each in its own 2 MiB block of disk 0.
const SCATTERED_WRITES: u64 = 64;

/// For `map_err`: a step of the demo failed.
fn failed<E>(what: &str) -> impl FnOnce(E) -> CliError
where
    E: Into<Box<dyn std::error::Error + Send + Sync>>,
{
    CliError::step(format!("demo: {what}"))
}

pub fn demo(args: &DemoArgs) -> Result<ExitCode, CliError> {
    let (dir, made_here) = match &args.dir {
        Some(dir) => (dir.clone(), false),
        None => (
            std::env::temp_dir().join(format!("vhdsync-demo-{}", std::process::id())),
            true,
        ),
    };
    std::fs::create_dir_all(&dir).map_err(failed("creating the folder"))?;
    let outcome = runtime()?.block_on(run(&dir));
    if args.keep {
        println!("files kept in {}", dir.display());
    } else if made_here {
        let _ = std::fs::remove_dir_all(&dir);
    } else {
        for sub in ["source", "target", "state", "job.toml"] {
            let path = dir.join(sub);
            let _ = std::fs::remove_dir_all(&path).or_else(|_| std::fs::remove_file(&path));
        }
    }
    outcome
}

async fn run(dir: &Path) -> Result<ExitCode, CliError> {
    let step = |text: &str| println!("==> {text}");
    step("starting two lab hosts");
    let source_dir = dir.join("source");
    let target_dir = dir.join("target");
    let disks: Vec<(String, Vec<u64>)> = vec![("web01".into(), DISKS.to_vec())];
    let source_report = Lab::init(&source_dir, PASSWORD, &disks).map_err(failed("source lab"))?;
    let target_report = Lab::init(&target_dir, PASSWORD, &[]).map_err(failed("target lab"))?;
    let source_lab = Lab::open(&source_dir).map_err(failed("source lab"))?;
    let target_lab = Lab::open(&target_dir).map_err(failed("target lab"))?;
    let any_port = "127.0.0.1:0"
        .parse()
        .map_err(failed::<std::net::AddrParseError>("address"))?;
    let source_server = LabServer::start(source_lab, any_port, false)
        .await
        .map_err(failed("source server"))?;
    let target_server = LabServer::start(target_lab, any_port, false)
        .await
        .map_err(failed("target server"))?;
    let with_login = |url: String| url.replacen("://", &format!("://root:{PASSWORD}@"), 1);
    println!(
        "    source {}   target {}",
        source_server.base_url(),
        target_server.base_url()
    );

    let vm = &source_report.vms[0];
    let job_path = dir.join("job.toml");
    std::fs::write(
        &job_path,
        format!(
            "name = \"demo\"\nsource = \"{}\"\ntarget = \"{}\"\ntarget_sr = \"{}\"\nvms = [\"{}\"]\nretention = 2\nstate_dir = \"state\"\ncbt = true\n",
            with_login(source_server.base_url()),
            with_login(target_server.base_url()),
            target_report.sr.uuid,
            vm.ids.uuid
        ),
    )
    .map_err(failed("writing job.toml"))?;
    let job = Job::load(&job_path)?;
    let (source, target) = connect_job(&job).await?;
    let (source, target) = (Arc::new(source), Arc::new(target));

    step("writing guest data: 96 MiB and 16 MiB of random data on VM web01's two disks");
    let disk_refs: Vec<String> = vm.disks.iter().map(|d| d.vdi.reference.clone()).collect();
    for (i, (offset, len)) in [(0, 64 * MIB), (160 * MIB, 32 * MIB)]
        .into_iter()
        .enumerate()
    {
        guest_write(&source, &disk_refs[0], offset, len, i as u64 + 1).await?;
    }
    guest_write(&source, &disk_refs[1], 8 * MIB, 16 * MIB, 7).await?;

    let mut runs = Vec::new();
    step("replicating (first run: full)");
    runs.push(cycle(&job, &source, &target).await?);
    step("guest writes: 3 MiB scattered over disk 0, 512 bytes on disk 1");
    for (i, offset) in [5 * MIB, 100 * MIB + 4096, 200 * MIB]
        .into_iter()
        .enumerate()
    {
        guest_write(&source, &disk_refs[0], offset, MIB, 10 + i as u64).await?;
    }
    guest_write(&source, &disk_refs[1], 40 * MIB, 512, 20).await?;
    step("replicating (second run: delta)");
    runs.push(cycle(&job, &source, &target).await?);

    step("the source offers NBD (network purpose insecure_nbd); the job has cbt = true");
    offer_nbd(&source).await?;
    step(&format!(
        "guest writes: {SCATTERED_WRITES} x 4 KiB scattered over disk 0, each in its own 2 MiB \
         block (the export path would send those {} of blocks)",
        human_bytes(SCATTERED_WRITES * 2 * MIB)
    ));
    for i in 0..SCATTERED_WRITES {
        let offset = i * 2 * MIB + (i % 32) * (64 << 10);
        guest_write(&source, &disk_refs[0], offset, 4096, 100 + i).await?;
    }
    step("replicating (third run: delta over CBT + NBD, only the changed 64 KiB extents)");
    runs.push(cycle(&job, &source, &target).await?);

    step("verifying: each replica disk's content equals the source snapshot's");
    let last = &runs[runs.len() - 1];
    for disk in &last.disks {
        let theirs = lab_hash(&source, &disk.source_vdi).await?;
        let ours = lab_hash(&target, &disk.replica_vdi).await?;
        if theirs != ours {
            return Err(CliError::Failed(format!(
                "demo: disk {}: replica digest {ours} differs from the source snapshot's {theirs}",
                disk.userdevice
            )));
        }
        println!(
            "    disk {}: sha256 {}… identical",
            disk.userdevice,
            &ours[..16]
        );
    }

    println!();
    println!(
        "{:<4} {:<6} {:<9} {:>12} {:>13} {:>8} {:>8} {:>13}",
        "run", "mode", "transport", "bytes sent", "virtual size", "saving", "time", "rate"
    );
    for (i, r) in runs.iter().enumerate() {
        let mut transports: Vec<&str> = r.disks.iter().map(|d| d.transport).collect();
        transports.dedup();
        println!(
            "{:<4} {:<6} {:<9} {:>12} {:>13} {:>7.1}% {:>7.2}s {:>13}",
            i + 1,
            r.mode,
            transports.join("+"),
            human_bytes(r.bytes_sent),
            human_bytes(r.virtual_size),
            100.0 * (1.0 - r.bytes_sent as f64 / r.virtual_size.max(1) as f64),
            r.seconds,
            human_rate(r.bytes_sent as f64 / r.seconds.max(1e-9))
        );
    }
    println!();

    step(&format!("starting the replica {:?}", last.replica_name));
    let replica_ref = target.get_by_uuid::<VmRecord>(&last.replica).await?;
    let start = target.start_vm(&replica_ref).await;
    match start {
        Err(e) if e.xapi_code() == Some("OPERATION_BLOCKED") => {
            println!("    refused, as it must be: {e}")
        }
        Err(e) => {
            return Err(CliError::Failed(format!(
                "demo: starting the replica failed oddly: {e}"
            )));
        }
        Ok(_) => {
            return Err(CliError::Failed(
                "demo: the replica started: it must be protected".into(),
            ));
        }
    }

    let _ = source.logout().await;
    let _ = target.logout().await;
    source_server.shutdown(Duration::from_secs(1)).await;
    target_server.shutdown(Duration::from_secs(1)).await;
    step("done");
    Ok(ExitCode::SUCCESS)
}

async fn cycle(
    job: &Job,
    source: &Arc<XapiClient>,
    target: &Arc<XapiClient>,
) -> Result<CycleReport, CliError> {
    let options = RunOptions {
        transfer: TransferOptions::default(),
        observer: Arc::new(Mutex::new(|_: &CycleEvent<'_>| {})),
        cancel: CancellationToken::new(),
        clock: Arc::new(SystemClock),
    };
    let outcomes = run_job(job, source.clone(), target.clone(), &[], options).await;
    match outcomes.into_iter().next() {
        Some((_, VmOutcome::Replicated(report))) => {
            println!(
                "    {}: {} sent for {} of disks, replica {}",
                report.mode,
                human_bytes(report.bytes_sent),
                human_bytes(report.virtual_size),
                terminal_text::name(&report.replica_name)
            );
            for note in &report.notes {
                println!("      note: {}", terminal_text::message(note));
            }
            Ok(*report)
        }
        Some((_, VmOutcome::Failed(e))) => Err(e.into()),
        Some((_, VmOutcome::Locked(e))) => Err(e.into()),
        Some((_, VmOutcome::Leased(e))) => Err(CliError::Failed(e.to_string())),
        Some((vm, VmOutcome::Panicked(message))) => Err(CliError::Failed(format!(
            "demo: VM {vm}: the cycle panicked: {message}"
        ))),
        None => Err(CliError::Failed("demo: the job ran no VM".into())),
    }
}

/// Offer NBD on every network of `host`, in plain (the demo's hosts serve plain HTTP).
async fn offer_nbd(host: &XapiClient) -> Result<(), CliError> {
    let networks = host
        .call("network.get_all", vec![])
        .await
        .map_err(failed("network.get_all"))?;
    for network in networks.as_array().unwrap_or_default() {
        host.call(
            "network.add_purpose",
            vec![network.clone(), Value::from("insecure_nbd")],
        )
        .await
        .map_err(failed("network.add_purpose"))?;
    }
    Ok(())
}

async fn guest_write(
    host: &XapiClient,
    vdi: &str,
    offset: u64,
    len: u64,
    seed: u64,
) -> Result<(), CliError> {
    host.call(
        "lab.write",
        vec![
            Value::from(vdi),
            Value::Int(offset as i64),
            Value::Int(len as i64),
            Value::Int(seed as i64),
        ],
    )
    .await
    .map(|_| ())
    .map_err(failed("guest write"))
}

async fn lab_hash(host: &XapiClient, vdi_uuid: &str) -> Result<String, CliError> {
    let digest = host
        .call("lab.hash", vec![Value::from(vdi_uuid)])
        .await
        .map_err(failed("digest"))?;
    Ok(digest.as_str().unwrap_or_default().to_owned())
}
