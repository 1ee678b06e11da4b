//! The dashboard: `/` (platforms and queues, workers, running builds, the
//! schedule, recent results) and a page per build (`/builds/{uuid}`, and
//! builder-web's `/job/{name}/build/{uuid}`), rendered here as HTML with
//! every value escaped. The CSS and a small script are embedded in the
//! binary (no external asset, no build step). Without JavaScript the pages
//! are complete but static; with it the dashboard follows the event stream
//! and a build page follows its console live.

use axum::extract::{Path, State};
use axum::http::header;
use axum::response::{Html, IntoResponse, Response};
use axum::routing::get;
use axum::Router;
use protocol::api::{self, BuildView, ScheduleView};
use protocol::message::JobSummary;

use super::api::builds::find;
use super::web::segment;
use super::{parse_uuid, ApiError, ApiResult, App};

const STYLE: &str = include_str!("assets/style.css");
const SCRIPT: &str = include_str!("assets/dashboard.js");

/// Results shown on the dashboard.
const RECENT: u32 = 30;

/// The routes.
pub(crate) fn routes() -> Router<App> {
    Router::new()
        .route("/", get(index))
        .route("/builds/{uuid}", get(build))
        .route(
            "/assets/style.css",
            get(|| async { ([(header::CONTENT_TYPE, "text/css")], STYLE) }),
        )
        .route(
            "/assets/dashboard.js",
            get(|| async { ([(header::CONTENT_TYPE, "text/javascript")], SCRIPT) }),
        )
}

/// Escapes text for HTML content and attribute values.
pub(crate) fn esc(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for c in text.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&#39;"),
            c => out.push(c),
        }
    }
    out
}

fn page(title: &str, body: &str) -> Html<String> {
    Html(format!(
        "<!doctype html><html lang=\"en\"><head><meta charset=\"utf-8\">\
<meta name=\"viewport\" content=\"width=device-width, initial-scale=1\">\
<title>{}</title><link rel=\"stylesheet\" href=\"/assets/style.css\"></head><body>\
<h1><a href=\"/\">builder</a> · {}</h1>{body}<script src=\"/assets/dashboard.js\"></script></body></html>",
        esc(title),
        esc(title)
    ))
}

fn outcome_class(view: &BuildView) -> &'static str {
    match (&view.state[..], &view.outcome) {
        ("running", _) => "run",
        (_, Some(api::OutcomeView::Exited { code: 0 })) => "ok",
        ("finished", _) => "fail",
        _ => "muted",
    }
}

fn build_link(uuid: &str) -> String {
    format!("<a href=\"/builds/{0}\"><code>{0}</code></a>", esc(uuid))
}

async fn index(State(app): State<App>) -> ApiResult<Response> {
    let shared = &app.shared;
    let db = |e| ApiError::db(shared, e);
    let jobs = shared.db.jobs().await.map_err(db)?;
    let queued = shared.db.queued_builds().await.map_err(db)?;
    let dropped = shared.db.dropped_platforms().await.map_err(db)?;
    let running = shared.db.running_info().await.map_err(db)?;
    let results = shared
        .db
        .results_filtered(None, None, RECENT)
        .await
        .map_err(db)?;
    let workers = shared.workers.list();
    let mut b = String::from("<main id=\"dashboard\">");

    b.push_str("<h2>Running</h2>");
    if running.is_empty() {
        b.push_str("<p class=\"muted\">no build running</p>");
    } else {
        b.push_str("<div class=\"scroll\"><table><tr><th>build</th><th>job</th><th>platform</th><th>worker</th><th>elapsed</th></tr>");
        for r in &running {
            let started = api::time(r.started);
            b.push_str(&format!(
                "<tr class=\"running-build\"><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td data-started=\"{}\">since {}</td></tr>",
                build_link(&r.uuid.hyphenated().to_string()),
                esc(&r.job),
                esc(&r.platform),
                esc(&r.worker),
                esc(&started),
                esc(&started)
            ));
        }
        b.push_str("</table></div>");
    }

    b.push_str("<h2>Platforms and queues</h2>");
    let mut platforms: Vec<String> = queued
        .iter()
        .map(|(p, _, _)| p.clone())
        .chain(dropped.iter().cloned())
        .chain(workers.iter().map(|w| w.platform.clone()))
        .collect();
    platforms.sort();
    platforms.dedup();
    if platforms.is_empty() {
        b.push_str("<p class=\"muted\">no platform yet</p>");
    } else {
        b.push_str("<div class=\"scroll\"><table><tr><th>platform</th><th>state</th><th>queue (front first)</th></tr>");
        for p in &platforms {
            let queue: Vec<String> = queued
                .iter()
                .filter(|(qp, _, _)| qp == p)
                .map(|(_, job, _)| esc(job))
                .collect();
            b.push_str(&format!(
                "<tr><td>{}</td><td>{}</td><td>{}</td></tr>",
                esc(p),
                if dropped.contains(p) {
                    "<span class=\"fail\">dropped</span>"
                } else {
                    "accepting"
                },
                if queue.is_empty() {
                    "<span class=\"muted\">empty</span>".to_owned()
                } else {
                    queue.join(", ")
                }
            ));
        }
        b.push_str("</table></div>");
    }

    b.push_str("<h2>Workers</h2>");
    if workers.is_empty() {
        b.push_str("<p class=\"muted\">no worker connected</p>");
    } else {
        b.push_str("<div class=\"scroll\"><table><tr><th>host</th><th>platform</th><th>address</th><th>build</th></tr>");
        for w in &workers {
            b.push_str(&format!(
                "<tr><td>{}</td><td>{}</td><td>{}</td><td>{}</td></tr>",
                esc(&w.host),
                esc(&w.platform),
                esc(&w.peer),
                w.running.map_or_else(
                    || "<span class=\"muted\">idle</span>".to_owned(),
                    |u| build_link(&u.hyphenated().to_string())
                )
            ));
        }
        b.push_str("</table></div>");
    }

    b.push_str("<h2>Schedule</h2>");
    if jobs.is_empty() {
        b.push_str("<p class=\"muted\">no job scheduled</p>");
    } else {
        b.push_str("<div class=\"scroll\"><table><tr><th>job</th><th>runs</th><th>trigger</th><th>next run</th></tr>");
        for e in &jobs {
            let v = ScheduleView::summary(&JobSummary::from(e));
            let runs = match (&v.platform, &v.opam_package) {
                (Some(p), _) => format!("script on {}", esc(p)),
                (None, Some(pkg)) => format!("orb-build {}", esc(pkg)),
                _ => String::new(),
            };
            let trigger = match &v.cron {
                Some(c) => format!("cron {}", esc(c)),
                None => esc(&v.trigger),
            };
            b.push_str(&format!(
                "<tr><td>{}</td><td>{runs}</td><td>{trigger}</td><td>{}</td></tr>",
                esc(&v.name),
                esc(v.next_run.as_deref().unwrap_or("-"))
            ));
        }
        b.push_str("</table></div>");
    }

    b.push_str("<h2>Recent results</h2>");
    if results.is_empty() {
        b.push_str("<p class=\"muted\">no build finished yet</p>");
    } else {
        b.push_str("<div class=\"scroll\"><table><tr><th>build</th><th>job</th><th>platform</th><th>finished</th><th>result</th></tr>");
        for r in &results {
            let v = BuildView::finished(r);
            b.push_str(&format!(
                "<tr><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td class=\"{}\">{}</td></tr>",
                build_link(&v.uuid),
                esc(&v.job),
                esc(&v.platform),
                esc(v.finished.as_deref().unwrap_or("")),
                outcome_class(&v),
                esc(v.result.as_deref().unwrap_or(""))
            ));
        }
        b.push_str("</table></div>");
    }
    b.push_str("</main>");
    Ok(page("farm", &b).into_response())
}

