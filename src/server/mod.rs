//! The accept loop, per-connection HTTP/1 serving, and graceful shutdown.
//!
//! Shutdown, in order: stop accepting; mark the node draining (`/readyz` 503, new streams 503) and close
//! the hub, which ends every open event stream cleanly after what it has queued; ask every connection to
//! finish its in-flight request and close; wait for them, at most `--shutdown-grace`.

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

pub(crate) mod front;
mod rewind;

use hyper::server::conn::http1;
use hyper_util::rt::{TokioIo, TokioTimer};
use hyper_util::service::TowerToHyperService;
use tokio::net::{TcpListener, TcpStream};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tower::ServiceBuilder;
use tower_http::cors::{AllowOrigin, CorsLayer};

use self::front::Sniffed;
use self::rewind::Rewind;
use crate::backend::{Backend, HistoryLimits, MemoryBackend, RedisBackend};
use crate::config::Config;
use crate::http::{App, AppState, Limits};
use crate::metrics::Metrics;

/// hyper's per-connection buffer limit. Request heads and `/publish` bodies are streamed through it, so
/// it bounds what one slow reader can make the node buffer for it, not the size of a request.
const MAX_CONNECTION_BUFFER: usize = 64 * 1024;

/// How long to pause accepting after the process runs out of file descriptors.
const ACCEPT_BACKOFF: Duration = Duration::from_millis(50);

/// Pending connections the kernel queues before `accept`: with the default of 128, a burst of browsers
/// reconnecting at once overflows the queue and waits for the kernel's one-second SYN retry. The kernel
/// caps it at `net.core.somaxconn`.
const LISTEN_BACKLOG: u32 = 4096;

/// Binds a listener for `addr` with a backlog fit for reconnect storms.
///
/// # Errors
/// The socket cannot be created or bound (address in use, not permitted).
pub fn bind(addr: std::net::SocketAddr) -> std::io::Result<TcpListener> {
    let socket = if addr.is_ipv4() { tokio::net::TcpSocket::new_v4()? } else { tokio::net::TcpSocket::new_v6()? };
    socket.set_reuseaddr(true)?;
    socket.bind(addr)?;
    socket.listen(LISTEN_BACKLOG)
}

/// Builds the backend the configuration asks for. The Redis backend connects in the background (retrying
/// with back-off while Redis is unreachable; `/readyz` is 503 meanwhile), so this never waits.
///
/// # Errors
/// `--redis-url` is not a Redis URL.
fn build_backend(config: &Config, metrics: &Arc<Metrics>) -> Result<Arc<dyn Backend>, String> {
    let history =
        HistoryLimits { size: usize::try_from(config.history_size).unwrap_or(usize::MAX), ttl: config.history_ttl };
    let queue = usize::try_from(config.queue_size).unwrap_or(usize::MAX);
    Ok(match &config.redis_url {
        Some(url) => {
            let ca = config.redis_ca_pem().map_err(|e| e.to_string())?;
            Arc::new(RedisBackend::connect(url, ca, history, queue, metrics.clone())?)
        }
        None => Arc::new(
            MemoryBackend::new(history, queue, metrics.clone())
                .with_max_bytes(usize::try_from(config.max_history_bytes).unwrap_or(usize::MAX)),
        ),
    })
}

/// How long start-up waits for the backend (Redis) before serving anyway with `/readyz` at 503.
const STARTUP_READY_WAIT: Duration = Duration::from_secs(2);

