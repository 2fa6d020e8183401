//! Entry points of the fuzz targets in `tests/fuzz/` (not part of Herald's API).
//!
//! The parsers of client input are crate-private; each function here calls the real one on arbitrary input
//! and checks what the contract (API.md) says of its answer, panicking with the input's story when it does
//! not hold. The same functions run briefly under `cargo test` (the committed corpus plus random inputs)
//! and coverage-guided by hand (`cargo +nightly bolero test <target>`, see the README's "Fuzzing").
//!
//! - [`query`]: the `GET /events` query (topics, `lastEventId`, `tagTopics`) and the `Last-Event-ID` header,
//!   against a model of the contract.
//! - [`last_event_id`]: id parsing; accepted ids read back as the same text.
//! - [`publish_body`]: a `POST /publish` body read as JSON and as a form; a form against a model, JSON
//!   against `serde_json::Value`.
//! - [`sse_event`]: the SSE encoder against a parser written from the standard ([`event_stream`]).
//! - [`request_head`]: the event-stream front's head parser, against httparse.
//! - [`redis_message`], [`redis_entries`]: the decoders of what Redis sends (pub/sub messages, stream
//!   entries), held to the rules of a publish over HTTP.

use std::borrow::Cow;
use std::time::Duration;

use http::{HeaderMap, HeaderValue};

use crate::error::Error;
use crate::http::events::parse_query;
use crate::http::publish::{parse_event, Format};
use crate::http::Limits;
use crate::id::{EventId, LastEventId, MAX_ID_LEN};
use crate::sse::{self, Event};
use crate::topic::Topic;

pub mod event_stream;
pub mod reference;

use reference::{Topics, TopicsRefused};

/// `--max-topics` for the targets: small, so that inputs reach the limit.
pub const MAX_TOPICS: usize = 4;
/// `--max-event-size` for the targets.
pub const MAX_EVENT_SIZE: usize = 64;

/// The limits the targets parse with.
fn limits() -> Limits {
    Limits {
        max_topics: MAX_TOPICS,
        max_event_size: MAX_EVENT_SIZE,
        max_body_size: 1 << 20,
        max_connections: 1,
        max_connections_per_ip: None,
        heartbeat: Duration::from_secs(15),
        retry_ms: 3000,
        send_timeout: Duration::from_secs(60),
        request_timeout: Duration::from_secs(30),
    }
}

/// The model's name for a refusal of topics.
fn refused(error: &Error) -> Option<TopicsRefused> {
    match error {
        Error::NoTopic => Some(TopicsRefused::None),
        Error::BadTopic(_) => Some(TopicsRefused::Bad),
        Error::TooManyTopics { count, max } => {
            assert_eq!((*count, *max), (MAX_TOPICS + 1, MAX_TOPICS), "too_many_topics counts to max + 1");
            Some(TopicsRefused::TooMany)
        }
        _ => None,
    }
}

fn names(topics: &[Topic]) -> Vec<&str> {
    topics.iter().map(|t| &**t).collect()
}

