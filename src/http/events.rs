//! `GET /events`: parse the request, subscribe (live first), read history, and start the stream.

use bytes::{Bytes, BytesMut};
use http::{header, HeaderMap, HeaderValue, Method, Request, Response};

use super::body::{EventStream, StreamPermit};
use super::client::client_address;
use super::form;
use super::{require_method, AppState, ResponseBody};
use crate::auth::SubscribeGrant;
use crate::backend::History;
use crate::error::Error;
use crate::id::{EventId, LastEventId};
use crate::metrics::Metrics;
use crate::sse;
use crate::topic::{Topic, TopicSet};

/// What a subscription asks for.
#[derive(Debug, PartialEq)]
pub(crate) struct SubscribeQuery {
    pub(crate) topics: Vec<Topic>,
    pub(crate) last_event_id: Option<LastEventId>,
    /// `tagTopics=1`: each event carries a `topics:` line.
    pub(crate) tag_topics: bool,
}

/// Reads `topics` (repeatable, comma-separated), the last event id (the `Last-Event-ID` header wins over
/// the `lastEventId` query parameter; an empty value counts as absent) and `tagTopics`.
///
/// `tagTopics=1` turns tagging on; any other value (`0`, empty, anything else) leaves it off rather than
/// failing the request, as for the last event id: a browser that gets an error stops reconnecting. When
/// the parameter is repeated, the last one counts.
pub(crate) fn parse_query(
    query: Option<&str>,
    headers: &HeaderMap,
    max_topics: usize,
) -> Result<SubscribeQuery, Error> {
    // One pass, stopping at the first bad topic or the first topic too many.
    let mut topics = TopicSet::new(max_topics);
    let mut from_query = None;
    let mut tag_topics = false;
    for (key, value) in form::pairs(query.unwrap_or("").as_bytes()) {
        match &*key {
            // A topic that is not UTF-8 is a bad topic, not one with U+FFFD in it.
            b"topics" => topics.add_list_bytes(&value)?,
            // An id that is not UTF-8 is malformed: still never an error (see Resuming in API.md).
            b"lastEventId" if !value.trim_ascii().is_empty() => from_query = Some(value),
            b"tagTopics" => tag_topics = &*value == b"1",
            _ => {}
        }
    }
    let topics = topics.finish()?;
    let from_header = headers
        .get("last-event-id")
        .map(|v| String::from_utf8_lossy(v.as_bytes()).into_owned())
        .filter(|v| !v.trim_ascii().is_empty());
    let from_query = from_query.map(|v| String::from_utf8_lossy(&v).into_owned());
    let last_event_id = from_header.or(from_query).map(|v| LastEventId::parse(&v));
    Ok(SubscribeQuery { topics, last_event_id, tag_topics })
}

