//! `observe UUID`, `observe-latest`: the console so far, then live lines,
//! then the result. A finished build is replayed from its record.
//!
//! An observer never slows a build: it pulls the lines it has not sent yet,
//! from memory or from the console's spool when it is behind (see
//! [`crate::live`]); it skips only lines the console limit dropped, and is
//! told how many ([`ServerToClient::Dropped`]).

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use protocol::codec::Connection;
use protocol::message::{BuildHeader, JobOutcome, OutputLine, ServerToClient, Timestamp};
use protocol::record;
use tokio::sync::broadcast::error::RecvError;
use tokio::sync::watch;
use uuid::Uuid;

use crate::live::{LiveBuild, Next, Requeue};
use crate::spool::{self, SpoolRead};
use crate::state::Shared;

/// Where an observer's messages go: this project's client connection, or
/// a reference client (`crate::legacy::client`), which shows the same
/// stream in its own commands. One observing logic serves both.
pub trait ObserveSink {
    /// Sends one message of the observe stream (`ObserveStart`, `Console`,
    /// `Dropped`, `ObserveEnd`, or `Failure`).
    fn send(
        &mut self,
        msg: &ServerToClient,
    ) -> impl std::future::Future<Output = anyhow::Result<()>> + Send;
}

impl ObserveSink for Connection {
    async fn send(&mut self, msg: &ServerToClient) -> anyhow::Result<()> {
        Connection::send(self, msg).await?;
        Ok(())
    }
}

/// Lines per console message when replaying.
const BATCH: u64 = 1024;

/// How often an observer waiting for a queued build checks that it is still
/// queued (it may be unscheduled or dropped meanwhile); starts wake it
/// sooner.
const QUEUED_RECHECK: Duration = Duration::from_secs(2);

/// Streams one build to the client: waits while it is queued, follows it
/// while it runs (through requeues: a build keeps its UUID, and into the
/// build it was merged with, see [`crate::db::ends`]), replays it once
/// stored.
pub async fn observe(
    shared: &Arc<Shared>,
    conn: &mut impl ObserveSink,
    mut uuid: Uuid,
) -> anyhow::Result<()> {
    // Subscribed before looking, so a start in between is not missed.
    let mut starts = shared.live.subscribe_starts();
    let mut header_sent = false;
    let mut told_no_worker = false;
    // The attempt followed last: once requeued it may linger in the map for
    // a moment, and is not followed twice.
    let mut last: Option<Arc<LiveBuild>> = None;
    loop {
        let live = shared
            .live
            .get(uuid)
            .filter(|l| !last.as_ref().is_some_and(|old| Arc::ptr_eq(old, l)));
        if let Some(live) = live {
            match follow(shared, conn, &live, header_sent).await? {
                Followed::Over => return Ok(()),
                Followed::Requeued(requeue) => {
                    header_sent = true;
                    conn.send(&ServerToClient::Notice {
                        message: format!(
                            "worker lost ({}); requeued (attempt {})",
                            requeue.reason, requeue.attempt
                        ),
                    })
                    .await?;
                    last = Some(live);
                    continue;
                }
            }
        }
        if let Some(into) = shared
            .db
            .merged_into(uuid)
            .await
            .map_err(|e| shared.refuse_or_stop(e))?
        {
            // Never ran: another build of its job runs in its place.
            conn.send(&ServerToClient::Notice {
                message: format!("build {uuid} was merged into {into}, a build of the same job; following {into}"),
            })
            .await?;
            uuid = into;
            last = None;
            continue;
        }
        if let Some(path) = shared
            .db
            .result_path(uuid)
            .await
            .map_err(|e| shared.refuse_or_stop(e))?
        {
            return replay(conn, uuid, path, 0, !header_sent).await;
        }
        if let Some(r) = shared
            .db
            .result(uuid)
            .await
            .map_err(|e| shared.refuse_or_stop(e))?
        {
            // Indexed without a record (it could not be stored): no
            // console, the end says why.
            if !header_sent {
                conn.send(&ServerToClient::ObserveStart(BuildHeader {
                    uuid,
                    job: r.job,
                    platform: r.platform,
                    started: r.started,
                }))
                .await?;
            }
            conn.send(&ServerToClient::ObserveEnd {
                finished: r.finished,
                outcome: r.outcome,
            })
            .await?;
            return Ok(());
        }
        if !shared
            .db
            .is_pending(uuid)
            .await
            .map_err(|e| shared.refuse_or_stop(e))?
            && last.is_none()
        {
            conn.send(&ServerToClient::Failure {
                reason: format!("no build {uuid}"),
            })
            .await?;
            return Ok(());
        }
        if last.is_some()
            && !shared
                .db
                .is_pending(uuid)
                .await
                .map_err(|e| shared.refuse_or_stop(e))?
        {
            // Requeued, then neither queued, running nor stored: it was
            // unscheduled or its platform dropped.
            conn.send(&ServerToClient::Failure {
                reason: format!("build {uuid} was requeued and then removed from its queue"),
            })
            .await?;
            return Ok(());
        }
        if !told_no_worker {
            told_no_worker = true;
            if let Some(platform) = shared
                .db
                .queued_on(uuid)
                .await
                .map_err(|e| shared.refuse_or_stop(e))?
            {
                notice_if_no_worker(shared, conn, Some(&platform)).await?;
            }
        }
        tokio::select! {
            started = starts.recv() => match started {
                Ok(h) if h.uuid != uuid => continue,
                Ok(_) | Err(RecvError::Lagged(_)) => {}
                Err(RecvError::Closed) => return Ok(()),
            },
            _ = tokio::time::sleep(QUEUED_RECHECK) => {}
            _ = shared.shutdown.cancelled() => return Ok(()),
        }
    }
}

