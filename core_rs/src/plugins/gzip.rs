//! The `gzip` plugin (APISIX's, i.e. nginx's `gzip` module): compress eligible responses on the fly.
//!
//! Which responses (nginx `ngx_http_gzip_header_filter`): status 200, 403 or 404; no body-less
//! request (HEAD); no `Content-Encoding` yet; a `Content-Type` in `types` (or any with `"*"`); a
//! known length of at least `min_length`; a request of at least `http_version`. Such a response gets
//! `Vary: Accept-Encoding` (with `vary`) whether or not this client takes gzip, since its
//! representation depends on that header. It is compressed when the request's `Accept-Encoding`
//! allows gzip: `Content-Length` and `Accept-Ranges` go, a strong `ETag` turns weak, and the body
//! is deflated as it streams (`GzipBody`): never buffered whole, flushed whenever the upstream has
//! nothing more ready, so a slow stream stays a stream.
//!
//! Generic over the response body (`apply` wraps it through `From<GzipBody<B>>`): the proxy's is
//! `GwBody`, whose `Gzip` variant holds a `GzipBody<GwBody>`, monomorphised, so this file needs
//! nothing of the proxy (plugins sit below it: docs/architecture.md, "The Rust core").
use crate::http1::BoxError;
use bytes::Bytes;
use flate2::write::GzEncoder;
use flate2::Compression;
use http::header::{self, HeaderMap, HeaderValue};
use http::{Method, Response, StatusCode, Version};
use hyper::body::{Body, Frame, SizeHint};
use serde::Deserialize;
use std::io::Write;
use std::pin::Pin;
use std::task::{Context, Poll};

/// A route's compiled `gzip` conf.
#[derive(Debug)]
pub struct GzipConf {
    /// Lowercase MIME types without parameters; `None` for `"*"` (any type).
    types: Option<Vec<String>>,
    min_length: u64,
    level: u32,
    /// The oldest request version served compressed (`http_version`).
    min_version: Version,
    vary: bool,
}

#[derive(Deserialize)]
#[serde(untagged)]
enum Types {
    List(Vec<String>),
    Any(String),
}

/// The plugin's config as Python validated it (APISIX's schema; `buffers` is not needed here:
/// the encoder sizes its own output).
#[derive(Deserialize)]
pub(crate) struct RawConf {
    #[serde(default = "default_types")]
    types: Types,
    #[serde(default = "default_min_length")]
    min_length: u64,
    #[serde(default = "default_level")]
    comp_level: u32,
    #[serde(default = "default_version")]
    http_version: f64,
    #[serde(default)]
    vary: Option<bool>,
}

fn default_types() -> Types {
    Types::List(vec!["text/html".into()])
}
fn default_min_length() -> u64 {
    20
}
fn default_level() -> u32 {
    1
}
fn default_version() -> f64 {
    1.1
}

impl RawConf {
    /// Check what serde cannot; the error names the field (prefixed by the caller).
    pub(crate) fn compile(self) -> Result<GzipConf, String> {
        let types = match self.types {
            Types::Any(s) if s == "*" => None,
            Types::Any(s) => return Err(format!("types: expected an array or \"*\", got {s:?}")),
            Types::List(l) if l.is_empty() => {
                return Err("types: expected at least one type".into())
            }
            Types::List(l) => Some(l.iter().map(|t| t.trim().to_ascii_lowercase()).collect()),
        };
        if !(1..=9).contains(&self.comp_level) {
            return Err(format!(
                "comp_level: expected 1..9, got {}",
                self.comp_level
            ));
        }
        let min_version = if self.http_version == 1.0 {
            Version::HTTP_10
        } else if self.http_version == 1.1 {
            Version::HTTP_11
        } else {
            return Err(format!(
                "http_version: expected 1.0 or 1.1, got {}",
                self.http_version
            ));
        };
        Ok(GzipConf {
            types,
            min_length: self.min_length,
            level: self.comp_level,
            min_version,
            vary: self.vary.unwrap_or(false),
        })
    }
}

/// What the request says about compression, taken before plugins may rewrite its headers.
pub struct Ask {
    /// `Accept-Encoding` allows gzip.
    accepts: bool,
    /// HEAD, or a request older than `http_version`: never compressed.
    excluded: bool,
}

