//! Reading the response head: parse, framing, keep-alive, and the header lines kept as received.
use super::connect::{poll_read_buf, Conn};
use super::UpstreamError;
use crate::http1::{is_hop_by_hop, parse_cl_value, HOP_BY_HOP};
use bytes::{Buf, BytesMut};
use http::header::{self, HeaderName, HeaderValue};
use http::{HeaderMap, StatusCode};
use std::future::poll_fn;
use std::io;
use std::mem::MaybeUninit;

/// Largest accepted response head (status line + headers).
pub(super) const MAX_HEAD: usize = 64 * 1024;
/// Most response headers accepted.
pub(super) const MAX_HEADERS: usize = 100;

/// Response header lines kept as received (hop-by-hop and Content-Length left out), for a
/// response whose headers the proxy forwards untouched to an HTTP/1 client.
#[derive(Default)]
pub struct RawHead {
    /// `name: value\r\n` lines.
    pub(super) lines: Vec<u8>,
    /// They include a Date.
    pub(super) date: bool,
    /// They belong to the current response (its `HeaderMap` is empty).
    pub(super) active: bool,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum RespFraming {
    Empty,
    Length(u64),
    Chunked,
    Eof,
}

pub(super) struct Head {
    pub(super) status: StatusCode,
    pub(super) headers: HeaderMap,
    pub(super) framing: RespFraming,
    pub(super) keep_alive: bool,
}

pub(super) enum Parsed {
    Partial,
    /// 1xx interim response: skip it.
    Interim,
    Final(Head),
}

#[derive(Clone, Copy, PartialEq, Eq)]
pub(super) enum Kind {
    ContentLength,
    TransferEncoding,
    Connection,
    Date,
    /// Another hop-by-hop header: not forwarded.
    HopByHop,
    Other,
}

impl Kind {
    fn of(name: &HeaderName) -> Kind {
        if *name == header::CONTENT_LENGTH {
            Kind::ContentLength
        } else if *name == header::TRANSFER_ENCODING {
            Kind::TransferEncoding
        } else if *name == header::CONNECTION {
            Kind::Connection
        } else if *name == header::DATE {
            Kind::Date
        } else if is_hop_by_hop(name) {
            Kind::HopByHop
        } else {
            Kind::Other
        }
    }

