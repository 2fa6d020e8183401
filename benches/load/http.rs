//! HTTP/1.1 response heads and chunked framing, as the SSE clients read them.

use super::*;

pub(crate) struct Head {
    pub(crate) status: u16,
    pub(crate) chunked: bool,
    pub(crate) content_length: Option<usize>,
    pub(crate) close: bool,
}

/// Reads until the end of a response head; leaves the bytes after it in `buf`.
pub(crate) async fn read_head(s: &mut TcpStream, buf: &mut Vec<u8>) -> Result<Head, String> {
    loop {
        if let Some(p) = find(buf, b"\r\n\r\n") {
            let head = parse_head(&buf[..p])?;
            buf.drain(..p + 4);
            return Ok(head);
        }
        if buf.len() > MAX_HEAD {
            return Err("response head too large".into());
        }
        if buf.capacity() - buf.len() < 512 {
            buf.reserve(1024);
        }
        match s.read_buf(buf).await {
            Ok(0) => return Err("connection closed before the response head".into()),
            Ok(_) => {}
            Err(e) => return Err(format!("read: {e}")),
        }
    }
}

pub(crate) fn parse_head(h: &[u8]) -> Result<Head, String> {
    let text = std::str::from_utf8(h).map_err(|_| "response head is not UTF-8".to_string())?;
    let mut lines = text.split("\r\n");
    let status_line = lines.next().unwrap_or("");
    let mut parts = status_line.splitn(3, ' ');
    let version = parts.next().unwrap_or("");
    if !version.starts_with("HTTP/1.") {
        return Err(format!("bad status line: {status_line:.60}"));
    }
    let status: u16 =
        parts.next().and_then(|c| c.parse().ok()).ok_or_else(|| format!("bad status line: {status_line:.60}"))?;
    let mut head = Head { status, chunked: false, content_length: None, close: version == "HTTP/1.0" };
    for l in lines {
        let Some((name, value)) = l.split_once(':') else {
            continue;
        };
        let (name, value) = (name.trim(), value.trim());
        if name.eq_ignore_ascii_case("transfer-encoding") {
            head.chunked = value.to_ascii_lowercase().contains("chunked");
        } else if name.eq_ignore_ascii_case("content-length") {
            head.content_length = value.parse().ok();
        } else if name.eq_ignore_ascii_case("connection") {
            let v = value.to_ascii_lowercase();
            if v.contains("close") {
                head.close = true;
            } else if v.contains("keep-alive") {
                head.close = false;
            }
        }
    }
    Ok(head)
}

#[derive(Clone, Copy, Debug, PartialEq)]
pub(crate) enum Chunk {
    /// No framing: the body runs until the connection closes.
    Identity,
    /// Expecting a chunk-size line.
    Size,
    /// Inside a chunk, this many bytes left.
    Data(u64),
    /// Expecting the CRLF after a chunk's data.
    DataEnd,
    /// The last (zero-size) chunk was seen.
    Done,
}

/// One buffer: `buf[..dec]` is decoded body not yet consumed, `buf[dec..]` raw bytes not yet decoded.
/// Chunk framing is removed in place.
pub(crate) struct Framing {
    pub(crate) buf: Vec<u8>,
    pub(crate) dec: usize,
    pub(crate) chunk: Chunk,
}

impl Framing {
    pub(crate) fn decode(&mut self) -> Result<(), String> {
        loop {
            match self.chunk {
                Chunk::Identity => {
                    self.dec = self.buf.len();
                    return Ok(());
                }
                Chunk::Done => return Ok(()),
                Chunk::Size => {
                    let raw = &self.buf[self.dec..];
                    let Some(nl) = raw.iter().position(|&b| b == b'\n') else {
                        if raw.len() > 1024 {
                            return Err("chunk size line too long".into());
                        }
                        return Ok(());
                    };
                    let line = &raw[..nl];
                    let line = line.strip_suffix(b"\r").unwrap_or(line);
                    let hex = line.split(|&b| b == b';').next().unwrap_or(b"");
                    let hex = std::str::from_utf8(hex).map_err(|_| "bad chunk size".to_string())?;
                    let size =
                        u64::from_str_radix(hex.trim(), 16).map_err(|_| format!("bad chunk size {:.20}", hex))?;
                    self.buf.drain(self.dec..self.dec + nl + 1);
                    self.chunk = if size == 0 { Chunk::Done } else { Chunk::Data(size) };
                }
                Chunk::Data(rem) => {
                    let avail = (self.buf.len() - self.dec) as u64;
                    if avail == 0 {
                        return Ok(());
                    }
                    let n = rem.min(avail);
                    self.dec += n as usize;
                    self.chunk = if n == rem { Chunk::DataEnd } else { Chunk::Data(rem - n) };
                }
                Chunk::DataEnd => {
                    let raw = &self.buf[self.dec..];
                    let cut = match raw {
                        [b'\r', b'\n', ..] => 2,
                        [b'\n', ..] => 1,
                        [] | [b'\r'] => return Ok(()),
                        _ => return Err("missing CRLF after chunk data".into()),
                    };
                    self.buf.drain(self.dec..self.dec + cut);
                    self.chunk = Chunk::Size;
                }
            }
        }
    }
}
