//! The sweep as a plan of typed jobs: what each job makes, from which files, at what cost.
//!
//! Expanding a config into its plan trains nothing and reads no model: every key is a hash of
//! configs (and of a user's baseline file), so the same config gives the same plan, with the
//! same file names, on every machine and in every process. That is what lets shards of one
//! stage run as separate processes (or Slurm array tasks) on a shared output folder.

use std::fmt;
use std::path::PathBuf;
use std::str::FromStr;

use crate::attack::{AttackConfig, AttackKind};
use crate::compress::CompressConfig;
use crate::data::DatasetKind;
use crate::kernels::QuantGrad;
use crate::model::{ModelIdentity, ModelLabel};
use crate::report::{self, Family};
use crate::train::{TrainConfig, TrainSettings};
use crate::transfer;
use crate::{Error, Result, stable_hash};

use super::SweepConfig;
use super::jobs::{self, Work};
use super::store::Folder;

/// The stages of a sweep, in order: a stage's jobs read only files that earlier stages write,
/// so the jobs of one stage can run in any order, in any number of processes.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Stage {
    /// Train each seed's baseline (nothing to do for a given baseline file or ONNX model).
    Baseline,
    /// Prune or quantise the baseline and fine-tune: one job per compressed model.
    Compress,
    /// One job per (attack, source model): craft the set, evaluate it on every model; and one
    /// per Figure 3 point (attack, eps, steps) on the baseline.
    Attack,
    /// Read every result file; write the tables, figures and report.
    Report,
}

impl Stage {
    pub const ALL: [Stage; 4] = [
        Stage::Baseline,
        Stage::Compress,
        Stage::Attack,
        Stage::Report,
    ];

    pub fn name(self) -> &'static str {
        match self {
            Stage::Baseline => "baseline",
            Stage::Compress => "compress",
            Stage::Attack => "attack",
            Stage::Report => "report",
        }
    }
}

impl fmt::Display for Stage {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

impl FromStr for Stage {
    type Err = Error;
    fn from_str(text: &str) -> Result<Self> {
        Stage::ALL
            .into_iter()
            .find(|s| s.name() == text)
            .ok_or_else(|| {
                Error::usage(format!(
                    "unknown stage '{text}' (expected {})",
                    Stage::ALL.map(Stage::name).join(", ")
                ))
            })
    }
}

/// Shard `index` of `count`: the share of each stage's jobs one process runs.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Shard {
    pub index: usize,
    pub count: usize,
}

impl Shard {
    pub const WHOLE: Shard = Shard { index: 0, count: 1 };

    /// Whether the job at `rank` (its place among its stage's jobs sorted by key) is ours.
    /// Ranking by key spreads a stage's jobs evenly over the shards and depends on nothing
    /// but the plan, so every process agrees on who runs what.
    fn owns(self, rank: usize) -> bool {
        rank % self.count == self.index
    }
}

impl fmt::Display for Shard {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.index, self.count)
    }
}

impl FromStr for Shard {
    type Err = Error;
    /// `I/N` with 0 <= I < N (Slurm's `$SLURM_ARRAY_TASK_ID/$SLURM_ARRAY_TASK_COUNT`, or
    /// Kubernetes' `$JOB_COMPLETION_INDEX/<completions>`).
    fn from_str(text: &str) -> Result<Self> {
        let bad = || Error::usage(format!("shard '{text}': expected I/N with 0 <= I < N"));
        let (i, n) = text.split_once('/').ok_or_else(bad)?;
        let (index, count): (usize, usize) = (
            i.trim().parse().map_err(|_| bad())?,
            n.trim().parse().map_err(|_| bad())?,
        );
        if index >= count || count > crate::limits::MAX_SHARDS {
            return Err(bad());
        }
        Ok(Shard { index, count })
    }
}

/// A model of the sweep: made by a job of the plan, or a file the user gave.
pub(super) struct ModelSpec {
    pub seed: u64,
    pub label: ModelLabel,
    /// What the model is (`None`: read from its checkpoint's compression when loaded).
    pub family: Option<Family>,
    /// Hash of everything the model depends on.
    pub key: String,
    pub path: PathBuf,
}

