//! `vhdsync lab init|serve|write|hash|fault`: create and run a lab host, act on a running
//! one as its guests would, and inject faults into it (through the `lab.` RPCs, like any
//! other client).

use std::collections::BTreeMap;
use std::io::Write;
use std::process::ExitCode;
use std::time::Duration;

use super::CliError;
use super::args::{
    LabCommand, LabFaultArgs, LabHashArgs, LabHostArgs, LabInitArgs, LabServeArgs, LabWriteArgs,
};
use super::output::print_json;
use super::units::human_bytes;
use crate::lab::http::{LabServer, Limits};
use crate::lab::nbd::NbdOptions;
use crate::lab::rpc::LAB_WRITE_ZEROS;
use crate::lab::{InitConfig, InitReport, Lab, LabError};
use crate::xapi::HostUrl;
use crate::xapi::client::{ClientError, XapiClient};
use crate::xapi::rpc::Value;
use crate::xapi::tls::{Fingerprint, Trust};

/// How long `serve` lets transfers in flight finish after a signal.
const SHUTDOWN_GRACE: Duration = Duration::from_secs(5);
/// `lab.write` and `lab.hash` go through the whole range in one call, at disk speed: allow
/// them time.
const LONG_CALL_TIMEOUT: Duration = Duration::from_secs(3600);

pub fn run(command: LabCommand) -> Result<ExitCode, CliError> {
    match command {
        LabCommand::Init(args) => init(&args),
        LabCommand::Serve(args) => serve(&args),
        LabCommand::Write(args) => write(&args),
        LabCommand::Hash(args) => hash(&args),
        LabCommand::Fault(args) => fault(&args),
    }
}

fn init(args: &LabInitArgs) -> Result<ExitCode, CliError> {
    let config = InitConfig {
        boot_delay: args.boot_delay,
        ..InitConfig::default()
    };
    let report =
        Lab::init_with_config(&args.dir, &args.password, &args.vms, &config).map_err(lab_error)?;
    if args.json {
        let document = serde_json::to_value(&report)
            .map_err(|e| CliError::Failed(format!("encoding the report: {e}")))?;
        print_json(&document)?;
    } else {
        print_report(&args.dir, &report);
    }
    Ok(ExitCode::SUCCESS)
}

fn print_report(dir: &std::path::Path, report: &InitReport) {
    println!("lab host created in {} (user root)", dir.display());
    println!("pool {}", report.pool.uuid);
    println!("host {}", report.host.uuid);
    println!("SR   {} (Local storage)", report.sr.uuid);
    for network in &report.networks {
        println!(
            "net  {} {} ({})",
            network.ids.uuid, network.name, network.bridge
        );
    }
    for vm in &report.vms {
        let firmware = match (vm.firmware, vm.secure_boot) {
            ("uefi", true) => " (UEFI, Secure Boot)",
            ("uefi", false) => " (UEFI)",
            _ => "",
        };
        println!("VM   {} {}{firmware}", vm.ids.uuid, vm.name);
        for disk in &vm.disks {
            println!(
                "  disk {}: VDI {} ({})",
                disk.userdevice,
                disk.vdi.uuid,
                human_bytes(disk.virtual_size)
            );
        }
        for vif in &vm.vifs {
            println!(
                "  vif {}: VIF {} {} on {}",
                vif.device, vif.vif.uuid, vif.mac, vif.network
            );
        }
        for cd in &vm.cd_drives {
            println!("  cd {}: VBD {} (empty)", cd.userdevice, cd.vbd.uuid);
        }
        if let Some(vtpm) = &vm.vtpm {
            println!("  vtpm: VTPM {}", vtpm.uuid);
        }
    }
}

fn lab_error(e: LabError) -> CliError {
    match e {
        LabError::AlreadyInitialised { .. } | LabError::NotInitialised { .. } => {
            CliError::Input(e.to_string())
        }
        other => CliError::Failed(other.to_string()),
    }
}

