//! # Herald
//!
//! Real-time notifications over Server-Sent Events: browsers and other SSE clients subscribe to topics
//! with `GET /events`, publishers `POST /publish`, and a client that reconnects with `Last-Event-ID` gets
//! exactly what it missed. The HTTP contract is `API.md`; this crate is one way to honour it.
//!
//! ## Layout
//! - [`config`]: the command line and environment.
//! - [`cli`]: the command-line tools `herald token`, `herald publish`, `herald tail`.
//! - [`server`]: accept loop, per-connection serving (the event-stream front, HTTP/1, HTTP/2, TLS), graceful
//!   shutdown.
//! - [`http`]: the tower service: routing, `/events`, `/publish`, operations, static files.
//! - [`error`]: the one error type, with its HTTP status and code (the response is made in `http`).
//! - [`auth`]: JWT verification, topic patterns, public topics.
//! - [`backend`]: the [`backend::Backend`] trait (ids, history, live feed) and its implementations.
//! - [`hub`]: topic → local connections; each connection's bounded mailbox.
//! - [`sse`]: events encoded once into shared bytes.
//! - [`id`], [`topic`]: ids, topics and types.
//! - [`metrics`]: counters for `/metrics`.
//! - `fuzzing` (hidden): the entry points of the fuzz targets in `tests/fuzz/`.
//!
//! ## The path of one event
//! `POST /publish` → [`backend::Backend::publish`] (id made, stored in each topic's history, encoded once
//! into an [`sse::Event`]) → [`hub::Hub::dispatch`] pushes the same `Arc<Event>` into the mailbox of every
//! subscribed connection → each connection's [`http::body::EventStream`] drains its mailbox and hands the
//! shared bytes to hyper.

pub mod auth;
pub mod backend;
pub mod cli;
pub mod config;
pub mod error;
#[doc(hidden)]
pub mod fuzzing;
pub mod http;
pub mod hub;
pub mod id;
pub mod metrics;
pub mod server;
pub mod sse;
pub mod topic;

pub use config::Config;
pub use error::{Error, Result};
pub use server::serve;
