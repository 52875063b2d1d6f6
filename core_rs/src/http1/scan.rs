//! The request-stream scanner behind the server's edge limits (docs/architecture.md, "Edge
//! limits"; `server/edge.rs` feeds it every byte read from a client).
//!
//! [`Scanner`] is a byte-level state machine that tracks message framing (head → Content-Length
//! body / chunked body → next head), so it knows where each head starts on a keep-alive or
//! pipelined connection. Body bytes of a Content-Length body or chunk are skipped in O(1); request
//! lines and header values are searched for CR/LF eight bytes at a time; only header names and the
//! values of Content-Length and Transfer-Encoding are looked at byte by byte. Nothing is copied or
//! buffered. A broken rule comes back as [`Bad`]: where to cut the stream so the offending message
//! is never parsed, and the typed [`Reject`] (status, reason) to answer with. If the offending byte
//! is in a chunked body whose head is still undelivered, the cut moves back into that head.
use http::StatusCode;

#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum St {
    /// Before a request line (leading CRLFs are skipped, as RFC 9112 §2.2 allows).
    Start,
    StartLf,
    ReqLine,
    ReqLineLf,
    /// At the start of a header (or trailer) line.
    LineStart,
    /// Saw CR at the start of a line: the empty line that ends the head.
    EndLf,
    Name,
    Value,
    ValueLf,
    Body(u64),
    ChunkSize,
    ChunkLws,
    ChunkExt,
    ChunkSizeLf,
    ChunkData(u64),
    ChunkDataCr,
    ChunkDataLf,
    /// Not HTTP/1 (h2 preface) or already rejected: no more scanning.
    Off,
}

#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum Hdr {
    Other,
    ContentLength,
    TransferEncoding,
}

/// A request the server refuses before it is parsed: the status and the `error_msg` it answers
/// with. The connection closes after it.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub struct Reject {
    pub status: StatusCode,
    pub reason: &'static str,
}

impl Reject {
    pub const fn bad(reason: &'static str) -> Reject {
        Reject {
            status: StatusCode::BAD_REQUEST,
            reason,
        }
    }

    /// A header line or the whole head over its limit (431).
    pub const TOO_LARGE: Reject = Reject {
        status: StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE,
        reason: "request header fields too large",
    };
}

/// Where the scanned stream breaks a rule.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub struct Bad {
    /// Bytes of the scanned slice the parser may still get: everything before the offending
    /// message's head ends, so the requests before it are answered and it is never dispatched.
    pub cut: usize,
    pub reject: Reject,
}

/// The framing state of one HTTP/1 connection's inbound byte stream.
pub struct Scanner {
    st: St,
    max_line: usize,
    max_head: usize,
    /// Absolute stream offset of the slice being scanned.
    pos: u64,
    /// Absolute offset where the current head's request line starts.
    head_start: u64,
    /// Absolute offset of the empty line that ended the current message's head.
    head_end: u64,
    /// Heads completed so far (the IO wrapper restarts the header timer when it moves).
    pub heads: u64,
    /// The header-line states are scanning a chunked trailer section.
    trailer: bool,
    line: usize,
    name: [u8; 17],
    name_len: usize,
    hdr: Hdr,
    cl: Option<u64>,
    te: bool,
    /// Value parsing of Content-Length / Transfer-Encoding: accumulated value, and whether
    /// whitespace followed a non-empty value (anything after it is malformed).
    val: u64,
    val_digits: u32,
    val_ws: bool,
    val_bad: bool,
    te_buf: [u8; 7],
    te_len: usize,
    chunk: u64,
    chunk_digits: u32,
}

const BARE_LF: &str = "bare LF in request head";
const BARE_CR: &str = "bare CR in request head";
const BAD_CHUNK: &str = "invalid chunked body";

fn is_ws(b: u8) -> bool {
    b == b' ' || b == b'\t'
}

/// Index of the first CR or LF, eight bytes at a time (SWAR: the lowest flagged byte is exact).
fn find_crlf(s: &[u8]) -> Option<usize> {
    let mut i = 0;
    const LO: u64 = 0x0101_0101_0101_0101;
    const HI: u64 = 0x8080_8080_8080_8080;
    while i + 8 <= s.len() {
        let mut w = [0u8; 8];
        w.copy_from_slice(&s[i..i + 8]);
        let w = u64::from_le_bytes(w);
        let a = w ^ (LO * b'\r' as u64);
        let b = w ^ (LO * b'\n' as u64);
        let z = ((a.wrapping_sub(LO) & !a) | (b.wrapping_sub(LO) & !b)) & HI;
        if z != 0 {
            return Some(i + (z.trailing_zeros() / 8) as usize);
        }
        i += 8;
    }
    s[i..]
        .iter()
        .position(|&b| b == b'\r' || b == b'\n')
        .map(|k| i + k)
}

