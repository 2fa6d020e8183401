// The keys in tests/fixtures/ are test-only keys, generated for these tests: they protect nothing.

//! Authentication (JWT): start-up checks, claims and patterns, token sources, public topics,
//! expiry of streams, publish permissions, keeping tokens out of logs.

mod support;

use std::net::SocketAddr;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use jsonwebtoken::{encode, Algorithm, EncodingKey, Header};
use serde_json::{json, Value};
use support::*;

const T: Duration = Duration::from_secs(5);
const SECRET: &str = "herald-test-secret-not-for-production";

// ---------------------------------------------------------------------------------------------
// Tokens
// ---------------------------------------------------------------------------------------------

fn fixture(name: &str) -> String {
    format!("{}/tests/fixtures/{name}", env!("CARGO_MANIFEST_DIR"))
}

fn read_fixture(name: &str) -> Vec<u8> {
    std::fs::read(fixture(name)).unwrap_or_else(|e| panic!("read fixture {name}: {e}"))
}

fn now() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).expect("clock after 1970").as_secs()
}

fn now_f64() -> f64 {
    SystemTime::now().duration_since(UNIX_EPOCH).expect("clock after 1970").as_secs_f64()
}

/// `{"herald": {"subscribe": [...], "publish": [...]}, "exp": now + 1 h}`.
fn claims(subscribe: &[&str], publish: &[&str]) -> Value {
    json!({ "herald": { "subscribe": subscribe, "publish": publish }, "exp": now() + 3600 })
}

/// [`claims`] with `exp` replaced (`None`: no `exp` at all).
fn claims_exp(subscribe: &[&str], publish: &[&str], exp: Option<u64>) -> Value {
    let mut c = claims(subscribe, publish);
    match exp {
        Some(exp) => c["exp"] = json!(exp),
        None => {
            c.as_object_mut().expect("object").remove("exp");
        }
    }
    c
}

fn sign(alg: Algorithm, key: &EncodingKey, claims: &Value) -> String {
    encode(&Header::new(alg), claims, key).unwrap_or_else(|e| panic!("encode {alg:?} token: {e}"))
}

/// HS256 with [`SECRET`].
fn hs(claims: &Value) -> String {
    hs_with(SECRET, claims)
}

fn hs_with(secret: &str, claims: &Value) -> String {
    sign(Algorithm::HS256, &EncodingKey::from_secret(secret.as_bytes()), claims)
}

/// RS256 with a PKCS#8 private key from the fixtures.
fn rs(key_file: &str, claims: &Value) -> String {
    let key = EncodingKey::from_rsa_pem(&read_fixture(key_file)).expect("RSA private key");
    sign(Algorithm::RS256, &key, claims)
}

/// ES256 with a PKCS#8 P-256 private key from the fixtures.
fn es(key_file: &str, claims: &Value) -> String {
    let key = EncodingKey::from_ec_pem(&read_fixture(key_file)).expect("EC private key");
    sign(Algorithm::ES256, &key, claims)
}

fn b64url(bytes: &[u8]) -> String {
    const A: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_";
    let mut out = String::new();
    for chunk in bytes.chunks(3) {
        let b = [chunk[0], chunk.get(1).copied().unwrap_or(0), chunk.get(2).copied().unwrap_or(0)];
        let n = (u32::from(b[0]) << 16) | (u32::from(b[1]) << 8) | u32::from(b[2]);
        for i in 0..=chunk.len() {
            out.push(A[((n >> (18 - 6 * i)) & 63) as usize] as char);
        }
    }
    out
}

