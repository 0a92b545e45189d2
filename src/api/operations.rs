//! Backfills, verify, cleanup and health over HTTP: the runbook's steps 3 and 5 and its escalation
//! signals, through the engine functions `narra backfill`, `verify`, `cleanup` and `health` call.

use std::collections::BTreeMap;

use axum::Json;
use axum::extract::{Path, Query, State};
use axum::http::StatusCode;
use serde::Deserialize;
use serde_json::Value;

use super::{API_ACTOR, ApiError, ApiState, Body, parse_job_id};
use crate::engine::backfill::{BackfillOptions, jobs_of_backfill, parse_manifest, submit_manifest};
use crate::engine::cleanup::{execute, plan};
use crate::model::cleanup::{CleanupOptions, DEFAULT_MIN_AGE_S};
use crate::model::job::{BackfillId, Timestamp};
use crate::model::sources::LocalPaths;
use crate::views;

/// `POST /backfills` query: the manifest's name (running the same name again resumes its
/// backfill; default: the blake3 of the body) and the workflow of lines that name none.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BackfillQuery {
    /// Names the manifest (`api:<name>`); the same name again resumes its backfill (default: the
    /// first 16 hex digits of the body's blake3).
    pub name: Option<String>,
    /// The workflow of lines that name none (default: `ingest`).
    pub workflow: Option<String>,
}

/// `POST /backfills`: the body is a manifest (lines, JSON Lines or CSV, as `narra backfill`
/// reads). Every source must be an `http(s)` URL the download guard admits, and every line's
/// `callback_url` one `webhook::check_callback_url` admits; otherwise nothing is submitted (400
/// naming the lines). The jobs are queued for the worker of `serve`.
pub async fn create_backfill(
    State(state): State<ApiState>,
    query: Result<Query<BackfillQuery>, axum::extract::rejection::QueryRejection>,
    body: Body,
) -> Result<(StatusCode, Json<Value>), ApiError> {
    let Query(query) = query.map_err(|rejection| ApiError::bad_request(rejection.body_text()))?;
    let text = std::str::from_utf8(&body.0)
        .map_err(|_| ApiError::bad_request("the manifest is not UTF-8 text"))?;
    let name = match &query.name {
        Some(name) if !name.trim().is_empty() => format!("api:{}", name.trim()),
        _ => format!(
            "api:{}",
            &blake3::hash(text.as_bytes()).to_hex().as_str()[..16]
        ),
    };
    let manifest = parse_manifest(&name, text);
    if manifest.entries.is_empty() {
        return Err(ApiError::bad_request("the manifest names no source"));
    }
    let refused: Vec<String> = manifest
        .entries
        .iter()
        .filter_map(|entry| {
            let source = super::jobs::check_source(&state, &entry.source).map_err(|e| e.message);
            let callback = match &entry.callback_url {
                Some(url) => crate::engine::webhook::check_callback_url(&state.engine, url)
                    .map(|_| ())
                    .map_err(|error| format!("{}: {error}", error.class)),
                None => Ok(()),
            };
            source
                .and(callback)
                .err()
                .map(|message| format!("line {}: {message}", entry.line))
        })
        .collect();
    if !refused.is_empty() {
        return Err(ApiError::new(
            StatusCode::BAD_REQUEST,
            "bad_request",
            format!("nothing was submitted: {}", refused.join("; ")),
        ));
    }
    let options = BackfillOptions {
        workflow: query.workflow,
        local_paths: LocalPaths::Refused,
        ..BackfillOptions::default()
    };
    let submission = submit_manifest(&state.engine, &name, &manifest, &options).await?;
    let view = views::backfill::Submitted {
        id: views::Text(submission.backfill.id),
        read: views::backfill::manifest_read(
            &submission.backfill,
            submission.format,
            submission.lines_accepted,
            &submission.bad_lines,
            submission.jobs(),
        ),
        to_run: submission.to_run(),
    };
    Ok((StatusCode::CREATED, Json(views::to_json(&view))))
}