impl Scanner {
    pub fn new(max_line: usize, max_head: usize) -> Scanner {
        Scanner {
            st: St::Start,
            max_line,
            max_head,
            pos: 0,
            head_start: 0,
            head_end: 0,
            heads: 0,
            trailer: false,
            line: 0,
            name: [0; 17],
            name_len: 0,
            hdr: Hdr::Other,
            cl: None,
            te: false,
            val: 0,
            val_digits: 0,
            val_ws: false,
            val_bad: false,
            te_buf: [0; 7],
            te_len: 0,
            chunk: 0,
            chunk_digits: 0,
        }
    }

    /// Inside a request head (not between messages, not in a body or trailer).
    pub fn in_head(&self) -> bool {
        !self.trailer
            && matches!(
                self.st,
                St::ReqLine
                    | St::ReqLineLf
                    | St::LineStart
                    | St::EndLf
                    | St::Name
                    | St::Value
                    | St::ValueLf
            )
    }

    pub fn off(&mut self) {
        self.st = St::Off;
    }

    pub fn is_off(&self) -> bool {
        self.st == St::Off
    }

    #[cold]
    fn bad_head(&self, i: usize, why: &'static str) -> Bad {
        Bad {
            cut: i,
            reject: Reject::bad(why),
        }
    }

    /// A framing error in a body or trailer: if this message's head has not reached the parser yet,
    /// cut inside the head (at its terminating empty line) so the request is never dispatched.
    #[cold]
    fn bad_body(&self, i: usize, why: &'static str) -> Bad {
        let cut = if self.head_end >= self.pos {
            (self.head_end - self.pos) as usize
        } else {
            i
        };
        Bad {
            cut,
            reject: Reject::bad(why),
        }
    }

    #[cold]
    fn too_large(&self, i: usize) -> Bad {
        if self.trailer {
            return self.bad_body(i, "chunked trailer line too long");
        }
        Bad {
            cut: i,
            reject: Reject::TOO_LARGE,
        }
    }

    fn head_len_at(&self, i: usize) -> u64 {
        (self.pos + i as u64).saturating_sub(self.head_start)
    }

    fn reset_message(&mut self) {
        self.trailer = false;
        self.cl = None;
        self.te = false;
        self.st = St::Start;
    }

    /// The empty line ending a head (or trailer section) is complete.
    fn end_of_head(&mut self) {
        if self.trailer {
            self.reset_message();
            return;
        }
        self.heads += 1;
        self.st = if self.te {
            self.chunk = 0;
            self.chunk_digits = 0;
            St::ChunkSize
        } else {
            match self.cl {
                Some(n) if n > 0 => St::Body(n),
                _ => St::Start,
            }
        };
        self.cl = None;
        self.te = false;
    }

    /// A header name is complete (at its `:`): classify it and check framing headers.
    fn on_colon(&mut self, i: usize) -> Result<(), Bad> {
        self.hdr = Hdr::Other;
        if self.trailer {
            return Ok(());
        }
        let name = &self.name[..self.name_len.min(17)];
        if self.name_len == 14 && name == b"content-length" {
            if self.cl.is_some() || self.te {
                return Err(self.bad_head(
                    i,
                    if self.te {
                        "Content-Length with Transfer-Encoding"
                    } else {
                        "duplicate Content-Length"
                    },
                ));
            }
            self.hdr = Hdr::ContentLength;
        } else if self.name_len == 17 && name == b"transfer-encoding" {
            if self.cl.is_some() || self.te {
                return Err(self.bad_head(
                    i,
                    if self.te {
                        "duplicate Transfer-Encoding"
                    } else {
                        "Transfer-Encoding with Content-Length"
                    },
                ));
            }
            self.hdr = Hdr::TransferEncoding;
        }
        self.val = 0;
        self.val_digits = 0;
        self.val_ws = false;
        self.val_bad = false;
        self.te_len = 0;
        Ok(())
    }

