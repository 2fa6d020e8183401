//! HTTPS with `--tls-cert` / `--tls-key`: HTTP/2 and HTTP/1.1 by ALPN on one port, the files checked at
//! start-up, and the certificate reloaded on SIGHUP without dropping open streams.
//!
//! The certificates are `tests/fixtures/tls/` (made by its `make.sh`): a test CA, and two server
//! certificates it signed for 127.0.0.1 and localhost.

mod support;

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http_body_util::Empty;
use hyper_util::rt::TokioIo;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, ServerName};
use support::h2::{H2Conn, H2Sse, Windows};
use support::scratch::{fixture, TempDir};
use support::*;
use tokio::net::TcpStream;
use tokio_rustls::client::TlsStream;
use tokio_rustls::TlsConnector;

const WAIT: Duration = Duration::from_secs(10);

fn tls_args(cert: &str, key: &str) -> Vec<String> {
    vec!["--tls-cert".into(), cert.into(), "--tls-key".into(), key.into()]
}

/// Connects over TLS, trusting the test CA, offering `alpn`; returns the stream.
async fn connect(server: &TestServer, alpn: &[&[u8]]) -> TlsStream<TcpStream> {
    let mut roots = rustls::RootCertStore::empty();
    roots.add(CertificateDer::from_pem_file(fixture("tls/ca.pem")).expect("CA")).expect("add CA");
    let mut config = rustls::ClientConfig::builder_with_provider(Arc::new(rustls::crypto::ring::default_provider()))
        .with_safe_default_protocol_versions()
        .expect("versions")
        .with_root_certificates(roots)
        .with_no_client_auth();
    config.alpn_protocols = alpn.iter().map(|p| p.to_vec()).collect();
    let tcp = TcpStream::connect(server.addr()).await.expect("connect");
    let name = ServerName::try_from("localhost").expect("name");
    tokio::time::timeout(WAIT, TlsConnector::from(Arc::new(config)).connect(name, tcp))
        .await
        .expect("handshake in time")
        .expect("TLS handshake")
}

/// The certificate the server presented.
fn peer_certificate(stream: &TlsStream<TcpStream>) -> Vec<u8> {
    stream.get_ref().1.peer_certificates().expect("certificates")[0].to_vec()
}

fn pem_der(path: &str) -> Vec<u8> {
    CertificateDer::from_pem_file(path).expect("certificate").to_vec()
}

/// An event stream over HTTP/1.1 on `stream` (hyper's client).
async fn http1_events(stream: TlsStream<TcpStream>, path: &str) -> H2Sse {
    let (mut sender, connection) =
        hyper::client::conn::http1::handshake::<_, Empty<Bytes>>(TokioIo::new(stream)).await.expect("handshake");
    tokio::spawn(connection);
    let request = http::Request::get(path).header("host", "localhost").body(Empty::new()).expect("request");
    let response = tokio::time::timeout(WAIT, sender.send_request(request)).await.expect("in time").expect("response");
    assert_eq!(response.version(), http::Version::HTTP_11);
    H2Sse::new(response)
}

/// One port, two protocols: ALPN `h2` gets HTTP/2 (many streams on the connection), `http/1.1` or no ALPN
/// at all gets HTTP/1.1; every stream receives the event.
#[tokio::test]
async fn https_serves_http2_and_http1_by_alpn() {
    let args = tls_args(&fixture("tls/server.pem"), &fixture("tls/server.key"));
    let server = TestServer::start(&args.iter().map(String::as_str).collect::<Vec<_>>());
    assert!(server.startup_line().contains("tls=on"), "{}", server.startup_line());

    let h2 = connect(&server, &[b"h2", b"http/1.1"]).await;
    assert_eq!(h2.get_ref().1.alpn_protocol(), Some(&b"h2"[..]));
    let conn = H2Conn::handshake(h2, Windows::default()).await;
    assert_eq!(conn.get("/healthz").await.status, 200);
    let mut streams =
        vec![conn.events(&events_path(&["tls"], ""), &[]).await, conn.events(&events_path(&["tls"], ""), &[]).await];
    let http1 = connect(&server, &[b"http/1.1"]).await;
    assert_eq!(http1.get_ref().1.alpn_protocol(), Some(&b"http/1.1"[..]));
    streams.push(http1_events(http1, &events_path(&["tls"], "")).await);
    let no_alpn = connect(&server, &[]).await;
    assert_eq!(no_alpn.get_ref().1.alpn_protocol(), None);
    streams.push(http1_events(no_alpn, &events_path(&["tls"], "")).await);
    for stream in &streams {
        assert_eq!(stream.status, 200);
        assert_eq!(stream.header("content-type"), Some("text/event-stream"));
    }
    assert_eq!(metrics_over(&conn).await["herald_connections_open"], 4.0);

    let id = conn.publish(&["tls"], "over TLS").await;
    for stream in &mut streams {
        let event = stream.next_event(WAIT).await;
        assert_eq!((event.id(), event.data.as_str()), (id.as_str(), "over TLS"));
    }
    // Cleartext is not served on a TLS port.
    assert!(try_http(server.addr(), "GET", "/healthz", &[], b"").await.is_err());
}

