//! `herald tail`: prints a stream's events as they arrive, until interrupted, resuming with its last id
//! across disconnects the way a browser does.
//!
//! # Output
//! One line per event on stdout, flushed at once:
//! - `--format text` (the default), for reading: `ID TYPE DATA`, separated by single spaces. `ID` is `-` for an
//!   event without an id (`herald.reset`); `TYPE` is `message` for an untyped event. Line breaks and other
//!   control characters in the data are written as JSON-style escapes (`\n`, `\u001b`), so that one event is
//!   one line and nothing in it can drive the terminal; everything else is printed as is.
//! - `--format json`, for scripts: one JSON object per line, `{"id":…,"type":…,"data":…}`, with `id` null
//!   when the event has none; `data` is exactly the event's data.
//!
//! Connection notices (`connected`, `reconnecting in …`) go to stderr, unless `--quiet`.
//!
//! # Reconnecting
//! Like the browser client of API.md: a dropped stream, a network error, `408`, `429` (after `Retry-After`
//! when given) and `5xx` are retried, from the server's `retry:` time, doubling after each attempt (±25 %
//! jitter, capped at 30 s), back to the start once a stream has stayed open for 30 s; every attempt sends the
//! last id seen as `Last-Event-ID`, so nothing is missed or repeated. Any other refusal (`400`, `401`, `403`,
//! `404`…), and a server certificate that is not trusted, is final: the error is printed and the exit status
//! is 1. `--max-retries N` also gives up
//! after N failed attempts in a row (attempts that opened no stream); by default there is no limit. A stream
//! on which nothing arrives, not even a heartbeat, for `--idle-timeout` seconds is taken for dead and
//! reopened.

use std::io::Write;
use std::time::{Duration, Instant};

use bytes::Bytes;
use clap::{Args, ValueEnum};
use http::{header, HeaderValue, Method, StatusCode};
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;

use super::client::{error_message, Endpoint};
use super::event_stream::{Event, Item, Parser};
use super::Failure;

/// The reconnection time until the server sends `retry:` (the WHATWG default is the browser's choice; this
/// is Herald's default `--retry`).
const DEFAULT_RETRY: Duration = Duration::from_millis(3000);
/// The longest wait between attempts that back-off reaches (unless the server's `retry:` is longer).
const MAX_BACKOFF: Duration = Duration::from_secs(30);
/// A stream that stayed open this long starts the back-off over.
const STABLE_STREAM: Duration = Duration::from_secs(30);
/// Time given to connect and receive the response head (the server sends it once the subscription is live).
const OPEN_TIMEOUT: Duration = Duration::from_secs(30);
/// The longest `Retry-After` honoured.
const MAX_RETRY_AFTER: Duration = Duration::from_secs(3600);

/// `herald tail`'s flags.
#[derive(Debug, Clone, Args)]
pub struct TailArgs {
    /// The server's base URL (or its /events URL): http:// or https://.
    #[arg(long, value_name = "URL", env = "HERALD_URL", default_value = super::DEFAULT_URL)]
    pub url: String,

    /// For https://: trust this PEM certificate authority instead of the system's root certificates.
    #[arg(long, value_name = "FILE", env = "HERALD_CA_CERT")]
    pub ca_cert: Option<std::path::PathBuf>,

    /// The token to subscribe with, sent as `Authorization: Bearer` (not needed for public topics or
    /// a server in open mode).
    #[arg(long, value_name = "JWT", env = "HERALD_TOKEN", hide_env_values = true)]
    pub token: Option<String>,

    /// Start after this event id: the events retained since then are printed first.
    #[arg(long, value_name = "ID", env = "HERALD_LAST_EVENT_ID")]
    pub last_event_id: Option<String>,

    /// `text`: `ID TYPE DATA` per line, for reading; `json`: one JSON object per line, for scripts.
    #[arg(long, value_enum, default_value_t = Format::Text, env = "HERALD_FORMAT")]
    pub format: Format,

