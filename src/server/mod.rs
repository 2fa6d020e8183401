//! The accept loop, per-connection serving (HTTP/1, HTTP/2, TLS), and graceful shutdown.
//!
//! Each accepted connection is sniffed: a first request of `GET /events` over cleartext HTTP/1 goes to the
//! event-stream front (`front`), a connection that opens with the HTTP/2 preface to hyper's HTTP/2 server
//! (`h2`), anything else to hyper's HTTP/1 server. With `--tls-cert` every connection first completes a
//! TLS handshake (`tls`) and is then served by hyper, HTTP/2 or HTTP/1.1 as ALPN chose.
//!
//! Shutdown, in order: mark the node draining (`/readyz`, new streams and new publishes 503 `shutting_down`)
//! and close the hub, which ends every open event stream cleanly after what it has queued; ask every
//! connection to finish its in-flight request and close; wait for them, at most `--shutdown-grace`. Meanwhile
//! the listener keeps accepting, so that those 503s can be seen (each such connection is answered once, with
//! `Connection: close`); it closes when the open connections are done or the grace is over.

use std::future::Future;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

mod deadline;
pub(crate) mod front;
mod h2;
mod json_errors;
mod rewind;
mod tls;

use hyper::server::conn::{http1, http2};
use hyper_util::rt::{TokioIo, TokioTimer};
use hyper_util::service::TowerToHyperService;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::{TcpListener, TcpStream};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tower::{ServiceBuilder, ServiceExt};
use tower_http::cors::{AllowOrigin, CorsLayer};

use self::deadline::{Serving, WriteDeadline};
use self::front::Sniffed;
use self::json_errors::JsonErrors;
use self::rewind::Rewind;
use self::tls::Tls;
pub use self::tls::TlsFiles;
use crate::backend::redis::RedisSettings;
use crate::backend::{Backend, HistoryLimits, MemoryBackend, RedisBackend};
use crate::config::Config;
use crate::http::client::{Peer, TrustedProxies};
use crate::http::{App, AppState, Limits, ResponseBody};
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
            let settings = RedisSettings {
                url: url.clone(),
                ca_cert: config.redis_ca_pem().map_err(|e| e.to_string())?,
                sentinel_password: config.redis_sentinel_password.clone(),
                wait_replicas: config.redis_wait_replicas,
                wait_timeout: Duration::from_millis(config.redis_wait_timeout),
            };
            Arc::new(RedisBackend::connect(&settings, history, queue, metrics.clone())?)
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
        max_connections_per_ip: config.max_connections_per_ip,
        heartbeat: config.heartbeat,
        retry_ms: config.retry,
        send_timeout: config.send_timeout,
        request_timeout: config.request_timeout,
    };
    let tls = config.tls()?.map(Tls::new).transpose()?;
    if let Some(tls) = &tls {
        tls.reload_on_sighup();
    }
    let addr = listener.local_addr()?;
    wait_ready(backend.as_ref()).await;
    tracing::info!(
        %addr,
        backend = %backend.name(),
        auth = %if config.auth_enabled() { "on" } else { "off" },
        tls = %if tls.is_some() { "on" } else { "off" },
        max_connections = limits.max_connections,
        "herald listening{}",
        if config.auth_enabled() { "" } else { " (open mode: anyone who can reach this address may subscribe and publish)" }
    );
    let state = Arc::new(
        AppState::new(backend, metrics, limits)
            .with_auth(auth)
            .with_static_site(statics)
            .with_trusted_proxies(TrustedProxies::new(config.trusted_proxy.clone())),
    );
    let service = ServiceBuilder::new().option_layer(cors_layer(&config.cors_origin)).service(App::new(state.clone()));

    let tracker = TaskTracker::new();
    let closing = CancellationToken::new();
    let mut http = http1::Builder::new();
    http.timer(TokioTimer::new()).max_buf_size(MAX_CONNECTION_BUFFER).header_read_timeout(Some(config.request_timeout));
    let conns = Arc::new(Connections {
        http,
        h2: h2::builder(config.h2_max_streams, config.send_timeout, state.metrics.clone()),
        tls,
        request_timeout: config.request_timeout,
        send_timeout: config.send_timeout,
        metrics: state.metrics.clone(),
    });

    tokio::pin!(shutdown);
    let spawn_on = |conns: &Arc<Connections>, tracker: &TaskTracker, closing: &CancellationToken, stream, peer| {
        let task =
            serve_connection(conns.clone(), stream, Peer(peer), service.clone(), closing.clone(), tracker.clone());
        tracker.spawn(task);
    };
    loop {
        tokio::select! {
            biased;
            () = &mut shutdown => break,
            accepted = listener.accept() => match accepted {
                Ok((stream, peer)) => spawn_on(&conns, &tracker, &closing, stream, peer),
                Err(e) => accept_failed(e).await,
            },
        }
    }

    tracing::info!(grace = ?config.shutdown_grace, "shutting down: draining streams and in-flight requests");
    let deadline = tokio::time::Instant::now() + config.shutdown_grace;
    state.begin_drain();
    closing.cancel();
    tracker.close();
    // Until the open connections are done (or the grace is over), the listener keeps accepting, so that new
    // requests see a 503 (`shutting_down`) rather than a refused connection: `/readyz` tells the load
    // balancer, clients retry elsewhere. Those connections are answered once, with `Connection: close`.
    let mut late_conns = Connections::clone(&conns);
    late_conns.http.keep_alive(false);
    let late_conns = Arc::new(late_conns);
    let (late, late_closing) = (TaskTracker::new(), CancellationToken::new());
    let drained = loop {
        tokio::select! {
            biased;
            () = tracker.wait() => break true,
            () = tokio::time::sleep_until(deadline) => break false,
            accepted = listener.accept() => match accepted {
                Ok((stream, peer)) => spawn_on(&late_conns, &late, &late_closing, stream, peer),
                Err(e) => accept_failed(e).await,
            },
        }
    };
    drop(listener);
    late_closing.cancel();
    late.close();
    // The answers being written on connections accepted meanwhile finish, within the grace.
    if !drained || tokio::time::timeout_at(deadline, late.wait()).await.is_err() {
        tracing::warn!(open = tracker.len() + late.len(), "shutdown grace elapsed with connections still open");
    }
    tracing::info!("stopped");
    Ok(())
}

