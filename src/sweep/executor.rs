//! The one executor: runs a plan's jobs in order — the sweep's, the transfer command's, the
//! profile's — skipping those whose outputs exist, refusing those whose inputs do not, and
//! saying after every job where the run stands (`[done/total, ETA]`).

use std::cell::RefCell;
use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::rc::Rc;
use std::time::Instant;

use serde::Serialize;

use super::plan::{Job, ModelSpec, Plan, Stage, Work};
use super::store::Store;
use crate::attack::{AttackConfig, AttackKind};
use crate::backend::Backend;
use crate::compress::{self, CompressConfig};
use crate::data::{DataChoice, Images};
use crate::kernels::QuantGrad;
use crate::model::{self, Classifier, KeyMap, ModelRef};
use crate::profile::{self, AttackTiming, TimeSplit};
use crate::report::{
    self, CdfSeries, Cell, DifferentialCell, EpsStepsCell, Family, ModelRow, Throughput,
};
use crate::train::{self, TrainConfig};
use crate::transfer::{self, AdversarialSet, Gradient, Scenario};
use crate::{Error, ModelRole, Result};

/// What every job of a plan shares.
pub(super) struct Context<'a> {
    pub backend: &'a Backend,
    /// The test split; attacks take its first `images` images.
    pub test: Images,
    pub images: usize,
    pub batch_size: usize,
    /// Clean accuracy of a model whose checkpoint does not record it: on this many images.
    pub evaluation_images: Option<usize>,
    /// The architecture checkpoints are read as (`None`: each file's own).
    pub load_as: Option<ModelRef>,
    /// What the plan's training jobs train, on which data.
    pub training: Option<(ModelRef, DataChoice)>,
}

/// A model of the plan, loaded.
pub(super) struct Loaded {
    pub classifier: Classifier,
    family: Family,
    density: f64,
    /// Clean accuracy as its checkpoint records it.
    recorded_accuracy: Option<f64>,
}

impl Loaded {
    /// `checkpoint`'s classifier (each job chooses the gradient its quantisers pass back).
    pub fn new(checkpoint: model::Checkpoint) -> Self {
        let density = checkpoint.record().map_or(1.0, |r| r.target_density());
        let recorded_accuracy = checkpoint.meta.accuracy;
        let classifier = checkpoint.classifier();
        Loaded {
            density,
            recorded_accuracy,
            ..Loaded::from_classifier(classifier)
        }
    }

    /// A classifier loaded by the caller (its gradient already chosen).
    pub fn from_classifier(classifier: Classifier) -> Self {
        let compression = &classifier.compression;
        let family = if compression.quant.is_some() {
            Family::Quantised
        } else if compression.is_none() {
            Family::Full
        } else {
            Family::Pruned
        };
        Loaded {
            family,
            density: 1.0,
            recorded_accuracy: None,
            classifier,
        }
    }

    /// The classifier with its quantisers passing gradients by `grad`.
    fn through(&self, grad: QuantGrad) -> Classifier {
        let mut classifier = self.classifier.clone();
        classifier.compression.grad = grad;
        classifier
    }
}

/// What a run of the executor produced besides files.
#[derive(Default)]
pub(super) struct Outcome {
    pub jobs_run: usize,
    /// The report, its model count and cell count, when the report job ran.
    pub report: Option<(PathBuf, usize, usize)>,
    /// Cells of attack jobs that keep them in memory, in plan order.
    pub cells: Vec<Cell>,
    /// The profile's measurements, and the files written from them.
    pub timings: Vec<AttackTiming>,
    pub splits: Vec<TimeSplit>,
    pub files: Vec<PathBuf>,
}

/// A model's predictions on the first test images.
type Predictions = Rc<Vec<i64>>;