    /// Give up after this many failed attempts in a row (no stream opened); default: never.
    #[arg(long, value_name = "N", env = "HERALD_MAX_RETRIES")]
    pub max_retries: Option<u32>,

    /// Reopen a stream on which nothing, not even a heartbeat, arrives for this many seconds.
    #[arg(long, value_name = "SECS", default_value = "45", value_parser = parse_secs, env = "HERALD_IDLE_TIMEOUT")]
    pub idle_timeout: Duration,

    /// No connection notices on stderr (errors are still printed).
    #[arg(long, short, env = "HERALD_QUIET")]
    pub quiet: bool,

    /// The topics (several arguments, or comma-separated).
    #[arg(value_name = "TOPIC", required = true, num_args = 1.., value_delimiter = ',')]
    pub topics: Vec<String>,
}

/// How `herald tail` prints events.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum Format {
    /// `ID TYPE DATA`, one line per event, control characters escaped.
    Text,
    /// One JSON object per line: `{"id":…,"type":…,"data":…}`.
    Json,
}

fn parse_secs(s: &str) -> Result<Duration, String> {
    let secs: f64 = s.trim().parse().map_err(|_| format!("{s:?} is not a number of seconds"))?;
    if !(secs > 0.0 && secs.is_finite() && secs < 1e9) {
        return Err(format!("{s:?}: seconds must be positive"));
    }
    Ok(Duration::from_secs_f64(secs))
}

/// Why an attempt opened no stream.
enum Refused {
    /// For good: the server's message.
    Final(String),
    /// Worth another try, after the server's `Retry-After` if it gave one.
    Retry(String, Option<Duration>),
}

/// How a stream ended.
enum Ended {
    /// The connection ended or went silent: reconnect.
    Dropped(String),
    /// Whoever reads stdout has gone (`herald tail … | head -1`): stop, successfully.
    OutputClosed,
}

/// Follows the stream until interrupted, or until a final refusal.
pub(crate) async fn run(args: TailArgs) -> Result<(), Failure> {
    let endpoint = Endpoint::parse(&args.url, "events", args.ca_cert.as_deref()).map_err(Failure::usage)?;
    let query = form_urlencoded::Serializer::new(String::new())
        .extend_pairs(args.topics.iter().map(|t| ("topics", t)))
        .finish();
    let notice = |message: String| {
        if !args.quiet {
            eprintln!("herald tail: {message}");
        }
    };
    let mut last_id = args.last_event_id.clone().unwrap_or_default();
    let mut backoff = Backoff::new();
    let mut failures = 0u32;
    loop {
        let (why, retry_after) = match open(&endpoint, &query, args.token.as_deref(), &last_id).await {
            Ok(body) => {
                failures = 0;
                let resuming = if last_id.is_empty() { String::new() } else { format!(", resuming after {last_id}") };
                notice(format!("connected to {}{resuming}", endpoint.url()));
                let opened = Instant::now();
                let mut parser = Parser::new(&last_id);
                let ended = follow(body, &mut parser, &mut backoff, args.format, args.idle_timeout).await;
                last_id = parser.last_event_id().to_owned();
                if opened.elapsed() >= STABLE_STREAM {
                    backoff.restart();
                }
                match ended.map_err(|e| Failure::failed(format!("writing to stdout: {e}")))? {
                    Ended::Dropped(why) => (why, None),
                    Ended::OutputClosed => return Ok(()),
                }
            }
            Err(Refused::Final(message)) => return Err(Failure::failed(message)),
            Err(Refused::Retry(message, retry_after)) => {
                failures = failures.saturating_add(1);
                if args.max_retries.is_some_and(|max| failures > max) {
                    let attempts = if failures == 1 { "attempt" } else { "attempts" };
                    return Err(Failure::failed(format!("{message} (giving up after {failures} failed {attempts})")));
                }
                (message, retry_after)
            }
        };
        let delay = retry_after.unwrap_or_else(|| backoff.next_delay());
        notice(format!("{why}; reconnecting in {:.1}s", delay.as_secs_f64()));
        tokio::time::sleep(delay).await;
    }
}

