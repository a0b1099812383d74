//! What the packaging ships, checked against the real binary: the shell completions and manual
//! pages cover every command, the tools that read them accept them (bash, groff or man,
//! systemd-analyze, each where installed), and every vhdsync command line in `contrib/`
//! parses with the real CLI.
//!
//! The list of commands comes from `vhdsync --help`, not from the generators' own input, so a
//! command they dropped would be caught.

use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};

const BIN: &str = env!("CARGO_BIN_EXE_vhdsync");
const UNIT: &str = "contrib/systemd/vhdsync@.service";
const TIMER: &str = "contrib/systemd/vhdsync@.timer";
const CRON: &str = "contrib/cron/vhdsync";
/// Where the unit and the container image install the binary.
const INSTALLED_BIN: &str = "/usr/local/bin/vhdsync";

fn vhdsync(args: &[&str]) -> Output {
    Command::new(BIN)
        .args(args)
        .env_remove("VHDSYNC_LOG")
        .output()
        .expect("run vhdsync")
}

fn stdout_of(args: &[&str]) -> String {
    let out = vhdsync(args);
    assert!(
        out.status.success(),
        "vhdsync {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).expect("UTF-8 output")
}

/// The subcommands `vhdsync PATH... --help` lists under "Commands:", without `help`.
fn listed_subcommands(path: &[&str]) -> Vec<String> {
    let help = stdout_of(&[path, &["--help"]].concat());
    let listing = help
        .split_once("Commands:\n")
        .unwrap_or_else(|| panic!("no Commands: in the help of {path:?}:\n{help}"))
        .1;
    listing
        .lines()
        .take_while(|line| line.starts_with("  "))
        .filter_map(|line| line.split_whitespace().next())
        .filter(|name| *name != "help")
        .map(str::to_owned)
        .collect()
}

/// Every command path: `["info"]`, ..., `["lab"]`, `["lab", "init"]`, ...
fn command_paths() -> Vec<Vec<String>> {
    let mut paths = Vec::new();
    for name in listed_subcommands(&[]) {
        let nested = if name == "lab" {
            listed_subcommands(&[&name])
        } else {
            Vec::new()
        };
        paths.push(vec![name.clone()]);
        paths.extend(nested.into_iter().map(|sub| vec![name.clone(), sub]));
    }
    assert!(
        paths.len() > 20,
        "too few commands parsed from --help: {paths:?}"
    );
    for expected in ["replicate", "completions", "man"] {
        assert!(paths.iter().any(|p| p == &[expected]), "{expected}");
    }
    assert!(paths.iter().any(|p| p == &["lab", "fault"]), "{paths:?}");
    paths
}

/// `word` appears in `text` delimited as a whole command name: not as part of a longer one
/// (`seed` inside `seed-export` does not count).
fn mentions_word(text: &str, word: &str) -> bool {
    let is_name_char = |c: char| c.is_ascii_alphanumeric() || c == '-' || c == '_';
    text.match_indices(word).any(|(at, _)| {
        let before = text[..at].chars().next_back();
        let after = text[at + word.len()..].chars().next();
        !before.is_some_and(is_name_char) && !after.is_some_and(is_name_char)
    })
}

fn which(program: &str) -> Option<PathBuf> {
    std::env::var_os("PATH").and_then(|paths| {
        std::env::split_paths(&paths)
            .map(|dir| dir.join(program))
            .find(|path| path.is_file())
    })
}

fn contrib(path: &str) -> String {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join(path);
    std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

#[test]
fn completions_cover_every_command() {
    let paths = command_paths();
    for shell in ["bash", "zsh", "fish", "elvish", "powershell"] {
        let script = stdout_of(&["completions", shell]);
        assert!(script.len() > 1000, "{shell}: {} bytes", script.len());
        for path in &paths {
            let name = path.last().unwrap();
            assert!(
                mentions_word(&script, name),
                "{shell} completion lacks {path:?}"
            );
        }
        // Flags of commands are completed too (fish writes them without the dashes).
        for flag in ["stall-timeout", "persistent", "out"] {
            let long = format!("--{flag}");
            assert!(
                mentions_word(&script, &long) || mentions_word(&script, flag),
                "{shell} completion lacks {long}"
            );
        }
    }
    let bad = vhdsync(&["completions", "tcsh"]);
    assert_eq!(
        bad.status.code(),
        Some(2),
        "an unknown shell is a usage error"
    );
}

#[test]
fn bash_accepts_the_bash_completion() {
    let Some(bash) = which("bash") else {
        eprintln!("skipped: no bash on PATH");
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let script = dir.path().join("vhdsync.bash");
    std::fs::write(&script, stdout_of(&["completions", "bash"])).unwrap();
    let out = Command::new(&bash).arg("-n").arg(&script).output().unwrap();
    assert!(
        out.status.success() && out.stderr.is_empty(),
        "bash -n: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    // Loaded, it completes the first word from the command list.
    let probe = format!(
        "source {}; COMP_WORDS=(vhdsync rep); COMP_CWORD=1; _vhdsync vhdsync rep vhdsync; \
         printf '%s\\n' \"${{COMPREPLY[@]}}\"",
        script.display()
    );
    let out = Command::new(&bash).arg("-c").arg(probe).output().unwrap();
    let replies = String::from_utf8_lossy(&out.stdout);
    assert_eq!(
        replies.trim(),
        "replicate",
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

#[test]
fn the_man_page_lists_every_command() {
    let page = stdout_of(&["man"]);
    assert!(page.starts_with(".ie") || page.starts_with(".TH"), "{page}");
    assert!(page.contains(".TH vhdsync 1"), "{page}");
    for path in command_paths().iter().filter(|p| p.len() == 1) {
        // roff writes a hyphen as \-.
        let reference = format!("vhdsync-{}(1)", path[0]).replace('-', "\\-");
        assert!(page.contains(&reference), "vhdsync(1) lacks {reference}");
    }
    for section in [
        "SYNOPSIS",
        "OPTIONS",
        "SUBCOMMANDS",
        "\"EXIT STATUS\"",
        "ENVIRONMENT",
    ] {
        assert!(page.contains(&format!(".SH {section}")), "no {section}");
    }
    render_cleanly("vhdsync(1)", page.as_bytes());
}

#[test]
fn man_out_writes_one_page_per_command() {
    let dir = tempfile::tempdir().unwrap();
    let out_dir = dir.path().join("man1");
    let listing = stdout_of(&["man", "--out", out_dir.to_str().unwrap()]);
    let paths = command_paths();
    let mut expected: Vec<PathBuf> = paths
        .iter()
        .map(|p| out_dir.join(format!("vhdsync-{}.1", p.join("-"))))
        .chain([out_dir.join("vhdsync.1")])
        .collect();
    expected.sort();
    let mut written: Vec<PathBuf> = std::fs::read_dir(&out_dir)
        .unwrap()
        .map(|entry| entry.unwrap().path())
        .collect();
    written.sort();
    assert_eq!(written, expected, "the pages in {}", out_dir.display());
    let mut listed: Vec<PathBuf> = listing.lines().map(PathBuf::from).collect();
    listed.sort();
    assert_eq!(listed, expected, "what man --out printed");
    for page in &written {
        let roff = std::fs::read(page).unwrap();
        let name = page.file_stem().unwrap().to_str().unwrap();
        let title = format!(".TH {name} 1");
        assert!(String::from_utf8_lossy(&roff).contains(&title), "{name}");
        render_cleanly(name, &roff);
    }
    let replicate = std::fs::read_to_string(out_dir.join("vhdsync-replicate.1")).unwrap();
    assert!(replicate.contains("\\-\\-stall\\-timeout"), "{replicate}");
}

/// The page renders without a warning: groff with every warning on, else man, else skipped.
fn render_cleanly(name: &str, roff: &[u8]) {
    let mut command = if let Some(groff) = which("groff") {
        let mut c = Command::new(groff);
        c.args(["-man", "-Tutf8", "-ww", "-z"]);
        c
    } else if let Some(man) = which("man") {
        let mut c = Command::new(man);
        c.args(["-l", "-"]).env("MANPAGER", "cat");
        c
    } else {
        eprintln!("skipped rendering {name}: neither groff nor man on PATH");
        return;
    };
    let mut child = command
        .stdin(Stdio::piped())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    {
        use std::io::Write;
        child.stdin.take().unwrap().write_all(roff).unwrap();
    }
    let out = child.wait_with_output().unwrap();
    assert!(
        out.status.success() && out.stderr.is_empty(),
        "{name} does not render cleanly: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// The unit's `Key=value` lines, in order.
fn unit_settings(unit: &str) -> Vec<(String, String)> {
    unit.lines()
        .filter(|line| !line.starts_with('#') && !line.starts_with('['))
        .filter_map(|line| line.split_once('='))
        .map(|(key, value)| (key.to_owned(), value.to_owned()))
        .collect()
}

#[test]
fn the_unit_command_line_parses_with_the_real_cli() {
    let unit = contrib(UNIT);
    let settings = unit_settings(&unit);
    let exec: Vec<&str> = settings
        .iter()
        .filter(|(key, _)| key == "ExecStart")
        .map(|(_, value)| value.as_str())
        .collect();
    assert_eq!(exec.len(), 1, "{exec:?}");
    assert!(
        !exec[0].contains(['"', '\'', '\\']),
        "no quoting to interpret: {}",
        exec[0]
    );
    let dir = tempfile::tempdir().unwrap();
    let credentials = dir.path().to_str().unwrap();
    // systemd's substitutions for the instance vhdsync@nightly.service.
    let command_line = exec[0]
        .replace("${CREDENTIALS_DIRECTORY}", credentials)
        .replace("%i", "nightly");
    let words: Vec<&str> = command_line.split_whitespace().collect();
    assert_eq!(words[0], INSTALLED_BIN);
    assert_command_line_parses(&words[1..], UNIT);

    // The job file the command reads is the one the unit loads as a credential.
    let job_arg = words.iter().position(|w| *w == "--job").unwrap() + 1;
    let job_credential = Path::new(words[job_arg]).file_name().unwrap();
    let loaded: Vec<String> = settings
        .iter()
        .filter(|(key, _)| key == "LoadCredential")
        .map(|(_, value)| value.replace("%i", "nightly"))
        .collect();
    let job_line = format!(
        "{}:/etc/vhdsync/nightly.toml",
        job_credential.to_str().unwrap()
    );
    assert!(loaded.contains(&job_line), "{job_line} not in {loaded:?}");
    // Its state directory is where vhdsync's default state_dir lands.
    let env: Vec<&str> = settings
        .iter()
        .filter(|(key, _)| key == "Environment")
        .flat_map(|(_, value)| value.split_whitespace())
        .collect();
    assert!(env.contains(&"XDG_STATE_HOME=%S"), "{env:?}");
    assert!(settings.contains(&("StateDirectory".into(), "vhdsync".into())));
}

#[test]
fn the_cron_command_lines_parse_with_the_real_cli() {
    let cron = contrib(CRON);
    let mut checked = 0;
    for line in cron
        .lines()
        .filter(|l| !l.starts_with('#') && !l.contains('='))
    {
        let fields: Vec<&str> = line.split_whitespace().collect();
        if fields.is_empty() {
            continue;
        }
        // m h dom mon dow user command...
        assert!(fields.len() > 7, "{line}");
        assert_eq!(fields[6], "vhdsync", "the command of: {line}");
        let args: Vec<&str> = fields[7..]
            .iter()
            .take_while(|w| !w.starts_with('>') && !w.starts_with("2>") && **w != "||")
            .copied()
            .collect();
        assert_command_line_parses(&args, CRON);
        checked += 1;
    }
    assert_eq!(checked, 2, "replicate and status lines");
}

/// `args` (a vhdsync command line without the program) names a real command, its flags
/// exist and their values parse: with `--help` appended clap reaches the help only if every
/// argument before it parsed. Without it, the job file (absent) is the first complaint, not
/// the command line.
fn assert_command_line_parses(args: &[&str], source: &str) {
    let with_help = vhdsync(&[args, &["--help"]].concat());
    assert!(
        with_help.status.success(),
        "{source}: vhdsync {args:?}: {}",
        String::from_utf8_lossy(&with_help.stderr)
    );
    let run = vhdsync(args);
    let stderr = String::from_utf8_lossy(&run.stderr);
    let job = args[args.iter().position(|a| *a == "--job").unwrap() + 1];
    assert!(!Path::new(job).exists(), "{job}");
    assert_eq!(run.status.code(), Some(2), "{source}: {args:?}: {stderr}");
    assert!(!stderr.contains("Usage:"), "{source}: {args:?}: {stderr}");
    assert!(stderr.contains(job), "{source}: {args:?}: {stderr}");
}

#[test]
fn systemd_analyze_verifies_the_units() {
    let Some(analyze) = which("systemd-analyze") else {
        eprintln!("skipped: no systemd-analyze on PATH");
        return;
    };
    // verify needs an instance, and checks that ExecStart's program exists: point it at the
    // binary under test.
    let dir = tempfile::tempdir().unwrap();
    let service = contrib(UNIT).replace(INSTALLED_BIN, BIN);
    std::fs::write(dir.path().join("vhdsync@nightly.service"), service).unwrap();
    std::fs::write(dir.path().join("vhdsync@nightly.timer"), contrib(TIMER)).unwrap();
    let out = Command::new(analyze)
        .current_dir(dir.path())
        .args([
            "verify",
            "--man=no",
            "vhdsync@nightly.service",
            "vhdsync@nightly.timer",
        ])
        .output()
        .unwrap();
    // Unknown keys are only warnings, with exit 0: any output fails the check.
    assert!(
        out.status.success() && out.stderr.is_empty() && out.stdout.is_empty(),
        "systemd-analyze verify: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

#[test]
fn the_container_runs_the_installed_binary_as_a_non_root_user() {
    let containerfile = contrib("contrib/Containerfile");
    let last_stage = containerfile.rsplit("\nFROM ").next().unwrap();
    assert!(
        last_stage.contains(&format!("ENTRYPOINT [\"{INSTALLED_BIN}\"]")),
        "{last_stage}"
    );
    assert!(last_stage.contains(&format!("COPY --from=build /out/vhdsync {INSTALLED_BIN}")));
    let user = last_stage
        .lines()
        .find_map(|l| l.strip_prefix("USER "))
        .expect("a USER line");
    assert!(
        !user.starts_with("0") && !user.starts_with("root"),
        "{user}"
    );
    assert!(containerfile.contains("cargo build --release --locked"));
}

/// The Kubernetes example: its job file parses as a job, its container's arguments parse
/// with the real CLI, and runs of one CronJob never overlap.
#[test]
fn the_kubernetes_cronjob_holds_a_valid_job_and_command_line() {
    const CRONJOB: &str = "contrib/kubernetes/cronjob.yaml";
    let yaml = contrib(CRONJOB);
    let job_text: String = yaml
        .lines()
        .skip_while(|l| l.trim() != "nightly.toml: |")
        .skip(1)
        .take_while(|l| l.starts_with("    ") || l.is_empty())
        .map(|l| format!("{}\n", l.get(4..).unwrap_or_default()))
        .collect();
    let job =
        vhdsync::replicate::job::Job::parse(&job_text, Path::new("/etc/vhdsync/nightly.toml"))
            .unwrap_or_else(|e| panic!("{CRONJOB}: {e}\n{job_text}"));
    assert_eq!(job.state_dir, Path::new("/var/lib/vhdsync/state"));
    let args: Vec<&str> = yaml
        .lines()
        .skip_while(|l| l.trim() != "args:")
        .skip(1)
        .map_while(|l| l.trim().strip_prefix("- "))
        .collect();
    assert_eq!(args.first(), Some(&"replicate"), "{args:?}");
    assert_command_line_parses(&args, CRONJOB);
    let vm = args.last().unwrap();
    assert!(
        job.vms.iter().any(|v| v == vm),
        "--vm {vm} is a VM of the job"
    );
    assert!(yaml.contains("concurrencyPolicy: Forbid"));
    assert!(yaml.contains("defaultMode: 0440") && yaml.contains("emptyDir: {}"));
}
