//! The built-in `echo` upstream: answers with what it received, so the quickstart works with
//! nothing else running and shows the identity headers an upstream gets.

use axum::body::Body;
use http::{header, HeaderValue, Request, Response};
use http_body_util::BodyExt;
use serde_json::{json, Map, Value};

/// Largest body echoed back.
const MAX_ECHO_BODY: usize = 64 * 1024;

/// Answers `req` with a JSON description of it.
pub async fn respond(req: Request<Body>) -> Response<Body> {
    let (parts, body) = req.into_parts();
    let mut headers = Map::new();
    for (name, value) in &parts.headers {
        let v = Value::String(String::from_utf8_lossy(value.as_bytes()).into_owned());
        match headers.get_mut(name.as_str()) {
            Some(Value::String(prev)) => {
                prev.push_str(", ");
                prev.push_str(v.as_str().unwrap_or_default());
            }
            _ => {
                headers.insert(name.as_str().to_owned(), v);
            }
        }
    }
    let limited = http_body_util::Limited::new(body, MAX_ECHO_BODY);
    let body_text = match limited.collect().await {
        Ok(b) => {
            let bytes = b.to_bytes();
            json!({"bytes": bytes.len(), "text": std::str::from_utf8(&bytes).ok()})
        }
        Err(_) => json!({"bytes": null, "text": null, "truncated": true}),
    };
    let out = json!({
        "method": parts.method.as_str(),
        "path": parts.uri.path(),
        "query": parts.uri.query(),
        "headers": headers,
        "body": body_text,
    });
    let mut resp = Response::new(Body::from(out.to_string()));
    resp.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    resp
}