/// The `GET /events` query parser. `input` is the query string (taken as UTF-8, lossily), then optionally a
/// LF and a `Last-Event-ID` header value.
///
/// Checks, against a model built on `form_urlencoded`: the same topics in the same order (valid, distinct,
/// at most [`MAX_TOPICS`]) or the same refusal (`too_many_topics` exactly when a distinct topic past the
/// maximum comes before any bad one); the header wins over a non-blank `lastEventId`; `tagTopics` is on only
/// for a last `tagTopics=1`; an unreadable id is never an error.
///
/// # Panics
/// When a check fails.
pub fn query(input: &[u8]) {
    let (query, header) = match memchr::memchr(b'\n', input) {
        Some(at) => (&input[..at], Some(&input[at + 1..])),
        None => (input, None),
    };
    let query = String::from_utf8_lossy(query);
    let mut headers = HeaderMap::new();
    let header = header.and_then(|h| HeaderValue::from_bytes(h).ok());
    if let Some(value) = &header {
        headers.insert("last-event-id", value.clone());
    }
    let parsed = parse_query(Some(&query), &headers, MAX_TOPICS);

    // The model.
    let mut topics = Topics::new(MAX_TOPICS);
    let (mut from_query, mut tag) = (None, false);
    let mut refusal = None;
    for (key, value) in form_urlencoded::parse(query.as_bytes()) {
        match &*key {
            "topics" => {
                if let Err(why) = value.split(',').try_for_each(|t| topics.add(t.as_bytes())) {
                    refusal = Some(why);
                    break;
                }
            }
            "lastEventId" if !value.trim_ascii().is_empty() => from_query = Some(value),
            "tagTopics" => tag = value == "1",
            _ => {}
        }
    }
    let expected = match refusal {
        Some(why) => Err(why),
        None => topics.finish(),
    };
    let from_header =
        header.map(|h| String::from_utf8_lossy(h.as_bytes()).into_owned()).filter(|h| !h.trim_ascii().is_empty());
    let last = from_header.map(Cow::Owned).or(from_query).map(|v| model_last_event_id(&v));

    match (parsed, expected) {
        (Ok(q), Ok(topics)) => {
            assert_eq!(names(&q.topics), topics, "topics of {query:?}");
            assert_eq!(q.last_event_id, last, "last event id of {query:?} with header {headers:?}");
            assert_eq!(q.tag_topics, tag, "tagTopics of {query:?}");
        }
        (Err(e), Err(why)) => assert_eq!(refused(&e), Some(why), "refusal of {query:?}: {e}"),
        (parsed, expected) => panic!("{query:?}: parsed {parsed:?}, the model says {expected:?}"),
    }
}

/// What a last event id means, by the model: an id only when it is, ASCII whitespace aside, exactly as
/// Herald writes ids.
fn model_last_event_id(text: &str) -> LastEventId {
    let text = text.trim_ascii();
    match reference::issued_id(text) {
        Some((ms, seq)) if text.len() <= MAX_ID_LEN => LastEventId::Id(EventId::new(ms, seq)),
        _ => LastEventId::Malformed,
    }
}

/// `Last-Event-ID` parsing (`input` taken as UTF-8, lossily, as the query parser does).
///
/// Checks: never a panic; the same answer as the model; an accepted id is, ASCII whitespace aside, the
/// text its `Display` writes, and parses back to itself.
///
/// # Panics
/// When a check fails.
pub fn last_event_id(input: &[u8]) {
    let text = String::from_utf8_lossy(input);
    let parsed = LastEventId::parse(&text);
    assert_eq!(parsed, model_last_event_id(&text), "{text:?}");
    if let LastEventId::Id(id) = parsed {
        let written = id.to_string();
        assert_eq!(written, text.trim_ascii(), "an accepted id reads back as the text sent");
        assert_eq!(written.parse::<EventId>(), Ok(id));
    }
    // `EventId::from_str` is the same without the whitespace.
    let strict = match model_last_event_id(&text) {
        LastEventId::Id(id) if text.trim_ascii() == text => Some(id),
        _ => None,
    };
    assert_eq!(text.parse::<EventId>().ok(), strict, "{text:?}");
}

/// A `POST /publish` body, read both as JSON and as a form.
///
/// Checks, for either: an accepted event has 1 to [`MAX_TOPICS`] valid, distinct topics, no type or a
/// publishable one, and data of at most [`MAX_EVENT_SIZE`] bytes. A form is checked against a model of the
/// contract (the same event, or the same refusal: a value that is not UTF-8 is refused, never delivered
/// changed). JSON is checked against `serde_json::Value`: an accepted body is an object whose `topic` and
/// `topics` give the event's topics, whose `type` is its type, and whose `data` is its data (a string's
/// text, or any other value as `Value` prints it).
///
/// # Panics
/// When a check fails.
pub fn publish_body(body: &[u8]) {
    let limits = limits();
    form_body(body, parse_event(Format::Form, body, &limits));
    json_body(body, parse_event(Format::Json, body, &limits));
}

