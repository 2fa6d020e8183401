//! `POST /publish`: read and validate an event (JSON or form), then hand it to the backend.

use std::borrow::Cow;

use bytes::Bytes;
use http::{header, HeaderValue, Method, Request, Response};
use http_body_util::{BodyExt, Limited};
use serde::Deserialize;

use super::{form, require_method, AppState, Limits, RequestBody, ResponseBody};
use crate::backend::NewEvent;
use crate::error::Error;
use crate::metrics::Metrics;
use crate::topic::{validate_type, TopicSet};

/// The accepted body formats.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Format {
    Json,
    Form,
}

/// The JSON body: `topic` and/or `topics`, optional `type`, required non-null `data`.
#[derive(Debug, Deserialize)]
struct JsonEvent {
    #[serde(default)]
    topic: Option<String>,
    #[serde(default)]
    topics: Vec<String>,
    #[serde(default, rename = "type")]
    kind: Option<String>,
    #[serde(default)]
    data: Option<serde_json::Value>,
}

fn format_of<B>(req: &Request<B>) -> Result<Format, Error> {
    let value = req.headers().get(header::CONTENT_TYPE).and_then(|v| v.to_str().ok()).unwrap_or("");
    let essence = value.split(';').next().unwrap_or("").trim().to_ascii_lowercase();
    match essence.as_str() {
        "application/json" => Ok(Format::Json),
        "application/x-www-form-urlencoded" => Ok(Format::Form),
        _ => Err(Error::UnsupportedMediaType),
    }
}

async fn read_body<B: RequestBody>(req: Request<B>, max: usize) -> Result<Bytes, Error> {
    let declared =
        req.headers().get(header::CONTENT_LENGTH).and_then(|v| v.to_str().ok()).and_then(|v| v.parse::<u64>().ok());
    if declared.is_some_and(|len| len > max as u64) {
        return Err(Error::BodyTooLarge { max });
    }
    match Limited::new(req.into_body(), max).collect().await {
        Ok(collected) => Ok(collected.to_bytes()),
        Err(e) if e.is::<http_body_util::LengthLimitError>() => Err(Error::BodyTooLarge { max }),
        Err(e) => Err(Error::BadRequest(format!("could not read the body: {e}"))),
    }
}

/// A form field's value as text.
///
/// # Errors
/// [`Error::BadRequest`] when it is not UTF-8 (JSON bodies are refused alike).
fn form_text(field: &str, value: Cow<'_, [u8]>) -> Result<String, Error> {
    match form::utf8(value) {
        Ok(text) => Ok(text.into_owned()),
        Err(_) => Err(Error::BadRequest(format!("the form field {field} is not UTF-8"))),
    }
}

/// Parses and validates a publish body into an event.
fn parse_event(format: Format, body: &[u8], limits: &Limits) -> Result<NewEvent, Error> {
    let mut topics = TopicSet::new(limits.max_topics);
    let (kind, data) = match format {
        Format::Json => {
            let value: serde_json::Value =
                serde_json::from_slice(body).map_err(|e| Error::BadRequest(e.to_string()))?;
            // serde would also fill the struct from an array, by position; the contract's body is an object.
            if !value.is_object() {
                return Err(Error::BadRequest("the body must be a JSON object".into()));
            }
            let parsed = JsonEvent::deserialize(value).map_err(|e| Error::BadRequest(e.to_string()))?;
            let data = match parsed.data {
                None | Some(serde_json::Value::Null) => None,
                Some(serde_json::Value::String(s)) => Some(s),
                Some(other) => Some(other.to_string()),
            };
            parsed.topic.iter().chain(&parsed.topics).try_for_each(|t| topics.add(t))?;
            (parsed.kind, data)
        }
        Format::Form => {
            let (mut kind, mut data) = (None, None);
            // Topics are checked as they are read, so a body naming too many stops at the first too many.
            // Bytes are kept as bytes: a value that is not UTF-8 is refused, never delivered with U+FFFD.
            for (key, value) in form::pairs(body) {
                match &*key {
                    b"topic" | b"topics" => topics.add_bytes(&value)?,
                    b"type" => kind = Some(form_text("type", value)?),
                    b"data" => data = Some(form_text("data", value)?),
                    _ => {}
                }
            }
            (kind, data)
        }
    };
    let topics = topics.finish()?;
    let kind = validate_type(kind.as_deref())?;
    let data = data.ok_or(Error::MissingData)?;
    if data.len() > limits.max_event_size {
        return Err(Error::EventTooLarge { size: data.len(), max: limits.max_event_size });
    }
    Ok(NewEvent { topics, kind, data })
}

