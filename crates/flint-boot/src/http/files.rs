//! A folder served read-only over GET and HEAD, held to RFC 9110's conditional and range rules:
//! `ETag` / `Last-Modified` with `If-None-Match` / `If-Modified-Since` (304),
//! `If-Match` / `If-Unmodified-Since` (412), and on GET one `Range` (206, or 416 past the end)
//! under `If-Range`. Nothing outside the folder is reachable, however
//! the path is spelled; a folder is never listed and never redirected to (UEFI HTTP Boot does
//! not follow redirects): it is a 404 like a missing file.

use std::fs::{File, Metadata};
use std::path::{Component, Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use axum::body::Body;
use axum::extract::{Request, State};
use axum::http::{HeaderMap, HeaderValue, Method, StatusCode, header};
use axum::response::{IntoResponse, Response};

use super::file_body::{Buffers, FileBody};
use crate::served::{self, Refused};

pub struct Folder {
    root: PathBuf,
    buffers: Arc<Buffers>,
    /// How long a download may go without the client taking a byte.
    stall: Duration,
}

impl Folder {
    pub fn new(root: PathBuf, buffers: Arc<Buffers>, stall: Duration) -> Arc<Self> {
        Arc::new(Self {
            root,
            buffers,
            stall,
        })
    }
}

/// The handler of every GET and HEAD below the folder's mount point.
pub async fn serve(State(folder): State<Arc<Folder>>, req: Request) -> Response {
    let Some(name) = resolve(req.uri().path()) else {
        return StatusCode::NOT_FOUND.into_response();
    };
    let content_type = mime(&name);
    let root = folder.root.clone();
    let opened = tokio::task::spawn_blocking(move || {
        served::open(&root, &name).map(|(file, meta)| (file, root.join(name), meta))
    })
    .await;
    let (file, path, meta) = match opened {
        Ok(Ok(opened)) => opened,
        Ok(Err(Refused::Io(e))) => {
            tracing::warn!(path = req.uri().path(), error = %e, "images: cannot open");
            return StatusCode::INTERNAL_SERVER_ERROR.into_response();
        }
        Ok(Err(refused)) => {
            tracing::debug!(path = req.uri().path(), why = %refused, "images: not served");
            return StatusCode::NOT_FOUND.into_response();
        }
        Err(e) => {
            tracing::warn!(path = req.uri().path(), error = %e, "images: open did not finish");
            return StatusCode::INTERNAL_SERVER_ERROR.into_response();
        }
    };
    respond(
        req.method(),
        req.headers(),
        (file, path),
        &folder,
        &meta,
        content_type,
    )
}

/// The name a request path gives inside the folder, or None for one that names a folder or
/// could leave it (`crate::served` holds the rule). The path is percent-decoded first, so
/// `%2e%2e` and `%2f` are caught too.
fn resolve(uri_path: &str) -> Option<PathBuf> {
    if uri_path.ends_with('/') {
        return None;
    }
    // A `%` not followed by two hex digits stays as it is; a result that is not UTF-8 names
    // no file we serve.
    let decoded = percent_encoding::percent_decode_str(uri_path.trim_start_matches('/'))
        .decode_utf8()
        .ok()?;
    if decoded.contains('\0') {
        return None;
    }
    let mut name = PathBuf::new();
    for component in Path::new(decoded.as_ref()).components() {
        match component {
            Component::Normal(part) => name.push(part),
            Component::CurDir => {}
            Component::RootDir | Component::ParentDir | Component::Prefix(_) => return None,
        }
    }
    Some(name)
}

fn mime(path: &Path) -> HeaderValue {
    HeaderValue::from_static(
        mime_guess::from_path(path)
            .first_raw()
            .unwrap_or("application/octet-stream"),
    )
}

fn respond(
    method: &Method,
    headers: &HeaderMap,
    opened: (File, PathBuf),
    folder: &Folder,
    meta: &Metadata,
    content_type: HeaderValue,
) -> Response {
    let size = meta.len();
    let modified = meta.modified().ok().filter(|t| *t >= UNIX_EPOCH);
    let etag = modified.map(|t| etag(size, t));
    let mut validators = HeaderMap::new();
    if let Some(t) = modified {
        validators.insert(header::LAST_MODIFIED, http_date(t));
    }
    if let Some(tag) = &etag {
        validators.insert(header::ETAG, tag.clone());
    }
    match precondition(headers, etag.as_ref(), modified) {
        Some(StatusCode::NOT_MODIFIED) => {
            return (StatusCode::NOT_MODIFIED, validators).into_response();
        }
        Some(status) => return status.into_response(),
        None => {}
    }
    validators.insert(header::ACCEPT_RANGES, HeaderValue::from_static("bytes"));
    // RFC 9110 §14.2: range handling is defined for GET only; a HEAD is answered as if it had
    // no Range. §13.1.5: a Range for another version of the file than If-Range names is
    // ignored, so a resumed download gets the whole new file, not its tail on the old head.
    let range = headers
        .get(header::RANGE)
        .filter(|_| *method == Method::GET && if_range(headers, etag.as_ref(), modified))
        .and_then(|v| v.to_str().ok())
        .map_or(Ranged::Whole, |v| byte_range(v, size));
    let (status, start, len) = match range {
        Ranged::Whole => (StatusCode::OK, 0, size),
        Ranged::Part(start, end) => {
            validators.insert(
                header::CONTENT_RANGE,
                header_value(format!("bytes {start}-{end}/{size}")),
            );
            (StatusCode::PARTIAL_CONTENT, start, end - start + 1)
        }
        Ranged::Unsatisfiable => {
            validators.insert(
                header::CONTENT_RANGE,
                header_value(format!("bytes */{size}")),
            );
            return (StatusCode::RANGE_NOT_SATISFIABLE, validators).into_response();
        }
    };
    validators.insert(header::CONTENT_TYPE, content_type);
    validators.insert(header::CONTENT_LENGTH, HeaderValue::from(len));
    let body = if method == Method::HEAD {
        Body::empty()
    } else {
        Body::new(FileBody::new(
            opened,
            start,
            len,
            folder.buffers.clone(),
            folder.stall,
        ))
    };
    (status, validators, body).into_response()
}

/// A strong validator that changes whenever the file is replaced or rewritten: size and
/// modification time to the nanosecond.
fn etag(size: u64, modified: SystemTime) -> HeaderValue {
    let t = modified.duration_since(UNIX_EPOCH).unwrap_or_default();
    header_value(format!(
        "\"{size:x}-{:x}.{:x}\"",
        t.as_secs(),
        t.subsec_nanos()
    ))
}

fn http_date(t: SystemTime) -> HeaderValue {
    header_value(httpdate::fmt_http_date(t))
}

/// The values built here are ASCII (digits, hex, quotes, an HTTP date).
fn header_value(s: String) -> HeaderValue {
    HeaderValue::try_from(s).unwrap_or_else(|_| HeaderValue::from_static(""))
}

/// The conditional headers, in RFC 9110's order (13.2.2): Some(412) or Some(304) when a
/// condition fails, None to serve the file.
fn precondition(
    headers: &HeaderMap,
    etag: Option<&HeaderValue>,
    modified: Option<SystemTime>,
) -> Option<StatusCode> {
    let modified = modified.map(whole_seconds);
    if let Some(list) = list(headers, header::IF_MATCH) {
        if !etag.is_some_and(|tag| matches_any(&list, tag, false)) {
            return Some(StatusCode::PRECONDITION_FAILED);
        }
    } else if let (Some(since), Some(m)) = (date(headers, header::IF_UNMODIFIED_SINCE), modified)
        && m > since
    {
        return Some(StatusCode::PRECONDITION_FAILED);
    }
    if let Some(list) = list(headers, header::IF_NONE_MATCH) {
        if etag.is_some_and(|tag| matches_any(&list, tag, true)) {
            return Some(StatusCode::NOT_MODIFIED);
        }
    } else if let (Some(since), Some(m)) = (date(headers, header::IF_MODIFIED_SINCE), modified)
        && m <= since
    {
        return Some(StatusCode::NOT_MODIFIED);
    }
    None
}

/// HTTP dates have whole seconds: the file's time is compared at that precision.
fn whole_seconds(t: SystemTime) -> SystemTime {
    UNIX_EPOCH + Duration::from_secs(t.duration_since(UNIX_EPOCH).unwrap_or_default().as_secs())
}

/// A list header, all its lines joined: a list may be split over several lines (RFC 9110
/// §5.3).
fn list(headers: &HeaderMap, name: header::HeaderName) -> Option<String> {
    let lines: Vec<&str> = headers
        .get_all(name)
        .iter()
        .map(|v| v.to_str().unwrap_or_default())
        .collect();
    (!lines.is_empty()).then(|| lines.join(","))
}

/// A date header; one that does not parse, or comes more than once, is ignored (§13.1.3,
/// §13.1.4).
fn date(headers: &HeaderMap, name: header::HeaderName) -> Option<SystemTime> {
    let mut values = headers.get_all(name).iter();
    match (values.next(), values.next()) {
        (Some(v), None) => httpdate::parse_http_date(v.to_str().ok()?).ok(),
        _ => None,
    }
}

/// Whether a Range may be served (RFC 9110 §13.1.5): no If-Range, or one naming this very
/// file, by its strong ETag or its exact Last-Modified date. A weak tag never matches.
fn if_range(headers: &HeaderMap, etag: Option<&HeaderValue>, modified: Option<SystemTime>) -> bool {
    let Some(value) = headers.get(header::IF_RANGE) else {
        return true;
    };
    let Ok(value) = value.to_str() else {
        return false;
    };
    let value = value.trim();
    if value.starts_with('"') {
        etag.is_some_and(|tag| tag.as_bytes() == value.as_bytes())
    } else {
        let date = httpdate::parse_http_date(value).ok();
        date.is_some() && date == modified.map(whole_seconds)
    }
}

/// Whether a list of entity tags (`"a", W/"b"`, or `*`) names `tag`. The weak comparison
/// (If-None-Match) ignores `W/`; the strong one (If-Match) never matches a weak tag.
fn matches_any(list: &str, tag: &HeaderValue, weak: bool) -> bool {
    let list = list.trim();
    if list == "*" {
        return true;
    }
    let tag = tag.as_bytes();
    list.split(',')
        .map(str::trim)
        .any(|candidate| match (candidate.strip_prefix("W/"), weak) {
            (Some(opaque), true) => opaque.as_bytes() == tag,
            (Some(_), false) => false,
            (None, _) => candidate.as_bytes() == tag,
        })
}

/// What a Range header asks of a file of `size` bytes.
#[derive(Debug, PartialEq, Eq)]
enum Ranged {
    /// The whole file: another unit (§14.2: MUST be ignored), a specifier that does not
    /// parse, or several ranges (§14.2: a server MAY ignore Range; no multipart answers).
    Whole,
    /// The first and last byte of one range, clamped to the file (§14.1.2).
    Part(u64, u64),
    /// One range that starts at or past the end, or an empty suffix (§14.1.1): 416.
    Unsatisfiable,
}

fn byte_range(value: &str, size: u64) -> Ranged {
    let Some((unit, set)) = value.trim().split_once('=') else {
        return Ranged::Whole;
    };
    if !unit.trim().eq_ignore_ascii_case("bytes") {
        return Ranged::Whole;
    }
    // A list may hold empty elements (§5.6.1): `bytes=0-1,` is one range.
    let mut specs = set.split(',').map(str::trim).filter(|s| !s.is_empty());
    let (Some(spec), None) = (specs.next(), specs.next()) else {
        return Ranged::Whole;
    };
    let Some((first, last)) = spec.split_once('-') else {
        return Ranged::Whole;
    };
    // Positions too large for u64 are still positions: past any file's end.
    let number = |s: &str| {
        let s = s.trim();
        (!s.is_empty() && s.bytes().all(|b| b.is_ascii_digit()))
            .then(|| s.parse::<u64>().unwrap_or(u64::MAX))
    };
    match (first.trim().is_empty(), last.trim().is_empty()) {
        // `-N`: the last N bytes.
        (true, false) => match number(last) {
            None => Ranged::Whole,
            Some(0) => Ranged::Unsatisfiable,
            Some(_) if size == 0 => Ranged::Unsatisfiable,
            Some(n) => Ranged::Part(size.saturating_sub(n), size - 1),
        },
        (false, true) => match number(first) {
            None => Ranged::Whole,
            Some(start) if start >= size => Ranged::Unsatisfiable,
            Some(start) => Ranged::Part(start, size - 1),
        },
        (false, false) => match (number(first), number(last)) {
            (Some(start), Some(last)) if start <= last => {
                if start >= size {
                    Ranged::Unsatisfiable
                } else {
                    Ranged::Part(start, last.min(size - 1))
                }
            }
            // §14.1.1: a last position before the first makes the range invalid.
            _ => Ranged::Whole,
        },
        (true, true) => Ranged::Whole,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn paths_stay_inside_the_folder() {
        let name = |p: &str| Some(PathBuf::from(p));
        assert_eq!(resolve("/debian/vmlinuz"), name("debian/vmlinuz"));
        assert_eq!(resolve("/./a%20b"), name("a b"));
        for escape in [
            "/../secret",
            "/%2e%2e/secret",
            "/%2E%2E%2Fsecret",
            "/debian/../../secret",
            "/%2F..%2Fsecret",
            "/%2fetc/passwd",
            "/debian/",
            "/",
            "/a%00b",
            "/%ff",
        ] {
            assert_eq!(resolve(escape), None, "{escape}");
        }
        assert_eq!(resolve("/100%"), name("100%"));
        assert_eq!(resolve("//etc/passwd"), name("etc/passwd"));
    }

    #[test]
    fn one_byte_range_whole_or_unsatisfiable() {
        use Ranged::*;
        assert_eq!(byte_range("bytes=0-99", 1000), Part(0, 99));
        assert_eq!(byte_range("bytes=900-", 1000), Part(900, 999));
        assert_eq!(byte_range("bytes=-10", 1000), Part(990, 999));
        assert_eq!(byte_range("bytes=-5000", 1000), Part(0, 999));
        assert_eq!(byte_range("bytes=500-5000", 1000), Part(500, 999));
        assert_eq!(byte_range("Bytes = 1-1", 1000), Part(1, 1));
        assert_eq!(byte_range("bytes=0-1,", 1000), Part(0, 1));
        assert_eq!(
            byte_range("bytes=0-99999999999999999999999", 1000),
            Part(0, 999)
        );
        for unsatisfiable in ["bytes=1000-", "bytes=-0", "bytes=99999999999999999999999-"] {
            assert_eq!(
                byte_range(unsatisfiable, 1000),
                Unsatisfiable,
                "{unsatisfiable}"
            );
        }
        for ignored in [
            "bytes=5-4",
            "bytes=0-1,5-6",
            "bytes=+1-2",
            "bytes=-",
            "bytes=a-b",
            "bytes=",
            "items=0-1",
            "bytes 0-1",
        ] {
            assert_eq!(byte_range(ignored, 1000), Whole, "{ignored}");
        }
        assert_eq!(byte_range("bytes=0-0", 0), Unsatisfiable);
        assert_eq!(byte_range("bytes=-1", 0), Unsatisfiable);
    }

    #[test]
    fn conditions_in_rfc_order() {
        let tag = HeaderValue::from_static("\"a-1.0\"");
        let t = UNIX_EPOCH + Duration::new(1_700_000_000, 500);
        let at = |secs: u64| httpdate::fmt_http_date(UNIX_EPOCH + Duration::from_secs(secs));
        let check = |pairs: &[(header::HeaderName, String)]| {
            let mut h = HeaderMap::new();
            for (name, value) in pairs {
                h.insert(name.clone(), header_value(value.clone()));
            }
            precondition(&h, Some(&tag), Some(t))
        };
        let inm = header::IF_NONE_MATCH;
        let ims = header::IF_MODIFIED_SINCE;
        assert_eq!(check(&[]), None);
        assert_eq!(
            check(&[(inm.clone(), "\"x\", W/\"a-1.0\"".into())]),
            Some(StatusCode::NOT_MODIFIED)
        );
        assert_eq!(
            check(&[(inm.clone(), "*".into())]),
            Some(StatusCode::NOT_MODIFIED)
        );
        assert_eq!(check(&[(inm.clone(), "\"x\"".into())]), None);
        // If-None-Match wins over If-Modified-Since.
        assert_eq!(
            check(&[(inm, "\"x\"".into()), (ims.clone(), at(1_700_000_000))]),
            None
        );
        assert_eq!(
            check(&[(ims.clone(), at(1_700_000_000))]),
            Some(StatusCode::NOT_MODIFIED)
        );
        assert_eq!(check(&[(ims, at(1_699_999_999))]), None);
        assert_eq!(
            check(&[(header::IF_MATCH, "W/\"a-1.0\"".into())]),
            Some(StatusCode::PRECONDITION_FAILED)
        );
        assert_eq!(check(&[(header::IF_MATCH, "\"a-1.0\"".into())]), None);
        assert_eq!(
            check(&[(header::IF_UNMODIFIED_SINCE, at(1_699_999_999))]),
            Some(StatusCode::PRECONDITION_FAILED)
        );
    }
}