fn check_event(event: &crate::backend::NewEvent) {
    assert!((1..=MAX_TOPICS).contains(&event.topics.len()), "{} topics", event.topics.len());
    for (i, topic) in event.topics.iter().enumerate() {
        assert!(reference::is_topic(topic), "bad topic {topic:?} accepted");
        assert!(!event.topics[..i].contains(topic), "topic {topic:?} twice");
    }
    if let Some(kind) = &event.kind {
        assert!(reference::is_publishable_type(kind), "bad type {kind:?} accepted");
    }
    assert!(event.data.len() <= MAX_EVENT_SIZE, "{} bytes of data accepted", event.data.len());
}

/// What a form body should give, by the model; refusals are named by [`error_name`].
fn model_form(body: &[u8]) -> Result<(Vec<String>, Option<String>, String), &'static str> {
    let mut topics = Topics::new(MAX_TOPICS);
    let (mut kind, mut data) = (None, None);
    let text = |v: Vec<u8>| String::from_utf8(v).map_err(|_| "bad_request");
    for (key, value) in reference::form_pairs(body) {
        match &key[..] {
            b"topic" | b"topics" => topics.add(&value).map_err(|why| topics_name(Some(why)))?,
            b"type" => kind = Some(text(value)?),
            b"data" => data = Some(text(value)?),
            _ => {}
        }
    }
    let topics = topics.finish().map_err(|why| topics_name(Some(why)))?;
    let kind = kind.filter(|k| !k.is_empty());
    if kind.as_deref().is_some_and(|k| !reference::is_publishable_type(k)) {
        return Err("bad_type");
    }
    let data = data.ok_or("missing_data")?;
    if data.len() > MAX_EVENT_SIZE {
        return Err("event_too_large");
    }
    Ok((topics, kind, data))
}

fn topics_name(why: Option<TopicsRefused>) -> &'static str {
    match why {
        Some(TopicsRefused::None) => "no_topic",
        Some(TopicsRefused::Bad) => "bad_topic",
        Some(TopicsRefused::TooMany) => "too_many_topics",
        None => "other",
    }
}

/// The name of a publish refusal, for comparing with the models.
fn error_name(error: &Error) -> &'static str {
    match error {
        Error::BadRequest(_) => "bad_request",
        Error::BadType(_) => "bad_type",
        Error::MissingData => "missing_data",
        Error::EventTooLarge { size, max } => {
            assert!(size > max, "event_too_large for {size} bytes, max {max}");
            "event_too_large"
        }
        other => topics_name(refused(other)),
    }
}

fn form_body(body: &[u8], parsed: Result<crate::backend::NewEvent, Error>) {
    // The model's decoding agrees with `form_urlencoded` wherever the bytes are text.
    let model_pairs = reference::form_pairs(body);
    let theirs: Vec<_> = form_urlencoded::parse(body).collect();
    assert_eq!(model_pairs.len(), theirs.len());
    for ((k, v), (tk, tv)) in model_pairs.iter().zip(&theirs) {
        assert_eq!((String::from_utf8_lossy(k), String::from_utf8_lossy(v)), (tk.clone(), tv.clone()));
    }
    let expected = model_form(body);
    match (parsed, expected) {
        (Ok(event), Ok((topics, kind, data))) => {
            check_event(&event);
            assert_eq!(names(&event.topics), topics, "form {body:?}");
            assert_eq!((event.kind, event.data), (kind, data), "form {body:?}");
        }
        (Err(e), Err(name)) => assert_eq!(error_name(&e), name, "form {body:?}: {e}"),
        (parsed, expected) => panic!("form {body:?}: parsed {parsed:?}, the model says {expected:?}"),
    }
}

