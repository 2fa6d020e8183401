//! Static files: the built-in demo page and browser client, or a folder (`--static-dir`).
//!
//! - Built in (the default): `/` and `/index.html` serve the demo page, `/herald.js` the browser client,
//!   both compiled into the binary, each with a strong `ETag` (a hash of its content).
//! - `--static-dir DIR`: files under `DIR` are served at `/` (`index.html` for `/` and for a directory;
//!   a directory asked for without its trailing slash is redirected there, so relative links work), with
//!   `ETag` and `Last-Modified` made from the file's modification time and size. Requests that could leave
//!   the folder get 404: `..` or `.` segments (also percent-encoded), backslashes, NUL, names beginning with
//!   a dot (hidden files, `.git`), and symbolic links that resolve outside it.
//! - `--static-dir ''`: no folder; `/` is 404.
//!
//! `/herald.js` is always served, from the folder when it has one, else built in, and like everything here
//! without a token: pages on other setups load it. Responses carry `Cache-Control: no-cache` (browsers
//! revalidate, which costs a 304 when nothing changed) and answer `If-None-Match` (`*` and lists too, with
//! the weak comparison RFC 9110 prescribes) and, for folder files, `If-Modified-Since` with 304. `HEAD` is
//! served like `GET` without the body; other methods get 405.

use std::path::{Path, PathBuf};
use std::pin::Pin;
use std::sync::LazyLock;
use std::task::{ready, Context, Poll};
use std::time::{SystemTime, UNIX_EPOCH};

use bytes::Bytes;
use http::request::Parts;
use http::{header, HeaderMap, HeaderValue, Method, Response, StatusCode};
use sha2::{Digest, Sha256};
use tokio::io::{AsyncRead, ReadBuf};

use super::{require_method, ResponseBody, GET_HEAD};
use crate::error::Error;

/// The demo page, compiled into the binary so that Herald runs from any directory.
const INDEX_HTML: &[u8] = include_bytes!("../../static/index.html");
/// The browser client.
const HERALD_JS: &[u8] = include_bytes!("../../static/herald.js");

const HTML: &str = "text/html; charset=utf-8";
const JAVASCRIPT: &str = "text/javascript; charset=utf-8";

/// Bytes read from a file per body frame.
const FILE_CHUNK: usize = 64 * 1024;

/// What is served at `/` besides the API.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum StaticSite {
    /// The built-in demo page and browser client.
    BuiltIn,
    /// The files of this folder (its canonical path), and the built-in browser client unless the folder
    /// has its own `herald.js`.
    Folder(PathBuf),
    /// Nothing but the built-in browser client (`--static-dir ''`).
    Nothing,
}

impl StaticSite {
    /// The site `--static-dir` asks for: absent, the built-in files; empty, none; else the folder.
    ///
    /// # Errors
    /// The folder does not exist or is not a directory.
    pub fn from_dir(dir: Option<&str>) -> std::io::Result<Self> {
        match dir {
            None => Ok(StaticSite::BuiltIn),
            Some("") => Ok(StaticSite::Nothing),
            Some(dir) => {
                let root = std::fs::canonicalize(dir)?;
                if !root.is_dir() {
                    return Err(std::io::Error::new(std::io::ErrorKind::NotADirectory, "not a directory"));
                }
                Ok(StaticSite::Folder(root))
            }
        }
    }
}

/// A file compiled into the binary.
struct BuiltIn {
    content_type: &'static str,
    body: &'static [u8],
    etag: LazyLock<String>,
}

/// A strong entity tag from the content: the first 128 bits of its SHA-256, so that it changes with the
/// content whatever the build.
fn content_etag(body: &[u8]) -> String {
    let digest = Sha256::digest(body);
    let hex: String = digest[..16].iter().map(|b| format!("{b:02x}")).collect();
    format!("\"{hex}\"")
}

static INDEX: BuiltIn =
    BuiltIn { content_type: HTML, body: INDEX_HTML, etag: LazyLock::new(|| content_etag(INDEX_HTML)) };
static CLIENT: BuiltIn =
    BuiltIn { content_type: JAVASCRIPT, body: HERALD_JS, etag: LazyLock::new(|| content_etag(HERALD_JS)) };

