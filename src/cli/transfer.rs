//! `copy-vdi` and `trust`: one VDI between two hosts, and a host's certificate fingerprint.

use std::io::IsTerminal;
use std::process::ExitCode;
use std::time::{Duration, Instant};

use serde_json::json;

use super::CliError;
use super::args::{CopyVdiArgs, TrustArgs};
use super::connect::{CommandLineHost, command_line_pair, warn_about};
use super::output::print_json;
use super::step_text;
use super::units::{human_bytes, human_duration, human_rate};
use crate::xapi::HostUrl;
use crate::xapi::connection::Endpoint;
use crate::xapi::tls::Trust;
use crate::xapi::transfer::{Progress, Throttle, TransferOptions, VdiOn, transfer_vdi};

/// How often a non-interactive run logs its progress.
const LOG_EVERY: Duration = Duration::from_secs(5);

/// One thread: a transfer is a pipeline of hand-offs between the export reader and the
/// import writer, and on a multi-threaded runtime each hand-off became a cross-thread wake-up
/// (a futex and an eventfd write per chunk, measured at a third of copy-vdi's CPU time).
pub fn runtime() -> Result<tokio::runtime::Runtime, CliError> {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|e| CliError::Failed(format!("starting the async runtime: {e}")))
}

pub fn copy_vdi(args: &CopyVdiArgs) -> Result<ExitCode, CliError> {
    let (source, target) = command_line_pair(
        CommandLineHost {
            url: &args.from,
            password_file: args.from_password_file.as_deref(),
            fingerprint: args.from_fingerprint.as_deref(),
        },
        CommandLineHost {
            url: &args.to,
            password_file: args.to_password_file.as_deref(),
            fingerprint: args.to_fingerprint.as_deref(),
        },
        args.insecure,
    )?;
    if args.insecure {
        eprintln!("vhdsync: warning: --insecure: host certificates are not verified");
    }
    warn_about([&source, &target]);
    runtime()?.block_on(async {
        let source = source.connect().await?;
        let target = target.connect().await?;
        let options = TransferOptions {
            // The floor of one second keeps `--stall-timeout 0` from aborting every transfer.
            stall_timeout: args.stall_timeout.max(Duration::from_secs(1)),
            throttle: args.max_rate.map(Throttle::new),
            ..TransferOptions::default()
        };
        let mut display = ProgressDisplay::new(args.json);
        let outcome = transfer_vdi(
            VdiOn {
                host: &source,
                vdi: &args.vdi,
            },
            args.base.as_deref(),
            VdiOn {
                host: &target,
                vdi: &args.target_vdi,
            },
            &options,
            &mut |p| display.update(p),
            async {
                let _ = tokio::signal::ctrl_c().await;
            },
        )
        .await;
        display.finish();
        let _ = source.logout().await;
        let _ = target.logout().await;
        let report = outcome.map_err(|e| CliError::Failed(e.to_string()))?;
        let seconds = report.duration.as_secs_f64();
        if args.json {
            print_json(&json!({
                "source": source.host(),
                "vdi": args.vdi,
                "base": args.base,
                "target": target.host(),
                "target_vdi": args.target_vdi,
                "imported_vdi": report.imported_vdi,
                "bytes": report.bytes,
                "blocks": report.blocks,
                "seconds": seconds,
                "bytes_per_second": report.bytes as f64 / seconds.max(1e-9),
            }))?;
        } else {
            println!(
                "copied {} blocks, {} in {seconds:.2} s ({})",
                report.blocks,
                human_bytes(report.bytes),
                human_rate(report.bytes as f64 / seconds.max(1e-9))
            );
        }
        Ok(ExitCode::SUCCESS)
    })
}

/// An indicatif bar on a terminal, a log line every few seconds otherwise, nothing for JSON.
enum ProgressDisplay {
    Bar(indicatif::ProgressBar),
    Log { last: Instant },
    Quiet,
}

impl ProgressDisplay {
    fn new(json: bool) -> ProgressDisplay {
        if json {
            return ProgressDisplay::Quiet;
        }
        if !std::io::stderr().is_terminal() {
            return ProgressDisplay::Log {
                last: Instant::now(),
            };
        }
        let bar = indicatif::ProgressBar::new(0);
        if let Ok(style) = indicatif::ProgressStyle::with_template("{bar:40} {msg} ETA {eta}") {
            bar.set_style(style);
        }
        ProgressDisplay::Bar(bar)
    }

    fn update(&mut self, progress: &Progress) {
        match self {
            ProgressDisplay::Bar(bar) => {
                if let Some(total) = progress.total {
                    bar.set_length(total);
                }
                bar.set_position(progress.bytes);
                let blocks = match progress.blocks_total {
                    Some(blocks_total) => format!(", {}/{blocks_total} blocks", progress.blocks),
                    None => String::new(),
                };
                bar.set_message(format!("{}{blocks}", step_text::progress(progress)));
            }
            ProgressDisplay::Log { last } if last.elapsed() >= LOG_EVERY => {
                *last = Instant::now();
                let eta = progress
                    .eta()
                    .map(|d| format!(", ETA {}", human_duration(Duration::from_secs(d.as_secs()))))
                    .unwrap_or_default();
                eprintln!(
                    "{} copy-vdi: {}, {} blocks{eta}",
                    step_text::timestamp(time::OffsetDateTime::now_utc()),
                    step_text::progress(progress),
                    progress.blocks,
                );
            }
            ProgressDisplay::Log { .. } | ProgressDisplay::Quiet => {}
        }
    }

    fn finish(&self) {
        if let ProgressDisplay::Bar(bar) = self {
            bar.finish_and_clear();
        }
    }
}

pub fn trust(args: &TrustArgs) -> Result<ExitCode, CliError> {
    let url = HostUrl::parse(&args.url).map_err(|e| CliError::Input(e.to_string()))?;
    if url.scheme != crate::xapi::url::Scheme::Https {
        return Err(CliError::Input(format!(
            "{url}: not an https URL; there is no certificate to pin"
        )));
    }
    // Accept whatever the host presents, only to read its fingerprint; nothing is sent.
    let endpoint = Endpoint::new(url.clone(), &Trust::Insecure)
        .map_err(|e| CliError::Failed(e.to_string()))?;
    runtime()?.block_on(async {
        endpoint
            .connect()
            .await
            .map_err(|e| CliError::Failed(e.to_string()))?;
        let fingerprint = endpoint
            .observed_fingerprint()
            .ok_or_else(|| CliError::Failed(format!("{url}: the host presented no certificate")))?;
        println!("{fingerprint}");
        Ok(ExitCode::SUCCESS)
    })
}
