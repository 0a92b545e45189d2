//! Process logging: tracing to stderr (text or JSON, filtered by `NARRA_LOG`), plus a layer that
//! keeps every line emitted inside a job's span as that job's own log (runbook step 2).
//!
//! Logs never go to stdout: stdout carries only what users pipe. The job log layer keeps narra's own
//! lines (target `narra...`) and queues them for a writer thread that hands them to a `JobLogSink`
//! (the state store). It never writes to the store on the logging thread, which may be inside a
//! store transaction, and never blocks: a full queue drops the line and counts it.

use std::fmt::Write as _;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use tracing::field::{Field, Visit};
use tracing::{Event, Subscriber};
use tracing_subscriber::EnvFilter;
use tracing_subscriber::layer::{Context, SubscriberExt};
use tracing_subscriber::registry::LookupSpan;
use tracing_subscriber::util::SubscriberInitExt;

use crate::model::job::{JobId, LogLine, Timestamp};

/// What the writer thread is handed.
enum JobLogMessage {
    Line(JobId, LogLine),
    /// Acknowledge once every line queued before this one has been handed to the sink.
    Flush(std::sync::mpsc::SyncSender<()>),
}

/// A sink for job log lines, fed by the tracing layer. Synchronous: it is called from inside
/// `tracing`, and must never block on I/O for long.
pub trait JobLogSink: Send + Sync {
    fn append_log(&self, id: JobId, line: LogLine);
    /// Makes the lines appended so far durable (called before a process lets go of the store).
    fn flush_logs(&self) {}
}

/// Lines waiting for the writer thread. The layer never writes to the store itself: the thread that
/// logs may be inside a store transaction (sled logs while it commits), and writing from there would
/// wait on the lock that very thread holds.
static JOB_LOG_QUEUE: OnceLock<std::sync::mpsc::SyncSender<JobLogMessage>> = OnceLock::new();

/// Lines dropped because the queue was full: job logs are best effort and never slow a job down.
static JOB_LOG_DROPPED: AtomicU64 = AtomicU64::new(0);

/// How many lines may wait for the writer thread.
const JOB_LOG_QUEUE_LINES_MAX: usize = 4_096;

/// How long `flush_job_logs` waits for the writer.
const JOB_LOG_FLUSH_WAIT: Duration = Duration::from_secs(5);

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

/// From now on, narra's lines inside job spans are also kept in `sink`, written by a thread of
/// their own. Only the first sink attached counts.
pub fn attach_job_sink(sink: Arc<dyn JobLogSink>) {
    if JOB_LOG_QUEUE.get().is_some() {
        return;
    }
    let (sender, receiver) = std::sync::mpsc::sync_channel(JOB_LOG_QUEUE_LINES_MAX);
    if JOB_LOG_QUEUE.set(sender).is_err() {
        return;
    }
    let spawned = std::thread::Builder::new()
        .name("narra-job-log".into())
        .spawn(move || {
            for message in receiver {
                match message {
                    JobLogMessage::Line(job_id, line) => sink.append_log(job_id, line),
                    JobLogMessage::Flush(done) => {
                        sink.flush_logs();
                        let _ = done.send(());
                    }
                }
            }
        });
    if spawned.is_err() {
        JOB_LOG_DROPPED.fetch_add(1, Ordering::Relaxed);
    }
}

/// Waits, for a bounded time, until every job log line queued so far is in the sink: called before
/// the process exits, so `narra logs` run next sees every line.
pub fn flush_job_logs() {
    let Some(queue) = JOB_LOG_QUEUE.get() else {
        return;
    };
    let (done, acknowledged) = std::sync::mpsc::sync_channel(1);
    if queue.send(JobLogMessage::Flush(done)).is_ok() {
        let _ = acknowledged.recv_timeout(JOB_LOG_FLUSH_WAIT);
    }
}

/// How many job log lines were dropped because the writer could not keep up.
pub fn job_log_lines_dropped() -> u64 {
    JOB_LOG_DROPPED.load(Ordering::Relaxed)
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
        let Some(queue) = JOB_LOG_QUEUE.get() else {
            return;
        };
        // A job's log is narra's account of the job; libraries' own lines stay in the process log.
        if !event.metadata().target().starts_with("narra") {
            return;
        }
        let Some(scope) = ctx.event_scope(event) else {
            return;
        };
        let job_id = scope
            .into_iter()
            .find_map(|span| span.extensions().get::<SpanJobId>().map(|found| found.0));
        let Some(job_id) = job_id else { return };
        let mut visitor = MessageVisitor::default();
        event.record(&mut visitor);
        let line = LogLine {
            at: Timestamp::now(),
            level: event.metadata().level().to_string(),
            message: visitor.finish(),
        };
        if queue.try_send(JobLogMessage::Line(job_id, line)).is_err() {
            JOB_LOG_DROPPED.fetch_add(1, Ordering::Relaxed);
        }
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
