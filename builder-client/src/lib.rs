//! `builder-client` and `builder-inspect`.
//!
//! - [`cli`]: the client's command line (clap) and its local validation.
//! - [`connect`]: connecting, the hello, one request and its answers.
//! - [`output`]: human and JSON rendering of the answers.
//! - [`inspect`]: `builder-inspect`, the viewer and extractor of stored
//!   build records (`full` files).
//!
//! [`run`] carries out one client command; `main.rs` only parses the command
//! line, sets up logging and maps the result to an exit status.

#![warn(missing_docs)]

pub mod cli;
pub mod connect;
pub mod fetch;
pub mod inspect;
pub mod output;
pub mod units;

use std::io::{self, Write};
use std::path::Path;
use std::process::ExitCode;

use anyhow::{bail, Context, Result};
use protocol::info::InfoSummary;
use protocol::message::{BuildHeader, ClientRequest, JobKind, JobSpec, ServerToClient};
use protocol::trigger::Trigger;

use crate::cli::{Cli, Command};
use crate::connect::{answer_name, Session};
use crate::output::ObserveEvent;

/// Carries out one client command. Returns the exit status on success
/// (`observe` exits with the build's own status).
///
/// # Errors
/// Everything that prevents the command from being carried out: a script
/// or token file that cannot be read, an unreachable server, a refusal
/// (`Failure`), a connection closed early.
pub async fn run(cli: Cli) -> Result<ExitCode> {
    // Everything local first: nothing is sent when a file is unusable.
    let request = request(&cli.command)?;
    let token = protocol::token::load_token(cli.token_file.as_deref())?;

    let mut session = Session::open(&cli.remote, token, cli.timeouts()).await?;
    session.send(&request).await?;

    match &request {
        ClientRequest::Info => {
            let info = receive_info(&mut session).await?;
            let mut out = io::stdout().lock();
            if cli.json {
                output::write_json_line(&mut out, &output::InfoView::new(&info))?;
            } else {
                output::write_info(&mut out, &info)?;
            }
            out.flush()?;
            Ok(ExitCode::SUCCESS)
        }
        ClientRequest::Show { .. } => {
            let entry = match session.recv_answer("sending the job").await? {
                ServerToClient::Job(entry) => entry,
                other => return unexpected(other),
            };
            let mut out = io::stdout().lock();
            if cli.json {
                output::write_json_line(&mut out, &output::ScheduleView::new(&entry))?;
            } else {
                output::write_job(&mut out, &entry)?;
            }
            out.flush()?;
            Ok(ExitCode::SUCCESS)
        }
        ClientRequest::Results { .. } => {
            let results = match answer(&mut session, "sending the results", cli.json).await? {
                ServerToClient::ResultList(results) => results,
                other => return unexpected(other),
            };
            let mut out = io::stdout().lock();
            if cli.json {
                let views: Vec<_> = results.iter().map(output::ResultView::new).collect();
                output::write_json_line(&mut out, &views)?;
            } else {
                output::write_results(&mut out, &results)?;
            }
            out.flush()?;
            Ok(ExitCode::SUCCESS)
        }
        ClientRequest::Observe { .. }
        | ClientRequest::ObserveLatest { .. }
        | ClientRequest::ObserveNext { .. }
        | ClientRequest::ExecuteObserve { .. } => observe(&mut session, cli.json).await,
        ClientRequest::Fetch { .. } => {
            let Command::Fetch {
                output, artifacts, ..
            } = &cli.command
            else {
                unreachable!("only fetch sends Fetch");
            };
            fetch::fetch(&mut session, output, *artifacts, cli.json).await
        }
        _ => match answer(&mut session, "answering the request", cli.json).await? {
            ServerToClient::Success { detail } => {
                // Every change confirms; a server that says nothing about
                // an unschedule still did it.
                let detail = match (&request, detail) {
                    (ClientRequest::Unschedule { name }, None) => {
                        Some(format!("unscheduled {name}"))
                    }
                    (_, detail) => detail,
                };
                let mut out = io::stdout().lock();
                if cli.json {
                    output::write_json_line(
                        &mut out,
                        &serde_json::json!({ "ok": true, "detail": detail }),
                    )?;
                } else if let Some(detail) = detail {
                    writeln!(out, "{detail}")?;
                }
                out.flush()?;
                Ok(ExitCode::SUCCESS)
            }
            other => unexpected(other),
        },
    }
}

