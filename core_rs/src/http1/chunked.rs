//! The chunked transfer coding (RFC 9112 §7.1): the chunk header written before each chunk, and
//! the decoder that reads a chunked body out of a read buffer.
use bytes::{Buf, Bytes, BytesMut};

/// Longest chunk-size line / total trailer section accepted in a chunked body.
const MAX_CHUNK_LINE: usize = 4 * 1024;
const MAX_TRAILERS: usize = 64 * 1024;

/// "<hex>\r\n" into `out`, returning the used length.
pub fn chunk_header(out: &mut [u8; 18], n: usize) -> usize {
    let mut tmp = [0u8; 16];
    let mut i = tmp.len();
    let mut v = n as u64;
    loop {
        i -= 1;
        tmp[i] = b"0123456789abcdef"[(v & 15) as usize];
        v >>= 4;
        if v == 0 {
            break;
        }
    }
    let len = tmp.len() - i;
    out[..len].copy_from_slice(&tmp[i..]);
    out[len] = b'\r';
    out[len + 1] = b'\n';
    len + 2
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
enum ChunkState {
    #[default]
    Size,
    Data(u64),
    DataCrlf,
    Trailers,
    Done,
}

#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct ChunkDecoder {
    state: ChunkState,
    trailer_bytes: usize,
}

fn find_lf(buf: &[u8]) -> Option<usize> {
    buf.iter().position(|&b| b == b'\n')
}

/// chunk-size [ BWS ; chunk-ext ] — `line` excludes the CRLF.
fn parse_chunk_size(line: &[u8]) -> Result<u64, &'static str> {
    let mut size: u64 = 0;
    let mut i = 0;
    while i < line.len() {
        let d = match line[i] {
            b @ b'0'..=b'9' => b - b'0',
            b @ b'a'..=b'f' => b - b'a' + 10,
            b @ b'A'..=b'F' => b - b'A' + 10,
            _ => break,
        };
        if size > (u64::MAX >> 4) {
            return Err("chunk size overflow");
        }
        size = (size << 4) | u64::from(d);
        i += 1;
    }
    if i == 0 {
        return Err("invalid chunk size");
    }
    while i < line.len() && (line[i] == b' ' || line[i] == b'\t') {
        i += 1;
    }
    if i < line.len() && line[i] != b';' {
        return Err("invalid chunk size");
    }
    if line[i..]
        .iter()
        .any(|&b| (b < 0x20 && b != b'\t') || b == 0x7f)
    {
        return Err("invalid chunk extension");
    }
    Ok(size)
}

impl ChunkDecoder {
    /// The last chunk and the trailers have been read.
    pub fn is_done(&self) -> bool {
        self.state == ChunkState::Done
    }

