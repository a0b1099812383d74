//! RPC calls reuse their HTTP/1.1 connection, and fall back to new ones when the host closes
//! them: against a fake host that counts the connections it accepts.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::TcpListener;
use vhdsync::xapi::HostUrl;
use vhdsync::xapi::client::XapiClient;
use vhdsync::xapi::rpc::Value;
use vhdsync::xapi::tls::Trust;

#[derive(Clone, Copy)]
enum HostManner {
    /// Keeps every connection open.
    KeepAlive,
    /// Answers `Connection: close` and closes.
    CloseEach,
    /// Closes a connection that stays idle this long.
    IdleTimeout(Duration),
}

struct FakeHost {
    url: HostUrl,
    connections: Arc<AtomicUsize>,
    requests: Arc<AtomicUsize>,
}

/// One request's head and body, or `None` at the end of the connection.
async fn read_request<R: AsyncBufReadExt + Unpin>(reader: &mut R) -> Option<Vec<u8>> {
    let mut length = 0usize;
    let mut line = String::new();
    loop {
        line.clear();
        if reader.read_line(&mut line).await.ok()? == 0 {
            return None;
        }
        if line == "\r\n" {
            break;
        }
        if let Some((name, value)) = line.split_once(':')
            && name.eq_ignore_ascii_case("content-length")
        {
            length = value.trim().parse().ok()?;
        }
    }
    let mut body = vec![0u8; length];
    reader.read_exact(&mut body).await.ok()?;
    Some(body)
}

async fn fake_host(manner: HostManner) -> FakeHost {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let address = listener.local_addr().unwrap();
    let connections = Arc::new(AtomicUsize::new(0));
    let requests = Arc::new(AtomicUsize::new(0));
    let (accepted, answered) = (connections.clone(), requests.clone());
    tokio::spawn(async move {
        while let Ok((socket, _)) = listener.accept().await {
            accepted.fetch_add(1, Ordering::SeqCst);
            let answered = answered.clone();
            tokio::spawn(async move {
                let (read, mut write) = socket.into_split();
                let mut reader = BufReader::new(read);
                loop {
                    let request = match manner {
                        // Past the idle time the host closes: no request.
                        HostManner::IdleTimeout(idle) => {
                            tokio::time::timeout(idle, read_request(&mut reader))
                                .await
                                .ok()
                                .flatten()
                        }
                        _ => read_request(&mut reader).await,
                    };
                    if request.is_none() {
                        return;
                    }
                    answered.fetch_add(1, Ordering::SeqCst);
                    let body = r#"{"jsonrpc":"2.0","id":0,"result":"OpaqueRef:fake"}"#;
                    let close = matches!(manner, HostManner::CloseEach);
                    let head = format!(
                        "HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: {}\r\n{}\r\n",
                        body.len(),
                        if close { "Connection: close\r\n" } else { "" }
                    );
                    let answer = [head.as_bytes(), body.as_bytes()].concat();
                    if write.write_all(&answer).await.is_err() || close {
                        return;
                    }
                }
            });
        }
    });
    FakeHost {
        url: HostUrl::parse(&format!("http://root:pw@{address}")).unwrap(),
        connections,
        requests,
    }
}

async fn client(host: &FakeHost) -> XapiClient {
    XapiClient::connect(host.url.clone(), &Trust::Insecure, None)
        .await
        .unwrap()
}

async fn calls(client: &XapiClient, count: usize, apart: Duration) {
    for _ in 0..count {
        let answer = client
            .call("VM.add_to_other_config", vec![Value::from("OpaqueRef:vm")])
            .await
            .unwrap();
        assert_eq!(answer, Value::from("OpaqueRef:fake"));
        tokio::time::sleep(apart).await;
    }
}

#[tokio::test]
async fn calls_share_one_connection_to_a_host_that_keeps_it_open() {
    let host = fake_host(HostManner::KeepAlive).await;
    let client = client(&host).await;
    calls(&client, 20, Duration::ZERO).await;
    assert_eq!(host.requests.load(Ordering::SeqCst), 21);
    assert_eq!(host.connections.load(Ordering::SeqCst), 1);
}

#[tokio::test]
async fn a_host_that_closes_after_each_answer_gets_a_new_connection_per_call() {
    let host = fake_host(HostManner::CloseEach).await;
    let client = client(&host).await;
    calls(&client, 10, Duration::ZERO).await;
    assert_eq!(host.requests.load(Ordering::SeqCst), 11);
    assert_eq!(host.connections.load(Ordering::SeqCst), 11);
}

#[tokio::test]
async fn a_connection_the_host_closed_while_idle_is_replaced() {
    let host = fake_host(HostManner::IdleTimeout(Duration::from_millis(50))).await;
    let client = client(&host).await;
    // Two calls back to back share a connection; the host drops it during each pause.
    for _ in 0..4 {
        calls(&client, 2, Duration::ZERO).await;
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
    assert_eq!(host.requests.load(Ordering::SeqCst), 9);
    assert_eq!(host.connections.load(Ordering::SeqCst), 4);
}
