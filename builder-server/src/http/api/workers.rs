//! `GET /api/v1/workers`: connected workers, as `info --json` lists them.

use axum::extract::State;
use axum::Json;
use protocol::api::WorkerView;

use crate::http::App;

/// Every connected worker, by platform then host.
pub(crate) async fn list(State(app): State<App>) -> Json<Vec<WorkerView>> {
    Json(
        app.shared
            .workers
            .list()
            .iter()
            .map(WorkerView::from)
            .collect(),
    )
}