/// One attempt: connects and asks for the stream, resuming after `last_id` when there is one.
async fn open(endpoint: &Endpoint, query: &str, token: Option<&str>, last_id: &str) -> Result<Incoming, Refused> {
    let mut query = query.to_owned();
    let header_id = match HeaderValue::from_str(last_id) {
        Ok(value) if !last_id.is_empty() => Some(value),
        Ok(_) => None,
        // An id no header can carry still resumes, through the query.
        Err(_) => {
            form_urlencoded::Serializer::for_suffix(&mut query, 0).append_pair("lastEventId", last_id);
            None
        }
    };
    let mut builder = endpoint
        .request(Method::GET, &endpoint.target(Some(&query)), token)
        .header(header::ACCEPT, "text/event-stream")
        .header(header::CACHE_CONTROL, "no-cache");
    if let Some(value) = header_id {
        builder = builder.header("last-event-id", value);
    }
    let request =
        builder.body(Full::new(Bytes::new())).map_err(|e| Refused::Final(format!("cannot make the request: {e}")))?;
    let response = match tokio::time::timeout(OPEN_TIMEOUT, endpoint.send(request)).await {
        Err(_) => {
            return Err(Refused::Retry(format!("no answer from {} within {OPEN_TIMEOUT:?}", endpoint.url()), None))
        }
        Ok(Err(e)) if e.permanent => return Err(Refused::Final(e.message)),
        Ok(Err(e)) => return Err(Refused::Retry(e.message, None)),
        Ok(Ok(response)) => response,
    };
    let status = response.status();
    if status == StatusCode::OK {
        let content_type = response.headers().get(header::CONTENT_TYPE).and_then(|v| v.to_str().ok()).unwrap_or("");
        if !content_type.trim_start().to_ascii_lowercase().starts_with("text/event-stream") {
            return Err(Refused::Final(format!(
                "{} answered 200 with {content_type:?}, not an event stream: is --url a Herald server?",
                endpoint.url()
            )));
        }
        return Ok(response.into_body());
    }
    let retry_after = response
        .headers()
        .get(header::RETRY_AFTER)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.trim().parse::<u64>().ok())
        .map(|secs| Duration::from_secs(secs).min(MAX_RETRY_AFTER));
    let message = error_message(response).await;
    if status == StatusCode::REQUEST_TIMEOUT || status == StatusCode::TOO_MANY_REQUESTS || status.is_server_error() {
        Err(Refused::Retry(message, retry_after))
    } else {
        Err(Refused::Final(message))
    }
}

/// Prints the stream's events until it ends; `retry:` sets the back-off's start.
async fn follow(
    mut body: Incoming,
    parser: &mut Parser,
    backoff: &mut Backoff,
    format: Format,
    idle_timeout: Duration,
) -> std::io::Result<Ended> {
    loop {
        let frame = match tokio::time::timeout(idle_timeout, body.frame()).await {
            Err(_) => return Ok(Ended::Dropped(format!("nothing received for {idle_timeout:?}"))),
            Ok(None) => return Ok(Ended::Dropped("the stream ended".into())),
            Ok(Some(Err(e))) => return Ok(Ended::Dropped(format!("the stream broke: {e}"))),
            Ok(Some(Ok(frame))) => frame,
        };
        let Ok(data) = frame.into_data() else { continue };
        for item in parser.feed(&data) {
            match item {
                Item::Retry(ms) => backoff.base = Duration::from_millis(ms),
                Item::Event(event) => match print(&event, format) {
                    Ok(()) => {}
                    Err(e) if e.kind() == std::io::ErrorKind::BrokenPipe => return Ok(Ended::OutputClosed),
                    Err(e) => return Err(e),
                },
            }
        }
    }
}