/// Serves `GET`/`HEAD` of a static file; 404 for anything else of this site, 405 for other methods on a
/// file that exists.
pub(super) async fn serve(site: &StaticSite, req: &Parts) -> Result<Response<ResponseBody>, Error> {
    let path = req.uri.path();
    let found = match site {
        StaticSite::Folder(root) => find_in_folder(root, path).await,
        StaticSite::BuiltIn | StaticSite::Nothing => None,
    };
    let response = match found {
        Some(Found::File(file)) => {
            require_method(&req.method, GET_HEAD, "GET, HEAD")?;
            file_response(file, &req.method, &req.headers).await
        }
        Some(Found::Directory) => {
            require_method(&req.method, GET_HEAD, "GET, HEAD")?;
            redirect_to_directory(req)
        }
        None => {
            let built_in = match (site, path) {
                (_, "/herald.js") => &CLIENT,
                (StaticSite::BuiltIn, "/" | "/index.html") => &INDEX,
                _ => return Err(Error::NotFound),
            };
            require_method(&req.method, GET_HEAD, "GET, HEAD")?;
            built_in_response(built_in, &req.headers)
        }
    };
    Ok(response)
}

fn built_in_response(file: &BuiltIn, headers: &HeaderMap) -> Response<ResponseBody> {
    let etag: &str = &file.etag;
    if none_match(headers, etag) == Some(true) {
        return not_modified(etag, None);
    }
    let mut response = Response::new(ResponseBody::full(Bytes::from_static(file.body)));
    set_common(response.headers_mut(), file.content_type, etag, None);
    response
}

/// The headers of a 200 and its 304: type, caching, validators.
fn set_common(headers: &mut HeaderMap, content_type: &'static str, etag: &str, last_modified: Option<&str>) {
    headers.insert(header::CONTENT_TYPE, HeaderValue::from_static(content_type));
    headers.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-cache"));
    headers.insert(header::X_CONTENT_TYPE_OPTIONS, HeaderValue::from_static("nosniff"));
    if let Ok(etag) = HeaderValue::from_str(etag) {
        headers.insert(header::ETAG, etag);
    }
    if let Some(Ok(date)) = last_modified.map(HeaderValue::from_str) {
        headers.insert(header::LAST_MODIFIED, date);
    }
}

fn not_modified(etag: &str, last_modified: Option<&str>) -> Response<ResponseBody> {
    let mut response = Response::new(ResponseBody::default());
    *response.status_mut() = StatusCode::NOT_MODIFIED;
    let headers = response.headers_mut();
    headers.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-cache"));
    if let Ok(etag) = HeaderValue::from_str(etag) {
        headers.insert(header::ETAG, etag);
    }
    if let Some(Ok(date)) = last_modified.map(HeaderValue::from_str) {
        headers.insert(header::LAST_MODIFIED, date);
    }
    response
}

/// Whether `If-None-Match` matches `etag` (`*`, or any tag of the list by the weak comparison); `None`
/// without the header.
fn none_match(headers: &HeaderMap, etag: &str) -> Option<bool> {
    let mut values = headers.get_all(header::IF_NONE_MATCH).iter().peekable();
    values.peek()?;
    let ours = etag.trim_start_matches("W/");
    Some(values.filter_map(|v| v.to_str().ok()).flat_map(|v| v.split(',')).any(|tag| {
        let tag = tag.trim();
        tag == "*" || tag.trim_start_matches("W/") == ours
    }))
}

/// What a path names in the folder.
enum Found {
    File(FoundFile),
    /// A directory asked for without its trailing slash.
    Directory,
}

struct FoundFile {
    path: PathBuf,
    meta: std::fs::Metadata,
}

/// Finds the regular file `raw_path` names under `root`, refusing anything that could leave it.
async fn find_in_folder(root: &Path, raw_path: &str) -> Option<Found> {
    let decoded = percent_decode(raw_path)?;
    let relative = decoded.strip_prefix('/')?;
    let mut candidate = root.to_path_buf();
    for segment in relative.split('/').filter(|s| !s.is_empty()) {
        // `.`, `..` and hidden files; backslashes and NUL are refused by `percent_decode`.
        if segment.starts_with('.') {
            return None;
        }
        candidate.push(segment);
    }
    let wants_directory = relative.is_empty() || relative.ends_with('/');
    let mut resolved = inside(root, &candidate).await?;
    let mut meta = tokio::fs::metadata(&resolved).await.ok()?;
    if meta.is_dir() {
        if !wants_directory {
            return Some(Found::Directory);
        }
        resolved = inside(root, &resolved.join("index.html")).await?;
        meta = tokio::fs::metadata(&resolved).await.ok()?;
    } else if wants_directory {
        return None;
    }
    meta.is_file().then_some(Found::File(FoundFile { path: resolved, meta }))
}

