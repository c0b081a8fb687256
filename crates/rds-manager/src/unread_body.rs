//! Early answers every client can read.
//!
//! A request rejected before its body is read (401, 413, 400 on a bad gzip...) would otherwise be
//! answered while the client is still sending, and the connection closed with body bytes unread:
//! the kernel then resets it, and a client that does not wait for `100 Continue` (Python's
//! `http.client`, Node's `fetch`) sees EPIPE or ECONNRESET instead of the answer. So once a handler
//! is done, what it left of the body is read and discarded, up to a bound, before the answer goes
//! out; past the bound the answer says `Connection: close`.

use std::pin::Pin;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::Duration;

use axum::body::Body;
use axum::extract::Request;
use axum::middleware::Next;
use axum::response::Response;
use bytes::Bytes;
use http::{header, HeaderValue};
use http_body_util::BodyExt;
use hyper::body::{Frame, SizeHint};

/// Least number of unread body bytes discarded after an early answer.
pub const MIN_DRAIN_BYTES: u64 = 16 << 20;
/// How long discarding the rest of a body may take.
const DRAIN_TIME: Duration = Duration::from_secs(10);

type Slot = Arc<Mutex<Option<Body>>>;

/// The request body as the handler sees it; the middleware keeps a handle to what is left and
/// learns whether the handler asked for any of it.
struct SharedBody(Slot, Arc<AtomicBool>);

impl hyper::body::Body for SharedBody {
    type Data = Bytes;
    type Error = axum::Error;

    fn poll_frame(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Result<Frame<Bytes>, axum::Error>>> {
        self.1.store(true, Ordering::Relaxed);
        let mut slot = self.0.lock().unwrap_or_else(|p| p.into_inner());
        match slot.as_mut() {
            Some(body) => Pin::new(body).poll_frame(cx),
            None => Poll::Ready(None),
        }
    }

    fn is_end_stream(&self) -> bool {
        self.0.lock().unwrap_or_else(|p| p.into_inner()).as_ref().is_none_or(|b| b.is_end_stream())
    }

    fn size_hint(&self) -> SizeHint {
        self.0.lock().unwrap_or_else(|p| p.into_inner()).as_ref().map(|b| b.size_hint()).unwrap_or_default()
    }
}

/// Middleware: runs the handler, then discards up to `limit` bytes of whatever it left unread of
/// the request body before answering.
pub async fn read_rest_of_body(limit: u64, req: Request, next: Next) -> Response {
    let (parts, body) = req.into_parts();
    let declared =
        parts.headers.get(header::CONTENT_LENGTH).and_then(|v| v.to_str().ok()).and_then(|v| v.parse::<u64>().ok());
    let expects_continue =
        parts.headers.get(header::EXPECT).is_some_and(|v| v.as_bytes().eq_ignore_ascii_case(b"100-continue"));
    let slot: Slot = Arc::new(Mutex::new(Some(body)));
    let polled = Arc::new(AtomicBool::new(false));
    let mut resp = next.run(Request::from_parts(parts, Body::new(SharedBody(slot.clone(), polled.clone())))).await;
    let rest = slot.lock().unwrap_or_else(|p| p.into_inner()).take();
    let Some(rest) = rest else { return resp };
    // A client waiting for `100 Continue` has not sent a body nobody asked for: reading it now
    // would only invite it.
    if hyper::body::Body::is_end_stream(&rest) || (expects_continue && !polled.load(Ordering::Relaxed)) {
        return resp;
    }
    // A body declared larger than the bound is not worth reading: close right away.
    let drained = declared.is_none_or(|n| n <= limit)
        && tokio::time::timeout(DRAIN_TIME, discard(rest, limit)).await.unwrap_or(false);
    if !drained {
        resp.headers_mut().insert(header::CONNECTION, HeaderValue::from_static("close"));
    }
    resp
}

/// Reads `body` to its end; false if it is longer than `limit` or fails.
async fn discard(mut body: Body, limit: u64) -> bool {
    let mut seen = 0u64;
    while let Some(frame) = body.frame().await {
        match frame {
            Ok(frame) => {
                seen += frame.data_ref().map_or(0, |d| d.len() as u64);
                if seen > limit {
                    return false;
                }
            }
            Err(_) => return false,
        }
    }
    true
}

#[cfg(test)]
mod tests {
    use super::*;
    use axum::routing::post;
    use axum::Router;
    use tower::ServiceExt;

    fn app(limit: u64) -> Router {
        Router::new()
            .route("/early", post(|| async { (http::StatusCode::PAYLOAD_TOO_LARGE, "too large") }))
            .route(
                "/half",
                post(|body: Body| async move {
                    // Reads one frame and answers: the rest is left for the middleware.
                    let mut body = body;
                    let _ = body.frame().await;
                    "ok"
                }),
            )
            .layer(axum::middleware::from_fn(move |req, next| read_rest_of_body(limit, req, next)))
    }

    /// A streamed body of `chunks` chunks of 1 KiB whose consumption is observable.
    fn counted_body(chunks: usize) -> (Body, Arc<std::sync::atomic::AtomicUsize>) {
        let read = Arc::new(std::sync::atomic::AtomicUsize::new(0));
        let r = read.clone();
        let stream = futures_util::stream::iter((0..chunks).map(move |_| {
            r.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
            Ok::<_, std::io::Error>(Bytes::from(vec![b'x'; 1024]))
        }));
        (Body::from_stream(stream), read)
    }

    #[tokio::test]
    async fn an_early_answer_waits_until_the_body_is_read() {
        for path in ["/early", "/half"] {
            let (body, read) = counted_body(100);
            let resp = app(1 << 20).oneshot(http::Request::post(path).body(body).unwrap()).await.unwrap();
            assert_eq!(read.load(std::sync::atomic::Ordering::SeqCst), 100, "{path}: every chunk read");
            assert!(resp.headers().get(header::CONNECTION).is_none(), "{path}: the connection can be kept");
        }
    }

    #[tokio::test]
    async fn a_client_waiting_for_100_continue_is_not_asked_for_its_body() {
        let (body, read) = counted_body(10);
        let req = http::Request::post("/early").header(header::EXPECT, "100-continue").body(body).unwrap();
        let resp = app(1 << 20).oneshot(req).await.unwrap();
        assert_eq!(resp.status(), http::StatusCode::PAYLOAD_TOO_LARGE);
        assert_eq!(read.load(std::sync::atomic::Ordering::SeqCst), 0);
    }

    #[tokio::test]
    async fn a_body_past_the_bound_is_abandoned_and_the_connection_closed() {
        let (body, read) = counted_body(100);
        let resp = app(10 * 1024).oneshot(http::Request::post("/early").body(body).unwrap()).await.unwrap();
        assert_eq!(resp.status(), http::StatusCode::PAYLOAD_TOO_LARGE);
        assert_eq!(resp.headers().get(header::CONNECTION).unwrap(), "close");
        assert!(read.load(std::sync::atomic::Ordering::SeqCst) <= 12, "stopped at the bound");

        let (body, read) = counted_body(1);
        let req = http::Request::post("/early").header(header::CONTENT_LENGTH, "999999999").body(body).unwrap();
        let resp = app(10 * 1024).oneshot(req).await.unwrap();
        assert_eq!(resp.headers().get(header::CONNECTION).unwrap(), "close", "declared past the bound");
        assert_eq!(read.load(std::sync::atomic::Ordering::SeqCst), 0, "not read at all");
    }
}
