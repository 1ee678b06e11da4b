//! A client's connection: one module per request.

mod cancel;
pub(crate) mod execute;
mod fetch;
pub(crate) mod info;
pub(crate) mod observe;
pub(crate) mod platform;
mod results;
pub(crate) mod schedule;

use std::sync::Arc;

use protocol::codec::Connection;
use protocol::message::{ClientRequest, ServerToClient};

use crate::db::DbError;
use crate::state::Shared;

/// What a simple request answers: success with an optional detail, or a
/// failure with its reason.
pub type Reply = Result<Option<String>, String>;

/// Serves a client's requests until it closes the connection.
///
/// Observing is boxed: its state is large, and an idle client's connection
/// should not carry it.
pub async fn serve(shared: &Arc<Shared>, conn: &mut Connection) -> anyhow::Result<()> {
    loop {
        let request = tokio::select! {
            request = conn.recv::<ClientRequest>() => request,
            _ = shared.shutdown.cancelled() => return Ok(()),
        };
        let request = match request {
            Ok(Some(request)) => request,
            Ok(None) => return Ok(()),
            Err(e) => {
                let reason = format!("bad request: {}", protocol::Chain(&e));
                let _ = conn
                    .send(&ServerToClient::Failure {
                        reason: reason.clone(),
                    })
                    .await;
                anyhow::bail!(reason);
            }
        };
        tracing::debug!(peer = conn.peer(), ?request, "client request");
        // Warnings about the request, sent before its answer.
        let mut notices = Vec::new();
        let answer = match request {
            ClientRequest::Schedule {
                job,
                trigger,
                timeout_secs,
            } => reply(schedule::schedule(shared, job, trigger, timeout_secs, &mut notices).await),
            ClientRequest::Unschedule { name } => reply(schedule::unschedule(shared, &name).await),
            ClientRequest::Reschedule {
                name,
                next,
                trigger,
            } => reply(schedule::reschedule(shared, &name, next, trigger).await),
            ClientRequest::Execute { name, platform } => {
                reply(execute::execute(shared, &name, platform.as_deref()).await)
            }
            ClientRequest::DropPlatform { platform } => {
                reply(platform::drop(shared, &platform, &mut notices).await)
            }
            ClientRequest::UndropPlatform { platform } => {
                reply(platform::undrop(shared, &platform).await)
            }
            ClientRequest::Cancel { uuid } => reply(cancel::cancel(shared, uuid).await),
            ClientRequest::Info => {
                let parts = info::info(shared)
                    .await
                    .map_err(|e| shared.refuse_or_stop(e))?;
                for part in &parts {
                    conn.feed(part).await?;
                }
                conn.flush().await?;
                continue;
            }
            ClientRequest::Show { name } => info::show(shared, &name).await,
            ClientRequest::Results { job, limit } => {
                results::results(shared, job.as_deref(), limit)
                    .await
                    .map(ServerToClient::ResultList)
            }
            ClientRequest::Observe { uuid } => {
                tracing::info!(peer = conn.peer(), %uuid, "observer attached");
                Box::pin(observe::observe(shared, conn, uuid)).await?;
                continue;
            }
            ClientRequest::ObserveLatest { platform, job } => {
                Box::pin(observe::observe_latest(
                    shared,
                    conn,
                    platform.as_deref(),
                    job.as_deref(),
                ))
                .await?;
                continue;
            }
            ClientRequest::Update {
                name,
                script,
                platform,
                trigger,
                timeout_secs,
            } => reply(
                schedule::update(
                    shared,
                    &name,
                    schedule::Changes {
                        script,
                        platform,
                        trigger,
                        timeout_secs,
                    },
                    &mut notices,
                )
                .await,
            ),
            ClientRequest::ExecuteObserve { name, platform } => {
                Box::pin(execute::execute_observe(
                    shared,
                    conn,
                    &name,
                    platform.as_deref(),
                ))
                .await?;
                continue;
            }
            ClientRequest::ObserveNext { platform, job } => {
                Box::pin(observe::observe_next(
                    shared,
                    conn,
                    platform.as_deref(),
                    job.as_deref(),
                ))
                .await?;
                continue;
            }
            ClientRequest::Fetch { uuid } => {
                fetch::fetch(shared, conn, uuid).await?;
                continue;
            }
        };
        let answer = match answer {
            Ok(answer) => answer,
            Err(e) => {
                let (e, reason) = persist_failure(shared, e);
                conn.send(&ServerToClient::Failure { reason }).await?;
                if e.is_disk_full() {
                    continue;
                }
                return Err(e.into());
            }
        };
        for notice in &notices {
            conn.send(notice).await?;
        }
        conn.send(&answer).await?;
    }
}

/// A change the state database refused: the error (now the server's, see
/// [`Shared::fatal`]) and what the client is told. Told to the client
/// either way; only a full disk leaves the server (and the connection)
/// serving.
pub(crate) fn persist_failure(shared: &Shared, e: DbError) -> (DbError, String) {
    let e = shared.refuse_or_stop(e);
    let reason = if e.is_disk_full() {
        format!("disk full: the server cannot save the change; free space in its state directory and try again ({e})")
    } else {
        format!("the server cannot persist its state and is stopping ({e})")
    };
    (e, reason)
}

fn reply(r: Result<Reply, DbError>) -> Result<ServerToClient, DbError> {
    Ok(match r? {
        Ok(detail) => ServerToClient::Success { detail },
        Err(reason) => ServerToClient::Failure { reason },
    })
}
