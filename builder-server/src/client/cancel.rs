//! `cancel UUID`: the worker kills the build, which is recorded as aborted.

use std::sync::Arc;

use uuid::Uuid;

use super::Reply;
use crate::state::Shared;

/// Asks the worker running `uuid` to stop it.
pub fn cancel(shared: &Arc<Shared>, uuid: Uuid) -> Reply {
    if shared.workers.cancel(uuid, "cancelled") {
        Ok(Some(format!("cancelling {uuid}")))
    } else {
        Err(format!("no running build {uuid}"))
    }
}