    /// `of` for a name as received (any case).
    fn of_bytes(name: &[u8]) -> Kind {
        let is = |s: &[u8]| name.eq_ignore_ascii_case(s);
        match name.len() {
            4 if is(b"date") => Kind::Date,
            10 if is(b"connection") => Kind::Connection,
            14 if is(b"content-length") => Kind::ContentLength,
            17 if is(b"transfer-encoding") => Kind::TransferEncoding,
            2 | 7 | 10 | 16 if HOP_BY_HOP.iter().any(|h| is(h)) => Kind::HopByHop,
            _ => Kind::Other,
        }
    }
}

/// Framing and keep-alive facts gathered from a response's headers.
#[derive(Default)]
pub(super) struct Seen {
    content_length: Option<u64>,
    bad_cl: bool,
    te_present: bool,
    te_chunked: bool,
    conn_close: bool,
    conn_keep_alive: bool,
    /// Headers the `Connection` header names (hop-by-hop for this response).
    conn_named: Vec<HeaderName>,
    pub(super) date: bool,
}

impl Seen {
    fn see(&mut self, kind: Kind, value: &[u8]) {
        match kind {
            Kind::ContentLength => {
                for part in value.split(|&b| b == b',') {
                    match parse_cl_value(part.trim_ascii()) {
                        Some(n) if self.content_length.is_none_or(|c| c == n) => {
                            self.content_length = Some(n)
                        }
                        _ => self.bad_cl = true,
                    }
                }
            }
            Kind::TransferEncoding => {
                self.te_present = true;
                // Only the last coding matters: is it chunked?
                let last = value
                    .rsplit(|&b| b == b',')
                    .next()
                    .unwrap_or(b"")
                    .trim_ascii();
                self.te_chunked = last.eq_ignore_ascii_case(b"chunked");
            }
            Kind::Connection => {
                for t in value.split(|&b| b == b',') {
                    let t = t.trim_ascii();
                    if t.eq_ignore_ascii_case(b"close") {
                        self.conn_close = true;
                    } else if t.eq_ignore_ascii_case(b"keep-alive") {
                        self.conn_keep_alive = true;
                    } else if let Ok(n) = HeaderName::from_bytes(t) {
                        self.conn_named.push(n);
                    }
                }
            }
            Kind::Date => self.date = true,
            Kind::HopByHop | Kind::Other => {}
        }
    }
}

/// Parse a response head. Hop-by-hop headers (and any the `Connection` header names) are read for
/// framing and keep-alive, and left out of the returned map: the body is decoded here, and the
/// proxy must not forward them.
pub(super) fn parse_head(
    buf: &mut BytesMut,
    head_request: bool,
    raw: Option<(&mut RawHead, &[&[u8]])>,
) -> Result<Parsed, &'static str> {
    let mut slots: [MaybeUninit<httparse::Header<'_>>; MAX_HEADERS] =
        [const { MaybeUninit::uninit() }; MAX_HEADERS];
    // (name start, name len, value start, value len) relative to the head start.
    let mut spans = [(0u32, 0u32, 0u32, 0u32); MAX_HEADERS];
    let (len, code, minor, count) = {
        let mut resp = httparse::Response::new(&mut []);
        let base = buf.as_ptr() as usize;
        match httparse::ParserConfig::default()
            .parse_response_with_uninit_headers(&mut resp, buf, &mut slots)
        {
            Ok(httparse::Status::Complete(n)) => {
                if n > MAX_HEAD {
                    return Err("response head too large");
                }
                for (s, h) in spans.iter_mut().zip(resp.headers.iter()) {
                    *s = (
                        (h.name.as_ptr() as usize - base) as u32,
                        h.name.len() as u32,
                        (h.value.as_ptr() as usize - base) as u32,
                        h.value.len() as u32,
                    );
                }
                (
                    n,
                    resp.code.unwrap_or(0),
                    resp.version.unwrap_or(1),
                    resp.headers.len(),
                )
            }
            Ok(httparse::Status::Partial) => {
                if buf.len() >= MAX_HEAD {
                    return Err("response head too large");
                }
                return Ok(Parsed::Partial);
            }
            Err(httparse::Error::TooManyHeaders) => return Err("too many response headers"),
            Err(httparse::Error::Status) => return Err("invalid response status"),
            Err(httparse::Error::Version) => return Err("invalid response version"),
            Err(_) => return Err("malformed response head"),
        }
    };
    if (100..200).contains(&code) {
        if code == 101 {
            return Err("upgrade not supported");
        }
        buf.advance(len);
        return Ok(Parsed::Interim);
    }
    let status = StatusCode::from_u16(code).map_err(|_| "invalid response status")?;
    let at = |(o, l): (u32, u32)| o as usize..(o + l) as usize;
    let mut seen = Seen::default();
    let mut headers = HeaderMap::new();
    // Kept as encoded lines: the client gets exactly these (no map to build and walk) — unless
    // `Connection` names headers to drop, which the map does.
    let raw = raw.filter(|_| (200..300).contains(&code) && code != 204 && !head_request);
    let mut as_lines = false;
    if let Some((out, replaced)) = raw {
        out.lines.clear();
        for &(no, nl, vo, vl) in &spans[..count] {
            let (name, value) = (&buf[at((no, nl))], &buf[at((vo, vl))]);
            let kind = Kind::of_bytes(name);
            seen.see(kind, value);
            if matches!(kind, Kind::Date | Kind::Other)
                && !replaced.iter().any(|r| name.eq_ignore_ascii_case(r))
            {
                out.lines.extend_from_slice(name);
                out.lines.extend_from_slice(b": ");
                out.lines.extend_from_slice(value);
                out.lines.extend_from_slice(b"\r\n");
            }
        }
        as_lines = seen.conn_named.is_empty();
        out.date = seen.date;
        out.active = as_lines;
        if as_lines {
            buf.advance(len);
        } else {
            seen = Seen::default();
        }
    }
    if !as_lines {
        let head = buf.split_to(len).freeze();
        // Headroom for the headers the gateway adds (x-ratelimit-*, plugins'): no rehash on insert.
        headers.reserve(count + 4);
        for &(no, nl, vo, vl) in &spans[..count] {
            let name = HeaderName::from_bytes(&head[at((no, nl))])
                .map_err(|_| "invalid response header name")?;
            let kind = Kind::of(&name);
            seen.see(kind, &head[at((vo, vl))]);
            if matches!(
                kind,
                Kind::HopByHop | Kind::Connection | Kind::TransferEncoding
            ) {
                continue;
            }
            // SAFETY: httparse admits exactly the bytes a HeaderValue may hold (HTAB, 0x20-0x7E,
            // 0x80-0xFF), so the second validation pass is skipped, as hyper's own parser does.
            let value =
                unsafe { HeaderValue::from_maybe_shared_unchecked(head.slice(at((vo, vl)))) };
            headers.append(name, value);
        }
        for n in &seen.conn_named {
            headers.remove(n);
        }
    }
    let Seen {
        content_length,
        bad_cl,
        te_present,
        te_chunked,
        conn_close,
        conn_keep_alive,
        ..
    } = seen;
    let mut keep_alive = if minor == 1 {
        !conn_close
    } else {
        conn_keep_alive && !conn_close
    };
    let framing = if head_request || code == 204 || code == 304 {
        RespFraming::Empty
    } else if te_present {
        if content_length.is_some() || bad_cl {
            keep_alive = false; // RFC 9112 §6.3: TE overrides CL, but the connection is suspect
        }
        if te_chunked {
            RespFraming::Chunked
        } else {
            keep_alive = false;
            RespFraming::Eof
        }
    } else if bad_cl {
        return Err("invalid content-length");
    } else if let Some(n) = content_length {
        RespFraming::Length(n)
    } else {
        keep_alive = false;
        RespFraming::Eof
    };
    Ok(Parsed::Final(Head {
        status,
        headers,
        framing,
        keep_alive,
    }))
}

/// A failed exchange, and whether it may be replayed on a fresh connection.
pub(super) struct Fail {
    pub(super) err: UpstreamError,
    pub(super) retry: bool,
}

/// Read the final response head. `reused`: the connection came from the pool, so a failure before
/// any response byte arrives is the idle-close race and may be retried.
pub(super) async fn read_head(
    conn: &mut Conn,
    head_request: bool,
    reused: bool,
    raw: Option<&'static [&'static [u8]]>,
) -> Result<Head, Fail> {
    let mut got_bytes = !conn.rbuf.is_empty();
    loop {
        if !conn.rbuf.is_empty() {
            let keep = raw.map(|replaced| (&mut conn.raw, replaced));
            match parse_head(&mut conn.rbuf, head_request, keep) {
                Ok(Parsed::Final(h)) => return Ok(h),
                Ok(Parsed::Interim) => continue,
                Ok(Parsed::Partial) => {}
                Err(e) => {
                    return Err(Fail {
                        err: UpstreamError::BadResponse(e),
                        retry: false,
                    })
                }
            }
        }
        let (io, buf) = (&mut conn.io, &mut conn.rbuf);
        match poll_fn(|cx| poll_read_buf(io, cx, buf)).await {
            Ok(0) => {
                return Err(Fail {
                    err: UpstreamError::Io(io::Error::new(
                        io::ErrorKind::UnexpectedEof,
                        "upstream closed the connection before the response head",
                    )),
                    retry: reused && !got_bytes,
                })
            }
            Ok(_) => got_bytes = true,
            Err(e) => {
                return Err(Fail {
                    err: UpstreamError::Io(e),
                    retry: reused && !got_bytes,
                })
            }
        }
    }
}
