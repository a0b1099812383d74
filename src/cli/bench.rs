//! `vhdsync bench`: one run that measures vhdsync against the tools it must keep up with, on
//! the same bytes, and judges the targets of issue 9. Two lab hosts run as `vhdsync lab serve`
//! children; every measured side (ours and the reference) is a child process, so its own wall
//! time and peak RSS are read (wait4) without this process or the lab hosts counting.
//! The arithmetic and the table are `crate::bench`; this module only runs things.

use std::collections::BTreeMap;
use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitCode, Stdio};
use std::time::{Duration, Instant};

use super::CliError;
use super::args::BenchArgs;
use super::output::print_json;
use super::units::human_bytes;
use crate::bench::BenchError;
use crate::bench::chain::sparse_chain;
use crate::bench::measure::{MIB, Row, Sample, Side, Summary, Target};
use crate::bench::process::{Logs, PipeEnd, find_program, run, run_pipe};
use crate::bench::report::{Setting, cpu_model, filesystem_of, json, table};
use crate::image::{Chain, changed};
use crate::lab::Lab;
use crate::xapi::HostUrl;
use crate::xapi::client::XapiClient;
use crate::xapi::rpc::Value;
use crate::xapi::tls::Trust;

const PASSWORD: &str = "lab";
/// Lab sizes are whole 2 MiB blocks.
const GRANULE: u64 = 2 * MIB;
/// `lab.write` of the whole disk runs at disk speed in one call.
const LONG_CALL: Duration = Duration::from_secs(3600);
/// Runs of the in-process `changed()` timing: it takes milliseconds.
const DIFF_RUNS: usize = 21;

impl From<BenchError> for CliError {
    fn from(e: BenchError) -> CliError {
        CliError::Failed(e.to_string())
    }
}

pub fn bench(args: &BenchArgs) -> Result<ExitCode, CliError> {
    if args.size < GRANULE || !args.size.is_multiple_of(GRANULE) {
        return Err(CliError::Input(format!(
            "--size {}: use a whole number of 2 MiB blocks, at least 2M",
            args.size
        )));
    }
    if args.runs == 0 {
        return Err(CliError::Input("--runs: at least 1".into()));
    }
    let changed_bytes = (args.size as f64 * args.changed / 100.0) as u64 / GRANULE * GRANULE;
    let changed_bytes = changed_bytes.max(GRANULE);
    let dir = match &args.dir {
        Some(dir) => dir.clone(),
        None => std::env::temp_dir().join(format!("vhdsync-bench-{}", std::process::id())),
    };
    let data = dir.join("data");
    if data.exists() {
        return Err(CliError::Input(format!(
            "{}: left by an earlier bench; remove it first",
            data.display()
        )));
    }
    std::fs::create_dir_all(&data)
        .map_err(|e| CliError::Failed(format!("bench: {}: {e}", data.display())))?;
    let rows = measure(
        &data,
        &dir.join("logs"),
        args.size,
        changed_bytes,
        args.runs,
    );
    // The data is gigabytes; the result and the logs stay.
    let _ = std::fs::remove_dir_all(&data);
    let rows = rows?;
    let setting = machine(&dir, args.size, changed_bytes, args.runs);
    let document = json(&setting, &rows);
    let result = dir.join("bench.json");
    let text = serde_json::to_string_pretty(&document)
        .map_err(|e| CliError::Failed(format!("bench: encoding the result: {e}")))?;
    std::fs::write(&result, text + "\n")
        .map_err(|e| CliError::Failed(format!("bench: {}: {e}", result.display())))?;
    if args.json {
        print_json(&document)?;
    } else {
        print!("{}", table(&setting, &rows));
    }
    eprintln!("bench: result written to {}", result.display());
    Ok(ExitCode::SUCCESS)
}

fn machine(dir: &Path, disk_bytes: u64, changed_bytes: u64, runs: usize) -> Setting {
    let read = |path: &str| std::fs::read_to_string(path).unwrap_or_default();
    let dir = std::fs::canonicalize(dir).unwrap_or_else(|_| dir.to_path_buf());
    Setting {
        disk_bytes,
        changed_bytes,
        runs,
        cpus: std::thread::available_parallelism().map_or(1, |n| n.get()),
        cpu_model: cpu_model(&read("/proc/cpuinfo")).unwrap_or_else(|| "unknown CPU".into()),
        filesystem: filesystem_of(&dir, &read("/proc/mounts"))
            .unwrap_or_else(|| "unknown filesystem".into()),
    }
}

fn step(text: &str) {
    eprintln!("bench: {text}");
}

/// The timings of one measurement's two sides over the runs.
#[derive(Default)]
struct Sides {
    ours: Vec<Sample>,
    reference: Vec<Sample>,
}

