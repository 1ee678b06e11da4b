//! The JSON API, version 1: one module per resource. Every document is a
//! type of [`protocol::api`], the model `builder-client --json` prints.

pub(crate) mod builds;
mod events;
mod jobs;
mod platforms;
mod workers;

use axum::routing::{get, post};
use axum::Router;

use super::App;

/// `/api/v1/...`.
pub(crate) fn routes() -> Router<App> {
    Router::new()
        .route("/api/v1/jobs", get(jobs::list))
        .route("/api/v1/jobs/{name}", get(jobs::one))
        .route("/api/v1/jobs/{name}/execute", post(jobs::execute))
        .route("/api/v1/platforms", get(platforms::list))
        .route("/api/v1/workers", get(workers::list))
        .route("/api/v1/builds", get(builds::list))
        .route("/api/v1/builds/{uuid}", get(builds::one))
        .route("/api/v1/builds/{uuid}/console", get(builds::console))
        .route("/api/v1/builds/{uuid}/record", get(builds::record))
        .route(
            "/api/v1/builds/{uuid}/artifacts/{*path}",
            get(builds::artifact),
        )
        .route("/api/v1/events", get(events::stream))
}
