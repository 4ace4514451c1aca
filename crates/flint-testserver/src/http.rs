//! Server plumbing: accept loops, TLS handshakes, HTTP/1.1 with keep-alive through hyper, and the
//! two hooks faults need below HTTP: a body that stops short of its `Content-Length`, and a
//! connection that dies after a given number of bytes.

use std::convert::Infallible;
use std::future::Future;
use std::io;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::task::{Context, Poll, ready};
use std::time::{Duration, Instant};

use bytes::Bytes;
use http_body_util::{BodyExt, Limited};
use hyper::body::{Frame, Incoming, SizeHint};
use hyper::header::{self, HeaderName, HeaderValue};
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper::{Request, Response, StatusCode};
use hyper_util::rt::{TokioIo, TokioTimer};
use serde_json::{Value, json};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::TcpListener;
use tokio_rustls::TlsAcceptor;

/// A client that connects and never finishes its handshake must not hold a task forever.
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);
/// Idle keep-alive connections and slow request heads are closed after this.
const HEADER_TIMEOUT: Duration = Duration::from_secs(30);
const BODY_TIMEOUT: Duration = Duration::from_secs(10);
/// Every legitimate body of this protocol is a few hundred bytes.
pub const MAX_BODY: usize = 64 * 1024;

/// How long a cut-short body waits before ending: hyper aborts the connection as soon as the
/// body ends early, without flushing what it buffered, so the half must be out first.
const SHORT_BODY_GRACE: Duration = Duration::from_millis(100);

/// A response body: whole, or cut short (the declared `Content-Length` is then never reached, so
/// hyper aborts the connection after the bytes it has sent).
pub enum Body {
    Full(Option<Bytes>),
    Short {
        part: Option<Bytes>,
        grace: Pin<Box<tokio::time::Sleep>>,
    },
}

impl hyper::body::Body for Body {
    type Data = Bytes;
    type Error = Infallible;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Infallible>>> {
        match self.get_mut() {
            Body::Full(b) => Poll::Ready(b.take().map(|b| Ok(Frame::data(b)))),
            Body::Short { part, grace } => {
                if let Some(b) = part.take() {
                    return Poll::Ready(Some(Ok(Frame::data(b))));
                }
                // While this is pending, hyper flushes the half to the client.
                ready!(grace.as_mut().poll(cx));
                Poll::Ready(None)
            }
        }
    }

    fn is_end_stream(&self) -> bool {
        matches!(self, Body::Full(None))
    }

    fn size_hint(&self) -> SizeHint {
        match self {
            Body::Full(b) => SizeHint::with_exact(b.as_ref().map_or(0, |b| b.len() as u64)),
            // The length comes from the header the fault sets, not from what is sent.
            Body::Short { .. } => SizeHint::default(),
        }
    }
}

/// One answer before it becomes a hyper response.
#[derive(Clone, Debug)]
pub struct Reply {
    pub status: StatusCode,
    pub content_type: &'static str,
    pub headers: Vec<(HeaderName, HeaderValue)>,
    pub body: Bytes,
    /// Send only the first half of `body` while declaring its full length.
    pub truncate: bool,
}

impl Reply {
    pub fn json(status: StatusCode, value: &Value) -> Reply {
        let body = serde_json::to_vec(value).expect("a serde_json::Value always serializes");
        Reply::raw(status, "application/json", body)
    }

    pub fn error(status: StatusCode, message: impl Into<String>) -> Reply {
        Reply::json(status, &json!({"error": message.into()}))
    }

    pub fn raw(status: StatusCode, content_type: &'static str, body: impl Into<Bytes>) -> Reply {
        Reply {
            status,
            content_type,
            headers: Vec::new(),
            body: body.into(),
            truncate: false,
        }
    }

    /// Adds a header; values here come from this server (addresses, numbers), so a bad one is a
    /// bug, and it is dropped rather than sent malformed.
    pub fn with_header(mut self, name: HeaderName, value: &str) -> Reply {
        if let Ok(v) = HeaderValue::from_str(value) {
            self.headers.push((name, v));
        }
        self
    }

    pub fn into_response(self) -> Response<Body> {
        let len = self.body.len();
        let body = if self.truncate {
            Body::Short {
                part: Some(self.body.slice(..len / 2)),
                grace: Box::pin(tokio::time::sleep(SHORT_BODY_GRACE)),
            }
        } else {
            Body::Full(Some(self.body))
        };
        let mut res = Response::new(body);
        *res.status_mut() = self.status;
        let h = res.headers_mut();
        // An empty type is an answer without one, as a bare `201` from most servers is.
        if !self.content_type.is_empty() {
            h.insert(
                header::CONTENT_TYPE,
                HeaderValue::from_static(self.content_type),
            );
        }
        h.insert(header::CONTENT_LENGTH, HeaderValue::from(len));
        for (name, value) in self.headers {
            h.append(name, value);
        }
        res
    }
}

/// Reads a request body whole, within [`MAX_BODY`] and [`BODY_TIMEOUT`].
pub async fn read_body(body: Incoming) -> Result<Bytes, Reply> {
    let collect = Limited::new(body, MAX_BODY).collect();
    match tokio::time::timeout(BODY_TIMEOUT, collect).await {
        Err(_) => Err(Reply::error(
            StatusCode::REQUEST_TIMEOUT,
            "request body not received in time",
        )),
        Ok(Ok(collected)) => Ok(collected.to_bytes()),
        Ok(Err(e)) if e.is::<http_body_util::LengthLimitError>() => Err(Reply::error(
            StatusCode::PAYLOAD_TOO_LARGE,
            format!("request body larger than {MAX_BODY} bytes"),
        )),
        Ok(Err(e)) => Err(Reply::error(
            StatusCode::BAD_REQUEST,
            format!("cannot read the request body: {e}"),
        )),
    }
}

