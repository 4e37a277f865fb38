//! A minimal HTTP/1.x server for `/metrics`: GET or HEAD, one request per connection,
//! `Connection: close`. Requests are bounded (8 KiB of head, 10 s to send it) and so
//! are concurrent connections (64; more are closed at once).

use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::Semaphore;

use super::Metrics;
use super::process::SelfStats;
use super::sink::lock;

const MAX_HEAD: usize = 8 << 10;
const READ_TIMEOUT: Duration = Duration::from_secs(10);
const MAX_CONNECTIONS: usize = 64;

/// The content type of the Prometheus text format.
pub const CONTENT_TYPE: &str = "text/plain; version=0.0.4; charset=utf-8";

/// Serves `metrics` on `listener` until the task is dropped or aborted.
pub async fn serve(listener: TcpListener, metrics: Arc<Mutex<Metrics>>) {
    let slots = Arc::new(Semaphore::new(MAX_CONNECTIONS));
    loop {
        let Ok((stream, _peer)) = listener.accept().await else {
            // Out of file descriptors and the like: wait a little rather than spin.
            tokio::time::sleep(Duration::from_millis(100)).await;
            continue;
        };
        let Ok(permit) = slots.clone().try_acquire_owned() else {
            drop(stream);
            continue;
        };
        let metrics = metrics.clone();
        tokio::spawn(async move {
            let _ = handle(stream, &metrics).await;
            drop(permit);
        });
    }
}

async fn handle(mut stream: TcpStream, metrics: &Mutex<Metrics>) -> std::io::Result<()> {
    let head = match tokio::time::timeout(READ_TIMEOUT, read_head(&mut stream)).await {
        Ok(Ok(Some(head))) => head,
        Ok(Ok(None)) => {
            return respond(
                &mut stream,
                431,
                "text/plain",
                b"request head too large\n",
                false,
            )
            .await;
        }
        Ok(Err(e)) => return Err(e),
        Err(_) => return Ok(()),
    };
    let (status, content_type, body, head_only) = route(&head, metrics);
    respond(&mut stream, status, content_type, &body, head_only).await
}

/// Reads up to the end of the request head; `None` when it is over [`MAX_HEAD`].
async fn read_head(stream: &mut TcpStream) -> std::io::Result<Option<String>> {
    let mut buf = Vec::with_capacity(1024);
    let mut chunk = [0u8; 1024];
    loop {
        if let Some(end) = find_end(&buf) {
            buf.truncate(end);
            return Ok(Some(String::from_utf8_lossy(&buf).into_owned()));
        }
        if buf.len() > MAX_HEAD {
            return Ok(None);
        }
        let n = stream.read(&mut chunk).await?;
        if n == 0 {
            // Closed early: answer what we have (a bare request line works too).
            return Ok(Some(String::from_utf8_lossy(&buf).into_owned()));
        }
        buf.extend_from_slice(&chunk[..n]);
    }
}

fn find_end(buf: &[u8]) -> Option<usize> {
    buf.windows(4)
        .position(|w| w == b"\r\n\r\n")
        .or_else(|| buf.windows(2).position(|w| w == b"\n\n"))
}

/// What to answer to a request head: status, content type, body, and whether only the
/// head is sent (HEAD).
pub fn route(head: &str, metrics: &Mutex<Metrics>) -> (u16, &'static str, Vec<u8>, bool) {
    let line = head.lines().next().unwrap_or("");
    let mut parts = line.split_whitespace();
    let (method, target) = (parts.next().unwrap_or(""), parts.next().unwrap_or(""));
    let path = target.split('?').next().unwrap_or("");
    let head_only = method == "HEAD";
    if method != "GET" && !head_only {
        return (405, "text/plain", b"only GET and HEAD\n".to_vec(), false);
    }
    match path {
        "/metrics" => {
            let me = SelfStats::read();
            let text = lock(metrics).render(&me);
            (200, CONTENT_TYPE, text.into_bytes(), head_only)
        }
        "/" => (
            200,
            "text/html; charset=utf-8",
            b"<html><head><title>blockprobe</title></head><body>\
              <h1>blockprobe</h1><p><a href=\"/metrics\">Metrics</a></p></body></html>\n"
                .to_vec(),
            head_only,
        ),
        "/-/healthy" | "/healthz" => (200, "text/plain", b"ok\n".to_vec(), head_only),
        _ => (
            404,
            "text/plain",
            b"not found; try /metrics\n".to_vec(),
            head_only,
        ),
    }
}

