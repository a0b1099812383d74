//! Running a measured child process: its wall time, its exit status and its own peak RSS
//! (from wait4(2), so neither this process nor its other children count).

use std::fs::File;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Instant;

use super::BenchError;
use super::measure::Sample;

/// Where a child's output goes: its stdout is kept (a JSON report to read), its stderr too
/// (the reason it failed).
pub struct Logs {
    dir: PathBuf,
}

impl Logs {
    pub fn new(dir: &Path) -> Result<Logs, BenchError> {
        std::fs::create_dir_all(dir)
            .map_err(|e| BenchError::io("creating the log folder", dir, e))?;
        Ok(Logs {
            dir: dir.to_path_buf(),
        })
    }

    pub fn dir(&self) -> &Path {
        &self.dir
    }

    fn file(&self, name: &str) -> Result<(PathBuf, File), BenchError> {
        let path = self.dir.join(name);
        let file = File::create(&path).map_err(|e| BenchError::io("creating a log", &path, e))?;
        Ok((path, file))
    }
}

/// A spawned child and where its stderr went.
struct Running {
    what: String,
    program: String,
    child: Child,
    stderr: PathBuf,
}

fn spawn(
    mut command: Command,
    what: &str,
    stdout: Stdio,
    logs: &Logs,
) -> Result<Running, BenchError> {
    let (stderr, file) = logs.file(&format!("{}.stderr", slug(what)))?;
    let program = command.get_program().to_string_lossy().into_owned();
    let child = command
        .stdout(stdout)
        .stderr(file)
        .spawn()
        .map_err(|e| BenchError::new(what, format!("starting {program}: {e}")))?;
    Ok(Running {
        what: what.to_owned(),
        program,
        child,
        stderr,
    })
}

impl Running {
    /// Reap the child; an exit other than 0 is an error carrying the end of its stderr.
    fn wait(self) -> Result<u64, BenchError> {
        let (status, peak_rss) = wait4(&self.child)
            .map_err(|e| BenchError::new(&self.what, format!("waiting for the process: {e}")))?;
        let exited_ok = libc::WIFEXITED(status) && libc::WEXITSTATUS(status) == 0;
        if !exited_ok {
            let text = std::fs::read_to_string(&self.stderr).unwrap_or_default();
            let tail: Vec<&str> = text.lines().rev().take(5).collect();
            let how = if libc::WIFEXITED(status) {
                format!("exit code {}", libc::WEXITSTATUS(status))
            } else {
                format!("signal {}", libc::WTERMSIG(status))
            };
            return Err(BenchError::new(
                &self.what,
                format!(
                    "{} failed with {how}: {} (log {})",
                    self.program,
                    tail.into_iter().rev().collect::<Vec<_>>().join(" / "),
                    self.stderr.display()
                ),
            ));
        }
        Ok(peak_rss)
    }
}

/// wait4(2) on one child: its wait status and its peak RSS in bytes. `Child::wait` would
/// reap it without the resource usage, so this replaces it (std never waits again).
fn wait4(child: &Child) -> std::io::Result<(i32, u64)> {
    let pid = child.id() as libc::pid_t;
    let mut status = 0;
    // SAFETY: rusage is plain old data that wait4 fills in.
    let mut usage: libc::rusage = unsafe { std::mem::zeroed() };
    loop {
        // SAFETY: valid pointers to a local int and a local rusage.
        if unsafe { libc::wait4(pid, &mut status, 0, &mut usage) } == pid {
            // ru_maxrss is in KiB on Linux.
            return Ok((status, usage.ru_maxrss.max(0) as u64 * 1024));
        }
        let error = std::io::Error::last_os_error();
        if error.kind() != std::io::ErrorKind::Interrupted {
            return Err(error);
        }
    }
}

/// A file-name-safe form of a step's description.
fn slug(what: &str) -> String {
    what.chars()
        .map(|c| if c.is_ascii_alphanumeric() { c } else { '-' })
        .collect()
}

/// Run `command` to its end: its time and peak RSS, and its stdout.
pub fn run_measured(
    command: Command,
    what: &str,
    logs: &Logs,
) -> Result<(Sample, String), BenchError> {
    let (stdout_path, stdout) = logs.file(&format!("{}.stdout", slug(what)))?;
    settle();
    let started = Instant::now();
    let peak_rss = spawn(command, what, Stdio::from(stdout), logs)?.wait()?;
    let seconds = started.elapsed().as_secs_f64();
    let out = std::fs::read_to_string(&stdout_path)
        .map_err(|e| BenchError::io("reading a log", &stdout_path, e))?;
    Ok((Sample { seconds, peak_rss }, out))
}

/// Where the second process of a pipe writes its output.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PipeEnd {
    /// Nowhere (/dev/null): it only drains the pipe.
    Discard,
    /// To the step's stdout log: it relays and answers something worth reading.
    Log,
}

