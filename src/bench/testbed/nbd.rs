//! The CBT + NBD rows' cycles: fulls over NBD at 1, 4 and 8 connections (their time and
//! peak RSS), and deltas after scattered 4 KiB guest writes over NBD and over the export
//! path side by side, each job on its own chain.

use super::{Cycles, Testbed};
use crate::bench::BenchError;
use crate::xapi::rpc::Value;

/// Guest writes before each scattered delta: 200 of 4 KiB, as issue 20 measures.
pub(in crate::bench) const SCATTERED_WRITES: u64 = 200;
/// The NBD connection counts whose fulls are measured.
pub(in crate::bench) const CONCURRENCIES: [u32; 3] = [1, 4, 8];

/// What the NBD cycles measured.
#[derive(Default)]
pub(in crate::bench) struct NbdCycles {
    /// Full cycles over NBD, by [`CONCURRENCIES`] index.
    pub fulls: [Cycles; 3],
    /// Deltas after [`SCATTERED_WRITES`] writes over NBD (4 connections).
    pub nbd_deltas: Cycles,
    /// The same deltas over the export path.
    pub stream_deltas: Cycles,
}

impl Testbed<'_> {
    /// A job with CBT on and the given transport settings.
    fn nbd_job(
        &self,
        name: &str,
        transport: &str,
        concurrency: u32,
    ) -> Result<std::path::PathBuf, BenchError> {
        let settings =
            format!("cbt = true\ntransport = \"{transport}\"\nnbd_concurrency = {concurrency}\n");
        self.job_file(name, &settings)
    }

    /// Offer NBD on the source: `insecure_nbd` (no TLS to measure) on each network; the
    /// one with an addressed PIF (the management network) serves it.
    fn offer_nbd(&self) -> Result<(), BenchError> {
        let networks = self.call(false, "network.get_all", vec![])?;
        for network in networks.as_array().unwrap_or_default() {
            let purpose = vec![network.clone(), Value::from("insecure_nbd")];
            self.call(false, "network.add_purpose", purpose)?;
        }
        Ok(())
    }

    /// `runs` rounds of NBD fulls at each of [`CONCURRENCIES`], each replica destroyed
    /// after (so that no job's first cycle finds content to send a delta against): run
    /// before any chain that stays.
    pub fn nbd_fulls(&self, runs: usize, cycles: &mut NbdCycles) -> Result<(), BenchError> {
        self.offer_nbd()?;
        for round in 1..=runs {
            for (at, concurrency) in CONCURRENCIES.iter().enumerate() {
                (self.progress)(&format!(
                    "round {round}/{runs}: full cycle over NBD x{concurrency}"
                ));
                let job =
                    self.nbd_job(&format!("nbd{concurrency}-{round}"), "nbd", *concurrency)?;
                let what = "full cycle over NBD";
                let (sample, facts) = self.cycle(&job, what)?;
                Testbed::expect_mode(&facts, "full", what)?;
                super::add(&mut cycles.fulls[at], sample, facts.bytes);
                self.destroy_replica(&facts)?;
            }
        }
        Ok(())
    }

    /// `runs` rounds of [`SCATTERED_WRITES`] writes each followed by a delta over the export
    /// path and one over NBD, each on its own chain.
    pub fn scattered_deltas(&self, runs: usize, cycles: &mut NbdCycles) -> Result<(), BenchError> {
        let nbd = self.nbd_job("scattered-nbd", "nbd", 4)?;
        let stream = self.nbd_job("scattered-stream", "stream", 4)?;
        for job in [&stream, &nbd] {
            (self.progress)("the scattered-write chains' first cycles");
            self.cycle(job, "a scattered chain's first cycle")?;
        }
        let extents = self.size / (64 << 10);
        for round in 1..=runs {
            (self.progress)(&format!(
                "round {round}/{runs}: {SCATTERED_WRITES} scattered writes, deltas over the export path and NBD"
            ));
            for i in 0..SCATTERED_WRITES {
                let extent = (i * 2_654_435_761 + round as u64 * 1_000_003) % extents;
                let offset = extent * (64 << 10) + (i % 16) * 4096;
                self.guest_write(offset, 4096, 1000 * round as u64 + i)?;
            }
            let (sample, facts) = self.cycle(&stream, "scattered delta over the export path")?;
            Testbed::expect_mode(&facts, "delta", "scattered delta over the export path")?;
            super::add(&mut cycles.stream_deltas, sample, facts.bytes);
            let (sample, facts) = self.cycle(&nbd, "scattered delta over NBD")?;
            Testbed::expect_mode(&facts, "delta", "scattered delta over NBD")?;
            super::add(&mut cycles.nbd_deltas, sample, facts.bytes);
        }
        Ok(())
    }
}
