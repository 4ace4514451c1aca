//! HTTP: `/boot.ipxe`, `/ipxe?mac=&uuid=&platform=&buildarch=`, the images (and the iPXE
//! binaries for UEFI HTTP Boot) with HEAD, Range and conditional requests, `/healthz`,
//! `/metrics`, and the fleet view (`/`, `/api/machines`).

use std::net::SocketAddr;
use std::path::PathBuf;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::task::{Context, Poll};
use std::time::Duration;

use axum::Router;
use axum::body::Body;
use axum::extract::{ConnectInfo, Query, Request, State};
use axum::http::{HeaderValue, StatusCode, header};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use bytes::Bytes;
use flint_ipxe::{Arch, Mac, Selection, Uuid};
use http_body::Frame;
use serde::Deserialize;
use tokio::sync::{OwnedSemaphorePermit, Semaphore};

mod file_body;
mod files;
pub mod fleet;
mod server;

pub use server::{Limits, serve};

use crate::inventory::SharedInventory;
use crate::journey::{Journeys, ScriptServed};
use crate::metrics::Metrics;

pub struct Config {
    pub images: PathBuf,
    /// Image downloads streaming at once; more wait for a slot before their first byte.
    pub max_downloads: usize,
    /// A download whose client takes no byte for this long ends, and frees its slot.
    pub stall_timeout: Duration,
    /// Served at `/firmware/` so UEFI HTTP Boot clients can fetch the iPXE binaries.
    pub firmware: Option<PathBuf>,
    /// `boot.ipxe`, rendered once: it only depends on the public URL.
    pub boot_script: String,
}

#[derive(Clone)]
struct AppState {
    inventory: Arc<SharedInventory>,
    metrics: Arc<Metrics>,
    journeys: Arc<Journeys>,
    boot_script: Arc<str>,
}

impl AppState {
    /// The journeys, and where the inventory they are matched against comes from.
    fn fleet(&self) -> crate::journey::Fleet {
        let mut fleet = self.journeys.fleet();
        fleet.inventory = Some(self.inventory.origin());
        fleet
    }
}

pub fn router(
    config: Config,
    inventory: Arc<SharedInventory>,
    metrics: Arc<Metrics>,
    journeys: Arc<Journeys>,
) -> Router {
    let gate = Gate {
        metrics: metrics.clone(),
        journeys: journeys.clone(),
        downloads: Arc::new(Semaphore::new(config.max_downloads)),
    };
    let state = AppState {
        inventory,
        metrics: metrics.clone(),
        journeys,
        boot_script: config.boot_script.into(),
    };
    // One pool for both folders: they share the download slots.
    let buffers = Arc::default();
    let mut app = Router::new()
        .route("/", get(fleet::page))
        .route("/api/machines", get(fleet::machines))
        .route("/boot.ipxe", get(boot_ipxe))
        .route("/ipxe", get(ipxe))
        .route("/healthz", get(|| async { "ok\n" }))
        .route("/metrics", get(render_metrics))
        .nest_service(
            "/images",
            folder(config.images, &buffers, config.stall_timeout),
        );
    if let Some(dir) = config.firmware {
        app = app.nest_service("/firmware", folder(dir, &buffers, config.stall_timeout));
    }
    app.with_state(state)
        .layer(middleware::from_fn_with_state(gate, count))
}

/// A folder served read-only: GET and HEAD, anything else is a 405.
fn folder(
    dir: PathBuf,
    buffers: &Arc<file_body::Buffers>,
    stall: Duration,
) -> axum::routing::MethodRouter {
    get(files::serve).with_state(files::Folder::new(dir, buffers.clone(), stall))
}

async fn boot_ipxe(
    State(state): State<AppState>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
) -> Response {
    state.journeys.boot_script_served(peer.ip());
    script(state.boot_script.to_string())
}

#[derive(Debug, Deserialize)]
struct IpxeQuery {
    mac: Option<String>,
    uuid: Option<String>,
    platform: Option<String>,
    buildarch: Option<String>,
}