/// Handles `GET /events`. The response is returned (and its head sent) only once the subscription is
/// live, so any event published after the client sees the head reaches it.
pub(super) async fn subscribe<B>(state: &AppState, req: Request<B>) -> Result<Response<ResponseBody>, Error> {
    require_method(req.method(), &[Method::GET], "GET")?;
    let query = parse_query(req.uri().query(), req.headers(), state.limits.max_topics)?;
    let grant = match &state.auth {
        Some(auth) => auth.authorize_subscribe(req.headers(), req.uri().query(), &query.topics)?,
        None => SubscribeGrant { ends_at: None },
    };
    if state.is_draining() {
        return Err(Error::ShuttingDown);
    }
    let client = client_address(&req, &state.trusted_proxies);
    let address = match (&state.addresses, client) {
        (Some(slots), Some(ip)) => {
            Some(slots.acquire(ip).inspect_err(|_| Metrics::inc(&state.metrics.per_ip_refused))?)
        }
        _ => None,
    };
    let permit = StreamPermit::acquire(&state.metrics, state.limits.max_connections, address)?;
    // Live before history: whatever is published from here on lands in the mailbox.
    let registration = state.backend.subscribe(&query.topics).await?;

    let preamble = if query.tag_topics {
        sse::tagged_preamble(state.limits.retry_ms, registration.live_from())
    } else {
        sse::preamble(state.limits.retry_ms)
    };
    let mut head = BytesMut::from(&preamble[..]);
    let mut replay = History::empty();
    let mut last_sent = EventId::ZERO;
    if let Some(last) = query.last_event_id {
        Metrics::inc(&state.metrics.replays);
        // The reset is decided now; the events follow as the stream is written (in pages, with Redis).
        let found = state.backend.resume(&query.topics, last).await?;
        if let Some(reset) = &found.reset {
            Metrics::inc(&state.metrics.resets);
            head.extend_from_slice(&sse::reset_event(&reset.topics, reset.reason));
        }
        if let (LastEventId::Id(id), None) = (last, &found.reset) {
            last_sent = id;
        }
        replay = found.history;
    }
    tracing::debug!(client = ?client, topics = ?query.topics, tagged = query.tag_topics, "stream opened");
    let settings = state.stream_settings.clone();
    let mut stream = EventStream::new(settings, registration, permit, Bytes::from(head), replay, last_sent);
    if query.tag_topics {
        stream.tag_topics();
    }
    if let Some(at) = grant.ends_at {
        stream.end_at(at.into());
    }

    let mut response = Response::new(ResponseBody::Stream(Box::new(stream)));
    let headers = response.headers_mut();
    headers.insert(header::CONTENT_TYPE, HeaderValue::from_static("text/event-stream"));
    headers.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-cache"));
    headers.insert("x-accel-buffering", HeaderValue::from_static("no"));
    Ok(response)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(q: &str, header: Option<&str>) -> Result<SubscribeQuery, Error> {
        let mut headers = HeaderMap::new();
        if let Some(h) = header {
            headers.insert("last-event-id", HeaderValue::from_str(h).unwrap());
        }
        parse_query(Some(q), &headers, 3)
    }

    fn names(q: &SubscribeQuery) -> Vec<&str> {
        q.topics.iter().map(|t| &**t).collect()
    }

    #[test]
    fn repeated_and_comma_separated() {
        let q = parse("topics=a,b&topics=c&topics=a", None).unwrap();
        assert_eq!(names(&q), ["a", "b", "c"]);
        assert_eq!(q.last_event_id, None);
    }

    #[test]
    fn percent_encoded_topics() {
        let q = parse("topics=https%3A%2F%2Fexample.com%2Fbooks%2F1%2Cdoc%2F42", None).unwrap();
        assert_eq!(names(&q), ["https://example.com/books/1", "doc/42"]);
    }

    #[test]
    fn header_wins_over_query() {
        let q = parse("topics=a&lastEventId=1-1", Some("2-2")).unwrap();
        assert_eq!(q.last_event_id, Some(LastEventId::Id(EventId::new(2, 2))));
        let q = parse("topics=a&lastEventId=1-1", None).unwrap();
        assert_eq!(q.last_event_id, Some(LastEventId::Id(EventId::new(1, 1))));
        let q = parse("topics=a&lastEventId=nonsense", None).unwrap();
        assert_eq!(q.last_event_id, Some(LastEventId::Malformed));
        let q = parse("topics=a&lastEventId=1-1", Some("")).unwrap();
        assert_eq!(q.last_event_id, Some(LastEventId::Id(EventId::new(1, 1))));
    }

    #[test]
    fn tag_topics_only_for_1() {
        assert!(!parse("topics=a", None).unwrap().tag_topics);
        assert!(parse("topics=a&tagTopics=1", None).unwrap().tag_topics);
        for off in ["0", "", "true", "yes", "2", "01"] {
            assert!(!parse(&format!("topics=a&tagTopics={off}"), None).unwrap().tag_topics, "{off:?}");
        }
        assert!(parse("tagTopics=0&topics=a&tagTopics=1", None).unwrap().tag_topics, "the last one counts");
        assert!(!parse("tagTopics=1&topics=a&tagTopics=0", None).unwrap().tag_topics);
    }

    #[test]
    fn errors() {
        assert!(matches!(parse("", None), Err(Error::NoTopic)));
        assert!(matches!(parse("topics=a%20b", None), Err(Error::BadTopic(_))));
        assert!(matches!(parse("topics=a,b,c,d", None), Err(Error::TooManyTopics { .. })));
        assert!(matches!(parse("topics=a,caf%E9", None), Err(Error::BadTopic(_))));
        assert!(matches!(
            parse("topics=a&lastEventId=1-1%FF", None).map(|q| q.last_event_id),
            Ok(Some(LastEventId::Malformed))
        ));
    }
}