pub(super) struct Executor<'a> {
    context: &'a Context<'a>,
    plan: &'a Plan,
    store: &'a Store,
    /// Models loaded so far, by index in the plan.
    loaded: RefCell<HashMap<usize, Rc<Loaded>>>,
    /// Clean predictions of model `index` on the first `n` test images, by (index, n): every
    /// cell of a target compares against the same ones.
    clean: RefCell<HashMap<(usize, usize), Predictions>>,
    outcome: RefCell<Outcome>,
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
    pub fn new(context: &'a Context<'a>, plan: &'a Plan, store: &'a Store) -> Self {
        Self {
            context,
            plan,
            store,
            loaded: RefCell::new(HashMap::new()),
            clean: RefCell::new(HashMap::new()),
            outcome: RefCell::new(Outcome::default()),
        }
    }

    /// Hands the executor a model already loaded (the transfer command loads its models to
    /// choose the test images).
    pub fn preload(&self, index: usize, model: Loaded) {
        self.loaded.borrow_mut().insert(index, Rc::new(model));
    }

    fn device(&self) -> &burn::tensor::Device {
        &self.context.backend.device
    }

    /// Runs the `selected` jobs in order, skipping those whose outputs exist. A line per job
    /// in the log (and on stderr): `[done/total, ETA]` and what it did.
    pub fn run(self, selected: &[usize]) -> Result<Outcome> {
        let plan = self.plan;
        let pending: Vec<bool> = selected.iter().map(|&j| !plan.jobs[j].is_done()).collect();
        let cost_left: f64 = selected
            .iter()
            .zip(&pending)
            .filter(|(_, t)| **t)
            .map(|(&j, _)| plan.jobs[j].cost)
            .sum();
        // Work units in u64 for the bar; a huge (but valid) grid saturates, not overflows.
        let scale = 1e12 / cost_left.max(1e12);
        self.store.overall.set_length((cost_left * scale) as u64);
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
                self.store.log(&format!("{progress}] {} reused", job.name));
                continue;
            }
            check_inputs(&format!("{} (stage {})", job.name, job.stage), [job])?;
            let start = Instant::now();
            let what = self.run_job(job)?;
            let seconds = start.elapsed().as_secs_f64();
            self.outcome.borrow_mut().jobs_run += 1;
            seconds_run += seconds;
            cost_done += job.cost;
            let stage = measured.entry(job.stage).or_default();
            stage.0 += job.cost;
            stage.1 += seconds;
            self.store.overall.inc((job.cost * scale) as u64);
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
            self.store.log(&format!(
                "{progress}, ETA {eta}] {}: {what} ({seconds:.1} s)",
                job.name
            ));
        }
        self.store.overall.finish_and_clear();
        Ok(self.outcome.take())
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
                grad,
                images,
                set,
                cells,
            } => self.attack(
                *source,
                targets,
                config,
                *grad,
                *images,
                set.as_deref(),
                cells.as_deref(),
            ),
            Work::Unbounded {
                model,
                grad,
                images,
                cell,
            } => self.unbounded(*model, *grad, *images, cell),
            Work::EpsSteps {
                model,
                config,
                cell,
            } => self.eps_steps(*model, config, cell),
            Work::Report {
                title,
                provenance,
                attacks,
                activation_images,
            } => self.write_report(title, provenance, attacks, *activation_images),
            Work::Matrix { out } => self.write_matrix(out),
            Work::Differential {
                compressed,
                reference,
                attacks,
                cell,
            } => self.differential(*compressed, *reference, attacks, cell),
            Work::Measure {
                variant,
                batch_size,
                attacks,
                repeats,
            } => self.measure(variant, *batch_size, attacks, *repeats),
            Work::ProfileFiles { out, batch_sizes } => {
                let mut outcome = self.outcome.borrow_mut();
                let mut attacks: Vec<AttackKind> = Vec::new();
                for t in &outcome.timings {
                    if !attacks.contains(&t.attack) {
                        attacks.push(t.attack);
                    }
                }
                let files = profile::write_files(
                    out,
                    &outcome.timings,
                    &outcome.splits,
                    &attacks,
                    batch_sizes,
                    self.context.backend,
                )?;
                let what = format!("-> {}", files[0].display());
                outcome.files = files;
                Ok(what)
            }
        }
    }

    fn spec(&self, index: usize) -> &ModelSpec {
        &self.plan.models[index]
    }

    /// Model `index` of the plan, loaded once per process.
    fn model(&self, index: usize) -> Result<Rc<Loaded>> {
        if let Some(m) = self.loaded.borrow().get(&index) {
            return Ok(m.clone());
        }
        let mut checkpoint = model::load(
            &self.spec(index).path,
            self.context.load_as.clone(),
            &KeyMap::default(),
            self.device(),
        )?;
        // A QDQ file as its own full model: its quantisers removed.
        let qdq = matches!(&checkpoint.network, model::Network::Onnx(m) if m.graph.qdq.is_some());
        if qdq && self.spec(index).family == Some(Family::Full) {
            checkpoint.compression = model::Compression::default();
            checkpoint.meta.compression = "none".into();
        }
        let loaded = Rc::new(Loaded::new(checkpoint));
        self.loaded.borrow_mut().insert(index, loaded.clone());
        Ok(loaded)
    }

    /// Model `index`'s clean predictions on the first `n` test images, computed once.
    fn clean_predictions(&self, index: usize, n: usize) -> Result<Predictions> {
        if let Some(p) = self.clean.borrow().get(&(index, n)) {
            return Ok(p.clone());
        }
        let predictions = Rc::new(
            transfer::clean_predictions(
                &self.model(index)?.classifier,
                &self.context.test,
                n,
                self.context.batch_size,
                self.device(),
            )
            .map_err(|e| e.naming(ModelRole::Target, &self.spec(index).path))?,
        );
        self.clean
            .borrow_mut()
            .insert((index, n), predictions.clone());
        Ok(predictions)
    }

    fn training(&self) -> Result<&(ModelRef, DataChoice)> {
        self.context
            .training
            .as_ref()
            .ok_or_else(|| Error::usage("this plan trains nothing"))
    }

    fn train(&self, model: usize, config: &TrainConfig) -> Result<String> {
        let (kind, data) = self.training()?;
        if kind.builtin().is_none() {
            return Err(Error::usage(
                "an imported model is its own baseline; it is not trained",
            ));
        }
        let spec = self.spec(model);
        let bar = self.store.stage(
            config.epochs as u64,
            &format!("{} s{}", spec.label, spec.seed),
            "epochs",
        );
        self.store.log(&format!(
            "seed {}: training the baseline ({} epochs)",
            spec.seed, config.epochs
        ));
        let outcome = train::train_baseline(
            kind,
            data,
            config,
            self.context.evaluation_images,
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
        let (_, data) = self.training()?;
        let spec = self.spec(model);
        let bar = self.store.stage(
            config.finetune.epochs as u64,
            &format!("{} s{}", spec.label, spec.seed),
            "epochs",
        );
        let outcome = compress::compress_checkpoint(
            &self.spec(base).path,
            data,
            config,
            self.context.evaluation_images,
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

    /// `error` naming the file of the model (`source`, or `reference` beside it) that gave
    /// NaN or infinite numbers.
    fn named(&self, error: Error, source: usize, reference: Option<usize>) -> Error {
        let error = error.naming(ModelRole::Source, &self.spec(source).path);
        match reference {
            Some(r) => error.naming(ModelRole::Reference, &self.spec(r).path),
            None => error,
        }
    }

    /// Crafts one adversarial set on the first `images` test images of model `source`, its
    /// quantisers passing gradients by `grad` (DIVA: with `reference` beside it).
    fn craft(
        &self,
        source: usize,
        reference: Option<usize>,
        config: &AttackConfig,
        grad: QuantGrad,
        images: usize,
    ) -> Result<AdversarialSet> {
        let spec = self.spec(source);
        let model = self.model(source)?;
        let reference_index = reference;
        let reference = reference.map(|r| self.model(r)).transpose()?;
        let label = format!("{} {}", config.kind(), spec.label);
        let bar = self.store.add(transfer::image_bar(images, &label));
        let description = serde_json::json!({ "source": spec.path, "attack": config }).to_string();
        let set = transfer::craft(
            &model.through(grad),
            &self.context.test,
            images,
            self.context.batch_size,
            config,
            reference.as_ref().map(|r| &r.classifier),
            self.device(),
            description,
            &bar,
        )
        .map_err(|e| self.named(e, source, reference_index))?;
        bar.finish_and_clear();
        Ok(set)
    }

    /// The unbounded check: a gradient attack with a budget of 1.0 on `model` through `grad`.
    fn unbounded(
        &self,
        model: usize,
        grad: QuantGrad,
        images: usize,
        path: &Path,
    ) -> Result<String> {
        let attack = crate::transfer::indicators::unbounded_attack();
        let set = self.craft(model, None, &attack, grad, images)?;
        let metrics = transfer::evaluate_against(
            &self.model(model)?.classifier,
            &set,
            &self.context.test,
            &self.clean_predictions(model, set.len())?,
            self.context.batch_size,
            self.device(),
        )
        .map_err(|e| e.naming(ModelRole::Target, &self.spec(model).path))?;
        let check = crate::transfer::UnboundedCheck {
            seed: self.spec(model).seed,
            model: self.spec(model).label.to_string(),
            gradient: set.diagnostics.gradient,
            accuracy: metrics.adversarial_accuracy,
        };
        write_json(path, &check)?;
        Ok(format!(
            "{:.1}% still correct at a budget of 1.0",
            100.0 * check.accuracy
        ))
    }

    /// One row of the matrix: the set (made once, or read back when stored) on every target.
    #[allow(clippy::too_many_arguments)]
    fn attack(
        &self,
        source: usize,
        targets: &[usize],
        config: &AttackConfig,
        grad: QuantGrad,
        images: usize,
        set_path: Option<&Path>,
        cells: Option<&[PathBuf]>,
    ) -> Result<String> {
        let (set, what) = match set_path {
            Some(path) if path.exists() => {
                let mut set = transfer::load(path, &self.context.test, images)?;
                set.seconds = read_timing(path).seconds;
                let what = format!(
                    "{} images, reusing the stored set {}",
                    set.len(),
                    path.display()
                );
                (set, what)
            }
            _ => {
                let set = self.craft(source, None, config, grad, images)?;
                if let Some(path) = set_path {
                    transfer::save(path, &set)?;
                }
                // The sweep's throughput table reads the timing; the transfer command's cache
                // (cells in memory) holds the sets alone.
                if let (Some(path), Some(_)) = (set_path, cells) {
                    let timing = Timing {
                        seconds: set.seconds,
                        backend: self.context.backend.name.into(),
                        adapter: self.context.backend.adapter.clone(),
                    };
                    write_json(&timing_path(path), &timing)?;
                }
                let what = format!(
                    "{} images, {:.1} images/s (batch {}, {})",
                    set.len(),
                    set.images_per_second(),
                    self.context.batch_size,
                    self.context.backend
                );
                (set, what)
            }
        };
        let source_spec = self.spec(source);
        let source_model = self.model(source)?;
        for (i, &target) in targets.iter().enumerate() {
            let file = cells.map(|c| &c[i]);
            if file.is_some_and(|f| f.exists()) {
                continue;
            }
            let target_model = self.model(target)?;
            let target_spec = self.spec(target);
            let metrics = transfer::evaluate_against(
                &target_model.classifier,
                &set,
                &self.context.test,
                &self.clean_predictions(target, set.len())?,
                self.context.batch_size,
                self.device(),
            )
            .map_err(|e| e.naming(ModelRole::Target, &target_spec.path))?;
            let cell = Cell {
                seed: source_spec.seed,
                attack: config.kind(),
                gradient: set.diagnostics.gradient,
                budget: config.budget(),
                source: source_spec.label.to_string(),
                target: target_spec.label.to_string(),
                scenario: Scenario::of(
                    source_model.family != Family::Full,
                    target_model.family != Family::Full,
                    source_spec.path == target_spec.path,
                ),
                metrics,
            };
            match file {
                Some(file) => write_json(file, &cell)?,
                None => self.outcome.borrow_mut().cells.push(cell),
            }
        }
        Ok(what)
    }

    /// One Figure 3 point: the model attacked by itself.
    fn eps_steps(&self, model: usize, config: &AttackConfig, path: &Path) -> Result<String> {
        let set = self.craft(model, None, config, QuantGrad::Ste, self.context.images)?;
        let metrics = transfer::evaluate_against(
            &self.model(model)?.classifier,
            &set,
            &self.context.test,
            &self.clean_predictions(model, set.len())?,
            self.context.batch_size,
            self.device(),
        )
        .map_err(|e| e.naming(ModelRole::Target, &self.spec(model).path))?;
        let what = format!(
            "adversarial accuracy {:.1}%",
            100.0 * metrics.adversarial_accuracy
        );
        write_json(
            path,
            &EpsStepsCell {
                seed: self.spec(model).seed,
                source: self.spec(model).label.clone(),
                attack: config.kind(),
                eps: config.step().unwrap_or(f32::NAN),
                steps: config.steps(),
                metrics,
            },
        )?;
        Ok(what)
    }

    /// Each attack crafted on the pair, and how its examples split it.
    fn differential(
        &self,
        compressed: usize,
        reference: usize,
        attacks: &[AttackConfig],
        path: &Path,
    ) -> Result<String> {
        let (c, f) = (self.model(compressed)?, self.model(reference)?);
        let mut cells = Vec::new();
        let mut what = Vec::new();
        for config in attacks {
            let set = self.craft(
                compressed,
                Some(reference),
                config,
                QuantGrad::Ste,
                self.context.images,
            )?;
            let metrics = transfer::evaluate_pair(
                &c.classifier,
                &f.classifier,
                &set,
                &self.context.test,
                self.context.batch_size,
                self.device(),
            )
            .map_err(|e| self.named(e, compressed, Some(reference)))?;
            what.push(format!(
                "{} evasive {:.1}%",
                config.kind(),
                100.0 * metrics.evasive_success_rate
            ));
            cells.push(DifferentialCell {
                seed: self.spec(compressed).seed,
                attack: config.kind(),
                model: self.spec(compressed).label.clone(),
                metrics,
            });
        }
        write_json(path, &cells)?;
        Ok(what.join(", "))
    }

    /// The gradient `config` follows through model `index`'s quantisers when they pass it by
    /// `grad` (what [`transfer::craft`] records in the set).
    fn gradient(&self, index: usize, config: &AttackConfig, grad: QuantGrad) -> Result<Gradient> {
        let kind = config.kind();
        let quantised = self
            .model(index)?
            .classifier
            .compression
            .quantises_activations();
        Ok(match (kind.uses_gradients(), quantised) {
            (false, _) | (_, false) => Gradient::Exact,
            _ if kind.uses_all_estimators() => Gradient::All,
            _ if grad == QuantGrad::Identity => Gradient::Identity,
            _ => Gradient::Ste,
        })
    }

    /// Model `index` as a row of `models.csv` (its clean accuracy measured when its checkpoint
    /// does not record it).
    fn row(&self, index: usize) -> Result<ModelRow> {
        let spec = self.spec(index);
        let m = self.model(index)?;
        let quantiser = m.classifier.compression.quant.as_ref().map(|q| &q.config);
        let clean_accuracy = match m.recorded_accuracy {
            Some(a) => a,
            None => train::evaluate(
                &m.classifier.network,
                &m.classifier.compression,
                &self.context.test,
                self.device(),
                train::EVAL_BATCH_SIZE,
                self.context.evaluation_images,
            )
            .map_err(|e| e.naming(ModelRole::Target, &spec.path))?,
        };
        Ok(ModelRow {
            seed: spec.seed,
            label: spec.label.clone(),
            family: spec.family.unwrap_or(m.family),
            density: m.density,
            bits: quantiser.and_then(|q| q.bits()),
            scheme: quantiser.map(|q| q.scheme()),
            clean_accuracy,
            checkpoint: spec.path.clone(),
        })
    }

    /// Figure 5's CDFs of all weights and all activations of the baseline and each quantised
    /// model of the first seed (from the checkpoints, so the same on every run).
    fn cdfs(&self, rows: &[ModelRow], activation_images: usize) -> Result<Vec<CdfSeries>> {
        let n = activation_images.min(self.context.test.len());
        let indices: Vec<usize> = (0..n).collect();
        let mut out = Vec::new();
        for (index, row) in rows.iter().enumerate() {
            if row.seed != 1 || row.family == Family::Pruned {
                continue;
            }
            let m = self.model(index)?;
            let (images, _) = self.context.test.batch(&indices, self.device());
            let points = compress::cdf_rows(
                &m.classifier.network,
                &m.classifier.compression,
                Some(images),
            );
            for tensor in ["weight", "activation"] {
                out.push(CdfSeries {
                    seed: row.seed,
                    label: row.label.to_string(),
                    tensor: tensor.into(),
                    points: points
                        .iter()
                        .filter(|r| r.tensor == tensor && r.layer == "all")
                        .map(|r| (r.value, r.fraction))
                        .collect(),
                });
            }
        }
        Ok(out)
    }

    /// The sweep's results, figures and report, from the files of every earlier job.
    fn write_report(
        &self,
        title: &str,
        provenance: &report::Provenance,
        attacks: &[AttackConfig],
        activation_images: usize,
    ) -> Result<String> {
        let plan = self.plan;
        let models = (0..plan.models.len())
            .map(|m| self.row(m))
            .collect::<Result<Vec<_>>>()?;
        let (mut cells, mut eps_steps, mut throughput) = (Vec::new(), Vec::new(), Vec::new());
        let (mut differential, mut unbounded) = (Vec::new(), Vec::new());
        for job in &plan.jobs {
            match &job.work {
                Work::Attack {
                    source,
                    config,
                    grad,
                    images,
                    set,
                    cells: files,
                    ..
                } => {
                    for file in files.iter().flatten() {
                        cells.push(read_json::<Cell>(file)?);
                    }
                    let spec = self.spec(*source);
                    let timing = set.as_deref().map(read_timing).unwrap_or_default();
                    throughput.push(Throughput {
                        seed: spec.seed,
                        attack: config.kind(),
                        gradient: self.gradient(*source, config, *grad)?,
                        budget: config.budget(),
                        source: spec.label.to_string(),
                        images: *images,
                        seconds: timing.seconds,
                        backend: timing.backend,
                        adapter: timing.adapter,
                    });
                }
                Work::EpsSteps { cell, .. } => eps_steps.push(read_json::<EpsStepsCell>(cell)?),
                Work::Differential { cell, .. } => {
                    differential.extend(read_json::<Vec<DifferentialCell>>(cell)?)
                }
                Work::Unbounded { cell, .. } => unbounded.push(read_json(cell)?),
                _ => {}
            }
        }
        let cdfs = self.cdfs(&models, activation_images)?;
        let backend = self.context.backend;
        let results = report::Results {
            title: title.into(),
            provenance: provenance.clone(),
            attacks: attacks.to_vec(),
            backend: backend.name.into(),
            adapter: backend.adapter.clone(),
            models,
            cells,
            eps_steps,
            cdfs,
            throughput,
            differential,
            unbounded,
        };
        let report = report::write(self.store.root(), &results)?;
        let what = format!(
            "{} models, {} cells -> {}",
            results.models.len(),
            results.cells.len(),
            report.display()
        );
        self.outcome.borrow_mut().report =
            Some((report, results.models.len(), results.cells.len()));
        Ok(what)
    }

    /// Every attack's throughput on `variant` at `batch_size`, and one iteration's time split.
    fn measure(
        &self,
        variant: &profile::Variant,
        batch_size: usize,
        attacks: &[AttackConfig],
        repeats: usize,
    ) -> Result<String> {
        let split = profile::time_split(
            variant,
            &self.context.test,
            batch_size,
            repeats,
            self.device(),
        );
        let mut what = Vec::new();
        for config in attacks {
            let t = profile::attack_throughput(
                variant,
                config,
                &self.context.test,
                batch_size,
                repeats,
                self.device(),
            )?;
            what.push(format!("{} {:.1} images/s", t.attack, t.images_per_second));
            self.outcome.borrow_mut().timings.push(t);
        }
        self.outcome.borrow_mut().splits.push(split);
        Ok(what.join(", "))
    }

    /// The transfer command's matrix: adversarial accuracy, rows source, columns target (the
    /// cells in memory come source by source, each over every target in order).
    fn write_matrix(&self, out: &Path) -> Result<String> {
        let outcome = self.outcome.borrow();
        let labels: Vec<&str> = self.plan.models.iter().map(|m| m.label.as_str()).collect();
        if outcome.cells.len() != labels.len() * labels.len() {
            return Err(Error::usage(format!(
                "the matrix needs {} cells, the attacks made {}",
                labels.len() * labels.len(),
                outcome.cells.len()
            )));
        }
        let mut csv = format!("source\\target,{}\n", labels.join(","));
        for (source, row) in labels.iter().zip(outcome.cells.chunks(labels.len())) {
            let mut line = vec![source.to_string()];
            line.extend(
                row.iter()
                    .map(|c| c.metrics.adversarial_accuracy.to_string()),
            );
            csv.push_str(&line.join(","));
            csv.push('\n');
        }
        crate::write_atomically(out, csv.as_bytes())?;
        Ok(format!("-> {}", out.display()))
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

impl Default for Timing {
    /// A set whose timing file is gone.
    fn default() -> Self {
        Timing {
            seconds: f64::NAN,
            backend: "unknown".into(),
            adapter: "unknown".into(),
        }
    }
}

/// Where a set's [`Timing`] is kept: beside the set, not in it, so the set's bytes depend
/// only on its inputs.
fn timing_path(set: &Path) -> PathBuf {
    let mut name = set.file_name().unwrap_or_default().to_os_string();
    name.push(".timing.json");
    set.with_file_name(name)
}

fn read_timing(set: &Path) -> Timing {
    if let Ok(timing) = read_json(&timing_path(set)) {
        return timing;
    }
    // A folder from before the timing file (`<set>.seconds.json` held the seconds alone).
    let mut old = set.file_name().unwrap_or_default().to_os_string();
    old.push(".seconds.json");
    Timing {
        seconds: read_json(&set.with_file_name(old)).unwrap_or(f64::NAN),
        ..Timing::default()
    }
}

fn read_json<T: serde::de::DeserializeOwned>(path: &Path) -> Result<T> {
    let bytes =
        crate::files::read_input(path, crate::limits::MAX_TEXT_BYTES as u64, 2, Error::data)?;
    serde_json::from_slice(&bytes).map_err(|e| Error::data(path, format!("not a result file: {e}")))
}
