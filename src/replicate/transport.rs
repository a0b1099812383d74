//! How a job moves disk data (`xo-replication.md` §2.8 and `xapi-protocol.md` §3): the export
//! path (`GET /export_raw_vdi`), or changed block tracking with NBD reads, and what the job
//! does with CBT on the source. Pure settings; the cycle carries them out (`run::route`).

use std::fmt;
use std::str::FromStr;

/// The job key `transport`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Transport {
    /// NBD when the host offers it: for a delta whose base and new snapshot have change
    /// logs, and for a full (its export's allocated blocks only); the export path otherwise.
    #[default]
    Auto,
    /// NBD for every disk, fulls included; a disk without a usable change log since its base
    /// goes over the export path, but a host without NBD fails the cycle.
    Nbd,
    /// The export path only.
    Stream,
}

impl FromStr for Transport {
    type Err = String;

    fn from_str(text: &str) -> Result<Transport, String> {
        match text {
            "auto" => Ok(Transport::Auto),
            "nbd" => Ok(Transport::Nbd),
            "stream" => Ok(Transport::Stream),
            other => Err(format!(
                "unknown transport {other:?}: expected \"auto\", \"nbd\" or \"stream\""
            )),
        }
    }
}

impl fmt::Display for Transport {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Transport::Auto => "auto",
            Transport::Nbd => "nbd",
            Transport::Stream => "stream",
        })
    }
}

/// The default `nbd_concurrency`: NBD connections per disk.
pub const DEFAULT_NBD_CONCURRENCY: u32 = 4;

/// A job's transport and CBT settings.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TransportSettings {
    pub transport: Transport,
    /// `cbt`: enable CBT on the source VM's disks before each snapshot.
    pub cbt: bool,
    /// `nbd_concurrency`: 1 to 16.
    pub nbd_concurrency: u32,
    /// `purge_snapshot_data`: `VDI.data_destroy` on the previous base's disks once the new
    /// replica is committed, leaving only their change logs.
    pub purge_snapshot_data: bool,
}

impl Default for TransportSettings {
    fn default() -> TransportSettings {
        TransportSettings {
            transport: Transport::Auto,
            cbt: false,
            nbd_concurrency: DEFAULT_NBD_CONCURRENCY,
            purge_snapshot_data: false,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn transports_parse_and_show_as_written() {
        for name in ["auto", "nbd", "stream"] {
            assert_eq!(name.parse::<Transport>().unwrap().to_string(), name);
        }
        let e = "NBD".parse::<Transport>().unwrap_err();
        assert!(e.contains("\"NBD\"") && e.contains("\"stream\""), "{e}");
    }
}