/// An unsigned token (`"alg": "none"`, empty signature).
fn alg_none(claims: &Value) -> String {
    format!("{}.{}.", b64url(br#"{"alg":"none","typ":"JWT"}"#), b64url(claims.to_string().as_bytes()))
}

/// A validly signed token whose payload is swapped for `claims` (signature kept).
fn tampered(valid: &str, claims: &Value) -> String {
    let parts: Vec<&str> = valid.split('.').collect();
    assert_eq!(parts.len(), 3, "not a JWS: {valid}");
    format!("{}.{}.{}", parts[0], b64url(claims.to_string().as_bytes()), parts[2])
}

/// The part after the last `.`.
fn signature(token: &str) -> &str {
    token.rsplit('.').next().unwrap_or(token)
}

fn bearer(token: &str) -> String {
    format!("Bearer {token}")
}

fn cookie(token: &str) -> String {
    format!("a=1; herald_token={token}; b=2")
}

fn query(token: &str) -> String {
    format!("access_token={token}")
}

// ---------------------------------------------------------------------------------------------
// Servers and requests
// ---------------------------------------------------------------------------------------------

/// `herald --jwt-secret SECRET EXTRA...`.
fn start_hs(extra: &[&str]) -> TestServer {
    let mut args = vec!["--jwt-secret", SECRET];
    args.extend_from_slice(extra);
    TestServer::start(&args)
}

/// `GET /events` for `topics` (+ `extra_query`): `Ok(stream)` on 200, else `Err(response)`.
async fn events(
    addr: SocketAddr,
    topics: &[&str],
    extra_query: &str,
    headers: &[(&str, &str)],
) -> Result<SseClient, HttpResponse> {
    let c = SseClient::connect(addr, &events_path(topics, extra_query), headers).await;
    if c.status == 200 {
        Ok(c)
    } else {
        Err(c.into_response().await)
    }
}

/// Asserts `GET /events` answers 200; returns the stream.
async fn stream_ok(
    addr: SocketAddr,
    topics: &[&str],
    extra_query: &str,
    headers: &[(&str, &str)],
    what: &str,
) -> SseClient {
    match events(addr, topics, extra_query, headers).await {
        Ok(c) => c,
        Err(resp) => panic!("{what}: GET /events {topics:?} expected 200, got {} {}", resp.status, resp.text()),
    }
}

/// Asserts `GET /events` is refused; returns the error response.
async fn stream_refused(
    addr: SocketAddr,
    topics: &[&str],
    extra_query: &str,
    headers: &[(&str, &str)],
    what: &str,
) -> HttpResponse {
    match events(addr, topics, extra_query, headers).await {
        Ok(_) => panic!("{what}: GET /events {topics:?} expected a refusal, got 200 and a stream"),
        Err(resp) => resp,
    }
}

/// 401 `unauthorized` with `WWW-Authenticate: Bearer ...` (the header only checked when `www`).
fn assert_401(resp: &HttpResponse, www: bool, what: &str) {
    assert_eq!(resp.status, 401, "{what}: expected 401, got {} {}", resp.status, resp.text());
    assert_error(resp, 401, Some("unauthorized"));
    if www {
        let h = resp.header("www-authenticate").unwrap_or_else(|| panic!("{what}: 401 without WWW-Authenticate"));
        assert!(h.trim().to_ascii_lowercase().starts_with("bearer"), "{what}: WWW-Authenticate {h:?}");
    }
}

fn assert_403(resp: &HttpResponse, what: &str) {
    assert_eq!(resp.status, 403, "{what}: expected 403, got {} {}", resp.status, resp.text());
    assert_error(resp, 403, Some("forbidden"));
}

/// Asserts `GET /events` is refused with 401 (and `WWW-Authenticate`).
async fn events_401(addr: SocketAddr, topics: &[&str], extra_query: &str, headers: &[(&str, &str)], what: &str) {
    let resp = stream_refused(addr, topics, extra_query, headers, what).await;
    assert_401(&resp, true, what);
}

/// Asserts `GET /events` is refused with 403.
async fn events_403(addr: SocketAddr, topics: &[&str], extra_query: &str, headers: &[(&str, &str)], what: &str) {
    let resp = stream_refused(addr, topics, extra_query, headers, what).await;
    assert_403(&resp, what);
}

/// `POST /publish[?QUERY]` with a JSON body `{"topics": ..., "data": ...}` and extra headers.
async fn publish_with(
    addr: SocketAddr,
    headers: &[(&str, &str)],
    extra_query: &str,
    topics: &[&str],
    data: &str,
) -> HttpResponse {
    let body = json!({ "topics": topics, "data": data }).to_string();
    let path = if extra_query.is_empty() { "/publish".to_string() } else { format!("/publish?{extra_query}") };
    let mut all: Vec<(&str, &str)> = vec![("Content-Type", "application/json")];
    all.extend_from_slice(headers);
    http(addr, "POST", &path, &all, body.as_bytes()).await
}

/// Asserts 200 `{"id": ...}`; returns the id.
fn published_id(resp: &HttpResponse, what: &str) -> String {
    assert_eq!(resp.status, 200, "{what}: publish expected 200, got {} {}", resp.status, resp.text());
    resp.json()
        .get("id")
        .and_then(|v| v.as_str())
        .unwrap_or_else(|| panic!("{what}: publish response without string id: {}", resp.text()))
        .to_string()
}

/// Publishes with `Authorization: Bearer token`; asserts 200 and returns the id.
async fn publish_as(addr: SocketAddr, token: &str, topics: &[&str], data: &str) -> String {
    let auth = bearer(token);
    let resp = publish_with(addr, &[("Authorization", &auth)], "", topics, data).await;
    published_id(&resp, &format!("publish {topics:?} {data:?}"))
}

fn published_total(m: &std::collections::HashMap<String, f64>) -> f64 {
    m.get("herald_events_published_total").copied().unwrap_or(0.0)
}

/// Expects the next event to be `id` with `data`.
async fn expect_event(c: &mut SseClient, id: &str, data: &str, what: &str) {
    let e = c.next_event(T).await;
    assert_eq!((e.id(), e.data.as_str()), (id, data), "{what}: unexpected event {e:?}");
}

// ---------------------------------------------------------------------------------------------
// Start-up
// ---------------------------------------------------------------------------------------------

#[tokio::test]
async fn startup_line_says_auth_on_with_a_key_and_off_without() {
    let open = TestServer::start(&[]);
    let line = strip_ansi(open.startup_line());
    assert!(line.contains("auth=off"), "no key: start-up line must say auth=off: {line}");
    drop(open);

    let rsa = fixture("rsa_public.pem");
    let ec = fixture("ec_public.pem");
    for args in
        [vec!["--jwt-secret", SECRET], vec!["--jwt-public-key", rsa.as_str()], vec!["--jwt-public-key", ec.as_str()]]
    {
        let server = TestServer::start(&args);
        let line = strip_ansi(server.startup_line());
        assert!(line.contains("auth=on"), "{args:?}: start-up line must say auth=on: {line}");
        assert_eq!(get(server.addr(), "/healthz").await.status, 200, "{args:?}: /healthz");
    }
}

#[tokio::test]
async fn non_loopback_with_a_key_needs_no_allow_open() {
    let server = start_hs(&["--listen", "0.0.0.0:0"]);
    assert!(server.logged_addr().ip().is_unspecified(), "logged {}", server.logged_addr());
    assert!(strip_ansi(server.startup_line()).contains("auth=on"), "{}", server.startup_line());
    assert_eq!(get(server.addr(), "/healthz").await.status, 200);
    events_401(server.addr(), &["doc/1"], "", &[], "no token on 0.0.0.0").await;
}

#[tokio::test]
async fn env_vars_configure_auth() {
    let server =
        TestServer::start_with_env(&[], &[("HERALD_JWT_SECRET", SECRET), ("HERALD_PUBLIC_TOPIC", "news,status/*")]);
    let addr = server.addr();
    assert!(strip_ansi(server.startup_line()).contains("auth=on"), "{}", server.startup_line());
    stream_ok(addr, &["news"], "", &[], "HERALD_PUBLIC_TOPIC news").await;
    stream_ok(addr, &["status/db"], "", &[], "HERALD_PUBLIC_TOPIC status/*").await;
    events_401(addr, &["doc/1"], "", &[], "non-public topic without token").await;
    let auth = bearer(&hs(&claims(&["doc/*"], &[])));
    stream_ok(addr, &["doc/1"], "", &[("Authorization", &auth)], "HERALD_JWT_SECRET token").await;
    drop(server);

    let key = fixture("rsa_public.pem");
    let server = TestServer::start_with_env(&[], &[("HERALD_JWT_PUBLIC_KEY", &key)]);
    assert!(strip_ansi(server.startup_line()).contains("auth=on"), "{}", server.startup_line());
    let auth = bearer(&rs("rsa_private.pem", &claims(&["doc/*"], &[])));
    stream_ok(server.addr(), &["doc/1"], "", &[("Authorization", &auth)], "HERALD_JWT_PUBLIC_KEY RS256 token").await;
    events_401(server.addr(), &["doc/1"], "", &[], "HERALD_JWT_PUBLIC_KEY without token").await;
}

#[test]
fn bad_auth_configuration_is_refused_at_startup() {
    let rsa = fixture("rsa_public.pem");
    let not_pem = format!("{}/Cargo.toml", env!("CARGO_MANIFEST_DIR"));
    let missing = "/nonexistent/herald-test/missing_public.pem".to_string();
    // (case, args, any of these must appear in stderr, case-insensitively)
    let cases: Vec<(&str, Vec<&str>, Vec<&str>)> = vec![
        (
            "secret and public key",
            vec!["--jwt-secret", SECRET, "--jwt-public-key", rsa.as_str()],
            vec!["jwt-secret", "jwt-public-key"],
        ),
        ("public topic without key", vec!["--public-topic", "news"], vec!["public-topic"]),
        ("missing key file", vec!["--jwt-public-key", missing.as_str()], vec!["jwt-public-key", missing.as_str()]),
        ("key file not PEM", vec!["--jwt-public-key", not_pem.as_str()], vec!["jwt-public-key", not_pem.as_str()]),
        ("empty secret", vec!["--jwt-secret", ""], vec!["jwt-secret"]),
        ("pattern a*b", vec!["--jwt-secret", SECRET, "--public-topic", "a*b"], vec!["public-topic", "a*b"]),
        ("pattern with space", vec!["--jwt-secret", SECRET, "--public-topic", "a b"], vec!["public-topic", "a b"]),
        (
            "bad pattern in a list",
            vec!["--jwt-secret", SECRET, "--public-topic", "news,x*y"],
            vec!["public-topic", "x*y"],
        ),
    ];
    std::thread::scope(|s| {
        let handles: Vec<_> = cases
            .iter()
            .map(|(name, args, needles)| {
                s.spawn(move || {
                    let mut all = args.clone();
                    all.extend_from_slice(&["--listen", "127.0.0.1:0"]);
                    let (status, stdout, stderr) = run_to_exit(&all, &[], Duration::from_secs(5));
                    let mut problems = Vec::new();
                    if status.code() != Some(2) {
                        problems.push(format!("exit status {status:?}, expected code 2"));
                    }
                    let lower = stderr.to_ascii_lowercase();
                    if !needles.iter().any(|n| lower.contains(&n.to_ascii_lowercase())) {
                        problems.push(format!("stderr names none of {needles:?}"));
                    }
                    if lower.contains("panicked") {
                        problems.push("it panicked".to_string());
                    }
                    if problems.is_empty() {
                        None
                    } else {
                        Some(format!("{name} {args:?}: {}\nstdout:\n{stdout}\nstderr:\n{stderr}", problems.join("; ")))
                    }
                })
            })
            .collect();
        let failures: Vec<String> = handles.into_iter().filter_map(|h| h.join().expect("case thread")).collect();
        assert!(failures.is_empty(), "{} case(s) not refused properly:\n{}", failures.len(), failures.join("\n\n"));
    });
}

/// A private key is not a public key: giving one is a mistake (and a key that has no business on
/// the server), so it is refused like any other file that is not a PEM public key.
#[test]
fn private_key_pem_as_public_key_is_refused() {
    let mut failures = Vec::new();
    for name in ["ec_private.pem", "rsa_private.pem"] {
        let path = fixture(name);
        let (status, stdout, stderr) =
            run_to_exit(&["--jwt-public-key", &path, "--listen", "127.0.0.1:0"], &[], Duration::from_secs(3));
        if status.code() != Some(2) || !stderr.contains("jwt-public-key") {
            failures.push(format!("{name}: exit {status:?}\nstdout:\n{stdout}\nstderr:\n{stderr}"));
        }
    }
    assert!(failures.is_empty(), "private key files must be refused with exit code 2:\n{}", failures.join("\n\n"));
}

// ---------------------------------------------------------------------------------------------
// GET /events
// ---------------------------------------------------------------------------------------------

#[tokio::test]
async fn health_metrics_and_page_need_no_token() {
    let server = start_hs(&[]);
    for path in ["/healthz", "/readyz", "/metrics", "/"] {
        let resp = get(server.addr(), path).await;
        assert_eq!(resp.status, 200, "GET {path} without token: {} {}", resp.status, resp.text());
    }
}

#[tokio::test]
async fn events_without_token_is_401_with_www_authenticate() {
    let server = start_hs(&[]);
    events_401(server.addr(), &["doc/1"], "", &[], "no token").await;
    events_401(server.addr(), &["doc/1", "user/7"], "", &[], "no token, two topics").await;
}

#[tokio::test]
async fn invalid_tokens_are_401() {
    let server = start_hs(&[]);
    let addr = server.addr();
    let ok = claims(&["*"], &["*"]);
    let rsa_pem = String::from_utf8(read_fixture("rsa_public.pem")).expect("utf8");
    let cases: Vec<(&str, String)> = vec![
        ("garbage", "garbage".to_string()),
        ("three garbage segments", "abc.def.ghi".to_string()),
        ("wrong secret", hs_with("another-secret", &ok)),
        ("alg none", alg_none(&ok)),
        ("payload swapped under a valid signature", tampered(&hs(&claims(&["x"], &[])), &ok)),
        ("truncated signature", {
            let t = hs(&ok);
            t[..t.len() - 4].to_string()
        }),
        ("RS256 token on an HS256 server", rs("rsa_private.pem", &ok)),
        ("HS256 with the public key as secret", hs_with(&rsa_pem, &ok)),
        ("expired", hs(&claims_exp(&["*"], &["*"], Some(now() - 2)))),
        ("nbf in the future", {
            let mut c = ok.clone();
            c["nbf"] = json!(now() + 120);
            hs(&c)
        }),
    ];
    for (name, token) in &cases {
        let auth = bearer(token);
        events_401(addr, &["doc/1"], "", &[("Authorization", &auth)], name).await;
    }
}

#[tokio::test]
async fn exp_is_optional_and_enforced_without_leeway() {
    let server = start_hs(&[]);
    let addr = server.addr();
    let no_exp = bearer(&hs(&claims_exp(&["doc/*"], &[], None)));
    stream_ok(addr, &["doc/1"], "", &[("Authorization", &no_exp)], "token without exp").await;
    let future = bearer(&hs(&claims_exp(&["doc/*"], &[], Some(now() + 60))));
    stream_ok(addr, &["doc/1"], "", &[("Authorization", &future)], "exp in a minute").await;
    for ago in [1, 2] {
        let expired = bearer(&hs(&claims_exp(&["doc/*"], &[], Some(now() - ago))));
        events_401(addr, &["doc/1"], "", &[("Authorization", &expired)], &format!("expired {ago} s ago")).await;
    }
}

#[tokio::test]
async fn nbf_is_enforced_and_aud_iss_are_ignored() {
    let server = start_hs(&[]);
    let addr = server.addr();
    let mut c = claims(&["doc/*"], &[]);
    c["nbf"] = json!(now() + 60);
    let auth = bearer(&hs(&c));
    events_401(addr, &["doc/1"], "", &[("Authorization", &auth)], "nbf in a minute").await;
    c["nbf"] = json!(now() - 10);
    let auth = bearer(&hs(&c));
    stream_ok(addr, &["doc/1"], "", &[("Authorization", &auth)], "nbf 10 s ago").await;
    let mut c = claims(&["doc/*"], &[]);
    c["aud"] = json!("some-audience");
    c["iss"] = json!("some-issuer");
    c["sub"] = json!("user-7");
    let auth = bearer(&hs(&c));
    stream_ok(addr, &["doc/1"], "", &[("Authorization", &auth)], "aud/iss/sub present").await;
}

/// Issue 7: RFC 7519 makes `exp` and `nbf` NumericDates, which may have a fraction; such tokens were
/// refused as malformed. They are judged by their value now, still with no leeway.
#[tokio::test]
async fn fractional_exp_and_nbf_are_dates() {
    let server = start_hs(&[]);
    let addr = server.addr();
    let with = |claim: &str, value: Value| {
        let mut c = claims(&["doc/*"], &["doc/*"]);
        c[claim] = value;
        bearer(&hs(&c))
    };
    let ok = [
        ("exp in a minute and a half", with("exp", json!(now_f64() + 90.5))),
        ("nbf 10.25 s ago", with("nbf", json!(now_f64() - 10.25))),
    ];
    for (what, auth) in &ok {
        stream_ok(addr, &["doc/1"], "", &[("Authorization", auth)], what).await;
        published_id(&publish_with(addr, &[("Authorization", auth)], "", &["doc/1"], "x").await, what);
    }
    let refused = [
        ("exp 1.5 s ago", with("exp", json!(now_f64() - 1.5))),
        ("nbf in a minute and a half", with("nbf", json!(now_f64() + 90.5))),
        ("negative exp", with("exp", json!(-1.5))),
        ("exp as a string", with("exp", json!("4102444800"))),
        ("nbf as a string", with("nbf", json!("0"))),
    ];
    for (what, auth) in &refused {
        events_401(addr, &["doc/1"], "", &[("Authorization", auth)], what).await;
        assert_401(&publish_with(addr, &[("Authorization", auth)], "", &["doc/1"], "x").await, true, what);
    }
}

#[tokio::test]
async fn subscribe_patterns_exact_prefix_and_star() {
    let server = start_hs(&[]);
    let addr = server.addr();
    let t = bearer(&hs(&claims(&["doc/*", "user/7"], &[])));
    let h = [("Authorization", t.as_str())];
    for topics in [&["doc/42"][..], &["doc/"], &["doc/a/b"], &["user/7"], &["doc/1", "user/7", "doc/2"]] {
        stream_ok(addr, topics, "", &h, "[doc/*, user/7]").await;
    }
    for topics in
        [&["doc"][..], &["user/70"], &["user/"], &["user"], &["other"], &["doc/1", "other"], &["user/7", "docs/1"]]
    {
        events_403(addr, topics, "", &h, "[doc/*, user/7]").await;
    }

    let t = bearer(&hs(&claims(&["do*"], &[])));
    let h = [("Authorization", t.as_str())];
    for topics in [&["doc/1"][..], &["do"], &["dox"]] {
        stream_ok(addr, topics, "", &h, "[do*]").await;
    }
    events_403(addr, &["d"], "", &h, "[do*]").await;
    events_403(addr, &["xdoc/1"], "", &h, "[do*]").await;

    let t = bearer(&hs(&claims(&["*"], &[])));
    let h = [("Authorization", t.as_str())];
    stream_ok(addr, &["anything", "https://example.com/books/1", "doc/1"], "", &h, "[*]").await;

    let t = bearer(&hs(&claims(&[], &["*"])));
    events_403(addr, &["doc/1"], "", &[("Authorization", t.as_str())], "publish-only token").await;
}

#[tokio::test]
async fn token_from_header_cookie_or_query() {
    let server = start_hs(&[]);
    let addr = server.addr();
    let tok = hs(&claims(&["doc/*"], &[]));
    let publisher = hs(&claims(&[], &["doc/*"]));
    let (b, c) = (bearer(&tok), cookie(&tok));
    let mut via_header = stream_ok(addr, &["doc/1"], "", &[("Authorization", &b)], "header").await;
    let mut via_cookie = stream_ok(addr, &["doc/1"], "", &[("Cookie", &c)], "cookie among others").await;
    let only_cookie = format!("herald_token={tok}");
    let mut via_cookie_alone = stream_ok(addr, &["doc/1"], "", &[("Cookie", &only_cookie)], "cookie alone").await;
    let mut via_query = stream_ok(addr, &["doc/1"], &query(&tok), &[], "access_token").await;
    let id = publish_as(addr, &publisher, &["doc/1"], "hi").await;
    for (name, s) in [
        ("header", &mut via_header),
        ("cookie", &mut via_cookie),
        ("cookie alone", &mut via_cookie_alone),
        ("query", &mut via_query),
    ] {
        expect_event(s, &id, "hi", name).await;
    }
}

#[tokio::test]
async fn first_present_token_source_is_judged() {
    let server = start_hs(&[]);
    let addr = server.addr();
    let good = hs(&claims(&["doc/*"], &["doc/*"]));
    let bad = hs_with("wrong-secret", &claims(&["doc/*"], &["doc/*"]));
    let narrow = hs(&claims(&["user/7"], &["user/7"]));
    let (good_b, bad_b, narrow_b) = (bearer(&good), bearer(&bad), bearer(&narrow));
    let (good_c, bad_c) = (cookie(&good), cookie(&bad));
    let (good_q, bad_q) = (query(&good), query(&bad));

    events_401(addr, &["doc/1"], "", &[("Authorization", &bad_b), ("Cookie", &good_c)], "bad header, good cookie")
        .await;
    events_401(addr, &["doc/1"], &good_q, &[("Authorization", &bad_b)], "bad header, good query").await;
    events_401(addr, &["doc/1"], &good_q, &[("Cookie", &bad_c)], "bad cookie, good query").await;
    events_403(
        addr,
        &["doc/1"],
        &good_q,
        &[("Authorization", &narrow_b), ("Cookie", &good_c)],
        "narrow header, good cookie",
    )
    .await;
    stream_ok(addr, &["doc/1"], &bad_q, &[("Authorization", &good_b), ("Cookie", &bad_c)], "good header, bad rest")
        .await;
    stream_ok(addr, &["doc/1"], &bad_q, &[("Cookie", &good_c)], "good cookie, bad query").await;

    let resp = publish_with(addr, &[("Authorization", &bad_b), ("Cookie", &good_c)], "", &["doc/1"], "x").await;
    assert_401(&resp, false, "publish: bad header, good cookie");
    let resp = publish_with(addr, &[("Cookie", &bad_c)], &good_q, &["doc/1"], "x").await;
    assert_401(&resp, false, "publish: bad cookie, good query");
    let resp = publish_with(addr, &[("Authorization", &good_b), ("Cookie", &bad_c)], &bad_q, &["doc/1"], "x").await;
    published_id(&resp, "publish: good header, bad rest");
}

#[tokio::test]
async fn non_bearer_authorization_is_not_a_token_source() {
    let server = start_hs(&[]);
    let addr = server.addr();
    let good = hs(&claims(&["doc/*"], &["doc/*"]));
    let basic = ("Authorization", "Basic dXNlcjpwYXNzd29yZA==");
    let c = cookie(&good);
    stream_ok(addr, &["doc/1"], "", &[basic, ("Cookie", &c)], "Basic header, good cookie").await;
    stream_ok(addr, &["doc/1"], &query(&good), &[basic], "Basic header, good query").await;
    events_401(addr, &["doc/1"], "", &[basic], "Basic header alone").await;
    let resp = publish_with(addr, &[basic, ("Cookie", &c), ("Origin", SAME_ORIGIN)], "", &["doc/1"], "x").await;
    published_id(&resp, "publish: Basic header, good cookie");
}

#[tokio::test]
async fn public_topics_need_no_token() {
    let server = start_hs(&["--public-topic", "news,status/*", "--public-topic", "open/*"]);
    let addr = server.addr();
    let publisher = hs(&claims(&[], &["*"]));
    let mut public = stream_ok(addr, &["news", "status/db", "open/1"], "", &[], "public topics, no token").await;
    let garbage = bearer("garbage");
    let mut public_bad =
        stream_ok(addr, &["news"], "", &[("Authorization", &garbage)], "public topic, invalid token").await;
    let expired = bearer(&hs(&claims_exp(&["*"], &[], Some(now() - 5))));
    stream_ok(addr, &["status/x", "open/"], "", &[("Authorization", &expired)], "public topics, expired token").await;

    events_401(addr, &["news", "doc/1"], "", &[], "public + private, no token").await;
    events_401(addr, &["status"], "", &[], "`status` is not covered by `status/*`").await;
    events_401(addr, &["news", "doc/1"], "", &[("Authorization", &garbage)], "public + private, invalid token").await;
    let user = bearer(&hs(&claims(&["user/7"], &[])));
    events_403(addr, &["news", "doc/1"], "", &[("Authorization", &user)], "public + private not in the token").await;
    let docs = bearer(&hs(&claims(&["doc/*"], &[])));
    let mut mixed =
        stream_ok(addr, &["news", "doc/1"], "", &[("Authorization", &docs)], "public + private in the token").await;

    let id = publish_as(addr, &publisher, &["news"], "n").await;
    expect_event(&mut public, &id, "n", "public stream").await;
    expect_event(&mut public_bad, &id, "n", "public stream with invalid token").await;
    expect_event(&mut mixed, &id, "n", "mixed stream").await;
    drop(server);

    let server = start_hs(&["--public-topic", "*"]);
    stream_ok(server.addr(), &["anything", "doc/1"], "", &[], "--public-topic *").await;
}

#[tokio::test]
async fn subscribe_and_publish_with_hs256_token() {
    let server = start_hs(&[]);
    let addr = server.addr();
    let sub = bearer(&hs(&claims(&["doc/*", "user/7"], &[])));
    let mut c = stream_ok(addr, &["doc/42", "user/7"], "", &[("Authorization", &sub)], "subscriber").await;
    assert_sse_head(&c);
    let publisher = hs(&claims(&[], &["doc/*", "user/7"]));
    let id1 = publish_as(addr, &publisher, &["doc/42"], "one").await;
    let id2 = publish_as(addr, &publisher, &["doc/42", "user/7"], "two").await;
    let id3 = publish_as(addr, &publisher, &["user/7"], "three").await;
    expect_event(&mut c, &id1, "one", "first").await;
    expect_event(&mut c, &id2, "two", "second").await;
    expect_event(&mut c, &id3, "three", "third").await;
}

#[tokio::test]
async fn stream_ends_when_token_expires() {
    let server = start_hs(&[]);
    let addr = server.addr();
    let exp = now() + 3;
    let token = hs(&claims_exp(&["doc/*"], &[], Some(exp)));
    let auth = bearer(&token);
    let start = Instant::now();
    let valid_for = Duration::from_secs_f64((exp as f64 - now_f64()).max(0.0));
    let mut c = stream_ok(addr, &["doc/1"], "", &[("Authorization", &auth)], "token expiring in ~3 s").await;
    let publisher = hs(&claims(&[], &["*"]));
    let id = publish_as(addr, &publisher, &["doc/1"], "before expiry").await;
    expect_event(&mut c, &id, "before expiry", "event before expiry").await;

    let items = c.read_until_end(Duration::from_secs(8)).await;
    let ended_after = start.elapsed();
    match items.last() {
        Some(SseItem::End { clean: true, .. }) => {}
        other => {
            panic!("stream must end cleanly at token expiry ({valid_for:?}); after {ended_after:?} last item {other:?}")
        }
    }
    assert!(
        ended_after + Duration::from_secs(1) >= valid_for,
        "stream ended after {ended_after:?}, but the token was valid for {valid_for:?}"
    );
    assert!(ended_after <= Duration::from_secs(8), "stream ended only after {ended_after:?}");

    let deadline = Instant::now() + Duration::from_secs(3);
    while now() <= exp && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    events_401(addr, &["doc/1"], "", &[("Authorization", &auth)], "reconnect with the expired token").await;
}

#[tokio::test]
async fn public_only_stream_does_not_end_at_token_expiry() {
    let server = start_hs(&["--public-topic", "news"]);
    let addr = server.addr();
    let exp = now() + 2;
    let auth = bearer(&hs(&claims_exp(&["news"], &[], Some(exp))));
    let mut c = stream_ok(addr, &["news"], "", &[("Authorization", &auth)], "public topic with expiring token").await;
    // Still open about a second after the token expired.
    let wait = Duration::from_secs_f64((exp as f64 + 1.2 - now_f64()).max(0.0));
    c.assert_no_event(wait).await;
    let publisher = hs(&claims(&[], &["news"]));
    let id = publish_as(addr, &publisher, &["news"], "after expiry").await;
    expect_event(&mut c, &id, "after expiry", "public stream after token expiry").await;
}

// ---------------------------------------------------------------------------------------------
// POST /publish
// ---------------------------------------------------------------------------------------------

#[tokio::test]
async fn publish_needs_a_valid_token_even_for_public_topics() {
    let server = start_hs(&["--public-topic", "news"]);
    let addr = server.addr();
    let resp = publish_with(addr, &[], "", &["news"], "x").await;
    assert_401(&resp, false, "publish to a public topic without token");
    let resp = publish_with(addr, &[], "", &["doc/1"], "x").await;
    assert_401(&resp, false, "publish without token");
    let all = claims(&["*"], &["*"]);
    for (name, token) in [
        ("garbage", "garbage".to_string()),
        ("wrong secret", hs_with("wrong-secret", &all)),
        ("alg none", alg_none(&all)),
        ("expired", hs(&claims_exp(&["*"], &["*"], Some(now() - 2)))),
    ] {
        let auth = bearer(&token);
        let resp = publish_with(addr, &[("Authorization", &auth)], "", &["news"], "x").await;
        assert_401(&resp, false, &format!("publish with {name} token"));
    }
    let m = metrics(addr).await;
    assert_eq!(published_total(&m), 0.0, "refused publishes must not count as published");
}

#[tokio::test]
async fn publish_outside_claims_is_403_and_publishes_nothing() {
    let server = start_hs(&[]);
    let addr = server.addr();
    let sub = bearer(&hs(&claims(&["*"], &[])));
    let mut c = stream_ok(addr, &["doc/1", "other", "user/7"], "", &[("Authorization", &sub)], "watcher").await;
    let before = published_total(&metrics(addr).await);

    let publisher = bearer(&hs(&claims(&["*"], &["doc/*", "user/7"])));
    let h = [("Authorization", publisher.as_str())];
    for topics in [&["other"][..], &["doc/1", "other"], &["doc"], &["user/70"]] {
        let resp = publish_with(addr, &h, "", topics, "forbidden").await;
        assert_403(&resp, &format!("publish {topics:?} with publish [doc/*, user/7]"));
    }
    let subscribe_only = bearer(&hs(&claims(&["*"], &[])));
    let resp = publish_with(addr, &[("Authorization", &subscribe_only)], "", &["doc/1"], "forbidden").await;
    assert_403(&resp, "publish with a subscribe-only token");
    let no_herald = bearer(&hs(&json!({ "exp": now() + 3600 })));
    let resp = publish_with(addr, &[("Authorization", &no_herald)], "", &["doc/1"], "forbidden").await;
    assert_403(&resp, "publish with a token without herald claims");
    assert_eq!(
        published_total(&metrics(addr).await),
        before,
        "refused publishes changed herald_events_published_total"
    );

    let resp = publish_with(addr, &h, "", &["doc/1", "user/7"], "allowed").await;
    let id = published_id(&resp, "publish [doc/1, user/7] with publish [doc/*, user/7]");
    // The first event the watcher sees is the allowed one: nothing refused was delivered.
    expect_event(&mut c, &id, "allowed", "watcher").await;
    c.assert_no_event(Duration::from_millis(300)).await;
    assert_eq!(published_total(&metrics(addr).await), before + 1.0, "herald_events_published_total after one publish");
}

#[tokio::test]
async fn publish_token_from_cookie_or_query() {
    let server = start_hs(&[]);
    let addr = server.addr();
    let sub = bearer(&hs(&claims(&["doc/*"], &[])));
    let mut c = stream_ok(addr, &["doc/1"], "", &[("Authorization", &sub)], "subscriber").await;
    let publisher = hs(&claims(&[], &["doc/*"]));
    let ck = cookie(&publisher);
    // The cookie publishes from a page of the same origin (see cookie_publish_must_come_from_a_known_origin).
    let resp = publish_with(addr, &[("Cookie", &ck), ("Origin", SAME_ORIGIN)], "", &["doc/1"], "via cookie").await;
    let id1 = published_id(&resp, "publish with cookie");
    let resp = publish_with(addr, &[], &query(&publisher), &["doc/1"], "via query").await;
    let id2 = published_id(&resp, "publish with access_token");
    expect_event(&mut c, &id1, "via cookie", "cookie publish").await;
    expect_event(&mut c, &id2, "via query", "query publish").await;
    let narrow = hs(&claims(&[], &["user/7"]));
    let resp = publish_with(addr, &[], &query(&narrow), &["doc/1"], "x").await;
    assert_403(&resp, "publish with access_token not covering the topic");
}

/// The origin of a page served by the test server: the support helpers send `Host: 127.0.0.1`.
const SAME_ORIGIN: &str = "http://127.0.0.1";

/// 403 `cross_site_request`.
fn assert_cross_site(resp: &HttpResponse, what: &str) {
    assert_eq!(resp.status, 403, "{what}: expected 403, got {} {}", resp.status, resp.text());
    assert_error(resp, 403, Some("cross_site_request"));
}

/// `POST /publish` with a form body (what a cross-site HTML form sends, without a preflight).
async fn publish_form(addr: SocketAddr, headers: &[(&str, &str)], topic: &str, data: &str) -> HttpResponse {
    let mut all: Vec<(&str, &str)> = vec![("Content-Type", "application/x-www-form-urlencoded")];
    all.extend_from_slice(headers);
    http(addr, "POST", "/publish", &all, format!("topic={topic}&data={data}").as_bytes()).await
}

/// Issue 7, defect 5: a browser sends the `herald_token` cookie with a cross-site form POST (no preflight),
/// and such a POST with `Origin: https://evil.example` was published. A publish authenticated by the cookie
/// must now come from the server's own origin or a named `--cors-origin`: `Origin` says so, else
/// `Sec-Fetch-Site`, else the cookie is not enough. Tokens from the header or the query are not affected.
#[tokio::test]
async fn cookie_publish_must_come_from_a_known_origin() {
    let server = start_hs(&["--cors-origin", "https://app.example"]);
    let addr = server.addr();
    let sub = bearer(&hs(&claims(&["doc/*"], &[])));
    let mut c = stream_ok(addr, &["doc/1"], "", &[("Authorization", &sub)], "subscriber").await;
    let publisher = hs(&claims(&[], &["doc/*"]));
    let ck = cookie(&publisher);
    let refused: &[(&str, &[(&str, &str)])] = &[
        ("Origin of another site", &[("Origin", "https://evil.example")]),
        ("Origin of another port", &[("Origin", "http://127.0.0.1:1")]),
        ("Origin of a sibling host", &[("Origin", "http://127.0.0.1.evil.example")]),
        ("Origin: null (sandboxed page, data: URL)", &[("Origin", "null")]),
        ("Origin not a URL", &[("Origin", "127.0.0.1")]),
        (
            "other site, with Sec-Fetch-Site lying",
            &[("Origin", "https://evil.example"), ("Sec-Fetch-Site", "same-origin")],
        ),
        ("Sec-Fetch-Site: cross-site", &[("Sec-Fetch-Site", "cross-site")]),
        ("Sec-Fetch-Site: same-site", &[("Sec-Fetch-Site", "same-site")]),
        ("neither Origin nor Sec-Fetch-Site", &[]),
    ];
    for (what, headers) in refused {
        let mut all = vec![("Cookie", ck.as_str())];
        all.extend_from_slice(headers);
        let resp = publish_form(addr, &all, "doc/1", "forged").await;
        assert_cross_site(&resp, &format!("form with the cookie, {what}"));
        let resp = publish_with(addr, &all, "", &["doc/1"], "forged").await;
        assert_cross_site(&resp, &format!("JSON with the cookie, {what}"));
    }
    assert_eq!(published_total(&metrics(addr).await), 0.0, "a refused cookie publish was published");
    let allowed: &[(&str, &[(&str, &str)])] = &[
        ("same origin", &[("Origin", SAME_ORIGIN)]),
        ("same host and port, https (behind a TLS proxy)", &[("Origin", "https://127.0.0.1")]),
        ("a --cors-origin", &[("Origin", "https://app.example")]),
        ("a --cors-origin, in capitals", &[("Origin", "https://APP.example")]),
        ("Sec-Fetch-Site: same-origin", &[("Sec-Fetch-Site", "same-origin")]),
        ("Sec-Fetch-Site: none (typed by the user)", &[("Sec-Fetch-Site", "none")]),
    ];
    for (what, headers) in allowed {
        let mut all = vec![("Cookie", ck.as_str())];
        all.extend_from_slice(headers);
        let id = published_id(&publish_form(addr, &all, "doc/1", "ok").await, &format!("cookie, {what}"));
        expect_event(&mut c, &id, "ok", what).await;
    }
    // A token the page's script had to send itself proves the page may publish, wherever it is.
    let evil = ("Origin", "https://evil.example");
    let auth = bearer(&publisher);
    let id = published_id(&publish_with(addr, &[("Authorization", &auth), evil], "", &["doc/1"], "h").await, "bearer");
    expect_event(&mut c, &id, "h", "bearer from another origin").await;
    let id = published_id(&publish_with(addr, &[evil], &query(&publisher), &["doc/1"], "q").await, "query");
    expect_event(&mut c, &id, "q", "access_token from another origin").await;
    c.assert_no_event(Duration::from_millis(200)).await;
}

/// `--cors-origin '*'` lets any page read streams, but does not let any page publish with the cookie.
#[tokio::test]
async fn a_cors_star_does_not_let_the_cookie_publish_cross_site() {
    let server = start_hs(&["--cors-origin", "*"]);
    let addr = server.addr();
    let ck = cookie(&hs(&claims(&[], &["doc/*"])));
    let resp = publish_form(addr, &[("Cookie", &ck), ("Origin", "https://evil.example")], "doc/1", "forged").await;
    assert_cross_site(&resp, "cookie from another site with --cors-origin *");
    let resp = publish_form(addr, &[("Cookie", &ck), ("Origin", SAME_ORIGIN)], "doc/1", "ok").await;
    published_id(&resp, "cookie from the same origin with --cors-origin *");
}

// ---------------------------------------------------------------------------------------------
// Public keys
// ---------------------------------------------------------------------------------------------

/// A server with `--jwt-public-key KEY` accepts `good` tokens and refuses every `bad` one with 401.
async fn check_public_key_server(key: &str, good: fn(&Value) -> String, bad: Vec<(&str, String)>) {
    let server = TestServer::start(&["--jwt-public-key", &fixture(key)]);
    let addr = server.addr();
    assert!(strip_ansi(server.startup_line()).contains("auth=on"), "{}", server.startup_line());
    let sub = bearer(&good(&claims(&["doc/*"], &[])));
    let mut c = stream_ok(addr, &["doc/1"], "", &[("Authorization", &sub)], &format!("{key}: valid token")).await;
    let publisher = good(&claims(&[], &["doc/*"]));
    let id = publish_as(addr, &publisher, &["doc/1"], "signed").await;
    expect_event(&mut c, &id, "signed", key).await;
    for (name, token) in bad {
        let auth = bearer(&token);
        let what = format!("{key}: {name}");
        events_401(addr, &["doc/1"], "", &[("Authorization", &auth)], &what).await;
        let resp = publish_with(addr, &[("Authorization", &auth)], "", &["doc/1"], "x").await;
        assert_401(&resp, false, &format!("publish, {what}"));
    }
}

#[tokio::test]
async fn rs256_public_key() {
    let all = claims(&["*"], &["*"]);
    let pem = String::from_utf8(read_fixture("rsa_public.pem")).expect("utf8");
    let bad = vec![
        ("RS256 signed by another key", rs("rsa2_private.pem", &all)),
        ("HS256 with the public key as secret", hs_with(&pem, &all)),
        ("HS256", hs(&all)),
        ("ES256", es("ec_private.pem", &all)),
        ("alg none", alg_none(&all)),
        ("expired", rs("rsa_private.pem", &claims_exp(&["*"], &["*"], Some(now() - 2)))),
    ];
    check_public_key_server("rsa_public.pem", |c| rs("rsa_private.pem", c), bad).await;
}

#[tokio::test]
async fn es256_public_key() {
    let all = claims(&["*"], &["*"]);
    let pem = String::from_utf8(read_fixture("ec_public.pem")).expect("utf8");
    let bad = vec![
        ("ES256 signed by another key", es("ec2_private.pem", &all)),
        ("RS256 signed by an RSA key", rs("rsa2_private.pem", &all)),
        ("RS256 signed by the other RSA key", rs("rsa_private.pem", &all)),
        ("HS256 with the public key as secret", hs_with(&pem, &all)),
        ("alg none", alg_none(&all)),
    ];
    check_public_key_server("ec_public.pem", |c| es("ec_private.pem", c), bad).await;
}

// ---------------------------------------------------------------------------------------------
// Logs
// ---------------------------------------------------------------------------------------------

#[tokio::test]
async fn tokens_never_appear_in_logs() {
    let mut server =
        TestServer::start_with_env(&["--jwt-secret", SECRET, "--shutdown-grace", "2"], &[("RUST_LOG", "debug")]);
    let addr = server.addr();
    let valid_sub = hs(&claims(&["doc/*"], &[]));
    let narrow_sub = hs(&claims(&["user/7"], &[]));
    let valid_pub = hs(&claims(&[], &["doc/*"]));
    let narrow_pub = hs(&claims(&[], &["user/7"]));
    let expired = hs(&claims_exp(&["*"], &["*"], Some(now() - 5)));
    let wrong_key = hs_with("wrong-secret-for-logs", &claims(&["*"], &["*"]));
    let garbage = "garbageheader.garbagepayload.Zm9vYmFyYmF6cXV4c2VjcmV0c2ln".to_string();
    let tokens = [&valid_sub, &narrow_sub, &valid_pub, &narrow_pub, &expired, &wrong_key, &garbage];

    let mut streams = Vec::new();
    for tok in [&valid_sub, &narrow_sub, &expired, &wrong_key, &garbage] {
        let (b, c, q) = (bearer(tok), cookie(tok), query(tok));
        for (extra, headers) in
            [("", vec![("Authorization", b.as_str())]), ("", vec![("Cookie", c.as_str())]), (q.as_str(), vec![])]
        {
            if let Ok(s) = events(addr, &["doc/1"], extra, &headers).await {
                streams.push(s);
            }
        }
    }
    assert_eq!(streams.len(), 3, "only the valid subscribe token (header, cookie, query) opens a stream");
    let mut delivered = 0;
    for tok in [&valid_pub, &narrow_pub, &expired, &wrong_key, &garbage] {
        let (b, c, q) = (bearer(tok), cookie(tok), query(tok));
        let cookie_headers = vec![("Cookie", c.as_str()), ("Origin", SAME_ORIGIN)];
        for (extra, headers) in [("", vec![("Authorization", b.as_str())]), ("", cookie_headers), (q.as_str(), vec![])]
        {
            if publish_with(addr, &headers, extra, &["doc/1"], "logged?").await.status == 200 {
                delivered += 1;
            }
        }
    }
    assert_eq!(delivered, 3, "only the valid publish token (header, cookie, query) publishes");
    for s in &mut streams {
        s.next_events(3, T).await;
    }
    drop(streams);
    server.sigterm();
    let status = server.wait_exit(Duration::from_secs(10));
    assert!(status.success(), "exit after SIGTERM: {status:?}");

    let log = server.stderr();
    assert!(log.contains("herald listening"), "no log captured:\n{log}");
    for t in tokens {
        assert!(!log.contains(t.as_str()), "a token appears in the log: {t}\n{log}");
        let sig = signature(t);
        assert!(!log.contains(sig), "a token's signature appears in the log: {sig}\n{log}");
    }
}

#[tokio::test]
async fn refusals_are_counted_in_metrics() {
    let server = start_hs(&[]);
    let addr = server.addr();
    assert_eq!(http(addr, "GET", &events_path(&["doc/1"], ""), &[], b"").await.status, 401);
    let narrow = bearer(&hs(&claims(&["user/*"], &[])));
    let refused = http(addr, "GET", &events_path(&["doc/1"], ""), &[("Authorization", &narrow)], b"").await;
    assert_eq!(refused.status, 403);
    let body = br#"{"topic":"doc/1","data":"x"}"#;
    let publish = http(addr, "POST", "/publish", &[("Content-Type", "application/json")], body).await;
    assert_eq!(publish.status, 401);
    let m = metrics(addr).await;
    assert_eq!((m["herald_unauthorized_total"], m["herald_forbidden_total"]), (2.0, 1.0));
}

/// The same tests against Redis.
mod on_redis {
    super::support::on_redis!(
        subscribe_and_publish_with_hs256_token,
        publish_outside_claims_is_403_and_publishes_nothing,
        stream_ends_when_token_expires,
    );
}