fn json_body(body: &[u8], parsed: Result<crate::backend::NewEvent, Error>) {
    use serde_json::Value;
    let value = serde_json::from_slice::<Value>(body);
    let object = match &value {
        Ok(Value::Object(object)) => Some(object),
        _ => None,
    };
    let strings = |key: &str| -> Vec<&Value> {
        match object.and_then(|o| o.get(key)) {
            Some(Value::Array(items)) if key == "topics" => items.iter().collect(),
            Some(Value::Null) | None => Vec::new(),
            Some(other) => vec![other],
        }
    };
    let event = match parsed {
        Ok(event) => event,
        Err(e) => {
            // A refusal must have its reason in the body, when the body is a readable object.
            let Some(object) = object else { return };
            let topics: Vec<&Value> = strings("topic").into_iter().chain(strings("topics")).collect();
            let is_bad = |t: &&Value| t.as_str().is_some_and(|t| !reference::is_topic(t));
            match error_name(&e) {
                "no_topic" => assert!(topics.is_empty(), "no_topic for {body:?}"),
                "bad_topic" => assert!(topics.iter().any(is_bad), "bad_topic for {body:?}"),
                "bad_type" => assert!(
                    object.get("type").and_then(Value::as_str).is_some_and(|k| !reference::is_publishable_type(k)),
                    "bad_type for {body:?}"
                ),
                "missing_data" => assert!(object.get("data").is_none_or(Value::is_null), "missing_data for {body:?}"),
                _ => {}
            }
            return;
        }
    };
    check_event(&event);
    let Some(object) = object else {
        // Accepted, yet `Value` cannot read it: only its nesting limit may explain that (`data` is kept as
        // text, whatever its depth).
        let error = value.err().map(|e| e.to_string()).unwrap_or_default();
        assert!(error.contains("recursion limit"), "JSON {body:?} accepted, but not an object: {error}");
        return;
    };
    let mut topics: Vec<&str> = Vec::new();
    for topic in strings("topic").into_iter().chain(strings("topics")) {
        let topic = topic.as_str().unwrap_or_else(|| panic!("JSON {body:?}: a topic that is not a string"));
        if !topics.contains(&topic) {
            topics.push(topic);
        }
    }
    assert_eq!(names(&event.topics), topics, "JSON {body:?}");
    let kind = object.get("type").and_then(Value::as_str).filter(|k| !k.is_empty());
    assert_eq!(event.kind.as_deref(), kind, "JSON {body:?}");
    match object.get("data") {
        Some(Value::String(text)) => assert_eq!(&event.data, text, "JSON {body:?}"),
        // Compact, as `Value` prints it, but for the spelling of exponents (kept as sent).
        Some(other) => assert_eq!(exponents_as_value_prints_them(&event.data), other.to_string(), "JSON {body:?}"),
        None => panic!("JSON {body:?} accepted without data"),
    }
}

/// JSON text with every exponent (an `e` or `E` after a digit, outside strings) written as
/// `serde_json::Value` prints it (`1E5` is `1e+5`).
fn exponents_as_value_prints_them(json: &str) -> String {
    let mut out = String::with_capacity(json.len());
    let (mut in_string, mut escaped) = (false, false);
    let mut chars = json.chars().peekable();
    while let Some(c) = chars.next() {
        if in_string {
            (in_string, escaped) = (escaped || c != '"', !escaped && c == '\\');
            out.push(c);
        } else if matches!(c, 'e' | 'E') && out.ends_with(|d: char| d.is_ascii_digit()) {
            out.push('e');
            if !matches!(chars.peek(), Some('+' | '-')) {
                out.push('+');
            }
        } else {
            in_string = c == '"';
            out.push(c);
        }
    }
    out
}

