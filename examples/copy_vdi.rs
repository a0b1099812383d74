//! Copy one VDI (or its delta against a base snapshot VDI on the same host) from one host
//! into a VDI of another, with nothing stored in between, using only the library's facade.
//!
//! ```sh
//! cargo run --example copy_vdi -- SOURCE_URL VDI TARGET_URL TARGET_VDI [BASE_VDI]
//! cargo run --example copy_vdi -- https://root@10.0.0.1 3b2c… https://root@10.0.0.2 9a41…
//! ```
//!
//! The passwords come from `VHDSYNC_SOURCE_PASSWORD` and `VHDSYNC_TARGET_PASSWORD`, else from
//! the URLs (with a warning: `ps` shows them). Certificates are checked against the system's
//! root certificates. Ctrl-C cancels the transfer on both hosts.

use std::error::Error;
use std::process::ExitCode;

use vhdsync::{
    HostLogin, HostUrl, SOURCE_PASSWORD_ENV, TARGET_PASSWORD_ENV, TransferOptions, TransferReport,
    Trust, VdiOn, credential_warnings, transfer_vdi,
};

const USAGE: &str = "usage: copy_vdi SOURCE_URL VDI TARGET_URL TARGET_VDI [BASE_VDI]";

#[tokio::main(flavor = "current_thread")]
async fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    match copy(&args).await {
        Ok(report) => {
            println!(
                "copied {} blocks, {} bytes in {:.2} s into {}",
                report.blocks,
                report.bytes,
                report.duration.as_secs_f64(),
                report.imported_vdi
            );
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("copy_vdi: {e}");
            ExitCode::FAILURE
        }
    }
}

/// The program without its printing: `args` as the command line gives them.
pub async fn copy(args: &[String]) -> Result<TransferReport, Box<dyn Error>> {
    let [source_url, vdi, target_url, target_vdi, rest @ ..] = args else {
        return Err(USAGE.into());
    };
    let base = match rest {
        [] => None,
        [base] => Some(base.as_str()),
        _ => return Err(USAGE.into()),
    };
    let login = |url: &str, password_env: &str| -> Result<HostLogin, Box<dyn Error>> {
        Ok(HostLogin {
            password_env: Some(password_env.to_owned()),
            url_on_command_line: true,
            ..HostLogin::new(HostUrl::parse(url)?, Trust::SystemRoots)
        })
    };
    let source = login(source_url, SOURCE_PASSWORD_ENV)?;
    let target = login(target_url, TARGET_PASSWORD_ENV)?;
    for warning in credential_warnings([&source, &target]) {
        eprintln!("copy_vdi: warning: {warning}");
    }
    let source = source.connect().await?;
    let target = target.connect().await?;

    let mut last_tenth = 0;
    let outcome = transfer_vdi(
        VdiOn { host: &source, vdi },
        base,
        VdiOn {
            host: &target,
            vdi: target_vdi,
        },
        &TransferOptions::default(),
        &mut |progress| {
            let tenth = progress
                .total
                .map_or(0, |total| progress.bytes * 10 / total.max(1));
            if tenth > last_tenth {
                last_tenth = tenth;
                eprintln!("copy_vdi: {}%", tenth * 10);
            }
        },
        async {
            let _ = tokio::signal::ctrl_c().await;
        },
    )
    .await;
    let _ = source.logout().await;
    let _ = target.logout().await;
    Ok(outcome?)
}