    /// Advance through everything but chunk data: stops in `Data` (with data to come), `Done`,
    /// or when more input is needed.
    pub fn skip_framing(&mut self, buf: &mut BytesMut) -> Result<(), &'static str> {
        loop {
            match self.state {
                ChunkState::Data(_) | ChunkState::Done => return Ok(()),
                ChunkState::DataCrlf => {
                    if buf.len() < 2 {
                        if buf.first().is_some_and(|&b| b != b'\r') {
                            return Err("invalid chunk terminator");
                        }
                        return Ok(());
                    }
                    if &buf[..2] != b"\r\n" {
                        return Err("invalid chunk terminator");
                    }
                    buf.advance(2);
                    self.state = ChunkState::Size;
                }
                ChunkState::Size => {
                    let Some(lf) = find_lf(buf) else {
                        if buf.len() > MAX_CHUNK_LINE {
                            return Err("chunk size line too long");
                        }
                        return Ok(());
                    };
                    if lf == 0 || buf[lf - 1] != b'\r' {
                        return Err("invalid chunk size line");
                    }
                    let size = parse_chunk_size(&buf[..lf - 1])?;
                    buf.advance(lf + 1);
                    self.state = if size == 0 {
                        ChunkState::Trailers
                    } else {
                        ChunkState::Data(size)
                    };
                }
                ChunkState::Trailers => {
                    let Some(lf) = find_lf(buf) else {
                        if self.trailer_bytes + buf.len() > MAX_TRAILERS {
                            return Err("chunked trailers too large");
                        }
                        return Ok(());
                    };
                    if lf == 0 || buf[lf - 1] != b'\r' {
                        return Err("invalid chunked trailer line");
                    }
                    self.trailer_bytes += lf + 1;
                    if self.trailer_bytes > MAX_TRAILERS {
                        return Err("chunked trailers too large");
                    }
                    let empty = lf == 1;
                    buf.advance(lf + 1);
                    if empty {
                        self.state = ChunkState::Done;
                    }
                }
            }
        }
    }

    /// Decode from `buf`: `Some(data)` when chunk data is available, `None` when more input is
    /// needed or the body is complete (`state == Done`). After returning data, the framing that
    /// follows is consumed as far as the buffer allows, so `Done` is seen as early as possible.
    pub fn decode(&mut self, buf: &mut BytesMut) -> Result<Option<Bytes>, &'static str> {
        self.skip_framing(buf)?;
        let ChunkState::Data(rem) = self.state else {
            return Ok(None);
        };
        if buf.is_empty() {
            return Ok(None);
        }
        let take = rem.min(buf.len() as u64);
        let data = buf.split_to(take as usize).freeze();
        self.state = if take == rem {
            ChunkState::DataCrlf
        } else {
            ChunkState::Data(rem - take)
        };
        // Errors in what follows surface on the next call (skip_framing consumes nothing then).
        let _ = self.skip_framing(buf);
        Ok(Some(data))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A chunked response (head included), as the upstream tests send it.
    const CHUNKED: &[u8] = b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n\
        5;name=val\r\nhello\r\n1 ; x\r\n \r\nB\r\nworld!!!!!!\r\n0\r\nX-T: 1\r\nX-U: 2\r\n\r\n";

    /// The decoder fed with every possible split of the body into two reads, and byte by byte.
    #[test]
    fn chunk_decoder_every_split() {
        let body = &CHUNKED[CHUNKED.windows(4).position(|w| w == b"\r\n\r\n").unwrap() + 4..];
        let run = |parts: &[&[u8]]| -> Vec<u8> {
            let mut dec = ChunkDecoder::default();
            let mut buf = BytesMut::new();
            let mut out = Vec::new();
            for p in parts {
                buf.extend_from_slice(p);
                while let Some(d) = dec.decode(&mut buf).unwrap() {
                    out.extend_from_slice(&d);
                }
            }
            assert_eq!(dec.state, ChunkState::Done);
            assert!(buf.is_empty());
            out
        };
        for i in 0..=body.len() {
            assert_eq!(
                run(&[&body[..i], &body[i..]]),
                b"hello world!!!!!!",
                "split at {i}"
            );
        }
        let bytes: Vec<&[u8]> = body.chunks(1).collect();
        assert_eq!(run(&bytes), b"hello world!!!!!!");
    }

    #[test]
    fn chunk_decoder_rejects_garbage() {
        for bad in [
            &b"zz\r\nhello\r\n"[..],
            b"5\nhello\r\n",
            b"5\r\nhelloXX0\r\n\r\n",
            b"5x\r\nhello\r\n",
            b"\r\n",
            b"11111111111111111\r\n",
            b"5;a\x01b\r\nhello\r\n",
            b"0\r\nbad trailer\n\r\n",
        ] {
            let mut dec = ChunkDecoder::default();
            let mut buf = BytesMut::from(bad);
            let r = (|| {
                while dec.decode(&mut buf)?.is_some() {}
                Ok::<_, &str>(())
            })();
            assert!(r.is_err(), "{:?}", String::from_utf8_lossy(bad));
        }
        let mut buf = BytesMut::from(&b"0000000000000000000005\r\nhello\r\n0\r\n\r\n"[..]);
        let mut dec = ChunkDecoder::default();
        assert_eq!(&dec.decode(&mut buf).unwrap().unwrap()[..], b"hello");
        assert_eq!(dec.state, ChunkState::Done);
    }
}