/// An event to encode: any id, type, topics and data within the encoder's contract.
#[derive(Debug)]
pub struct SseInput<'a> {
    /// The id.
    pub id: EventId,
    /// Any type (Herald validates types before they reach the encoder; the encoder still leaves out one
    /// with a line break).
    pub kind: Option<&'a str>,
    /// The event's topics (encoded only when valid and distinct).
    pub topics: &'a [&'a str],
    /// The topics of a tagged stream reading it (plus the event's first topic when they share none).
    pub subscribed: &'a [&'a str],
    /// Any data.
    pub data: &'a str,
    /// The stream's `retry:` hint.
    pub retry_ms: u64,
}

/// The SSE encoder against [`event_stream::parse`].
///
/// Checks: the frame is exactly one event with the id, type (none when it has a line break) and data (line
/// ends normalised to LF), no
/// `retry` and no `topics` field; its HTTP/1.1 chunk framing is right; the tagged frame is the same event
/// plus a `topics:` field naming the subscribed topics in the event's order; a stream of preamble, event,
/// heartbeat, tagged event and `herald.reset` dispatches exactly those three events, the reset naming the
/// topics it was given.
///
/// # Panics
/// When a check fails.
pub fn sse_event(input: &SseInput<'_>) {
    // Any type: one with a line break is left out by the encoder (it would forge fields), an empty one is
    // none; anything else is delivered as it is.
    let kind = input.kind.filter(|k| !k.is_empty() && !k.contains(['\r', '\n']));
    let distinct = input.topics.iter().enumerate().all(|(i, t)| !input.topics[..i].contains(t));
    if input.topics.is_empty() || !distinct || !input.topics.iter().all(|t| reference::is_topic(t)) {
        return;
    }
    let topics: Box<[Topic]> = input.topics.iter().map(|t| Topic::from(*t)).collect();
    // A tagged stream reads an event only through a topic they share (the hub delivers nothing else).
    let mut subscribed: Vec<Topic> = input.subscribed.iter().map(|t| Topic::from(*t)).collect();
    if !input.topics.iter().any(|t| input.subscribed.contains(t)) {
        subscribed.push(topics[0].clone());
    }
    let event = Event::new(input.id, topics.clone(), input.kind, input.data);

    let expected = event_stream::ParsedEvent {
        id: Some(input.id.to_string()),
        kind: kind.map(str::to_owned),
        data: event_stream::normalise_line_ends(input.data),
        retry: None,
        topics: None,
    };
    let payload = text(event.chunk.payload_slice());
    assert_eq!(event_stream::parse(payload), std::slice::from_ref(&expected), "frame {payload:?}");
    assert!(payload.ends_with("\n\n"));
    let wire = event.chunk.wire();
    assert_eq!(&wire[..], format!("{:x}\r\n{payload}\r\n", payload.len()).as_bytes(), "chunk framing");

    let tagged = event.tagged(&subscribed);
    let picked: Vec<&str> = input.topics.iter().copied().filter(|t| subscribed.iter().any(|s| &**s == *t)).collect();
    let tagged_expected = event_stream::ParsedEvent { topics: Some(picked.join(",")), ..expected.clone() };
    let tagged_payload = text(tagged.payload_slice());
    assert_eq!(
        event_stream::parse(tagged_payload),
        std::slice::from_ref(&tagged_expected),
        "tagged frame {tagged_payload:?}"
    );

    let reset = sse::reset_event(&topics, "trimmed");
    let stream =
        [&sse::preamble(input.retry_ms)[..], payload.as_bytes(), sse::HEARTBEAT, tagged_payload.as_bytes(), &reset]
            .concat();
    let parsed = event_stream::parse(text(&stream));
    assert_eq!(parsed.len(), 3, "{:?}", text(&stream));
    assert_eq!(parsed[0], event_stream::ParsedEvent { retry: Some(input.retry_ms), ..expected });
    assert_eq!(parsed[1], tagged_expected);
    // No `id:` line: the id a browser holds stays the last event's.
    assert_eq!(
        (parsed[2].id.as_deref(), parsed[2].kind.as_deref()),
        (Some(&*input.id.to_string()), Some(sse::RESET_TYPE))
    );
    let data: serde_json::Value = serde_json::from_str(&parsed[2].data).unwrap_or_default();
    assert_eq!(data, serde_json::json!({ "topics": input.topics, "reason": "trimmed" }));
}

