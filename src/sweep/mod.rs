//! The whole study in one call: baseline -> every compressed model of the grid (fine-tuned)
//! -> adversarial sets per source model and attack -> every cell of the transfer matrix ->
//! Figure 3's eps/iteration grid and Figure 5's CDFs -> results, figures and report.
//!
//! The config expands into a [`plan`] of typed jobs, each with a content-addressed output
//! file (its name carries a hash of everything it depends on), in four [`Stage`]s. One
//! executor runs the jobs whose outputs are missing, in order: a rerun reuses what exists and
//! a killed run picks up where it stopped. The same executor runs one stage's share of jobs
//! (`--stage S --shard I/N`) in as many processes as there are shards, on a shared output
//! folder; [`slurm`] writes and submits that as Slurm job arrays. The report is always built
//! from the files on disk, so every way of running gives the same results.

mod config;
mod plan;
mod slurm;
mod store;

use std::cell::RefCell;
use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::rc::Rc;
use std::time::Instant;

use serde::Serialize;

use crate::attack::AttackConfig;
use crate::backend::Backend;
use crate::compress::{self, CompressConfig};
use crate::data::{DataChoice, DatasetKind, Images, Split};
use crate::kernels::QuantGrad;
use crate::model::{self, Classifier, KeyMap, ModelRef};
use crate::report::{self, CdfSeries, Cell, EpsStepsCell, Family, ModelRow, Throughput};
use crate::train::{self, TrainConfig};
use crate::transfer::{self, AdversarialSet};
use crate::{Error, Result, stable_hash};

pub use config::{PRESETS, SweepConfig};
use plan::{Job, Plan, PlanInputs, Work};
pub use plan::{Shard, Stage};
pub use slurm::{SlurmOptions, SlurmSubmission};
use store::Store;

/// What to run and where.
pub struct SweepOptions<'a> {
    pub config: SweepConfig,
    pub out: PathBuf,
    pub backend: &'a Backend,
    /// A baseline checkpoint to start from instead of training one.
    pub baseline: Option<PathBuf>,
    /// Where non-embedded datasets live.
    pub data_dir: Option<PathBuf>,
    /// Run only this stage (every stage when `None`).
    pub stage: Option<Stage>,
    /// Run only this shard's share of each stage's jobs.
    pub shard: Shard,
}

/// What a finished run wrote.
#[derive(Clone, Debug, Serialize)]
pub struct SweepSummary {
    /// The report, when this run wrote it (a run of an earlier stage does not).
    pub report: Option<PathBuf>,
    pub models: usize,
    pub cells: usize,
    /// Jobs this run was given, and how many of them it ran (the others were done).
    pub jobs: usize,
    pub jobs_run: usize,
    pub seconds: f64,
}

/// A model of the sweep, loaded.
struct SweepModel {
    row: ModelRow,
    classifier: Classifier,
}

/// Everything a run needs, checked before anything is written.
struct Prepared {
    /// Files the user gave (never overwritten).
    inputs: Vec<PathBuf>,
    plan: Plan,
    model: ModelRef,
    dataset: DatasetKind,
    test: Images,
    images: usize,
    grad: QuantGrad,
    title: String,
}

impl Prepared {
    /// Whether `out` can be written (and is none of the inputs).
    fn check_output(&self, out: &Path) -> Result<()> {
        let inputs: Vec<&Path> = self.inputs.iter().map(PathBuf::as_path).collect();
        crate::files::check_output_dir("--out", out, &inputs)
    }
}

