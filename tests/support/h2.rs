//! An HTTP/2 client for the tests: hyper's, over cleartext with prior knowledge (as proxies speak to
//! Herald) or over any stream (TLS). One [`H2Conn`] is one connection; each request is one stream, so
//! many event streams can share it ([`H2Conn::events`]). Every wait is bounded.

use std::collections::VecDeque;
use std::net::SocketAddr;
use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper::client::conn::http2::{self, SendRequest};
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::TcpStream;
use tokio::task::JoinHandle;

use super::{HttpResponse, SseEvent, SseItem, SseParser, IO_TIMEOUT};

/// The client's flow-control windows. hyper's defaults are large; tests that stall a stream make its
/// window small (the protocol's default, 64 KiB) and the connection's large, as browsers do.
#[derive(Debug, Clone, Copy)]
pub struct Windows {
    /// Initial window of each stream.
    pub stream: u32,
    /// Window of the whole connection.
    pub connection: u32,
}

impl Default for Windows {
    fn default() -> Self {
        Windows { stream: 2 << 20, connection: 5 << 20 }
    }
}

/// One HTTP/2 connection.
pub struct H2Conn {
    sender: SendRequest<Full<Bytes>>,
    /// The connection's task: ends (`Ok`) after the server's GOAWAY once no stream is left.
    pub driver: JoinHandle<Result<(), hyper::Error>>,
}

impl H2Conn {
    /// Connects to `addr` with prior knowledge (h2c).
    ///
    /// # Panics
    /// When the connection or the handshake fails.
    pub async fn connect(addr: SocketAddr) -> H2Conn {
        Self::connect_with(addr, Windows::default()).await
    }

    /// Like [`H2Conn::connect`], with these windows.
    pub async fn connect_with(addr: SocketAddr, windows: Windows) -> H2Conn {
        let tcp = tokio::time::timeout(IO_TIMEOUT, TcpStream::connect(addr))
            .await
            .expect("connect in time")
            .expect("connect");
        tcp.set_nodelay(true).expect("nodelay");
        Self::handshake(tcp, windows).await
    }

    /// The HTTP/2 handshake over `io`.
    pub async fn handshake<T>(io: T, windows: Windows) -> H2Conn
    where
        T: AsyncRead + AsyncWrite + Unpin + Send + 'static,
    {
        let mut builder = http2::Builder::new(TokioExecutor::new());
        builder
            .timer(TokioTimer::new())
            .initial_stream_window_size(windows.stream)
            .initial_connection_window_size(windows.connection);
        let (sender, connection) = tokio::time::timeout(IO_TIMEOUT, builder.handshake(TokioIo::new(io)))
            .await
            .expect("handshake in time")
            .expect("HTTP/2 handshake");
        H2Conn { sender, driver: tokio::spawn(connection) }
    }

    /// Sends a request; returns its response head and body. Waits (bounded) for a free stream slot.
    ///
    /// # Errors
    /// The stream was refused or reset, or the connection is gone.
    pub async fn try_send(
        &self,
        method: &str,
        path: &str,
        headers: &[(&str, &str)],
        body: &[u8],
    ) -> Result<http::Response<Incoming>, String> {
        let mut request = http::Request::builder().method(method).uri(format!("http://127.0.0.1{path}"));
        for (k, v) in headers {
            request = request.header(*k, *v);
        }
        let request = request.body(Full::new(Bytes::copy_from_slice(body))).map_err(|e| e.to_string())?;
        let mut sender = self.sender.clone();
        let send = async move {
            sender.ready().await.map_err(|e| format!("not ready: {e}"))?;
            sender.send_request(request).await.map_err(|e| format!("{method} {path}: {e}"))
        };
        tokio::time::timeout(IO_TIMEOUT, send).await.map_err(|_| format!("{method} {path}: no answer in time"))?
    }

    /// A whole exchange.
    ///
    /// # Panics
    /// When it fails or the body does not arrive within [`IO_TIMEOUT`].
    pub async fn http(&self, method: &str, path: &str, headers: &[(&str, &str)], body: &[u8]) -> HttpResponse {
        let response = self.try_send(method, path, headers, body).await.unwrap_or_else(|e| panic!("{e}"));
        let (parts, body) = response.into_parts();
        let body = tokio::time::timeout(IO_TIMEOUT, body.collect())
            .await
            .unwrap_or_else(|_| panic!("{method} {path}: body not in time"))
            .unwrap_or_else(|e| panic!("{method} {path}: body: {e}"))
            .to_bytes()
            .to_vec();
        HttpResponse { status: parts.status.as_u16(), headers: header_pairs(&parts.headers), body }
    }

    /// `GET path`.
    pub async fn get(&self, path: &str) -> HttpResponse {
        self.http("GET", path, &[], b"").await
    }

