//! A stored build's artifacts and record over HTTP, straight from its
//! `full` record: each artifact is located (offset, length) and hashed
//! once, then served from the file with `Content-Length`, `ETag` (its
//! SHA-256) and single `Range` requests. Memory stays constant whatever
//! the size: bytes go from the file to the socket in small chunks.

use std::collections::HashMap;
use std::io::SeekFrom;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use axum::body::Body;
use axum::http::{header, HeaderMap, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use protocol::api::ArtifactView;
use sha2::{Digest, Sha256};
use tokio::io::{AsyncReadExt, AsyncSeekExt};
use tokio_util::io::ReaderStream;
use uuid::Uuid;

use super::{ApiError, ApiResult};

/// Builds whose artifact index is kept; past it the cache starts afresh.
const CACHED_BUILDS: usize = 1024;

/// Where one artifact's bytes are in its record.
#[derive(Debug, Clone)]
pub(crate) struct Located {
    /// Its path, as recorded.
    pub path: Vec<u8>,
    /// Offset of its first byte in the record.
    pub offset: u64,
    /// Its size.
    pub len: u64,
    /// Lowercase hex SHA-256.
    pub sha256: String,
}

impl Located {
    /// As the API lists it.
    pub fn view(&self) -> ArtifactView {
        ArtifactView {
            path: String::from_utf8_lossy(&self.path).into_owned(),
            size: self.len,
            sha256: self.sha256.clone(),
        }
    }
}

/// Artifact indexes of stored builds (records never change once written).
#[derive(Default)]
pub(crate) struct Cache {
    map: Mutex<HashMap<Uuid, Arc<Vec<Located>>>>,
}

impl Cache {
    /// The artifacts of build `uuid`, whose record is `path`.
    pub async fn get(&self, uuid: Uuid, path: &Path) -> ApiResult<Arc<Vec<Located>>> {
        if let Some(found) = self.lock().get(&uuid) {
            return Ok(found.clone());
        }
        let file = path.to_owned();
        let located = tokio::task::spawn_blocking(move || locate(&file))
            .await
            .map_err(|e| {
                ApiError(
                    StatusCode::INTERNAL_SERVER_ERROR,
                    format!("record reader panicked: {e}"),
                )
            })?
            .map_err(|e| {
                tracing::error!(%uuid, path = ?path, error = ?e, "cannot read a record for HTTP");
                ApiError(
                    StatusCode::INTERNAL_SERVER_ERROR,
                    format!("cannot read the record of {uuid}: {e}"),
                )
            })?;
        let located = Arc::new(located);
        let mut map = self.lock();
        if map.len() >= CACHED_BUILDS {
            map.clear();
        }
        map.insert(uuid, located.clone());
        Ok(located)
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<Uuid, Arc<Vec<Located>>>> {
        self.map.lock().unwrap_or_else(|e| e.into_inner())
    }
}

/// Reads a record once, locating and hashing each artifact.
fn locate(path: &Path) -> Result<Vec<Located>, String> {
    let file = std::fs::File::open(path).map_err(|e| e.to_string())?;
    let mut found = Vec::new();
    protocol::record::locate_artifacts(file, |path, offset, len, body| {
        let mut hash = Sha256::new();
        let mut buf = vec![0u8; 64 * 1024];
        loop {
            let n = body.read(&mut buf)?;
            if n == 0 {
                break;
            }
            hash.update(&buf[..n]);
        }
        found.push(Located {
            path: path.to_vec(),
            offset,
            len,
            sha256: hex(&hash.finalize()),
        });
        Ok(())
    })
    .map_err(|e| protocol::Chain(&e).to_string())?;
    Ok(found)
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// builder-inspect's rule for a path asked for: not empty, no NUL, not
/// absolute, no `..` component.
pub(crate) fn check_path(path: &str) -> ApiResult<()> {
    let bad = |why: &str| {
        Err(ApiError::bad_request(format!(
            "invalid artifact path {path:?}: {why}"
        )))
    };
    if path.is_empty() {
        return bad("empty");
    }
    if path.contains('\0') {
        return bad("contains NUL");
    }
    if path.starts_with('/') {
        return bad("absolute path");
    }
    if path.split('/').any(|c| c == "..") {
        return bad("has a '..' component");
    }
    Ok(())
}

/// Serves `len` bytes at `offset` of `file`, honouring `Range` and
/// `If-None-Match` (when an `etag` is given).
pub(crate) async fn serve_bytes(
    file: PathBuf,
    offset: u64,
    len: u64,
    etag: Option<&str>,
    content_type: &'static str,
    request: &HeaderMap,
) -> ApiResult<Response> {
    let etag = etag.map(|e| format!("\"{e}\""));
    if let (Some(tag), Some(given)) = (&etag, request.get(header::IF_NONE_MATCH)) {
        if given
            .to_str()
            .is_ok_and(|g| g.split(',').any(|t| t.trim() == tag || t.trim() == "*"))
        {
            let mut answer = StatusCode::NOT_MODIFIED.into_response();
            answer
                .headers_mut()
                .insert(header::ETAG, HeaderValue::from_str(tag).expect("hex"));
            return Ok(answer);
        }
    }
    let range = match request.get(header::RANGE).and_then(|r| r.to_str().ok()) {
        Some(text) => match parse_range(text, len) {
            Some(range) => Some(range),
            None => {
                let mut answer = super::error(
                    StatusCode::RANGE_NOT_SATISFIABLE,
                    format!("range {text:?} is not satisfiable for {len} bytes"),
                );
                answer.headers_mut().insert(
                    header::CONTENT_RANGE,
                    HeaderValue::from_str(&format!("bytes */{len}")).expect("ascii"),
                );
                return Ok(answer);
            }
        },
        None => None,
    };
    let (start, count) = range.unwrap_or((0, len));
    let mut f = tokio::fs::File::open(&file).await.map_err(|e| {
        ApiError(
            StatusCode::INTERNAL_SERVER_ERROR,
            format!("cannot open {}: {e}", file.display()),
        )
    })?;
    f.seek(SeekFrom::Start(offset + start)).await.map_err(|e| {
        ApiError(
            StatusCode::INTERNAL_SERVER_ERROR,
            format!("cannot read {}: {e}", file.display()),
        )
    })?;
    let body = Body::from_stream(ReaderStream::with_capacity(f.take(count), 64 * 1024));
    let mut answer = Response::new(body);
    *answer.status_mut() = if range.is_some() {
        StatusCode::PARTIAL_CONTENT
    } else {
        StatusCode::OK
    };
    let h = answer.headers_mut();
    h.insert(header::CONTENT_TYPE, HeaderValue::from_static(content_type));
    h.insert(header::CONTENT_LENGTH, HeaderValue::from(count));
    h.insert(header::ACCEPT_RANGES, HeaderValue::from_static("bytes"));
    if let Some(tag) = &etag {
        h.insert(header::ETAG, HeaderValue::from_str(tag).expect("hex"));
    }
    if range.is_some() {
        let end = (start + count).saturating_sub(1);
        h.insert(
            header::CONTENT_RANGE,
            HeaderValue::from_str(&format!("bytes {start}-{end}/{len}")).expect("ascii"),
        );
    }
    Ok(answer)
}

/// One `bytes=a-b`, `bytes=a-` or `bytes=-n` range of a body of `len`
/// bytes: (start, count), or `None` when it is malformed, multiple or
/// unsatisfiable.
fn parse_range(text: &str, len: u64) -> Option<(u64, u64)> {
    let spec = text.trim().strip_prefix("bytes=")?;
    if spec.contains(',') {
        return None;
    }
    let (a, b) = spec.split_once('-')?;
    let (a, b) = (a.trim(), b.trim());
    if a.is_empty() {
        let n: u64 = b.parse().ok()?;
        if n == 0 || len == 0 {
            return None;
        }
        let n = n.min(len);
        return Some((len - n, n));
    }
    let start: u64 = a.parse().ok()?;
    if start >= len {
        return None;
    }
    let end = if b.is_empty() {
        len - 1
    } else {
        b.parse::<u64>().ok()?.min(len - 1)
    };
    if end < start {
        return None;
    }
    Some((start, end - start + 1))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ranges() {
        assert_eq!(parse_range("bytes=0-9", 100), Some((0, 10)));
        assert_eq!(parse_range("bytes=90-", 100), Some((90, 10)));
        assert_eq!(parse_range("bytes=-5", 100), Some((95, 5)));
        assert_eq!(parse_range("bytes=-500", 100), Some((0, 100)));
        assert_eq!(parse_range("bytes=50-1000", 100), Some((50, 50)));
        assert_eq!(parse_range("bytes=100-", 100), None);
        assert_eq!(parse_range("bytes=5-2", 100), None);
        assert_eq!(parse_range("bytes=0-1,5-6", 100), None);
        assert_eq!(parse_range("items=0-1", 100), None);
    }

    #[test]
    fn paths() {
        assert!(check_path("bin/x.hvt").is_ok());
        for bad in ["", "/etc/passwd", "../x", "a/../../x", "a\0b", "a/.."] {
            assert!(check_path(bad).is_err(), "{bad:?} accepted");
        }
    }
}
