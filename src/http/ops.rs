//! Operations endpoints: `/healthz`, `/readyz`, `/metrics`.

use http::{header, HeaderValue, Method, Request, Response, StatusCode};

use super::{require_method, AppState, ResponseBody, GET_HEAD};
use crate::error::Error;

fn text(status: StatusCode, content_type: &'static str, body: impl Into<bytes::Bytes>) -> Response<ResponseBody> {
    let mut response = Response::new(ResponseBody::full(body));
    *response.status_mut() = status;
    response.headers_mut().insert(header::CONTENT_TYPE, HeaderValue::from_static(content_type));
    response.headers_mut().insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    response
}

/// `GET /healthz`: 200 while the process serves.
pub(super) fn healthz<B>(req: &Request<B>) -> Result<Response<ResponseBody>, Error> {
    require_method(req.method(), GET_HEAD, "GET, HEAD")?;
    Ok(text(StatusCode::OK, "text/plain; charset=utf-8", "ok\n"))
}

/// `GET /readyz`: 200 when the backend is reachable and the node is not draining; else 503 with the JSON
/// error `shutting_down` or `backend_unavailable`.
pub(super) async fn readyz(state: &AppState, method: &Method) -> Result<Response<ResponseBody>, Error> {
    require_method(method, GET_HEAD, "GET, HEAD")?;
    if state.is_draining() {
        return Err(Error::ShuttingDown);
    }
    if !state.backend.ready().await {
        return Err(Error::NotReady);
    }
    Ok(text(StatusCode::OK, "text/plain; charset=utf-8", "ready\n"))
}

/// `GET /metrics`: Prometheus text.
pub(super) fn metrics<B>(state: &AppState, req: &Request<B>) -> Result<Response<ResponseBody>, Error> {
    require_method(req.method(), GET_HEAD, "GET, HEAD")?;
    let body = state.metrics.render();
    Ok(text(StatusCode::OK, "text/plain; version=0.0.4; charset=utf-8", body))
}