impl Sides {
    /// One run of each side, the reference first when `reference_first`; ours alone when
    /// there is no reference (its tool is missing).
    fn run_both(
        &mut self,
        reference_first: bool,
        ours: impl FnOnce() -> Result<Sample, BenchError>,
        reference: Option<impl FnOnce() -> Result<Sample, BenchError>>,
    ) -> Result<(), BenchError> {
        match reference {
            Some(reference) if reference_first => {
                self.reference.push(reference()?);
                self.ours.push(ours()?);
            }
            Some(reference) => {
                self.ours.push(ours()?);
                self.reference.push(reference()?);
            }
            None => self.ours.push(ours()?),
        }
        Ok(())
    }
}

fn summary(samples: &[Sample], what: &str) -> Result<Summary, BenchError> {
    Summary::of(samples).ok_or_else(|| BenchError::new(what, "no run completed".into()))
}

fn side(label: &str, bytes: u64, samples: &[Sample]) -> Result<Side, BenchError> {
    Ok(Side {
        label: label.into(),
        bytes,
        summary: summary(samples, label)?,
    })
}

fn measure(
    data: &Path,
    logs: &Path,
    size: u64,
    changed_bytes: u64,
    runs: usize,
) -> Result<Vec<Row>, CliError> {
    let logs = Logs::new(logs)?;
    let lab = Bench::start(data, logs, size)?;
    let qemu = find_program("qemu-img");
    let curl = find_program("curl");
    let stream_len = lab.stream_len()?;
    let (mut export, mut apply_fast, mut apply_durable, mut copy) = (
        Sides::default(),
        Sides::default(),
        Sides::default(),
        Sides::default(),
    );
    for round in 1..=runs {
        step(&format!("round {round}/{runs}: export, apply, copy-vdi"));
        export.ours.push(lab.export()?);
        export.reference.push(lab.cat()?);
        // Which side writes first alternates: a write is faster into pages the run before
        // it has just freed, and on a VM whose balloon hands free memory back to its host,
        // much slower into memory free for a few seconds (`scripts/page-cache-reuse.py`).
        let reference_first = round % 2 == 1;
        for durable in [false, true] {
            let sides = if durable {
                &mut apply_durable
            } else {
                &mut apply_fast
            };
            sides.run_both(
                reference_first,
                || lab.apply(durable),
                qemu.as_ref().map(|qemu| || lab.qemu_convert(qemu, durable)),
            )?;
        }
        // The raw file is not needed again this round: free its space for the copies.
        lab.remove_out()?;
        // Alternated too: the first of the two may read the source VDI from disk, the second
        // from the page cache.
        copy.run_both(
            reference_first,
            || lab.copy_vdi(),
            curl.as_ref()
                .map(|curl| || lab.curl_relay(curl, stream_len)),
        )?;
    }
    let (full, delta, unchanged) = lab.cycles(runs, changed_bytes)?;
    step("timing changed() on a 2 TiB 3-layer chain");
    let diff = lab.diff()?;
    lab.stop();

    let missing = |tool: &str, samples: &[Sample]| {
        samples
            .is_empty()
            .then(|| format!("{tool} is not installed: no reference"))
    };
    let reference = |label: &str, samples: &[Sample]| -> Result<Option<Side>, BenchError> {
        match samples.is_empty() {
            true => Ok(None),
            false => side(label, stream_len, samples).map(Some),
        }
    };
    let copy_side = side("copy-vdi", stream_len, &copy.ours)?;
    let delta_bytes = delta.bytes / delta.samples.len().max(1) as u64;
    Ok(vec![
        Row {
            name: "export | cat".into(),
            ours: side("vhdsync export | cat", stream_len, &export.ours)?,
            reference: reference("cat | cat", &export.reference)?,
            target: Target::RatioAtLeast(0.4),
            note: Some("to /dev/null through a pipe: write(2) to /dev/null would never read the mapped pages".into()),
            rss_judged: true,
        },
        Row {
            name: "apply --no-sync".into(),
            ours: side("vhdsync apply --no-sync", stream_len, &apply_fast.ours)?,
            reference: reference("qemu-img convert", &apply_fast.reference)?,
            target: Target::RatioAtLeast(1.0),
            note: missing("qemu-img", &apply_fast.reference).or(Some(
                "the two alternate, each following the other; qemu-img is fast only right after a run that leaves its output in the page cache, vhdsync drops its pages as it goes".into(),
            )),
            rss_judged: true,
        },
        Row {
            name: "apply".into(),
            ours: side("vhdsync apply", stream_len, &apply_durable.ours)?,
            reference: reference("qemu-img convert + sync", &apply_durable.reference)?,
            target: Target::RatioAtLeast(1.0),
            note: missing("qemu-img", &apply_durable.reference),
            rss_judged: true,
        },
        Row {
            name: "copy-vdi".into(),
            ours: copy_side.clone(),
            reference: reference("curl GET | curl PUT", &copy.reference)?,
            target: Target::RatioAtLeast(0.9),
            note: missing("curl", &copy.reference),
            rss_judged: true,
        },
        Row {
            name: "full cycle".into(),
            ours: side("vhdsync replicate", full.bytes / full.samples.len().max(1) as u64, &full.samples)?,
            reference: None,
            target: Target::None,
            note: None,
            rss_judged: true,
        },
        Row {
            name: "delta cycle".into(),
            ours: side("vhdsync replicate", delta_bytes, &delta.samples)?,
            reference: Some(copy_side),
            target: Target::RatioAtLeast(0.8),
            note: Some(format!(
                "{} rewritten before each; rate = stream bytes sent / the cycle's wall time",
                human_bytes(changed_bytes)
            )),
            rss_judged: true,
        },
        Row {
            name: "no-change cycle".into(),
            ours: side("vhdsync replicate", 0, &unchanged.samples)?,
            reference: None,
            target: Target::SecondsBelow(2.0),
            note: None,
            rss_judged: true,
        },
        Row {
            name: "changed() 2 TiB delta".into(),
            ours: side("changed()", 0, &diff)?,
            reference: None,
            target: Target::SecondsBelow(0.02),
            note: Some(format!("in process, median of {DIFF_RUNS}")),
            rss_judged: false,
        },
    ])
}