/// The next answer, with the notices before it printed on stderr, giving
/// up after [`connect::ANSWER_TIMEOUT`].
async fn answer(session: &mut Session, waiting: &str, json: bool) -> Result<ServerToClient> {
    loop {
        match session.recv_answer(waiting).await? {
            ServerToClient::Notice { message } => notice(&message, json),
            other => return Ok(other),
        }
    }
}

/// Prints a server's notice on stderr (as `{"notice": ...}` with `--json`).
pub fn notice(message: &str, json: bool) {
    if json {
        eprintln!("{}", serde_json::json!({ "notice": message }));
    } else {
        eprintln!("{message}");
    }
}

/// Turns a command into its request, reading the script file if any.
///
/// # Errors
/// The script file cannot be read or is not UTF-8.
pub fn request(command: &Command) -> Result<ClientRequest> {
    Ok(match command {
        Command::Schedule {
            name,
            platform,
            script_file,
            trigger,
            timeout,
        } => ClientRequest::Schedule {
            job: JobSpec {
                name: name.clone(),
                kind: JobKind::Script {
                    platform: platform.clone(),
                    script: read_script(script_file)?,
                },
            },
            trigger: trigger.trigger().unwrap_or(Trigger::Daily),
            timeout_secs: *timeout,
        },
        Command::OrbBuild {
            name,
            opam_package,
            trigger,
            timeout,
        } => ClientRequest::Schedule {
            job: JobSpec {
                name: name.clone(),
                kind: JobKind::Orb {
                    opam_package: opam_package.clone(),
                },
            },
            trigger: trigger.trigger().unwrap_or(Trigger::Daily),
            timeout_secs: *timeout,
        },
        Command::Unschedule { name } => ClientRequest::Unschedule { name: name.clone() },
        Command::Reschedule {
            name,
            next,
            trigger,
        } => ClientRequest::Reschedule {
            name: name.clone(),
            next: *next,
            trigger: trigger.trigger(),
        },
        Command::Execute {
            name,
            platform,
            observe: false,
        } => ClientRequest::Execute {
            name: name.clone(),
            platform: platform.clone(),
        },
        Command::Execute {
            name,
            platform,
            observe: true,
        } => ClientRequest::ExecuteObserve {
            name: name.clone(),
            platform: platform.clone(),
        },
        Command::Info => ClientRequest::Info,
        Command::Show { name } => ClientRequest::Show { name: name.clone() },
        Command::Observe { uuid } => ClientRequest::Observe { uuid: *uuid },
        Command::ObserveLatest {
            platform,
            job,
            wait: false,
        } => ClientRequest::ObserveLatest {
            platform: platform.clone(),
            job: job.clone(),
        },
        Command::ObserveLatest {
            platform,
            job,
            wait: true,
        } => ClientRequest::ObserveNext {
            platform: platform.clone(),
            job: job.clone(),
        },
        Command::Update {
            name,
            script,
            trigger,
            timeout,
            platform,
        } => ClientRequest::Update {
            name: name.clone(),
            script: script.as_deref().map(read_script).transpose()?,
            platform: platform.clone(),
            trigger: trigger.trigger(),
            timeout_secs: *timeout,
        },
        Command::Fetch { uuid, .. } => ClientRequest::Fetch { uuid: *uuid },
        Command::DropPlatform { platform } => ClientRequest::DropPlatform {
            platform: platform.clone(),
        },
        Command::UndropPlatform { platform } => ClientRequest::UndropPlatform {
            platform: platform.clone(),
        },
        Command::Cancel { uuid } => ClientRequest::Cancel { uuid: *uuid },
        Command::Results { job, limit } => ClientRequest::Results {
            job: job.clone(),
            limit: *limit,
        },
    })
}

/// Reads a script file, which must be UTF-8 (the wire carries a string).
fn read_script(path: &Path) -> Result<String> {
    let bytes = std::fs::read(path)
        .with_context(|| format!("cannot read script file {}", path.display()))?;
    String::from_utf8(bytes).map_err(|e| {
        anyhow::anyhow!(
            "script file {} is not valid UTF-8 (at byte {})",
            path.display(),
            e.utf8_error().valid_up_to()
        )
    })
}

