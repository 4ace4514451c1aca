//! The connections: accepted up to a bound; between requests parked as bare sockets; a bounded
//! number at a time read and answered by hyper, each request's head under the header timeout;
//! and those parked in keep-alive closed, oldest first, to make room when the bound is reached.
//!
//! Why park: hyper gives every connection it serves two 8 KiB buffers (its read buffer and the
//! head of its write buffer, `INIT_BUFFER_SIZE` in hyper's `proto/h1/io.rs`) and keeps them
//! until the connection closes, so 10,000 machines in a boot storm, each holding a connection
//! while it waits its turn for a download, cost about 21 KiB each: bench/storm's flint-boot
//! peaked at 205 MiB against 39 MiB for 1,000. A connection that waits for its next request, or
//! for its turn to be served, needs only its socket; nginx frees an idle keep-alive
//! connection's buffers the same way. hyper serves one request at a time on a connection and
//! gives the socket back (`without_shutdown`, `into_parts`) with any bytes it read ahead.

use std::collections::HashMap;
use std::convert::Infallible;
use std::future::Future;
use std::io;
use std::pin::{Pin, pin};
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::Duration;

use axum::Router;
use axum::body::Body;
use axum::extract::ConnectInfo;
use bytes::{Buf, Bytes, BytesMut};
use http_body::Frame;
use hyper::body::Incoming;
use hyper_util::rt::{TokioIo, TokioTimer};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::TcpStream;
use tokio::sync::{Notify, Semaphore};
use tokio::time::Instant;
use tower_service::Service as _;

pub struct Limits {
    /// From the moment a connection waits for a request (its accept, or the end of the previous
    /// response) to the end of that request's head; the time it waits for its turn to be
    /// served does not count, that is the server's.
    pub header_timeout: Duration,
    /// Connections open at once.
    pub max_connections: usize,
    /// Requests read or answered at once, downloads aside; the connections whose request
    /// waits for its turn cost only their socket.
    pub max_requests: usize,
    /// Downloads read or answered at once: the download slots. A download is served only once
    /// it would get a slot, so scripts never queue behind the downloads of a storm.
    pub max_downloads: usize,
}

/// One open connection, as the accept loop sees it.
struct Tracked {
    /// Since when it has been parked in keep-alive, as a place in the order connections park
    /// (from 1); 0 while it is served or before its first request: only a connection that has
    /// served a request is idle in keep-alive.
    idle_since: AtomicU64,
    /// Chosen to make room; it is no longer counted against the bound.
    evicted: AtomicBool,
    evict: Notify,
}

struct Connections {
    open: Mutex<Open>,
    max: usize,
    /// Counts connections parking: a clock that cannot give two connections the same time.
    parked: AtomicU64,
    /// A connection closed or parked: room may be made now.
    freed: Notify,
}

#[derive(Default)]
struct Open {
    all: HashMap<u64, Arc<Tracked>>,
    /// Of `all`, those chosen to make room and closing.
    evicted: usize,
}

impl Connections {
    fn lock(&self) -> std::sync::MutexGuard<'_, Open> {
        // The map stays valid whatever panicked while holding it.
        self.open.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Whether another connection may be accepted, closing the connection idle in keep-alive
    /// the longest if that is what it takes.
    fn make_room(&self) -> bool {
        let mut open = self.lock();
        // Counted, not scanned: a storm accepts thousands of connections with thousands open.
        if open.all.len() - open.evicted < self.max {
            return true;
        }
        let idle = open
            .all
            .values()
            .filter(|c| !c.evicted.load(Ordering::Relaxed))
            .filter_map(|c| match c.idle_since.load(Ordering::Relaxed) {
                0 => None,
                at => Some((at, c)),
            })
            .min_by_key(|(at, _)| *at);
        let Some((_, oldest)) = idle else {
            return false;
        };
        oldest.evicted.store(true, Ordering::Relaxed);
        oldest.evict.notify_one();
        open.evicted += 1;
        true
    }

    async fn room(&self) {
        loop {
            let mut freed = pin!(self.freed.notified());
            freed.as_mut().enable();
            if self.make_room() {
                return;
            }
            freed.await;
        }
    }

    /// The connection is served from now on, unless it was just chosen to make room: the lock
    /// makes the choice and this step one order, so a connection is never closed mid-request.
    fn unpark(&self, tracked: &Tracked) -> bool {
        let _open = self.lock();
        if tracked.evicted.load(Ordering::Relaxed) {
            return false;
        }
        tracked.idle_since.store(0, Ordering::Relaxed);
        true
    }

    fn park(&self, tracked: &Tracked) {
        let at = self.parked.fetch_add(1, Ordering::Relaxed) + 1;
        tracked.idle_since.store(at, Ordering::Relaxed);
        self.freed.notify_one();
    }
}

/// What every connection's task shares.
struct Shared {
    connections: Connections,
    requests: Semaphore,
    downloads: Semaphore,
    header_timeout: Duration,
    router: Router,
}

