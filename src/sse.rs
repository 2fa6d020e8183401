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
//! an event early or forge an `id:`, `event:`, `retry:` or `topics:` field; a spec-compliant parser sees
//! exactly the published data with line ends normalised to LF.
//!
//! ## Tagged streams
//!
//! A stream opened with `tagTopics=1` gets each event with one more line, `topics: a,b` (after `event:`,
//! before `data:`), naming the event's topics that the stream subscribed to, in the order of the event's
//! own topic list. Those frames are encoded once per distinct set of tagged topics and shared the same way:
//! [`Event::tagged`] builds one lazily the first time a stream asks for that set and caches it with the
//! event, so every other stream asking for the same set gets the same [`Bytes`]. An event that no tagged
//! stream reads costs one empty cell (16 bytes) for this.

use std::sync::{Mutex, OnceLock, PoisonError};

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
    /// Frames with a `topics:` line, made on first use by a tagged stream (see "Tagged streams" above).
    tagged: OnceLock<Box<TaggedFrames>>,
}

/// The tagged frames of one event, one per distinct set of tagged topics asked for so far.
#[derive(Debug, Default)]
struct TaggedFrames {
    /// Tagged with all of the event's topics: what every stream gets for a single-topic event, and any
    /// stream subscribed to all of the event's topics. Lock-free once made.
    all: OnceLock<Chunk>,
    /// Tagged with a proper subset of the event's topics; few per event (at most one per distinct
    /// subscription among the streams that read it), so a list.
    some: Mutex<Vec<(TopicSubset, Chunk)>>,
}

/// Which of an event's topics a stream subscribed to, as bits over the indices of `Event::topics`.
#[derive(Debug, Clone, PartialEq, Eq)]
enum TopicSubset {
    /// Events with at most 64 topics (the default `--max-topics`): one word, no allocation.
    Small(u64),
    /// Events with more topics.
    Large(Box<[u64]>),
}

impl TopicSubset {
    /// The subset of `topics` that `subscribed` contains, and whether that is all of them.
    fn of(topics: &[Topic], subscribed: &[Topic]) -> (TopicSubset, bool) {
        let wanted = |t: &Topic| subscribed.iter().any(|s| std::sync::Arc::ptr_eq(s, t) || s == t);
        if topics.len() <= 64 {
            let mut bits = 0u64;
            for (i, topic) in topics.iter().enumerate() {
                if wanted(topic) {
                    bits |= 1 << i;
                }
            }
            let all = bits.count_ones() as usize == topics.len();
            return (TopicSubset::Small(bits), all);
        }
        let mut words = vec![0u64; topics.len().div_ceil(64)].into_boxed_slice();
        let mut count = 0;
        for (i, topic) in topics.iter().enumerate() {
            if wanted(topic) {
                words[i / 64] |= 1 << (i % 64);
                count += 1;
            }
        }
        (TopicSubset::Large(words), count == topics.len())
    }

    fn contains(&self, i: usize) -> bool {
        match self {
            TopicSubset::Small(bits) => i < 64 && bits & (1 << i) != 0,
            TopicSubset::Large(words) => words.get(i / 64).is_some_and(|w| w & (1 << (i % 64)) != 0),
        }
    }
}

impl Event {
    /// Encodes an event.
    pub fn new(id: EventId, topics: Box<[Topic]>, kind: Option<&str>, data: &str) -> Self {
        let chunk = encode_chunk(Some(&id.to_string()), kind, data);
        Event { id, topics, chunk, tagged: OnceLock::new() }
    }