fn present(v: &Option<String>) -> Option<&str> {
    v.as_deref().filter(|s| !s.is_empty())
}

async fn ipxe(
    State(state): State<AppState>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    Query(q): Query<IpxeQuery>,
) -> Response {
    let mac = match present(&q.mac).map(|m| (m, Mac::parse(m))) {
        None => None,
        Some((_, Some(mac))) => Some(mac),
        Some((raw, None)) => {
            tracing::warn!(%peer, mac = raw, "/ipxe: unreadable mac");
            return (
                StatusCode::BAD_REQUEST,
                "mac: expected six hex pairs separated by '-' or ':'\n",
            )
                .into_response();
        }
    };
    // Firmware reports all-zero, all-FF or empty UUIDs often enough that an unreadable one is
    // treated as absent: the MAC or the policy decides.
    let uuid = present(&q.uuid).and_then(Uuid::parse);
    let arch = present(&q.buildarch).and_then(|b| Arch::from_ipxe(b, present(&q.platform)));
    let inventory = state.inventory.get();
    let selection = inventory.select(mac.as_ref(), uuid.as_ref(), arch);
    let label = selection.label();
    state.metrics.scripts.inc(&[label]);
    tracing::info!(
        %peer,
        mac = %mac.as_ref().map_or_else(|| "-".into(), Mac::to_string),
        uuid = %uuid.as_ref().map_or_else(|| "-".into(), Uuid::to_string),
        arch = arch.map_or("default", Arch::name),
        served = label,
        "script"
    );
    if let Some(mac) = mac {
        let images = match &selection {
            Selection::Node { images, .. } | Selection::Default { images, .. } => {
                std::iter::once(&images.kernel)
                    .chain(&images.initrds)
                    .cloned()
                    .collect()
            }
            Selection::Menu | Selection::Refuse => Vec::new(),
        };
        let name = match &selection {
            Selection::Node { node, .. } => Some(node.name.as_str()),
            _ => None,
        };
        state.journeys.script_served(ScriptServed {
            ip: peer.ip(),
            mac,
            uuid,
            name,
            served: label,
            images,
        });
    }
    script(inventory.render(&selection, arch))
}

fn script(text: String) -> Response {
    (
        [(
            header::CONTENT_TYPE,
            HeaderValue::from_static("text/plain; charset=utf-8"),
        )],
        text,
    )
        .into_response()
}

async fn render_metrics(State(state): State<AppState>) -> Response {
    (
        [(
            header::CONTENT_TYPE,
            HeaderValue::from_static("text/plain; version=0.0.4; charset=utf-8"),
        )],
        {
            let mut text = state.metrics.render();
            state.journeys.render_metrics(&mut text);
            text
        },
    )
        .into_response()
}

/// The route label: a fixed set, so clients cannot grow the metrics with made-up paths.
fn route(path: &str) -> &'static str {
    match path {
        "/boot.ipxe" => "/boot.ipxe",
        "/ipxe" => "/ipxe",
        "/healthz" => "/healthz",
        "/metrics" => "/metrics",
        "/" => "/",
        "/api/machines" => "/api/machines",
        p if p.starts_with("/images/") => "/images",
        p if p.starts_with("/firmware/") => "/firmware",
        _ => "other",
    }
}

/// Whether a request for this path is a download, which waits for a download slot.
pub(crate) fn is_download(path: &str) -> bool {
    matches!(route(path), "/images" | "/firmware")
}

/// What every request passes through: the counters, the journeys, and the slots of image
/// downloads.
#[derive(Clone)]
struct Gate {
    metrics: Arc<Metrics>,
    journeys: Arc<Journeys>,
    /// Each download streaming holds a buffer; unbounded, a boot storm's memory grew with the
    /// machines in flight (bench/storm: 6x from 100 to 1,000 machines).
    downloads: Arc<Semaphore>,
}