fn text(bytes: &[u8]) -> &str {
    std::str::from_utf8(bytes).unwrap_or_else(|e| panic!("the encoder wrote bytes that are not UTF-8: {e}"))
}

/// The request-head front (`server::front::parse_head`), which takes the first head of every connection
/// and serves a body-less `GET /events` itself, leaving anything else to hyper.
///
/// Checks: never a panic; a head taken as `GET /events` is one httparse reads completely (with room for
/// any number of header fields) as `GET` of the same path and query (a fragment dropped), in the same
/// HTTP version, with the same header fields, none of them announcing a body or an upgrade; every shorter
/// prefix of that head is "partial" (however the head is split into reads, it is taken the same way); a
/// head called partial is partial for httparse too (or the start of HTTP/2's preface); HTTP/2 is told apart
/// exactly by its preface; a head left to hyper as HTTP/1 is a complete HTTP/1 head; a head refused is
/// malformed for httparse too, or has more than 100 header fields.
///
/// # Panics
/// When a check fails.
pub fn request_head(input: &[u8]) {
    use crate::server::front::{parse_head, too_large, Parsed};
    // A head that fills the buffer: 414 when the request line alone did not fit, else 431.
    let uri_too_long = matches!(too_large(input), Error::UriTooLong);
    assert_eq!(uri_too_long, memchr::memchr(b'\n', input).is_none());
    let mut fields = vec![httparse::EMPTY_HEADER; 1024];
    let mut reference = httparse::Request::new(&mut fields);
    let status = reference.parse(input);
    // HTTP/2 with prior knowledge starts with this preface (RFC 9113, 3.4).
    const PREFACE: &[u8] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";
    let h2 = input.starts_with(PREFACE);
    let maybe_h2 = PREFACE.starts_with(input);
    let request = match parse_head(input) {
        Parsed::Events(request) => request,
        Parsed::Http2 => {
            assert!(h2, "taken as HTTP/2 without the preface");
            return;
        }
        Parsed::Partial => {
            let partial = matches!(status, Ok(httparse::Status::Partial));
            assert!(partial || maybe_h2, "partial, but httparse says {status:?}");
            return;
        }
        // Left to hyper: a complete HTTP/1 head (not a body-less `GET /events`).
        Parsed::Other => {
            assert!(!h2 && !maybe_h2, "HTTP/2 left to hyper as HTTP/1");
            assert!(matches!(status, Ok(httparse::Status::Complete(_))), "left to hyper: {status:?}");
            return;
        }
        // Refused with a JSON error: not HTTP/1 (nor HTTP/2), or more header fields than hyper takes.
        Parsed::Bad(error) => {
            assert!(!h2 && !maybe_h2, "the start of HTTP/2 refused");
            match error {
                Error::MalformedHead => assert!(status.is_err(), "refused as malformed, but httparse says {status:?}"),
                Error::HeadTooLarge => {
                    let lines = memchr::memchr_iter(b'\n', input).count();
                    assert!(lines > 100, "refused for too many header fields, with {lines} lines");
                }
                other => panic!("a head refused with {other:?}"),
            }
            return;
        }
    };
    assert!(!h2, "HTTP/2 taken as GET /events");
    let Ok(httparse::Status::Complete(head_len)) = status else {
        panic!("taken as GET /events, but httparse says {status:?}");
    };
    assert_eq!(reference.method, Some("GET"));
    assert_eq!(request.uri().path(), "/events");
    // A fragment (not allowed in a request target) is dropped, as `http::Uri` (and so hyper) drops it.
    let target = reference.path.and_then(|p| p.split('#').next());
    assert_eq!(request.uri().path_and_query().map(|p| p.as_str()), target, "path and query");
    let version = if reference.version == Some(0) { http::Version::HTTP_10 } else { http::Version::HTTP_11 };
    assert_eq!(request.version(), version);
    assert_eq!(request.headers().len(), reference.headers.len(), "header fields");
    for field in reference.headers.iter() {
        let name = field.name.to_ascii_lowercase();
        let sent: Vec<&[u8]> =
            reference.headers.iter().filter(|f| f.name.eq_ignore_ascii_case(&name)).map(|f| f.value).collect();
        let taken: Vec<&[u8]> = request.headers().get_all(&name).iter().map(|v| v.as_bytes()).collect();
        assert_eq!(taken, sent, "values of {name}");
        let body =
            matches!(&*name, "transfer-encoding" | "upgrade") || (name == "content-length" && field.value != b"0");
        assert!(!body, "taken as GET /events with {name}: {:?}", String::from_utf8_lossy(field.value));
    }
    // However the head arrives, in one read or many, it is taken the same way.
    let step = (head_len / 64).max(1);
    for end in (0..head_len).step_by(step).chain([head_len - 1]) {
        assert!(
            matches!(parse_head(&input[..end]), Parsed::Partial),
            "the first {end} bytes of the head are not partial"
        );
    }
}