/// Run `first | second` to the end of both: the time until both ended, and the peak RSS of
/// `first` (the measured side; `second` only drains or relays).
pub fn run_pipe(
    first: Command,
    second: Command,
    end: PipeEnd,
    what: &str,
    logs: &Logs,
) -> Result<Sample, BenchError> {
    let output = match end {
        PipeEnd::Discard => Stdio::null(),
        PipeEnd::Log => Stdio::from(logs.file(&format!("{}.stdout", slug(what)))?.1),
    };
    settle();
    let started = Instant::now();
    let mut head = spawn(first, what, Stdio::piped(), logs)?;
    let pipe = head
        .child
        .stdout
        .take()
        .ok_or_else(|| BenchError::new(what, "no pipe from the first process".into()))?;
    let mut second = second;
    second.stdin(Stdio::from(pipe));
    let tail = spawn(second, &format!("{what} (drain)"), output, logs);
    let head_rss = head.wait();
    let tail_ok = tail.and_then(Running::wait);
    let seconds = started.elapsed().as_secs_f64();
    let peak_rss = head_rss?;
    tail_ok?;
    Ok(Sample { seconds, peak_rss })
}

/// Flush every dirty page before a measured run, so that no run pays for the writeback of
/// the step before it (a guest write, another side's output file).
fn settle() {
    // SAFETY: sync(2) takes no arguments and cannot fail.
    unsafe { libc::sync() };
}

/// Stop a child that stops cleanly on SIGTERM, and reap it. `Child::kill` sends SIGKILL,
/// which would cut a `vhdsync lab serve` short of its clean stop (transfers in flight end,
/// the state is saved, the stop is logged).
pub fn terminate(child: &mut Child) -> std::io::Result<std::process::ExitStatus> {
    let pid = libc::pid_t::try_from(child.id()).map_err(std::io::Error::other)?;
    // SAFETY: kill(2) on our own child's pid, which is not reaped yet (so not reused).
    if unsafe { libc::kill(pid, libc::SIGTERM) } != 0 {
        return Err(std::io::Error::last_os_error());
    }
    child.wait()
}

/// A program on PATH, for the reference tools that may be missing.
pub fn find_program(name: &str) -> Option<PathBuf> {
    std::env::var_os("PATH").and_then(|paths| {
        std::env::split_paths(&paths)
            .map(|dir| dir.join(name))
            .find(|candidate| candidate.is_file())
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_child_is_timed_and_its_own_peak_rss_read() {
        let dir = tempfile::tempdir().unwrap();
        let logs = Logs::new(dir.path()).unwrap();
        let mut command = Command::new("sh");
        command.args(["-c", "echo hello"]);
        let (sample, out) = run_measured(command, "echo", &logs).unwrap();
        assert_eq!(out, "hello\n");
        assert!(sample.seconds > 0.0);
        // A shell's resident set: more than a page, far less than this test binary's.
        assert!(
            sample.peak_rss > 4096 && sample.peak_rss < 64 << 20,
            "{}",
            sample.peak_rss
        );
    }

    #[test]
    fn a_failing_child_names_the_step_and_shows_its_stderr() {
        let dir = tempfile::tempdir().unwrap();
        let logs = Logs::new(dir.path()).unwrap();
        let mut command = Command::new("sh");
        command.args(["-c", "echo broken >&2; exit 3"]);
        let error = run_measured(command, "the step", &logs)
            .unwrap_err()
            .to_string();
        assert!(error.contains("the step"), "{error}");
        assert!(error.contains("exit code 3"), "{error}");
        assert!(error.contains("broken"), "{error}");
    }

    #[test]
    fn a_terminated_child_stops_on_sigterm_and_is_reaped() {
        use std::os::unix::process::ExitStatusExt;
        let mut child = Command::new("sleep").arg("60").spawn().unwrap();
        let status = terminate(&mut child).unwrap();
        assert_eq!(status.signal(), Some(libc::SIGTERM));
        // Reaped: waiting again answers the same status at once.
        assert_eq!(child.try_wait().unwrap(), Some(status));
    }

    #[test]
    fn a_pipe_moves_every_byte() {
        let dir = tempfile::tempdir().unwrap();
        let logs = Logs::new(dir.path()).unwrap();
        let mut first = Command::new("head");
        first.args(["-c", "1000000", "/dev/zero"]);
        let mut second = Command::new("sh");
        second.args(["-c", "test $(wc -c) = 1000000"]);
        run_pipe(first, second, PipeEnd::Discard, "pipe", &logs).unwrap();
        let mut short = Command::new("head");
        short.args(["-c", "10", "/dev/zero"]);
        let mut check = Command::new("sh");
        check.args(["-c", "test $(wc -c) = 1000000"]);
        assert!(run_pipe(short, check, PipeEnd::Discard, "short pipe", &logs).is_err());
    }

    #[test]
    fn a_drained_pipe_writes_no_log_and_a_relay_logs_its_answer() {
        let dir = tempfile::tempdir().unwrap();
        let logs = Logs::new(dir.path()).unwrap();
        let pipe = |end, what| {
            let mut first = Command::new("head");
            first.args(["-c", "100000", "/dev/zero"]);
            let mut second = Command::new("sh");
            second.args(["-c", "wc -c"]);
            run_pipe(first, second, end, what, &logs).unwrap();
        };
        pipe(PipeEnd::Discard, "drained");
        assert!(!dir.path().join("drained.stdout").exists());
        pipe(PipeEnd::Log, "relayed");
        let answer = std::fs::read_to_string(dir.path().join("relayed.stdout")).unwrap();
        assert_eq!(answer.trim(), "100000");
    }
}
