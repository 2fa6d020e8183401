//! The `text/event-stream` wire format: events encoded once into shared bytes.
//!
//! Every event is turned into its SSE frame exactly once, when it enters the node, and the same
//! [`Bytes`] is handed to every connection that receives it ("encode once, write many").
//!
//! The shared bytes are already framed as an HTTP/1.1 chunk (`<hex length>\r\n<frame>\r\n`), so the
//! event-stream front writes each delivery with one `send` of one buffer; [`Chunk::payload`] is the bare
//! frame, a cheap slice of the same bytes, for hyper and HTTP/1.0 clients.
//!
//! Data is split on CR, LF and CRLF into one `data:` line per line, so nothing a publisher sends can end
//! an event early or forge an `id:`, `event:` or `retry:` field; a spec-compliant parser sees exactly the
//! published data with line ends normalised to LF.

use bytes::{BufMut, Bytes, BytesMut};

use crate::id::EventId;
use crate::topic::Topic;

/// The type of the event Herald sends when history cannot cover a client's gap.
pub const RESET_TYPE: &str = "herald.reset";

/// The comment sent on an idle stream.
pub const HEARTBEAT: &[u8] = b": heartbeat\n\n";
/// [`HEARTBEAT`] as an HTTP/1.1 chunk.
pub const HEARTBEAT_CHUNK: &[u8] = b"d\r\n: heartbeat\n\n\r\n";

/// Room kept in front of a frame for its chunk-size line: 8 hex digits (frames under 4 GiB) and CRLF.
const CHUNK_HEADER_MAX: usize = 10;

/// SSE bytes framed as one HTTP/1.1 chunk.
#[derive(Debug, Clone)]
pub struct Chunk {
    wire: Bytes,
    header_len: usize,
}

impl Chunk {
    /// The chunk as written to an HTTP/1.1 connection: size line, payload, CRLF.
    pub fn wire(&self) -> &Bytes {
        &self.wire
    }

    /// Where the bare SSE bytes are in [`Chunk::wire`]: after the size line, before the final CRLF.
    fn payload_range(&self) -> std::ops::Range<usize> {
        self.header_len..self.wire.len() - 2
    }

    /// The bare SSE bytes.
    pub fn payload(&self) -> Bytes {
        self.wire.slice(self.payload_range())
    }

    /// The bare SSE bytes, borrowed.
    pub fn payload_slice(&self) -> &[u8] {
        &self.wire[self.payload_range()]
    }

    /// Length of the bare SSE bytes.
    pub fn payload_len(&self) -> usize {
        self.payload_range().len()
    }
}

/// Builds a [`Chunk`] whose payload is written by `fill`, reserving room for the size line up front so
/// that the payload is never copied.
pub fn chunk_with(capacity: usize, fill: impl FnOnce(&mut BytesMut)) -> Chunk {
    let mut buf = BytesMut::with_capacity(CHUNK_HEADER_MAX + capacity + 2);
    buf.put_bytes(0, CHUNK_HEADER_MAX);
    fill(&mut buf);
    let payload_len = buf.len() - CHUNK_HEADER_MAX;
    buf.put_slice(b"\r\n");
    let header = format!("{payload_len:x}\r\n");
    let start = CHUNK_HEADER_MAX - header.len();
    buf[start..CHUNK_HEADER_MAX].copy_from_slice(header.as_bytes());
    let _ = buf.split_to(start);
    Chunk { wire: buf.freeze(), header_len: header.len() }
}

/// One published event, encoded and ready to be written to any number of connections.
#[derive(Debug)]
pub struct Event {
    /// The deployment-wide id.
    pub id: EventId,
    /// The topics the event was published to (one or more, distinct).
    pub topics: Box<[Topic]>,
    /// The complete SSE frame, ending with the blank line, framed as an HTTP/1.1 chunk.
    pub chunk: Chunk,
}

impl Event {
    /// Encodes an event.
    pub fn new(id: EventId, topics: Box<[Topic]>, kind: Option<&str>, data: &str) -> Self {
        let chunk = encode_chunk(Some(&id.to_string()), kind, data);
        Event { id, topics, chunk }
    }
}