    /// A byte of a Content-Length / Transfer-Encoding value (CR and LF excluded).
    fn value_byte(&mut self, b: u8) {
        if is_ws(b) {
            self.val_ws = self.val_digits > 0 || self.te_len > 0;
            return;
        }
        if self.val_ws {
            self.val_bad = true; // "5 5", "chunked x"
            return;
        }
        match self.hdr {
            Hdr::ContentLength => {
                if b.is_ascii_digit() && self.val_digits < 19 {
                    self.val = self.val * 10 + (b - b'0') as u64;
                    self.val_digits += 1;
                } else {
                    self.val_bad = true;
                }
            }
            Hdr::TransferEncoding => {
                if self.te_len < self.te_buf.len() {
                    self.te_buf[self.te_len] = b.to_ascii_lowercase();
                    self.te_len += 1;
                } else {
                    self.val_bad = true;
                }
            }
            Hdr::Other => {}
        }
    }

    /// The value of a framing header is complete (at its CR).
    fn end_value(&mut self, i: usize) -> Result<(), Bad> {
        match self.hdr {
            Hdr::ContentLength => {
                if self.val_bad || self.val_digits == 0 {
                    return Err(self.bad_head(i, "invalid Content-Length"));
                }
                self.cl = Some(self.val);
            }
            Hdr::TransferEncoding => {
                if self.val_bad || &self.te_buf[..self.te_len] != b"chunked" {
                    return Err(self.bad_head(i, "unsupported Transfer-Encoding"));
                }
                self.te = true;
            }
            Hdr::Other => {}
        }
        Ok(())
    }

    /// Scan the next bytes of the stream. On `Err`, the connection is done: the parser gets
    /// `data[..cut]` and then EOF, the connection answers `reject`, and the scanner is off.
    pub fn scan(&mut self, data: &[u8]) -> Result<(), Bad> {
        let r = self.scan_inner(data);
        match r {
            Ok(()) => self.pos += data.len() as u64,
            Err(_) => self.st = St::Off,
        }
        r
    }

