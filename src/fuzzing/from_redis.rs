//! Targets for what comes from Redis: pub/sub messages and stream entries.

use super::reference::{self, Topics};
use super::{event_stream, text};
use crate::id::EventId;
use crate::sse::Event;

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
/// then as `check_from_redis` says.
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
/// and then as `check_from_redis` says.
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