/// Serves until the future is dropped.
pub async fn serve(
    listener: tokio::net::TcpListener,
    app: Router,
    limits: Limits,
) -> std::io::Result<()> {
    let shared = Arc::new(Shared {
        connections: Connections {
            open: Mutex::default(),
            max: limits.max_connections,
            parked: AtomicU64::new(0),
            freed: Notify::new(),
        },
        requests: Semaphore::new(limits.max_requests),
        downloads: Semaphore::new(limits.max_downloads),
        header_timeout: limits.header_timeout,
        router: app,
    });
    for id in 0u64.. {
        let (stream, peer) = match listener.accept().await {
            Ok(accepted) => accepted,
            Err(e) => {
                // Out of descriptors, most likely: the connections open end in time.
                tracing::warn!(error = %e, "http: accept failed");
                tokio::time::sleep(Duration::from_millis(100)).await;
                continue;
            }
        };
        // Room is made for a connection that came, not ahead of one: that would close an idle
        // connection for nothing. While this one waits for room, the next wait in the listen
        // queue, not in our memory.
        shared.connections.room().await;
        let tracked = Arc::new(Tracked {
            idle_since: AtomicU64::new(0),
            evicted: AtomicBool::new(false),
            evict: Notify::new(),
        });
        shared.connections.lock().all.insert(id, tracked.clone());
        let shared = shared.clone();
        tokio::spawn(async move {
            connection(&shared, &tracked, stream, peer).await;
            let mut open = shared.connections.lock();
            open.all.remove(&id);
            if tracked.evicted.load(Ordering::Relaxed) {
                open.evicted -= 1;
            }
            drop(open);
            shared.connections.freed.notify_one();
        });
    }
    Ok(())
}

/// One connection, request after request, until the client closes it, a request fails, it
/// waits longer than the header timeout, or it is chosen to make room.
async fn connection(
    shared: &Shared,
    tracked: &Tracked,
    stream: TcpStream,
    peer: std::net::SocketAddr,
) {
    let mut io = Parked {
        read_ahead: Bytes::new(),
        stream,
    };
    loop {
        let waiting = Instant::now();
        let download = if io.read_ahead.is_empty() {
            // Boxed, as serving is: in a storm a connection waits for its turn far longer than
            // for its request, and its task should hold only what that wait needs.
            match Box::pin(next_request(shared, tracked, &io.stream)).await {
                Some(download) => download,
                None => return,
            }
        } else {
            wants_download(&io.read_ahead)
        };
        // The client's time ends here; the wait for a turn is the server's.
        let waited = waiting.elapsed();
        if !shared.connections.unpark(tracked) {
            return;
        }
        let turns = if download {
            &shared.downloads
        } else {
            &shared.requests
        };
        let Ok(turn) = turns.acquire().await else {
            return;
        };
        let head_timeout = shared.header_timeout.saturating_sub(waited);
        // Boxed: the task of a parked connection keeps only the socket, not hyper's state.
        match Box::pin(serve_one(shared, io, peer, head_timeout)).await {
            Ok(Some(parked)) => io = parked,
            Ok(None) => return,
            Err(e) => {
                tracing::debug!(%peer, error = %e, "http: connection ended");
                return;
            }
        }
        drop(turn);
        shared.connections.park(tracked);
    }
}

/// Waits for the first bytes of the connection's next request, and says whether it is a
/// download; None when the connection is to end: closed by the client, failed, silent for the
/// header timeout, or chosen to make room.
async fn next_request(shared: &Shared, tracked: &Tracked, stream: &TcpStream) -> Option<bool> {
    let mut line = [0u8; 64];
    // A peek, not a wait for readiness: readiness left over from hyper's last read would say
    // there is a request when there is none.
    let peeked = tokio::time::timeout(shared.header_timeout, stream.peek(&mut line));
    tokio::select! {
        peeked = peeked => match peeked {
            Ok(Ok(n)) if n > 0 => Some(wants_download(&line[..n])),
            _ => None,
        },
        () = tracked.evict.notified() => None,
    }
}

/// Whether the request beginning with `head` is a download, by its request line's target as
/// far as it has arrived; one not yet far enough is taken for a script. Only a guess to pick a
/// queue: what hyper parses decides what is served.
fn wants_download(head: &[u8]) -> bool {
    let target = head.split(|&b| b == b' ').nth(1).unwrap_or_default();
    std::str::from_utf8(target).is_ok_and(super::is_download)
}

