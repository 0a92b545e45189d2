//! `/jobs`: list, submit, show, events, logs, retry (optionally from a step), cancel, reset. Each
//! handler calls what the matching CLI command calls and answers with the `views` shapes it
//! prints.

use axum::Json;
use axum::extract::{Path, Query, State};
use axum::http::StatusCode;
use serde::Deserialize;
use serde_json::Value;

use super::{API_ACTOR, ApiError, ApiState, Body, parse_job_id};
use crate::engine::orchestrator::{SubmitOptions, submit};
use crate::model::job::{Job, JobId, Status, Timestamp};
use crate::model::machine::Rejected;
use crate::model::sources::source_host;
use crate::model::sources::{LocalPaths, canonical_source};
use crate::store::{JobFilter, SubmitOutcome};
use crate::views;
use crate::views::stuck::StuckDetail;

/// A page holds this many jobs unless `limit` says otherwise.
pub const PAGE_DEFAULT: usize = 50;
/// The most jobs one page holds.
pub const PAGE_MAX: usize = 1_000;

/// `GET /jobs` filters; every one optional.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ListQuery {
    /// Only jobs of this status: `pending`, `running`, `succeeded` (or `completed`), `failed` or
    /// `cancelled`.
    pub status: Option<String>,
    /// Only running jobs in this phase: `downloading`, `processing` or `storing`.
    pub phase: Option<String>,
    /// The error class of the job's last failure.
    pub class: Option<String>,
    /// The source's host (and port), as `health` names it; `local` for files.
    pub host: Option<String>,
    /// Only running jobs that look stuck (`narra jobs --stuck`).
    pub stuck: Option<bool>,
    /// With `stuck=true`: seconds without progress after which a running job is stuck (default
    /// 600).
    pub stuck_after_s: Option<u64>,
    /// Jobs per page, 1 to 1,000 (default 50).
    pub limit: Option<usize>,
    /// The `next_cursor` of the previous page: jobs older than it.
    pub cursor: Option<String>,
}

/// `GET /jobs`: newest first, `{jobs: [summary + progress (+ stuck)], next_cursor}`. The filters
/// other than status are applied here, over the jobs the store's status index gives, so a page
/// costs a read of the jobs of that status (of every job without one); the cursor is a job id,
/// stable while jobs are added (new ones sort before it).
pub async fn list(
    State(state): State<ApiState>,
    query: Result<Query<ListQuery>, axum::extract::rejection::QueryRejection>,
) -> Result<Json<Value>, ApiError> {
    let Query(query) = query.map_err(|rejection| ApiError::bad_request(rejection.body_text()))?;
    let engine = &state.engine;
    let status = query
        .status
        .as_deref()
        .map(|text| text.parse::<Status>())
        .transpose()
        .map_err(|error| ApiError::bad_request(format!("status: {error}")))?;
    if let Some(phase) = query.phase.as_deref()
        && !["downloading", "processing", "storing"].contains(&phase)
    {
        return Err(ApiError::bad_request(format!(
            "phase {phase:?} is not one of downloading, processing, storing"
        )));
    }
    let limit = query.limit.unwrap_or(PAGE_DEFAULT);
    if limit == 0 || limit > PAGE_MAX {
        return Err(ApiError::bad_request(format!(
            "limit must be 1 to {PAGE_MAX}, not {limit}"
        )));
    }
    let cursor = query.cursor.as_deref().map(parse_job_id).transpose()?;
    // Stuck jobs carry why; the others are read from the store's status index.
    let mut candidates: Vec<(Job, Option<StuckDetail>)> = if query.stuck.unwrap_or(false) {
        let stuck_after_s = query
            .stuck_after_s
            .unwrap_or(crate::model::stuck::DEFAULT_STUCK_AFTER_S);
        crate::engine::stuck::stuck_jobs(engine, stuck_after_s, Timestamp::now())
            .await?
            .into_iter()
            .map(|stuck| {
                let detail = views::stuck::stuck_detail(&stuck);
                (stuck.job, Some(detail))
            })
            .collect()
    } else {
        engine
            .store
            .jobs(&JobFilter {
                status,
                limit: usize::MAX,
            })
            .await?
            .into_iter()
            .map(|job| (job, None))
            .collect()
    };
    // Job ids are ULIDs: newest first is descending id order, which is also the cursor's order.
    candidates.sort_by_key(|(job, _)| std::cmp::Reverse(job.id));
    let mut page = Vec::new();
    let mut more = false;
    for (job, stuck) in &candidates {
        if cursor.is_some_and(|cursor| job.id >= cursor)
            || status.is_some_and(|status| job.status != status)
            || query
                .phase
                .as_deref()
                .is_some_and(|phase| job.ingestion_phase.map(|p| p.as_str()) != Some(phase))
            || query.class.as_deref().is_some_and(|class| {
                job.error.as_ref().map(|error| error.class.as_str()) != Some(class)
            })
            || query
                .host
                .as_deref()
                .is_some_and(|host| source_host(&job.source) != host)
        {
            continue;
        }
        if page.len() == limit {
            more = true;
            break;
        }
        let progress = engine.store.progress(job.id).await?;
        page.push(views::job::page_item(
            job,
            stuck.as_ref(),
            progress.as_ref(),
        ));
    }
    let next_cursor = if more {
        page.last().map(|item| item.summary.id.0.to_string())
    } else {
        None
    };
    let page = views::job::JobsPage {
        jobs: page,
        next_cursor,
    };
    Ok(Json(views::to_json(&page)))
}

