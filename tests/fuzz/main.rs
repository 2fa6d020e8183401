//! Fuzz targets, with bolero: each is an ordinary test that `cargo test` runs briefly (every file of its
//! committed corpus in `tests/fuzz/__fuzz__/<target>/corpus/`, always all of them, then a fixed number of
//! random inputs; `BOLERO_RANDOM_ITERATIONS` for more), and that `cargo +nightly bolero test <target>
//! --engine libfuzzer` runs coverage-guided with libFuzzer (README, "Fuzzing").
//!
//! The checks live in `herald::fuzzing`, next to the crate-private parsers they call; here is only how
//! each target turns the fuzzer's input into theirs.

use bolero::{check, TypeGenerator};
use herald::fuzzing::{self, SseInput};
use herald::id::EventId;

/// Random inputs per target under `cargo test`, after the corpus: a count rather than bolero's default of one
/// second, so that the whole corpus always runs, however slow the machine (a time limit would cut it short).
/// About a second each in a debug build.
const RANDOM_INPUTS: usize = 50_000;
/// The same for the SSE encoder, whose inputs are structured and each checked several ways.
const RANDOM_EVENTS: usize = 1_000;

/// `GET /events` query (then optionally a LF and a `Last-Event-ID` header value).
#[test]
fn query() {
    check!(name = "query").with_iterations(RANDOM_INPUTS).for_each(fuzzing::query);
}

/// A `Last-Event-ID` value or `lastEventId` parameter.
#[test]
fn last_event_id() {
    check!(name = "last_event_id").with_iterations(RANDOM_INPUTS).for_each(fuzzing::last_event_id);
}

/// A `POST /publish` body, as JSON and as a form.
#[test]
fn publish_body() {
    check!(name = "publish_body").with_iterations(RANDOM_INPUTS).for_each(fuzzing::publish_body);
}

/// The first request head of a connection, as the event-stream front reads it.
#[test]
fn request_head() {
    check!(name = "request_head").with_iterations(RANDOM_INPUTS).for_each(fuzzing::request_head);
}

/// A pub/sub message, as the publish script (or another program) sends it.
#[test]
fn redis_message() {
    check!(name = "redis_message").with_iterations(RANDOM_INPUTS).for_each(fuzzing::redis_message);
}

/// A reply of Redis (RESP bytes), decoded as stream entries.
#[test]
fn redis_entries() {
    check!(name = "redis_entries").with_iterations(RANDOM_INPUTS).for_each(fuzzing::redis_entries);
}

/// A piece of event data: line ends are what matters to the encoder, so they come often.
#[derive(Debug, TypeGenerator)]
enum Piece {
    Cr,
    Lf,
    CrLf,
    Text(String),
    Bytes(Vec<u8>),
}

/// An event for the SSE encoder; names are mapped into their alphabets so that nearly every input is one
/// the encoder can be given.
#[derive(Debug, TypeGenerator)]
struct Encode {
    ms: u64,
    seq: u64,
    kind: Vec<u8>,
    /// Take `kind` as text, whatever it holds, rather than as a valid type.
    raw_kind: bool,
    topics: Vec<Vec<u8>>,
    /// Which of the event's topics the tagged stream reads (bit `i` for topic `i`).
    subscribed: u64,
    /// Topics the tagged stream also reads that the event does not have.
    others: Vec<Vec<u8>>,
    data: Vec<Piece>,
    retry_ms: u64,
}

/// Maps bytes onto an alphabet.
fn name(bytes: &[u8], alphabet: &[u8]) -> String {
    bytes.iter().map(|b| char::from(alphabet[usize::from(*b) % alphabet.len()])).collect()
}

/// The SSE encoder against a parser written from the standard.
#[test]
fn sse_encoder() {
    const TYPE: &[u8] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789._:-";
    let topic_chars: Vec<u8> = (b'!'..=b'~').filter(|c| !b",*?#".contains(c)).collect();
    check!(name = "sse_encoder").with_type::<Encode>().with_iterations(RANDOM_EVENTS).for_each(|input| {
        let kind =
            if input.raw_kind { String::from_utf8_lossy(&input.kind).into_owned() } else { name(&input.kind, TYPE) };
        let mut topics: Vec<String> = Vec::new();
        for t in &input.topics {
            let t = if t.is_empty() { "t".to_owned() } else { name(t, &topic_chars) };
            if !topics.contains(&t) {
                topics.push(t);
            }
        }
        let mut subscribed: Vec<&str> = topics
            .iter()
            .enumerate()
            .filter(|(i, _)| *i < 64 && input.subscribed >> i & 1 == 1)
            .map(|(_, t)| &**t)
            .collect();
        let others: Vec<String> = input.others.iter().map(|t| format!("x{}", name(t, &topic_chars))).collect();
        subscribed.extend(others.iter().map(|t| &**t));
        let data: String = input
            .data
            .iter()
            .map(|piece| match piece {
                Piece::Cr => "\r".into(),
                Piece::Lf => "\n".into(),
                Piece::CrLf => "\r\n".into(),
                Piece::Text(text) => text.clone(),
                Piece::Bytes(bytes) => String::from_utf8_lossy(bytes).into_owned(),
            })
            .collect();
        let topics: Vec<&str> = topics.iter().map(|t| &**t).collect();
        fuzzing::sse_event(&SseInput {
            id: EventId::new(input.ms, input.seq),
            kind: (!kind.is_empty()).then_some(&*kind),
            topics: &topics,
            subscribed: &subscribed,
            data: &data,
            retry_ms: input.retry_ms,
        });
    });
}
