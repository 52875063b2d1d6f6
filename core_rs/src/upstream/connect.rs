//! Opening an upstream connection (TCP, then TLS for https), and the connection itself.
use super::body::BodyState;
use super::decode::RawHead;
use super::pool::thread_token;
use super::{Target, Timer, TlsMode, UpstreamError, MIN_READ, READ_CHUNK};
use crate::http1::poll_read_into;
use crate::sys::rawtcp::RawTcp;
use bytes::BytesMut;
use std::cell::RefCell;
use std::io::{self, IoSlice};
use std::mem::MaybeUninit;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll, Waker};
use std::time::Duration;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::TcpStream;
use tokio_rustls::client::TlsStream;

thread_local! {
    static TLS_CONFIGS: RefCell<[Option<Arc<rustls::ClientConfig>>; 2]> = const { RefCell::new([None, None]) };
}

pub(super) enum Stream {
    Plain(RawTcp),
    Tls(Box<TlsStream<RawTcp>>),
}

impl Stream {
    fn tcp(&self) -> &TcpStream {
        match self {
            Stream::Plain(s) => &s.0,
            Stream::Tls(s) => &s.get_ref().0 .0,
        }
    }
}

impl AsyncRead for Stream {
    #[inline]
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Stream::Plain(s) => Pin::new(s).poll_read(cx, buf),
            Stream::Tls(s) => Pin::new(&mut **s).poll_read(cx, buf),
        }
    }
}

impl AsyncWrite for Stream {
    #[inline]
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        match self.get_mut() {
            Stream::Plain(s) => Pin::new(s).poll_write(cx, buf),
            Stream::Tls(s) => Pin::new(&mut **s).poll_write(cx, buf),
        }
    }
    #[inline]
    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        match self.get_mut() {
            Stream::Plain(s) => Pin::new(s).poll_write_vectored(cx, bufs),
            Stream::Tls(s) => Pin::new(&mut **s).poll_write_vectored(cx, bufs),
        }
    }
    fn is_write_vectored(&self) -> bool {
        true
    }
    #[inline]
    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Stream::Plain(_) => Poll::Ready(Ok(())),
            Stream::Tls(s) => Pin::new(&mut **s).poll_flush(cx),
        }
    }
    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Stream::Plain(s) => Pin::new(s).poll_shutdown(cx),
            Stream::Tls(s) => Pin::new(&mut **s).poll_shutdown(cx),
        }
    }
}

pub(super) struct Conn {
    pub(super) io: Stream,
    /// Bytes read from the upstream and not consumed yet.
    pub(super) rbuf: BytesMut,
    /// The request head being written (reused across requests).
    pub(super) wbuf: Vec<u8>,
    pub(super) host: Box<str>,
    pub(super) port: u16,
    pub(super) tls: Option<TlsMode>,
    pub(super) hash: u64,
    /// `thread_token()` of the thread whose reactor the socket is registered with.
    pub(super) owner: u64,
    /// `clock::monotonic_ms()` when it went idle.
    pub(super) idle_since_ms: u64,
    /// The response timer, kept across requests (see `within`).
    pub(super) timer: Option<Timer>,
    /// Where the response body being read stands (while an `UpstreamBody` holds the connection).
    pub(super) body: BodyState,
    /// The connection may go back to the pool once that body is read to its end.
    pub(super) reusable: bool,
    /// The response's headers as lines, when it was read with `raw_headers`.
    pub(super) raw: RawHead,
}

impl Conn {
    /// Whether an idle connection is still usable: the upstream must not have sent anything
    /// (EOF, data, TLS alert) while it was idle. Costs no syscall unless tokio saw the socket
    /// become readable, in which case one non-blocking `recv(MSG_PEEK)` tells spurious readiness
    /// (left over from the last read of the previous response) from real data/EOF.
    pub(super) fn is_idle_alive(&mut self) -> bool {
        let mut cx = Context::from_waker(Waker::noop());
        let mut byte = [MaybeUninit::<u8>::uninit(); 1];
        let mut rb = ReadBuf::uninit(&mut byte);
        self.io.tcp().poll_peek(&mut cx, &mut rb).is_pending()
    }
}

