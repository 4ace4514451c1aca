//! The connections: accepted up to a bound, each read under a header timeout, and those idle in
//! keep-alive closed, oldest first, to make room when the bound is reached.

use std::collections::HashMap;
use std::convert::Infallible;
use std::pin::{Pin, pin};
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::Duration;

use axum::Router;
use axum::body::Body;
use axum::extract::ConnectInfo;
use bytes::Bytes;
use http_body::Frame;
use hyper::body::Incoming;
use hyper_util::rt::{TokioIo, TokioTimer};
use tokio::sync::Notify;
use tower_service::Service as _;

pub struct Limits {
    /// From the moment a connection waits for a request (its accept, or the end of the previous
    /// response) to the end of that request's head.
    pub header_timeout: Duration,
    /// Connections open at once.
    pub max_connections: usize,
}

/// One open connection, as the accept loop sees it.
struct Tracked {
    /// Requests whose response is not yet over: while there is one, the connection is busy.
    in_flight: AtomicUsize,
    /// When its last response ended, as a place in the order responses end in (from 1); 0
    /// before the first: only a connection that has served a request is idle in keep-alive.
    last_done: AtomicU64,
    /// Chosen to make room; it is no longer counted against the bound.
    evicted: AtomicBool,
    evict: Notify,
}

struct Connections {
    open: Mutex<Open>,
    max: usize,
    /// Counts responses ended: a clock that cannot give two connections the same time.
    ended: AtomicU64,
    /// A connection closed or went idle: room may be made now.
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
            .filter(|c| c.in_flight.load(Ordering::Acquire) == 0)
            .filter_map(|c| match c.last_done.load(Ordering::Relaxed) {
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
}

/// Serves until the future is dropped.
pub async fn serve(
    listener: tokio::net::TcpListener,
    app: Router,
    limits: Limits,
) -> std::io::Result<()> {
    let connections = Arc::new(Connections {
        open: Mutex::default(),
        max: limits.max_connections,
        ended: AtomicU64::new(0),
        freed: Notify::new(),
    });
    let mut builder = hyper::server::conn::http1::Builder::new();
    builder
        .timer(TokioTimer::new())
        .header_read_timeout(limits.header_timeout);
    let builder = Arc::new(builder);
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
        connections.room().await;
        let tracked = Arc::new(Tracked {
            in_flight: AtomicUsize::new(0),
            last_done: AtomicU64::new(0),
            evicted: AtomicBool::new(false),
            evict: Notify::new(),
        });
        connections.lock().all.insert(id, tracked.clone());
        let (connections, builder, router) = (connections.clone(), builder.clone(), app.clone());
        tokio::spawn(async move {
            let service = {
                let (tracked, connections) = (tracked.clone(), connections.clone());
                hyper::service::service_fn(move |mut req: hyper::Request<Incoming>| {
                    req.extensions_mut().insert(ConnectInfo(peer));
                    tracked.in_flight.fetch_add(1, Ordering::AcqRel);
                    let done = Done {
                        tracked: tracked.clone(),
                        connections: connections.clone(),
                    };
                    let response = router.clone().call(req);
                    async move {
                        let response = response.await?;
                        Ok::<_, Infallible>(
                            response.map(|inner| Body::new(Guarded { inner, _done: done })),
                        )
                    }
                })
            };
            let mut conn = pin!(builder.serve_connection(TokioIo::new(stream), service));
            let served = tokio::select! {
                served = conn.as_mut() => served,
                () = tracked.evict.notified() => {
                    // Idle in keep-alive, so this closes it now.
                    conn.as_mut().graceful_shutdown();
                    conn.await
                }
            };
            if let Err(e) = served {
                tracing::debug!(%peer, error = %e, "http: connection ended");
            }
            let mut open = connections.lock();
            open.all.remove(&id);
            if tracked.evicted.load(Ordering::Relaxed) {
                open.evicted -= 1;
            }
            drop(open);
            connections.freed.notify_one();
        });
    }
    Ok(())
}

/// A response over: its connection may be idle again.
struct Done {
    tracked: Arc<Tracked>,
    connections: Arc<Connections>,
}

impl Drop for Done {
    fn drop(&mut self) {
        let order = self.connections.ended.fetch_add(1, Ordering::Relaxed) + 1;
        self.tracked.last_done.store(order, Ordering::Relaxed);
        if self.tracked.in_flight.fetch_sub(1, Ordering::AcqRel) == 1 {
            self.connections.freed.notify_one();
        }
    }
}

/// A response's body, which marks its request done when hyper has taken all of it or dropped it.
struct Guarded {
    inner: Body,
    _done: Done,
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