/// An event decoded from Redis, checked as strictly as one published over HTTP: the id it was read with
/// (written as Herald writes ids), 1 or more valid, distinct topics, no type or a publishable one; and its
/// frame is exactly one event with that id, type and data for a standard parser.
fn check_from_redis(event: &Event, id: EventId, topics: &[String], kind: Option<&str>, data: &str) {
    assert_eq!(event.id, id);
    assert_eq!(id.to_string().parse::<EventId>(), Ok(id));
    let names: Vec<&str> = event.topics.iter().map(|t| &**t).collect();
    assert_eq!(names, topics, "topics");
    assert!(!names.is_empty());
    for (i, topic) in names.iter().enumerate() {
        assert!(reference::is_topic(topic), "bad topic {topic:?} from Redis");
        assert!(!names[..i].contains(topic), "topic {topic:?} twice");
    }
    if let Some(kind) = kind {
        assert!(reference::is_publishable_type(kind), "bad type {kind:?} from Redis");
    }
    let expected = event_stream::ParsedEvent {
        id: Some(id.to_string()),
        kind: kind.map(str::to_owned),
        data: event_stream::normalise_line_ends(data),
        retry: None,
        topics: None,
    };
    let frame = text(event.chunk.payload_slice());
    assert_eq!(event_stream::parse(frame), std::slice::from_ref(&expected), "frame {frame:?}");
}

/// What Redis gave, as the model of API.md wants it taken: the topics (duplicates merged), the type (an
/// empty one is none), the data; `None` when a publish over HTTP could not have sent it.
fn model_from_redis<'a>(
    topics: impl IntoIterator<Item = &'a str>,
    kind: Option<&'a str>,
    data: &'a str,
) -> Option<(Vec<String>, Option<&'a str>, &'a str)> {
    let mut names = Topics::new(usize::MAX);
    for topic in topics {
        names.add(topic.as_bytes()).ok()?;
    }
    let kind = kind.filter(|k| !k.is_empty());
    if kind.is_some_and(|k| !reference::is_publishable_type(k)) {
        return None;
    }
    Some((names.finish().ok()?, kind, data))
}

