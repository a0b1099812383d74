//! The lab host's limits against an attacker (issue 17): an unauthenticated client dribbling
//! RPC bodies a byte per TCP segment cannot grow the server's memory, waiting `event.from`
//! calls hold no thread and end with their clients, an unauthenticated transfer touches no
//! task, and a cancelled task nothing runs does not stay `cancelling`.

use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

mod common;

use common::lab_pair::{BIN, Host, scratch_dir};
use serde_json::{Value as Json, json};
use tempfile::TempDir;
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::TcpStream;
use vhdsync::lab::Lab;
use vhdsync::lab::http::{LabServer, Limits};
use vhdsync::lab::rpc::MAX_WAITS_PER_SESSION;
use vhdsync::xapi::rpc::Value;

/// A JSON-RPC request as raw bytes, on a connection the server closes after answering.
fn json_rpc_request(method: &str, params: Json) -> Vec<u8> {
    let body = json!({"jsonrpc": "2.0", "id": 1, "method": method, "params": params}).to_string();
    format!(
        "POST /jsonrpc HTTP/1.1\r\nHost: lab\r\nContent-Type: application/json\r\n\
         Connection: close\r\nContent-Length: {}\r\n\r\n{body}",
        body.len()
    )
    .into_bytes()
}

/// Send `request` on a new connection and read the answer until the server closes it.
async fn exchange(addr: &str, request: &[u8]) -> String {
    let mut socket = TcpStream::connect(addr).await.unwrap();
    socket.write_all(request).await.unwrap();
    let mut answer = Vec::new();
    socket.read_to_end(&mut answer).await.unwrap();
    String::from_utf8_lossy(&answer).into_owned()
}

/// The JSON-RPC result (or error) of `method`, within `limit`.
async fn call_within(addr: &str, limit: Duration, method: &str, params: Json) -> Json {
    let answer = tokio::time::timeout(limit, exchange(addr, &json_rpc_request(method, params)))
        .await
        .unwrap_or_else(|_| panic!("{method} was not answered within {limit:?}"));
    let (_, body) = answer
        .split_once("\r\n\r\n")
        .unwrap_or_else(|| panic!("{method}: {answer:?}"));
    serde_json::from_str(body).unwrap_or_else(|e| panic!("{method}: {e}: {body:?}"))
}

async fn login(addr: &str) -> String {
    let answer = call_within(
        addr,
        Duration::from_secs(10),
        "session.login_with_password",
        json!(["root", "lab"]),
    )
    .await;
    answer["result"]
        .as_str()
        .unwrap_or_else(|| panic!("login: {answer}"))
        .to_owned()
}

/// A lab host without VMs served in-process with `limits`, and its `host:port`.
async fn serve_with(limits: Limits) -> (TempDir, LabServer, String) {
    let dir = scratch_dir();
    Lab::init(dir.path(), "lab", &[]).unwrap();
    let lab = Lab::open(dir.path()).unwrap();
    let server = LabServer::start_with_limits(lab, "127.0.0.1:0".parse().unwrap(), false, limits)
        .await
        .unwrap();
    let addr = server.local_addr().to_string();
    (dir, server, addr)
}

/// `vhdsync lab serve` in a fresh lab: the child (killed on drop) and its `host:port`.
struct Served {
    child: Child,
    _dir: TempDir,
}