/// Checks the config, the model and the data, and expands the plan.
fn prepare(options: &SweepOptions) -> Result<Prepared> {
    let config = &options.config;
    config.validate()?;
    let kind = config.model.clone();
    // The model as given (a built-in one freshly made): what the dataset must fit.
    let network = kind.load(&options.backend.device)?;
    let choice = DataChoice {
        dataset: config.dataset,
        dir: options.data_dir.clone(),
        ..DataChoice::default()
    };
    let dataset = network.dataset(&choice, &model::CheckpointMeta::default())?;
    let model_name = match network.model_sha256() {
        Some(sha) => format!("onnx-{}", &sha[..16]),
        None => kind.to_string(),
    };
    let baseline = options.baseline.clone().or(match &kind {
        ModelRef::Onnx(path) => Some(path.clone()),
        ModelRef::BuiltIn(_) => None,
    });
    let baseline = match baseline {
        Some(path) => {
            let bytes = std::fs::read(&path).map_err(|e| {
                Error::checkpoint(&path, format!("no such baseline checkpoint: {e}"))
            })?;
            let key = stable_hash([bytes.as_slice()]);
            Some((path, key))
        }
        None => None,
    };
    // Everything that can be refused is refused before the output folder is touched.
    let test = network.images(&dataset, Split::Test)?;
    let dataset = dataset
        .kind()
        .expect("a sweep reads a dataset advcomp knows");
    let images = config.attack.images.min(test.len());
    let grad = config.attack.grad;
    let inputs: Vec<PathBuf> = baseline.iter().map(|(p, _)| p.clone()).collect();
    let plan = PlanInputs {
        config,
        root: &options.out,
        model_name: &model_name,
        baseline,
        dataset,
        images,
        grad,
    }
    .expand()?;
    let title = match network.model_sha256() {
        Some(sha) => format!("advcomp sweep: {kind} (SHA-256 {sha}) on {dataset}"),
        None => format!("advcomp sweep: {kind} on {dataset}"),
    };
    Ok(Prepared {
        inputs,
        plan,
        model: kind,
        dataset,
        test,
        images,
        grad,
        title,
    })
}

/// Runs (or resumes) the sweep, or one stage's shard of it, in `options.out`.
pub fn run(options: &SweepOptions) -> Result<SweepSummary> {
    let start = Instant::now();
    let prepared = prepare(options)?;
    let selected = prepared.plan.select(options.stage, options.shard);
    let whole = options.stage.is_none() && options.shard == Shard::WHOLE;
    if let Some(stage) = options.stage {
        // A stage run on its own starts only when everything it reads exists.
        let jobs = selected.iter().map(|&j| &prepared.plan.jobs[j]);
        check_inputs(&format!("stage {stage}"), jobs)?;
    }
    prepared.check_output(&options.out)?;
    let store = Store::open(&options.out, !whole)?;
    let executor = Executor {
        options,
        prepared: &prepared,
        store: &store,
        loaded: RefCell::new(HashMap::new()),
        report: RefCell::new(None),
    };
    let config = &options.config;
    store.log(&format!(
        "sweep: {} on {}, {} seed(s), {} models, {} jobs ({}{}), {} attacked images, backend {}, output {}",
        prepared.model,
        prepared.dataset,
        config.seeds,
        prepared.plan.models.len(),
        selected.len(),
        options.stage.map_or("every stage".into(), |s| format!("stage {s}")),
        if options.shard == Shard::WHOLE {
            String::new()
        } else {
            format!(", shard {}", options.shard)
        },
        prepared.images,
        options.backend,
        options.out.display()
    ));
    let jobs_run = executor.run(&selected)?;
    store.overall.finish_and_clear();
    let (report, models, cells) = match executor.report.take() {
        Some((path, models, cells)) => (Some(path), models, cells),
        None => (None, prepared.plan.models.len(), 0),
    };
    Ok(SweepSummary {
        report,
        models,
        cells,
        jobs: selected.len(),
        jobs_run,
        seconds: start.elapsed().as_secs_f64(),
    })
}

/// Writes the sweep's Slurm scripts (one job array per stage, chained) and submits them.
pub fn submit_to_slurm(options: &SweepOptions, slurm: &SlurmOptions) -> Result<SlurmSubmission> {
    let prepared = prepare(options)?;
    prepared.check_output(&options.out)?;
    slurm::submit(options, &prepared.plan, slurm)
}

/// Refuses to start `jobs` while files they read are missing, naming them.
fn check_inputs<'a>(what: &str, jobs: impl IntoIterator<Item = &'a Job>) -> Result<()> {
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

struct Executor<'a> {
    options: &'a SweepOptions<'a>,
    prepared: &'a Prepared,
    store: &'a Store,
    /// Models loaded so far, by index in the plan.
    loaded: RefCell<HashMap<usize, Rc<SweepModel>>>,
    /// The report, its model count and cell count, once the report job ran.
    report: RefCell<Option<(PathBuf, usize, usize)>>,
}

