//! Builds: `GET /api/v1/builds` (running and finished, filtered, newest
//! first), one build, its console (text or live events, see
//! [`crate::http::sse`]), its record and its artifacts (see
//! [`crate::http::artifacts`]).

use axum::extract::{Path, Query, State};
use axum::http::{header, HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Json;
use protocol::api::BuildView;
use serde::Deserialize;
use uuid::Uuid;

use crate::http::artifacts::{check_path, serve_bytes};
use crate::http::{parse_uuid, sse, ApiError, ApiResult, App};

/// Default and largest `limit`.
const DEFAULT_LIMIT: u32 = 100;
const MAX_LIMIT: u32 = 10_000;

/// `?job=&platform=&state=running|finished&limit=`.
#[derive(Deserialize)]
pub(crate) struct ListQuery {
    job: Option<String>,
    platform: Option<String>,
    state: Option<String>,
    limit: Option<u32>,
}

/// Running and finished builds, newest first.
pub(crate) async fn list(
    State(app): State<App>,
    Query(q): Query<ListQuery>,
) -> ApiResult<Json<Vec<BuildView>>> {
    let shared = &app.shared;
    let limit = q.limit.unwrap_or(DEFAULT_LIMIT).min(MAX_LIMIT);
    let (running, finished) = match q.state.as_deref() {
        None => (true, true),
        Some("running") => (true, false),
        Some("finished") => (false, true),
        Some(other) => {
            return Err(ApiError::bad_request(format!(
                "invalid state {other:?}: use running or finished"
            )))
        }
    };
    let keep = |job: &str, platform: &str| {
        q.job.as_deref().is_none_or(|j| j == job)
            && q.platform.as_deref().is_none_or(|p| p == platform)
    };
    let mut builds = Vec::new();
    if running {
        let mut list = shared
            .db
            .running_info()
            .await
            .map_err(|e| ApiError::db(shared, e))?;
        list.sort_by_key(|r| std::cmp::Reverse(r.started));
        builds.extend(
            list.iter()
                .filter(|r| keep(&r.job, &r.platform))
                .map(BuildView::running),
        );
    }
    if finished {
        let list = shared
            .db
            .results_filtered(q.job.as_deref(), q.platform.as_deref(), limit)
            .await
            .map_err(|e| ApiError::db(shared, e))?;
        builds.extend(list.iter().map(BuildView::finished));
    }
    builds.truncate(limit as usize);
    Ok(Json(builds))
}

/// One build, running, queued or finished (with its artifacts).
pub(crate) async fn one(
    State(app): State<App>,
    Path(uuid): Path<String>,
) -> ApiResult<Json<BuildView>> {
    Ok(Json(find(&app, parse_uuid(&uuid)?).await?))
}

/// Build `uuid` in any state, or 404.
pub(crate) async fn find(app: &App, uuid: Uuid) -> ApiResult<BuildView> {
    let shared = &app.shared;
    let db = |e| ApiError::db(shared, e);
    if let Some(entry) = shared.db.result_entry(uuid).await.map_err(db)? {
        let mut view = BuildView::finished(&entry);
        if let Some(path) = shared.db.result_path(uuid).await.map_err(db)? {
            let located = app.artifacts.get(uuid, &path).await?;
            view.artifacts = Some(located.iter().map(|l| l.view()).collect());
        } else {
            view.artifacts = Some(Vec::new());
        }
        return Ok(view);
    }
    if let Some(r) = shared
        .db
        .running_info()
        .await
        .map_err(db)?
        .iter()
        .find(|r| r.uuid == uuid)
    {
        return Ok(BuildView::running(r));
    }
    if let Some((platform, job, _)) = shared
        .db
        .queued_builds()
        .await
        .map_err(db)?
        .into_iter()
        .find(|(_, _, u)| *u == Some(uuid))
    {
        return Ok(BuildView::queued(uuid, &job, &platform));
    }
    Err(ApiError::not_found(format!("no build {uuid}")))
}

/// The console: `text/plain`, or server-sent events with
/// `Accept: text/event-stream` (resumed after `Last-Event-ID`).
pub(crate) async fn console(
    State(app): State<App>,
    Path(uuid): Path<String>,
    headers: HeaderMap,
) -> ApiResult<Response> {
    let uuid = parse_uuid(&uuid)?;
    // 404 now, not inside a stream.
    find(&app, uuid).await?;
    let wants_events = headers
        .get(header::ACCEPT)
        .and_then(|a| a.to_str().ok())
        .is_some_and(|a| a.contains("text/event-stream"));
    if wants_events {
        let after = match headers.get("last-event-id") {
            Some(v) => v
                .to_str()
                .ok()
                .and_then(|v| v.trim().parse::<u64>().ok())
                .ok_or_else(|| ApiError::bad_request("Last-Event-ID must be a line number"))?,
            None => 0,
        };
        sse::console_events(&app, uuid, after)
    } else {
        Ok(sse::console_text(&app, uuid))
    }
}

/// The stored `full` record.
pub(crate) async fn record(
    State(app): State<App>,
    Path(uuid): Path<String>,
    headers: HeaderMap,
) -> ApiResult<Response> {
    let uuid = parse_uuid(&uuid)?;
    let path = record_path(&app, uuid).await?;
    let len = tokio::fs::metadata(&path)
        .await
        .map_err(|e| {
            ApiError(
                StatusCode::INTERNAL_SERVER_ERROR,
                format!("cannot read the record of {uuid}: {e}"),
            )
        })?
        .len();
    serve_bytes(path, 0, len, None, "application/octet-stream", &headers).await
}

/// Where build `uuid`'s record is, or 404 (409 while it runs).
pub(crate) async fn record_path(app: &App, uuid: Uuid) -> ApiResult<std::path::PathBuf> {
    let shared = &app.shared;
    match shared
        .db
        .result_path(uuid)
        .await
        .map_err(|e| ApiError::db(shared, e))?
    {
        Some(path) => Ok(path),
        None => {
            let pending = shared
                .db
                .is_pending(uuid)
                .await
                .map_err(|e| ApiError::db(shared, e))?;
            if pending {
                Err(ApiError(
                    StatusCode::CONFLICT,
                    format!("build {uuid} has not finished yet"),
                ))
            } else {
                Err(ApiError::not_found(format!("no stored build {uuid}")))
            }
        }
    }
}

/// One artifact's bytes.
pub(crate) async fn artifact(
    State(app): State<App>,
    Path((uuid, path)): Path<(String, String)>,
    headers: HeaderMap,
) -> ApiResult<Response> {
    let uuid = parse_uuid(&uuid)?;
    serve_artifact(&app, uuid, &path, &headers).await
}

/// Serves artifact `path` of build `uuid`.
pub(crate) async fn serve_artifact(
    app: &App,
    uuid: Uuid,
    path: &str,
    headers: &HeaderMap,
) -> ApiResult<Response> {
    check_path(path)?;
    let record = record_path(app, uuid).await?;
    let located = app.artifacts.get(uuid, &record).await?;
    let Some(found) = located.iter().find(|l| l.path == path.as_bytes()) else {
        return Err(ApiError::not_found(format!(
            "build {uuid} has no artifact {path:?}"
        )));
    };
    serve_bytes(
        record,
        found.offset,
        found.len,
        Some(&found.sha256),
        "application/octet-stream",
        headers,
    )
    .await
    .map(IntoResponse::into_response)
}