impl Ask {
    pub fn of(conf: &GzipConf, method: &Method, version: Version, headers: &HeaderMap) -> Ask {
        Ask {
            accepts: headers
                .get_all(header::ACCEPT_ENCODING)
                .iter()
                .any(|v| accepts_gzip(v.as_bytes())),
            excluded: *method == Method::HEAD || version < conf.min_version,
        }
    }
}

/// Whether an `Accept-Encoding` value allows gzip: `gzip` or `x-gzip` with q > 0, or else `*`
/// with q > 0 (RFC 9110 §12.5.3: `*` stands for any coding not listed).
pub fn accepts_gzip(value: &[u8]) -> bool {
    let Ok(value) = std::str::from_utf8(value) else {
        return false;
    };
    let mut star = None;
    for item in value.split(',') {
        let mut parts = item.split(';');
        let coding = parts.next().unwrap_or("").trim();
        let q = parts
            .filter_map(|p| p.split_once('='))
            .find(|(k, _)| k.trim().eq_ignore_ascii_case("q"))
            .map_or(1.0, |(_, v)| v.trim().parse::<f32>().unwrap_or(0.0));
        if coding.eq_ignore_ascii_case("gzip") || coding.eq_ignore_ascii_case("x-gzip") {
            return q > 0.0;
        }
        if coding == "*" {
            star = Some(q > 0.0);
        }
    }
    star.unwrap_or(false)
}

/// The response's own properties make it eligible (everything but the client's `Accept-Encoding`).
fn eligible<B: Body>(conf: &GzipConf, ask: &Ask, resp: &Response<B>) -> bool {
    let h = resp.headers();
    if ask.excluded
        || !matches!(
            resp.status(),
            StatusCode::OK | StatusCode::FORBIDDEN | StatusCode::NOT_FOUND
        )
        || h.get(header::CONTENT_ENCODING)
            .is_some_and(|v| !v.as_bytes().trim_ascii().is_empty())
    {
        return false;
    }
    // Like nginx, no Content-Type means no compression, even with "*".
    let Some(ct) = h.get(header::CONTENT_TYPE).and_then(|v| v.to_str().ok()) else {
        return false;
    };
    if let Some(types) = &conf.types {
        let mime = ct.split(';').next().unwrap_or("").trim();
        if !types.iter().any(|t| t.eq_ignore_ascii_case(mime)) {
            return false;
        }
    }
    // Unknown length (a chunked stream): compressed, as nginx does.
    let len = match h.get(header::CONTENT_LENGTH) {
        Some(v) => v.to_str().ok().and_then(|s| s.trim().parse::<u64>().ok()),
        None => resp.body().size_hint().exact(),
    };
    len.is_none_or(|n| n >= conf.min_length)
}

/// Compress `resp` if the conf, the request and the response allow it; the compressed stream is
/// wrapped back into `B` by `B::from`.
pub fn apply<B>(conf: &GzipConf, ask: &Ask, resp: Response<B>) -> Response<B>
where
    B: Body<Data = Bytes, Error = BoxError> + Unpin + From<GzipBody<B>>,
{
    if !eligible(conf, ask, &resp) {
        return resp;
    }
    let (mut parts, body) = resp.into_parts();
    let h = &mut parts.headers;
    if conf.vary && !varies_on_encoding(h) {
        h.append(header::VARY, HeaderValue::from_static("Accept-Encoding"));
    }
    if !ask.accepts {
        return Response::from_parts(parts, body);
    }
    h.remove(header::CONTENT_LENGTH);
    h.remove(header::ACCEPT_RANGES);
    h.insert(header::CONTENT_ENCODING, HeaderValue::from_static("gzip"));
    // The compressed bytes differ: a strong validator would lie (nginx weakens it too).
    if let Some(etag) = h.get(header::ETAG) {
        if etag.as_bytes().starts_with(b"\"") {
            let mut weak = b"W/".to_vec();
            weak.extend_from_slice(etag.as_bytes());
            match HeaderValue::from_bytes(&weak) {
                Ok(v) => h.insert(header::ETAG, v),
                Err(_) => h.remove(header::ETAG),
            };
        }
    }
    Response::from_parts(parts, B::from(GzipBody::new(body, conf.level)))
}

fn varies_on_encoding(h: &HeaderMap) -> bool {
    h.get_all(header::VARY).iter().any(|v| {
        v.to_str().unwrap_or("").split(',').any(|s| {
            let s = s.trim();
            s == "*" || s.eq_ignore_ascii_case("accept-encoding")
        })
    })
}