async fn count(State(gate): State<Gate>, req: Request, next: Next) -> Response {
    let route = route(req.uri().path());
    let slot = if is_download(req.uri().path()) {
        // Never closed, so acquiring only waits.
        let permit = gate.downloads.clone().acquire_owned().await.ok();
        permit.map(|permit| DownloadSlot::new(permit, gate.metrics.clone()))
    } else {
        None
    };
    // Kept for the log line of a server error; cloning a request's URI only shares its bytes,
    // where copying the path out would allocate on every request.
    let uri = req.uri().clone();
    let peer = req
        .extensions()
        .get::<ConnectInfo<SocketAddr>>()
        .map(|c| c.0.ip());
    let is_get = req.method() == axum::http::Method::GET;
    let response = next.run(req).await;
    let status = response.status();
    // A file's body leaving (200, or part of it for a Range): a step of the machine's journey
    // once the body is done or dropped.
    let delivery = peer
        .filter(|_| is_get && slot.is_some())
        .filter(|_| matches!(status, StatusCode::OK | StatusCode::PARTIAL_CONTENT))
        .map(|ip| Delivery {
            journeys: gate.journeys.clone(),
            ip,
            path: uri.path().to_owned(),
            whole_length: (status == StatusCode::OK)
                .then(|| response.headers().get(header::CONTENT_LENGTH))
                .flatten()
                .and_then(|v| v.to_str().ok()?.parse().ok()),
            sent: 0,
        });
    gate.metrics.http_requests.inc(&[route, status.as_str()]);
    if status.is_server_error() {
        gate.metrics.error(crate::metrics::ErrorKind::Http);
        tracing::warn!(
            path = uri.path(),
            status = status.as_u16(),
            "http: server error"
        );
    }
    response.map(|body| {
        Body::new(Counted {
            inner: body,
            metrics: gate.metrics,
            delivery,
            _slot: slot,
        })
    })
}

/// A download as a step of a journey: recorded when its body is done or dropped.
struct Delivery {
    journeys: Arc<Journeys>,
    ip: std::net::IpAddr,
    path: String,
    /// The file's length when the answer is the whole file (200); `None` for a part.
    whole_length: Option<u64>,
    sent: u64,
}

impl Drop for Delivery {
    fn drop(&mut self) {
        let whole = self.whole_length == Some(self.sent);
        if let Some(image) = self.path.strip_prefix("/images/") {
            self.journeys.image_sent(self.ip, image, self.sent, whole);
        } else if let Some(binary) = self.path.strip_prefix("/firmware/") {
            self.journeys
                .binary_sent(self.ip, binary, self.sent, whole, "http");
        }
    }
}

/// Counts body bytes as they are actually sent, so an aborted download counts what left; holds
/// the download's slot until the body is done or dropped.
struct Counted {
    inner: Body,
    metrics: Arc<Metrics>,
    delivery: Option<Delivery>,
    _slot: Option<DownloadSlot>,
}

/// A download's slot, counted in `flint_boot_http_downloads_in_flight` while it is held.
struct DownloadSlot {
    _permit: OwnedSemaphorePermit,
    metrics: Arc<Metrics>,
}

impl DownloadSlot {
    fn new(permit: OwnedSemaphorePermit, metrics: Arc<Metrics>) -> Self {
        metrics.downloads_in_flight.fetch_add(1, Ordering::Relaxed);
        Self {
            _permit: permit,
            metrics,
        }
    }
}

impl Drop for DownloadSlot {
    fn drop(&mut self) {
        self.metrics
            .downloads_in_flight
            .fetch_sub(1, Ordering::Relaxed);
    }
}

impl http_body::Body for Counted {
    type Data = Bytes;
    type Error = axum::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, axum::Error>>> {
        let polled = Pin::new(&mut self.inner).poll_frame(cx);
        if let Poll::Ready(Some(Ok(frame))) = &polled
            && let Some(data) = frame.data_ref()
        {
            self.metrics
                .http_bytes
                .fetch_add(data.len() as u64, Ordering::Relaxed);
            if let Some(delivery) = self.delivery.as_mut() {
                delivery.sent += data.len() as u64;
            }
        }
        polled
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> http_body::SizeHint {
        self.inner.size_hint()
    }
}
