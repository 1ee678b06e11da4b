//! `GET /api/v1/jobs`, `GET /api/v1/jobs/{name}` (with its script) and
//! `POST /api/v1/jobs/{name}/execute` (queued at the front, as `execute`).

use axum::body::Body;
use axum::extract::{Path, Query, State};
use axum::http::StatusCode;
use axum::Json;
use protocol::api::{ExecuteAnswer, QueuedBuild, ScheduleView};
use protocol::message::JobSummary;
use serde::Deserialize;

use crate::http::{ApiError, ApiResult, App};

/// Every scheduled job, by name, without scripts.
pub(crate) async fn list(State(app): State<App>) -> ApiResult<Json<Vec<ScheduleView>>> {
    let shared = &app.shared;
    let jobs = shared
        .db
        .jobs()
        .await
        .map_err(|e| ApiError::db(shared, e))?;
    Ok(Json(
        jobs.iter()
            .map(|e| ScheduleView::summary(&JobSummary::from(e)))
            .collect(),
    ))
}

/// One job with its script.
pub(crate) async fn one(
    State(app): State<App>,
    Path(name): Path<String>,
) -> ApiResult<Json<ScheduleView>> {
    let shared = &app.shared;
    match shared
        .db
        .job(&name)
        .await
        .map_err(|e| ApiError::db(shared, e))?
    {
        Some(entry) => Ok(Json(ScheduleView::new(&entry))),
        None => Err(ApiError::not_found(format!("no job named {name}"))),
    }
}

/// `?platform=`: only this platform (an orb-build job runs on every
/// platform with a template otherwise).
#[derive(Deserialize)]
pub(crate) struct ExecuteQuery {
    platform: Option<String>,
}

/// The optional body of an execute.
#[derive(Deserialize, Default)]
struct ExecuteBody {
    commit: Option<String>,
    #[serde(rename = "ref")]
    git_ref: Option<String>,
}

/// Queues the job at the front of its queue(s): 202 with each build.
pub(crate) async fn execute(
    State(app): State<App>,
    Path(name): Path<String>,
    Query(query): Query<ExecuteQuery>,
    body: Body,
) -> ApiResult<(StatusCode, Json<ExecuteAnswer>)> {
    let shared = &app.shared;
    let bytes = axum::body::to_bytes(body, app.config.max_body)
        .await
        .map_err(|_| {
            ApiError(
                StatusCode::PAYLOAD_TOO_LARGE,
                format!(
                    "request body larger than {} bytes (--http-max-body)",
                    app.config.max_body
                ),
            )
        })?;
    if !bytes.iter().all(u8::is_ascii_whitespace) {
        let body: ExecuteBody = serde_json::from_slice(&bytes).map_err(|e| {
            ApiError::bad_request(format!("body: expected {{\"commit\", \"ref\"}}: {e}"))
        })?;
        if body.commit.is_some() || body.git_ref.is_some() {
            return Err(ApiError::bad_request(
                "building a given commit or ref is not supported by this server yet; send no body to run the job's script as scheduled",
            ));
        }
    }
    let queued =
        crate::client::execute::queue_front(shared, &name, query.platform.as_deref(), false)
            .await
            .map_err(|e| ApiError::db(shared, e))?;
    match queued {
        Ok(queued) => Ok((
            StatusCode::ACCEPTED,
            Json(ExecuteAnswer {
                queued: queued
                    .into_iter()
                    .map(|(platform, uuid)| QueuedBuild {
                        platform,
                        uuid: uuid.hyphenated().to_string(),
                    })
                    .collect(),
            }),
        )),
        Err(reason) => {
            let status = if reason.starts_with("no job named") {
                StatusCode::NOT_FOUND
            } else if reason.contains("is dropped") {
                StatusCode::CONFLICT
            } else {
                StatusCode::BAD_REQUEST
            };
            Err(ApiError(status, reason))
        }
    }
}