impl Drop for Served {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

async fn lab_serve() -> (Served, String) {
    let dir = scratch_dir();
    let init = Command::new(BIN)
        .args(["lab", "init", "--dir"])
        .arg(dir.path())
        .output()
        .unwrap();
    assert!(init.status.success(), "{init:?}");
    let mut child = Command::new(BIN)
        .args(["lab", "serve", "--dir"])
        .arg(dir.path())
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let stdout = tokio::process::ChildStdout::from_std(child.stdout.take().unwrap()).unwrap();
    let mut first = String::new();
    BufReader::new(stdout).read_line(&mut first).await.unwrap();
    let addr = first.trim().trim_start_matches("http://").to_owned();
    (Served { child, _dir: dir }, addr)
}

/// A `VmRSS`-style field of `/proc/PID/status`, in bytes.
fn memory(pid: u32, field: &str) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    let line = status
        .lines()
        .find(|l| l.starts_with(field))
        .unwrap_or_else(|| panic!("no {field} in /proc/{pid}/status"));
    let kib: u64 = line
        .split_whitespace()
        .nth(1)
        .and_then(|n| n.parse().ok())
        .unwrap();
    kib << 10
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rpc_bodies_dribbled_a_byte_per_segment_do_not_grow_the_servers_memory() {
    const CONNECTIONS: usize = 64;
    const BYTES_EACH: usize = 5000;
    const MIB: u64 = 1 << 20;
    let (served, addr) = lab_serve().await;
    let pid = served.child.id();
    login(&addr).await;
    tokio::time::sleep(Duration::from_millis(200)).await;
    let baseline = memory(pid, "VmRSS:");

    let mut dribblers = Vec::new();
    for _ in 0..CONNECTIONS {
        let mut socket = TcpStream::connect(&addr).await.unwrap();
        socket.set_nodelay(true).unwrap();
        socket
            .write_all(
                b"POST /jsonrpc HTTP/1.1\r\nHost: lab\r\nContent-Type: application/json\r\n\
                  Content-Length: 1000000\r\n\r\n",
            )
            .await
            .unwrap();
        dribblers.push(socket);
    }
    // A byte per connection per round: each byte leaves in a segment of its own and the
    // server reads it on its own.
    let mut peak = baseline;
    let mut logged_in_meanwhile = false;
    for round in 0..BYTES_EACH {
        for socket in &mut dribblers {
            socket.write_all(b" ").await.unwrap();
        }
        tokio::task::yield_now().await;
        if round % 250 == 0 {
            peak = peak.max(memory(pid, "VmRSS:"));
        }
        if round == BYTES_EACH / 2 {
            // A legitimate client is served in the middle of it.
            login(&addr).await;
            logged_in_meanwhile = true;
        }
    }
    tokio::time::sleep(Duration::from_millis(500)).await;
    peak = peak.max(memory(pid, "VmRSS:")).max(memory(pid, "VmHWM:"));
    let growth = peak.saturating_sub(baseline);
    println!(
        "{} bytes dribbled on {CONNECTIONS} connections: RSS {} MiB -> peak {} MiB",
        CONNECTIONS * BYTES_EACH,
        baseline / MIB,
        peak / MIB
    );
    assert!(logged_in_meanwhile);
    assert!(
        growth < 64 * MIB,
        "the server grew by {} MiB for {} bytes received",
        growth / MIB,
        CONNECTIONS * BYTES_EACH
    );
    drop(dribblers);
    login(&addr).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_body_that_takes_too_long_is_answered_408_and_its_connection_closed() {
    let limits = Limits {
        body_timeout: Duration::from_secs(1),
        ..Limits::default()
    };
    let (_dir, _server, addr) = serve_with(limits).await;
    let mut socket = TcpStream::connect(&addr).await.unwrap();
    socket
        .write_all(b"POST /jsonrpc HTTP/1.1\r\nHost: lab\r\nContent-Length: 100\r\n\r\n{")
        .await
        .unwrap();
    let started = Instant::now();
    let mut answer = Vec::new();
    tokio::time::timeout(Duration::from_secs(10), async {
        // Keep dribbling: only the time the whole body takes matters.
        loop {
            let mut chunk = [0u8; 1024];
            tokio::select! {
                read = socket.read(&mut chunk) => match read {
                    Ok(0) | Err(_) => break,
                    Ok(n) => answer.extend_from_slice(&chunk[..n]),
                },
                () = tokio::time::sleep(Duration::from_millis(100)) => {
                    let _ = socket.write_all(b" ").await;
                }
            }
        }
    })
    .await
    .expect("the connection was closed");
    let answer = String::from_utf8_lossy(&answer);
    assert!(answer.starts_with("HTTP/1.1 408"), "{answer:?}");
    assert!(started.elapsed() < Duration::from_secs(5));
    login(&addr).await;
}

/// The error code of a JSON-RPC answer, `None` for a result.
fn error_code(answer: &Json) -> Option<String> {
    let error = answer.get("error")?;
    Some(error.to_string())
}

#[test]
fn waiting_event_from_calls_hold_no_thread_end_with_their_clients_and_are_capped_per_session() {
    // Few blocking threads: waits that held one each (as they did) would starve every call.
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .max_blocking_threads(8)
        .enable_all()
        .build()
        .unwrap();
    // Waits left over by a failure must not keep the runtime from dropping.
    let outcome = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
        runtime.block_on(async {
            let (_dir, _server, addr) = serve_with(Limits::default()).await;
            let prompt = Duration::from_secs(5);
            let sessions = [login(&addr).await, login(&addr).await];
            let now = call_within(
                &addr,
                prompt,
                "event.from",
                json!([sessions[0], ["vm"], "", 0.0]),
            )
            .await;
            let token = now["result"]["token"].as_str().unwrap().to_owned();
            let wait = |session: &str| {
                json_rpc_request("event.from", json!([session, ["vm"], token, 3600.0]))
            };

            let mut waiting = Vec::new();
            for session in &sessions {
                for _ in 0..MAX_WAITS_PER_SESSION {
                    let mut socket = TcpStream::connect(&addr).await.unwrap();
                    socket.write_all(&wait(session)).await.unwrap();
                    waiting.push(socket);
                }
            }
            tokio::time::sleep(Duration::from_millis(500)).await;
            let refused = tokio::time::timeout(prompt, exchange(&addr, &wait(&sessions[0])))
                .await
                .expect("a wait beyond the session's share is refused at once");
            assert!(refused.contains("TOO_BUSY"), "{refused}");
            // Calls are served throughout.
            for _ in 0..5 {
                let vms = call_within(&addr, prompt, "VM.get_all", json!([sessions[1]])).await;
                assert!(vms["result"].is_array(), "{vms}");
            }

            // Waits end when their clients go away: their places are given back.
            drop(waiting);
            let deadline = Instant::now() + prompt;
            for session in &sessions {
                loop {
                    let answer = call_within(
                        &addr,
                        prompt,
                        "event.from",
                        json!([session, ["vm"], token, 0.0]),
                    )
                    .await;
                    if error_code(&answer).is_none() {
                        break;
                    }
                    assert!(
                        Instant::now() < deadline,
                        "the waits still hold their places: {answer}"
                    );
                    tokio::time::sleep(Duration::from_millis(50)).await;
                }
            }

            // A wait ends when its session does, as xapi's does.
            let mut socket = TcpStream::connect(&addr).await.unwrap();
            socket.write_all(&wait(&sessions[0])).await.unwrap();
            tokio::time::sleep(Duration::from_millis(200)).await;
            call_within(&addr, prompt, "session.logout", json!([sessions[0]])).await;
            let mut answer = Vec::new();
            tokio::time::timeout(prompt, socket.read_to_end(&mut answer))
                .await
                .expect("the wait of a session logged out ends")
                .unwrap();
            let answer = String::from_utf8_lossy(&answer);
            assert!(answer.contains("SESSION_INVALID"), "{answer}");
        })
    }));
    runtime.shutdown_background();
    if let Err(panic) = outcome {
        std::panic::resume_unwind(panic);
    }
}

