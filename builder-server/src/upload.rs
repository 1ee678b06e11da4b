//! Delivers build records to builder-web.
//!
//! The spool is the result index: a record is `pending` from the moment it is
//! stored until builder-web accepts it (2xx, or 409 Conflict: it has it
//! already). Pending records are POSTed oldest first, a few at a time, the
//! body streamed from the `full` file. Nothing is ever given up: failures are
//! retried with exponential backoff and jitter, without limit and across
//! restarts.
//!
//! Two kinds of failure back off differently:
//! - *The store is unavailable* (network error, timeout, 5xx, 408, 429, and
//!   401/403, which mean the credentials are wrong and are logged loudly):
//!   the whole spool waits, so when builder-web is back the records still go
//!   oldest first.
//! - *The store refuses this record* (any other 4xx): only that record waits,
//!   so one bad record cannot hold up the others.

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use protocol::message::Timestamp;
use rand::Rng;
use reqwest::header::{CONTENT_LENGTH, CONTENT_TYPE};
use reqwest::StatusCode;
use tokio::task::JoinSet;
use uuid::Uuid;

use crate::db::PendingUpload;
use crate::state::Shared;

/// The default of [`UploadConfig::concurrency`] (`--upload-concurrency`).
pub const DEFAULT_CONCURRENCY: usize = 2;

/// The default of [`UploadConfig::backoff_cap`] (`--upload-backoff-cap`):
/// 10 minutes.
pub const DEFAULT_BACKOFF_CAP: Duration = Duration::from_secs(600);

/// The default of [`UploadConfig::backoff_base`]
/// (`--upload-backoff-min-ms`): 5 s.
pub const DEFAULT_BACKOFF_BASE: Duration = Duration::from_secs(5);

/// [`UploadConfig::timeout`]: how long one attempt may take.
pub const ATTEMPT_TIMEOUT: Duration = Duration::from_secs(3600);

/// Where and how records are uploaded.
#[derive(Clone)]
pub struct UploadConfig {
    /// The endpoint, without user-info (`https://builds.example.org/upload`).
    pub url: reqwest::Url,
    /// Basic-auth user, if any.
    pub user: Option<String>,
    /// Basic-auth password, if any. Never logged.
    pub password: Option<String>,
    /// Uploads in flight at once.
    pub concurrency: usize,
    /// The longest wait between two attempts for one record.
    pub backoff_cap: Duration,
    /// The first wait after a failure (doubling from there).
    pub backoff_base: Duration,
    /// How long one attempt may take.
    pub timeout: Duration,
    /// Remove a build's directory once its record is delivered.
    pub delete_delivered: bool,
}

impl std::fmt::Debug for UploadConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("UploadConfig")
            .field("url", &self.url.as_str())
            .field("user", &self.user)
            .field("password", &self.password.as_ref().map(|_| "<hidden>"))
            .field("concurrency", &self.concurrency)
            .field("backoff_cap", &self.backoff_cap)
            .finish()
    }
}

impl UploadConfig {
    /// Parses `--upload URL`: credentials in the URL's user-info are
    /// percent-decoded and taken out of the URL. `credentials` (the content
    /// of `--upload-credentials FILE`, `user:password` on its first line)
    /// overrides them.
    pub fn parse(url: &str, credentials: Option<&str>) -> anyhow::Result<UploadConfig> {
        let mut url = reqwest::Url::parse(url)
            .with_context(|| format!("invalid --upload URL {:?}", redact(url)))?;
        if !matches!(url.scheme(), "http" | "https") {
            anyhow::bail!("--upload URL must be http or https, not {}", url.scheme());
        }
        let decode = |s: &str| {
            percent_encoding::percent_decode_str(s)
                .decode_utf8_lossy()
                .into_owned()
        };
        let mut user = (!url.username().is_empty()).then(|| decode(url.username()));
        let mut password = url.password().map(decode);
        let _ = url.set_username("");
        let _ = url.set_password(None);
        if let Some(line) = credentials {
            let line = line.lines().next().unwrap_or("").trim();
            let (u, p) = line
                .split_once(':')
                .context("--upload-credentials file must hold user:password on its first line")?;
            user = Some(u.to_owned());
            password = Some(p.to_owned());
        }
        Ok(UploadConfig {
            url,
            user,
            password,
            concurrency: DEFAULT_CONCURRENCY,
            backoff_cap: DEFAULT_BACKOFF_CAP,
            backoff_base: DEFAULT_BACKOFF_BASE,
            timeout: ATTEMPT_TIMEOUT,
            delete_delivered: false,
        })
    }

