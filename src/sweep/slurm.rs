//! A sweep on a Slurm cluster: one job array per stage, chained with `afterok`, each array
//! task running `advcomp sweep --stage S --shard $SLURM_ARRAY_TASK_ID/$SLURM_ARRAY_TASK_COUNT`
//! on the shared output folder; the report stage (one task) writes the results, figures and
//! report. A failed or preempted task is rerun by submitting its stage's script again: the
//! jobs it finished are skipped.

use std::fmt;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::str::FromStr;

use serde::Serialize;

use super::plan::{Plan, Stage};
use super::{SweepConfig, SweepOptions};
use crate::{Error, Result};

/// What `--slurm` asks of the cluster. Every value that goes into a `#SBATCH` line is typed
/// and checked against sbatch's grammar when it is parsed: `#SBATCH` lines cannot be quoted,
/// so a newline or a space in a value would start a shell line or smuggle in an option.
#[derive(Clone, Debug, Default)]
pub struct SlurmOptions {
    pub partition: Option<Partition>,
    /// Wall-clock limit per array task.
    pub time: Option<TimeLimit>,
    pub gpus_per_task: Option<Count>,
    pub cpus_per_task: Option<Count>,
    /// At most this many tasks of one array at once (`--array=0-N%K`).
    pub max_parallel: Option<Count>,
    /// Write and print the scripts; submit nothing.
    pub dry_run: bool,
    /// The backend each task opens (`auto`, `wgpu`, `cpu`).
    pub backend: String,
}

/// What was written and submitted.
#[derive(Clone, Debug, Serialize)]
pub struct SlurmSubmission {
    pub scripts: Vec<PathBuf>,
    /// Slurm's job id of each stage's array, in stage order (empty for a dry run).
    pub job_ids: Vec<String>,
}

/// A partition name, or a comma-separated list of them (sbatch tries each): letters, digits,
/// `_`, `-` and `.`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Partition(String);

impl FromStr for Partition {
    type Err = Error;
    fn from_str(text: &str) -> Result<Self> {
        let name = |n: &str| {
            !n.is_empty()
                && n.len() <= 64
                && n.chars()
                    .all(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '-' | '.'))
        };
        if text.split(',').all(name) {
            Ok(Partition(text.into()))
        } else {
            Err(Error::usage(format!(
                "'{}' is not a Slurm partition name (letters, digits, '_', '-', '.'; several \
                 separated by commas)",
                text.escape_debug()
            )))
        }
    }
}

impl fmt::Display for Partition {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// A time limit in one of sbatch's formats: `minutes`, `minutes:seconds`,
/// `hours:minutes:seconds`, `days-hours`, `days-hours:minutes`, `days-hours:minutes:seconds`
/// (each a whole number; 0 asks for no limit, as sbatch says).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TimeLimit(String);

impl FromStr for TimeLimit {
    type Err = Error;
    fn from_str(text: &str) -> Result<Self> {
        let number =
            |n: &str| !n.is_empty() && n.len() <= 9 && n.bytes().all(|b| b.is_ascii_digit());
        let clock = |c: &str, most: usize| {
            let parts: Vec<&str> = c.split(':').collect();
            parts.len() <= most && parts.iter().all(|p| number(p))
        };
        let fits = match text.split_once('-') {
            Some((days, rest)) => number(days) && clock(rest, 3),
            None => clock(text, 3),
        };
        if fits {
            Ok(TimeLimit(text.into()))
        } else {
            Err(Error::usage(format!(
                "'{}' is not a Slurm time limit (minutes, minutes:seconds, \
                 hours:minutes:seconds, days-hours, days-hours:minutes or \
                 days-hours:minutes:seconds)",
                text.escape_debug()
            )))
        }
    }
}

impl fmt::Display for TimeLimit {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// A positive count of GPUs, CPUs or tasks.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Count(u32);

impl FromStr for Count {
    type Err = Error;
    fn from_str(text: &str) -> Result<Self> {
        match text.parse::<u32>() {
            Ok(n) if n >= 1 => Ok(Count(n)),
            _ => Err(Error::usage(format!(
                "'{}' is not a positive whole number (1 to {})",
                text.escape_debug(),
                u32::MAX
            ))),
        }
    }
}

impl fmt::Display for Count {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.0)
    }
}