    /// Publishes `data` to `topics` as JSON; returns the id.
    ///
    /// # Panics
    /// Unless the answer is 200 with an id.
    pub async fn publish(&self, topics: &[&str], data: &str) -> String {
        let body = serde_json::json!({ "topics": topics, "data": data }).to_string();
        let response = self.http("POST", "/publish", &[("content-type", "application/json")], body.as_bytes()).await;
        assert_eq!(response.status, 200, "publish: {}", response.text());
        response.json()["id"].as_str().expect("id").to_string()
    }

    /// Opens `GET path` as an event stream (any status).
    ///
    /// # Panics
    /// When the stream cannot be opened.
    pub async fn events(&self, path: &str, headers: &[(&str, &str)]) -> H2Sse {
        let response = self.try_send("GET", path, headers, b"").await.unwrap_or_else(|e| panic!("{e}"));
        H2Sse::new(response)
    }
}

fn header_pairs(headers: &http::HeaderMap) -> Vec<(String, String)> {
    headers.iter().map(|(k, v)| (k.as_str().to_string(), String::from_utf8_lossy(v.as_bytes()).into_owned())).collect()
}

/// An event stream on one HTTP/2 stream. Its window is released only as it is read: a stream that is
/// not read stalls, as a client that stopped reading would.
pub struct H2Sse {
    /// Response status.
    pub status: u16,
    /// Response headers.
    pub headers: Vec<(String, String)>,
    body: Incoming,
    parser: SseParser,
    pending: VecDeque<SseItem>,
    end: Option<(bool, String)>,
    /// Every body byte received, as sent.
    pub raw: Vec<u8>,
}

impl H2Sse {
    /// Reads `response` (from any hyper client, HTTP/1 or HTTP/2) as an event stream.
    pub fn new(response: http::Response<Incoming>) -> H2Sse {
        let (parts, body) = response.into_parts();
        H2Sse {
            status: parts.status.as_u16(),
            headers: header_pairs(&parts.headers),
            body,
            parser: SseParser::new(),
            pending: VecDeque::new(),
            end: None,
            raw: Vec::new(),
        }
    }

    /// A response header.
    pub fn header(&self, name: &str) -> Option<&str> {
        super::find_header(&self.headers, name)
    }

    async fn next_inner(&mut self) -> SseItem {
        loop {
            if let Some(item) = self.pending.pop_front() {
                return item;
            }
            if let Some((clean, reason)) = &self.end {
                return SseItem::End { clean: *clean, reason: reason.clone() };
            }
            match self.body.frame().await {
                Some(Ok(frame)) => {
                    if let Ok(data) = frame.into_data() {
                        self.raw.extend_from_slice(&data);
                        let items = self.parser.feed(&data);
                        self.pending.extend(items);
                    }
                }
                None => self.end = Some((true, "body ended".to_string())),
                Some(Err(e)) => self.end = Some((false, format!("{e:?}"))),
            }
        }
    }

    /// The next item, or `None` after `timeout`. After the end, keeps returning `End`.
    pub async fn next_item(&mut self, timeout: Duration) -> Option<SseItem> {
        tokio::time::timeout(timeout, self.next_inner()).await.ok()
    }

    /// The next event (skipping comments and retry fields).
    ///
    /// # Panics
    /// On timeout or end of stream.
    pub async fn next_event(&mut self, timeout: Duration) -> SseEvent {
        let deadline = tokio::time::Instant::now() + timeout;
        loop {
            let left = deadline.saturating_duration_since(tokio::time::Instant::now());
            match self.next_item(left).await {
                None => panic!("no event within {timeout:?}"),
                Some(SseItem::Event(e)) => return e,
                Some(end @ SseItem::End { .. }) => panic!("stream ended while waiting for an event: {end:?}"),
                Some(_) => {}
            }
        }
    }

    /// Reads items until the stream ends or `timeout` passes (the `End` included when reached).
    pub async fn read_until_end(&mut self, timeout: Duration) -> Vec<SseItem> {
        let deadline = tokio::time::Instant::now() + timeout;
        let mut items = Vec::new();
        loop {
            let left = deadline.saturating_duration_since(tokio::time::Instant::now());
            match self.next_item(left).await {
                None => return items,
                Some(end @ SseItem::End { .. }) => {
                    items.push(end);
                    return items;
                }
                Some(item) => items.push(item),
            }
        }
    }

    /// The whole body as text (for error answers).
    pub async fn body_text(self) -> String {
        match tokio::time::timeout(IO_TIMEOUT, self.body.collect()).await {
            Ok(Ok(body)) => String::from_utf8_lossy(&body.to_bytes()).into_owned(),
            other => format!("<body: {other:?}>"),
        }
    }
}
