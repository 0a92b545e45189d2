//! `narra retry --from STEP`: send finished jobs back to pending with the checkpoint of STEP and of
//! every later step discarded, so their next run redoes the work from STEP on (a changed extractor,
//! say) while the earlier steps' checkpoints still save their work (nothing is downloaded again).
//!
//! Which checkpoints go is the workflow's business ([`steps_from`]: STEP and the steps after it, in
//! workflow order); the transition, its events and the discarding are `machine::retry_from`'s,
//! written in one transaction by `OrchestratorStore::retry_from`. This module decides no
//! transition itself.

use crate::engine::Engine;
use crate::engine::orchestrator::EngineError;
use crate::model::job::{Job, JobId};
use crate::model::machine::Rejected;
use crate::workflow::Workflow;

/// STEP and the names of the steps after it in `workflow`, or why STEP is not one of its steps
/// (naming those that are).
pub fn steps_from(workflow: &Workflow, step: &str) -> Result<Vec<String>, String> {
    let names: Vec<&str> = workflow
        .steps
        .iter()
        .map(|definition| definition.kind().name())
        .collect();
    match names.iter().position(|name| *name == step) {
        Some(index) => Ok(names[index..].iter().map(|name| name.to_string()).collect()),
        None => Err(format!(
            "{step:?} is not a step of workflow {}: its steps are {}",
            workflow.name,
            names.join(", ")
        )),
    }
}

/// Sends each job back to pending from `step` (see the module docs), recording `reason`. The step
/// is checked against every job's workflow first: one that lacks it is a usage error, and nothing
/// changes. A job that is not finished (pending, running) or not found is refused on its own.
pub async fn retry_from(
    engine: &Engine,
    ids: &[JobId],
    step: &str,
    reason: &str,
) -> Result<Vec<(JobId, Result<Job, Rejected>)>, EngineError> {
    let mut plans = Vec::with_capacity(ids.len());
    for &id in ids {
        let steps = match engine.store.job(id).await? {
            Some(job) => {
                let workflow = engine.workflows.get(&job.workflow)?;
                Some(steps_from(workflow, step).map_err(EngineError::Usage)?)
            }
            None => None,
        };
        plans.push((id, steps));
    }
    let mut outcomes = Vec::with_capacity(plans.len());
    for (id, steps) in plans {
        let outcome = match steps {
            None => Err(Rejected::NotFound(id)),
            Some(steps) => {
                engine
                    .store
                    .retry_from(id, &steps[0], &steps[1..], reason)
                    .await?
            }
        };
        outcomes.push((id, outcome));
    }
    Ok(outcomes)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::workflow::WorkflowRegistry;

    #[test]
    fn a_step_and_those_after_it_in_workflow_order() {
        let registry = WorkflowRegistry::builtin();
        let ingest = registry.get("ingest").expect("the built-in workflow");
        assert_eq!(
            steps_from(ingest, "extract"),
            Ok(vec!["extract".to_string(), "store".to_string()])
        );
        assert_eq!(
            steps_from(ingest, "download").map(|steps| steps.len()),
            Ok(3)
        );
        assert_eq!(steps_from(ingest, "store"), Ok(vec!["store".to_string()]));
        let refused = steps_from(ingest, "nosuchstep").expect_err("not a step");
        assert!(
            refused.contains("download, extract, store"),
            "names the valid steps: {refused}"
        );
    }
}
