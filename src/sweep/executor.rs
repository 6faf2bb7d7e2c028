//! The one executor: runs a plan's jobs in order — the sweep's, the transfer command's, the
//! profile's — skipping those whose outputs exist, refusing those whose inputs do not, and
//! saying after every job where the run stands (`[done/total, ETA]`).

use std::collections::HashMap;
use std::path::PathBuf;
use std::time::Instant;

use super::context::{Context, Inputs, Loaded, Outcome};
use super::plan::{Job, Plan, Stage};
use super::store::Store;
use crate::{Error, Result};

/// Runs a plan's jobs with one [`Context`].
pub(super) struct Executor<'a> {
    context: Context<'a>,
}

/// Refuses to start `jobs` while files they read are missing, naming them.
pub(super) fn check_inputs<'a>(what: &str, jobs: impl IntoIterator<Item = &'a Job>) -> Result<()> {
    let mut missing: Vec<&PathBuf> = jobs
        .into_iter()
        .flat_map(|j| &j.needs)
        .filter(|p| !p.exists())
        .collect();
    missing.sort();
    missing.dedup();
    if missing.is_empty() {
        return Ok(());
    }
    let shown: Vec<String> = missing
        .iter()
        .take(5)
        .map(|p| p.display().to_string())
        .collect();
    Err(Error::usage(format!(
        "{what}: {} input file(s) missing, which earlier stages write (run those first): {}{}",
        missing.len(),
        shown.join(", "),
        if missing.len() > shown.len() {
            ", ..."
        } else {
            ""
        }
    )))
}

impl<'a> Executor<'a> {
    pub fn new(inputs: Inputs<'a>, plan: &'a Plan, store: &'a Store) -> Self {
        Self {
            context: Context::new(inputs, plan, store),
        }
    }

    /// Hands the executor a model already loaded (the transfer command loads its models to
    /// choose the test images).
    pub fn preload(&self, index: usize, model: Loaded) {
        self.context.preload(index, model);
    }

    /// Runs the `selected` jobs in order, skipping those whose outputs exist. A line per job
    /// in the log (and on stderr): `[done/total, ETA]` and what it did.
    pub fn run(self, selected: &[usize]) -> Result<Outcome> {
        let (plan, store) = (self.context.plan, self.context.store);
        let pending: Vec<bool> = selected.iter().map(|&j| !plan.jobs[j].is_done()).collect();
        let cost_left: f64 = selected
            .iter()
            .zip(&pending)
            .filter(|(_, t)| **t)
            .map(|(&j, _)| plan.jobs[j].cost)
            .sum();
        // Work units in u64 for the bar; a huge (but valid) grid saturates, not overflows.
        let scale = 1e12 / cost_left.max(1e12);
        store.overall.set_length((cost_left * scale) as u64);
        // Seconds per unit of cost, measured per stage: the cost model is rough and its error
        // differs from stage to stage (fine-tuning also evaluates, DeepFool stops early), so a
        // stage's remaining jobs are timed by that stage's own jobs, or by all jobs until one
        // of the stage has run.
        let mut measured: HashMap<Stage, (f64, f64)> = HashMap::new();
        let (mut cost_done, mut seconds_run) = (0.0, 0.0);
        for (done, (&j, &todo)) in selected.iter().zip(&pending).enumerate() {
            let job = &plan.jobs[j];
            let progress = format!("[{}/{}", done + 1, selected.len());
            if !todo {
                store.log(&format!("{progress}] {} reused", job.name));
                continue;
            }
            check_inputs(&format!("{} (stage {})", job.name, job.stage), [job])?;
            let start = Instant::now();
            let what = job.work.run(&self.context)?;
            let seconds = start.elapsed().as_secs_f64();
            self.context.outcome.borrow_mut().jobs_run += 1;
            seconds_run += seconds;
            cost_done += job.cost;
            let stage = measured.entry(job.stage).or_default();
            stage.0 += job.cost;
            stage.1 += seconds;
            store.overall.inc((job.cost * scale) as u64);
            let eta = if cost_done > 0.0 {
                let overall = seconds_run / cost_done;
                let rate = |s: Stage| match measured.get(&s) {
                    Some(&(cost, secs)) if cost > 0.0 => secs / cost,
                    _ => overall,
                };
                let left: f64 = selected[done + 1..]
                    .iter()
                    .zip(&pending[done + 1..])
                    .filter(|(_, t)| **t)
                    .map(|(&k, _)| plan.jobs[k].cost * rate(plan.jobs[k].stage))
                    .sum();
                format_duration(left)
            } else {
                "?".into()
            };
            store.log(&format!(
                "{progress}, ETA {eta}] {}: {what} ({seconds:.1} s)",
                job.name
            ));
        }
        store.overall.finish_and_clear();
        Ok(self.context.outcome.take())
    }
}

/// `1h02m`, `3m05s`, `12s`.
fn format_duration(seconds: f64) -> String {
    let s = seconds.round() as u64;
    match s {
        0..60 => format!("{s}s"),
        60..3600 => format!("{}m{:02}s", s / 60, s % 60),
        _ => format!("{}h{:02}m", s / 3600, s % 3600 / 60),
    }
}
