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

use std::time::Duration;

use crate::error::Error;
use crate::http::Limits;
use crate::topic::Topic;

mod encoder;
pub mod event_stream;
mod from_redis;
mod publish;
pub mod reference;
mod requests;

pub use encoder::{sse_event, SseInput};
pub use from_redis::{redis_entries, redis_message};
pub use publish::publish_body;
pub use requests::{last_event_id, query, request_head};

use reference::TopicsRefused;

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

/// The names of `topics`.
fn names(topics: &[Topic]) -> Vec<&str> {
    topics.iter().map(|t| &**t).collect()
}

/// What an encoder wrote, as text (it writes only text).
fn text(bytes: &[u8]) -> &str {
    std::str::from_utf8(bytes).unwrap_or_else(|e| panic!("the encoder wrote bytes that are not UTF-8: {e}"))
}
