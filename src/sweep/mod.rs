//! The whole study in one call: baseline -> every compressed model of the grid (fine-tuned)
//! -> adversarial sets per source model and attack -> every cell of the transfer matrix ->
//! Figure 3's eps/iteration grid and Figure 5's CDFs -> results, figures and report.
//!
//! Cached and resumable: each artefact's file name carries a hash of everything it depends on
//! (the baseline's training config or file, the compression config, the attack config, the
//! image count, the source and target), so a rerun reuses what exists and a killed run picks
//! up where it stopped. The report is always built from the files on disk, so an interrupted
//! and resumed sweep gives the same results as an uninterrupted one.

mod config;
mod store;

use std::path::{Path, PathBuf};
use std::time::Instant;

use serde::Serialize;

use crate::attack::{AttackConfig, AttackKind};
use crate::backend::Backend;
use crate::compress::{self, CompressConfig};
use crate::data::{DataChoice, DatasetKind, Images, Split};
use crate::kernels::{FixedPoint, QuantGrad};
use crate::model::{self, Classifier, KeyMap, ModelRef};
use crate::report::{self, CdfSeries, Cell, EpsStepsCell, Family, ModelRow, Throughput};
use crate::train::{self, TrainConfig};
use crate::transfer::{self, AdversarialSet};
use crate::{Error, Result, stable_hash};

pub use config::{PRESETS, SweepConfig};
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
}

/// What a finished sweep wrote.
#[derive(Clone, Debug, Serialize)]
pub struct SweepSummary {
    pub report: PathBuf,
    pub models: usize,
    pub cells: usize,
    pub seconds: f64,
}

/// A model of the sweep, loaded.
struct SweepModel {
    row: ModelRow,
    /// Hash of everything the model depends on.
    key: String,
    classifier: Classifier,
}

/// Rough cost of each kind of work in image passes (forward or backward of one image), so the
/// overall bar's ETA means something: a training step is ~3 passes, an attack step 2, a
/// DeepFool iteration 2 per candidate class (about 8 iterations on MNIST).
fn attack_cost(kind: AttackKind, steps: usize, classes: usize) -> u64 {
    match kind {
        AttackKind::DeepFool => (2 * classes * 8) as u64,
        AttackKind::Fgsm | AttackKind::Fgm => 2,
        _ => 2 * steps as u64,
    }
}

struct Plan<'a> {
    config: &'a SweepConfig,
    options: &'a SweepOptions<'a>,
    store: Store,
    model: ModelRef,
    /// The model's name in training configs (and so in cache keys): the built-in's name, or
    /// `onnx-<SHA-256 prefix>`, the same on every machine.
    model_name: String,
    /// The baseline's file: `--baseline`, or an ONNX model's own file.
    baseline: Option<PathBuf>,
    dataset: DatasetKind,
    test: Images,
    images: usize,
    grad: QuantGrad,
}