async fn task_status(host: &Host, task: &str) -> String {
    host.text("task.get_status", &[task]).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unauthenticated_transfer_leaves_its_task_alone() {
    let host = Host::start(&[("web01", &[4 << 20])]).await;
    let addr = host.server.local_addr().to_string();
    let vdi = host.report.vms[0].disks[0].vdi.reference.clone();
    let task = host.text("task.create", &["export", ""]).await;
    for credentials in ["", "&session_id=OpaqueRef:forged"] {
        let request = format!(
            "GET /export_raw_vdi?vdi={vdi}&format=raw&task_id={task}{credentials} HTTP/1.1\r\n\
             Host: lab\r\nConnection: close\r\n\r\n"
        );
        let answer = exchange(&addr, request.as_bytes()).await;
        assert!(answer.starts_with("HTTP/1.1 401"), "{answer:?}");
        assert_eq!(
            task_status(&host, &task).await,
            "pending",
            "{credentials:?}"
        );
    }
    let request = format!(
        "PUT /import_raw_vdi?vdi={vdi}&format=raw&task_id={task} HTTP/1.1\r\n\
         Host: lab\r\nConnection: close\r\nContent-Length: 512\r\n\r\n"
    );
    let answer = exchange(&addr, request.as_bytes()).await;
    assert!(answer.starts_with("HTTP/1.1 401"), "{answer:?}");
    assert_eq!(task_status(&host, &task).await, "pending");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cancelled_tasks_end_cancelled_whether_or_not_a_transfer_runs_them() {
    // Far more than the socket buffers and the export's channel hold.
    let host = Host::start(&[("web01", &[256 << 20])]).await;
    let addr = host.server.local_addr().to_string();
    let session = host.client.session_id().expose().to_owned();
    let vdi = host.report.vms[0].disks[0].vdi.reference.clone();

    // A task no transfer took (a copy whose other side failed first) ends at once.
    let idle = host.text("task.create", &["import", ""]).await;
    host.call("task.cancel", vec![Value::from(idle.as_str())])
        .await;
    assert_eq!(task_status(&host, &idle).await, "cancelled");
    let error = host
        .call("task.get_error_info", vec![Value::from(idle.as_str())])
        .await;
    assert_eq!(
        error,
        Value::from(vec!["TASK_CANCELLED".to_owned(), idle.clone()])
    );

    // A running export, stalled by a client that does not read, is ended by its handler.
    let running = host.text("task.create", &["export", ""]).await;
    let mut export = TcpStream::connect(&addr).await.unwrap();
    export
        .write_all(
            format!(
                "GET /export_raw_vdi?vdi={vdi}&format=raw&task_id={running}&session_id={session} \
                 HTTP/1.1\r\nHost: lab\r\n\r\n"
            )
            .as_bytes(),
        )
        .await
        .unwrap();
    let mut head = [0u8; 12];
    export.read_exact(&mut head).await.unwrap();
    assert_eq!(&head, b"HTTP/1.0 200");
    host.call("task.cancel", vec![Value::from(running.as_str())])
        .await;
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let status = task_status(&host, &running).await;
        if status != "pending" && status != "cancelling" {
            assert_eq!(status, "cancelled");
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the export's task is still {status}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    drop(export);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connections_beyond_the_cap_wait_for_a_place_which_idle_ones_give_up() {
    let limits = Limits {
        max_connections: 4,
        header_timeout: Duration::from_secs(1),
        ..Limits::default()
    };
    let (_dir, _server, addr) = serve_with(limits).await;
    let mut idle = Vec::new();
    for _ in 0..limits.max_connections {
        let mut socket = TcpStream::connect(&addr).await.unwrap();
        socket
            .write_all(b"POST /jsonrpc HTTP/1.1\r\n")
            .await
            .unwrap();
        idle.push(socket);
    }
    tokio::time::sleep(Duration::from_millis(100)).await;
    let started = Instant::now();
    login(&addr).await;
    let waited = started.elapsed();
    println!("a login behind {} idle connections: {waited:?}", idle.len());
    assert!(
        waited >= Duration::from_millis(500),
        "served at once: {waited:?}"
    );
    assert!(waited < Duration::from_secs(5), "{waited:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn large_rpc_bodies_held_half_sent_share_a_budget_and_small_calls_still_pass() {
    let (_dir, _server, addr) = serve_with(Limits::default()).await;
    let almost = vhdsync::lab::http::MAX_RPC_BODY - 1;
    let head = format!(
        "POST /jsonrpc HTTP/1.1\r\nHost: lab\r\nContent-Type: application/json\r\n\
         Content-Length: {}\r\n\r\n",
        almost + 1
    );
    let filler = vec![b' '; almost];
    let mut held = Vec::new();
    let mut refused = None;
    for n in 0..64 {
        let mut socket = TcpStream::connect(&addr).await.unwrap();
        socket.write_all(head.as_bytes()).await.unwrap();
        // The server may refuse (and stop reading) before all of it is written.
        let _ = socket.write_all(&filler).await;
        let mut answer = [0u8; 12];
        match tokio::time::timeout(Duration::from_millis(300), socket.read_exact(&mut answer)).await
        {
            Ok(Ok(_)) => {
                refused = Some((n, String::from_utf8_lossy(&answer).into_owned()));
                break;
            }
            _ => held.push(socket),
        }
    }
    let (n, status) = refused.expect("the budget ran out");
    println!("body {n} refused: {status}");
    assert_eq!(status, "HTTP/1.1 503");
    assert!(
        (30..=36).contains(&n),
        "32 MiB shared, about 1 MiB each: {n}"
    );
    login(&addr).await;
}