/// A pub/sub payload, as the node's pub/sub connection decodes it (`Message::read`, then `Message::event`).
///
/// Checks: never a panic; a payload read as a message is a JSON object (as `serde_json::Value` reads it)
/// whose `id` is the id read; its event is made exactly when a publish over HTTP could have sent it, and
/// then as [`check_from_redis`] says.
///
/// # Panics
/// When a check fails.
pub fn redis_message(payload: &[u8]) {
    use crate::backend::redis::scripts::Message;
    use serde_json::Value;
    let Ok((id, message)) = Message::read(payload) else { return };
    let event = message.event(id);
    let value: Value = serde_json::from_slice(payload)
        .unwrap_or_else(|e| panic!("{payload:?} read as a message, but it is not JSON: {e}"));
    let field = |name: &str| value.get(name).and_then(Value::as_str);
    assert_eq!(field("id"), Some(&*id.to_string()), "id of {payload:?}");
    let topics: Vec<&str> =
        value.get("topics").and_then(Value::as_array).into_iter().flatten().filter_map(Value::as_str).collect();
    let expected = model_from_redis(topics, field("type"), field("data").unwrap_or_default());
    match (event, expected) {
        (Some(event), Some((topics, kind, data))) => check_from_redis(&event, id, &topics, kind, data),
        (None, None) => {}
        (event, expected) => panic!("message {payload:?}: decoded {event:?}, the model says {expected:?}"),
    }
}

/// A reply to `XRANGE` (or anything else Redis could answer), given as RESP bytes and read by the redis
/// crate's own parser into a `redis::Value` tree; each element (or the reply itself, when it is not an
/// array) is decoded as a stream entry (`decode_entry`).
///
/// Checks: never a panic; an entry becomes an event exactly when a publish over HTTP could have sent it
/// (its fields as the model reads them: `topics`, `type`, `data`, the last of each counting, each one text),
/// and then as [`check_from_redis`] says.
///
/// # Panics
/// When a check fails.
pub fn redis_entries(resp: &[u8]) {
    use crate::backend::redis::scripts::{decode_entry, id_of};
    use redis::Value;
    let Ok(reply) = redis::parse_redis_value(resp) else { return };
    let entries = match &reply {
        Value::Array(entries) => entries.as_slice(),
        other => std::slice::from_ref(other),
    };
    for entry in entries {
        let read_id = id_of(entry);
        assert_eq!(read_id.is_some(), redis_text(entry).and_then(reference::issued_id).is_some(), "{entry:?}");
        let decoded = decode_entry(entry);
        // The model: `[id, [name, value, …]]`.
        let expected = (|| {
            let Value::Array(parts) = entry else { return None };
            let (ms, seq) = reference::issued_id(redis_text(parts.first()?)?)?;
            let Value::Array(fields) = parts.get(1)? else { return None };
            let (mut topics, mut kind, mut data) = (None, None, None);
            for pair in fields.chunks_exact(2) {
                let name = match &pair[0] {
                    Value::BulkString(b) => b.as_slice(),
                    Value::SimpleString(s) => s.as_bytes(),
                    _ => continue,
                };
                let slot = match name {
                    b"topics" => &mut topics,
                    b"type" => &mut kind,
                    b"data" => &mut data,
                    _ => continue,
                };
                *slot = Some(redis_text(&pair[1])?);
            }
            Some((EventId::new(ms, seq), topics?, kind, data?))
        })();
        let expected = expected
            .as_ref()
            .and_then(|(id, topics, kind, data)| model_from_redis(topics.split(','), *kind, data).map(|m| (*id, m)));
        match (decoded, expected) {
            (Some(event), Some((id, (topics, kind, data)))) => check_from_redis(&event, id, &topics, kind, data),
            (None, None) => {}
            (event, expected) => panic!("entry {entry:?}: decoded {event:?}, the model says {expected:?}"),
        }
    }
}

/// A bulk or simple string's text, by the model.
fn redis_text(value: &redis::Value) -> Option<&str> {
    match value {
        redis::Value::BulkString(b) => std::str::from_utf8(b).ok(),
        redis::Value::SimpleString(s) => Some(s),
        _ => None,
    }
}