pub(super) fn tls_config(mode: TlsMode) -> Arc<rustls::ClientConfig> {
    TLS_CONFIGS.with(|c| {
        let mut c = c.borrow_mut();
        let i = (mode == TlsMode::NoVerify) as usize;
        c[i].get_or_insert_with(|| build_tls_config(mode)).clone()
    })
}

pub(super) fn build_tls_config(mode: TlsMode) -> Arc<rustls::ClientConfig> {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let builder = rustls::ClientConfig::builder_with_provider(provider.clone())
        .with_protocol_versions(&[&rustls::version::TLS13, &rustls::version::TLS12])
        .expect("rustls protocol versions");
    let mut cfg = match mode {
        TlsMode::Verify => builder
            .with_root_certificates(rustls::RootCertStore {
                roots: webpki_roots::TLS_SERVER_ROOTS.to_vec(),
            })
            .with_no_client_auth(),
        TlsMode::NoVerify => builder
            .dangerous()
            .with_custom_certificate_verifier(Arc::new(NoVerify(provider)))
            .with_no_client_auth(),
    };
    cfg.alpn_protocols = vec![b"http/1.1".to_vec()];
    Arc::new(cfg)
}

/// Accepts any server certificate (still checks the handshake signatures).
#[derive(Debug)]
pub(super) struct NoVerify(Arc<rustls::crypto::CryptoProvider>);

impl rustls::client::danger::ServerCertVerifier for NoVerify {
    fn verify_server_cert(
        &self,
        _end_entity: &rustls::pki_types::CertificateDer<'_>,
        _intermediates: &[rustls::pki_types::CertificateDer<'_>],
        _server_name: &rustls::pki_types::ServerName<'_>,
        _ocsp: &[u8],
        _now: rustls::pki_types::UnixTime,
    ) -> Result<rustls::client::danger::ServerCertVerified, rustls::Error> {
        Ok(rustls::client::danger::ServerCertVerified::assertion())
    }
    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &rustls::pki_types::CertificateDer<'_>,
        dss: &rustls::DigitallySignedStruct,
    ) -> Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(
            message,
            cert,
            dss,
            &self.0.signature_verification_algorithms,
        )
    }
    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &rustls::pki_types::CertificateDer<'_>,
        dss: &rustls::DigitallySignedStruct,
    ) -> Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(
            message,
            cert,
            dss,
            &self.0.signature_verification_algorithms,
        )
    }
    fn supported_verify_schemes(&self) -> Vec<rustls::SignatureScheme> {
        self.0.signature_verification_algorithms.supported_schemes()
    }
}

pub(super) async fn connect(
    target: &Target<'_>,
    hash: u64,
    connect_timeout: Duration,
) -> Result<Box<Conn>, UpstreamError> {
    let fut = async {
        let tcp = TcpStream::connect((target.host, target.port))
            .await
            .map_err(UpstreamError::Connect)?;
        let _ = tcp.set_nodelay(true);
        let tcp = RawTcp(tcp);
        let io = match target.tls {
            None => Stream::Plain(tcp),
            Some(mode) => {
                let name = rustls::pki_types::ServerName::try_from(target.host.to_owned())
                    .map_err(|e| {
                        UpstreamError::Tls(format!("invalid server name {:?}: {e}", target.host))
                    })?;
                let tls = tokio_rustls::TlsConnector::from(tls_config(mode))
                    .connect(name, tcp)
                    .await
                    .map_err(|e| UpstreamError::Tls(e.to_string()))?;
                Stream::Tls(Box::new(tls))
            }
        };
        Ok(Box::new(Conn {
            io,
            rbuf: BytesMut::with_capacity(READ_CHUNK),
            wbuf: Vec::with_capacity(1024),
            host: target.host.into(),
            port: target.port,
            tls: target.tls,
            hash,
            owner: thread_token(),
            idle_since_ms: crate::sys::clock::monotonic_ms(),
            timer: None,
            body: BodyState::Done,
            reusable: false,
            raw: RawHead::default(),
        }))
    };
    match tokio::time::timeout(connect_timeout, fut).await {
        Ok(r) => r,
        Err(_) => Err(UpstreamError::ConnectTimeout),
    }
}

pub(super) fn poll_read_buf(
    io: &mut Stream,
    cx: &mut Context<'_>,
    buf: &mut BytesMut,
) -> Poll<io::Result<usize>> {
    poll_read_into(io, cx, buf, READ_CHUNK, MIN_READ)
}