pub(super) struct Job {
    /// Content address: a hash of everything the job's outputs depend on.
    pub key: String,
    pub stage: Stage,
    /// What it does.
    pub work: Box<dyn Work>,
    /// Rough cost in image passes (a forward or backward pass of one image), for the ETA.
    pub cost: f64,
    /// Files the job reads, written by earlier stages (or given by the user).
    pub needs: Vec<PathBuf>,
    /// Files the job writes; it is done when all exist. Empty: always run (the report).
    pub writes: Vec<PathBuf>,
    /// What the log calls it.
    pub name: String,
}

impl Job {
    pub fn is_done(&self) -> bool {
        !self.writes.is_empty() && self.writes.iter().all(|p| p.exists())
    }
}

/// A sweep's models and jobs, in an order that runs every job after the jobs it needs.
pub(super) struct Plan {
    pub models: Vec<ModelSpec>,
    pub jobs: Vec<Job>,
}

/// What a plan is expanded from besides the config.
pub(super) struct PlanInputs<'a> {
    pub config: &'a SweepConfig,
    pub root: &'a std::path::Path,
    /// The model's name in training configs (and so in keys): the built-in's name, or
    /// `onnx-<SHA-256 prefix>`.
    pub model: &'a ModelIdentity,
    /// A baseline file (`--baseline`, or an ONNX model's own file) and the hash of its bytes.
    pub baseline: Option<(PathBuf, String)>,
    /// A quantised (QDQ) ONNX file, its key and label: the one compressed model, in place of
    /// the grid's.
    pub quantised: Option<(PathBuf, String, ModelLabel)>,
    pub dataset: DatasetKind,
    /// Attacked test images per source model.
    pub images: usize,
    /// Test images there are (`auto` may attack a different number).
    pub images_available: usize,
    /// The model's class count.
    pub classes: usize,
    /// The report's title.
    pub title: String,
    /// The report's header.
    pub provenance: report::Provenance,
}

