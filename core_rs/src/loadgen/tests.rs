//! The engine against a real hyper server (HTTP/1.1 and h2c) on loopback, on its own thread.
use super::*;
use bytes::Bytes;
use http_body_util::Full;
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo};
use std::convert::Infallible;

/// Serve `status` after `delay` on a free loopback port; returns the port. Lives until the test ends.
fn server(status: u16, delay: Duration) -> u16 {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    listener.set_nonblocking(true).unwrap();
    std::thread::spawn(move || {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        rt.block_on(async move {
            let listener = tokio::net::TcpListener::from_std(listener).unwrap();
            loop {
                let (stream, _) = listener.accept().await.unwrap();
                tokio::spawn(async move {
                    let svc = service_fn(move |_req| async move {
                        tokio::time::sleep(delay).await;
                        let mut resp = http::Response::new(Full::new(Bytes::from_static(b"hello")));
                        *resp.status_mut() = http::StatusCode::from_u16(status).unwrap();
                        Ok::<_, Infallible>(resp)
                    });
                    let _ = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new())
                        .serve_connection(TokioIo::new(stream), svc)
                        .await;
                });
            }
        });
    });
    port
}

fn cfg(urls: Vec<String>, rate: Option<f64>, ms: u64) -> Config {
    Config {
        urls,
        rate,
        duration: Duration::from_millis(ms),
        warmup: Duration::from_millis(100),
        connections: 4,
        threads: 2,
        http2: false,
        method: "GET".into(),
        headers: vec![("X-Test".into(), "1".into())],
        body: Bytes::new(),
        timeout: Duration::from_secs(2),
    }
}

fn go(c: &Config) -> Report {
    match run(c, |_p| Ok::<(), ()>(())) {
        Ok(r) => r,
        Err(e) => panic!("run failed: {e:?}"),
    }
}

#[test]
fn closed_loop_counts_responses_without_errors() {
    let port = server(200, Duration::ZERO);
    let r = go(&cfg(vec![format!("http://127.0.0.1:{port}/x")], None, 400));
    let s = &r.targets[0].summary;
    assert!(s.responses() > 100, "only {} responses", s.responses());
    assert_eq!(s.errors(), 0);
    assert_eq!(s.statuses.get(&200), Some(&s.responses()));
    assert_eq!(s.bytes, 5 * s.responses());
    assert!((r.duration - 0.4).abs() < 0.05, "window {}", r.duration);
}

#[test]
fn open_loop_offers_the_asked_rate_and_times_the_delay() {
    let port = server(200, Duration::from_millis(20));
    // 10 connections at 20/s each: busy 40% of the time, so most requests find their connection free.
    let mut c = cfg(vec![format!("http://127.0.0.1:{port}/")], Some(200.0), 1000);
    c.connections = 10;
    let r = go(&c);
    let t = &r.targets[0];
    // 200/s for 1 s: ~200 responses (the last few may still be in flight at the end).
    assert!(
        (180..=205).contains(&t.summary.responses()),
        "{}",
        t.summary.responses()
    );
    let p50 = t.summary.percentile_us(50.0);
    assert!((20_000..24_000).contains(&p50), "p50 {p50} µs");
    assert_eq!(t.summary.not_sent, 0);
}

#[test]
fn h2c_and_status_errors() {
    let port = server(503, Duration::ZERO);
    let mut c = cfg(vec![format!("http://127.0.0.1:{port}/")], None, 300);
    c.http2 = true;
    let r = go(&c);
    let s = &r.targets[0].summary;
    assert!(s.responses() > 50);
    assert_eq!(s.status_errors(), s.responses());
    assert_eq!(s.socket_errors, 0);
}

#[test]
fn compare_measures_both_targets_on_one_schedule() {
    let fast = server(200, Duration::ZERO);
    let slow = server(200, Duration::from_millis(5));
    let urls = vec![
        format!("http://127.0.0.1:{fast}/"),
        format!("http://127.0.0.1:{slow}/"),
    ];
    let r = go(&cfg(urls, Some(100.0), 500));
    let (a, b) = (&r.targets[0].summary, &r.targets[1].summary);
    assert!((45..=52).contains(&a.responses()), "{}", a.responses());
    assert!((45..=52).contains(&b.responses()), "{}", b.responses());
    assert!(b.percentile_us(50.0) > a.percentile_us(50.0) + 4_000);
}

#[test]
fn impossible_rate_reports_what_was_not_sent() {
    let port = server(200, Duration::from_millis(2));
    let mut c = cfg(
        vec![format!("http://127.0.0.1:{port}/")],
        Some(100_000.0),
        300,
    );
    c.connections = 1;
    c.threads = 1;
    let r = go(&c);
    let t = &r.targets[0];
    assert!(t.rate < 1_000.0, "rate {}", t.rate);
    assert!(
        t.summary.not_sent > 10_000,
        "not sent {}",
        t.summary.not_sent
    );
}

#[test]
fn unreachable_and_bad_config_are_clear_errors() {
    let port = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        l.local_addr().unwrap().port()
    };
    let url = format!("http://127.0.0.1:{port}/");
    match run(&cfg(vec![url.clone()], None, 100), |_p| Ok::<(), ()>(())) {
        Err(Error::Unreachable(m)) => assert!(m.starts_with(&url) && m.contains("refused"), "{m}"),
        other => panic!("expected Unreachable, got {:?}", other.err()),
    }
    let mut c = cfg(vec![url], None, 100);
    c.connections = 0;
    match run(&c, |_p| Ok::<(), ()>(())) {
        Err(Error::Config(m)) => assert!(m.contains("connections"), "{m}"),
        other => panic!("expected Config, got {:?}", other.err()),
    }
}

#[test]
fn a_failing_poll_stops_the_run_early() {
    let port = server(200, Duration::ZERO);
    let started = Instant::now();
    let mut polls = 0;
    let res = run(
        &cfg(vec![format!("http://127.0.0.1:{port}/")], None, 10_000),
        |p| {
            polls += 1;
            let _ = p.targets();
            if polls > 3 {
                Err("stop")
            } else {
                Ok(())
            }
        },
    );
    assert!(matches!(res, Err(Error::Stopped("stop"))));
    assert!(started.elapsed() < Duration::from_secs(2));
}

#[test]
fn a_target_that_does_not_speak_h2c_is_refused_up_front() {
    // An HTTP/1.1-only server: whatever it reads, it answers with an HTTP/1.1 response.
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    std::thread::spawn(move || {
        use std::io::{Read, Write};
        for mut s in listener.incoming().flatten() {
            let mut buf = [0u8; 4096];
            if s.read(&mut buf).unwrap_or(0) > 0 {
                let _ = s.write_all(b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nok");
            }
        }
    });
    let url = format!("http://127.0.0.1:{port}/");
    let mut c = cfg(vec![url.clone()], None, 100);
    c.http2 = true;
    match run(&c, |_p| Ok::<(), ()>(())) {
        Err(Error::Unreachable(m)) => {
            assert!(
                m.starts_with(&format!("{url}: first h2c request failed")),
                "{m}"
            )
        }
        other => panic!("expected Unreachable, got {:?}", other.err()),
    }
}