/// After a failed `accept` (out of file descriptors, say): log, and pause before the next.
async fn accept_failed(e: std::io::Error) {
    tracing::warn!(cause = %e, "accept failed");
    tokio::time::sleep(ACCEPT_BACKOFF).await;
}

/// The service every request goes to: the app, with CORS when origins are configured.
type Service = tower::util::Either<tower_http::cors::Cors<App>, App>;

/// What every connection is served with.
#[derive(Debug, Clone)]
struct Connections {
    /// hyper's HTTP/1 settings.
    http: http1::Builder,
    /// hyper's HTTP/2 settings.
    h2: http2::Builder<h2::StreamTasks>,
    /// With `--tls-cert`: every connection is TLS.
    tls: Option<Tls>,
    /// Time a client has to send a request head (`--request-timeout`).
    request_timeout: Duration,
    /// Time a write may wait for the client to accept bytes (`--send-timeout`): see [`deadline`].
    send_timeout: Duration,
    /// Node counters.
    metrics: Arc<Metrics>,
}

impl Connections {
    /// `io` with the send timeout on its writes.
    fn deadline<T>(&self, io: T, serving: Serving) -> WriteDeadline<T> {
        WriteDeadline::new(io, self.send_timeout, serving, self.metrics.clone())
    }
}

/// Serves one accepted connection: a first request of `GET /events` is taken by the event-stream front,
/// a connection that opens with the HTTP/2 preface by hyper's HTTP/2 server, anything else by hyper's
/// HTTP/1 server. With TLS, hyper serves what ALPN chose. Every request carries the connection's [`Peer`]
/// in its extensions.
async fn serve_connection(
    conns: Arc<Connections>,
    mut stream: TcpStream,
    peer: Peer,
    service: Service,
    closing: CancellationToken,
    tracker: TaskTracker,
) {
    let _ = stream.set_nodelay(true);
    if conns.tls.is_some() {
        return Box::pin(serve_tls(conns, stream, peer, service, closing)).await;
    }
    // Reading the head is boxed so that its buffers and timer do not size the long-lived task.
    let sniffed = Box::pin(async {
        tokio::select! {
            sniffed = front::read_head(&mut stream, conns.request_timeout) => sniffed,
            () = closing.cancelled() => Sniffed::Gone,
        }
    })
    .await;
    let prefix = match sniffed {
        Sniffed::Events(mut request) => {
            request.extensions_mut().insert(peer);
            // The stream continues in a task of its own whose future is only the small pump, not this
            // function's larger state.
            if let Some(ready) = front::respond(request, service).await {
                let serving = if ready.is_stream() { Serving::EventStream } else { Serving::Response };
                tracker.spawn(front::stream(conns.deadline(stream, serving), ready));
            }
            return;
        }
        Sniffed::Other(prefix) => prefix,
        Sniffed::Http2(prefix) => {
            return Box::pin(h2::serve(conns, Rewind::new(prefix, stream), peer, service, closing)).await;
        }
        Sniffed::Refused(error) => {
            return Box::pin(front::refuse(conns.deadline(stream, Serving::Response), error)).await;
        }
        Sniffed::Gone => return,
    };
    // Boxed: hyper's connection future is large, and unboxed it would size every connection's task,
    // event streams included.
    Box::pin(serve_with_hyper(conns, Rewind::new(prefix, stream), peer, service, closing)).await;
}

