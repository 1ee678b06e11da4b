//! The server's settings ([`Config`]), every default of them, and how the
//! command line becomes them (`impl TryFrom<cli::Args> for Config`): token
//! files read, the upload target parsed, the `--legacy-peers` networks, and
//! the refusals to serve beyond loopback without tokens.
//!
//! Each default is written here once (the upload's in [`crate::upload`]);
//! [`crate::cli`] shows them in `--help` from these constants and checks
//! ranges while parsing.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::Context;

use crate::bounds::BuildLimits;
use crate::cli::Args;
use crate::http::HttpConfig;
use crate::legacy::peers::{self, Cidr};
use crate::upload::UploadConfig;

/// The server's settings.
#[derive(Debug, Clone)]
pub struct Config {
    /// State directory: `<job>/<uuid>/full` records, and the server's lock
    /// and `state.db` in `.builder/` (see [`crate::layout`]).
    pub dir: PathBuf,
    /// Where `orb-build.template.<platform>` files are.
    pub config_dir: PathBuf,
    /// Default job timeout.
    pub job_timeout: Duration,
    /// Largest frame accepted from a peer.
    pub max_frame: usize,
    /// Most console bytes kept in memory (and in the record) per build; see
    /// [`crate::live`].
    pub max_console: usize,
    /// Heartbeat interval on worker connections; silent for three of these
    /// means lost.
    pub heartbeat: Duration,
    /// Most connections whose hello was accepted, served at once; more are
    /// refused with a reason.
    pub max_connections: usize,
    /// Most connections that have not said hello yet (see
    /// [`crate::admission`]): a newer one evicts the oldest past it.
    pub max_unauthenticated: usize,
    /// Most connections from one address that have not said hello yet: a
    /// newer one from that address evicts its oldest past it.
    pub max_unauthenticated_per_ip: usize,
    /// How long a peer has to send its hello.
    pub hello_timeout: Duration,
    /// How long a frame may take to arrive once it has started, after the
    /// hello (idle time between frames is not limited).
    pub frame_timeout: Duration,
    /// Limits on what one build's worker may send.
    pub limits: BuildLimits,
    /// Token clients must present, if set.
    pub client_token: Option<String>,
    /// Token workers must present, if set.
    pub worker_token: Option<String>,
    /// Where and how to deliver records, if anywhere.
    pub upload: Option<UploadConfig>,
    /// Networks from which the reference's peers, which cannot send a
    /// token, are accepted when a token is required (see [`crate::legacy`]).
    pub legacy_peers: Vec<Cidr>,
    /// Where to serve `/metrics` and `/healthz`, if anywhere (checked for
    /// loopback when built from the command line).
    pub metrics: Option<SocketAddr>,
    /// On shutdown, how long running builds may go on to finish; no new
    /// build is handed out meanwhile. Zero: stop at once (they are requeued
    /// at the next start).
    pub drain_timeout: Duration,
    /// The HTTP listener (`--http`), if any.
    pub http: Option<HttpConfig>,
}

/// The default of [`Config::job_timeout`]: 1 hour.
pub const DEFAULT_JOB_TIMEOUT: Duration = Duration::from_secs(3600);

/// The default of [`Config::heartbeat`]: 5 s.
pub const DEFAULT_HEARTBEAT: Duration = Duration::from_secs(5);

/// The default of [`Config::max_connections`].
pub const DEFAULT_MAX_CONNECTIONS: usize = 4096;

/// The default of [`Config::max_console`]: 256 MiB.
pub const DEFAULT_MAX_CONSOLE: usize = 256 * 1024 * 1024;

/// The default of [`Config::max_unauthenticated`].
pub const DEFAULT_MAX_UNAUTHENTICATED: usize = 1024;

/// The default of [`Config::max_unauthenticated_per_ip`].
pub const DEFAULT_MAX_UNAUTHENTICATED_PER_IP: usize = 64;

/// The default of [`Config::hello_timeout`].
pub const DEFAULT_HELLO_TIMEOUT: Duration = Duration::from_secs(5);

/// The default of [`Config::frame_timeout`].
pub const DEFAULT_FRAME_TIMEOUT: Duration = Duration::from_secs(60);

/// The default of [`Config::drain_timeout`]: none, stop at once.
pub const DEFAULT_DRAIN_TIMEOUT: Duration = Duration::ZERO;

/// The smallest `--max-frame`: below it not even a failure's reason fits.
pub const MIN_MAX_FRAME: usize = 1024;

