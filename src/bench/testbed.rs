//! The bench's testbed: two lab hosts served by `vhdsync lab serve` children, a source VDI
//! full of random data and its stream as a file, and the steps measured against them (each a
//! child process, see [`super::process`]).

use std::collections::BTreeMap;
use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use uuid::Uuid;

mod nbd;

pub(super) use self::nbd::{CONCURRENCIES, NbdCycles, SCATTERED_WRITES};
use super::BenchError;
use super::chain::sparse_chain;
use super::measure::{MIB, Sample};
use super::process::{Logs, PipeEnd, run_measured, run_pipe, terminate};
use crate::image::{Chain, changed};
use crate::lab::Lab;
use crate::xapi::HostUrl;
use crate::xapi::client::XapiClient;
use crate::xapi::rpc::Value;
use crate::xapi::tls::Trust;

const PASSWORD: &str = "lab";
/// Lab sizes are whole 2 MiB blocks.
pub(super) const GRANULE: u64 = 2 * MIB;
/// `lab.write` of the whole disk runs at disk speed in one call.
const LONG_CALL: Duration = Duration::from_secs(3600);
/// Runs of the in-process `changed()` timing: it takes milliseconds.
pub(super) const DIFF_RUNS: usize = 21;

/// Where the testbed reports the step it is at, for the person waiting.
pub type Progress<'a> = &'a dyn Fn(&str);

/// Replication cycles of one kind: their timings and the stream bytes they sent in all.
#[derive(Default)]
pub(super) struct Cycles {
    pub samples: Vec<Sample>,
    pub bytes: u64,
}

/// A `vhdsync lab serve` child, stopped with SIGTERM when dropped (see
/// [`terminate`]).
struct Server {
    child: Child,
    url: String,
}

impl Server {
    fn start(exe: &Path, dir: &Path, logs: &Path) -> Result<Server, BenchError> {
        let what = format!("starting the lab host in {}", dir.display());
        let log = logs.join(format!(
            "lab-serve-{}.stderr",
            dir.file_name()
                .map(|n| n.to_string_lossy())
                .unwrap_or_default()
        ));
        let stderr = std::fs::File::create(&log).map_err(|e| BenchError::io(&what, &log, e))?;
        let mut child = Command::new(exe)
            .args(["lab", "serve", "--dir"])
            .arg(dir)
            .stdout(Stdio::piped())
            .stderr(stderr)
            .spawn()
            .map_err(|e| BenchError::new(&what, e.to_string()))?;
        let mut line = String::new();
        let read = child
            .stdout
            .take()
            .map(|out| BufReader::new(out).read_line(&mut line));
        let server = Server {
            child,
            url: line.trim().to_owned(),
        };
        match read {
            Some(Ok(n)) if n > 0 && server.url.starts_with("http") => Ok(server),
            _ => Err(BenchError::new(
                &what,
                format!("it printed no URL (see {})", log.display()),
            )),
        }
    }

    fn with_login(&self) -> String {
        self.url.replacen("://", &format!("://root:{PASSWORD}@"), 1)
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        // Nothing is left to report a failure to: the bench is over, or failed already.
        let _ = terminate(&mut self.child);
    }
}

/// The bench's world: two lab hosts, a source VDI full of random data, its stream as a file.
pub(super) struct Testbed<'a> {
    exe: PathBuf,
    data: PathBuf,
    logs: Logs,
    size: u64,
    runtime: tokio::runtime::Runtime,
    source_server: Server,
    target_server: Server,
    source: XapiClient,
    target: XapiClient,
    vm: String,
    vdi: String,
    target_sr: String,
    target_sr_uuid: String,
    leaf: PathBuf,
    stream: PathBuf,
    out: PathBuf,
    progress: Progress<'a>,
}

fn lab_error(what: &str) -> impl Fn(crate::lab::LabError) -> BenchError + '_ {
    move |e| BenchError::new(what, e.to_string())
}

