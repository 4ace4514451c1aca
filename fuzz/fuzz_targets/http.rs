//! HTTP: any request a machine (or anyone on the boot network) sends goes through flint-boot's
//! whole router, as the server runs it. Whatever the path, query and conditional or range
//! headers: no 5xx, no byte of a file outside the served folders, a body as long as its
//! Content-Length, and a 206 whose bytes are the ones its Content-Range names.
//!
//! Input: the first line is a method selector (first byte) and the request target; each further
//! line is a `Name: value` header.
#![no_main]

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::{Arc, OnceLock};

use axum::Router;
use axum::body::Body;
use axum::extract::ConnectInfo;
use axum::http::{HeaderName, HeaderValue, Method, Request, StatusCode, Uri, header};
use flint_boot::http::{Config, router};
use flint_boot::inventory::FileSource;
use flint_boot::metrics::Metrics;
use http_body_util::BodyExt;
use libfuzzer_sys::fuzz_target;
use tower::ServiceExt;

/// What no answer may ever contain: the content of a file beside the served folders.
const SECRET: &[u8] = b"flint-fuzz: outside the served folders";

struct World {
    runtime: tokio::runtime::Runtime,
    router: Router,
    /// `/images/debian/vmlinuz`, for checking the bytes of ranges.
    kernel: Vec<u8>,
}

fn world() -> &'static World {
    static WORLD: OnceLock<World> = OnceLock::new();
    WORLD.get_or_init(|| {
        let base: PathBuf = std::env::temp_dir().join(format!("flint-fuzz-http-{}", std::process::id()));
        let images = base.join("images");
        let firmware = base.join("firmware");
        std::fs::create_dir_all(images.join("debian")).unwrap();
        std::fs::create_dir_all(&firmware).unwrap();
        let kernel: Vec<u8> = (0..5000u32).map(|i| (i % 251) as u8).collect();
        std::fs::write(images.join("debian/vmlinuz"), &kernel).unwrap();
        std::fs::write(images.join("empty"), b"").unwrap();
        std::fs::write(firmware.join("ipxe.efi"), b"MZ").unwrap();
        std::fs::write(base.join("secret"), SECRET).unwrap();
        let inventory = base.join("inventory.json");
        std::fs::write(
            &inventory,
            r#"{"profiles": {"worker": {"kernel": "debian/vmlinuz", "initrds": ["debian/initrd.img"]}},
                "nodes": [{"name": "node01", "mac": "52:54:00:12:34:56", "profile": "worker",
                           "uuid": "01234567-89ab-cdef-0123-456789abcdef"}],
                "unknown": {"policy": "menu"}}"#,
        )
        .unwrap();
        let metrics = Arc::new(Metrics::default());
        let (shared, _) = FileSource::load(&inventory, metrics.clone()).unwrap();
        let config = Config {
            images,
            max_downloads: 4,
            stall_timeout: std::time::Duration::from_secs(30),
            firmware: Some(firmware),
            boot_script: flint_ipxe::render_boot_ipxe(None).unwrap(),
        };
        World {
            runtime: tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .unwrap(),
            router: router(
                config,
                shared,
                metrics,
                Arc::new(flint_boot::journey::Journeys::new("fuzz", Default::default())),
            ),
            kernel,
        }
    })
}

/// The request the input describes, or None when it is not one HTTP could carry.
fn request(data: &[u8]) -> Option<Request<Body>> {
    let mut lines = data.split(|b| *b == b'\n');
    let first = lines.next()?;
    let (&selector, target) = first.split_first()?;
    let method = [Method::GET, Method::HEAD, Method::POST, Method::OPTIONS]
        [usize::from(selector % 4)]
    .clone();
    let uri = Uri::try_from(target).ok()?;
    uri.path_and_query()?;
    let mut req = Request::builder()
        .method(method)
        .uri(uri)
        .body(Body::empty())
        .ok()?;
    for line in lines {
        let Some(colon) = line.iter().position(|b| *b == b':') else {
            continue;
        };
        let (Ok(name), Ok(value)) = (
            HeaderName::from_bytes(&line[..colon]),
            HeaderValue::from_bytes(line[colon + 1..].trim_ascii()),
        ) else {
            continue;
        };
        req.headers_mut().append(name, value);
    }
    let peer: SocketAddr = "192.0.2.10:1024".parse().unwrap();
    req.extensions_mut().insert(ConnectInfo(peer));
    Some(req)
}

/// `bytes FIRST-LAST/SIZE` of a 206.
fn content_range(value: &HeaderValue) -> (usize, usize, usize) {
    let text = value.to_str().unwrap();
    let (range, size) = text
        .strip_prefix("bytes ")
        .unwrap()
        .split_once('/')
        .unwrap();
    let (first, last) = range.split_once('-').unwrap();
    (
        first.parse().unwrap(),
        last.parse().unwrap(),
        size.parse().unwrap(),
    )
}

fuzz_target!(|data: &[u8]| {
    let Some(req) = request(data) else {
        return;
    };
    let world = world();
    let method = req.method().clone();
    let path = req.uri().path().to_owned();
    let (status, headers, body) = world.runtime.block_on(async {
        let response = world.router.clone().oneshot(req).await.unwrap();
        let (parts, mut body) = response.into_parts();
        // Chunk by chunk, each dropped before the next is asked for, as hyper writes them.
        let mut bytes = Vec::new();
        let mut failed = None;
        while let Some(frame) = body.frame().await {
            match frame {
                Ok(frame) => bytes.extend_from_slice(frame.data_ref().map_or(&[][..], |d| &d[..])),
                Err(e) => {
                    failed = Some(e);
                    break;
                }
            }
        }
        (parts.status, parts.headers, failed.map_or(Ok(bytes), Err))
    });
    assert!(!status.is_server_error(), "{method} {path:?}: {status}");
    let body = body.unwrap_or_else(|e| panic!("{method} {path:?}: the body failed: {e}"));
    assert!(
        !body.windows(SECRET.len()).any(|w| w == SECRET),
        "{method} {path:?} answered a file outside the served folders"
    );
    if method == Method::HEAD {
        assert!(body.is_empty(), "HEAD {path:?} with a body");
        return;
    }
    if let Some(length) = headers.get(header::CONTENT_LENGTH) {
        let length: usize = length.to_str().unwrap().parse().unwrap();
        assert_eq!(
            length,
            body.len(),
            "{method} {path:?}: Content-Length and body differ"
        );
    }
    if status == StatusCode::PARTIAL_CONTENT {
        let (first, last, size) = content_range(&headers[header::CONTENT_RANGE]);
        assert!(
            first <= last && last < size && body.len() == last - first + 1,
            "{headers:?}"
        );
        if size == world.kernel.len() {
            assert_eq!(
                &body[..],
                &world.kernel[first..=last],
                "{method} {path:?}: wrong bytes"
            );
        }
    }
});