impl Plan<'_> {
    fn device(&self) -> &burn::tensor::Device {
        &self.options.backend.device
    }

    fn train_config(&self, training: &config::Training, seed: u64) -> TrainConfig {
        training.train_config(&self.model_name, self.dataset, seed)
    }

    fn train_images(&self, training: &config::Training) -> u64 {
        training.train_limit.unwrap_or(60_000) as u64
    }

    fn load(
        &self,
        path: &Path,
        label: &str,
        family: Family,
        seed: u64,
        key: String,
    ) -> Result<SweepModel> {
        let ckpt = model::load(
            path,
            Some(self.model.clone()),
            &KeyMap::default(),
            self.device(),
        )?;
        let clean_accuracy = match ckpt.meta.accuracy {
            Some(a) => a,
            None => train::evaluate(
                &ckpt.network,
                &ckpt.compression,
                &self.test,
                self.device(),
                500,
                self.config.evaluation_images,
            )?,
        };
        let record = ckpt.record();
        let mut classifier = ckpt.classifier();
        classifier.compression.grad = self.grad;
        Ok(SweepModel {
            row: ModelRow {
                seed,
                label: label.into(),
                family,
                density: record
                    .as_ref()
                    .and_then(|r| r.target_density)
                    .unwrap_or(1.0),
                bits: classifier.compression.weights.map(|f| f.bits),
                clean_accuracy,
                checkpoint: path.to_path_buf(),
            },
            key,
            classifier,
        })
    }

    /// The seed's baseline: the user's file, or trained (once; reused by config hash).
    fn baseline(&self, seed: u64) -> Result<SweepModel> {
        if let Some(path) = &self.baseline {
            let bytes = std::fs::read(path)
                .map_err(|e| Error::checkpoint(path, format!("cannot read: {e}")))?;
            let key = stable_hash([bytes.as_slice()]);
            self.store.overall.inc(self.cost_baseline());
            return self.load(path, "full", Family::Full, seed, key);
        }
        let config = self.train_config(&self.config.baseline, seed);
        let key = config.hash();
        let path = self
            .store
            .path("models", &format!("full-s{seed}-{key}.safetensors"));
        if path.exists() {
            self.store.log(&format!(
                "seed {seed}: baseline reused ({})",
                path.display()
            ));
        } else {
            let bar =
                self.store
                    .stage(config.epochs as u64, &format!("baseline s{seed}"), "epochs");
            self.store.log(&format!(
                "seed {seed}: training the baseline ({} epochs)",
                config.epochs
            ));
            if self.model.builtin().is_none() {
                return Err(Error::usage(
                    "an imported model is its own baseline; it is not trained",
                ));
            }
            let outcome = train::train_baseline(
                &self.model,
                &DataChoice::known(self.dataset, self.options.data_dir.clone()),
                &config,
                self.config.evaluation_images,
                self.device(),
                &path,
                false,
                |r| {
                    bar.inc(1);
                    self.store.log(&format!(
                        "seed {seed}: baseline epoch {}: loss {:.4}, test accuracy {:.2}%",
                        r.epoch,
                        r.train_loss,
                        100.0 * r.test_accuracy
                    ));
                },
            )?;
            bar.finish_and_clear();
            self.store.log(&format!(
                "seed {seed}: baseline {:.2}% in {:.0} s",
                100.0 * outcome.test_accuracy,
                outcome.seconds
            ));
        }
        self.store.overall.inc(self.cost_baseline());
        self.load(&path, "full", Family::Full, seed, key)
    }

    fn cost_baseline(&self) -> u64 {
        3 * self.config.baseline.epochs as u64 * self.train_images(&self.config.baseline)
    }

    fn cost_compress(&self) -> u64 {
        3 * self.config.finetune.epochs as u64 * self.train_images(&self.config.finetune)
    }

    /// The grid's compressed models: (label, family, config).
    fn grid(&self, seed: u64) -> Result<Vec<(String, Family, CompressConfig)>> {
        let base = CompressConfig {
            grad: self.grad,
            finetune: self.train_config(&self.config.finetune, seed),
            mask_interval: self.config.grid.mask_interval,
            ..CompressConfig::new(self.train_config(&self.config.finetune, seed))
        };
        let pruner = self.config.pruner()?;
        let mut out = Vec::new();
        for &density in &self.config.grid.densities {
            let config = CompressConfig {
                prune: Some((pruner, density)),
                ..base.clone()
            };
            out.push((format!("{pruner}{density}"), Family::Pruned, config));
        }
        for &bits in &self.config.grid.bits {
            let format = Some(FixedPoint::paper(bits)?);
            let config = CompressConfig {
                weights: format,
                activations: format,
                ..base.clone()
            };
            out.push((format!("q{bits}"), Family::Quantised, config));
        }
        Ok(out)
    }

    fn compressed(&self, base: &SweepModel, seed: u64) -> Result<Vec<SweepModel>> {
        let mut models = Vec::new();
        for (label, family, config) in self.grid(seed)? {
            let key = stable_hash([base.key.as_bytes(), config.hash().as_bytes()]);
            let path = self
                .store
                .path("models", &format!("{label}-s{seed}-{key}.safetensors"));
            if path.exists() {
                self.store.log(&format!("seed {seed}: {label} reused"));
            } else {
                let bar = self.store.stage(
                    config.finetune.epochs as u64,
                    &format!("{label} s{seed}"),
                    "epochs",
                );
                let outcome = compress::compress_checkpoint(
                    &base.row.checkpoint,
                    &DataChoice::known(self.dataset, self.options.data_dir.clone()),
                    &config,
                    self.config.evaluation_images,
                    self.device(),
                    &path,
                    |_| bar.inc(1),
                )?;
                bar.finish_and_clear();
                self.store.log(&format!(
                    "seed {seed}: {label}: {:.2}% (baseline {:.2}%) in {:.0} s",
                    100.0 * outcome.test_accuracy,
                    100.0 * outcome.base_accuracy,
                    outcome.seconds
                ));
            }
            self.store.overall.inc(self.cost_compress());
            models.push(self.load(&path, &label, family, seed, key)?);
        }
        Ok(models)
    }

    fn attack_config(&self, kind: AttackKind, eps: f32, steps: usize, seed: u64) -> AttackConfig {
        self.config.attack_config(kind, eps, steps, seed)
    }

    fn classes(&self) -> usize {
        self.config.attack.deepfool_candidates.unwrap_or(10)
    }

    /// Crafts (or loads) one adversarial set.
    fn set(
        &self,
        source: &SweepModel,
        config: &AttackConfig,
        path: Option<&Path>,
    ) -> Result<(AdversarialSet, bool)> {
        if let Some(path) = path.filter(|p| p.exists()) {
            let mut set = transfer::load(path, &self.test, self.images)?;
            set.seconds = read_seconds(path);
            return Ok((set, true));
        }
        let label = format!("{} {}", config.kind, source.row.label);
        let bar = self.store.add(transfer::image_bar(self.images, &label));
        let description =
            serde_json::json!({ "source": source.row.checkpoint, "attack": config }).to_string();
        let set = transfer::craft(
            &source.classifier,
            &self.test,
            self.images,
            self.config.attack.batch_size,
            config,
            self.device(),
            description,
            &bar,
        )?;
        bar.finish_and_clear();
        if let Some(path) = path {
            transfer::save(path, &set)?;
            write_json(&seconds_path(path), &set.seconds)?;
        }
        Ok((set, false))
    }

    /// Every cell of the matrix for one seed: per attack and source, the set (made once) on
    /// every target. Returns the cell files in matrix order.
    fn matrix(
        &self,
        models: &[SweepModel],
        seed: u64,
        throughput: &mut Vec<Throughput>,
    ) -> Result<Vec<PathBuf>> {
        let mut cell_files = Vec::new();
        for kind in self.config.attacks()? {
            let config =
                self.attack_config(kind, self.config.attack.eps, self.config.attack.steps, seed);
            for source in models {
                let set_key = transfer::set_key(source.key.as_bytes(), &config, self.images);
                let cells: Vec<(PathBuf, &SweepModel)> = models
                    .iter()
                    .map(|target| {
                        let key = stable_hash([set_key.as_bytes(), target.key.as_bytes(), b"cell"]);
                        (self.store.path("cells", &format!("{key}.json")), target)
                    })
                    .collect();
                cell_files.extend(cells.iter().map(|(p, _)| p.clone()));
                let set_path = self.store.path(
                    "sets",
                    &format!("{kind}-{}-s{seed}-{set_key}.safetensors", source.row.label),
                );
                let cost = self.images as u64
                    * (attack_cost(kind, config.steps, self.classes()) + 2 * models.len() as u64);
                if cells.iter().all(|(p, _)| p.exists()) && set_path.exists() {
                    throughput.push(Throughput {
                        seed,
                        attack: kind.to_string(),
                        source: source.row.label.clone(),
                        images: self.images,
                        seconds: read_seconds(&set_path),
                        cached: true,
                    });
                    self.store.overall.inc(cost);
                    continue;
                }
                let (set, cached) = self.set(source, &config, Some(&set_path))?;
                self.store.log(&format!(
                    "seed {seed}: {kind} on {}: {} images, {:.1} images/s{}",
                    source.row.label,
                    set.len(),
                    set.images_per_second(),
                    if cached { " (cached set)" } else { "" }
                ));
                throughput.push(self.throughput(seed, kind, source, &set, cached));
                for (path, target) in cells.iter().filter(|(p, _)| !p.exists()) {
                    let metrics = transfer::evaluate(
                        &target.classifier,
                        &set,
                        &self.test,
                        self.config.attack.batch_size,
                        self.device(),
                    )?;
                    let cell = Cell {
                        seed,
                        attack: kind.to_string(),
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
                self.store.overall.inc(cost);
            }
        }
        Ok(cell_files)
    }

    fn throughput(
        &self,
        seed: u64,
        kind: AttackKind,
        source: &SweepModel,
        set: &AdversarialSet,
        cached: bool,
    ) -> Throughput {
        Throughput {
            seed,
            attack: kind.to_string(),
            source: source.row.label.clone(),
            images: set.len(),
            seconds: set.seconds,
            cached,
        }
    }

    /// Figure 3's cells: the baseline attacked by itself at every (attack, eps, steps).
    fn eps_steps(&self, base: &SweepModel, seed: u64) -> Result<Vec<PathBuf>> {
        let mut files = Vec::new();
        let f3 = &self.config.figure3;
        let total = f3.attacks.len() * f3.eps.len() * f3.steps.len();
        let bar = self
            .store
            .stage(total as u64, &format!("figure 3 s{seed}"), "runs");
        for kind in self.config.figure3_attacks()? {
            for &eps in &f3.eps {
                for &steps in &f3.steps {
                    let config = self.attack_config(kind, eps, steps, seed);
                    let json = serde_json::to_string(&config).expect("config serialises");
                    let key = stable_hash([
                        base.key.as_bytes(),
                        json.as_bytes(),
                        &self.images.to_le_bytes(),
                        b"eps-steps",
                    ]);
                    let path = self.store.path("cells", &format!("eps-steps-{key}.json"));
                    if !path.exists() {
                        let (set, _) = self.set(base, &config, None)?;
                        let metrics = transfer::evaluate(
                            &base.classifier,
                            &set,
                            &self.test,
                            self.config.attack.batch_size,
                            self.device(),
                        )?;
                        let cell = EpsStepsCell {
                            seed,
                            attack: kind.to_string(),
                            eps,
                            steps,
                            metrics,
                        };
                        write_json(&path, &cell)?;
                    }
                    bar.inc(1);
                    self.store
                        .overall
                        .inc(self.images as u64 * 2 * steps as u64);
                    files.push(path);
                }
            }
        }
        bar.finish_and_clear();
        Ok(files)
    }

    /// Figure 5's CDFs of all weights and all activations of the baseline and each quantised
    /// model (computed from the checkpoints, so they are the same on every run).
    fn cdfs(&self, models: &[SweepModel], seed: u64) -> Vec<CdfSeries> {
        let n = self.config.figure5.activation_images.min(self.test.len());
        let indices: Vec<usize> = (0..n).collect();
        let mut out = Vec::new();
        for m in models.iter().filter(|m| m.row.family != Family::Pruned) {
            let (images, _) = self.test.batch(&indices, self.device());
            let rows = compress::cdf_rows(
                &m.classifier.network,
                &m.classifier.compression,
                Some(images),
            );
            for tensor in ["weight", "activation"] {
                out.push(CdfSeries {
                    seed,
                    label: m.row.label.clone(),
                    tensor: tensor.into(),
                    points: rows
                        .iter()
                        .filter(|r| r.tensor == tensor && r.layer == "all")
                        .map(|r| (r.value, r.fraction))
                        .collect(),
                });
            }
        }
        out
    }
}

fn write_json(path: &Path, value: &impl Serialize) -> Result<()> {
    let text = serde_json::to_string(value).expect("result serialises");
    crate::write_atomically(path, text.as_bytes())
}

/// Where the seconds an adversarial set took are kept: beside the set, not in it, so the set's
/// bytes depend only on its inputs.
fn seconds_path(set: &Path) -> PathBuf {
    let mut name = set.file_name().unwrap_or_default().to_os_string();
    name.push(".seconds.json");
    set.with_file_name(name)
}

/// The seconds a stored set took (NaN when its timing file is missing).
fn read_seconds(set: &Path) -> f64 {
    read_json(&seconds_path(set)).unwrap_or(f64::NAN)
}

fn read_json<T: serde::de::DeserializeOwned>(path: &Path) -> Result<T> {
    let text = std::fs::read_to_string(path).map_err(|e| Error::io(path, e))?;
    serde_json::from_str(&text).map_err(|e| Error::data(path, format!("not a result file: {e}")))
}

/// Runs (or resumes) the sweep and writes its results, figures and report into `options.out`.
pub fn run(options: &SweepOptions) -> Result<SweepSummary> {
    let start = Instant::now();
    let config = &options.config;
    config.validate()?;
    let kind = config.model_ref()?;
    // The model as given (a built-in one freshly made): what the dataset must fit.
    let network = kind.load(&options.backend.device)?;
    let choice = DataChoice {
        dataset: config.dataset.as_deref().map(str::parse).transpose()?,
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
    if let Some(path) = &baseline
        && !path.is_file()
    {
        return Err(Error::checkpoint(path, "no such baseline checkpoint"));
    }
    // Everything that can be refused is refused before the output folder is touched.
    let test = network.images(&dataset, Split::Test)?;
    let dataset = dataset
        .kind()
        .expect("a sweep reads a dataset advcomp knows");
    let inputs: Vec<&Path> = baseline.iter().map(PathBuf::as_path).collect();
    crate::files::check_output_dir("--out", &options.out, &inputs)?;
    let store = Store::open(&options.out)?;
    let images = config.attack.images.min(test.len());
    let plan = Plan {
        config,
        options,
        store,
        model: kind.clone(),
        model_name,
        baseline: baseline.clone(),
        dataset,
        images,
        grad: config.attack.grad.parse()?,
        test,
    };
    // The ETA's work units, in f64: a huge (but valid) grid saturates instead of overflowing.
    let models_per_seed = 1 + config.grid.densities.len() + config.grid.bits.len();
    let (models_f, images_f) = (models_per_seed as f64, images as f64);
    let per_seed: f64 = plan.cost_baseline() as f64
        + (models_f - 1.0) * plan.cost_compress() as f64
        + config
            .attacks()?
            .iter()
            .map(|k| {
                models_f
                    * images_f
                    * (attack_cost(*k, config.attack.steps, plan.classes()) as f64 + 2.0 * models_f)
            })
            .sum::<f64>()
        + (config.figure3.attacks.len() * config.figure3.eps.len()) as f64
            * config
                .figure3
                .steps
                .iter()
                .map(|s| 2.0 * *s as f64 * images_f)
                .sum::<f64>();
    plan.store
        .overall
        .set_length((per_seed * config.seeds as f64) as u64);
    plan.store.log(&format!(
        "sweep: {kind} on {dataset}, {} seed(s), {models_per_seed} models per seed, {images} attacked images, backend {}, output {}",
        config.seeds,
        options.backend,
        options.out.display()
    ));

    let mut models = Vec::new();
    let mut cell_files = Vec::new();
    let mut eps_files = Vec::new();
    let mut cdfs = Vec::new();
    let mut throughput = Vec::new();
    for seed in 1..=config.seeds {
        let base = plan.baseline(seed)?;
        let mut seed_models = vec![base];
        seed_models.extend(plan.compressed(&seed_models[0], seed)?);
        cell_files.extend(plan.matrix(&seed_models, seed, &mut throughput)?);
        eps_files.extend(plan.eps_steps(&seed_models[0], seed)?);
        if seed == 1 {
            cdfs = plan.cdfs(&seed_models, seed);
        }
        models.extend(seed_models.into_iter().map(|m| m.row));
    }
    plan.store.overall.finish_and_clear();

    let results = report::Results {
        title: match network.model_sha256() {
            Some(sha) => format!("advcomp sweep: {kind} (SHA-256 {sha}) on {dataset}"),
            None => format!("advcomp sweep: {kind} on {dataset}"),
        },
        config: serde_json::to_value(config).expect("config serialises"),
        backend: options.backend.name.into(),
        adapter: options.backend.adapter.clone(),
        models,
        cells: cell_files
            .iter()
            .map(|p| read_json(p))
            .collect::<Result<_>>()?,
        eps_steps: eps_files
            .iter()
            .map(|p| read_json(p))
            .collect::<Result<_>>()?,
        cdfs,
        throughput,
    };
    let report = report::write(plan.store.root(), &results)?;
    plan.store.log(&format!(
        "done: {} models, {} cells in {:.0} s -> {}",
        results.models.len(),
        results.cells.len(),
        start.elapsed().as_secs_f64(),
        report.display()
    ));
    Ok(SweepSummary {
        report,
        models: results.models.len(),
        cells: results.cells.len(),
        seconds: start.elapsed().as_secs_f64(),
    })
}
