//! `upstream::configure_pool` is applied: the idle cap per target and the idle timeout. Its own
//! test binary (its own process): the pool settings are process-wide, and the unit tests in the
//! library rely on the defaults while they run in parallel.
use _core::upstream::{self, SendBody, Target, UpstreamRequest};
use bytes::Bytes;
use http::{HeaderMap, Method};
use http_body_util::BodyExt;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpListener;

const T: Duration = Duration::from_secs(5);

/// An upstream that answers every request `ok` on a keep-alive connection; counts connections.
async fn upstream() -> (u16, Arc<AtomicUsize>) {
    let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = l.local_addr().unwrap().port();
    let conns = Arc::new(AtomicUsize::new(0));
    let seen = conns.clone();
    tokio::spawn(async move {
        loop {
            let (mut s, _) = l.accept().await.unwrap();
            seen.fetch_add(1, Ordering::SeqCst);
            tokio::spawn(async move {
                let mut buf = Vec::new();
                loop {
                    while let Some(end) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
                        buf.drain(..end + 4);
                        let ok = b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nok";
                        if s.write_all(ok).await.is_err() {
                            return;
                        }
                    }
                    let mut tmp = [0u8; 1024];
                    match s.read(&mut tmp).await {
                        Ok(0) | Err(_) => return,
                        Ok(n) => buf.extend_from_slice(&tmp[..n]),
                    }
                }
            });
        }
    });
    (port, conns)
}

async fn get(port: u16) -> http::Response<upstream::UpstreamBody> {
    let target = Target {
        host: "127.0.0.1",
        port,
        tls: None,
    };
    let headers = HeaderMap::new();
    let req = UpstreamRequest {
        method: &Method::GET,
        path_and_query: "/",
        headers: &headers,
        extra: &[],
        body: SendBody::<http_body_util::Empty<Bytes>>::Empty,
        batch: false,
        raw_headers: None,
    };
    upstream::send(&target, req, T, T).await.unwrap()
}

async fn read_to_end(r: http::Response<upstream::UpstreamBody>) {
    let body = r.into_body().collect().await.unwrap().to_bytes();
    assert_eq!(&body[..], b"ok");
}

/// Two requests in flight at once need two connections; when both end, the pool keeps what the
/// settings allow.
async fn two_at_once(port: u16) {
    let a = get(port).await;
    let b = get(port).await;
    read_to_end(a).await;
    read_to_end(b).await;
}

#[tokio::test(flavor = "current_thread")]
async fn pool_settings_are_applied() {
    let (port, conns) = upstream().await;
    upstream::configure_pool(1, Duration::from_secs(60));
    two_at_once(port).await;
    assert_eq!(conns.load(Ordering::SeqCst), 2);
    // Only one of the two was kept idle: the next pair reuses it and opens one more.
    two_at_once(port).await;
    assert_eq!(conns.load(Ordering::SeqCst), 3);

    // The idle timeout: a connection idle for longer is not reused...
    upstream::configure_pool(1, Duration::from_millis(100));
    tokio::time::sleep(Duration::from_millis(300)).await;
    read_to_end(get(port).await).await;
    assert_eq!(conns.load(Ordering::SeqCst), 4);
    // ... one idle for less is.
    read_to_end(get(port).await).await;
    assert_eq!(conns.load(Ordering::SeqCst), 4);

    // No idle connections at all: the one idle now is used once more, then none is kept.
    upstream::configure_pool(0, Duration::from_secs(60));
    for _ in 0..3 {
        read_to_end(get(port).await).await;
    }
    assert_eq!(conns.load(Ordering::SeqCst), 6);
}