impl PlanInputs<'_> {
    fn path(&self, folder: Folder, name: String) -> PathBuf {
        self.root.join(folder.name()).join(name)
    }

    fn train_config(&self, training: &TrainSettings, seed: u64) -> TrainConfig {
        training.config(self.model.clone(), self.dataset, seed)
    }

    /// Image passes of a training run: forward and backward, about 3 passes an image.
    fn train_cost(&self, training: &TrainSettings) -> f64 {
        3.0 * training.epochs as f64 * training.train_limit.unwrap_or(60_000) as f64
    }

    /// The compressed models of one seed: (label, family, config).
    fn grid(&self, seed: u64) -> Result<Vec<(ModelLabel, Family, CompressConfig)>> {
        let config = self.config;
        if self.quantised.is_some() {
            return Ok(Vec::new());
        }
        let base = config
            .finetune
            .config(self.model.clone(), self.dataset, seed);
        let mut out = Vec::new();
        for &density in &config.grid.densities {
            let config = CompressConfig {
                prune: Some(config.grid.pruner_at(density)),
                ..base.clone()
            };
            out.push((config.label(), Family::Pruned, config));
        }
        for quant in config.grid.all_quantisers()? {
            let config = CompressConfig {
                quant: Some(quant),
                ..base.clone()
            };
            out.push((config.label(), Family::Quantised, config));
        }
        Ok(out)
    }

    pub fn expand(&self) -> Result<Plan> {
        let config = self.config;
        let classes = self.classes;
        let mut plan = Plan {
            models: Vec::new(),
            jobs: Vec::new(),
        };
        let mut report_needs = Vec::new();
        for seed in 1..=config.seeds {
            // The baseline: the user's file, or trained (its key is its training config).
            let base = plan.models.len();
            match &self.baseline {
                Some((path, key)) => plan.models.push(ModelSpec {
                    seed,
                    label: ModelLabel::full(),
                    family: Some(Family::Full),
                    key: key.clone(),
                    path: path.clone(),
                }),
                None => {
                    let train = self.train_config(&config.baseline, seed);
                    let key = train.hash();
                    let path = self.path(
                        Folder::Models,
                        format!("{}-s{seed}-{key}.safetensors", ModelLabel::FULL),
                    );
                    plan.models.push(ModelSpec {
                        seed,
                        label: ModelLabel::full(),
                        family: Some(Family::Full),
                        key: key.clone(),
                        path: path.clone(),
                    });
                    plan.jobs.push(Job {
                        key,
                        stage: Stage::Baseline,
                        work: Box::new(jobs::Train {
                            model: base,
                            config: train,
                        }),
                        cost: self.train_cost(&config.baseline),
                        needs: Vec::new(),
                        writes: vec![path],
                        name: format!("seed {seed}: baseline"),
                    });
                }
            }
            let base_key = plan.models[base].key.clone();
            let base_path = plan.models[base].path.clone();
            let mut figure3_densities = std::collections::BTreeMap::new();
            for (label, family, compress) in self.grid(seed)? {
                if let Some(pruner) = &compress.prune {
                    figure3_densities.insert(label.clone(), pruner.density());
                }
                let key = stable_hash([base_key.as_bytes(), compress.hash().as_bytes()]);
                let path = self.path(Folder::Models, format!("{label}-s{seed}-{key}.safetensors"));
                let model = plan.models.len();
                plan.models.push(ModelSpec {
                    seed,
                    label: label.clone(),
                    family: Some(family),
                    key: key.clone(),
                    path: path.clone(),
                });
                plan.jobs.push(Job {
                    key,
                    stage: Stage::Compress,
                    work: Box::new(jobs::Compress {
                        model,
                        base,
                        config: compress,
                    }),
                    cost: self.train_cost(&config.finetune.train),
                    needs: vec![base_path.clone()],
                    writes: vec![path],
                    name: format!("seed {seed}: {label}"),
                });
            }
            if let Some((path, key, label)) = &self.quantised {
                plan.models.push(ModelSpec {
                    seed,
                    label: label.clone(),
                    family: Some(Family::Quantised),
                    key: key.clone(),
                    path: path.clone(),
                });
            }
            let seed_models: Vec<usize> = (base..plan.models.len()).collect();
            let model_files: Vec<PathBuf> = seed_models
                .iter()
                .map(|&m| plan.models[m].path.clone())
                .collect();
            report_needs.extend(model_files.iter().cloned());

            // The transfer matrix: per attack, source and gradient estimator, one set made
            // once, on every target; then `auto` at each budget, and the unbounded checks.
            let mut matrix = Vec::new();
            for &kind in &config.attack.names {
                matrix.push((config.matrix_attack(kind, seed)?, self.images));
            }
            if config.robustness.enabled {
                let images = config.robustness_images().min(self.images_available);
                for &budget in &config.robustness.budgets {
                    matrix.push((config.robustness_attack(budget, seed)?, images));
                }
            }
            for (attack, images) in matrix {
                for &source in &seed_models {
                    for grad in self.estimators(&plan.models[source], &attack) {
                        let job = self.attack_job(
                            &plan.models,
                            source,
                            &seed_models,
                            &model_files,
                            attack.clone(),
                            grad,
                            images,
                        );
                        report_needs.extend(job.writes.iter().cloned());
                        plan.jobs.push(job);
                    }
                }
            }
            if config.robustness.enabled {
                let images = config.robustness_images().min(self.images_available);
                let check = crate::transfer::indicators::unbounded_attack();
                for &model in &seed_models {
                    let spec = &plan.models[model];
                    for grad in self.estimators(spec, &check) {
                        let key = stable_hash([
                            spec.key.as_bytes(),
                            grad.to_string().as_bytes(),
                            &images.to_le_bytes(),
                            b"unbounded",
                        ]);
                        let cell = self.path(Folder::Cells, format!("unbounded-{key}.json"));
                        report_needs.push(cell.clone());
                        plan.jobs.push(Job {
                            key,
                            stage: Stage::Attack,
                            name: format!(
                                "seed {seed}: unbounded check of {} ({grad})",
                                spec.label
                            ),
                            cost: images as f64 * (check.passes_per_image(classes) + 2.0),
                            work: Box::new(jobs::Unbounded {
                                model,
                                grad,
                                images,
                                cell: cell.clone(),
                            }),
                            needs: vec![spec.path.clone()],
                            writes: vec![cell],
                        });
                    }
                }
            }

            // Figure 3: the baseline and the chosen pruned models, each attacked by itself at
            // every (attack, eps, steps). The baseline's keys are those of the sweeps before
            // pruned sources were added, so their cells are reused.
            let figure3_sources = seed_models.iter().copied().filter(|&m| {
                let spec = &plan.models[m];
                m == base
                    || (spec.family == Some(Family::Pruned)
                        && figure3_densities
                            .get(&spec.label)
                            .is_some_and(|d| config.figure3.includes(*d)))
            });
            for source in figure3_sources.collect::<Vec<_>>() {
                let spec = &plan.models[source];
                let (source_key, source_path) = (spec.key.clone(), spec.path.clone());
                let label = spec.label.clone();
                for &kind in &config.figure3.attacks {
                    for &eps in &config.figure3.eps {
                        for &steps in &config.figure3.steps {
                            let attack =
                                config.attack_config(kind, Some(eps), Some(steps), seed)?;
                            let json = serde_json::to_string(&attack).expect("config serialises");
                            let key = stable_hash([
                                source_key.as_bytes(),
                                json.as_bytes(),
                                &self.images.to_le_bytes(),
                                b"eps-steps",
                            ]);
                            let cell = self.path(Folder::Cells, format!("eps-steps-{key}.json"));
                            report_needs.push(cell.clone());
                            plan.jobs.push(Job {
                                key,
                                stage: Stage::Attack,
                                name: format!(
                                    "seed {seed}: figure 3, {kind} on {label}, eps {eps} x {steps}"
                                ),
                                cost: self.images as f64 * (attack.passes_per_image(classes) + 2.0),
                                work: Box::new(jobs::EpsSteps {
                                    model: source,
                                    config: attack,
                                    images: self.images,
                                    cell: cell.clone(),
                                }),
                                needs: vec![source_path.clone()],
                                writes: vec![cell],
                            });
                        }
                    }
                }
            }
            if config.differential.enabled {
                self.differential(&mut plan, &seed_models, &mut report_needs, seed)?;
            }
        }
        let report_cost = (plan.models.len() * config.figure5.activation_images) as f64;
        plan.jobs.push(Job {
            key: stable_hash(
                report_needs
                    .iter()
                    .map(|p| p.as_os_str().as_encoded_bytes()),
            ),
            stage: Stage::Report,
            work: Box::new(jobs::Report {
                title: self.title.clone(),
                provenance: self.provenance.clone(),
                attacks: self.attacks()?,
                evaluation_images: config.evaluation_images,
                activation_images: config.figure5.activation_images,
            }),
            cost: report_cost,
            needs: report_needs,
            writes: Vec::new(),
            name: "results, figures and report".into(),
        });
        Ok(plan)
    }
}