/// Streams the newest build (running or finished) matching the filters.
pub async fn observe_latest(
    shared: &Arc<Shared>,
    conn: &mut impl ObserveSink,
    platform: Option<&str>,
    job: Option<&str>,
) -> anyhow::Result<()> {
    let live = shared.live.latest(platform, job);
    let done = shared
        .db
        .latest_result(platform, job)
        .await
        .map_err(|e| shared.refuse_or_stop(e))?;
    let newest = match (live, done) {
        (Some(l), Some(d)) => Some(if l.1 >= d.1 { l.0 } else { d.0 }),
        (l, d) => l.or(d).map(|(uuid, _)| uuid),
    };
    match newest {
        Some(uuid) => observe(shared, conn, uuid).await,
        None => {
            conn.send(&ServerToClient::Failure {
                reason: format!(
                    "no build matches{} (add --wait to wait for the next one)",
                    filter_text(platform, job)
                ),
            })
            .await?;
            Ok(())
        }
    }
}

/// Waits for the next build matching the filters to start, then streams
/// it from its first line.
pub async fn observe_next(
    shared: &Arc<Shared>,
    conn: &mut Connection,
    platform: Option<&str>,
    job: Option<&str>,
) -> anyhow::Result<()> {
    let mut starts = shared.live.subscribe_starts();
    tracing::info!(
        peer = conn.peer(),
        platform,
        job,
        "observer waiting for the next build"
    );
    let watched = match (platform, job) {
        (Some(p), _) => Some(p.to_owned()),
        (None, Some(j)) => match shared
            .db
            .job(j)
            .await
            .map_err(|e| shared.refuse_or_stop(e))?
        {
            Some(entry) => match entry.job.kind {
                protocol::message::JobKind::Script { platform, .. } => Some(platform),
                protocol::message::JobKind::Orb { .. } => None,
            },
            None => None,
        },
        (None, None) => None,
    };
    notice_if_no_worker(shared, conn, watched.as_deref()).await?;
    loop {
        let started = tokio::select! {
            started = starts.recv() => started,
            _ = shared.shutdown.cancelled() => return Ok(()),
        };
        match started {
            Ok(h) if platform.is_none_or(|p| h.platform == p) && job.is_none_or(|j| h.job == j) => {
                return observe(shared, conn, h.uuid).await;
            }
            Ok(_) => {}
            // Many builds started at once: one of them may have matched.
            Err(RecvError::Lagged(_)) => {
                if let Some((uuid, _)) = shared.live.latest(platform, job) {
                    return observe(shared, conn, uuid).await;
                }
            }
            Err(RecvError::Closed) => return Ok(()),
        }
    }
}

