//! `herald publish`: sends one event to `POST /publish` as JSON and prints its id.
//!
//! The data is sent as a JSON string, exactly as given (`-` reads it from stdin, to its end, unchanged: a
//! trailing newline is part of the data). Any answer but `200` is a failure, printed with the server's error
//! code and message. Nothing is retried; with `--idempotency-key` the caller may retry safely (the server
//! publishes a key at most once in ten minutes and answers a repeat with the first id).

use std::io::Read;
use std::time::Duration;

use bytes::Bytes;
use clap::Args;
use http::{header, Method, StatusCode};
use http_body_util::{BodyExt, Full, Limited};

use super::client::{error_message, Endpoint};
use super::Failure;

/// Time given to one publish, from connecting to reading the answer.
const PUBLISH_TIMEOUT: Duration = Duration::from_secs(30);
/// Largest success answer read (it is `{"id":"…"}` and a flag or two).
const ANSWER_MAX: usize = 64 * 1024;

/// `herald publish`'s flags.
#[derive(Debug, Clone, Args)]
pub struct PublishArgs {
    /// The server's base URL (or its /publish URL): http:// or https://.
    #[arg(long, value_name = "URL", env = "HERALD_URL", default_value = super::DEFAULT_URL)]
    pub url: String,

    /// For https://: trust this PEM certificate authority instead of the system's root certificates.
    #[arg(long, value_name = "FILE", env = "HERALD_CA_CERT")]
    pub ca_cert: Option<std::path::PathBuf>,

    /// The token to publish with (its `publish` patterns must cover every topic), sent as
    /// `Authorization: Bearer`.
    #[arg(long, value_name = "JWT", env = "HERALD_TOKEN", hide_env_values = true)]
    pub token: Option<String>,

    /// The event's type (the `event:` field subscribers see); none by default.
    #[arg(long = "type", value_name = "TYPE", env = "HERALD_TYPE")]
    pub kind: Option<String>,

    /// Sent as `Idempotency-Key`: running the command again with the same key (within ten minutes) publishes
    /// nothing and prints the first publish's id. 1 to 128 visible ASCII characters (a UUID, say).
    #[arg(long, value_name = "KEY", env = "HERALD_IDEMPOTENCY_KEY")]
    pub idempotency_key: Option<String>,

    /// The topics to publish to, comma-separated.
    #[arg(value_name = "TOPIC[,TOPIC…]")]
    pub topics: String,

    /// The data, sent as text; `-` reads it from stdin. (Data starting with `-`: put `--` before it.)
    #[arg(value_name = "DATA|-")]
    pub data: String,
}

/// Publishes and prints the id on stdout.
pub(crate) async fn run(args: PublishArgs) -> Result<(), Failure> {
    let endpoint = Endpoint::parse(&args.url, "publish", args.ca_cert.as_deref()).map_err(Failure::usage)?;
    let data = if args.data == "-" { read_stdin()? } else { args.data.clone() };
    let topics: Vec<&str> = args.topics.split(',').collect();
    let mut body = serde_json::json!({ "topics": topics });
    if let Some(kind) = &args.kind {
        body["type"] = kind.as_str().into();
    }
    body["data"] = data.into();
    let mut request = endpoint
        .request(Method::POST, &endpoint.target(None), args.token.as_deref())
        .header(header::CONTENT_TYPE, "application/json");
    if let Some(key) = &args.idempotency_key {
        request = request.header("idempotency-key", key.as_str());
    }
    let request = request
        .body(Full::new(Bytes::from(body.to_string())))
        .map_err(|e| Failure::usage(format!("cannot make the request: {e}")))?;
    let answer = tokio::time::timeout(PUBLISH_TIMEOUT, async {
        let response = endpoint.send(request).await.map_err(|e| e.message)?;
        if response.status() != StatusCode::OK {
            return Err(error_message(response).await);
        }
        let body = Limited::new(response.into_body(), ANSWER_MAX)
            .collect()
            .await
            .map_err(|e| format!("reading the answer: {e}"))?
            .to_bytes();
        serde_json::from_slice::<serde_json::Value>(&body)
            .map_err(|e| format!("the answer is not JSON ({e}): {}", String::from_utf8_lossy(&body)))
    })
    .await
    .map_err(|_| Failure::failed(format!("no answer from {} within {PUBLISH_TIMEOUT:?}", endpoint.url())))?
    .map_err(Failure::failed)?;
    let Some(id) = answer.get("id").and_then(|v| v.as_str()) else {
        return Err(Failure::failed(format!("the answer has no id: {answer}")));
    };
    println!("{id}");
    if answer.get("duplicate").and_then(|v| v.as_bool()) == Some(true) {
        eprintln!("herald publish: already published with this idempotency key; nothing was published again");
    }
    // API.md's `--redis-wait-replicas`: published, but not known to be safe from a failover.
    if answer.get("replicated").and_then(|v| v.as_bool()) == Some(false) {
        eprintln!("herald publish: published, but fewer replicas than required acknowledged it in time");
    }
    Ok(())
}

/// All of stdin, as text.
fn read_stdin() -> Result<String, Failure> {
    let mut bytes = Vec::new();
    std::io::stdin().read_to_end(&mut bytes).map_err(|e| Failure::failed(format!("reading stdin: {e}")))?;
    String::from_utf8(bytes).map_err(|_| Failure::usage("the data on stdin is not UTF-8 text"))
}