/// Handles `POST /publish`: `200 {"id": …}` once the event is stored and handed to live delivery.
pub(super) async fn publish<B: RequestBody>(
    state: &AppState,
    req: Request<B>,
) -> Result<Response<ResponseBody>, Error> {
    require_method(req.method(), &[Method::POST], "POST")?;
    // Who is publishing is settled before the body is read; what they may publish to, after.
    let grant = match &state.auth {
        Some(auth) => Some(auth.authenticate_publisher(req.headers(), req.uri())?),
        None => None,
    };
    let format = format_of(&req)?;
    let body = tokio::time::timeout(state.limits.request_timeout, read_body(req, state.limits.max_body_size))
        .await
        .map_err(|_| Error::RequestTimeout)??;
    let event = parse_event(format, &body, &state.limits)?;
    if let Some(grant) = grant {
        grant.allow(&event.topics)?;
    }
    let id = state.backend.publish(event).await?;
    Metrics::inc(&state.metrics.events_published);
    let mut response = Response::new(ResponseBody::full(serde_json::json!({ "id": id.to_string() }).to_string()));
    response.headers_mut().insert(header::CONTENT_TYPE, HeaderValue::from_static("application/json"));
    Ok(response)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    fn limits() -> Limits {
        Limits {
            max_topics: 4,
            max_event_size: 20,
            max_body_size: 1024,
            max_connections: 10,
            heartbeat: Duration::from_secs(15),
            retry_ms: 3000,
            send_timeout: Duration::from_secs(60),
            request_timeout: Duration::from_secs(30),
        }
    }

    fn json(body: &str) -> Result<NewEvent, Error> {
        parse_event(Format::Json, body.as_bytes(), &limits())
    }

    #[test]
    fn json_data_kinds() {
        assert_eq!(json(r#"{"topic":"a","data":"x\ny"}"#).unwrap().data, "x\ny");
        assert_eq!(json(r#"{"topic":"a","data":{"b":1,"a":[1, 2]}}"#).unwrap().data, r#"{"b":1,"a":[1,2]}"#);
        assert_eq!(json(r#"{"topic":"a","data":12.50}"#).unwrap().data, "12.50");
        assert_eq!(json(r#"{"topic":"a","data":false}"#).unwrap().data, "false");
        assert!(matches!(json(r#"{"topic":"a","data":null}"#), Err(Error::MissingData)));
        assert!(matches!(json(r#"{"topic":"a"}"#), Err(Error::MissingData)));
    }

    #[test]
    fn json_topics_merge() {
        let e = json(r#"{"topic":"a","topics":["b","a"],"type":"","data":""}"#).unwrap();
        assert_eq!(e.topics.len(), 2);
        assert_eq!(e.kind, None);
    }

    #[test]
    fn json_errors() {
        assert!(matches!(json("{"), Err(Error::BadRequest(_))));
        assert!(matches!(json(r#"["a",["b"],"t","x"]"#), Err(Error::BadRequest(_))));
        assert!(matches!(json(r#"{"topics":"a","data":"x"}"#), Err(Error::BadRequest(_))));
        assert!(matches!(json(r#"{"data":"x"}"#), Err(Error::NoTopic)));
        assert!(matches!(json(r#"{"topic":"a b","data":"x"}"#), Err(Error::BadTopic(_))));
        assert!(matches!(json(r#"{"topic":"a","type":"herald.reset","data":"x"}"#), Err(Error::BadType(_))));
        assert!(matches!(json(r#"{"topic":"a","data":"012345678901234567890"}"#), Err(Error::EventTooLarge { .. })));
    }

    #[test]
    fn form() {
        let e = parse_event(Format::Form, b"topic=a&topic=b%2Fc&type=t&data=x+y", &limits()).unwrap();
        assert_eq!(e.topics.iter().map(|t| &**t).collect::<Vec<_>>(), ["a", "b/c"]);
        assert_eq!(e.kind.as_deref(), Some("t"));
        assert_eq!(e.data, "x y");
        assert!(matches!(parse_event(Format::Form, b"topic=a", &limits()), Err(Error::MissingData)));
    }

    #[test]
    fn form_values_must_be_utf8() {
        let form = |body: &[u8]| parse_event(Format::Form, body, &limits());
        assert!(matches!(form(b"topic=a&data=caf%E9"), Err(Error::BadRequest(_))));
        assert!(matches!(form(b"topic=a&type=t%FF&data=x"), Err(Error::BadRequest(_))));
        assert!(matches!(form(b"topic=caf%E9&data=x"), Err(Error::BadTopic(_))));
        assert_eq!(form(b"topic=a&data=caf%C3%A9&other=%FF").unwrap().data, "café");
    }
}