/// Tells an observer about to wait that no worker that could run the build
/// is connected (none of `platform`, or none at all when `None`), so that
/// the wait explains itself; the observer keeps waiting. Callers say it
/// once per request.
async fn notice_if_no_worker(
    shared: &Shared,
    conn: &mut impl ObserveSink,
    platform: Option<&str>,
) -> anyhow::Result<()> {
    let workers = shared.workers.list();
    let message = match platform {
        Some(p) if !workers.iter().any(|w| w.platform == p) => {
            format!("notice: no worker for platform {p} is connected; waiting")
        }
        None if workers.is_empty() => "notice: no worker is connected; waiting".to_owned(),
        _ => return Ok(()),
    };
    conn.send(&ServerToClient::Notice { message }).await
}

/// ` --job NAME --platform P`, as the user would have typed the filters.
fn filter_text(platform: Option<&str>, job: Option<&str>) -> String {
    let mut text = String::new();
    if let Some(job) = job {
        text.push_str(&format!(" --job {job}"));
    }
    if let Some(platform) = platform {
        text.push_str(&format!(" --platform {platform}"));
    }
    text
}

/// How following one attempt of a build ended.
enum Followed {
    /// The stream is over (the end was sent, or the server stops).
    Over,
    /// The attempt lost its worker; the build is queued again.
    Requeued(Requeue),
}

async fn follow(
    shared: &Arc<Shared>,
    conn: &mut impl ObserveSink,
    live: &LiveBuild,
    header_sent: bool,
) -> anyhow::Result<Followed> {
    let mut changes = live.watch();
    let header = live.header();
    let mut started = header_sent;
    let mut next = 0u64;
    loop {
        // Seen before looking: a change after the look wakes the wait.
        changes.mark_unchanged();
        let step = live.next(next, BATCH as usize);
        match step {
            Next::Requeued(requeue) => return Ok(Followed::Requeued(requeue)),
            Next::Taken => {
                return from_record(shared, conn, live, &mut changes, &header, next, started).await
            }
            _ if !started => {
                conn.send(&ServerToClient::ObserveStart(header.clone()))
                    .await?;
                started = true;
            }
            Next::Lines(lines) => {
                next += lines.len() as u64;
                conn.send(&ServerToClient::Console(lines)).await?;
            }
            Next::Spool { recent } => {
                let map = live.spool().clone();
                let read =
                    tokio::task::spawn_blocking(move || spool::read_lines(&map, next, BATCH))
                        .await
                        .context("console spool reader panicked")?;
                let found = match read {
                    Ok(SpoolRead::Lines(lines)) if !lines.is_empty() => {
                        next += lines.len() as u64;
                        conn.send(&ServerToClient::Console(lines)).await?;
                        continue;
                    }
                    Ok(SpoolRead::Lines(_)) => None,
                    Ok(SpoolRead::Missing(found)) => found,
                    Err(e) => {
                        tracing::warn!(uuid = %header.uuid, error = ?protocol::Chain(&e), "cannot read the console spool for an observer");
                        None
                    }
                };
                // The record may have taken the spool meanwhile.
                if matches!(live.next(next, 0), Next::Taken) {
                    continue;
                }
                // Dropped by the console limit: the observer is told.
                let to = found.unwrap_or(recent).max(next);
                if to > next {
                    shared.metrics.lines_dropped(to - next);
                    conn.send(&ServerToClient::Dropped { lines: to - next })
                        .await?;
                    next = to;
                }
            }
            Next::Wait => {
                tokio::select! {
                    changed = changes.changed() => {
                        if changed.is_err() {
                            anyhow::bail!("build {} vanished", header.uuid);
                        }
                    }
                    _ = shared.shutdown.cancelled() => return Ok(Followed::Over),
                }
            }
            Next::End(finished, outcome) => {
                conn.send(&ServerToClient::ObserveEnd { finished, outcome })
                    .await?;
                return Ok(Followed::Over);
            }
        }
    }
}