impl PlanInputs<'_> {
    /// DIVA and PGD (same step, steps and budget) on every compressed model of a seed against
    /// its baseline (the seed's first model).
    fn differential(
        &self,
        plan: &mut Plan,
        seed_models: &[usize],
        report_needs: &mut Vec<PathBuf>,
        seed: u64,
    ) -> Result<()> {
        let attacks = self.config.differential_attacks(seed)?;
        let json = serde_json::to_string(&attacks).expect("configs serialise");
        let base = seed_models[0];
        for &m in &seed_models[1..] {
            let (spec, reference) = (&plan.models[m], &plan.models[base]);
            let key = stable_hash([
                spec.key.as_bytes(),
                reference.key.as_bytes(),
                json.as_bytes(),
                &self.images.to_le_bytes(),
                b"differential",
            ]);
            let cell = self.path(Folder::Cells, format!("differential-{key}.json"));
            report_needs.push(cell.clone());
            let passes: f64 = attacks
                .iter()
                .map(|a| a.passes_per_image(self.classes) + 4.0)
                .sum();
            plan.jobs.push(Job {
                key,
                stage: Stage::Attack,
                name: format!(
                    "seed {seed}: diva, diva-margin and pgd on {} (against full)",
                    spec.label
                ),
                cost: self.images as f64 * passes,
                needs: vec![spec.path.clone(), reference.path.clone()],
                writes: vec![cell.clone()],
                work: Box::new(jobs::Differential {
                    compressed: m,
                    reference: base,
                    attacks: attacks.clone(),
                    images: self.images,
                    cell,
                }),
            });
        }
        Ok(())
    }

    /// The gradient estimators `attack` runs through on `model`: each of the sweep's on a
    /// quantised model, for a gradient attack that follows one; else one (the model's gradient
    /// is exact, the attack runs every estimator itself, or it uses none).
    fn estimators(&self, model: &ModelSpec, attack: &AttackConfig) -> Vec<QuantGrad> {
        let kind = attack.kind();
        let one_at_a_time = kind.uses_gradients() && !kind.uses_all_estimators();
        match (model.family, one_at_a_time) {
            (Some(Family::Quantised), true) => self.config.attack.gradients.clone(),
            _ => vec![self.config.attack.gradients[0]],
        }
    }

    /// One set of the matrix: `attack` on `source` through `grad`, evaluated on `targets`.
    #[allow(clippy::too_many_arguments)]
    fn attack_job(
        &self,
        models: &[ModelSpec],
        source: usize,
        targets: &[usize],
        model_files: &[PathBuf],
        attack: AttackConfig,
        grad: QuantGrad,
        images: usize,
    ) -> Job {
        let spec = &models[source];
        let kind = attack.kind();
        let set_key = transfer::set_key(spec.key.as_bytes(), &attack, grad, images);
        let cells: Vec<PathBuf> = targets
            .iter()
            .map(|&t| {
                let target = models[t].key.as_bytes();
                let key = stable_hash([set_key.as_bytes(), target, b"cell"]);
                self.path(Folder::Cells, format!("{key}.json"))
            })
            .collect();
        // The name says what differs between the sets of one source: the estimator, the
        // budget of an attack the sweep runs at several.
        let mut what = kind.to_string();
        if kind == AttackKind::Auto
            && let Some(b) = attack.budget()
        {
            what.push_str(&format!("-{b}"));
        }
        if grad == QuantGrad::Identity {
            what.push_str("-bpda");
        }
        let set = self.path(
            Folder::Sets,
            format!("{what}-{}-s{}-{set_key}.safetensors", spec.label, spec.seed),
        );
        let mut writes = cells.clone();
        writes.push(set.clone());
        Job {
            key: set_key,
            stage: Stage::Attack,
            name: format!("seed {}: {what} on {}", spec.seed, spec.label),
            cost: images as f64
                * (attack.passes_per_image(self.classes) + 2.0 * targets.len() as f64),
            work: Box::new(jobs::Attack {
                source,
                targets: targets.to_vec(),
                config: attack,
                grad,
                images,
                set: Some(set),
                cells: Some(cells),
            }),
            needs: model_files.to_vec(),
            writes,
        }
    }

    /// Every attack the sweep runs, with the first seed's settings (for the report).
    fn attacks(&self) -> Result<Vec<AttackConfig>> {
        let config = self.config;
        let mut out = Vec::new();
        for &kind in &config.attack.names {
            out.push(config.matrix_attack(kind, 1)?);
        }
        if config.robustness.enabled {
            for &budget in &config.robustness.budgets {
                out.push(config.robustness_attack(budget, 1)?);
            }
        }
        if config.differential.enabled {
            out.extend(config.differential_attacks(1)?);
        }
        Ok(out)
    }
}

impl Plan {
    /// The jobs `shard` runs of `stage` (all stages when `None`), in plan order.
    pub fn select(&self, stage: Option<Stage>, shard: Shard) -> Vec<usize> {
        let mut chosen = Vec::new();
        for s in Stage::ALL
            .into_iter()
            .filter(|s| stage.is_none_or(|x| x == *s))
        {
            let mut of_stage: Vec<usize> = (0..self.jobs.len())
                .filter(|&j| self.jobs[j].stage == s)
                .collect();
            let mut by_key = of_stage.clone();
            by_key.sort_by(|&a, &b| self.jobs[a].key.cmp(&self.jobs[b].key).then(a.cmp(&b)));
            let rank: std::collections::HashMap<usize, usize> =
                by_key.iter().enumerate().map(|(r, &j)| (j, r)).collect();
            of_stage.retain(|j| shard.owns(rank[j]));
            chosen.extend(of_stage);
        }
        chosen
    }

    /// Jobs in `stage`.
    pub fn count(&self, stage: Stage) -> usize {
        self.jobs.iter().filter(|j| j.stage == stage).count()
    }
}