/// Waits until the backend is ready, at most [`STARTUP_READY_WAIT`], so that a node that can reach its
/// backend is ready as soon as it logs that it listens. One that cannot serves anyway (streams and
/// publishes answer 503 until the backend comes up; the backend logs why and keeps retrying).
async fn wait_ready(backend: &dyn Backend) {
    let deadline = tokio::time::Instant::now() + STARTUP_READY_WAIT;
    while !backend.ready().await {
        if tokio::time::Instant::now() >= deadline {
            tracing::warn!(backend = backend.name(), "backend not ready yet; serving, /readyz answers 503 until it is");
            return;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

fn cors_layer(origins: &[String]) -> Option<CorsLayer> {
    if origins.is_empty() {
        return None;
    }
    let any = origins.iter().any(|o| o == "*");
    let allow = if any { AllowOrigin::any() } else { AllowOrigin::list(origins.iter().filter_map(|o| o.parse().ok())) };
    let layer = CorsLayer::new()
        .allow_origin(allow)
        .allow_methods([http::Method::GET, http::Method::POST])
        .allow_headers([http::header::CONTENT_TYPE, http::header::AUTHORIZATION, "last-event-id".parse().ok()?]);
    // Named origins may send credentials (the `herald_token` cookie); `*` cannot, by the CORS rules.
    Some(if any { layer } else { layer.allow_credentials(true) })
}

/// Serves Herald on `listener` until `shutdown` completes, then drains and returns.
///
/// # Errors
/// Returns an error when the listener's address cannot be read; serving itself does not fail.
pub async fn serve(
    config: Config,
    listener: TcpListener,
    shutdown: impl Future<Output = ()>,
) -> Result<(), Box<dyn std::error::Error + Send + Sync>> {
    let auth = config.auth()?;
    let statics = config.static_site()?;
    let metrics = Arc::new(Metrics::default());
    let backend = build_backend(&config, &metrics)?;
    let limits = Limits {
        max_topics: usize::try_from(config.max_topics).unwrap_or(usize::MAX),
        max_event_size: config.max_event_size,
        max_body_size: config.max_body_size,
        max_connections: config.effective_max_connections(),
        heartbeat: config.heartbeat,
        retry_ms: config.retry,
        send_timeout: config.send_timeout,
        request_timeout: config.request_timeout,
    };
    let addr = listener.local_addr()?;
    wait_ready(backend.as_ref()).await;
    tracing::info!(
        %addr,
        backend = %backend.name(),
        auth = %if config.auth_enabled() { "on" } else { "off" },
        max_connections = limits.max_connections,
        "herald listening{}",
        if config.auth_enabled() { "" } else { " (open mode: anyone who can reach this address may subscribe and publish)" }
    );
    let state = Arc::new(AppState::new(backend, metrics, limits).with_auth(auth).with_static_site(statics));
    let service = ServiceBuilder::new().option_layer(cors_layer(&config.cors_origin)).service(App::new(state.clone()));

    let tracker = TaskTracker::new();
    let closing = CancellationToken::new();
    let mut http = http1::Builder::new();
    http.timer(TokioTimer::new()).max_buf_size(MAX_CONNECTION_BUFFER).header_read_timeout(Some(config.request_timeout));
    let http = Arc::new(http);

    tokio::pin!(shutdown);
    loop {
        tokio::select! {
            biased;
            () = &mut shutdown => break,
            accepted = listener.accept() => match accepted {
                Ok((stream, _peer)) => {
                    let task = serve_connection(
                        http.clone(),
                        stream,
                        service.clone(),
                        closing.clone(),
                        tracker.clone(),
                        config.request_timeout,
                    );
                    tracker.spawn(task);
                }
                Err(e) => {
                    tracing::warn!(cause = %e, "accept failed");
                    tokio::time::sleep(ACCEPT_BACKOFF).await;
                }
            },
        }
    }

    tracing::info!(grace = ?config.shutdown_grace, "shutting down: draining streams and in-flight requests");
    state.begin_drain();
    drop(listener);
    closing.cancel();
    tracker.close();
    if tokio::time::timeout(config.shutdown_grace, tracker.wait()).await.is_err() {
        tracing::warn!(open = tracker.len(), "shutdown grace elapsed with connections still open");
    }
    tracing::info!("stopped");
    Ok(())
}

/// The service every request goes to: the app, with CORS when origins are configured.
type Service = tower::util::Either<tower_http::cors::Cors<App>, App>;

/// Serves one accepted connection: a first request of `GET /events` is taken by the event-stream front,
/// anything else by hyper.
async fn serve_connection(
    http: Arc<http1::Builder>,
    mut stream: TcpStream,
    service: Service,
    closing: CancellationToken,
    tracker: TaskTracker,
    head_timeout: Duration,
) {
    let _ = stream.set_nodelay(true);
    // Reading the head is boxed so that its buffers and timer do not size the long-lived task.
    let sniffed = Box::pin(async {
        tokio::select! {
            sniffed = front::read_head(&mut stream, head_timeout) => sniffed,
            () = closing.cancelled() => Sniffed::Gone,
        }
    })
    .await;
    let prefix = match sniffed {
        Sniffed::Events(request) => {
            // The stream continues in a task of its own whose future is only the small pump, not this
            // function's larger state.
            if let Some(ready) = front::respond(request, service).await {
                tracker.spawn(front::stream(stream, ready));
            }
            return;
        }
        Sniffed::Other(prefix) => prefix,
        Sniffed::Gone => return,
    };
    // Boxed: hyper's connection future is large, and unboxed it would size every connection's task,
    // event streams included.
    Box::pin(serve_with_hyper(http, Rewind::new(prefix, stream), service, closing)).await;
}

async fn serve_with_hyper(
    http: Arc<http1::Builder>,
    io: Rewind<TcpStream>,
    service: Service,
    closing: CancellationToken,
) {
    let connection = http.serve_connection(TokioIo::new(io), TowerToHyperService::new(service));
    tokio::pin!(connection);
    let result = tokio::select! {
        result = connection.as_mut() => result,
        () = closing.cancelled() => {
            connection.as_mut().graceful_shutdown();
            connection.await
        }
    };
    if let Err(e) = result {
        tracing::debug!(cause = %e, "connection ended with an error");
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use bytes::Bytes;
    use http_body_util::Empty;

    /// The long-lived state of every open event stream is its task's future plus the boxed
    /// `EventStream`; with tens of thousands of idle clients, these sizes are the node's memory. This
    /// fails when they grow, so that growth is a decision, not an accident.
    #[tokio::test]
    async fn per_stream_state_stays_small() {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let stream = TcpStream::connect(listener.local_addr().expect("addr")).await.expect("connect");
        let config = <Config as clap::Parser>::parse_from(["herald"]);
        let metrics = Arc::new(Metrics::default());
        let limits = Limits {
            max_topics: 4,
            max_event_size: 16,
            max_body_size: 16,
            max_connections: 4,
            heartbeat: Duration::from_secs(15),
            retry_ms: 3000,
            send_timeout: Duration::from_secs(60),
            request_timeout: Duration::from_secs(30),
        };
        let state = Arc::new(AppState::new(build_backend(&config, &metrics).expect("backend"), metrics, limits));
        let service: Service = ServiceBuilder::new().option_layer(cors_layer(&[])).service(App::new(state));
        let request = http::Request::get("/events?topics=a").body(Empty::<Bytes>::new()).expect("request");
        let ready = front::respond(request, service).await.expect("response");
        let task = front::stream(stream, ready);
        let sizes = [
            ("stream task future", std::mem::size_of_val(&task), 640),
            ("EventStream", std::mem::size_of::<crate::http::body::EventStream>(), 224),
            ("Mailbox", std::mem::size_of::<crate::hub::Mailbox>(), 64),
        ];
        for (what, size, limit) in sizes {
            assert!(size <= limit, "{what} is {size} bytes, over {limit}");
        }
    }
}