fn serve(args: &LabServeArgs) -> Result<ExitCode, CliError> {
    let lab = Lab::open(&args.dir).map_err(lab_error)?;
    // Kept to save the state once serving stopped: transfers cut off by the shutdown may
    // still hold clones of the lab on blocking threads, so its last drop may never come.
    let state = lab.clone();
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .map_err(|e| CliError::Failed(format!("starting the runtime: {e}")))?;
    let served: Result<(), CliError> = runtime.block_on(async {
        // Catch the signals before announcing the URL: whoever reads it may signal at once.
        let mut terminate =
            tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
                .map_err(|e| CliError::Failed(format!("catching SIGTERM: {e}")))?;
        let nbd = NbdOptions {
            port: args.nbd_port,
            ..NbdOptions::default()
        };
        let server = LabServer::start_with(lab, args.listen, args.tls, Limits::default(), nbd)
            .await
            .map_err(|e| CliError::Failed(e.to_string()))?;
        announce(&server)?;
        tokio::select! {
            _ = tokio::signal::ctrl_c() => {}
            _ = terminate.recv() => {}
        }
        tracing::info!("stopping");
        server.shutdown(SHUTDOWN_GRACE).await;
        Ok(())
    });
    // Blocking threads still streaming a transfer's last frames are not waited for long.
    runtime.shutdown_timeout(Duration::from_secs(1));
    served?;
    state.flush().map_err(lab_error)?;
    Ok(ExitCode::SUCCESS)
}

/// The URL on the first line, the fingerprint on the second (with TLS), then `nbd
/// ADDRESS:PORT`, flushed at once for whoever waits on them.
fn announce(server: &LabServer) -> Result<(), CliError> {
    let mut out = std::io::stdout().lock();
    let mut text = format!("{}\n", server.base_url());
    if let Some(fingerprint) = server.fingerprint() {
        text.push_str(&format!("fingerprint {fingerprint}\n"));
    }
    text.push_str(&format!("nbd {}\n", server.nbd_addr()));
    out.write_all(text.as_bytes())
        .and_then(|()| out.flush())
        .map_err(|e| CliError::Failed(format!("stdout: {e}")))
}

fn write(args: &LabWriteArgs) -> Result<ExitCode, CliError> {
    let (length, data) = match (args.random, args.zero) {
        (Some(length), _) => (length, Value::Int(args.seed as i64)),
        (None, Some(length)) => (length, Value::from(LAB_WRITE_ZEROS)),
        (None, None) => {
            return Err(CliError::Input(
                "give --random BYTES or --zero BYTES".into(),
            ));
        }
    };
    let offset = to_int(args.offset, "--offset")?;
    let length_value = to_int(length, "the length")?;
    with_client(&args.host, LONG_CALL_TIMEOUT, |client| async move {
        client
            .call(
                "lab.write",
                vec![Value::from(args.vdi.as_str()), offset, length_value, data],
            )
            .await?;
        Ok(())
    })?;
    println!(
        "wrote {length} bytes at offset {} of VDI {}",
        args.offset, args.vdi
    );
    Ok(ExitCode::SUCCESS)
}

fn hash(args: &LabHashArgs) -> Result<ExitCode, CliError> {
    let digest = with_client(&args.host, LONG_CALL_TIMEOUT, |client| async move {
        client
            .call("lab.hash", vec![Value::from(args.vdi.as_str())])
            .await
    })?;
    let digest = digest
        .as_str()
        .ok_or_else(|| CliError::Failed(format!("lab.hash answered {digest:?}, not a digest")))?;
    println!("{digest}");
    Ok(ExitCode::SUCCESS)
}

/// Quick calls: the fault registry is in memory.
const FAULT_CALL_TIMEOUT: Duration = Duration::from_secs(30);

