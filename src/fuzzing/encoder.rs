//! The target for the SSE encoder, against a parser written from the standard.

use super::{event_stream, reference, text};
use crate::id::EventId;
use crate::sse::{self, Event};
use crate::topic::Topic;

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