/// Encodes one SSE event: `id:` (when given), `event:` (when given), one `data:` line per line of `data`,
/// then a blank line.
///
/// An `id` or `kind` containing CR or LF is left out (Herald makes ids itself and validates types).
pub fn encode(id: Option<&str>, kind: Option<&str>, data: &str) -> Bytes {
    encode_chunk(id, kind, data).payload()
}

/// [`encode`], framed as an HTTP/1.1 chunk.
pub fn encode_chunk(id: Option<&str>, kind: Option<&str>, data: &str) -> Chunk {
    let lines = memchr::memchr2_iter(b'\n', b'\r', data.as_bytes()).count() + 1;
    let capacity = id.map_or(0, |i| i.len() + 5) + kind.map_or(0, |k| k.len() + 8) + data.len() + lines * 7 + 1;
    chunk_with(capacity, |buf| write_event(buf, id, kind, data))
}

fn write_event(buf: &mut BytesMut, id: Option<&str>, kind: Option<&str>, data: &str) {
    // A line break in the id or the type would end the line early and forge fields: such a field is left
    // out. (Herald makes ids itself and validates types, so this only guards against what slipped by.)
    if let Some(id) = id.filter(|id| !id.contains(['\r', '\n'])) {
        buf.put_slice(b"id: ");
        buf.put_slice(id.as_bytes());
        buf.put_u8(b'\n');
    }
    if let Some(kind) = kind.filter(|kind| !kind.contains(['\r', '\n'])) {
        buf.put_slice(b"event: ");
        buf.put_slice(kind.as_bytes());
        buf.put_u8(b'\n');
    }
    for line in split_lines(data) {
        buf.put_slice(b"data: ");
        buf.put_slice(line.as_bytes());
        buf.put_u8(b'\n');
    }
    buf.put_u8(b'\n');
}

/// Splits on CRLF, lone CR and lone LF, as the SSE parser will: `"a\r\nb\rc\n"` gives `a`, `b`, `c`, ``.
fn split_lines(data: &str) -> impl Iterator<Item = &str> {
    let bytes = data.as_bytes();
    let mut start = 0;
    let mut done = false;
    std::iter::from_fn(move || {
        if done {
            return None;
        }
        let rest = &bytes[start..];
        match memchr::memchr2(b'\r', b'\n', rest) {
            Some(pos) => {
                let line = &data[start..start + pos];
                let crlf = rest[pos] == b'\r' && rest.get(pos + 1) == Some(&b'\n');
                start += pos + if crlf { 2 } else { 1 };
                Some(line)
            }
            None => {
                done = true;
                Some(&data[start..])
            }
        }
    })
}

/// The bytes a stream opens with: the `retry:` hint and a comment, so proxies and browsers see bytes at once.
pub fn preamble(retry_ms: u64) -> Bytes {
    Bytes::from(format!("retry: {retry_ms}\n: herald\n\n"))
}

