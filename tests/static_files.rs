//! Static files: the built-in demo page and `herald.js`, `--static-dir`, content types, caching
//! (`ETag`, `Last-Modified`, 304), `HEAD`, 405, path traversal, and start-up validation of the folder.

mod support;

use std::path::{Path, PathBuf};
use std::time::Duration;

use support::*;

/// A folder of its own under the system's temporary directory, removed on drop.
struct TempDir(PathBuf);

impl TempDir {
    fn new(name: &str) -> TempDir {
        let nanos = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_nanos();
        let dir = std::env::temp_dir().join(format!("herald-{name}-{}-{nanos}", std::process::id()));
        std::fs::create_dir_all(&dir).expect("create temp dir");
        TempDir(dir)
    }

    fn write(&self, path: &str, content: &[u8]) {
        let path = self.0.join(path);
        std::fs::create_dir_all(path.parent().expect("parent")).expect("mkdir");
        std::fs::write(path, content).expect("write");
    }

    fn path(&self) -> &str {
        self.0.to_str().expect("utf-8 temp path")
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

fn built_in(name: &str) -> Vec<u8> {
    std::fs::read(Path::new(env!("CARGO_MANIFEST_DIR")).join("static").join(name)).expect("static file")
}

async fn get_with(addr: std::net::SocketAddr, path: &str, headers: &[(&str, &str)]) -> HttpResponse {
    http(addr, "GET", path, headers, b"").await
}

/// Asserts a 200 with the file's type, caching headers and a strong ETag; returns the ETag.
fn assert_file(resp: &HttpResponse, content_type: &str, body: &[u8]) -> String {
    assert_eq!(resp.status, 200, "{}", resp.text());
    assert_eq!(resp.header("content-type"), Some(content_type));
    assert_eq!(resp.header("cache-control"), Some("no-cache"));
    assert_eq!(resp.body, body);
    let etag = resp.header("etag").expect("an ETag").to_string();
    assert!(etag.starts_with('"') && etag.ends_with('"') && etag.len() > 2, "a strong ETag: {etag}");
    etag
}

#[tokio::test]
async fn built_in_page_and_client() {
    let server = TestServer::start(&[]);
    let addr = server.addr();
    let index = built_in("index.html");
    let page = assert_file(&get(addr, "/").await, "text/html; charset=utf-8", &index);
    assert_eq!(assert_file(&get(addr, "/index.html").await, "text/html; charset=utf-8", &index), page);
    let client = assert_file(&get(addr, "/herald.js").await, "text/javascript; charset=utf-8", &built_in("herald.js"));
    assert_ne!(page, client);
}

/// The ETag answers `If-None-Match` (exactly, weakly, in a list, or `*`) with 304 and no body.
#[tokio::test]
async fn etag_and_304() {
    let server = TestServer::start(&[]);
    let addr = server.addr();
    for path in ["/", "/herald.js"] {
        let etag = get(addr, path).await.header("etag").expect("etag").to_string();
        for matching in [etag.clone(), format!("W/{etag}"), format!("\"other\", {etag}"), "*".to_string()] {
            let resp = get_with(addr, path, &[("If-None-Match", &matching)]).await;
            assert_eq!(resp.status, 304, "{path} If-None-Match: {matching}");
            assert!(resp.body.is_empty());
            assert_eq!(resp.header("etag"), Some(etag.as_str()));
            assert_eq!(resp.header("cache-control"), Some("no-cache"));
        }
        let resp = get_with(addr, path, &[("If-None-Match", "\"stale\"")]).await;
        assert_eq!(resp.status, 200, "{path}: a stale copy gets the file");
    }
}

#[tokio::test]
async fn head_and_other_methods() {
    let server = TestServer::start(&[]);
    let addr = server.addr();
    for path in ["/", "/herald.js"] {
        let full = get(addr, path).await;
        let head = http(addr, "HEAD", path, &[], b"").await;
        assert_eq!(head.status, 200);
        assert!(head.body.is_empty());
        assert_eq!(head.header("content-type"), full.header("content-type"));
        assert_eq!(head.header("etag"), full.header("etag"));
        assert_eq!(head.header("content-length"), Some(full.body.len().to_string().as_str()));
        for method in ["POST", "PUT", "DELETE"] {
            let resp = http(addr, method, path, &[], b"").await;
            assert_error(&resp, 405, Some("method_not_allowed"));
            assert_eq!(resp.header("allow"), Some("GET, HEAD"));
        }
    }
}

/// Authentication does not apply to the static files: pages load the client without a token.
#[tokio::test]
async fn served_without_a_token() {
    let server = TestServer::start(&["--jwt-secret", "s3cret"]);
    let addr = server.addr();
    assert_eq!(get(addr, "/herald.js").await.status, 200);
    assert_eq!(get(addr, "/").await.status, 200);
    assert_error(&get(addr, "/events?topics=a").await, 401, Some("unauthorized"));
}

fn site() -> TempDir {
    let dir = TempDir::new("site");
    dir.write("index.html", b"<h1>home</h1>");
    dir.write("docs/index.html", b"<h1>docs</h1>");
    dir.write("docs/empty/.keep", b"");
    for (name, content) in [
        ("app.js", &b"export {}"[..]),
        ("app.mjs", b"export {}"),
        ("app.js.map", b"{}"),
        ("style.css", b"body{}"),
        ("data.json", b"{}"),
        ("logo.svg", b"<svg/>"),
        ("logo.png", b"\x89PNG"),
        ("photo.jpg", b"\xff\xd8"),
        ("favicon.ico", b"\0\0"),
        ("notes.txt", b"hi"),
        ("font.woff2", b"wOF2"),
        ("mod.wasm", b"\0asm"),
        ("blob.bin", b"\x01\x02"),
    ] {
        dir.write(&format!("assets/{name}"), content);
    }
    dir
}

#[tokio::test]
async fn static_dir_serves_its_files_by_type() {
    let dir = site();
    let server = TestServer::start(&["--static-dir", dir.path()]);
    let addr = server.addr();
    assert_file(&get(addr, "/").await, "text/html; charset=utf-8", b"<h1>home</h1>");
    assert_file(&get(addr, "/index.html").await, "text/html; charset=utf-8", b"<h1>home</h1>");
    assert_file(&get(addr, "/docs/").await, "text/html; charset=utf-8", b"<h1>docs</h1>");
    let redirect = get(addr, "/docs?x=1").await;
    assert_eq!((redirect.status, redirect.header("location")), (301, Some("/docs/?x=1")));
    assert_error(&get(addr, "/docs/empty/").await, 404, Some("not_found"));
    assert_error(&get(addr, "/missing.js").await, 404, Some("not_found"));
    for (name, content_type) in [
        ("app.js", "text/javascript; charset=utf-8"),
        ("app.mjs", "text/javascript; charset=utf-8"),
        ("app.js.map", "application/json"),
        ("style.css", "text/css; charset=utf-8"),
        ("data.json", "application/json"),
        ("logo.svg", "image/svg+xml"),
        ("logo.png", "image/png"),
        ("photo.jpg", "image/jpeg"),
        ("favicon.ico", "image/x-icon"),
        ("notes.txt", "text/plain; charset=utf-8"),
        ("font.woff2", "font/woff2"),
        ("mod.wasm", "application/wasm"),
        ("blob.bin", "application/octet-stream"),
    ] {
        let resp = get(addr, &format!("/assets/{name}")).await;
        assert_eq!(resp.status, 200, "{name}");
        assert_eq!(resp.header("content-type"), Some(content_type), "{name}");
        assert_eq!(resp.body, std::fs::read(dir.0.join("assets").join(name)).unwrap(), "{name}");
    }
    // Without a herald.js of its own, the folder gets the built-in one; with one, its own.
    assert_file(&get(addr, "/herald.js").await, "text/javascript; charset=utf-8", &built_in("herald.js"));
    dir.write("herald.js", b"// my own client");
    assert_file(&get(addr, "/herald.js").await, "text/javascript; charset=utf-8", b"// my own client");
    // A larger file arrives whole.
    let big: Vec<u8> = (0..300_000u32).map(|i| (i % 251) as u8).collect();
    dir.write("assets/big.bin", &big);
    assert_eq!(get(addr, "/assets/big.bin").await.body, big);
}

/// Folder files carry `ETag` and `Last-Modified`; `If-None-Match` wins over `If-Modified-Since`.
#[tokio::test]
async fn static_dir_caching() {
    let dir = site();
    let server = TestServer::start(&["--static-dir", dir.path()]);
    let addr = server.addr();
    let first = get(addr, "/assets/style.css").await;
    let etag = assert_file(&first, "text/css; charset=utf-8", b"body{}");
    let modified = first.header("last-modified").expect("Last-Modified").to_string();
    assert!(modified.ends_with(" GMT"), "an HTTP date: {modified}");
    let not_modified = get_with(addr, "/assets/style.css", &[("If-None-Match", &etag)]).await;
    assert_eq!(not_modified.status, 304);
    assert!(not_modified.body.is_empty());
    assert_eq!(not_modified.header("etag"), Some(etag.as_str()));
    assert_eq!(get_with(addr, "/assets/style.css", &[("If-Modified-Since", &modified)]).await.status, 304);
    let old = "Thu, 01 Jan 1970 00:00:00 GMT";
    assert_eq!(get_with(addr, "/assets/style.css", &[("If-Modified-Since", old)]).await.status, 200);
    let both = [("If-None-Match", "\"stale\""), ("If-Modified-Since", modified.as_str())];
    assert_eq!(get_with(addr, "/assets/style.css", &both).await.status, 200, "If-None-Match decides");
    let head = http(addr, "HEAD", "/assets/style.css", &[], b"").await;
    assert_eq!((head.status, head.body.len()), (200, 0));
    assert_eq!(head.header("content-length"), Some("6"));
    assert_eq!(head.header("etag"), Some(etag.as_str()));
    // A changed file gets a new ETag (its size changed, whatever the clock's resolution).
    dir.write("assets/style.css", b"body{color:red}");
    let changed = get(addr, "/assets/style.css").await;
    assert_ne!(changed.header("etag"), Some(etag.as_str()));
    assert_eq!(get_with(addr, "/assets/style.css", &[("If-None-Match", &etag)]).await.status, 200);
    assert_error(&http(addr, "POST", "/assets/style.css", &[], b"").await, 405, Some("method_not_allowed"));
}

/// Nothing outside the folder, nor hidden inside it, can be read.
#[tokio::test]
async fn static_dir_refuses_traversal() {
    let outside = TempDir::new("outside");
    outside.write("secret.txt", b"secret");
    let dir = site();
    dir.write(".env", b"hidden");
    dir.write(".git/config", b"hidden");
    std::os::unix::fs::symlink(outside.0.join("secret.txt"), dir.0.join("link.txt")).expect("symlink");
    std::os::unix::fs::symlink(&outside.0, dir.0.join("linkdir")).expect("symlink");
    std::os::unix::fs::symlink(dir.0.join("assets/notes.txt"), dir.0.join("inner.txt")).expect("symlink");
    let server = TestServer::start(&["--static-dir", dir.path()]);
    let addr = server.addr();
    let outside_name = outside.0.file_name().unwrap().to_str().unwrap().to_string();
    for path in [
        format!("/../{outside_name}/secret.txt"),
        format!("/assets/../../{outside_name}/secret.txt"),
        format!("/%2e%2e/{outside_name}/secret.txt"),
        format!("/%2E%2E%2F{outside_name}%2Fsecret.txt"),
        format!("/assets/..%2f..%2f{outside_name}%2fsecret.txt"),
        format!("/..\\{outside_name}\\secret.txt"),
        format!("/%5c..%5c{outside_name}%5csecret.txt"),
        "/index.html%00.txt".to_string(),
        "/%00".to_string(),
        "/./index.html".to_string(),
        "/assets/%2e/notes.txt".to_string(),
        "/link.txt".to_string(),
        "/linkdir/secret.txt".to_string(),
        "/.env".to_string(),
        "/.git/config".to_string(),
        "/%2egit/config".to_string(),
        "/%zz".to_string(),
    ] {
        let resp = get(addr, &path).await;
        assert_error(&resp, 404, Some("not_found"));
        assert!(!resp.text().contains("secret") && !resp.text().contains("hidden"), "{path}");
    }
    // A link that stays inside the folder is fine.
    assert_eq!(get(addr, "/inner.txt").await.body, b"hi");
}

/// `--static-dir ''` serves no folder and no demo page; `/herald.js` is still there.
#[tokio::test]
async fn empty_static_dir_serves_only_the_client() {
    let server = TestServer::start(&["--static-dir", ""]);
    let addr = server.addr();
    assert_error(&get(addr, "/").await, 404, Some("not_found"));
    assert_error(&get(addr, "/index.html").await, 404, Some("not_found"));
    assert_file(&get(addr, "/herald.js").await, "text/javascript; charset=utf-8", &built_in("herald.js"));
}

/// A folder that does not exist, or a file, stops start-up with a clear message (exit 2).
#[test]
fn static_dir_is_checked_at_start_up() {
    let dir = site();
    let file = dir.0.join("index.html");
    let missing = dir.0.join("missing");
    for bad in [missing.to_str().unwrap(), file.to_str().unwrap()] {
        let (status, _, stderr) =
            run_to_exit(&["--listen", "127.0.0.1:0", "--static-dir", bad], &[], Duration::from_secs(10));
        assert_eq!(status.code(), Some(2), "{bad}: {stderr}");
        assert!(stderr.contains("--static-dir") && stderr.contains(bad), "{stderr}");
    }
    let (status, _, stderr) = run_to_exit(
        &["--listen", "127.0.0.1:0"],
        &[("HERALD_STATIC_DIR", missing.to_str().unwrap())],
        Duration::from_secs(10),
    );
    assert_eq!(status.code(), Some(2), "{stderr}");
}

/// The same tests against Redis (static files do not depend on the backend; one smoke test).
mod on_redis {
    super::support::on_redis!(built_in_page_and_client);
}