/// The build is over and its console is being written into its record:
/// waits for the end, then replays the record from line `from` on (the
/// lines before were sent already).
async fn from_record(
    shared: &Arc<Shared>,
    conn: &mut impl ObserveSink,
    live: &LiveBuild,
    changes: &mut watch::Receiver<u64>,
    header: &BuildHeader,
    from: u64,
    started: bool,
) -> anyhow::Result<Followed> {
    let uuid = header.uuid;
    let (finished, outcome) = loop {
        changes.mark_unchanged();
        match live.next(u64::MAX, 0) {
            Next::End(finished, outcome) => break (finished, outcome),
            // The record could not be stored; the build was requeued.
            Next::Requeued(requeue) => return Ok(Followed::Requeued(requeue)),
            _ => {}
        }
        tokio::select! {
            changed = changes.changed() => {
                if changed.is_err() {
                    anyhow::bail!("build {uuid} vanished");
                }
            }
            _ = shared.shutdown.cancelled() => return Ok(Followed::Over),
        }
    };
    match shared
        .db
        .result_path(uuid)
        .await
        .map_err(|e| shared.refuse_or_stop(e))?
    {
        Some(path) => replay(conn, uuid, path, from, !started)
            .await
            .map(|()| Followed::Over),
        // No record (the disk refused it): the end says why.
        None => {
            if !started {
                conn.send(&ServerToClient::ObserveStart(header.clone()))
                    .await?;
            }
            conn.send(&ServerToClient::ObserveEnd { finished, outcome })
                .await?;
            Ok(Followed::Over)
        }
    }
}

/// Streams a stored build from its record: the header (unless `header` is
/// false: it was sent already), console lines from index `from` on, the end.
///
/// The record keeps the newest line first. Its console is located first
/// (one offset per [`BATCH`] lines), then read back a batch at a time from
/// the oldest: memory stays small whatever the console's size.
async fn replay(
    conn: &mut impl ObserveSink,
    uuid: Uuid,
    path: PathBuf,
    from: u64,
    header: bool,
) -> anyhow::Result<()> {
    let shown = path.display().to_string();
    let indexed = tokio::task::spawn_blocking(move || -> anyhow::Result<_> {
        let file = std::fs::File::open(&path)?;
        let (head, index) = record::index_record(&file, BATCH)?;
        Ok((file, head, index))
    })
    .await
    .context("record reader panicked")?;
    let (mut file, head, index) = match indexed {
        Ok(indexed) => indexed,
        Err(e) => return unreadable(conn, uuid, &shown, e).await,
    };
    if header {
        conn.send(&ServerToClient::ObserveStart(BuildHeader {
            uuid,
            job: record::lossy(&head.job.name).into_owned(),
            platform: record::lossy(head.job.platform_or_default()).into_owned(),
            started: Timestamp::from_datetime(head.started),
        }))
        .await?;
    }
    for k in (0..index.checkpoints.len()).rev() {
        let (offset, count) = index.piece(k).expect("a checkpoint's piece");
        // This piece's lines, counted from the oldest.
        let first = index.lines - k as u64 * index.every - count;
        if first + count <= from {
            continue;
        }
        let read = tokio::task::spawn_blocking(move || -> anyhow::Result<_> {
            use std::io::{Seek, SeekFrom};
            file.seek(SeekFrom::Start(offset))?;
            let lines = record::read_console_lines(&file, offset, count)?;
            Ok((file, lines))
        })
        .await
        .context("record reader panicked")?;
        let lines = match read {
            Ok((back, lines)) => {
                file = back;
                lines
            }
            Err(e) => return unreadable(conn, uuid, &shown, e).await,
        };
        let skip = usize::try_from(from.saturating_sub(first)).unwrap_or(usize::MAX);
        let batch: Vec<OutputLine> = lines
            .into_iter()
            .rev()
            .skip(skip)
            .map(|l| OutputLine {
                delta_ns: l.delta_ns,
                data: l.data,
            })
            .collect();
        conn.send(&ServerToClient::Console(batch)).await?;
    }
    conn.send(&ServerToClient::ObserveEnd {
        finished: Timestamp::from_datetime(head.finished),
        outcome: JobOutcome::from(&head.result),
    })
    .await?;
    Ok(())
}