/// `POST /jobs` body.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CreateRequest {
    /// An `http(s)` URL; local paths are refused over HTTP.
    pub source: String,
    /// The workflow to run (default: `ingest`).
    pub workflow: Option<String>,
    /// The caller's own idempotency key (signed or expiring URLs).
    pub key: Option<String>,
    /// -1000 to 1000; pending jobs are claimed highest first (default: 10, above a backfill's 0).
    pub priority: Option<i32>,
    /// Where the job's signed completion notice goes (`webhook`); checked by the network guard
    /// like a source. Default: the workflow's `callback_url`.
    pub callback_url: Option<String>,
}

/// Checks a source the API may submit: an `http(s)` URL (`sources::canonical_source` with local
/// paths refused) that passes the download guard's checks that need no connection
/// (`NetworkPolicy::check_url`: scheme, IP literals). A host name that resolves to a private
/// address is stopped by the same guard when the download connects. The answer is the source as
/// parsed and normalised: what is submitted, never the raw text.
pub fn check_source(state: &ApiState, source: &str) -> Result<String, ApiError> {
    // No base directory: local paths are refused.
    let source = canonical_source(source, None)?;
    let url = url::Url::parse(&source).map_err(|error| {
        ApiError::internal(format!("a canonical source did not parse: {error}"))
    })?;
    state.engine.network.check_url(&url)?;
    Ok(source)
}

/// `POST /jobs`: idempotent submission, 201 with a new job, 200 with the existing one.
pub async fn create(
    State(state): State<ApiState>,
    body: Body,
) -> Result<(StatusCode, Json<Value>), ApiError> {
    let request: CreateRequest = body.json()?;
    if let Some(priority) = request.priority
        && !(-1000..=1000).contains(&priority)
    {
        return Err(ApiError::bad_request(format!(
            "priority must be -1000 to 1000, not {priority}"
        )));
    }
    let source = check_source(&state, &request.source)?;
    let options = SubmitOptions {
        workflow: request.workflow,
        key: request.key,
        reingest: false,
        priority: request.priority,
        local_paths: LocalPaths::Refused,
        callback_url: request.callback_url,
    };
    let mut submitted = submit(&state.engine.orchestrator(), &[source], &options).await?;
    let submitted = submitted.pop().expect("one source gives one submission");
    let status = match submitted.outcome {
        SubmitOutcome::Created => StatusCode::CREATED,
        _ => StatusCode::OK,
    };
    let view = views::job::Submitted {
        summary: views::job::summary(&submitted.job),
        outcome: match submitted.outcome {
            SubmitOutcome::Created => "created",
            SubmitOutcome::Existing => "existing",
            SubmitOutcome::Retried => "retried",
            SubmitOutcome::Reingested => "reingested",
        },
    };
    Ok((status, Json(views::to_json(&view))))
}

/// The job, or 404 (naming a prune when `narra prune` removed it).
async fn job_or_404(state: &ApiState, id: JobId) -> Result<Job, ApiError> {
    match state.engine.store.job(id).await? {
        Some(job) => Ok(job),
        None => Err(missing(state, id).await),
    }
}

/// The 404 of a job id with no job, naming a prune when `narra prune` removed it.
async fn missing(state: &ApiState, id: JobId) -> ApiError {
    match state.engine.store.pruned_job(id).await {
        Ok(Some(pruned)) => ApiError::not_found(format!(
            "job {id} was pruned at {} ({}, last updated {}); its objects stay in storage",
            pruned.pruned_at.to_rfc3339(),
            pruned.status,
            pruned.updated_at.to_rfc3339()
        )),
        Ok(None) => ApiError::job_not_found(id),
        Err(error) => error.into(),
    }
}

