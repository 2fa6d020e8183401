//! The HTTP layer: one tower service routing Herald's endpoints.
//!
//! Handlers return `Result<Response, Error>`; [`Error::into_response`] is the only place errors become
//! HTTP. Everything here talks to the backend through the [`Backend`] trait only.

use std::convert::Infallible;
use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use http::{Method, Request, Response};

/// Methods of the read-only endpoints.
const GET_HEAD: &[Method] = &[Method::GET, Method::HEAD];

use crate::auth::Auth;
use crate::backend::Backend;
use crate::error::Error;
use crate::metrics::Metrics;

pub mod body;
pub mod client;
mod error_response;
pub(crate) mod events;
mod form;
mod ops;
pub(crate) mod publish;
mod static_files;

pub use body::ResponseBody;
use body::StreamSettings;
pub use static_files::StaticSite;

/// Limits and settings the handlers need, taken from the configuration once.
#[derive(Debug, Clone)]
pub struct Limits {
    /// Topics per subscription or event.
    pub max_topics: usize,
    /// Largest event data.
    pub max_event_size: usize,
    /// Largest `/publish` body.
    pub max_body_size: usize,
    /// Streams open at once.
    pub max_connections: usize,
    /// Streams open at once from one client address (`None`: no such limit).
    pub max_connections_per_ip: Option<u32>,
    /// Idle time before a heartbeat.
    pub heartbeat: Duration,
    /// The `retry:` hint, in milliseconds.
    pub retry_ms: u64,
    /// Time a connection's write may wait for its client to accept bytes before the connection is closed
    /// (applied to every connection's I/O by the server: `server::deadline`).
    pub send_timeout: Duration,
    /// Time a publisher has to send its request body.
    pub request_timeout: Duration,
}

/// State shared by every request.
#[derive(Debug)]
pub struct AppState {
    /// Where events are published, stored and fanned out.
    pub backend: Arc<dyn Backend>,
    /// Node counters.
    pub metrics: Arc<Metrics>,
    /// Request limits.
    pub limits: Limits,
    /// What every event stream of this node shares.
    pub stream_settings: Arc<StreamSettings>,
    /// Token verification; `None` in open mode.
    pub auth: Option<Auth>,
    /// What is served at `/` and `/herald.js`.
    pub statics: StaticSite,
    /// Streams open per client address, when `--max-connections-per-ip` is set.
    pub addresses: Option<Arc<client::AddressSlots>>,
    /// Peers whose forwarding headers name the client (`--trusted-proxy`).
    pub trusted_proxies: client::TrustedProxies,
    draining: AtomicBool,
}

impl AppState {
    /// Makes the shared state.
    pub fn new(backend: Arc<dyn Backend>, metrics: Arc<Metrics>, limits: Limits) -> Self {
        let stream_settings = Arc::new(StreamSettings {
            backend: backend.clone(),
            metrics: metrics.clone(),
            heartbeat: limits.heartbeat,
        });
        let addresses = limits.max_connections_per_ip.map(client::AddressSlots::new);
        AppState {
            backend,
            metrics,
            limits,
            stream_settings,
            auth: None,
            statics: StaticSite::BuiltIn,
            addresses,
            trusted_proxies: client::TrustedProxies::default(),
            draining: AtomicBool::new(false),
        }
    }

    /// Believes the forwarding headers of peers in these ranges (`--trusted-proxy`).
    #[must_use]
    pub fn with_trusted_proxies(mut self, trusted: client::TrustedProxies) -> Self {
        self.trusted_proxies = trusted;
        self
    }

    /// Serves these static files (the built-in ones by default).
    #[must_use]
    pub fn with_static_site(mut self, statics: StaticSite) -> Self {
        self.statics = statics;
        self
    }

    /// Turns authentication on (with `Some`).
    #[must_use]
    pub fn with_auth(mut self, auth: Option<Auth>) -> Self {
        self.auth = auth;
        self
    }

    /// Starts draining: `/readyz` answers 503, new streams are refused and open ones end.
    pub fn begin_drain(&self) {
        self.draining.store(true, Ordering::Release);
        self.backend.hub().close();
    }

    /// Whether the node is shutting down.
    pub fn is_draining(&self) -> bool {
        self.draining.load(Ordering::Acquire)
    }
}

/// The tower service serving every Herald endpoint.
#[derive(Debug, Clone)]
pub struct App {
    state: Arc<AppState>,
}

impl App {
    /// Makes the service.
    pub fn new(state: Arc<AppState>) -> Self {
        App { state }
    }

    async fn route<B: RequestBody>(state: Arc<AppState>, req: Request<B>) -> Result<Response<ResponseBody>, Error> {
        match req.uri().path() {
            "/events" => events::subscribe(&state, req).await,
            // A publish that arrives while the node drains is refused; those already in flight finish.
            "/publish" if state.is_draining() => Err(Error::ShuttingDown),
            "/publish" => publish::publish(&state, req).await,
            "/healthz" => ops::healthz(&req),
            "/readyz" => ops::readyz(&state, req.method()).await,
            "/metrics" => ops::metrics(&state, &req),
            // Without the body, which need not be shareable between threads across the file reads.
            _ => static_files::serve(&state.statics, &req.into_parts().0).await,
        }
    }
}

/// Answers 405 (with `allow` as the `Allow` header) unless the method is one of `allowed`.
pub(crate) fn require_method(method: &Method, allowed: &[Method], allow: &'static str) -> Result<(), Error> {
    if allowed.contains(method) {
        Ok(())
    } else {
        Err(Error::MethodNotAllowed { allow })
    }
}

/// A request body the service can read: hyper's `Incoming`, or an empty body for requests taken by the
/// event-stream front (see `server::front`).
pub trait RequestBody:
    http_body::Body<Data = bytes::Bytes, Error: Into<Box<dyn std::error::Error + Send + Sync>>> + Send + 'static
{
}

impl<B> RequestBody for B where
    B: http_body::Body<Data = bytes::Bytes, Error: Into<Box<dyn std::error::Error + Send + Sync>>> + Send + 'static
{
}

impl<B: RequestBody> tower::Service<Request<B>> for App {
    type Response = Response<ResponseBody>;
    type Error = Infallible;
    type Future = Pin<Box<dyn Future<Output = Result<Self::Response, Infallible>> + Send>>;

    fn poll_ready(&mut self, _cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, req: Request<B>) -> Self::Future {
        let state = self.state.clone();
        Box::pin(async move {
            Ok(App::route(state.clone(), req).await.unwrap_or_else(|e| {
                match e {
                    Error::Unauthorized(_) => Metrics::inc(&state.metrics.unauthorized),
                    Error::Forbidden(_) => Metrics::inc(&state.metrics.forbidden),
                    _ => {}
                }
                e.into_response()
            }))
        })
    }
}
