//! builder-web's URL shape, so that tools written for it (albatross-client,
//! deploy scripts) work against the farm:
//! `/job/{name}/build/latest[/{rest}]` (307 to the newest successful
//! build, `?platform=` narrows it), `/job/{name}/build/{uuid}` (HTML, or
//! JSON with `Accept: application/json`), `.../f/{path}` (an artifact) and
//! `.../main-binary` (the only artifact, or the one executable under
//! `bin/`).

use axum::extract::{Path, Query, State};
use axum::http::{header, HeaderMap, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::{Json, Router};
use percent_encoding::{utf8_percent_encode, AsciiSet, CONTROLS};
use serde::Deserialize;
use uuid::Uuid;

use super::api::builds::{find, serve_artifact};
use super::{dashboard, parse_uuid, ApiError, ApiResult, App};

/// What a path segment must escape.
const SEGMENT: &AsciiSet = &CONTROLS
    .add(b' ')
    .add(b'"')
    .add(b'#')
    .add(b'%')
    .add(b'/')
    .add(b'<')
    .add(b'>')
    .add(b'?')
    .add(b'`')
    .add(b'{')
    .add(b'}');

/// A job name as one URL path segment.
pub(crate) fn segment(text: &str) -> String {
    utf8_percent_encode(text, SEGMENT).to_string()
}

/// The routes.
pub(crate) fn routes() -> Router<App> {
    Router::new()
        .route("/job/{name}/build/latest", get(latest))
        .route("/job/{name}/build/latest/{*rest}", get(latest_rest))
        .route("/job/{name}/build/{uuid}", get(build))
        .route("/job/{name}/build/{uuid}/f/{*path}", get(file))
        .route("/job/{name}/build/{uuid}/main-binary", get(main_binary))
}

/// `?platform=`.
#[derive(Deserialize)]
pub(crate) struct PlatformQuery {
    platform: Option<String>,
}

async fn latest(
    State(app): State<App>,
    Path(name): Path<String>,
    Query(q): Query<PlatformQuery>,
) -> ApiResult<Response> {
    redirect_latest(&app, &name, q.platform.as_deref(), "").await
}

async fn latest_rest(
    State(app): State<App>,
    Path((name, rest)): Path<(String, String)>,
    Query(q): Query<PlatformQuery>,
) -> ApiResult<Response> {
    let rest: Vec<String> = rest.split('/').map(segment).collect();
    redirect_latest(
        &app,
        &name,
        q.platform.as_deref(),
        &format!("/{}", rest.join("/")),
    )
    .await
}

/// 307 to the newest successful build of `name`, plus `rest`.
async fn redirect_latest(
    app: &App,
    name: &str,
    platform: Option<&str>,
    rest: &str,
) -> ApiResult<Response> {
    let shared = &app.shared;
    let Some(uuid) = shared
        .db
        .latest_success(name, platform)
        .await
        .map_err(|e| ApiError::db(shared, e))?
    else {
        return Err(ApiError::not_found(match platform {
            Some(p) => format!("job {name} has no successful build on {p}"),
            None => format!("job {name} has no successful build"),
        }));
    };
    let location = format!(
        "{}/job/{}/build/{}{rest}",
        app.base_url,
        segment(name),
        uuid.hyphenated()
    );
    let mut answer = StatusCode::TEMPORARY_REDIRECT.into_response();
    answer.headers_mut().insert(
        header::LOCATION,
        HeaderValue::from_str(&location)
            .map_err(|_| ApiError::bad_request("job name cannot be put in a URL"))?,
    );
    Ok(answer)
}

/// Build `uuid` of job `name`, or 404.
async fn of_job(app: &App, name: &str, uuid: &str) -> ApiResult<(Uuid, protocol::api::BuildView)> {
    let uuid = parse_uuid(uuid)?;
    let view = find(app, uuid).await?;
    if view.job != name {
        return Err(ApiError::not_found(format!(
            "build {uuid} is not a build of job {name}"
        )));
    }
    Ok((uuid, view))
}

async fn build(
    State(app): State<App>,
    Path((name, uuid)): Path<(String, String)>,
    headers: HeaderMap,
) -> ApiResult<Response> {
    let (_, view) = of_job(&app, &name, &uuid).await?;
    let json = headers
        .get(header::ACCEPT)
        .and_then(|a| a.to_str().ok())
        .is_some_and(|a| a.contains("application/json"));
    if json {
        Ok(Json(view).into_response())
    } else {
        Ok(dashboard::build_page(&view).into_response())
    }
}

async fn file(
    State(app): State<App>,
    Path((name, uuid, path)): Path<(String, String, String)>,
    headers: HeaderMap,
) -> ApiResult<Response> {
    let (uuid, _) = of_job(&app, &name, &uuid).await?;
    serve_artifact(&app, uuid, &path, &headers).await
}

async fn main_binary(
    State(app): State<App>,
    Path((name, uuid)): Path<(String, String)>,
    headers: HeaderMap,
) -> ApiResult<Response> {
    let (uuid, view) = of_job(&app, &name, &uuid).await?;
    let artifacts = view.artifacts.unwrap_or_default();
    let path = match artifacts.as_slice() {
        [only] => only.path.clone(),
        many => {
            let bin: Vec<_> = many
                .iter()
                .filter(|a| {
                    a.path
                        .strip_prefix("bin/")
                        .is_some_and(|rest| !rest.is_empty() && !rest.contains('/'))
                })
                .collect();
            match bin.as_slice() {
                [one] => one.path.clone(),
                [] => {
                    return Err(ApiError::not_found(format!(
                        "build {uuid} has {} artifacts and none under bin/: no main binary",
                        many.len()
                    )))
                }
                _ => {
                    return Err(ApiError::not_found(format!(
                        "build {uuid} has {} files under bin/: the main binary is ambiguous",
                        bin.len()
                    )))
                }
            }
        }
    };
    serve_artifact(&app, uuid, &path, &headers).await
}