/// `GET /jobs/{id}`: what `narra --json show ID` prints.
pub async fn show(
    State(state): State<ApiState>,
    Path(id): Path<String>,
) -> Result<Json<Value>, ApiError> {
    let id = parse_job_id(&id)?;
    let Some(records) = crate::engine::show::records(&state.engine, id).await? else {
        return Err(missing(&state, id).await);
    };
    Ok(Json(views::to_json(&views::job::detail(&records))))
}

/// `GET /jobs/{id}/events`: `{events_compacted, events_summary, events}`.
pub async fn events(
    State(state): State<ApiState>,
    Path(id): Path<String>,
) -> Result<Json<Value>, ApiError> {
    let id = parse_job_id(&id)?;
    job_or_404(&state, id).await?;
    let summary = state.engine.store.event_summary(id).await?;
    let events = state.engine.store.events(id).await?;
    let history = views::history::history(summary.as_ref(), &events);
    Ok(Json(views::to_json(&history)))
}

/// `GET /jobs/{id}/logs`: the job's own log lines, as `narra --json logs ID` prints them.
pub async fn logs(
    State(state): State<ApiState>,
    Path(id): Path<String>,
) -> Result<Json<Value>, ApiError> {
    let id = parse_job_id(&id)?;
    job_or_404(&state, id).await?;
    let lines = state.engine.store.logs(id).await?;
    Ok(Json(views::to_json(&views::history::logs(&lines))))
}

/// `POST /jobs/{id}/retry` body: `{"from": STEP}` redoes from that step (`retry --from`).
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RetryRequest {
    /// A step of the job's workflow: its checkpoint and those of later steps are discarded first;
    /// absent, the job runs again from its checkpoints.
    pub from: Option<String>,
}

/// `POST /jobs/{id}/retry`: back to pending (the worker of `serve` runs it).
pub async fn retry(
    State(state): State<ApiState>,
    Path(id): Path<String>,
    body: Body,
) -> Result<Json<Value>, ApiError> {
    let id = parse_job_id(&id)?;
    let request: RetryRequest = body.json_or_default()?;
    job_or_404(&state, id).await?;
    let engine = &state.engine;
    let job = match request.from {
        Some(step) => {
            let reason = format!("asked by {API_ACTOR}");
            let mut outcomes =
                crate::engine::retry::retry_from(engine, &[id], &step, &reason).await?;
            let (_, outcome) = outcomes.pop().expect("one id gives one outcome");
            outcome?
        }
        None => match engine
            .store
            .retry(id, "retry requested by an operator (api)")
            .await?
        {
            Ok(job) => job,
            // As `narra retry`: a pending job needs no transition, it is simply run.
            Err(Rejected::NotAllowed {
                status: Status::Pending,
                ..
            }) => job_or_404(&state, id).await?,
            Err(rejected) => return Err(rejected.into()),
        },
    };
    Ok(Json(views::to_json(&views::job::summary(&job))))
}

/// `POST /jobs/{id}/cancel`: as `narra cancel ID`.
pub async fn cancel(
    State(state): State<ApiState>,
    Path(id): Path<String>,
) -> Result<Json<Value>, ApiError> {
    let id = parse_job_id(&id)?;
    let job = state.engine.store.cancel(id).await??;
    Ok(Json(views::to_json(&views::job::summary(&job))))
}

/// `POST /jobs/{id}/reset` body.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ResetRequest {
    /// Why, for the job's events and the incident log (default: `manual reset`).
    pub reason: Option<String>,
    /// Reset a running job even while its lease is live (default: false, which refuses it).
    #[serde(default)]
    pub force: bool,
}

/// `POST /jobs/{id}/reset`: as `narra reset ID [--force] [--reason TEXT]`, by actor `api`.
pub async fn reset(
    State(state): State<ApiState>,
    Path(id): Path<String>,
    body: Body,
) -> Result<Json<Value>, ApiError> {
    let id = parse_job_id(&id)?;
    let request: ResetRequest = body.json_or_default()?;
    let job = crate::engine::stuck::reset_job(
        &state.engine,
        id,
        API_ACTOR,
        request.reason.as_deref(),
        request.force,
    )
    .await??;
    Ok(Json(views::to_json(&views::job::summary(&job))))
}