/// Single-quotes `text` for bash.
fn quote(text: &str) -> String {
    format!("'{}'", text.replace('\'', r"'\''"))
}

fn absolute(path: &Path) -> Result<PathBuf> {
    std::path::absolute(path).map_err(|e| Error::io(path, e))
}

/// One stage's script.
/// Array tasks of one stage at most: Slurm's default `MaxArraySize` is 1001 (indices 0..1000);
/// a stage with more jobs gives each task several (the shards spread them evenly).
const MAX_TASKS: usize = 1000;

fn script(
    stage: Stage,
    jobs: usize,
    command: &str,
    out: &Path,
    cwd: &Path,
    slurm: &SlurmOptions,
) -> String {
    // One array task per job, up to the cap.
    let tasks = jobs.min(MAX_TASKS);
    let mut lines = vec![
        "#!/bin/bash".to_string(),
        format!("#SBATCH --job-name=advcomp-{stage}"),
        // One process per task (also what --gpus-per-task needs beside it).
        "#SBATCH --ntasks=1".to_string(),
        match slurm.max_parallel {
            Some(k) => format!("#SBATCH --array=0-{}%{k}", tasks - 1),
            None => format!("#SBATCH --array=0-{}", tasks - 1),
        },
        format!(
            "#SBATCH --output={}/slurm/logs/{stage}-%A_%a.out",
            out.display()
        ),
        format!("#SBATCH --chdir={}", cwd.display()),
        // A stage whose predecessor failed is cancelled rather than left pending forever.
        "#SBATCH --kill-on-invalid-dep=yes".to_string(),
    ];
    if let Some(p) = &slurm.partition {
        lines.push(format!("#SBATCH --partition={p}"));
    }
    if let Some(t) = &slurm.time {
        lines.push(format!("#SBATCH --time={t}"));
    }
    if let Some(c) = slurm.cpus_per_task {
        lines.push(format!("#SBATCH --cpus-per-task={c}"));
    }
    if let Some(g) = slurm.gpus_per_task {
        lines.push(format!("#SBATCH --gpus-per-task={g}"));
    }
    lines.push(format!(
        "# Stage '{stage}' of the sweep in {}: {jobs} job(s) over {tasks} array task(s).\n\
         # To rerun failed or preempted tasks, submit this script again (`sbatch {stage}.sbatch`),\n\
         # or only some of them (`sbatch --array=3,7 {stage}.sbatch`): finished jobs are skipped.",
        out.display()
    ));
    lines.push("set -euo pipefail".into());
    // The shard count is written out, not $SLURM_ARRAY_TASK_COUNT: a rerun of some tasks
    // (`--array=3`) must still split the stage the same way.
    lines.push(format!(
        "exec {command} --stage {stage} --shard \"$SLURM_ARRAY_TASK_ID/{tasks}\""
    ));
    lines.join("\n") + "\n"
}