/// Replication cycles of one kind: their timings and the stream bytes they sent in all.
#[derive(Default)]
struct Cycles {
    samples: Vec<Sample>,
    bytes: u64,
}

/// A `vhdsync lab serve` child, stopped with SIGTERM when dropped.
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
        // SAFETY: kill(2) on our own child's pid.
        unsafe { libc::kill(self.child.id() as libc::pid_t, libc::SIGTERM) };
        let _ = self.child.wait();
    }
}

/// The bench's world: two lab hosts, a source VDI full of random data, its stream as a file.
struct Bench {
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
}

fn lab_error(what: &str) -> impl Fn(crate::lab::LabError) -> BenchError + '_ {
    move |e| BenchError::new(what, e.to_string())
}

impl Bench {
    fn start(data: &Path, logs: Logs, size: u64) -> Result<Bench, BenchError> {
        let exe = std::env::current_exe()
            .map_err(|e| BenchError::new("finding vhdsync's own executable", e.to_string()))?;
        step(&format!("creating two lab hosts in {}", data.display()));
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
        let mut bench = Bench {
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
        };
        step(&format!(
            "writing {} of random data as the guest",
            human_bytes(size)
        ));
        bench.guest_write(0, size, 1)?;
        bench.leaf = bench.leaf_path(&source_dir)?;
        let mut export = bench.vhdsync(["export"]);
        export.arg(&bench.leaf).arg("-o").arg(&bench.stream);
        run(export, "export to a file", &bench.logs)?;
        Ok(bench)
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

    /// The source VDI's leaf file, from the SR's index (opening the SR while it is served
    /// would sweep it).
    fn leaf_path(&self, lab_dir: &Path) -> Result<PathBuf, BenchError> {
        let sr = lab_dir.join("sr");
        let index = sr.join("sr.json");
        let what = "reading the source SR's index";
        let text = std::fs::read_to_string(&index).map_err(|e| BenchError::io(what, &index, e))?;
        let document: serde_json::Value =
            serde_json::from_str(&text).map_err(|e| BenchError::new(what, e.to_string()))?;
        document["vdis"][&self.vdi]["leaf"]
            .as_str()
            .map(|leaf| sr.join(leaf))
            .ok_or_else(|| BenchError::new(what, format!("no leaf for VDI {}", self.vdi)))
    }

    fn stream_len(&self) -> Result<u64, BenchError> {
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

    fn export(&self) -> Result<Sample, BenchError> {
        let mut export = self.vhdsync(["export"]);
        export.arg(&self.leaf);
        run_pipe(
            export,
            Bench::drain(),
            PipeEnd::Discard,
            "vhdsync export | cat",
            &self.logs,
        )
    }

    fn cat(&self) -> Result<Sample, BenchError> {
        let mut cat = Command::new("cat");
        cat.arg(&self.stream);
        run_pipe(
            cat,
            Bench::drain(),
            PipeEnd::Discard,
            "cat | cat",
            &self.logs,
        )
    }

    fn remove_out(&self) -> Result<(), BenchError> {
        match std::fs::remove_file(&self.out) {
            Err(e) if e.kind() != std::io::ErrorKind::NotFound => {
                Err(BenchError::io("removing the raw file", &self.out, e))
            }
            _ => Ok(()),
        }
    }

    fn apply(&self, durable: bool) -> Result<Sample, BenchError> {
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
        Ok(run(apply, "vhdsync apply", &self.logs)?.0)
    }

    /// qemu-img does not flush by default; the durable side adds `sync FILE` (fsync).
    fn qemu_convert(&self, qemu: &Path, durable: bool) -> Result<Sample, BenchError> {
        self.remove_out()?;
        let mut convert = Command::new(qemu);
        convert
            .args(["convert", "-f", "vpc", "-O", "raw"])
            .arg(&self.stream)
            .arg(&self.out);
        let (mut sample, _) = run(convert, "qemu-img convert", &self.logs)?;
        if durable {
            let mut sync = Command::new("sync");
            sync.arg(&self.out);
            sample.seconds += run(sync, "sync", &self.logs)?.0.seconds;
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

    fn copy_vdi(&self) -> Result<Sample, BenchError> {
        let target_vdi = self.new_target_vdi()?;
        let mut copy = self.vhdsync(["copy-vdi", "--json", "--from"]);
        copy.arg(self.source_url())
            .args(["--vdi", &self.vdi, "--to"])
            .arg(self.target_url())
            .args(["--target-vdi", &target_vdi]);
        let (sample, _) = run(copy, "vhdsync copy-vdi", &self.logs)?;
        self.destroy_target_vdi(&target_vdi)?;
        Ok(sample)
    }

    /// `curl GET | curl PUT`, the Content-Length given (curl -T - would send chunked
    /// encoding, which XAPI refuses).
    fn curl_relay(&self, curl: &Path, stream_len: u64) -> Result<Sample, BenchError> {
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

    fn job_file(&self, name: &str) -> Result<PathBuf, BenchError> {
        let path = self.data.join(format!("{name}.toml"));
        let text = format!(
            "name = \"{name}\"\nsource = \"{}\"\ntarget = \"{}\"\ntarget_sr = \"{}\"\nvms = [\"{}\"]\nretention = 1\nstate_dir = \"{}\"\n",
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
        let (sample, out) = run(replicate, what, &self.logs)?;
        let document: serde_json::Value = serde_json::from_str(&out)
            .map_err(|e| BenchError::new(what, format!("its JSON report: {e}")))?;
        let report = &document["vms"][0]["report"];
        let facts = CycleFacts {
            mode: report["mode"].as_str().unwrap_or_default().to_owned(),
            bytes: report["bytes_sent"].as_u64().unwrap_or_default(),
            replica: report["replica"].as_str().unwrap_or_default().to_owned(),
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
    fn cycles(
        &self,
        runs: usize,
        changed_bytes: u64,
    ) -> Result<(Cycles, Cycles, Cycles), BenchError> {
        let (mut full, mut delta, mut unchanged) = Default::default();
        let mut job = PathBuf::new();
        for round in 1..=runs {
            step(&format!("round {round}/{runs}: full replication cycle"));
            job = self.job_file(&format!("bench-{round}"))?;
            let what = "full cycle";
            let (sample, facts) = self.cycle(&job, what)?;
            Bench::expect_mode(&facts, "full", what)?;
            add(&mut full, sample, facts.bytes);
            if round < runs {
                self.destroy_replica(&facts)?;
            }
        }
        let span = self.size - changed_bytes;
        for round in 1..=runs {
            step(&format!("round {round}/{runs}: delta and no-change cycles"));
            // Rewritten regions move along the disk so that each delta is fresh data.
            let offset = (round as u64 * 7 * GRANULE) % (span + GRANULE) / GRANULE * GRANULE;
            self.guest_write(offset.min(span), changed_bytes, 100 + round as u64)?;
            let (sample, facts) = self.cycle(&job, "delta cycle")?;
            Bench::expect_mode(&facts, "delta", "delta cycle")?;
            add(&mut delta, sample, facts.bytes);
            let (sample, facts) = self.cycle(&job, "no-change cycle")?;
            add(&mut unchanged, sample, facts.bytes);
        }
        Ok((full, delta, unchanged))
    }

    /// Free the target of a replica the bench no longer needs: its VM, then its disks.
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
        Ok(())
    }

    fn diff(&self) -> Result<Vec<Sample>, BenchError> {
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
    fn stop(self) {
        let _ = self.runtime.block_on(self.source.logout());
        let _ = self.runtime.block_on(self.target.logout());
    }
}

struct CycleFacts {
    mode: String,
    bytes: u64,
    replica: String,
    disks: Vec<String>,
}

fn add(cycles: &mut Cycles, sample: Sample, bytes: u64) {
    cycles.samples.push(sample);
    cycles.bytes += bytes;
}