/// `GET /backfills/{id}`: its jobs by status, how many are finished, whether all are, and the
/// bytes its jobs' checkpoints record: `bytes_downloaded` (the download step's outputs) and
/// `bytes_stored` (the artifacts the store step wrote or found stored). Figures of finished steps:
/// a download in flight counts once its checkpoint is recorded. One checkpoint read per job.
pub async fn backfill(
    State(state): State<ApiState>,
    Path(id): Path<String>,
) -> Result<Json<Value>, ApiError> {
    let id: BackfillId = id
        .parse()
        .map_err(|error| ApiError::bad_request(format!("{id:?} is not a backfill id: {error}")))?;
    let Some(backfill) = state
        .engine
        .store
        .backfills()
        .await?
        .into_iter()
        .find(|backfill| backfill.id == id)
    else {
        return Err(ApiError::not_found(format!("backfill {id} not found")));
    };
    let jobs = jobs_of_backfill(&state.engine, id, None, usize::MAX).await?;
    let mut by_status: BTreeMap<&'static str, usize> = BTreeMap::new();
    for job in &jobs {
        *by_status.entry(job.status.as_str()).or_default() += 1;
    }
    let finished = jobs.iter().filter(|job| job.status.is_terminal()).count();
    let (mut bytes_downloaded, mut bytes_stored) = (0u64, 0u64);
    for job in &jobs {
        let checkpoints = state.engine.store.checkpoints(job.id).await?;
        for checkpoint in &checkpoints {
            if checkpoint.step == "download" {
                let sizes = checkpoint.outputs.iter().map(|output| output.size);
                bytes_downloaded = bytes_downloaded.saturating_add(sizes.sum());
            }
        }
        for artifact in views::job::artifacts(&checkpoints) {
            bytes_stored = bytes_stored.saturating_add(artifact.size);
        }
    }
    let view = views::backfill::Progress {
        backfill: views::backfill::backfill(&backfill),
        jobs: jobs.len(),
        by_status,
        finished,
        done: finished == jobs.len(),
        bytes_downloaded,
        bytes_stored,
    };
    Ok(Json(views::to_json(&view)))
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct VerifyQuery {
    /// Re-hash every object, not only those whose change token changed (default: false).
    #[serde(default)]
    pub deep: bool,
}

/// `GET /verify/{id}[?deep=true]`: one job's `narra --json verify` report.
pub async fn verify(
    State(state): State<ApiState>,
    Path(id): Path<String>,
    query: Result<Query<VerifyQuery>, axum::extract::rejection::QueryRejection>,
) -> Result<Json<Value>, ApiError> {
    let Query(query) = query.map_err(|rejection| ApiError::bad_request(rejection.body_text()))?;
    let id = parse_job_id(&id)?;
    if state.engine.store.job(id).await?.is_none() {
        return Err(ApiError::job_not_found(id));
    }
    let checkpoints = state.engine.store.checkpoints(id).await?;
    let verification =
        crate::engine::verify::verify_job(&state.engine, id, &checkpoints, query.deep).await;
    let view = views::verify::verification(&verification, query.deep);
    Ok(Json(views::to_json(&view)))
}

/// Cleanup's options, in the query of `GET /cleanup` and the body of `POST /cleanup`.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CleanupQuery {
    /// Re-hash every stored artifact instead of trusting unchanged change tokens (default: false).
    #[serde(default)]
    pub deep: bool,
    /// Objects younger than this many seconds are never deleted as orphans or partial writes
    /// (default: 3,600).
    pub min_age_s: Option<u64>,
}

impl CleanupQuery {
    fn options(&self) -> CleanupOptions {
        CleanupOptions {
            deep: self.deep,
            min_age_s: self.min_age_s.unwrap_or(DEFAULT_MIN_AGE_S),
        }
    }
}

/// `GET /cleanup`: the dry run, with the plan id `POST /cleanup` must repeat.
pub async fn cleanup_plan(
    State(state): State<ApiState>,
    query: Result<Query<CleanupQuery>, axum::extract::rejection::QueryRejection>,
) -> Result<Json<Value>, ApiError> {
    let Query(query) = query.map_err(|rejection| ApiError::bad_request(rejection.body_text()))?;
    let plan = plan(&state.engine, &query.options()).await?;
    Ok(Json(views::to_json(&views::cleanup::plan(&plan))))
}

/// `POST /cleanup` body: the plan id of the dry run and the same options.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CleanupConfirm {
    /// The `id` of the dry run (`GET /cleanup`) to carry out: 409 `plan_changed` if the plan is no
    /// longer the same.
    pub plan_id: String,
    /// The dry run's `deep`: the plan must be made with the same options.
    #[serde(default)]
    pub deep: bool,
    /// The dry run's `min_age_s` (default: 3,600).
    pub min_age_s: Option<u64>,
}

/// `POST /cleanup`: carries out exactly the confirmed plan, or 409 `plan_changed` (nothing done).
pub async fn cleanup_confirm(
    State(state): State<ApiState>,
    body: Body,
) -> Result<Json<Value>, ApiError> {
    let request: CleanupConfirm = body.json()?;
    let options = CleanupQuery {
        deep: request.deep,
        min_age_s: request.min_age_s,
    }
    .options();
    let executed = execute(&state.engine, &options, &request.plan_id, API_ACTOR).await?;
    Ok(Json(views::to_json(&views::cleanup::executed(&executed))))
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct HealthQuery {
    /// A host with this many failed jobs in the window escalates (default: 3).
    pub host_failures_min: Option<usize>,
    /// How far back failures, storage faults and corruption count, in seconds (default: 86,400).
    pub window_s: Option<u64>,
    /// Seconds without progress after which a running job is stuck (default: 600).
    pub stuck_after_s: Option<u64>,
}

/// `GET /health`: `narra --json health`; 200 whatever it says (`escalate` says whether to).
pub async fn health(
    State(state): State<ApiState>,
    query: Result<Query<HealthQuery>, axum::extract::rejection::QueryRejection>,
) -> Result<Json<Value>, ApiError> {
    let Query(query) = query.map_err(|rejection| ApiError::bad_request(rejection.body_text()))?;
    let defaults = crate::model::health::HealthOptions::default();
    let options = crate::model::health::HealthOptions {
        host_failures_min: query
            .host_failures_min
            .unwrap_or(defaults.host_failures_min),
        window_s: query.window_s.unwrap_or(defaults.window_s),
        stuck_after_s: query.stuck_after_s.unwrap_or(defaults.stuck_after_s),
    };
    let report = crate::engine::health::assess(&state.engine, &options, Timestamp::now()).await?;
    Ok(Json(views::to_json(&views::health::health(&report))))
}