/// Writes `OUT/slurm/sweep.toml` (the config every task reads) and one script per stage, and
/// submits them in order, each after the previous one succeeded (unless `dry_run`).
pub(super) fn submit(
    options: &SweepOptions,
    plan: &Plan,
    slurm: &SlurmOptions,
) -> Result<SlurmSubmission> {
    let out = absolute(&options.out)?;
    // #SBATCH lines are not shell: their paths cannot be quoted, and sbatch expands `%`.
    for path in [&out, &std::env::current_dir().unwrap_or_default()] {
        let text = path.display().to_string();
        if text.contains(|c: char| c.is_whitespace() || c == '%' || c.is_control()) {
            return Err(Error::usage(format!(
                "{text}: a path for Slurm must not hold spaces, '%' or control characters"
            )));
        }
    }
    let dir = out.join("slurm");
    std::fs::create_dir_all(dir.join("logs")).map_err(|e| Error::io(&dir, e))?;
    let mut config = options.config.clone();
    if let crate::model::ModelRef::Onnx(path) = &config.model {
        config.model = crate::model::ModelRef::Onnx(absolute(path)?);
    }
    let toml_text = toml::to_string(&config)
        .map_err(|e| Error::usage(format!("the sweep config cannot be written as TOML: {e}")))?;
    // Every task must expand exactly this plan: the file must read back as the same config.
    let back: SweepConfig = toml::from_str(&toml_text)
        .map_err(|e| Error::usage(format!("the written sweep config does not read back: {e}")))?;
    if back != config {
        return Err(Error::usage(
            "the sweep config does not survive a round trip through TOML",
        ));
    }
    let config_path = dir.join("sweep.toml");
    crate::write_atomically(
        &config_path,
        format!(
            "# The sweep every Slurm task runs (written by advcomp sweep --slurm).\n{toml_text}"
        )
        .as_bytes(),
    )?;
    let exe =
        std::env::current_exe().map_err(|e| Error::usage(format!("advcomp's own path: {e}")))?;
    let mut command = format!(
        "{} sweep --config {} --out {} --backend {}",
        quote(&exe.display().to_string()),
        quote(&config_path.display().to_string()),
        quote(&out.display().to_string()),
        quote(&slurm.backend)
    );
    if let Some(b) = &options.baseline {
        command.push_str(&format!(
            " --baseline {}",
            quote(&absolute(b)?.display().to_string())
        ));
    }
    if let Some(d) = &options.data_dir {
        command.push_str(&format!(
            " --data-dir {}",
            quote(&absolute(d)?.display().to_string())
        ));
    }
    let cwd =
        std::env::current_dir().map_err(|e| Error::usage(format!("working directory: {e}")))?;
    let mut scripts = Vec::new();
    for stage in Stage::ALL {
        let jobs = plan.count(stage);
        if jobs == 0 {
            continue; // a given baseline: nothing to train
        }
        let path = dir.join(format!("{stage}.sbatch"));
        let text = script(stage, jobs, &command, &out, &cwd, slurm);
        crate::write_atomically(&path, text.as_bytes())?;
        scripts.push(path);
    }
    let mut job_ids: Vec<String> = Vec::new();
    if slurm.dry_run {
        return Ok(SlurmSubmission { scripts, job_ids });
    }
    for script in &scripts {
        let mut sbatch = Command::new("sbatch");
        sbatch.arg("--parsable");
        if let Some(previous) = job_ids.last() {
            sbatch.arg(format!("--dependency=afterok:{previous}"));
        }
        let output = sbatch.arg(script).output().map_err(|e| {
            Error::usage(format!(
                "cannot run sbatch ({e}): is this a Slurm login node? (--dry-run writes the scripts only)"
            ))
        })?;
        if !output.status.success() {
            return Err(Error::usage(format!(
                "sbatch {} failed ({}): {}{}",
                script.display(),
                output.status,
                String::from_utf8_lossy(&output.stderr).trim(),
                if job_ids.is_empty() {
                    String::new()
                } else {
                    format!(" (already submitted: {})", job_ids.join(", "))
                }
            )));
        }
        // `--parsable` prints `id` or `id;cluster`.
        let text = String::from_utf8_lossy(&output.stdout);
        let id = text
            .trim()
            .split(';')
            .next()
            .unwrap_or_default()
            .to_string();
        if id.is_empty() {
            return Err(Error::usage(format!(
                "sbatch {} printed no job id",
                script.display()
            )));
        }
        job_ids.push(id);
    }
    Ok(SlurmSubmission { scripts, job_ids })
}
