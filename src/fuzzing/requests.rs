//! Targets for what a subscriber sends: the `GET /events` query, its last event id, and the request head
//! the event-stream front reads.

use std::borrow::Cow;

use http::{HeaderMap, HeaderValue};

use super::reference::{self, Topics};
use super::{names, refused, MAX_TOPICS};
use crate::error::Error;
use crate::http::events::parse_query;
use crate::id::{EventId, LastEventId, MAX_ID_LEN};

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