/// `path` with every symbolic link resolved, if that is still under `root` (itself canonical).
async fn inside(root: &Path, path: &Path) -> Option<PathBuf> {
    let resolved = tokio::fs::canonicalize(path).await.ok()?;
    resolved.starts_with(root).then_some(resolved)
}

/// Decodes `%XX` escapes; `None` for a malformed escape, non-UTF-8 bytes, a backslash or a NUL, which no
/// file served here has in its path.
fn percent_decode(raw: &str) -> Option<String> {
    let bytes = raw.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        let b = match bytes[i] {
            b'%' => {
                let hex = std::str::from_utf8(bytes.get(i + 1..i + 3)?).ok()?;
                i += 2;
                u8::from_str_radix(hex, 16).ok()?
            }
            b => b,
        };
        if b == b'\\' || b == 0 {
            return None;
        }
        out.push(b);
        i += 1;
    }
    String::from_utf8(out).ok()
}

/// 301 to the same path with a trailing slash (and the same query).
fn redirect_to_directory(req: &Parts) -> Response<ResponseBody> {
    let location = match req.uri.query() {
        Some(query) => format!("{}/?{query}", req.uri.path()),
        None => format!("{}/", req.uri.path()),
    };
    let mut response = Response::new(ResponseBody::default());
    *response.status_mut() = StatusCode::MOVED_PERMANENTLY;
    if let Ok(location) = HeaderValue::from_str(&location) {
        response.headers_mut().insert(header::LOCATION, location);
    }
    response
}

/// A folder file's response: 304 when the client's copy is current, else the file, streamed.
async fn file_response(file: FoundFile, method: &Method, headers: &HeaderMap) -> Response<ResponseBody> {
    let modified = file.meta.modified().ok();
    let etag = file_etag(modified, file.meta.len());
    let last_modified = modified.map(httpdate::fmt_http_date);
    let current = match none_match(headers, &etag) {
        Some(matched) => matched,
        None => modified_since(headers, modified),
    };
    if current {
        return not_modified(&etag, last_modified.as_deref());
    }
    let len = file.meta.len();
    let body = if method == Method::HEAD {
        ResponseBody::default()
    } else {
        match tokio::fs::File::open(&file.path).await {
            Ok(opened) => ResponseBody::File(Box::new(FileBody::new(opened, len))),
            Err(e) => {
                tracing::warn!(path = %file.path.display(), cause = %e, "cannot open a static file");
                return Error::NotFound.into_response();
            }
        }
    };
    let mut response = Response::new(body);
    let headers = response.headers_mut();
    set_common(headers, content_type(&file.path), &etag, last_modified.as_deref());
    headers.insert(header::CONTENT_LENGTH, HeaderValue::from(len));
    response
}

/// A strong entity tag from the modification time and the size, as nginx makes them: a file replaced by
/// another gets a new one without being read.
fn file_etag(modified: Option<SystemTime>, len: u64) -> String {
    let since = modified.and_then(|m| m.duration_since(UNIX_EPOCH).ok()).unwrap_or_default();
    format!("\"{:x}.{:x}-{len:x}\"", since.as_secs(), since.subsec_nanos())
}

/// Whether `If-Modified-Since` says the client's copy is current (HTTP dates have whole seconds).
fn modified_since(headers: &HeaderMap, modified: Option<SystemTime>) -> bool {
    let since = headers.get(header::IF_MODIFIED_SINCE).and_then(|v| v.to_str().ok());
    let (Some(since), Some(modified)) = (since.and_then(|s| httpdate::parse_http_date(s).ok()), modified) else {
        return false;
    };
    let secs = |t: SystemTime| t.duration_since(UNIX_EPOCH).map_or(0, |d| d.as_secs());
    secs(modified) <= secs(since)
}

/// The `Content-Type` for a file name's extension.
pub(crate) fn content_type(path: &Path) -> &'static str {
    let ext = path.extension().and_then(|e| e.to_str()).map(str::to_ascii_lowercase);
    match ext.as_deref() {
        Some("html" | "htm") => HTML,
        Some("js" | "mjs") => JAVASCRIPT,
        Some("css") => "text/css; charset=utf-8",
        Some("json" | "map") => "application/json",
        Some("svg") => "image/svg+xml",
        Some("png") => "image/png",
        Some("jpg" | "jpeg") => "image/jpeg",
        Some("ico") => "image/x-icon",
        Some("txt") => "text/plain; charset=utf-8",
        Some("woff2") => "font/woff2",
        Some("wasm") => "application/wasm",
        _ => "application/octet-stream",
    }
}

