//! `GET /api/v1/platforms`: per platform, whether it is dropped, its queue
//! (front first, with each build's UUID) and its workers.

use std::collections::BTreeMap;

use axum::extract::State;
use axum::Json;
use protocol::api::{PlatformView, QueuedView, WorkerView};

use crate::http::{ApiError, ApiResult, App};

/// Every platform that has a queue, a worker or is dropped, by name.
pub(crate) async fn list(State(app): State<App>) -> ApiResult<Json<Vec<PlatformView>>> {
    let shared = &app.shared;
    let queued = shared
        .db
        .queued_builds()
        .await
        .map_err(|e| ApiError::db(shared, e))?;
    let dropped = shared
        .db
        .dropped_platforms()
        .await
        .map_err(|e| ApiError::db(shared, e))?;
    let mut map: BTreeMap<String, PlatformView> = BTreeMap::new();
    let entry = |map: &mut BTreeMap<String, PlatformView>, p: &str| {
        map.entry(p.to_owned())
            .or_insert_with(|| PlatformView {
                platform: p.to_owned(),
                dropped: false,
                queued: Vec::new(),
                workers: Vec::new(),
            })
            .platform
            .clone()
    };
    for (platform, job, uuid) in queued {
        let key = entry(&mut map, &platform);
        map.get_mut(&key)
            .expect("inserted")
            .queued
            .push(QueuedView {
                job,
                uuid: uuid.map(|u| u.hyphenated().to_string()),
            });
    }
    for platform in dropped {
        let key = entry(&mut map, &platform);
        map.get_mut(&key).expect("inserted").dropped = true;
    }
    for w in shared.workers.list() {
        let key = entry(&mut map, &w.platform);
        map.get_mut(&key)
            .expect("inserted")
            .workers
            .push(WorkerView::from(&w));
    }
    Ok(Json(map.into_values().collect()))
}
