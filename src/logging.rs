//! Process logging: tracing to stderr (text or JSON, filtered by `NARRA_LOG`), plus a layer that
//! keeps every line emitted inside a job's span as that job's own log (runbook step 2).
//!
//! Logs never go to stdout: stdout carries only what users pipe. The job log layer hands lines to a
//! `JobLogSink` (the state store) once one is attached; it never blocks on a flush.

use std::fmt::Write as _;
use std::sync::{Arc, OnceLock};

use tracing::field::{Field, Visit};
use tracing::{Event, Subscriber};
use tracing_subscriber::EnvFilter;
use tracing_subscriber::layer::{Context, SubscriberExt};
use tracing_subscriber::registry::LookupSpan;
use tracing_subscriber::util::SubscriberInitExt;

use crate::engine::job::{JobId, LogLine, Timestamp};
use crate::store::JobLogSink;

static JOB_LOG_SINK: OnceLock<Arc<dyn JobLogSink>> = OnceLock::new();

/// How log lines are written to stderr.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum LogFormat {
    Text,
    Json,
}

/// Installs the global subscriber. `NARRA_LOG` filters (default `info`). Safe to call twice: the
/// second call does nothing.
pub fn init(format: LogFormat) {
    let filter = EnvFilter::try_from_env("NARRA_LOG").unwrap_or_else(|_| EnvFilter::new("info"));
    let registry = tracing_subscriber::registry()
        .with(filter)
        .with(JobLogLayer);
    let result = match format {
        LogFormat::Text => registry
            .with(
                tracing_subscriber::fmt::layer()
                    .with_writer(std::io::stderr)
                    .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
                    .with_target(false),
            )
            .try_init(),
        LogFormat::Json => registry
            .with(
                tracing_subscriber::fmt::layer()
                    .json()
                    .with_current_span(true)
                    .with_span_list(false)
                    .with_writer(std::io::stderr),
            )
            .try_init(),
    };
    let _ = result;
}

/// From now on, lines inside job spans are also kept in `sink`. Only the first sink attached counts.
pub fn attach_job_sink(sink: Arc<dyn JobLogSink>) {
    let _ = JOB_LOG_SINK.set(sink);
}

/// The job id a span carries, stored in the span's extensions.
struct SpanJobId(JobId);

/// Sends every event inside a span with a `job_id` field to the job log sink.
struct JobLogLayer;

impl<S> tracing_subscriber::Layer<S> for JobLogLayer
where
    S: Subscriber + for<'a> LookupSpan<'a>,
{
    fn on_new_span(
        &self,
        attrs: &tracing::span::Attributes<'_>,
        id: &tracing::span::Id,
        ctx: Context<'_, S>,
    ) {
        let mut visitor = JobIdVisitor(None);
        attrs.record(&mut visitor);
        if let (Some(job_id), Some(span)) = (visitor.0, ctx.span(id)) {
            span.extensions_mut().insert(SpanJobId(job_id));
        }
    }

    fn on_event(&self, event: &Event<'_>, ctx: Context<'_, S>) {
        let Some(sink) = JOB_LOG_SINK.get() else {
            return;
        };
        let Some(scope) = ctx.event_scope(event) else {
            return;
        };
        let job_id = scope
            .into_iter()
            .find_map(|span| span.extensions().get::<SpanJobId>().map(|found| found.0));
        let Some(job_id) = job_id else { return };
        let mut visitor = MessageVisitor::default();
        event.record(&mut visitor);
        sink.append_log(
            job_id,
            LogLine {
                at: Timestamp::now(),
                level: event.metadata().level().to_string(),
                message: visitor.finish(),
            },
        );
    }
}

struct JobIdVisitor(Option<JobId>);

impl Visit for JobIdVisitor {
    fn record_debug(&mut self, field: &Field, value: &dyn std::fmt::Debug) {
        if field.name() == "job_id" {
            self.0 = format!("{value:?}").trim_matches('"').parse().ok();
        }
    }

    fn record_str(&mut self, field: &Field, value: &str) {
        if field.name() == "job_id" {
            self.0 = value.parse().ok();
        }
    }
}

#[derive(Default)]
struct MessageVisitor {
    message: String,
    fields: String,
}

impl MessageVisitor {
    fn finish(self) -> String {
        if self.fields.is_empty() {
            self.message
        } else {
            format!("{}{}", self.message, self.fields)
        }
    }
}

impl Visit for MessageVisitor {
    fn record_debug(&mut self, field: &Field, value: &dyn std::fmt::Debug) {
        if field.name() == "message" {
            let _ = write!(self.message, "{value:?}");
        } else {
            let _ = write!(self.fields, " {}={value:?}", field.name());
        }
    }

    fn record_str(&mut self, field: &Field, value: &str) {
        if field.name() == "message" {
            self.message.push_str(value);
        } else {
            let _ = write!(self.fields, " {}={value}", field.name());
        }
    }
}