/// The `herald.reset` event (no `id:` line) naming the topics whose history is incomplete.
pub fn reset_event(topics: &[Topic], reason: &str) -> Bytes {
    let data = serde_json::json!({ "topics": topics.iter().map(|t| &**t).collect::<Vec<_>>(), "reason": reason });
    encode(None, Some(RESET_TYPE), &data.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    /// A parser written from the WHATWG "event stream interpretation" algorithm, for checking the encoder.
    #[derive(Debug, Default, PartialEq)]
    struct Parsed {
        id: Option<String>,
        kind: Option<String>,
        data: String,
        retry: Option<u64>,
    }

    fn parse(stream: &str) -> Vec<Parsed> {
        let mut events = Vec::new();
        let (mut data, mut kind, mut id, mut retry) = (String::new(), String::new(), None, None);
        let mut lines = Vec::new();
        let mut rest = stream;
        while let Some(pos) = rest.find(['\r', '\n']) {
            lines.push(&rest[..pos]);
            let skip = if rest[pos..].starts_with("\r\n") { 2 } else { 1 };
            rest = &rest[pos + skip..];
        }
        for line in lines {
            if line.is_empty() {
                if !data.is_empty() {
                    data.pop();
                    events.push(Parsed {
                        id: id.clone(),
                        kind: (!kind.is_empty()).then(|| kind.clone()),
                        data: std::mem::take(&mut data),
                        retry: retry.take(),
                    });
                }
                data.clear();
                kind.clear();
                continue;
            }
            if line.starts_with(':') {
                continue;
            }
            let (field, value) = match line.split_once(':') {
                Some((f, v)) => (f, v.strip_prefix(' ').unwrap_or(v)),
                None => (line, ""),
            };
            match field {
                "data" => {
                    data.push_str(value);
                    data.push('\n');
                }
                "event" => kind = value.to_owned(),
                "id" if !value.contains('\0') => id = Some(value.to_owned()),
                "retry" => retry = value.parse().ok(),
                _ => {}
            }
        }
        events
    }

    fn normalise(data: &str) -> String {
        data.replace("\r\n", "\n").replace('\r', "\n")
    }

    fn roundtrip(data: &str) -> Vec<Parsed> {
        let frame = encode(Some("7-1"), Some("t"), data);
        parse(std::str::from_utf8(&frame).unwrap())
    }

    #[test]
    fn plain_event() {
        assert_eq!(&encode(Some("1-0"), None, "hi")[..], b"id: 1-0\ndata: hi\n\n");
        assert_eq!(&encode(Some("1-0"), Some("x"), "")[..], b"id: 1-0\nevent: x\ndata: \n\n");
    }

    #[test]
    fn chunk_framing() {
        let chunk = encode_chunk(Some("1-0"), None, "hi");
        assert_eq!(&chunk.wire()[..], b"12\r\nid: 1-0\ndata: hi\n\n\r\n");
        assert_eq!(&chunk.payload()[..], b"id: 1-0\ndata: hi\n\n");
        let big = encode_chunk(None, None, &"x".repeat(70_000));
        let text = std::str::from_utf8(big.wire()).unwrap();
        let (size, rest) = text.split_once("\r\n").unwrap();
        assert_eq!(usize::from_str_radix(size, 16).unwrap(), big.payload_len());
        assert_eq!(rest.len(), big.payload_len() + 2);
        assert_eq!(&HEARTBEAT_CHUNK[3..HEARTBEAT_CHUNK.len() - 2], HEARTBEAT);
    }

    #[test]
    fn injections_stay_inside_data() {
        for data in [
            "a\nb",
            "a\r\nb",
            "a\rb",
            "end\r",
            "\n\nid: 99",
            "\r\nevent: x",
            "\rretry: 1",
            "\n",
            "\r\n\r\n",
            " leading space",
            "data: nested",
            "",
        ] {
            let events = roundtrip(data);
            assert_eq!(events.len(), 1, "{data:?}");
            assert_eq!(events[0].data, normalise(data), "{data:?}");
            assert_eq!(events[0].id.as_deref(), Some("7-1"));
            assert_eq!(events[0].kind.as_deref(), Some("t"));
            assert_eq!(events[0].retry, None);
        }
    }

    #[test]
    fn reset_has_no_id() {
        let topics: Vec<Topic> = vec!["a".into(), "b/c".into()];
        let frame = reset_event(&topics, "trimmed");
        let text = std::str::from_utf8(&frame).unwrap();
        assert!(!text.contains("id:"));
        let events = parse(text);
        assert_eq!(events[0].kind.as_deref(), Some(RESET_TYPE));
        let v: serde_json::Value = serde_json::from_str(&events[0].data).unwrap();
        assert_eq!(v["topics"], serde_json::json!(["a", "b/c"]));
    }

    #[test]
    fn preamble_sets_retry_and_dispatches_nothing() {
        let p = preamble(1234);
        assert!(p.starts_with(b"retry: 1234\n:"));
        assert!(parse(std::str::from_utf8(&p).unwrap()).is_empty());
        assert!(parse(std::str::from_utf8(HEARTBEAT).unwrap()).is_empty());
    }

    proptest! {
        #[test]
        fn any_data_reaches_a_parser_unchanged(data in "(?s:.{0,200})|([a-z\r\n:]{0,60})") {
            let events = roundtrip(&data);
            prop_assert_eq!(events.len(), 1);
            prop_assert_eq!(&events[0].data, &normalise(&data));
        }
    }
}
