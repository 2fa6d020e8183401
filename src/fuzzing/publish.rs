//! The target for what a publisher sends: a `POST /publish` body, as JSON and as a form.

use super::reference::{self, Topics, TopicsRefused};
use super::{limits, names, refused, MAX_EVENT_SIZE, MAX_TOPICS};
use crate::backend::NewEvent;
use crate::error::Error;
use crate::http::publish::{parse_event, Format};

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

fn check_event(event: &NewEvent) {
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

fn form_body(body: &[u8], parsed: Result<NewEvent, Error>) {
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

fn json_body(body: &[u8], parsed: Result<NewEvent, Error>) {
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