/// Tells the observer the record cannot be read, and fails.
async fn unreadable(
    conn: &mut impl ObserveSink,
    uuid: Uuid,
    path: &str,
    error: anyhow::Error,
) -> anyhow::Result<()> {
    let reason = format!("cannot read the record of {uuid} ({path}): {error:#}");
    conn.send(&ServerToClient::Failure {
        reason: reason.clone(),
    })
    .await?;
    anyhow::bail!(reason)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::db::{Db, QueuedJob, Running};
    use crate::spool::{BuildSpool, SharedMap};
    use crate::Config;
    use tokio::net::{TcpListener, TcpStream};
    use tokio_util::sync::CancellationToken;

    fn line(i: usize) -> OutputLine {
        OutputLine {
            delta_ns: i as i64,
            data: format!("line {i}").into_bytes(),
        }
    }

    struct Setup {
        _dir: tempfile::TempDir,
        shared: Arc<Shared>,
        running: Running,
        live: Arc<LiveBuild>,
        spool: Option<BuildSpool>,
    }

    /// Lines for observers, and for the spool.
    async fn push(setup: &mut Setup, lines: Vec<OutputLine>) {
        let batch = setup.live.push(lines).unwrap();
        let spool = setup.spool.as_mut().unwrap();
        spool.console(batch).await.unwrap();
    }

    async fn setup(lines: usize) -> Setup {
        let dir = tempfile::tempdir().unwrap();
        let db = Db::open(&dir.path().join("state.db")).unwrap();
        let config = Config::new(dir.path().to_owned());
        let shared = Arc::new(Shared::new(config, db, CancellationToken::new()));
        let running = Running {
            uuid: Uuid::new_v4(),
            job: QueuedJob {
                job: "job".into(),
                platform: "p".into(),
                script: "true".into(),
                timeout_secs: 60,
                lost: 0,
            },
            assigned: Timestamp(1_000_000_000),
            worker: "w".into(),
        };
        let map = SharedMap::default();
        let live = LiveBuild::new(
            BuildHeader {
                uuid: running.uuid,
                job: "job".into(),
                platform: "p".into(),
                started: running.assigned,
            },
            map.clone(),
        );
        let build_dir = crate::store::build_dir(dir.path(), "job", running.uuid);
        let spool = BuildSpool::start(&build_dir, 1, usize::MAX, map);
        shared.live.insert(running.uuid, live.clone());
        let mut setup = Setup {
            _dir: dir,
            shared,
            running,
            live,
            spool: Some(spool),
        };
        if lines > 0 {
            push(&mut setup, (0..lines).map(line).collect()).await;
        }
        setup
    }

    /// Runs `serve` on the server's end of a real connection; returns the
    /// client's end and the server's task.
    async fn connected<F>(
        serve: impl FnOnce(Connection) -> F + Send + 'static,
    ) -> (Connection, tokio::task::JoinHandle<()>)
    where
        F: std::future::Future<Output = ()> + Send + 'static,
    {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let server = tokio::spawn(async move {
            let (stream, _) = listener.accept().await.unwrap();
            serve(Connection::from_tcp(stream, 1 << 20).unwrap()).await;
        });
        let client =
            Connection::from_tcp(TcpStream::connect(addr).await.unwrap(), 1 << 20).unwrap();
        (client, server)
    }

    /// Starts an observer of the build on a real connection; returns the
    /// client's end.
    async fn observer(setup: &Setup) -> Connection {
        let shared = setup.shared.clone();
        let uuid = setup.running.uuid;
        let (client, _) = connected(move |mut conn| async move {
            observe(&shared, &mut conn, uuid).await.unwrap();
        })
        .await;
        client
    }

    /// Writes the build's record from its spool and indexes it.
    async fn store(setup: &mut Setup, end: Timestamp, outcome: JobOutcome) {
        let spooled = setup.spool.take().unwrap().finish().await;
        crate::build::finish::store_result(
            &setup.shared,
            &setup.running,
            setup.running.assigned,
            end,
            outcome,
            spooled,
        )
        .await
        .unwrap();
    }

    /// Everything the observer was sent: the console and the outcome.
    async fn received(conn: &mut Connection) -> (Vec<OutputLine>, JobOutcome) {
        let first = conn.recv::<ServerToClient>().await.unwrap().unwrap();
        assert!(
            matches!(first, ServerToClient::ObserveStart(_)),
            "{first:?}"
        );
        let mut console = Vec::new();
        loop {
            match conn.recv::<ServerToClient>().await.unwrap().unwrap() {
                ServerToClient::Console(lines) => console.extend(lines),
                ServerToClient::ObserveEnd { outcome, .. } => return (console, outcome),
                other => panic!("unexpected {other:?}"),
            }
        }
    }

    #[tokio::test]
    async fn an_observer_arriving_while_the_record_is_written_gets_it_all() {
        let mut setup = setup(3000).await;
        // The worker is done: the console goes into the record.
        setup.live.take_console();
        let mut client = observer(&setup).await;
        let end = Timestamp(2_000_000_000);
        store(&mut setup, end, JobOutcome::Exited(3)).await;
        setup.live.finish(end, JobOutcome::Exited(3));
        let (console, outcome) = received(&mut client).await;
        assert_eq!(console, (0..3000).map(line).collect::<Vec<_>>());
        assert_eq!(outcome, JobOutcome::Exited(3));
    }

    #[tokio::test]
    async fn a_record_is_replayed_oldest_first_from_any_line() {
        // 2.5 pieces of BATCH lines: the pieces are read from the last.
        let lines = BATCH as usize * 2 + BATCH as usize / 2;
        let mut setup = setup(lines).await;
        setup.live.take_console();
        store(&mut setup, Timestamp(2_000_000_000), JobOutcome::Exited(0)).await;
        let path = setup
            .shared
            .db
            .result_path(setup.running.uuid)
            .await
            .unwrap()
            .unwrap();
        for from in [
            0,
            1,
            BATCH / 2,
            BATCH / 2 + 1,
            BATCH * 2,
            lines as u64 - 1,
            lines as u64,
            lines as u64 + 5,
        ] {
            let (uuid, path) = (setup.running.uuid, path.clone());
            let (mut client, server) = connected(move |mut conn| async move {
                replay(&mut conn, uuid, path, from, true).await.unwrap();
            })
            .await;
            let (console, outcome) = received(&mut client).await;
            server.await.unwrap();
            let want: Vec<OutputLine> = (from as usize..lines).map(line).collect();
            assert!(
                console == want,
                "from {from}: {} lines instead of {}",
                console.len(),
                want.len()
            );
            assert_eq!(outcome, JobOutcome::Exited(0));
        }
    }

    #[tokio::test]
    async fn an_observer_of_a_build_that_could_not_be_stored_gets_its_end() {
        let setup = setup(10).await;
        setup.live.take_console();
        let mut client = observer(&setup).await;
        let outcome = JobOutcome::Aborted("worker lost (disk full); requeued".into());
        setup.live.finish(Timestamp(5), outcome.clone());
        assert_eq!(received(&mut client).await, (Vec::new(), outcome));
    }

    #[tokio::test]
    async fn an_observer_of_a_running_build_gets_the_backlog_then_live_lines() {
        let mut setup = setup(2500).await;
        let mut client = observer(&setup).await;
        // Poll until the observer has subscribed, then add live lines.
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
        while setup.live.observers() == 0 {
            assert!(
                std::time::Instant::now() < deadline,
                "observer never subscribed"
            );
            tokio::time::sleep(std::time::Duration::from_millis(1)).await;
        }
        push(&mut setup, (2500..2600).map(line).collect()).await;
        setup.live.finish(Timestamp(5), JobOutcome::Exited(0));
        let (console, outcome) = received(&mut client).await;
        assert_eq!(console, (0..2600).map(line).collect::<Vec<_>>());
        assert_eq!(outcome, JobOutcome::Exited(0));
    }

    #[tokio::test]
    async fn a_late_observer_gets_the_early_lines_from_the_spool() {
        let mut setup = setup(0).await;
        let big = |i: usize| OutputLine {
            delta_ns: i as i64,
            data: format!("{i:0999}").into_bytes(),
        };
        // Three times what memory keeps: the first lines are only on disk.
        let n = 3 * crate::live::RECENT_BYTES / 1000;
        for chunk in (0..n).collect::<Vec<_>>().chunks(100) {
            push(&mut setup, chunk.iter().copied().map(big).collect()).await;
        }
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
        let mut i = n;
        while !matches!(setup.live.next(0, 1), crate::live::Next::Spool { .. }) {
            assert!(
                std::time::Instant::now() < deadline,
                "the first lines never left memory"
            );
            tokio::time::sleep(std::time::Duration::from_millis(1)).await;
            // Memory is trimmed as lines come.
            push(&mut setup, vec![big(i)]).await;
            i += 1;
        }
        let mut client = observer(&setup).await;
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
        while setup.live.observers() == 0 {
            assert!(
                std::time::Instant::now() < deadline,
                "observer never subscribed"
            );
            tokio::time::sleep(std::time::Duration::from_millis(1)).await;
        }
        push(&mut setup, vec![big(i)]).await;
        setup.live.finish(Timestamp(5), JobOutcome::Exited(0));
        let (console, outcome) = received(&mut client).await;
        assert_eq!(console.len(), i + 1);
        assert!(console == (0..=i).map(big).collect::<Vec<_>>());
        assert_eq!(outcome, JobOutcome::Exited(0));
    }
}