fn fault(args: &LabFaultArgs) -> Result<ExitCode, CliError> {
    if args.list {
        let faults = with_client(&args.host, FAULT_CALL_TIMEOUT, |client| async move {
            client.call("lab.list_faults", Vec::new()).await
        })?;
        for fault in faults.as_array().unwrap_or_default() {
            println!("{}", fault_line(fault));
        }
        return Ok(ExitCode::SUCCESS);
    }
    if let Some(id) = args.clear {
        let params = match id {
            Some(id) => vec![to_int(id, "the id")?],
            None => Vec::new(),
        };
        let cleared = with_client(&args.host, FAULT_CALL_TIMEOUT, |client| async move {
            client.call("lab.clear_faults", params).await
        })?;
        println!("cleared {} fault(s)", cleared.as_i64().unwrap_or_default());
        return Ok(ExitCode::SUCCESS);
    }
    let spec = fault_spec(args)?;
    let id = with_client(&args.host, FAULT_CALL_TIMEOUT, |client| async move {
        client.call("lab.inject_fault", vec![spec]).await
    })?;
    println!("{}", id.as_str().unwrap_or_default());
    Ok(ExitCode::SUCCESS)
}

/// The `lab.inject_fault` spec the options describe; the lab host checks it.
fn fault_spec(args: &LabFaultArgs) -> Result<Value, CliError> {
    let mut spec = BTreeMap::new();
    let kind = args.kind.as_deref().unwrap_or_default();
    spec.insert("kind", Value::from(kind));
    let ints = [
        ("after_bytes", args.after),
        ("seconds", args.seconds),
        ("count", args.count),
        ("bytes_per_second", args.rate),
    ];
    for (field, value) in ints {
        if let Some(n) = value {
            spec.insert(field, to_int(n, field)?);
        }
    }
    let texts = [
        ("method", &args.method),
        ("code", &args.code),
        ("on", &args.on),
        ("to", &args.to),
        ("vdi", &args.vdi),
        ("vm", &args.vm),
        ("mode", &args.mode),
    ];
    for (field, value) in texts {
        if let Some(text) = value {
            spec.insert(field, Value::from(text.as_str()));
        }
    }
    if args.persistent {
        spec.insert("persistent", Value::Bool(true));
    }
    Ok(Value::from(spec))
}

/// A listed fault on one line: `ID KIND field=value…`.
fn fault_line(fault: &Value) -> String {
    let text = |value: &Value| match value {
        Value::Int(n) => n.to_string(),
        Value::Bool(b) => b.to_string(),
        other => other.as_str().unwrap_or_default().to_owned(),
    };
    let field = |name: &str| fault.get(name).map(text).unwrap_or_default();
    let mut line = format!("{} {}", field("id"), field("kind"));
    for (name, value) in fault.as_struct().into_iter().flatten() {
        if name != "id" && name != "kind" {
            line.push_str(&format!(" {name}={}", text(value)));
        }
    }
    line
}

fn to_int(n: u64, what: &str) -> Result<Value, CliError> {
    i64::try_from(n)
        .map(Value::Int)
        .map_err(|_| CliError::Input(format!("{what} {n} is too large")))
}

/// Log in to the lab host, run `work`, log out.
fn with_client<T, F, Fut>(host: &LabHostArgs, timeout: Duration, work: F) -> Result<T, CliError>
where
    F: FnOnce(std::sync::Arc<XapiClient>) -> Fut,
    Fut: std::future::Future<Output = Result<T, ClientError>>,
{
    let url = HostUrl::parse(&host.url).map_err(|e| CliError::Input(e.to_string()))?;
    let trust = match (&host.fingerprint, host.insecure) {
        (Some(fingerprint), _) => Trust::Pinned(
            Fingerprint::parse(fingerprint).map_err(|e| CliError::Input(e.to_string()))?,
        ),
        (None, true) => Trust::Insecure,
        (None, false) => Trust::SystemRoots,
    };
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|e| CliError::Failed(format!("starting the runtime: {e}")))?;
    runtime.block_on(async {
        let client = XapiClient::connect(url, &trust, None)
            .await
            .map_err(|e| match e {
                ClientError::NoCredentials { .. } => CliError::Input(e.to_string()),
                other => CliError::Failed(other.to_string()),
            })?
            .with_call_timeout(timeout);
        let client = std::sync::Arc::new(client);
        let result = work(client.clone()).await;
        // The work's outcome matters; a failed logout only leaves a session to expire.
        let _ = client.logout().await;
        result.map_err(|e| CliError::Failed(e.to_string()))
    })
}