/// A gzip stream fed chunk by chunk.
pub struct Encoder {
    enc: Option<GzEncoder<Vec<u8>>>,
    /// Input written since the last flush.
    unflushed: bool,
}

impl Encoder {
    pub fn new(level: u32) -> Encoder {
        Encoder {
            enc: Some(GzEncoder::new(Vec::new(), Compression::new(level))),
            unflushed: false,
        }
    }

    pub fn write(&mut self, data: &[u8]) -> std::io::Result<()> {
        if let Some(e) = &mut self.enc {
            e.write_all(data)?;
            self.unflushed |= !data.is_empty();
        }
        Ok(())
    }

    /// Compressed bytes produced so far (not necessarily all the input written).
    pub fn pending(&self) -> usize {
        self.enc.as_ref().map_or(0, |e| e.get_ref().len())
    }

    /// Take what is ready; with `sync`, first emit everything written so far (a sync flush, so
    /// the client can decompress it now).
    pub fn take(&mut self, sync: bool) -> std::io::Result<Bytes> {
        let Some(e) = &mut self.enc else {
            return Ok(Bytes::new());
        };
        if sync && self.unflushed {
            e.flush()?;
            self.unflushed = false;
        }
        Ok(Bytes::from(std::mem::take(e.get_mut())))
    }

    /// The rest of the stream with the gzip trailer; later calls give nothing.
    pub fn finish(&mut self) -> std::io::Result<Bytes> {
        match self.enc.take() {
            Some(e) => e.finish().map(Bytes::from),
            None => Ok(Bytes::new()),
        }
    }
}

/// Hand out compressed output once this much is ready, without waiting for a flush.
const OUT_BATCH: usize = 32 * 1024;
/// Yield to the runtime after compressing this much input in one poll (highly compressible input
/// may produce no output for a long while).
const IN_BUDGET: usize = 512 * 1024;

/// A response body compressed as it streams.
pub struct GzipBody<B> {
    inner: B,
    enc: Encoder,
    /// Trailers seen after the data: sent once the gzip trailer is out.
    trailers: Option<HeaderMap>,
    done: bool,
}

impl<B> GzipBody<B> {
    pub fn new(inner: B, level: u32) -> GzipBody<B> {
        GzipBody {
            inner,
            enc: Encoder::new(level),
            trailers: None,
            done: false,
        }
    }

    fn end(&mut self) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        self.done = true;
        let out = self.enc.finish()?;
        if out.is_empty() {
            return Poll::Ready(self.trailers.take().map(|t| Ok(Frame::trailers(t))));
        }
        ready(out)
    }
}

impl<B: Body<Data = Bytes, Error = BoxError> + Unpin> Body for GzipBody<B> {
    type Data = Bytes;
    type Error = BoxError;

    fn is_end_stream(&self) -> bool {
        self.done && self.trailers.is_none()
    }

    fn size_hint(&self) -> SizeHint {
        SizeHint::default()
    }

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        let this = self.get_mut();
        if this.done {
            return Poll::Ready(this.trailers.take().map(|t| Ok(Frame::trailers(t))));
        }
        let mut read = 0usize;
        loop {
            match Pin::new(&mut this.inner).poll_frame(cx) {
                Poll::Ready(Some(Ok(frame))) => match frame.into_data() {
                    Ok(data) => {
                        read += data.len();
                        this.enc.write(&data)?;
                        if this.enc.pending() >= OUT_BATCH {
                            return ready(this.enc.take(false)?);
                        }
                        if read >= IN_BUDGET {
                            cx.waker().wake_by_ref();
                            return Poll::Pending;
                        }
                    }
                    Err(frame) => {
                        this.trailers = frame.into_trailers().ok();
                        return this.end();
                    }
                },
                Poll::Ready(Some(Err(e))) => return Poll::Ready(Some(Err(e))),
                Poll::Ready(None) => return this.end(),
                // Nothing more ready now: send all we have so the client is not kept waiting.
                Poll::Pending => {
                    let out = this.enc.take(true)?;
                    return if out.is_empty() {
                        Poll::Pending
                    } else {
                        ready(out)
                    };
                }
            }
        }
    }
}

fn ready(b: Bytes) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
    Poll::Ready(Some(Ok(Frame::data(b))))
}

