//! `fetch UUID`: a stored build's record (`full` file), sent in chunks so
//! neither side ever holds the whole record in memory.

use std::sync::Arc;

use protocol::codec::Connection;
use protocol::message::ServerToClient;
use tokio::io::AsyncReadExt;
use uuid::Uuid;

use crate::state::Shared;

/// Bytes per [`ServerToClient::RecordChunk`].
const CHUNK: usize = 256 * 1024;

/// Sends build `uuid`'s record, or a failure saying why there is none.
pub async fn fetch(shared: &Arc<Shared>, conn: &mut Connection, uuid: Uuid) -> anyhow::Result<()> {
    let Some(path) = shared
        .db
        .result_path(uuid)
        .await
        .map_err(|e| shared.refuse_or_stop(e))?
    else {
        let pending = shared
            .db
            .is_pending(uuid)
            .await
            .map_err(|e| shared.refuse_or_stop(e))?;
        let reason = if pending {
            format!("build {uuid} has not finished yet (observe it with `observe {uuid}`)")
        } else {
            format!("no stored build {uuid}")
        };
        conn.send(&ServerToClient::Failure { reason }).await?;
        return Ok(());
    };
    let opened = async {
        let file = tokio::fs::File::open(&path).await?;
        let len = file.metadata().await?.len();
        std::io::Result::Ok((file, len))
    };
    let (mut file, len) = match opened.await {
        Ok(opened) => opened,
        Err(e) => {
            let reason = format!("cannot read the record of {uuid} ({}): {e}", path.display());
            tracing::error!(%uuid, error = ?reason);
            conn.send(&ServerToClient::Failure { reason }).await?;
            return Ok(());
        }
    };
    // DIR/<job>/<uuid>/full
    let job = path
        .parent()
        .and_then(|p| p.parent())
        .and_then(|p| p.file_name())
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    conn.send(&ServerToClient::RecordStart { uuid, job, len })
        .await?;
    let mut sent = 0u64;
    let mut buf = vec![0u8; CHUNK];
    while sent < len {
        let want = usize::try_from(len - sent).unwrap_or(CHUNK).min(CHUNK);
        let n = file.read(&mut buf[..want]).await?;
        if n == 0 {
            // Records are written once and renamed into place; a shorter
            // file is damage from outside. The client notices the gap.
            anyhow::bail!(
                "record {} ended after {sent} of {len} bytes",
                path.display()
            );
        }
        sent += n as u64;
        conn.send(&ServerToClient::RecordChunk {
            data: buf[..n].to_vec(),
        })
        .await?;
    }
    tracing::info!(%uuid, bytes = len, peer = conn.peer(), "record fetched");
    Ok(())
}