/// Serves the connection's next request (and any the client sent behind it before it was
/// answered); gives the socket back once the answer is sent, or None if the connection ended.
async fn serve_one(
    shared: &Shared,
    io: Parked,
    peer: std::net::SocketAddr,
    head_timeout: Duration,
) -> hyper::Result<Option<Parked>> {
    let round = Arc::new(Round::default());
    let service = {
        let (round, router) = (round.clone(), shared.router.clone());
        hyper::service::service_fn(move |mut req: hyper::Request<Incoming>| {
            // A body we do not read would be taken for the next request's head.
            if !keeps_alive(&req) || !http_body::Body::is_end_stream(req.body()) {
                round.closes.store(true, Ordering::Relaxed);
            }
            round.in_flight.fetch_add(1, Ordering::Relaxed);
            req.extensions_mut().insert(ConnectInfo(peer));
            let answered = Answered(round.clone());
            let response = router.clone().call(req);
            Box::pin(async move {
                let response = response.await?;
                Ok::<_, Infallible>(response.map(|inner| {
                    Body::new(Guarded {
                        inner,
                        _answered: answered,
                    })
                }))
            })
        })
    };
    let mut builder = hyper::server::conn::http1::Builder::new();
    builder
        .timer(TokioTimer::new())
        .header_read_timeout(head_timeout.max(Duration::from_millis(1)));
    let mut conn = builder.serve_connection(TokioIo::new(io), service);
    let mut answer_sent = pin!(round.answered.notified());
    let mut parking = false;
    std::future::poll_fn(|cx| {
        // Asked to stop with no request in flight (none can start between this check and the
        // call: hyper runs only inside the polls below), hyper closes the connection once the
        // last answer is flushed, without shutting the socket down; its write side closes only
        // after that flush. With a request in flight, its answer would go out as the
        // connection's last, and hyper sends the end of such an answer only in its own
        // shutdown: so the stop waits for the request to be answered, and a connection the
        // client asked to close ends through hyper's own close.
        if !parking
            && !round.closes.load(Ordering::Relaxed)
            && round.in_flight.load(Ordering::Relaxed) == 0
            && answer_sent.as_mut().poll(cx).is_ready()
        {
            Pin::new(&mut conn).graceful_shutdown();
            parking = true;
        }
        if parking {
            conn.poll_without_shutdown(cx)
        } else {
            Pin::new(&mut conn).poll(cx)
        }
    })
    .await?;
    if !parking {
        // The client closed the connection, its request could not be read, or it asked for
        // the connection to close after the answer.
        return Ok(None);
    }
    let parts = conn.into_parts();
    let Parked { read_ahead, stream } = parts.io.into_inner();
    // What hyper read and did not use comes first, then what it did not read of ours. Copied:
    // hyper's `read_buf`, even empty, holds on to its whole 8 KiB buffer.
    let read_ahead = if parts.read_buf.is_empty() && read_ahead.is_empty() {
        Bytes::new()
    } else {
        let mut both = BytesMut::with_capacity(parts.read_buf.len() + read_ahead.len());
        both.extend_from_slice(&parts.read_buf);
        both.extend_from_slice(&read_ahead);
        both.freeze()
    };
    Ok(Some(Parked { read_ahead, stream }))
}

/// Whether the client wants the connection kept open after this request (RFC 9112 §9.3):
/// HTTP/1.1 unless it says `close`, HTTP/1.0 only if it says `keep-alive`. hyper answers such a
/// request with the connection closing; given the socket back, we must close it ourselves.
fn keeps_alive<B>(req: &hyper::Request<B>) -> bool {
    let has = |option: &str| {
        req.headers()
            .get_all(hyper::header::CONNECTION)
            .iter()
            .filter_map(|v| v.to_str().ok())
            .flat_map(|v| v.split(','))
            .any(|o| o.trim().eq_ignore_ascii_case(option))
    };
    match req.version() {
        hyper::Version::HTTP_11 => !has("close"),
        hyper::Version::HTTP_10 => has("keep-alive"),
        _ => false,
    }
}

/// A connection's socket and the bytes of its next request already read from it.
struct Parked {
    read_ahead: Bytes,
    stream: TcpStream,
}

impl AsyncRead for Parked {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        if self.read_ahead.is_empty() {
            return Pin::new(&mut self.stream).poll_read(cx, buf);
        }
        let n = self.read_ahead.len().min(buf.remaining());
        buf.put_slice(&self.read_ahead[..n]);
        self.read_ahead.advance(n);
        Poll::Ready(Ok(()))
    }
}

impl AsyncWrite for Parked {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.stream).poll_write(cx, buf)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.stream).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.stream.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.stream).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.stream).poll_shutdown(cx)
    }
}

/// What the requests of one `serve_one` tell it.
#[derive(Default)]
struct Round {
    /// Requests dispatched and not yet answered (hyper answers one at a time: 0 or 1).
    in_flight: AtomicUsize,
    /// A request asked for the connection to close after its answer.
    closes: AtomicBool,
    answered: Notify,
}

/// A response over: its connection may be parked.
struct Answered(Arc<Round>);

impl Drop for Answered {
    fn drop(&mut self) {
        self.0.in_flight.fetch_sub(1, Ordering::Relaxed);
        self.0.answered.notify_one();
    }
}

/// A response's body, which marks its request answered when hyper has taken all of it or
/// dropped it.
struct Guarded {
    inner: Body,
    _answered: Answered,
}

impl http_body::Body for Guarded {
    type Data = Bytes;
    type Error = axum::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, axum::Error>>> {
        Pin::new(&mut self.inner).poll_frame(cx)
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> http_body::SizeHint {
        self.inner.size_hint()
    }
}