impl<'a> Testbed<'a> {
    pub fn start(
        data: &Path,
        logs: Logs,
        size: u64,
        progress: Progress<'a>,
    ) -> Result<Testbed<'a>, BenchError> {
        let exe = std::env::current_exe()
            .map_err(|e| BenchError::new("finding vhdsync's own executable", e.to_string()))?;
        progress(&format!("creating two lab hosts in {}", data.display()));
        let source_dir = data.join("source");
        let target_dir = data.join("target");
        let disks = [("bench".to_owned(), vec![size])];
        let source_report =
            Lab::init(&source_dir, PASSWORD, &disks).map_err(lab_error("source lab"))?;
        let target_report =
            Lab::init(&target_dir, PASSWORD, &[]).map_err(lab_error("target lab"))?;
        let log_dir = logs.dir().to_path_buf();
        let source_server = Server::start(&exe, &source_dir, &log_dir)?;
        let target_server = Server::start(&exe, &target_dir, &log_dir)?;
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .map_err(|e| BenchError::new("starting the async runtime", e.to_string()))?;
        let connect = |server: &Server| {
            let url = HostUrl::parse(&server.with_login())
                .map_err(|e| BenchError::new("lab host URL", e.to_string()))?;
            runtime
                .block_on(XapiClient::connect(url, &Trust::SystemRoots, None))
                .map(|c| c.with_call_timeout(LONG_CALL))
                .map_err(|e| BenchError::new("logging in to a lab host", e.to_string()))
        };
        let source = connect(&source_server)?;
        let target = connect(&target_server)?;
        let vm = &source_report.vms[0];
        let mut testbed = Testbed {
            exe,
            data: data.to_path_buf(),
            logs,
            size,
            runtime,
            vm: vm.ids.uuid.clone(),
            vdi: vm.disks[0].vdi.uuid.clone(),
            target_sr: target_report.sr.reference.clone(),
            target_sr_uuid: target_report.sr.uuid.clone(),
            source_server,
            target_server,
            source,
            target,
            leaf: PathBuf::new(),
            stream: data.join("stream.vhd"),
            out: data.join("out.raw"),
            progress,
        };
        progress(&format!(
            "writing {} MiB of random data as the guest",
            size / MIB
        ));
        testbed.guest_write(0, size, 1)?;
        testbed.leaf = testbed.leaf_path(&source_dir)?;
        let mut export = testbed.vhdsync(["export"]);
        export.arg(&testbed.leaf).arg("-o").arg(&testbed.stream);
        run_measured(export, "export to a file", &testbed.logs)?;
        Ok(testbed)
    }

    fn host(&self, on_target: bool) -> &XapiClient {
        if on_target {
            &self.target
        } else {
            &self.source
        }
    }

    fn call(&self, on_target: bool, method: &str, params: Vec<Value>) -> Result<Value, BenchError> {
        self.runtime
            .block_on(self.host(on_target).call(method, params))
            .map_err(|e| BenchError::new(method, e.to_string()))
    }

    /// A call whose answer must be a string (a reference, a uuid).
    fn call_for_string(
        &self,
        on_target: bool,
        method: &str,
        params: Vec<Value>,
    ) -> Result<String, BenchError> {
        self.runtime
            .block_on(self.host(on_target).call_for_string(method, params))
            .map_err(|e| BenchError::new(method, e.to_string()))
    }

    fn guest_write(&self, offset: u64, len: u64, seed: u64) -> Result<(), BenchError> {
        let int = |n: u64| Value::Int(n as i64);
        self.call(
            false,
            "lab.write",
            vec![
                Value::from(self.vdi.as_str()),
                int(offset),
                int(len),
                int(seed),
            ],
        )
        .map(|_| ())
    }

    /// The source VDI's leaf file, from the SR's index: opening the SR while it is served
    /// would sweep it.
    fn leaf_path(&self, lab_dir: &Path) -> Result<PathBuf, BenchError> {
        let what = "finding the source VDI's leaf";
        let vdi: Uuid = self
            .vdi
            .parse()
            .map_err(|e| BenchError::new(what, format!("VDI {}: {e}", self.vdi)))?;
        Lab::served_leaf_path(lab_dir, vdi).map_err(lab_error(what))
    }

    pub fn stream_len(&self) -> Result<u64, BenchError> {
        std::fs::metadata(&self.stream)
            .map(|m| m.len())
            .map_err(|e| BenchError::io("the stream file", &self.stream, e))
    }

    fn vhdsync<const N: usize>(&self, args: [&str; N]) -> Command {
        let mut command = Command::new(&self.exe);
        command.args(args);
        command
    }

    /// The pipe's far end: `cat`, whose output `run_pipe` discards.
    fn drain() -> Command {
        Command::new("cat")
    }

    pub fn export(&self) -> Result<Sample, BenchError> {
        let mut export = self.vhdsync(["export"]);
        export.arg(&self.leaf);
        run_pipe(
            export,
            Testbed::drain(),
            PipeEnd::Discard,
            "vhdsync export | cat",
            &self.logs,
        )
    }

    pub fn cat(&self) -> Result<Sample, BenchError> {
        let mut cat = Command::new("cat");
        cat.arg(&self.stream);
        run_pipe(
            cat,
            Testbed::drain(),
            PipeEnd::Discard,
            "cat | cat",
            &self.logs,
        )
    }

    pub fn remove_out(&self) -> Result<(), BenchError> {
        match std::fs::remove_file(&self.out) {
            Err(e) if e.kind() != std::io::ErrorKind::NotFound => {
                Err(BenchError::io("removing the raw file", &self.out, e))
            }
            _ => Ok(()),
        }
    }

    pub fn apply(&self, durable: bool) -> Result<Sample, BenchError> {
        self.remove_out()?;
        let mut apply = self.vhdsync(["apply"]);
        if !durable {
            apply.arg("--no-sync");
        }
        apply
            .arg(&self.stream)
            .arg(&self.out)
            .arg("--size")
            .arg(self.size.to_string());
        Ok(run_measured(apply, "vhdsync apply", &self.logs)?.0)
    }

    /// qemu-img does not flush by default; the durable side adds `sync FILE` (fsync).
    pub fn qemu_convert(&self, qemu: &Path, durable: bool) -> Result<Sample, BenchError> {
        self.remove_out()?;
        let mut convert = Command::new(qemu);
        convert
            .args(["convert", "-f", "vpc", "-O", "raw"])
            .arg(&self.stream)
            .arg(&self.out);
        let (mut sample, _) = run_measured(convert, "qemu-img convert", &self.logs)?;
        if durable {
            let mut sync = Command::new("sync");
            sync.arg(&self.out);
            sample.seconds += run_measured(sync, "sync", &self.logs)?.0.seconds;
        }
        Ok(sample)
    }

    /// A fresh VDI on the target, as a replication cycle has: importing into a full one would
    /// also time the copy of its leaf.
    fn new_target_vdi(&self) -> Result<String, BenchError> {
        let mut record = BTreeMap::new();
        record.insert("SR".into(), Value::from(self.target_sr.as_str()));
        record.insert("virtual_size".into(), Value::Int(self.size as i64));
        record.insert("name_label".into(), Value::from("bench"));
        record.insert("type".into(), Value::from("user"));
        record.insert("sharable".into(), Value::Bool(false));
        record.insert("read_only".into(), Value::Bool(false));
        record.insert("other_config".into(), Value::Struct(BTreeMap::new()));
        let reference = self.call(true, "VDI.create", vec![Value::Struct(record)])?;
        self.call_for_string(true, "VDI.get_uuid", vec![reference])
    }

    fn destroy_target_vdi(&self, uuid: &str) -> Result<(), BenchError> {
        let reference = self.call(true, "VDI.get_by_uuid", vec![Value::from(uuid)])?;
        self.call(true, "VDI.destroy", vec![reference]).map(|_| ())
    }

    pub fn copy_vdi(&self) -> Result<Sample, BenchError> {
        let target_vdi = self.new_target_vdi()?;
        let mut copy = self.vhdsync(["copy-vdi", "--json", "--from"]);
        copy.arg(self.source_url())
            .args(["--vdi", &self.vdi, "--to"])
            .arg(self.target_url())
            .args(["--target-vdi", &target_vdi]);
        let (sample, _) = run_measured(copy, "vhdsync copy-vdi", &self.logs)?;
        self.destroy_target_vdi(&target_vdi)?;
        Ok(sample)
    }

    /// `curl GET | curl PUT`, the Content-Length given (curl -T - would send chunked
    /// encoding, which XAPI refuses).
    pub fn curl_relay(&self, curl: &Path, stream_len: u64) -> Result<Sample, BenchError> {
        let target_vdi = self.new_target_vdi()?;
        let user = format!("root:{PASSWORD}");
        let mut get = Command::new(curl);
        get.args(["-sf", "-u", &user]).arg(format!(
            "{}/export_raw_vdi?vdi={}&format=vhd",
            self.server(false).url,
            self.vdi
        ));
        let mut put = Command::new(curl);
        put.args(["-sf", "-u", &user, "-T", "-", "-H", "Transfer-Encoding:"])
            .arg("-H")
            .arg(format!("Content-Length: {stream_len}"))
            .arg(format!(
                "{}/import_raw_vdi?vdi={target_vdi}&format=vhd",
                self.server(true).url
            ));
        let sample = run_pipe(get, put, PipeEnd::Log, "curl GET | curl PUT", &self.logs)?;
        self.destroy_target_vdi(&target_vdi)?;
        Ok(sample)
    }

    fn server(&self, target: bool) -> &Server {
        if target {
            &self.target_server
        } else {
            &self.source_server
        }
    }

    fn source_url(&self) -> String {
        self.server(false).with_login()
    }

    fn target_url(&self) -> String {
        self.server(true).with_login()
    }

    /// A job of the bench's VM, with `settings` (whole TOML lines) added.
    fn job_file(&self, name: &str, settings: &str) -> Result<PathBuf, BenchError> {
        let path = self.data.join(format!("{name}.toml"));
        let text = format!(
            "name = \"{name}\"\nsource = \"{}\"\ntarget = \"{}\"\ntarget_sr = \"{}\"\nvms = [\"{}\"]\nretention = 1\nstate_dir = \"{}\"\n{settings}",
            self.source_url(),
            self.target_url(),
            self.target_sr_uuid,
            self.vm,
            self.data.join(format!("{name}.state")).display()
        );
        std::fs::write(&path, text).map_err(|e| BenchError::io("writing a job file", &path, e))?;
        Ok(path)
    }

    /// One `vhdsync replicate` cycle: its sample, mode, stream bytes and replica's VM uuid
    /// and disk VDIs.
    fn cycle(&self, job: &Path, what: &str) -> Result<(Sample, CycleFacts), BenchError> {
        let mut replicate = self.vhdsync(["replicate", "--json", "--job"]);
        replicate.arg(job);
        let (sample, out) = run_measured(replicate, what, &self.logs)?;
        let document: serde_json::Value = serde_json::from_str(&out)
            .map_err(|e| BenchError::new(what, format!("its JSON report: {e}")))?;
        let report = &document["vms"][0]["report"];
        let facts = CycleFacts {
            mode: report["mode"].as_str().unwrap_or_default().to_owned(),
            bytes: report["bytes_sent"].as_u64().unwrap_or_default(),
            replica: report["replica"].as_str().unwrap_or_default().to_owned(),
            target_snapshot: report["target_snapshot"]
                .as_str()
                .unwrap_or_default()
                .to_owned(),
            disks: report["disks"]
                .as_array()
                .into_iter()
                .flatten()
                .filter_map(|d| d["replica_vdi"].as_str().map(str::to_owned))
                .collect(),
        };
        Ok((sample, facts))
    }

    fn expect_mode(facts: &CycleFacts, mode: &str, what: &str) -> Result<(), BenchError> {
        match facts.mode == mode {
            true => Ok(()),
            false => Err(BenchError::new(
                what,
                format!("the cycle ran as {:?}, not {mode}", facts.mode),
            )),
        }
    }

    /// Full cycles (one job each, so each is a first run), then delta cycles after guest
    /// writes of `changed_bytes` and cycles with nothing written, on the last full's job.
    pub fn cycles(
        &self,
        runs: usize,
        changed_bytes: u64,
    ) -> Result<(Cycles, Cycles, Cycles), BenchError> {
        let (mut full, mut delta, mut unchanged) = Default::default();
        let mut job = PathBuf::new();
        for round in 1..=runs {
            (self.progress)(&format!("round {round}/{runs}: full replication cycle"));
            // The export path, as the rows' names say: the source offers NBD by now, and
            // `auto` would send a full over it.
            job = self.job_file(&format!("bench-{round}"), "transport = \"stream\"\n")?;
            let what = "full cycle";
            let (sample, facts) = self.cycle(&job, what)?;
            Testbed::expect_mode(&facts, "full", what)?;
            add(&mut full, sample, facts.bytes);
            if round < runs {
                self.destroy_replica(&facts)?;
            }
        }
        let span = self.size - changed_bytes;
        for round in 1..=runs {
            (self.progress)(&format!("round {round}/{runs}: delta and no-change cycles"));
            // Rewritten regions move along the disk so that each delta is fresh data.
            let offset = (round as u64 * 7 * GRANULE) % (span + GRANULE) / GRANULE * GRANULE;
            self.guest_write(offset.min(span), changed_bytes, 100 + round as u64)?;
            let (sample, facts) = self.cycle(&job, "delta cycle")?;
            Testbed::expect_mode(&facts, "delta", "delta cycle")?;
            add(&mut delta, sample, facts.bytes);
            let (sample, facts) = self.cycle(&job, "no-change cycle")?;
            add(&mut unchanged, sample, facts.bytes);
        }
        Ok((full, delta, unchanged))
    }

    /// Free the target of a replica the bench no longer needs: the live replica, then its
    /// disks, then its target snapshot with its disks. Nothing of it may stay: the next full
    /// cycle's job would find the content by its content key and send a delta.
    fn destroy_replica(&self, facts: &CycleFacts) -> Result<(), BenchError> {
        let vm = self.call(
            true,
            "VM.get_by_uuid",
            vec![Value::from(facts.replica.as_str())],
        )?;
        self.call(true, "VM.destroy", vec![vm])?;
        for vdi in &facts.disks {
            self.destroy_target_vdi(vdi)?;
        }
        let snapshot = self.call(
            true,
            "VM.get_by_uuid",
            vec![Value::from(facts.target_snapshot.as_str())],
        )?;
        let vbds = self.call(true, "VM.get_VBDs", vec![snapshot.clone()])?;
        let mut vdis = Vec::new();
        for vbd in vbds.as_array().into_iter().flatten() {
            let kind = self.call(true, "VBD.get_type", vec![vbd.clone()])?;
            if kind.as_str() == Some("Disk") {
                vdis.push(self.call(true, "VBD.get_VDI", vec![vbd.clone()])?);
            }
        }
        self.call(true, "VM.destroy", vec![snapshot])?;
        for vdi in vdis {
            self.call(true, "VDI.destroy", vec![vdi])?;
        }
        Ok(())
    }

    pub fn diff(&self) -> Result<Vec<Sample>, BenchError> {
        let dir = self.data.join("chain");
        std::fs::create_dir_all(&dir).map_err(|e| BenchError::io("the chain folder", &dir, e))?;
        let files = sparse_chain(&dir)?;
        let open = |path: &Path| {
            Chain::open(path).map_err(|e| BenchError::new("opening the 2 TiB chain", e.to_string()))
        };
        let (leaf, base) = (open(&files.leaf)?, open(&files.base)?);
        Ok((0..DIFF_RUNS)
            .map(|_| {
                let started = Instant::now();
                std::hint::black_box(changed(&leaf, Some(&base)).count());
                Sample {
                    seconds: started.elapsed().as_secs_f64(),
                    peak_rss: 0,
                }
            })
            .collect())
    }

    /// Log out; dropping the servers stops them.
    pub fn stop(self) {
        let _ = self.runtime.block_on(self.source.logout());
        let _ = self.runtime.block_on(self.target.logout());
    }
}

struct CycleFacts {
    mode: String,
    bytes: u64,
    replica: String,
    /// The cycle's restore point on the target.
    target_snapshot: String,
    disks: Vec<String>,
}

fn add(cycles: &mut Cycles, sample: Sample, bytes: u64) {
    cycles.samples.push(sample);
    cycles.bytes += bytes;
}