async fn respond(
    stream: &mut TcpStream,
    status: u16,
    content_type: &str,
    body: &[u8],
    head_only: bool,
) -> std::io::Result<()> {
    let reason = match status {
        200 => "OK",
        404 => "Not Found",
        405 => "Method Not Allowed",
        431 => "Request Header Fields Too Large",
        _ => "Error",
    };
    let mut out = format!(
        "HTTP/1.1 {status} {reason}\r\nContent-Type: {content_type}\r\nContent-Length: {}\r\n\
         Connection: close\r\n",
        body.len()
    );
    if status == 405 {
        out.push_str("Allow: GET, HEAD\r\n");
    }
    out.push_str("\r\n");
    let mut bytes = out.into_bytes();
    if !head_only {
        bytes.extend_from_slice(body);
    }
    stream.write_all(&bytes).await?;
    stream.shutdown().await
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::metrics::MetricsConfig;

    fn metrics() -> Arc<Mutex<Metrics>> {
        Arc::new(Mutex::new(Metrics::new(MetricsConfig {
            threshold_ns: 10_000_000,
            max_functions: 5,
            max_services: 5,
        })))
    }

    #[test]
    fn routes() {
        let m = metrics();
        let (status, ct, body, head) = route("GET /metrics HTTP/1.1\r\nHost: x", &m);
        assert_eq!((status, ct, head), (200, CONTENT_TYPE, false));
        let text = String::from_utf8(body).unwrap();
        assert!(text.contains("# TYPE blockprobe_stall_duration_seconds histogram"));
        assert!(text.contains("process_resident_memory_bytes"));
        assert_eq!(route("GET /metrics?x=1 HTTP/1.1", &m).0, 200);
        assert!(route("HEAD /metrics HTTP/1.1", &m).3);
        assert_eq!(route("POST /metrics HTTP/1.1", &m).0, 405);
        assert_eq!(route("GET /nope HTTP/1.1", &m).0, 404);
        assert_eq!(route("", &m).0, 405);
        assert_eq!(route("GET / HTTP/1.0", &m).0, 200);
    }

    /// A real connection on loopback: request, response, close.
    #[test]
    fn serves_over_tcp() {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        rt.block_on(async {
            let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
            let addr = listener.local_addr().unwrap();
            let server = tokio::spawn(serve(listener, metrics()));
            let get = |req: &'static str| async move {
                let mut s = TcpStream::connect(addr).await.unwrap();
                s.write_all(req.as_bytes()).await.unwrap();
                let mut out = String::new();
                s.read_to_string(&mut out).await.unwrap();
                out
            };
            let ok = get("GET /metrics HTTP/1.1\r\nHost: t\r\n\r\n").await;
            assert!(ok.starts_with("HTTP/1.1 200 OK\r\n"), "{ok}");
            assert!(
                ok.contains("Content-Type: text/plain; version=0.0.4"),
                "{ok}"
            );
            let (head, body) = ok.split_once("\r\n\r\n").unwrap();
            let len: usize = head
                .lines()
                .find_map(|l| l.strip_prefix("Content-Length: "))
                .unwrap()
                .parse()
                .unwrap();
            assert_eq!(body.len(), len);
            assert!(body.contains("blockprobe_build_info"));
            // An oversize head is refused (or the connection reset, as the server closes
            // with unread data).
            let mut s = TcpStream::connect(addr).await.unwrap();
            let big = format!("GET /metrics HTTP/1.1\r\nX: {}\r\n\r\n", "a".repeat(20_000));
            let _ = s.write_all(big.as_bytes()).await;
            let mut out = Vec::new();
            let _ = s.read_to_end(&mut out).await;
            assert!(
                out.is_empty() || out.starts_with(b"HTTP/1.1 431"),
                "{:?}",
                String::from_utf8_lossy(&out)
            );
            let head = get("HEAD /metrics HTTP/1.1\r\n\r\n").await;
            assert!(head.ends_with("\r\n\r\n"), "no body for HEAD: {head}");
            server.abort();
        });
    }
}
