//! The accept loop, per-connection HTTP/1 serving, and graceful shutdown.
//!
//! Shutdown, in order: stop accepting; mark the node draining (`/readyz` 503, new streams 503) and close
//! the hub, which ends every open event stream cleanly after what it has queued; ask every connection to
//! finish its in-flight request and close; wait for them, at most `--shutdown-grace`.

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use hyper::server::conn::http1;
use hyper_util::rt::{TokioIo, TokioTimer};
use hyper_util::service::TowerToHyperService;
use tokio::net::{TcpListener, TcpStream};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tower::ServiceBuilder;
use tower_http::cors::{AllowOrigin, CorsLayer};

use crate::backend::{Backend, MemoryBackend};
use crate::config::Config;
use crate::http::{App, AppState, Limits};
use crate::metrics::Metrics;

/// hyper's per-connection buffer limit. Request heads and `/publish` bodies are streamed through it, so
/// it bounds what one slow reader can make the node buffer for it, not the size of a request.
const MAX_CONNECTION_BUFFER: usize = 64 * 1024;

/// How long to pause accepting after the process runs out of file descriptors.
const ACCEPT_BACKOFF: Duration = Duration::from_millis(50);

/// Builds the backend the configuration asks for.
fn build_backend(config: &Config, metrics: &Arc<Metrics>) -> Arc<dyn Backend> {
    let history = usize::try_from(config.history_size).unwrap_or(usize::MAX);
    let queue = usize::try_from(config.queue_size).unwrap_or(usize::MAX);
    Arc::new(MemoryBackend::new(history, queue, metrics.clone()))
}

fn cors_layer(origins: &[String]) -> Option<CorsLayer> {
    if origins.is_empty() {
        return None;
    }
    let allow = if origins.iter().any(|o| o == "*") {
        AllowOrigin::any()
    } else {
        AllowOrigin::list(origins.iter().filter_map(|o| o.parse().ok()))
    };
    Some(CorsLayer::new().allow_origin(allow).allow_methods([http::Method::GET, http::Method::POST]).allow_headers([
        http::header::CONTENT_TYPE,
        http::header::AUTHORIZATION,
        "last-event-id".parse().ok()?,
    ]))
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
    let metrics = Arc::new(Metrics::default());
    let backend = build_backend(&config, &metrics);
    let limits = Limits {
        max_topics: usize::try_from(config.max_topics).unwrap_or(usize::MAX),
        max_event_size: config.max_event_size,
        max_body_size: config.max_body_size,
        max_connections: config.effective_max_connections(),
        heartbeat: config.heartbeat,
        retry_ms: config.retry,
    };
    let addr = listener.local_addr()?;
    tracing::info!(
        %addr,
        backend = %backend.name(),
        auth = %if config.auth_enabled() { "on" } else { "off" },
        max_connections = limits.max_connections,
        "herald listening"
    );
    if !config.auth_enabled() {
        tracing::warn!("authentication is off: anyone who can reach this address may subscribe and publish");
    }
    let state = Arc::new(AppState::new(backend, metrics, limits));
    let service = ServiceBuilder::new().option_layer(cors_layer(&config.cors_origin)).service(App::new(state.clone()));

    let tracker = TaskTracker::new();
    let closing = CancellationToken::new();
    let mut http = http1::Builder::new();
    http.timer(TokioTimer::new()).max_buf_size(MAX_CONNECTION_BUFFER);

    tokio::pin!(shutdown);
    loop {
        tokio::select! {
            biased;
            () = &mut shutdown => break,
            accepted = listener.accept() => match accepted {
                Ok((stream, _peer)) => {
                    let service = TowerToHyperService::new(service.clone());
                    tracker.spawn(serve_connection(http.clone(), stream, service, closing.clone()));
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

async fn serve_connection<S>(http: http1::Builder, stream: TcpStream, service: S, closing: CancellationToken)
where
    S: hyper::service::Service<
            http::Request<hyper::body::Incoming>,
            Response = http::Response<crate::http::ResponseBody>,
        > + Send
        + 'static,
    S::Future: Send + 'static,
    S::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
{
    let _ = stream.set_nodelay(true);
    let connection = http.serve_connection(TokioIo::new(stream), service);
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