/// `/etc/builder`, or `/usr/local/etc/builder` on FreeBSD.
pub fn default_config_dir() -> &'static str {
    if cfg!(target_os = "freebsd") {
        "/usr/local/etc/builder"
    } else {
        "/etc/builder"
    }
}

/// `/var/lib/builder`, or `/var/db/builder` on FreeBSD.
pub fn default_state_dir() -> &'static str {
    if cfg!(target_os = "freebsd") {
        "/var/db/builder"
    } else {
        "/var/lib/builder"
    }
}

impl Config {
    /// Defaults for a state directory (used by tests and benchmarks; the
    /// command line starts from the same constants).
    pub fn new(dir: PathBuf) -> Config {
        Config {
            dir,
            config_dir: PathBuf::from(default_config_dir()),
            job_timeout: DEFAULT_JOB_TIMEOUT,
            max_frame: protocol::codec::DEFAULT_MAX_FRAME,
            max_console: DEFAULT_MAX_CONSOLE,
            heartbeat: DEFAULT_HEARTBEAT,
            max_connections: DEFAULT_MAX_CONNECTIONS,
            max_unauthenticated: DEFAULT_MAX_UNAUTHENTICATED,
            max_unauthenticated_per_ip: DEFAULT_MAX_UNAUTHENTICATED_PER_IP,
            hello_timeout: DEFAULT_HELLO_TIMEOUT,
            frame_timeout: DEFAULT_FRAME_TIMEOUT,
            limits: BuildLimits::default(),
            client_token: None,
            worker_token: None,
            upload: None,
            legacy_peers: Vec::new(),
            metrics: None,
            drain_timeout: DEFAULT_DRAIN_TIMEOUT,
            http: None,
        }
    }
}

/// Builds the settings from the command line: reads the token and
/// credential files, parses `--upload` and `--legacy-peers`, and refuses to
/// serve beyond loopback without tokens (or metrics at all) unless
/// `--insecure`. Ranges were checked by the parser ([`crate::cli`]).
/// `--ip`, `--port` and `--import-state` are the caller's.
impl TryFrom<Args> for Config {
    type Error = anyhow::Error;

    fn try_from(args: Args) -> anyhow::Result<Config> {
        let legacy_peers = match &args.legacy_peers {
            Some(text) => peers::parse_list(text).context("--legacy-peers")?,
            None => Vec::new(),
        };
        let client_token = args
            .client_token_file
            .as_deref()
            .map(|p| read_token(p, "--client-token-file"))
            .transpose()?;
        let worker_token = args
            .worker_token_file
            .as_deref()
            .map(|p| read_token(p, "--worker-token-file"))
            .transpose()?;
        if !args.ip.is_loopback()
            && (client_token.is_none() || worker_token.is_none())
            && !args.insecure
        {
            anyhow::bail!(
                "refusing to listen on {} without --client-token-file and --worker-token-file; pass --insecure to do it anyway",
                args.ip
            );
        }
        if let Some(addr) = args.metrics.filter(|a| !a.ip().is_loopback()) {
            if !args.insecure {
                anyhow::bail!(
                    "refusing to serve --metrics on {addr}, which is not a loopback address; pass --insecure to do it anyway"
                );
            }
            tracing::warn!(%addr, "serving metrics beyond loopback (--insecure)");
        }
        let upload = match &args.upload {
            Some(url) => Some(upload_config(url, &args)?),
            None => None,
        };
        let tokens = client_token.is_some() && worker_token.is_some();
        let http = match args.http {
            Some(addr) => Some(http_config(addr, &args, tokens)?),
            None => None,
        };
        Ok(Config {
            dir: args.dir,
            config_dir: args.config_dir,
            job_timeout: Duration::from_secs(args.job_timeout),
            max_frame: args.max_frame,
            max_console: args.max_console_bytes,
            heartbeat: Duration::from_millis(args.heartbeat_ms),
            max_connections: args.max_connections,
            max_unauthenticated: args.max_unauthenticated,
            max_unauthenticated_per_ip: args.max_unauthenticated_per_ip,
            hello_timeout: Duration::from_secs(args.hello_timeout),
            frame_timeout: Duration::from_secs(args.frame_timeout),
            limits: BuildLimits {
                max_artifact_bytes: args.max_artifact_bytes,
                max_artifacts: args.max_artifacts,
                timeout_grace: Duration::from_secs(args.timeout_grace),
            },
            client_token,
            worker_token,
            upload,
            legacy_peers,
            metrics: args.metrics,
            drain_timeout: Duration::from_secs(args.drain_timeout),
            http,
        })
    }
}