    /// The event's frame for a tagged stream subscribed to `subscribed`: with a `topics:` line naming the
    /// event's topics that `subscribed` contains, in the order of [`Event::topics`]. Made once per distinct
    /// set and shared: two streams whose subscriptions pick the same topics of this event get the same
    /// bytes.
    pub fn tagged(&self, subscribed: &[Topic]) -> Chunk {
        let frames = self.tagged.get_or_init(Box::default);
        // Single-topic events reach a stream only through that topic: always "all", no search needed.
        if self.topics.len() == 1 {
            return frames.all.get_or_init(|| self.encode_tagged(|_| true)).clone();
        }
        let (subset, all) = TopicSubset::of(&self.topics, subscribed);
        if all {
            return frames.all.get_or_init(|| self.encode_tagged(|_| true)).clone();
        }
        let mut some = frames.some.lock().unwrap_or_else(PoisonError::into_inner);
        if let Some((_, chunk)) = some.iter().find(|(s, _)| *s == subset) {
            return chunk.clone();
        }
        let chunk = self.encode_tagged(|i| subset.contains(i));
        some.push((subset, chunk.clone()));
        chunk
    }

    /// The frame with a `topics:` line naming the topics at the indices `pick` accepts, spliced in after
    /// the `id:` and `event:` lines of the untagged frame (those never contain a line break, and every
    /// line after them is a `data:` line).
    fn encode_tagged(&self, pick: impl Fn(usize) -> bool) -> Chunk {
        let payload = self.chunk.payload_slice();
        let mut split = memchr::memchr(b'\n', payload).map_or(payload.len(), |end| end + 1);
        if payload[split..].starts_with(b"event: ") {
            split += memchr::memchr(b'\n', &payload[split..]).map_or(payload.len() - split, |end| end + 1);
        }
        let picked = || self.topics.iter().enumerate().filter(|(i, _)| pick(*i)).map(|(_, t)| t);
        let line_len = 8 + picked().map(|t| t.len() + 1).sum::<usize>();
        chunk_with(payload.len() + line_len, |buf| {
            buf.put_slice(&payload[..split]);
            buf.put_slice(b"topics: ");
            for (n, topic) in picked().enumerate() {
                if n > 0 {
                    buf.put_u8(b',');
                }
                buf.put_slice(topic.as_bytes());
            }
            buf.put_u8(b'\n');
            buf.put_slice(&payload[split..]);
        })
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

/// The opening of a tagged stream (`tagTopics=1`): as [`preamble`], plus a comment `: live <id>` naming the
/// position at which the subscription went live, when there is one: every event with a greater id
/// reaches the stream, and resuming from it (`Last-Event-ID`) misses nothing and triggers no reset.
pub fn tagged_preamble(retry_ms: u64, live_from: Option<EventId>) -> Bytes {
    match live_from {
        Some(id) => Bytes::from(format!("retry: {retry_ms}\n: herald\n: live {id}\n\n")),
        None => preamble(retry_ms),
    }
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

    use crate::fuzzing::event_stream::{normalise_line_ends as normalise, parse, ParsedEvent as Parsed};

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

    fn topics(names: &[&str]) -> Box<[Topic]> {
        names.iter().map(|t| Topic::from(*t)).collect()
    }

    fn parse_chunk(chunk: &Chunk) -> Vec<Parsed> {
        parse(std::str::from_utf8(chunk.payload_slice()).unwrap())
    }

    #[test]
    fn tagged_frame_names_the_subscribed_topics_in_the_event_order() {
        let event = Event::new(EventId::new(7, 1), topics(&["a", "b", "c"]), Some("doc.updated"), "x\ny");
        let tagged = event.tagged(&topics(&["c", "a", "z"]));
        assert_eq!(
            std::str::from_utf8(tagged.payload_slice()).unwrap(),
            "id: 7-1\nevent: doc.updated\ntopics: a,c\ndata: x\ndata: y\n\n"
        );
        let parsed = parse_chunk(&tagged);
        assert_eq!(parsed.len(), 1);
        assert_eq!(parsed[0].topics.as_deref(), Some("a,c"));
        assert_eq!(
            (parsed[0].id.as_deref(), parsed[0].kind.as_deref(), &*parsed[0].data),
            (Some("7-1"), Some("doc.updated"), "x\ny")
        );
        // Apart from the topics line, the same event as the untagged frame.
        let untagged = parse_chunk(&event.chunk);
        assert_eq!(Parsed { topics: None, ..parse_chunk(&tagged).remove(0) }, untagged[0]);
        // Untyped: the line comes right after the id; the chunk framing stays right.
        let plain = Event::new(EventId::new(8, 0), topics(&["a"]), None, "");
        let tagged = plain.tagged(&topics(&["a"]));
        assert_eq!(&tagged.wire()[..], b"1a\r\nid: 8-0\ntopics: a\ndata: \n\n\r\n");
    }

    #[test]
    fn data_cannot_forge_a_topics_line() {
        for data in [
            "topics: evil",
            "x\ntopics: evil",
            "x\r\ntopics: evil\r\n",
            "\rtopics: evil\n\ndata: y",
            "\n\nid: 9\ntopics: b",
        ] {
            let event = Event::new(EventId::new(7, 1), topics(&["a", "b"]), Some("t"), data);
            let parsed = parse_chunk(&event.tagged(&topics(&["a"])));
            assert_eq!(parsed.len(), 1, "{data:?}");
            assert_eq!(parsed[0].topics.as_deref(), Some("a"), "{data:?}");
            assert_eq!(parsed[0].data, normalise(data), "{data:?}");
            assert_eq!(parsed[0].id.as_deref(), Some("7-1"));
        }
    }

    /// Encode once: every stream asking for the same topics of an event gets the same bytes.
    #[test]
    fn tagged_frames_are_shared_per_subset() {
        let event = Event::new(EventId::new(1, 0), topics(&["a", "b", "c"]), None, "d");
        let ptr = |c: Chunk| c.wire().as_ptr();
        let a1 = event.tagged(&topics(&["a"]));
        let a2 = event.tagged(&topics(&["x", "a", "y"]));
        assert_eq!(ptr(a1.clone()), ptr(a2), "same subset {{a}}: one encoding");
        let ab = event.tagged(&topics(&["b", "a"]));
        assert_ne!(ptr(ab.clone()), ptr(a1.clone()), "{{a,b}} differs from {{a}}");
        assert_eq!(ptr(ab), ptr(event.tagged(&topics(&["a", "b", "q"]))));
        let all = event.tagged(&topics(&["c", "b", "a"]));
        assert_eq!(ptr(all.clone()), ptr(event.tagged(&topics(&["a", "b", "c", "d"]))));
        assert_eq!(parse_chunk(&all)[0].topics.as_deref(), Some("a,b,c"));
        assert_ne!(ptr(all), ptr(a1));
        // The untagged frame is untouched.
        assert_eq!(&event.chunk.payload()[..], b"id: 1-0\ndata: d\n\n");
    }

    #[test]
    fn events_with_more_than_64_topics_are_tagged_too() {
        let names: Vec<String> = (0..70).map(|i| format!("t{i}")).collect();
        let all: Box<[Topic]> = names.iter().map(|t| Topic::from(t.as_str())).collect();
        let event = Event::new(EventId::new(1, 0), all.clone(), None, "d");
        let some = topics(&["t69", "t1", "t64"]);
        let tagged = event.tagged(&some);
        assert_eq!(parse_chunk(&tagged)[0].topics.as_deref(), Some("t1,t64,t69"));
        assert_eq!(tagged.wire().as_ptr(), event.tagged(&topics(&["t64", "t69", "t1"])).wire().as_ptr());
        let everything = parse_chunk(&event.tagged(&all))[0].topics.clone().unwrap();
        assert_eq!(everything, names.join(","));
    }

    #[test]
    fn tagged_preamble_carries_the_live_position() {
        assert_eq!(&tagged_preamble(3000, Some(EventId::new(17, 2)))[..], b"retry: 3000\n: herald\n: live 17-2\n\n");
        assert_eq!(tagged_preamble(3000, None), preamble(3000));
        assert_eq!(&preamble(3000)[..], b"retry: 3000\n: herald\n\n");
        assert!(parse(std::str::from_utf8(&tagged_preamble(5, Some(EventId::new(1, 0)))).unwrap()).is_empty());
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