#[cfg(test)]
mod tests {
    use super::*;
    use flate2::write::GzDecoder;
    use http_body_util::BodyExt;

    /// A response body of the caller's kind (the proxy's is `GwBody`): one frame of bytes, or a
    /// compressed stream of another.
    enum TestBody {
        Full(Option<Bytes>),
        Gzip(Box<GzipBody<TestBody>>),
    }

    impl TestBody {
        fn full(b: impl Into<Bytes>) -> TestBody {
            TestBody::Full(Some(b.into()))
        }
    }

    impl From<GzipBody<TestBody>> for TestBody {
        fn from(g: GzipBody<TestBody>) -> TestBody {
            TestBody::Gzip(Box::new(g))
        }
    }

    impl Body for TestBody {
        type Data = Bytes;
        type Error = BoxError;

        fn poll_frame(
            self: Pin<&mut Self>,
            cx: &mut Context<'_>,
        ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
            match self.get_mut() {
                TestBody::Full(b) => Poll::Ready(b.take().map(|b| Ok(Frame::data(b)))),
                TestBody::Gzip(g) => Pin::new(&mut **g).poll_frame(cx),
            }
        }

        fn size_hint(&self) -> SizeHint {
            match self {
                TestBody::Full(b) => SizeHint::with_exact(b.as_ref().map_or(0, |b| b.len() as u64)),
                TestBody::Gzip(g) => g.size_hint(),
            }
        }
    }

    #[test]
    fn accept_encoding_parser() {
        for yes in [
            "gzip",
            "GZIP",
            "deflate, gzip",
            "gzip;q=0.5",
            "br;q=1.0, gzip; q=0.001",
            "x-gzip",
            "*",
            "br, *;q=0.1",
            "gzip ; Q=1",
        ] {
            assert!(accepts_gzip(yes.as_bytes()), "{yes}");
        }
        for no in [
            "",
            "identity",
            "br, deflate",
            "gzip;q=0",
            "gzip;q=0.000",
            "gzip;q=0, *",
            "*;q=0",
            "gzipx",
            "gzip;q=abc",
        ] {
            assert!(!accepts_gzip(no.as_bytes()), "{no}");
        }
        assert!(!accepts_gzip(b"gzip\xff"));
    }

    fn gunzip(data: &[u8]) -> Vec<u8> {
        let mut d = GzDecoder::new(Vec::new());
        d.write_all(data).unwrap();
        d.flush().unwrap();
        std::mem::take(d.get_mut())
    }

    #[test]
    fn encoder_sync_flush_makes_each_chunk_readable() {
        let mut enc = Encoder::new(1);
        let mut sent = Vec::new();
        let mut seen = Vec::new();
        for i in 0..5 {
            let chunk = format!("chunk {i} {}\n", "abc".repeat(i * 10));
            enc.write(chunk.as_bytes()).unwrap();
            sent.extend_from_slice(chunk.as_bytes());
            seen.extend_from_slice(&enc.take(true).unwrap());
            // Everything written so far decodes from the output so far.
            assert_eq!(gunzip(&seen), sent);
        }
        seen.extend_from_slice(&enc.finish().unwrap());
        let mut full = Vec::new();
        std::io::Read::read_to_end(&mut flate2::read::GzDecoder::new(&seen[..]), &mut full)
            .unwrap();
        assert_eq!(full, sent);
        assert!(enc.finish().unwrap().is_empty());
    }

    #[test]
    fn level_changes_size() {
        let text: Vec<u8> = (0..200_000u32)
            .map(|i| b"the quick brown fox jumps"[(i.wrapping_mul(i) % 25) as usize])
            .collect();
        let size = |level| {
            let mut e = Encoder::new(level);
            e.write(&text).unwrap();
            e.finish().unwrap().len()
        };
        assert!(size(9) < size(1), "{} vs {}", size(9), size(1));
    }

    #[tokio::test(flavor = "current_thread")]
    async fn body_round_trip_and_empty() {
        let data = Bytes::from("hello gzip ".repeat(10_000));
        let body = TestBody::from(GzipBody::new(TestBody::full(data.clone()), 6));
        let out = body.collect().await.unwrap().to_bytes();
        assert!(out.len() < data.len() / 10);
        assert_eq!(gunzip(&out), data);
        let empty = TestBody::from(GzipBody::new(TestBody::Full(None), 1));
        assert_eq!(gunzip(&empty.collect().await.unwrap().to_bytes()), b"");
    }