    /// The wait before attempt `attempts + 1`: base × 2^attempts, capped,
    /// with ±25 % jitter so many records do not retry in lockstep.
    pub fn backoff(&self, attempts: u32) -> Duration {
        let exp = self
            .backoff_base
            .saturating_mul(1u32.checked_shl(attempts.min(31)).unwrap_or(u32::MAX))
            .min(self.backoff_cap);
        let jitter = rand::rng().random_range(0.75..=1.25);
        exp.mul_f64(jitter).min(self.backoff_cap)
    }
}

/// A URL for logs: user-info removed.
fn redact(url: &str) -> String {
    match reqwest::Url::parse(url) {
        Ok(mut u) => {
            let _ = u.set_username("");
            let _ = u.set_password(None);
            u.to_string()
        }
        Err(_) => "<unparsable>".into(),
    }
}

/// Why an attempt failed.
#[derive(Debug)]
enum Failure {
    /// builder-web is unreachable, overloaded or refuses our credentials:
    /// every record waits.
    Store(String),
    /// builder-web refuses our credentials (401/403): a misconfiguration
    /// only an operator can fix, so every record waits the longest backoff.
    Credentials(String),
    /// builder-web refuses this record: only it waits.
    Record(String),
}

impl Failure {
    /// The `kind` label of the upload failure metric.
    fn kind(&self) -> &'static str {
        match self {
            Failure::Store(_) => "store",
            Failure::Credentials(_) => "credentials",
            Failure::Record(_) => "record",
        }
    }
}

/// The uploader task.
pub async fn run(shared: Arc<Shared>) {
    let config = shared
        .config
        .upload
        .clone()
        .expect("uploader runs only with --upload");
    let client = match reqwest::Client::builder()
        .timeout(config.timeout)
        .connect_timeout(Duration::from_secs(30))
        .user_agent(concat!("builder-server/", env!("CARGO_PKG_VERSION")))
        .build()
    {
        Ok(c) => c,
        Err(e) => {
            tracing::error!(error = ?protocol::Chain(&e), "cannot set up the HTTP client; uploads disabled");
            return;
        }
    };
    // Records stored while the server ran without --upload join the spool.
    match shared.db.spool_unconfigured(Timestamp::now()).await {
        Ok(0) => {}
        Ok(n) => tracing::info!(
            count = n,
            "records stored without --upload joined the upload spool"
        ),
        // A full disk: they join at the next start.
        Err(e) => {
            if !shared.refuse_or_stop(e).is_disk_full() {
                return;
            }
        }
    }
    let mut in_flight: InFlight<(PendingUpload, Result<(), Failure>)> = InFlight::default();
    // Spool-wide backoff while builder-web is unavailable.
    let mut store_failures: u32 = 0;
    let mut store_retry_at: Option<tokio::time::Instant> = None;
    loop {
        let wakeup = shared.upload_wakeup.notified();
        tokio::pin!(wakeup);
        wakeup.as_mut().enable();
        let store_waiting = store_retry_at.is_some_and(|t| t > tokio::time::Instant::now());
        let free = config.concurrency.saturating_sub(in_flight.len());
        if free > 0 && !store_waiting {
            let due = match shared
                .db
                .due_uploads(Timestamp::now(), &in_flight.busy(), free)
                .await
            {
                Ok(due) => due,
                Err(e) => {
                    shared.refuse_or_stop(e);
                    return;
                }
            };
            for pending in due {
                let client = client.clone();
                let config = config.clone();
                in_flight.spawn(pending.uuid, async move {
                    let result = upload(&client, &config, &pending).await;
                    (pending, result)
                });
            }
        }
        let sleep = match store_retry_at {
            Some(t) if store_waiting => t.saturating_duration_since(tokio::time::Instant::now()),
            _ => match shared.db.next_upload_due().await {
                Ok(Some(t)) => t
                    .since(Timestamp::now())
                    .clamp(Duration::from_millis(10), Duration::from_secs(60)),
                Ok(None) => Duration::from_secs(60),
                Err(e) => {
                    shared.refuse_or_stop(e);
                    return;
                }
            },
        };
        tokio::select! {
            Some((uuid, done)) = in_flight.join_next(), if !in_flight.is_empty() => {
                let now = Timestamp::now();
                let (pending, result) = match done {
                    Ok(done) => done,
                    Err(e) => {
                        // Its slot is free again (`InFlight` saw to that);
                        // the record waits like one builder-web refused.
                        let error = format!("upload task failed: {e}");
                        tracing::error!(%uuid, %error);
                        let next = now.saturating_add(config.backoff_cap);
                        if let Err(e) = shared.db.upload_failed(uuid, &error, next).await {
                            shared.refuse_or_stop(e);
                            return;
                        }
                        continue;
                    }
                };
                let recorded = match result {
                    Ok(()) => {
                        store_failures = 0;
                        store_retry_at = None;
                        let recorded = shared.db.upload_delivered(pending.uuid, now).await;
                        if recorded.is_ok() && config.delete_delivered {
                            delete_build(&pending.path);
                        }
                        recorded
                    }
                    Err(failure @ (Failure::Store(_) | Failure::Credentials(_))) => {
                        shared.metrics.upload_failed(failure.kind());
                        let (wait, error) = match failure {
                            Failure::Credentials(error) => (config.backoff_cap, error),
                            Failure::Store(error) | Failure::Record(error) => (config.backoff(store_failures), error),
                        };
                        store_failures = store_failures.saturating_add(1);
                        let at = tokio::time::Instant::now() + wait;
                        store_retry_at = Some(store_retry_at.map_or(at, |t| t.max(at)));
                        // Still due: it goes first when the store is back.
                        shared.db.upload_failed(pending.uuid, &error, now).await
                    }
                    Err(Failure::Record(error)) => {
                        shared.metrics.upload_failed("record");
                        let wait = config.backoff(pending.attempts);
                        shared.db.upload_failed(pending.uuid, &error, now.saturating_add(wait)).await
                    }
                };
                // A full disk: the state stays as it was, so the record
                // is sent again (builder-web answers 409 if it has it).
                // Paused a little, so that is not at once.
                if let Err(e) = recorded {
                    if !shared.refuse_or_stop(e).is_disk_full() {
                        return;
                    }
                    let at = tokio::time::Instant::now() + Duration::from_secs(5);
                    store_retry_at = Some(store_retry_at.map_or(at, |t| t.max(at)));
                }
            }
            _ = &mut wakeup => {}
            _ = tokio::time::sleep(sleep), if in_flight.len() < config.concurrency => {}
            _ = shared.shutdown.cancelled() => return,
        }
    }
}