async fn build(State(app): State<App>, Path(uuid): Path<String>) -> ApiResult<Response> {
    let view = find(&app, parse_uuid(&uuid)?).await?;
    Ok(build_page(&view).into_response())
}

/// A build's page: its facts, artifacts, record, and its console (live
/// with JavaScript; a link to the text without).
pub(crate) fn build_page(v: &BuildView) -> Html<String> {
    let mut b = String::from("<main><table>");
    let row = |b: &mut String, k: &str, v: &str| {
        b.push_str(&format!("<tr><th>{}</th><td>{v}</td></tr>", esc(k)));
    };
    row(&mut b, "build", &format!("<code>{}</code>", esc(&v.uuid)));
    row(&mut b, "job", &esc(&v.job));
    row(&mut b, "platform", &esc(&v.platform));
    let state = v.result.clone().unwrap_or_else(|| v.state.clone());
    row(
        &mut b,
        "state",
        &format!(
            "<span id=\"state\" class=\"{}\">{}</span>",
            outcome_class(v),
            esc(&state)
        ),
    );
    if let Some(s) = &v.started {
        row(&mut b, "started", &esc(s));
    }
    if let Some(f) = &v.finished {
        row(&mut b, "finished", &esc(f));
    }
    if let Some(w) = &v.worker {
        row(&mut b, "worker", &esc(w));
    }
    b.push_str("</table>");
    let job = segment(&v.job);
    let uuid = esc(&v.uuid);
    if let Some(artifacts) = &v.artifacts {
        b.push_str("<h2>Artifacts</h2>");
        if artifacts.is_empty() {
            b.push_str("<p class=\"muted\">none</p>");
        } else {
            b.push_str(
                "<div class=\"scroll\"><table><tr><th>path</th><th>size</th><th>sha256</th></tr>",
            );
            for a in artifacts {
                let href: Vec<String> = a.path.split('/').map(segment).collect();
                b.push_str(&format!(
                    "<tr><td><a href=\"/job/{job}/build/{uuid}/f/{}\">{}</a></td><td>{}</td><td><code>{}</code></td></tr>",
                    esc(&href.join("/")),
                    esc(&a.path),
                    a.size,
                    esc(&a.sha256)
                ));
            }
            b.push_str("</table></div>");
        }
        b.push_str(&format!(
            "<p><a href=\"/api/v1/builds/{uuid}/record\">the build record</a></p>"
        ));
    }
    b.push_str(&format!(
        "<h2>Console</h2><pre id=\"console\" data-uuid=\"{uuid}\"><a href=\"/api/v1/builds/{uuid}/console\">the console as text</a></pre></main>"
    ));
    page(&format!("{} {}", v.job, v.state), &b)
}