impl Executor<'_> {
    fn device(&self) -> &burn::tensor::Device {
        &self.options.backend.device
    }

    fn batch_size(&self) -> usize {
        self.options.config.attack.batch_size
    }

    /// Runs the jobs in order, skipping those whose outputs exist; returns how many ran. A
    /// line per job in the log (and on stderr): `[done/total, ETA]` and what it did.
    fn run(&self, selected: &[usize]) -> Result<usize> {
        let plan = &self.prepared.plan;
        let todo: Vec<bool> = selected.iter().map(|&j| !plan.jobs[j].is_done()).collect();
        let mut cost_left: f64 = selected
            .iter()
            .zip(&todo)
            .filter(|(_, t)| **t)
            .map(|(&j, _)| plan.jobs[j].cost)
            .sum();
        // Work units in u64 for the bar; a huge (but valid) grid saturates, not overflows.
        let scale = 1e12 / cost_left.max(1e12);
        self.store.overall.set_length((cost_left * scale) as u64);
        let (mut cost_done, mut seconds_run, mut ran) = (0.0, 0.0, 0);
        for (done, (&j, &todo)) in selected.iter().zip(&todo).enumerate() {
            let job = &plan.jobs[j];
            let progress = format!("[{}/{}", done + 1, selected.len());
            if !todo {
                self.store.log(&format!("{progress}] {} reused", job.name));
                continue;
            }
            check_inputs(&format!("{} (stage {})", job.name, job.stage), [job])?;
            for output in &job.writes {
                if let (Some(dir), Some(name)) = (output.parent(), output.file_name()) {
                    crate::files::remove_stale_temporaries(dir, Some(name), false);
                }
            }
            let start = Instant::now();
            let what = self.run_job(job)?;
            let seconds = start.elapsed().as_secs_f64();
            ran += 1;
            seconds_run += seconds;
            cost_done += job.cost;
            cost_left -= job.cost;
            self.store.overall.inc((job.cost * scale) as u64);
            let eta = if cost_done > 0.0 {
                format_duration(cost_left.max(0.0) * seconds_run / cost_done)
            } else {
                "?".into()
            };
            self.store.log(&format!(
                "{progress}, ETA {eta}] {}: {what} ({seconds:.1} s)",
                job.name
            ));
        }
        Ok(ran)
    }

    /// Runs one job; returns what it did, for the log.
    fn run_job(&self, job: &Job) -> Result<String> {
        match &job.work {
            Work::Train { model, config } => self.train(*model, config),
            Work::Compress {
                model,
                base,
                config,
            } => self.compress(*model, *base, config),
            Work::Attack {
                source,
                targets,
                config,
                set,
                cells,
            } => self.attack(*source, targets, config, set, cells),
            Work::EpsSteps {
                model,
                config,
                cell,
            } => self.eps_steps(*model, config, cell),
            Work::Report => self.write_report(),
        }
    }
}