/// `--http ADDR:PORT` and its `--http-*` flags (ranges are checked while
/// parsing). A non-loopback address follows the TCP port's rule: both
/// tokens configured, or `--insecure`.
fn http_config(addr: SocketAddr, args: &Args, tokens: bool) -> anyhow::Result<HttpConfig> {
    if !addr.ip().is_loopback() && !tokens && !args.insecure {
        anyhow::bail!(
            "refusing to serve --http on {addr} without --client-token-file and --worker-token-file; pass --insecure to do it anyway"
        );
    }
    if let Some(url) = args
        .public_url
        .as_deref()
        .filter(|u| !(u.starts_with("http://") || u.starts_with("https://")))
    {
        anyhow::bail!("--public-url {url:?}: give an absolute http:// or https:// URL");
    }
    Ok(HttpConfig {
        public_url: args.public_url.clone(),
        public_read: args.http_public_read,
        max_connections: args.http_max_connections,
        max_sse: args.http_max_sse,
        max_body: args.http_max_body,
        header_timeout: Duration::from_secs(args.http_header_timeout),
        idle_timeout: Duration::from_secs(args.http_idle_timeout),
        ..HttpConfig::new(addr)
    })
}

/// Reads the token of `flag` (rule: [`protocol::token`]).
fn read_token(path: &Path, flag: &str) -> anyhow::Result<String> {
    protocol::token::read_token_file(path).with_context(|| flag.to_owned())
}

/// `--upload URL` with its credentials file and tuning flags.
fn upload_config(url: &str, args: &Args) -> anyhow::Result<UploadConfig> {
    let credentials = args
        .upload_credentials
        .as_deref()
        .map(|p| {
            std::fs::read_to_string(p)
                .with_context(|| format!("--upload-credentials {}: cannot read", p.display()))
        })
        .transpose()?;
    let mut upload = UploadConfig::parse(url, credentials.as_deref())?;
    upload.concurrency = args.upload_concurrency;
    upload.backoff_cap = Duration::from_secs(args.upload_backoff_cap);
    upload.backoff_base = Duration::from_millis(args.upload_backoff_min_ms).min(upload.backoff_cap);
    upload.delete_delivered = args.delete_delivered;
    Ok(upload)
}

#[cfg(test)]
mod tests {
    use clap::Parser;

    use super::*;

    fn config(args: &[&str]) -> anyhow::Result<Config> {
        let args =
            Args::try_parse_from(std::iter::once("builder-server").chain(args.iter().copied()))
                .map_err(|e| anyhow::anyhow!("{e}"))?;
        Config::try_from(args)
    }

    #[test]
    fn the_command_line_defaults_are_config_new() {
        let from_cli = config(&["--dir", "/d", "--config-dir", "/c"]).unwrap();
        let mut new = Config::new(PathBuf::from("/d"));
        new.config_dir = PathBuf::from("/c");
        assert_eq!(format!("{from_cli:?}"), format!("{new:?}"));
    }

    #[test]
    fn upload_defaults_come_from_the_upload_module() {
        let c = config(&["--upload", "https://u:p@example.org/upload"]).unwrap();
        let upload = c.upload.unwrap();
        let parsed = UploadConfig::parse("https://example.org/upload", None).unwrap();
        assert_eq!(upload.concurrency, parsed.concurrency);
        assert_eq!(upload.backoff_cap, parsed.backoff_cap);
        assert_eq!(upload.backoff_base, parsed.backoff_base);
        assert_eq!(upload.user.as_deref(), Some("u"));
    }

    #[test]
    fn beyond_loopback_needs_tokens_or_insecure() {
        let e = config(&["--ip", "0.0.0.0"]).unwrap_err();
        assert!(format!("{e:#}").contains("pass --insecure"), "{e:#}");
        config(&["--ip", "0.0.0.0", "--insecure"]).unwrap();
        let e = config(&["--metrics", "0.0.0.0:9100"]).unwrap_err();
        assert!(
            format!("{e:#}").contains("--metrics on 0.0.0.0:9100"),
            "{e:#}"
        );
    }

    #[test]
    fn a_missing_token_file_names_the_flag() {
        let e = config(&["--client-token-file", "/nonexistent/token"]).unwrap_err();
        assert!(format!("{e:#}").starts_with("--client-token-file"), "{e:#}");
    }
}