/// Completes the TLS handshake (within `--request-timeout`) and serves the connection with hyper:
/// HTTP/2 when the client chose `h2` by ALPN, else HTTP/1.1 (the event-stream front serves cleartext
/// only; over TLS, the TLS buffers outweigh what it saves).
async fn serve_tls(
    conns: Arc<Connections>,
    stream: TcpStream,
    peer: Peer,
    service: Service,
    closing: CancellationToken,
) {
    let Some(tls) = &conns.tls else { return };
    let handshake = tokio::time::timeout(conns.request_timeout, tls.acceptor().accept(stream));
    let stream = tokio::select! {
        result = handshake => match result {
            Ok(Ok(stream)) => stream,
            Ok(Err(e)) => return tracing::debug!(cause = %e, "TLS handshake failed"),
            Err(_) => return tracing::debug!("TLS handshake timed out"),
        },
        () = closing.cancelled() => return,
    };
    if stream.get_ref().1.alpn_protocol() == Some(tls::ALPN_H2) {
        h2::serve(conns, stream, peer, service, closing).await;
    } else {
        serve_with_hyper(conns, stream, peer, service, closing).await;
    }
}

/// Serves a connection with hyper. Its I/O carries the send timeout like the front's, and a response that
/// is an event stream marks the connection as streaming, so that a stall is counted as a stream's. The
/// answers hyper gives by itself to heads it cannot parse are made JSON ([`json_errors`]).
async fn serve_with_hyper<T>(conns: Arc<Connections>, io: T, peer: Peer, service: Service, closing: CancellationToken)
where
    T: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let streaming = Arc::new(AtomicBool::new(false));
    let io = conns.deadline(io, Serving::Flag(streaming.clone()));
    let service = ServiceExt::<http::Request<hyper::body::Incoming>>::map_response(service, move |response| {
        if matches!(http::Response::body(&response), ResponseBody::Stream(_)) {
            streaming.store(true, Ordering::Relaxed);
        }
        response
    })
    .map_request(move |mut request: http::Request<hyper::body::Incoming>| {
        request.extensions_mut().insert(peer);
        request
    });
    let io = JsonErrors::new(io);
    let connection = conns.http.serve_connection(TokioIo::new(io), TowerToHyperService::new(service));
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
            max_connections_per_ip: None,
            heartbeat: Duration::from_secs(15),
            retry_ms: 3000,
            send_timeout: Duration::from_secs(60),
            request_timeout: Duration::from_secs(30),
        };
        let state = Arc::new(AppState::new(build_backend(&config, &metrics).expect("backend"), metrics, limits));
        let service: Service = ServiceBuilder::new().option_layer(cors_layer(&[])).service(App::new(state));
        let request = http::Request::get("/events?topics=a").body(Empty::<Bytes>::new()).expect("request");
        let ready = front::respond(request, service).await.expect("response");
        let conns = Connections {
            http: http1::Builder::new(),
            h2: h2::builder(8, Duration::from_secs(60), Arc::default()),
            tls: None,
            request_timeout: Duration::from_secs(30),
            send_timeout: Duration::from_secs(60),
            metrics: Arc::default(),
        };
        let task = front::stream(conns.deadline(stream, Serving::EventStream), ready);
        let sizes = [
            ("stream task future", std::mem::size_of_val(&task), 640),
            // 240 since issue 8: the waker its mailbox and timer were registered with (16 bytes), which lets a
            // delivery skip a mailbox lock and a timer poll.
            ("EventStream", std::mem::size_of::<crate::http::body::EventStream>(), 240),
            ("Mailbox", std::mem::size_of::<crate::hub::Mailbox>(), 64),
        ];
        for (what, size, limit) in sizes {
            assert!(size <= limit, "{what} is {size} bytes, over {limit}");
        }
    }
}