    fn scan_inner(&mut self, data: &[u8]) -> Result<(), Bad> {
        let n = data.len();
        let mut i = 0;
        while i < n {
            let b = data[i];
            match self.st {
                St::Off => return Ok(()),
                St::Body(rem) => {
                    let take = rem.min((n - i) as u64);
                    i += take as usize;
                    if take == rem {
                        self.reset_message();
                    } else {
                        self.st = St::Body(rem - take);
                    }
                    continue;
                }
                St::ChunkData(rem) => {
                    let take = rem.min((n - i) as u64);
                    i += take as usize;
                    self.st = if take == rem {
                        St::ChunkDataCr
                    } else {
                        St::ChunkData(rem - take)
                    };
                    continue;
                }
                St::Start => match b {
                    b'\r' => self.st = St::StartLf,
                    b'\n' => return Err(self.bad_head(i, BARE_LF)),
                    _ => {
                        self.st = St::ReqLine;
                        self.head_start = self.pos + i as u64;
                        continue;
                    }
                },
                St::StartLf => {
                    if b != b'\n' {
                        return Err(self.bad_head(i, BARE_CR));
                    }
                    self.st = St::Start;
                }
                St::ReqLine => match find_crlf(&data[i..]) {
                    None => return Ok(()),
                    Some(k) => {
                        i += k;
                        if data[i] != b'\r' {
                            return Err(self.bad_head(i, BARE_LF));
                        }
                        self.st = St::ReqLineLf;
                    }
                },
                St::ReqLineLf | St::ValueLf => {
                    if b != b'\n' {
                        return Err(self.bad_head(i, BARE_CR));
                    }
                    if !self.trailer && self.head_len_at(i + 1) > self.max_head as u64 {
                        return Err(self.too_large(i + 1));
                    }
                    self.st = St::LineStart;
                }
                St::LineStart => match b {
                    b'\r' => {
                        self.st = St::EndLf;
                        if !self.trailer {
                            self.head_end = self.pos + i as u64;
                        }
                    }
                    b'\n' => return Err(self.bad_head(i, BARE_LF)),
                    // obs-fold (or whitespace before the first header)
                    b' ' | b'\t' => return Err(self.bad_head(i, "obs-fold in request head")),
                    _ => {
                        self.st = St::Name;
                        self.line = 0;
                        self.name_len = 0;
                        continue;
                    }
                },
                St::EndLf => {
                    if b != b'\n' {
                        return Err(self.bad_head(i, BARE_CR));
                    }
                    self.end_of_head();
                }
                St::Name => {
                    let rest = &data[i..];
                    let k = rest
                        .iter()
                        .position(|&c| c == b':' || c == b'\r' || c == b'\n')
                        .unwrap_or(rest.len());
                    if self.line + k > self.max_line {
                        return Err(self.too_large(i + (self.max_line - self.line)));
                    }
                    // Lower-cased copy of the name's start: enough to recognise the framing headers.
                    let room = self.name.len().saturating_sub(self.name_len);
                    for (d, &c) in self.name[self.name_len..]
                        .iter_mut()
                        .zip(&rest[..k.min(room)])
                    {
                        *d = c | 0x20;
                    }
                    self.name_len += k;
                    self.line += k;
                    i += k;
                    if i == n {
                        return Ok(());
                    }
                    if data[i] != b':' {
                        return Err(self.bad_head(i, "header line without a colon"));
                    }
                    self.on_colon(i)?;
                    self.line += 1;
                    self.st = St::Value;
                }
                St::Value => {
                    if self.hdr == Hdr::Other {
                        let rest = &data[i..];
                        let k = find_crlf(rest).unwrap_or(rest.len());
                        if self.line + k > self.max_line {
                            return Err(self.too_large(i + (self.max_line - self.line)));
                        }
                        self.line += k;
                        i += k;
                        if i == n {
                            return Ok(());
                        }
                    } else if b != b'\r' && b != b'\n' {
                        self.value_byte(b);
                        self.line += 1;
                        if self.line > self.max_line {
                            return Err(self.too_large(i));
                        }
                        i += 1;
                        continue;
                    }
                    if data[i] != b'\r' {
                        return Err(self.bad_head(i, BARE_LF));
                    }
                    self.end_value(i)?;
                    self.st = St::ValueLf;
                }
                St::ChunkSize => {
                    if let Some(d) = (b as char).to_digit(16) {
                        self.chunk_digits += 1;
                        if self.chunk_digits > 16 {
                            return Err(self.bad_body(i, "chunk size overflow"));
                        }
                        self.chunk = (self.chunk << 4) | d as u64;
                    } else if self.chunk_digits == 0 {
                        return Err(self.bad_body(i, BAD_CHUNK));
                    } else {
                        match b {
                            b' ' | b'\t' => self.st = St::ChunkLws,
                            b';' => self.st = St::ChunkExt,
                            b'\r' => self.st = St::ChunkSizeLf,
                            _ => return Err(self.bad_body(i, BAD_CHUNK)),
                        }
                    }
                }
                St::ChunkLws => match b {
                    b' ' | b'\t' => {}
                    b';' => self.st = St::ChunkExt,
                    b'\r' => self.st = St::ChunkSizeLf,
                    _ => return Err(self.bad_body(i, BAD_CHUNK)),
                },
                St::ChunkExt => match b {
                    b'\r' => self.st = St::ChunkSizeLf,
                    b'\n' => return Err(self.bad_body(i, BAD_CHUNK)),
                    _ => {}
                },
                St::ChunkSizeLf => {
                    if b != b'\n' {
                        return Err(self.bad_body(i, BAD_CHUNK));
                    }
                    if self.chunk == 0 {
                        self.trailer = true;
                        self.st = St::LineStart;
                    } else {
                        self.st = St::ChunkData(self.chunk);
                    }
                }
                St::ChunkDataCr => {
                    if b != b'\r' {
                        return Err(self.bad_body(i, BAD_CHUNK));
                    }
                    self.st = St::ChunkDataLf;
                }
                St::ChunkDataLf => {
                    if b != b'\n' {
                        return Err(self.bad_body(i, BAD_CHUNK));
                    }
                    self.chunk = 0;
                    self.chunk_digits = 0;
                    self.st = St::ChunkSize;
                }
            }
            i += 1;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn scanner() -> Scanner {
        Scanner::new(8192, 32768)
    }

    fn check(data: &[u8]) -> Result<(), Bad> {
        scanner().scan(data)
    }

    /// Scanning must not depend on how the stream is split into reads.
    fn check_split(data: &[u8]) -> Result<(), Bad> {
        let whole = check(data);
        for at in 0..=data.len() {
            let mut s = scanner();
            let r = s.scan(&data[..at]).and_then(|()| s.scan(&data[at..]));
            assert_eq!(
                r.map_err(|b| b.reject),
                whole.map_err(|b| b.reject),
                "split at {at}"
            );
        }
        whole
    }

    #[test]
    fn find_crlf_matches_naive() {
        let mut v = vec![b'a'; 40];
        assert_eq!(find_crlf(&v), None);
        for i in 0..40 {
            v[i] = b'\n';
            assert_eq!(find_crlf(&v), Some(i));
            v[i] = b'\r';
            assert_eq!(find_crlf(&v[..=i]), Some(i));
            v[i] = 0x8d; // high bit set: no false positive
            assert_eq!(find_crlf(&v), None);
            v[i] = b'a';
        }
    }

    #[test]
    fn good_streams() {
        let get = b"GET /a HTTP/1.1\r\nHost: x\r\nX-A:  b \r\n\r\n".to_vec();
        let post = b"POST /p HTTP/1.1\r\nhost: x\r\ncontent-length: 5\r\n\r\nab\r\nc".to_vec();
        let chunked = b"POST /c HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: Chunked \r\n\r\n\
5;ext=1\r\nhe\nlo\r\n3 \r\n\r\n\r\r\n0\r\nTrailer: t\r\n\r\n"
            .to_vec();
        let mut all = b"\r\n".to_vec();
        for m in [&get, &post, &chunked, &get] {
            all.extend_from_slice(m);
        }
        check_split(&all).unwrap();
        let mut s = scanner();
        s.scan(&all).unwrap();
        assert_eq!(s.heads, 4);
        assert_eq!(s.st, St::Start);
    }

    #[test]
    fn rejects() {
        let cases: [&[u8]; 14] = [
            b"GET / HTTP/1.1\nHost: x\r\n\r\n",
            b"GET / HTTP/1.1\r\nHost: x\n\r\n",
            b"GET / HTTP/1.1\r\nHost: x\r\n\n",
            b"GET / HTTP/1.1\r\nHost: x\r\n folded\r\n\r\n",
            b"GET / HTTP/1.1\r\nHost: x\r\rX: y\r\n\r\n",
            b"POST / HTTP/1.1\r\nContent-Length: 1\r\nTransfer-Encoding: chunked\r\n\r\n",
            b"POST / HTTP/1.1\r\nTransfer-Encoding: chunked\r\nContent-Length: 1\r\n\r\n",
            b"POST / HTTP/1.1\r\nContent-Length: 1\r\nContent-Length: 1\r\n\r\nx",
            b"POST / HTTP/1.1\r\nContent-Length: 1x\r\n\r\nx",
            b"POST / HTTP/1.1\r\nContent-Length: 1 2\r\n\r\nx",
            b"POST / HTTP/1.1\r\nContent-Length: \r\n\r\n",
            b"POST / HTTP/1.1\r\nTransfer-Encoding: gzip, chunked\r\n\r\n0\r\n\r\n",
            b"POST / HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\nab\r\n0\r\n\r\n",
            b"POST / HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n2\r\nabc\r\n0\r\n\r\n",
        ];
        for c in cases {
            let b = check_split(c).expect_err(std::str::from_utf8(c).unwrap());
            assert_eq!(
                b.reject.status,
                StatusCode::BAD_REQUEST,
                "{}",
                String::from_utf8_lossy(c)
            );
            // Never a complete head before the cut: the server cannot dispatch the request.
            assert!(
                !c[..b.cut].windows(4).any(|w| w == b"\r\n\r\n"),
                "{}",
                String::from_utf8_lossy(c)
            );
        }
    }

    /// The reject names the rule the request broke (its `error_msg`).
    #[test]
    fn reject_reasons() {
        for (c, why) in [
            (
                &b"GET / HTTP/1.1\nHost: x\r\n\r\n"[..],
                "bare LF in request head",
            ),
            (
                b"GET / HTTP/1.1\r\nHost: x\r\rX: y\r\n\r\n",
                "bare CR in request head",
            ),
            (
                b"GET / HTTP/1.1\r\nHost: x\r\n folded\r\n\r\n",
                "obs-fold in request head",
            ),
            (
                b"GET / HTTP/1.1\r\nHost x\r\n\r\n",
                "header line without a colon",
            ),
            (
                b"POST / HTTP/1.1\r\nContent-Length: 1\r\nContent-Length: 1\r\n\r\nx",
                "duplicate Content-Length",
            ),
            (
                b"POST / HTTP/1.1\r\nTransfer-Encoding: chunked\r\nContent-Length: 1\r\n\r\n",
                "Content-Length with Transfer-Encoding",
            ),
            (
                b"POST / HTTP/1.1\r\nContent-Length: 1\r\nTransfer-Encoding: chunked\r\n\r\n",
                "Transfer-Encoding with Content-Length",
            ),
            (
                b"POST / HTTP/1.1\r\nContent-Length: 1x\r\n\r\nx",
                "invalid Content-Length",
            ),
            (
                b"POST / HTTP/1.1\r\nTransfer-Encoding: gzip\r\n\r\n",
                "unsupported Transfer-Encoding",
            ),
            (
                b"POST / HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\n",
                "invalid chunked body",
            ),
        ] {
            let b = check_split(c).unwrap_err();
            assert_eq!(b.reject, Reject::bad(why), "{}", String::from_utf8_lossy(c));
        }
    }

    #[test]
    fn bad_chunk_after_delivered_head_cuts_in_body() {
        let mut s = scanner();
        s.scan(b"POST / HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n")
            .unwrap();
        let b = s.scan(b"3\r\nabc\r\nxyz\r\n").unwrap_err();
        assert_eq!(b.cut, 8);
    }

    #[test]
    fn pipelined_bad_second_request_keeps_first() {
        let first = b"GET /1 HTTP/1.1\r\nHost: x\r\n\r\n";
        let mut data = first.to_vec();
        data.extend_from_slice(b"GET /2 HTTP/1.1\nHost: x\r\n\r\n");
        let b = check(&data).unwrap_err();
        assert!(b.cut > first.len());
    }

    #[test]
    fn long_lines() {
        let mut req = b"GET / HTTP/1.1\r\nX-Long: ".to_vec();
        req.extend(std::iter::repeat_n(b'a', 8200));
        req.extend_from_slice(b"\r\n\r\n");
        let b = check_split(&req).unwrap_err();
        assert_eq!(b.reject, Reject::TOO_LARGE);
        // Cut where the line passes the limit: the parser never gets a complete head.
        assert_eq!(b.cut, "GET / HTTP/1.1\r\n".len() + 8192);

        let mut req = b"GET / HTTP/1.1\r\n".to_vec();
        req.extend(std::iter::repeat_n(b'n', 8200));
        assert_eq!(check(&req).unwrap_err().reject, Reject::TOO_LARGE);

        // Long request line: left to the proxy (414); many mid-sized headers: 431 on the total.
        let mut req = b"GET /".to_vec();
        req.extend(std::iter::repeat_n(b'u', 10_000));
        req.extend_from_slice(b" HTTP/1.1\r\nHost: x\r\n\r\n");
        check(&req).unwrap();
        let mut req = b"GET / HTTP/1.1\r\n".to_vec();
        for i in 0..5 {
            req.extend_from_slice(format!("X-{i}: ").as_bytes());
            req.extend(std::iter::repeat_n(b'v', 8000));
            req.extend_from_slice(b"\r\n");
        }
        req.extend_from_slice(b"\r\n");
        assert_eq!(check(&req).unwrap_err().reject, Reject::TOO_LARGE);
    }

    #[test]
    fn head_state_for_timer() {
        let mut s = scanner();
        s.scan(b"GET / HTTP/1.1\r\nHo").unwrap();
        assert!(s.in_head());
        s.scan(b"st: x\r\n\r\n").unwrap();
        assert!(!s.in_head());
        assert_eq!(s.heads, 1);
    }

    /// `cargo test --release --lib scan_cost -- --ignored --nocapture`
    #[test]
    #[ignore]
    fn scan_cost() {
        let head = b"GET /api/v1/users/12345/orders?limit=20&offset=40 HTTP/1.1\r\n\
Host: api.example.com\r\nUser-Agent: Mozilla/5.0 (X11; Linux x86_64) AppleWebKit/537.36 Chrome/120.0\r\n\
Accept: application/json, text/plain, */*\r\nAccept-Encoding: gzip, deflate, br\r\n\
Accept-Language: en-US,en;q=0.9\r\nAuthorization: Bearer eyJhbGciOiJIUzI1NiJ9.eyJzdWIiOiIxMjM0In0.abc\r\n\
Cookie: session=0123456789abcdef0123456789abcdef; theme=dark\r\nX-Request-Id: 7f3c9a2e-1b4d-4e8f-9a0b\r\n\
Content-Length: 0\r\nConnection: keep-alive\r\n\r\n";
        let mut s = scanner();
        let n = 1_000_000;
        let t = std::time::Instant::now();
        for _ in 0..n {
            s.scan(std::hint::black_box(head)).unwrap();
        }
        let per = t.elapsed().as_nanos() as f64 / n as f64;
        println!(
            "{} byte head: {per:.0} ns/request, {:.2} ns/byte",
            head.len(),
            per / head.len() as f64
        );
    }
}