/// Streams an observed build: header and trailer on stderr, the console
/// raw on stdout (or NDJSON events with `--json`). Returns the build's exit
/// status.
async fn observe(session: &mut Session, json: bool) -> Result<ExitCode> {
    let mut header: Option<BuildHeader> = None;
    let mut out = io::stdout().lock();
    loop {
        let waiting = if header.is_none() {
            "saying which build is observed"
        } else {
            "the build ended"
        };
        let msg = session.recv(waiting).await;
        let msg = match msg {
            Ok(msg) => msg,
            Err(e) => {
                out.flush().ok();
                return Err(e);
            }
        };
        match msg {
            ServerToClient::ObserveStart(h) if header.is_none() => {
                if json {
                    output::write_json_line(
                        &mut out,
                        &ObserveEvent::Start {
                            uuid: h.uuid.hyphenated().to_string(),
                            job: h.job.clone(),
                            platform: h.platform.clone(),
                            started: output::time_millis(h.started),
                        },
                    )?;
                    out.flush()?;
                } else {
                    eprintln!("{}", output::observe_header(&h));
                }
                header = Some(h);
            }
            ServerToClient::Console(lines) if header.is_some() => {
                if json {
                    for line in &lines {
                        output::write_json_line(
                            &mut out,
                            &ObserveEvent::Line {
                                delta_ns: line.delta_ns,
                                text: String::from_utf8_lossy(&line.data).into_owned(),
                            },
                        )?;
                    }
                } else {
                    output::write_lines_raw(&mut out, &lines)?;
                }
                out.flush()?;
            }
            ServerToClient::Dropped { lines } if header.is_some() => {
                if json {
                    output::write_json_line(&mut out, &ObserveEvent::Dropped { lines })?;
                    out.flush()?;
                } else {
                    // Keep the note in place relative to the console.
                    out.flush()?;
                    eprintln!(
                        "[{} not shown: observer too slow]",
                        units::count(lines as usize, "line")
                    );
                }
            }
            ServerToClient::Notice { message } => {
                out.flush()?;
                notice(&message, json);
            }
            ServerToClient::ObserveEnd { finished, outcome } if header.is_some() => {
                let status = outcome.exit_status();
                if json {
                    output::write_json_line(
                        &mut out,
                        &ObserveEvent::End {
                            finished: output::time_millis(finished),
                            outcome: output::OutcomeView::from(&outcome),
                            result: output::outcome(&outcome),
                            exit_status: status,
                        },
                    )?;
                    out.flush()?;
                } else {
                    out.flush()?;
                    eprintln!(
                        "{}",
                        output::observe_end(header.as_ref(), finished, &outcome)
                    );
                }
                return Ok(ExitCode::from(status));
            }
            other => {
                out.flush().ok();
                return unexpected(other);
            }
        }
    }
}

/// Reads the parts of an `info` answer up to its end marker and puts them
/// together, checking that none is missing.
async fn receive_info(session: &mut Session) -> Result<InfoSummary> {
    let mut info = InfoSummary::default();
    let mut received = 0u64;
    loop {
        match session.recv_answer("sending the info").await? {
            ServerToClient::InfoPart(items) => {
                received += items.len() as u64;
                items.into_iter().for_each(|item| info.push(item));
            }
            ServerToClient::InfoEnd { items } => {
                InfoSummary::check_count(received, items)?;
                return Ok(info);
            }
            other => return unexpected(other),
        }
    }
}

/// A `Failure` becomes its reason; anything else out of place is reported
/// by name.
fn unexpected<T>(msg: ServerToClient) -> Result<T> {
    match msg {
        ServerToClient::Failure { reason } => bail!("{reason}"),
        other => bail!("unexpected answer from the server: {}", answer_name(&other)),
    }
}

/// True when `err` is (caused by) a broken pipe on stdout, e.g.
/// `builder-client observe ... | head`: not worth an error message.
pub fn is_broken_pipe(err: &anyhow::Error) -> bool {
    err.chain().any(|e| {
        e.downcast_ref::<io::Error>()
            .is_some_and(|e| e.kind() == io::ErrorKind::BrokenPipe)
    })
}

/// Installs the shared logging set-up (see [`builder_logging`]).
pub fn init_logging(verbose: u8) {
    builder_logging::init(verbose, builder_logging::LogFormat::Text);
}