/// Uploads in flight, by the record they deliver. A task that ends in any
/// way, a panic included, gives its record's slot back.
struct InFlight<T> {
    tasks: JoinSet<T>,
    records: HashMap<tokio::task::Id, Uuid>,
}

impl<T> Default for InFlight<T> {
    fn default() -> Self {
        InFlight {
            tasks: JoinSet::new(),
            records: HashMap::new(),
        }
    }
}

impl<T: Send + 'static> InFlight<T> {
    fn spawn(&mut self, uuid: Uuid, task: impl std::future::Future<Output = T> + Send + 'static) {
        let handle = self.tasks.spawn(task);
        self.records.insert(handle.id(), uuid);
    }

    /// How many are in flight.
    fn len(&self) -> usize {
        self.records.len()
    }

    fn is_empty(&self) -> bool {
        self.records.is_empty()
    }

    /// The records being delivered.
    fn busy(&self) -> Vec<Uuid> {
        self.records.values().copied().collect()
    }

    /// The next task to end, with its record, whether it returned or not.
    async fn join_next(&mut self) -> Option<(Uuid, Result<T, tokio::task::JoinError>)> {
        let (id, result) = match self.tasks.join_next_with_id().await? {
            Ok((id, output)) => (id, Ok(output)),
            Err(e) => (e.id(), Err(e)),
        };
        let uuid = self
            .records
            .remove(&id)
            .expect("every task is spawned with its record");
        Some((uuid, result))
    }
}

/// `--delete-delivered`: the record is in builder-web now; its directory
/// (`DIR/<job>/<uuid>/`) goes. The index keeps the build.
fn delete_build(full: &std::path::Path) {
    if let Some(dir) = full.parent() {
        if let Err(e) = std::fs::remove_dir_all(dir) {
            tracing::error!(dir = ?dir.display(), error = ?protocol::Chain(&e), "cannot remove delivered build");
        }
    }
}