    fn conf(raw: serde_json::Value) -> Result<GzipConf, String> {
        serde_json::from_value::<RawConf>(raw)
            .map_err(|e| e.to_string())?
            .compile()
    }

    fn resp(status: u16, headers: &[(&str, &str)], body: &str) -> Response<TestBody> {
        let mut r = Response::new(TestBody::full(body.to_string()));
        *r.status_mut() = StatusCode::from_u16(status).unwrap();
        for (k, v) in headers {
            r.headers_mut().append(
                http::HeaderName::from_bytes(k.as_bytes()).unwrap(),
                HeaderValue::from_str(v).unwrap(),
            );
        }
        r
    }

    #[test]
    fn which_responses() {
        let c = conf(serde_json::json!({"types": ["text/plain"], "min_length": 5, "vary": true}))
            .unwrap();
        let mut req = HeaderMap::new();
        req.insert(header::ACCEPT_ENCODING, HeaderValue::from_static("gzip"));
        let ask = Ask::of(&c, &Method::GET, Version::HTTP_11, &req);
        let enc = |r: &Response<TestBody>| r.headers().get(header::CONTENT_ENCODING).cloned();
        let txt = [
            ("content-type", "text/plain; charset=utf-8"),
            ("etag", "\"v1\""),
        ];
        let r = apply(&c, &ask, resp(200, &txt, "hello world"));
        assert_eq!(enc(&r).unwrap(), "gzip");
        assert_eq!(r.headers()["etag"], "W/\"v1\"");
        assert_eq!(r.headers()["vary"], "Accept-Encoding");
        assert!(enc(&apply(&c, &ask, resp(404, &txt, "hello world"))).is_some());
        for status in [201, 204, 206, 304, 500] {
            assert!(enc(&apply(&c, &ask, resp(status, &txt, "hello world"))).is_none());
        }
        assert!(enc(&apply(&c, &ask, resp(200, &txt, "hey"))).is_none()); // < min_length
        let json = [("content-type", "application/json")];
        assert!(enc(&apply(&c, &ask, resp(200, &json, "hello world"))).is_none());
        let done = [("content-type", "text/plain"), ("content-encoding", "br")];
        assert_eq!(
            enc(&apply(&c, &ask, resp(200, &done, "hello world"))).unwrap(),
            "br"
        );
        let head = Ask::of(&c, &Method::HEAD, Version::HTTP_11, &req);
        assert!(enc(&apply(&c, &head, resp(200, &txt, "hello world"))).is_none());
        let old = Ask::of(&c, &Method::GET, Version::HTTP_10, &req);
        assert!(enc(&apply(&c, &old, resp(200, &txt, "hello world"))).is_none());
        // Not accepted: plain, but still marked as varying on Accept-Encoding.
        let plain = Ask::of(&c, &Method::GET, Version::HTTP_11, &HeaderMap::new());
        let r = apply(&c, &plain, resp(200, &txt, "hello world"));
        assert!(enc(&r).is_none());
        assert_eq!(r.headers()["vary"], "Accept-Encoding");
        // "*": any type, but a Content-Type is still required.
        let any = conf(serde_json::json!({"types": "*"})).unwrap();
        assert!(enc(&apply(
            &any,
            &ask,
            resp(200, &json, "hello world, hello world")
        ))
        .is_some());
        assert!(enc(&apply(
            &any,
            &ask,
            resp(200, &[], "hello world, hello world")
        ))
        .is_none());
    }

    #[test]
    fn conf_errors_name_the_field() {
        let err = |v| conf(v).unwrap_err();
        assert!(err(serde_json::json!({"comp_level": 10})).starts_with("comp_level:"));
        assert!(err(serde_json::json!({"types": "text/html"})).starts_with("types:"));
        assert!(err(serde_json::json!({"types": []})).starts_with("types:"));
        assert!(err(serde_json::json!({"http_version": 2.0})).starts_with("http_version:"));
        let c = conf(serde_json::json!({"buffers": {"number": 4, "size": 8192}})).unwrap();
        assert_eq!(c.types, Some(vec!["text/html".to_string()]));
        assert_eq!((c.min_length, c.level, c.vary), (20, 1, false));
    }
}