async fn metrics_over(conn: &H2Conn) -> std::collections::HashMap<String, f64> {
    parse_prometheus(&conn.get("/metrics").await.text())
}

/// Files that cannot serve stop start-up with status 2 and a message naming the flag.
#[test]
fn tls_files_are_checked_at_start_up() {
    let dir = TempDir::new("tls-check");
    let not_pem = dir.write("not.pem", b"hello\n");
    let cert = fixture("tls/server.pem");
    let key = fixture("tls/server.key");
    let other_key = fixture("tls/server2.key");
    let missing = dir.file("missing.pem");
    let cases: [(&[&str], &str); 5] = [
        (&["--tls-cert", &missing, "--tls-key", &key], "--tls-cert"),
        (&["--tls-cert", &not_pem, "--tls-key", &key], "no PEM certificate"),
        (&["--tls-cert", &cert, "--tls-key", &not_pem], "no PEM private key"),
        (&["--tls-cert", &cert, "--tls-key", &other_key], "does not go with"),
        (&["--tls-cert", &cert], "--tls-key"),
    ];
    for (args, message) in cases {
        let mut all = args.to_vec();
        all.extend(["--listen", "127.0.0.1:0"]);
        let (status, _, stderr) = run_to_exit(&all, &[], Duration::from_secs(10));
        assert_eq!(status.code(), Some(2), "{args:?}: {stderr}");
        assert!(stderr.contains(message), "{args:?}: expected {message:?} in {stderr}");
    }
}

/// SIGHUP loads the files again: connections made after it get the new certificate, and a stream opened
/// before goes on.
#[tokio::test]
async fn sighup_reloads_the_certificate_without_dropping_streams() {
    let dir = TempDir::new("tls-reload");
    let read = |name: &str| std::fs::read(fixture(&format!("tls/{name}"))).expect("fixture");
    let cert = dir.write("cert.pem", &read("server.pem"));
    let key = dir.write("key.pem", &read("server.key"));
    let args = tls_args(&cert, &key);
    let server = TestServer::start(&args.iter().map(String::as_str).collect::<Vec<_>>());

    let before = connect(&server, &[b"h2"]).await;
    assert_eq!(peer_certificate(&before), pem_der(&fixture("tls/server.pem")));
    let conn = H2Conn::handshake(before, Windows::default()).await;
    let mut stream = conn.events(&events_path(&["reload"], ""), &[]).await;
    assert_eq!(stream.status, 200);

    // A reload that fails (the key is not the certificate's) keeps the current certificate.
    dir.write("cert.pem", &read("server2.pem"));
    server.signal("HUP");
    wait_for_log(&server, "TLS certificate not reloaded").await;
    assert_eq!(peer_certificate(&connect(&server, &[b"h2"]).await), pem_der(&fixture("tls/server.pem")));

    dir.write("key.pem", &read("server2.key"));
    server.signal("HUP");
    wait_for_log(&server, "TLS certificate reloaded").await;
    assert_eq!(peer_certificate(&connect(&server, &[b"h2"]).await), pem_der(&fixture("tls/server2.pem")));

    let id = conn.publish(&["reload"], "still here").await;
    assert_eq!(stream.next_event(WAIT).await.id(), id);
}

async fn wait_for_log(server: &TestServer, needle: &str) {
    let deadline = tokio::time::Instant::now() + WAIT;
    while !server.stderr().contains(needle) {
        assert!(tokio::time::Instant::now() < deadline, "no {needle:?} in the log:\n{}", server.stderr());
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}