/// One attempt. `Err` holds the one-line reason recorded for `results`.
async fn upload(
    client: &reqwest::Client,
    config: &UploadConfig,
    pending: &PendingUpload,
) -> Result<(), Failure> {
    let path: &PathBuf = &pending.path;
    let file = tokio::fs::File::open(path)
        .await
        .map_err(|e| Failure::Record(format!("cannot open {}: {e}", path.display())))?;
    let len = file
        .metadata()
        .await
        .map_err(|e| Failure::Record(format!("cannot stat {}: {e}", path.display())))?
        .len();
    let body = reqwest::Body::wrap_stream(tokio_util::io::ReaderStream::with_capacity(
        file,
        256 * 1024,
    ));
    let mut request = client
        .post(config.url.clone())
        .header(CONTENT_TYPE, "application/octet-stream")
        .header(CONTENT_LENGTH, len)
        .body(body);
    if let Some(user) = &config.user {
        request = request.basic_auth(user, config.password.as_deref());
    }
    let response = request.send().await.map_err(|e| {
        let error = without_url(&e);
        tracing::warn!(job = ?pending.job, uuid = %pending.uuid, ?error, attempt = pending.attempts + 1, "upload failed");
        Failure::Store(error)
    })?;
    let status = response.status();
    if status.is_success() || status == StatusCode::CONFLICT {
        tracing::info!(job = ?pending.job, uuid = %pending.uuid, %status, "record delivered");
        return Ok(());
    }
    let body = response.text().await.unwrap_or_default();
    let snippet: String = body
        .chars()
        .take(200)
        .collect::<String>()
        .replace(['\n', '\r'], " ");
    let error = format!("HTTP {status}: {}", snippet.trim());
    if status == StatusCode::UNAUTHORIZED || status == StatusCode::FORBIDDEN {
        tracing::error!(
            job = ?pending.job, uuid = %pending.uuid, ?error,
            "builder-web refused the upload credentials: check --upload / --upload-credentials"
        );
        return Err(Failure::Credentials(error));
    }
    tracing::warn!(job = ?pending.job, uuid = %pending.uuid, ?error, attempt = pending.attempts + 1, "upload failed");
    if status.is_server_error()
        || status == StatusCode::REQUEST_TIMEOUT
        || status == StatusCode::TOO_MANY_REQUESTS
    {
        Err(Failure::Store(error))
    } else {
        Err(Failure::Record(error))
    }
}

/// reqwest errors name the URL; ours has no password in it, but keep the
/// message short and free of it anyway.
fn without_url(e: &reqwest::Error) -> String {
    let mut msg = e.to_string();
    if let Some(url) = e.url() {
        msg = msg.replace(url.as_str(), "builder-web");
    }
    let mut source = std::error::Error::source(e);
    while let Some(s) = source {
        msg.push_str(": ");
        msg.push_str(&s.to_string());
        source = s.source();
    }
    msg
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn credentials_come_out_of_the_url_decoded() {
        let c = UploadConfig::parse("https://us%40er:p%3Ass@example.org/upload", None).unwrap();
        assert_eq!(c.url.as_str(), "https://example.org/upload");
        assert_eq!(c.user.as_deref(), Some("us@er"));
        assert_eq!(c.password.as_deref(), Some("p:ss"));
        assert!(!format!("{c:?}").contains("p:ss"));
        let c = UploadConfig::parse("http://a:b@example.org/upload", Some("u:secret\n")).unwrap();
        assert_eq!(
            (c.user.as_deref(), c.password.as_deref()),
            (Some("u"), Some("secret"))
        );
        assert!(UploadConfig::parse("ftp://example.org", None).is_err());
        assert!(UploadConfig::parse("http://example.org", Some("nocolon")).is_err());
    }

    #[tokio::test]
    async fn a_panicking_upload_gives_its_slot_back() {
        let mut in_flight: InFlight<&str> = InFlight::default();
        let (a, b) = (Uuid::new_v4(), Uuid::new_v4());
        in_flight.spawn(a, async { panic!("upload task panics") });
        in_flight.spawn(b, async { "delivered" });
        assert_eq!(in_flight.len(), 2);
        let mut ended = Vec::new();
        while let Some((uuid, result)) = in_flight.join_next().await {
            ended.push((uuid, result.map_err(|e| e.is_panic())));
        }
        ended.sort_by_key(|(uuid, _)| *uuid != a);
        assert_eq!(ended, vec![(a, Err(true)), (b, Ok("delivered"))]);
        assert_eq!(in_flight.len(), 0);
        assert!(in_flight.busy().is_empty());
    }

    #[test]
    fn backoff_grows_and_is_capped() {
        let c = UploadConfig::parse("http://example.org/upload", None).unwrap();
        assert!(c.backoff(0) <= Duration::from_millis(6250));
        assert!(c.backoff(3) >= Duration::from_secs(30));
        for attempts in [10, 31, 1000] {
            assert!(c.backoff(attempts) <= c.backoff_cap);
            assert!(c.backoff(attempts) >= c.backoff_cap.mul_f64(0.75));
        }
    }
}