/// How many more response bytes a connection may write; `usize::MAX` for no limit. A handler sets
/// it to make the connection die at an exact point of its answer.
#[derive(Clone)]
pub struct Cutoff(Arc<AtomicUsize>);

impl Cutoff {
    fn new() -> Cutoff {
        Cutoff(Arc::new(AtomicUsize::new(usize::MAX)))
    }

    pub fn after(&self, bytes: usize) {
        self.0.store(bytes, Ordering::SeqCst);
    }
}

/// The connection as hyper sees it: the TLS (or TCP) stream, with writes cut off on demand.
struct CutIo<S> {
    inner: S,
    cut: Cutoff,
}

impl<S: AsyncRead + Unpin> AsyncRead for CutIo<S> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_read(cx, buf)
    }
}

impl<S: AsyncWrite + Unpin> AsyncWrite for CutIo<S> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        let left = self.cut.0.load(Ordering::SeqCst);
        if left == usize::MAX {
            return Pin::new(&mut self.inner).poll_write(cx, buf);
        }
        if left == 0 {
            // What was let through must reach the client before the connection dies.
            ready!(Pin::new(&mut self.inner).poll_flush(cx))?;
            return Poll::Ready(Err(io::Error::new(
                io::ErrorKind::ConnectionAborted,
                "connection dropped by a fault",
            )));
        }
        let n = ready!(Pin::new(&mut self.inner).poll_write(cx, &buf[..buf.len().min(left)]))?;
        self.cut.0.store(left - n, Ordering::SeqCst);
        Poll::Ready(Ok(n))
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        if self.cut.0.load(Ordering::SeqCst) == 0 {
            // An orderly TLS close_notify would tell the client the answer was complete.
            return Poll::Ready(Ok(()));
        }
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}

/// Where a request came in, for handlers and log lines.
#[derive(Clone, Debug)]
pub struct Conn {
    pub listener: String,
    pub local: SocketAddr,
}

/// Serves one listener until the process ends: every connection in its own task, TLS first when
/// `tls` is given. `handler` answers one request; it gets the connection's [`Cutoff`].
pub async fn serve<H, F>(tcp: TcpListener, tls: Option<TlsAcceptor>, conn: Conn, handler: H)
where
    H: Fn(Request<Incoming>, Conn, Cutoff) -> F + Clone + Send + Sync + 'static,
    F: Future<Output = Response<Body>> + Send + 'static,
{
    loop {
        let (stream, peer) = match tcp.accept().await {
            Ok(accepted) => accepted,
            Err(e) => {
                // Out of file descriptors, say: back off instead of spinning.
                eprintln!("{} {}: accept failed: {e}", conn.listener, conn.local);
                tokio::time::sleep(Duration::from_millis(100)).await;
                continue;
            }
        };
        let tls = tls.clone();
        let conn = conn.clone();
        let handler = handler.clone();
        tokio::spawn(async move {
            let _ = stream.set_nodelay(true);
            match tls {
                None => serve_connection(stream, conn, handler).await,
                Some(acceptor) => {
                    let started = Instant::now();
                    match tokio::time::timeout(HANDSHAKE_TIMEOUT, acceptor.accept(stream)).await {
                        Ok(Ok(tls_stream)) => {
                            // From the accepted TCP connection to the client's Finished: the
                            // server's work and the client's, and the round trips between.
                            eprintln!(
                                "{} {} TLS from {peer} in {:.3} ms",
                                conn.listener,
                                conn.local,
                                started.elapsed().as_secs_f64() * 1e3
                            );
                            serve_connection(tls_stream, conn, handler).await
                        }
                        Ok(Err(e)) => eprintln!(
                            "{} {} TLS handshake with {peer} failed: {e}",
                            conn.listener, conn.local
                        ),
                        Err(_) => eprintln!(
                            "{} {} TLS handshake with {peer} timed out after {} s",
                            conn.listener,
                            conn.local,
                            HANDSHAKE_TIMEOUT.as_secs()
                        ),
                    }
                }
            }
        });
    }
}

async fn serve_connection<S, H, F>(stream: S, conn: Conn, handler: H)
where
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
    H: Fn(Request<Incoming>, Conn, Cutoff) -> F + Clone + Send + Sync + 'static,
    F: Future<Output = Response<Body>> + Send + 'static,
{
    let cut = Cutoff::new();
    let io = TokioIo::new(CutIo {
        inner: stream,
        cut: cut.clone(),
    });
    let service = service_fn(move |req| {
        let answer = handler(req, conn.clone(), cut.clone());
        async move { Ok::<_, Infallible>(answer.await) }
    });
    // Errors here are clients going away and faults cutting connections: both expected, and
    // the request, if any, was already logged.
    let _ = http1::Builder::new()
        .timer(TokioTimer::new())
        .header_read_timeout(HEADER_TIMEOUT)
        .keep_alive(true)
        .serve_connection(io, service)
        .await;
}