/// A file streamed in [`FILE_CHUNK`] frames, at most `remaining` bytes (the size announced in
/// `Content-Length`). A file that shrinks or fails while being read ends the body early, which the client
/// sees as a broken response, never as a complete one.
#[derive(Debug)]
pub struct FileBody {
    file: tokio::fs::File,
    remaining: u64,
    buf: Vec<u8>,
}

impl FileBody {
    fn new(file: tokio::fs::File, len: u64) -> Self {
        FileBody { file, remaining: len, buf: Vec::new() }
    }

    /// The next frame, or `None` at the end.
    pub(crate) fn poll_chunk(&mut self, cx: &mut Context<'_>) -> Poll<Option<Bytes>> {
        if self.remaining == 0 {
            return Poll::Ready(None);
        }
        let want = usize::try_from(self.remaining).unwrap_or(usize::MAX).min(FILE_CHUNK);
        if self.buf.len() != want {
            self.buf = vec![0; want];
        }
        let mut read = ReadBuf::new(&mut self.buf);
        match ready!(Pin::new(&mut self.file).poll_read(cx, &mut read)) {
            Ok(()) if !read.filled().is_empty() => {
                let n = read.filled().len();
                self.remaining -= n as u64;
                let mut chunk = std::mem::take(&mut self.buf);
                chunk.truncate(n);
                Poll::Ready(Some(Bytes::from(chunk)))
            }
            Ok(()) => {
                tracing::warn!("a static file ended before its announced size");
                self.remaining = 0;
                Poll::Ready(None)
            }
            Err(e) => {
                tracing::warn!(cause = %e, "reading a static file failed");
                self.remaining = 0;
                Poll::Ready(None)
            }
        }
    }

    /// Bytes still to send.
    pub(crate) fn remaining(&self) -> u64 {
        self.remaining
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn content_types_by_extension() {
        for (name, expected) in [
            ("a.html", HTML),
            ("a.HTM", HTML),
            ("app.js", JAVASCRIPT),
            ("m.mjs", JAVASCRIPT),
            ("s.css", "text/css; charset=utf-8"),
            ("d.json", "application/json"),
            ("app.js.map", "application/json"),
            ("i.svg", "image/svg+xml"),
            ("i.png", "image/png"),
            ("i.jpg", "image/jpeg"),
            ("i.jpeg", "image/jpeg"),
            ("favicon.ico", "image/x-icon"),
            ("r.txt", "text/plain; charset=utf-8"),
            ("f.woff2", "font/woff2"),
            ("m.wasm", "application/wasm"),
            ("noext", "application/octet-stream"),
            ("x.bin", "application/octet-stream"),
        ] {
            assert_eq!(content_type(Path::new(name)), expected, "{name}");
        }
    }

    #[test]
    fn percent_decoding_refuses_what_could_escape() {
        assert_eq!(percent_decode("/a%20b/c.js").as_deref(), Some("/a b/c.js"));
        assert_eq!(percent_decode("/%2e%2e/x").as_deref(), Some("/../x"), "dots decode; segments are judged after");
        for bad in ["/a%5cb", "/a\\b", "/a%00", "/%zz", "/%2", "/%ff"] {
            assert_eq!(percent_decode(bad), None, "{bad}");
        }
    }

    #[test]
    fn if_none_match_lists_star_and_weak_tags() {
        let etag = "\"abc\"";
        let with = |v: &str| {
            let mut h = HeaderMap::new();
            h.insert(header::IF_NONE_MATCH, HeaderValue::from_str(v).unwrap());
            none_match(&h, etag)
        };
        assert_eq!(none_match(&HeaderMap::new(), etag), None);
        assert_eq!(with("\"abc\""), Some(true));
        assert_eq!(with("W/\"abc\""), Some(true));
        assert_eq!(with("\"x\", \"abc\""), Some(true));
        assert_eq!(with("*"), Some(true));
        assert_eq!(with("\"abcd\""), Some(false));
        assert_eq!(with("\"x\",\"y\""), Some(false));
    }

    #[test]
    fn built_in_etags_are_content_hashes() {
        assert_eq!(INDEX.etag.len(), 34);
        assert_ne!(*INDEX.etag, *CLIENT.etag);
        assert_eq!(*INDEX.etag, content_etag(INDEX_HTML));
    }
}