impl Executor<'_> {
    /// Model `index` of the plan, loaded once per process.
    fn model(&self, index: usize) -> Result<Rc<SweepModel>> {
        if let Some(m) = self.loaded.borrow().get(&index) {
            return Ok(m.clone());
        }
        let spec = &self.prepared.plan.models[index];
        let ckpt = model::load(
            &spec.path,
            Some(self.prepared.model.clone()),
            &KeyMap::default(),
            self.device(),
        )?;
        let clean_accuracy = match ckpt.meta.accuracy {
            Some(a) => a,
            None => train::evaluate(
                &ckpt.network,
                &ckpt.compression,
                &self.prepared.test,
                self.device(),
                500,
                self.options.config.evaluation_images,
            )?,
        };
        let record = ckpt.record();
        let mut classifier = ckpt.classifier();
        classifier.compression.grad = self.prepared.grad;
        let loaded = Rc::new(SweepModel {
            row: ModelRow {
                seed: spec.seed,
                label: spec.label.clone(),
                family: spec.family,
                density: record
                    .as_ref()
                    .and_then(|r| r.target_density)
                    .unwrap_or(1.0),
                bits: classifier.compression.weights.map(|f| f.bits),
                clean_accuracy,
                checkpoint: spec.path.clone(),
            },
            classifier,
        });
        self.loaded.borrow_mut().insert(index, loaded.clone());
        Ok(loaded)
    }

    fn data(&self) -> DataChoice {
        DataChoice::known(self.prepared.dataset, self.options.data_dir.clone())
    }

    fn train(&self, model: usize, config: &TrainConfig) -> Result<String> {
        if self.prepared.model.builtin().is_none() {
            return Err(Error::usage(
                "an imported model is its own baseline; it is not trained",
            ));
        }
        let spec = &self.prepared.plan.models[model];
        let bar = self.store.stage(
            config.epochs as u64,
            &format!("{} s{}", spec.label, spec.seed),
            "epochs",
        );
        let outcome = train::train_baseline(
            &self.prepared.model,
            &self.data(),
            config,
            self.options.config.evaluation_images,
            self.device(),
            &spec.path,
            false,
            |r| {
                bar.inc(1);
                self.store.log(&format!(
                    "seed {}: baseline epoch {}: loss {:.4}, test accuracy {:.2}%",
                    spec.seed,
                    r.epoch,
                    r.train_loss,
                    100.0 * r.test_accuracy
                ));
            },
        )?;
        bar.finish_and_clear();
        Ok(format!(
            "trained, {:.2}% clean accuracy",
            100.0 * outcome.test_accuracy
        ))
    }

    fn compress(&self, model: usize, base: usize, config: &CompressConfig) -> Result<String> {
        let models = &self.prepared.plan.models;
        let spec = &models[model];
        let bar = self.store.stage(
            config.finetune.epochs as u64,
            &format!("{} s{}", spec.label, spec.seed),
            "epochs",
        );
        let outcome = compress::compress_checkpoint(
            &models[base].path,
            &self.data(),
            config,
            self.options.config.evaluation_images,
            self.device(),
            &spec.path,
            |_| bar.inc(1),
        )?;
        bar.finish_and_clear();
        Ok(format!(
            "{:.2}% clean accuracy (baseline {:.2}%)",
            100.0 * outcome.test_accuracy,
            100.0 * outcome.base_accuracy
        ))
    }

    /// Crafts one adversarial set on `source`.
    fn craft(&self, source: &SweepModel, config: &AttackConfig) -> Result<AdversarialSet> {
        let label = format!("{} {}", config.kind, source.row.label);
        let bar = self
            .store
            .add(transfer::image_bar(self.prepared.images, &label));
        let description =
            serde_json::json!({ "source": source.row.checkpoint, "attack": config }).to_string();
        let set = transfer::craft(
            &source.classifier,
            &self.prepared.test,
            self.prepared.images,
            self.batch_size(),
            config,
            self.device(),
            description,
            &bar,
        )?;
        bar.finish_and_clear();
        Ok(set)
    }

    /// One row of the matrix: the set (made once, or read back when a killed run made it)
    /// on every target.
    fn attack(
        &self,
        source: usize,
        targets: &[usize],
        config: &AttackConfig,
        set_path: &Path,
        cells: &[PathBuf],
    ) -> Result<String> {
        let source = self.model(source)?;
        let (set, what) = if set_path.exists() {
            let mut set = transfer::load(set_path, &self.prepared.test, self.prepared.images)?;
            set.seconds = read_timing(set_path).seconds;
            let what = format!("{} images (set read back)", set.len());
            (set, what)
        } else {
            let set = self.craft(&source, config)?;
            transfer::save(set_path, &set)?;
            let timing = Timing {
                seconds: set.seconds,
                backend: self.options.backend.name.into(),
                adapter: self.options.backend.adapter.clone(),
            };
            write_json(&timing_path(set_path), &timing)?;
            let what = format!(
                "{} images, {:.1} images/s",
                set.len(),
                set.images_per_second()
            );
            (set, what)
        };
        for (&target, path) in targets.iter().zip(cells) {
            if path.exists() {
                continue;
            }
            let target = self.model(target)?;
            let metrics = transfer::evaluate(
                &target.classifier,
                &set,
                &self.prepared.test,
                self.batch_size(),
                self.device(),
            )?;
            let cell = Cell {
                seed: source.row.seed,
                attack: config.kind,
                source: source.row.label.clone(),
                target: target.row.label.clone(),
                scenario: transfer::scenario(
                    source.row.family != Family::Full,
                    target.row.family != Family::Full,
                    source.row.label == target.row.label,
                )
                .into(),
                metrics,
            };
            write_json(path, &cell)?;
        }
        Ok(what)
    }

    /// One Figure 3 point: the model attacked by itself.
    fn eps_steps(&self, model: usize, config: &AttackConfig, path: &Path) -> Result<String> {
        let model = self.model(model)?;
        let set = self.craft(&model, config)?;
        let metrics = transfer::evaluate(
            &model.classifier,
            &set,
            &self.prepared.test,
            self.batch_size(),
            self.device(),
        )?;
        let what = format!(
            "adversarial accuracy {:.1}%",
            100.0 * metrics.adversarial_accuracy
        );
        write_json(
            path,
            &EpsStepsCell {
                seed: model.row.seed,
                attack: config.kind,
                eps: config.eps,
                steps: config.steps,
                metrics,
            },
        )?;
        Ok(what)
    }

    /// Figure 5's CDFs of all weights and all activations of the baseline and each quantised
    /// model of the first seed (from the checkpoints, so the same on every run).
    fn cdfs(&self) -> Result<Vec<CdfSeries>> {
        let n = self
            .options
            .config
            .figure5
            .activation_images
            .min(self.prepared.test.len());
        let indices: Vec<usize> = (0..n).collect();
        let mut out = Vec::new();
        for (index, spec) in self.prepared.plan.models.iter().enumerate() {
            if spec.seed != 1 || spec.family == Family::Pruned {
                continue;
            }
            let m = self.model(index)?;
            let (images, _) = self.prepared.test.batch(&indices, self.device());
            let rows = compress::cdf_rows(
                &m.classifier.network,
                &m.classifier.compression,
                Some(images),
            );
            for tensor in ["weight", "activation"] {
                out.push(CdfSeries {
                    seed: spec.seed,
                    label: spec.label.clone(),
                    tensor: tensor.into(),
                    points: rows
                        .iter()
                        .filter(|r| r.tensor == tensor && r.layer == "all")
                        .map(|r| (r.value, r.fraction))
                        .collect(),
                });
            }
        }
        Ok(out)
    }

    /// The results, figures and report, from the files of every earlier job.
    fn write_report(&self) -> Result<String> {
        let plan = &self.prepared.plan;
        let models = (0..plan.models.len())
            .map(|m| self.model(m).map(|m| m.row.clone()))
            .collect::<Result<Vec<_>>>()?;
        let (mut cells, mut eps_steps, mut throughput) = (Vec::new(), Vec::new(), Vec::new());
        for job in &plan.jobs {
            match &job.work {
                Work::Attack {
                    source,
                    config,
                    set,
                    cells: files,
                    ..
                } => {
                    for file in files {
                        cells.push(read_json::<Cell>(file)?);
                    }
                    let spec = &plan.models[*source];
                    let timing = read_timing(set);
                    throughput.push(Throughput {
                        seed: spec.seed,
                        attack: config.kind,
                        source: spec.label.clone(),
                        images: self.prepared.images,
                        seconds: timing.seconds,
                        backend: timing.backend,
                        adapter: timing.adapter,
                    });
                }
                Work::EpsSteps { cell, .. } => eps_steps.push(read_json::<EpsStepsCell>(cell)?),
                _ => {}
            }
        }
        let results = report::Results {
            title: self.prepared.title.clone(),
            config: serde_json::to_value(&self.options.config).expect("config serialises"),
            backend: self.options.backend.name.into(),
            adapter: self.options.backend.adapter.clone(),
            models,
            cells,
            eps_steps,
            cdfs: self.cdfs()?,
            throughput,
        };
        let report = report::write(self.store.root(), &results)?;
        let what = format!(
            "{} models, {} cells -> {}",
            results.models.len(),
            results.cells.len(),
            report.display()
        );
        *self.report.borrow_mut() = Some((report, results.models.len(), results.cells.len()));
        Ok(what)
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

fn write_json(path: &Path, value: &impl Serialize) -> Result<()> {
    let text = serde_json::to_string(value).expect("result serialises");
    crate::write_atomically(path, text.as_bytes())
}

/// How long an adversarial set took to make, and where.
#[derive(Serialize, serde::Deserialize)]
struct Timing {
    seconds: f64,
    backend: String,
    adapter: String,
}

/// Where a set's [`Timing`] is kept: beside the set, not in it, so the set's bytes depend
/// only on its inputs.
fn timing_path(set: &Path) -> PathBuf {
    let mut name = set.file_name().unwrap_or_default().to_os_string();
    name.push(".timing.json");
    set.with_file_name(name)
}

/// A stored set's timing (NaN seconds when its file is missing).
fn read_timing(set: &Path) -> Timing {
    read_json(&timing_path(set)).unwrap_or(Timing {
        seconds: f64::NAN,
        backend: "unknown".into(),
        adapter: "unknown".into(),
    })
}

fn read_json<T: serde::de::DeserializeOwned>(path: &Path) -> Result<T> {
    let text = std::fs::read_to_string(path).map_err(|e| Error::io(path, e))?;
    serde_json::from_str(&text).map_err(|e| Error::data(path, format!("not a result file: {e}")))
}