/// Writes one event's line and flushes it, so that a pipe sees each event as it arrives.
fn print(event: &Event, format: Format) -> std::io::Result<()> {
    let line = match format {
        Format::Text => {
            let id = event.id.as_deref().filter(|id| !id.is_empty()).unwrap_or("-");
            format!("{} {} {}\n", escape(id), escape(&event.kind), escape(&event.data))
        }
        Format::Json => {
            let json = serde_json::json!({ "id": event.id, "type": event.kind, "data": event.data });
            format!("{json}\n")
        }
    };
    let mut stdout = std::io::stdout().lock();
    stdout.write_all(line.as_bytes())?;
    stdout.flush()
}

/// `text` with control characters (C0, DEL, C1) written as JSON-style escapes.
fn escape(text: &str) -> std::borrow::Cow<'_, str> {
    if !text.chars().any(char::is_control) {
        return text.into();
    }
    let mut out = String::with_capacity(text.len() + 8);
    for c in text.chars() {
        match c {
            '\n' => out.push_str("\\n"),
            '\r' => out.push_str("\\r"),
            '\t' => out.push_str("\\t"),
            c if c.is_control() => out.push_str(&format!("\\u{:04x}", u32::from(c))),
            c => out.push(c),
        }
    }
    out.into()
}

/// The wait before the next attempt: the server's `retry:` time, doubled after each attempt, with ±25 %
/// jitter, capped at [`MAX_BACKOFF`] (or the `retry:` time when that is longer).
#[derive(Debug)]
struct Backoff {
    base: Duration,
    attempts: u32,
}

impl Backoff {
    fn new() -> Backoff {
        Backoff { base: DEFAULT_RETRY, attempts: 0 }
    }

    /// Starts over from the `retry:` time (a stream stayed open long enough).
    fn restart(&mut self) {
        self.attempts = 0;
    }

    fn next_delay(&mut self) -> Duration {
        let doubled = self.base.saturating_mul(1 << self.attempts.min(16));
        self.attempts = self.attempts.saturating_add(1);
        let capped = doubled.min(MAX_BACKOFF.max(self.base));
        capped.mul_f64(0.75 + 0.5 * random_unit())
    }
}

/// A number in `[0, 1)`, different on each call: enough randomness for jitter, without a generator crate.
fn random_unit() -> f64 {
    use std::hash::{BuildHasher, Hasher};
    let mut hasher = std::collections::hash_map::RandomState::new().build_hasher();
    // Each `RandomState` is keyed afresh (per-thread random keys, advanced on every `new`).
    hasher.write_u8(0);
    (hasher.finish() >> 11) as f64 / (1u64 << 53) as f64
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn text_lines_escape_control_characters_only() {
        assert_eq!(escape("{\"a\":\"b\\\\c\"} é"), "{\"a\":\"b\\\\c\"} é");
        assert_eq!(escape("hello\nworld"), "hello\\nworld");
        assert_eq!(escape("\u{1b}[31mred\r\t\u{7f}\u{85}"), "\\u001b[31mred\\r\\t\\u007f\\u0085");
    }

    #[test]
    fn backoff_doubles_with_jitter_up_to_the_cap_and_restarts() {
        let mut b = Backoff::new();
        b.base = Duration::from_millis(1000);
        let within = |d: Duration, nominal: f64| {
            let s = d.as_secs_f64();
            assert!(s >= nominal * 0.75 - 1e-9 && s <= nominal * 1.25 + 1e-9, "{s} not within 25% of {nominal}");
        };
        for nominal in [1.0, 2.0, 4.0, 8.0, 16.0, 30.0, 30.0] {
            within(b.next_delay(), nominal);
        }
        b.restart();
        within(b.next_delay(), 1.0);
        b.base = Duration::from_secs(60);
        within(b.next_delay(), 120.0_f64.min(60.0));
    }
}
