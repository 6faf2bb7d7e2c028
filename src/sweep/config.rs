//! What a sweep runs: the TOML presets in `assets/presets/` (embedded in the binary) or a
//! user's file of the same shape. Every field has DESIGN.md's default, so a file names only
//! what it changes; an unknown field is refused by name.

use std::path::Path;

use serde::{Deserialize, Serialize};

use crate::attack::AttackKind;
use crate::compress::Pruner;
use crate::data::DatasetKind;
use crate::kernels::FixedPoint;
use crate::model::ModelKind;
use crate::train::{Optimizer, Schedule, TrainConfig};
use crate::{Error, Result};

/// The presets shipped in `assets/presets/`, by name.
pub const PRESETS: [(&str, &str); 2] = [
    ("quick", include_str!("../../assets/presets/quick.toml")),
    ("paper", include_str!("../../assets/presets/paper.toml")),
];

/// One training run of the sweep (the baseline, or the fine-tuning of each compressed model).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Training {
    pub epochs: usize,
    pub batch_size: usize,
    pub learning_rate: f64,
    /// Train on the first N training images only.
    pub train_limit: Option<usize>,
}

impl Training {
    /// The training run this stands for (Adam, cosine decay, as DESIGN.md fixes).
    pub fn train_config(&self, model: ModelKind, dataset: DatasetKind, seed: u64) -> TrainConfig {
        TrainConfig {
            epochs: self.epochs,
            batch_size: self.batch_size,
            learning_rate: self.learning_rate,
            optimizer: Optimizer::Adam,
            schedule: Schedule::Cosine,
            seed,
            train_limit: self.train_limit,
            ..TrainConfig::new(model, dataset.name())
        }
    }

    fn with_epochs(epochs: usize) -> Self {
        Self {
            epochs,
            batch_size: 128,
            learning_rate: 1e-3,
            train_limit: None,
        }
    }
}

impl Default for Training {
    fn default() -> Self {
        Self::with_epochs(6)
    }
}

/// The compressed models: one per density (pruned) and one per bitwidth (weights and
/// activations quantised with the paper's P rule).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Grid {
    pub pruner: String,
    pub densities: Vec<f64>,
    pub bits: Vec<u32>,
    /// DNS: fine-tuning steps between mask updates (short fine-tuning needs short intervals).
    pub mask_interval: usize,
}

impl Default for Grid {
    fn default() -> Self {
        Self {
            pruner: "dns".into(),
            densities: vec![1.0, 0.8, 0.6, 0.4, 0.3, 0.2, 0.1, 0.05],
            bits: vec![32, 24, 16, 12, 10, 8, 6, 4],
            mask_interval: 50,
        }
    }
}

/// The attacks of the transfer matrix.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Attacks {
    pub names: Vec<String>,
    /// Attacked test images per source model (the first N of the test split).
    pub images: usize,
    pub batch_size: usize,
    pub eps: f32,
    pub steps: usize,
    /// Gradient through the quantisers: ste or identity (BPDA).
    pub grad: String,
    /// DeepFool: only the k classes with the highest clean logits (all when absent).
    pub deepfool_candidates: Option<usize>,
}

impl Default for Attacks {
    fn default() -> Self {
        Self {
            names: vec!["ifgsm".into(), "ifgm".into(), "deepfool".into()],
            images: 10_000,
            batch_size: 256,
            eps: 0.02,
            steps: 12,
            grad: "ste".into(),
            deepfool_candidates: None,
        }
    }
}

/// Figure 3: the baseline attacked by itself at each eps and each number of iterations.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Figure3 {
    pub attacks: Vec<String>,
    pub eps: Vec<f32>,
    pub steps: Vec<usize>,
}

impl Default for Figure3 {
    fn default() -> Self {
        Self {
            attacks: vec!["ifgm".into(), "ifgsm".into()],
            eps: vec![0.002, 0.005, 0.01, 0.02, 0.03, 0.04],
            steps: vec![1, 3, 6, 12, 24],
        }
    }
}

/// Figure 5: activations recorded on this many test images.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Figure5 {
    pub activation_images: usize,
}

impl Default for Figure5 {
    fn default() -> Self {
        Self {
            activation_images: 10,
        }
    }
}

fn positive(x: f64) -> bool {
    x > 0.0 && x.is_finite()
}

/// A whole sweep.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct SweepConfig {
    pub model: String,
    /// The model's own dataset when absent.
    pub dataset: Option<String>,
    /// Seeds 1..=N: each seed trains its own baseline, fine-tunes its own compressed models
    /// and seeds its attacks; curves then show the mean and a 95% interval across seeds.
    pub seeds: u64,
    /// Clean accuracy (BASE ACC) on the first N test images (all when absent).
    pub evaluation_images: Option<usize>,
    pub baseline: Training,
    pub finetune: Training,
    pub grid: Grid,
    pub attack: Attacks,
    pub figure3: Figure3,
    pub figure5: Figure5,
}

impl Default for SweepConfig {
    fn default() -> Self {
        Self {
            model: "lenet5".into(),
            dataset: None,
            seeds: 1,
            evaluation_images: None,
            baseline: Training::default(),
            finetune: Training::with_epochs(3),
            grid: Grid::default(),
            attack: Attacks::default(),
            figure3: Figure3::default(),
            figure5: Figure5::default(),
        }
    }
}

impl SweepConfig {
    /// A shipped preset by name (`quick`, `paper`).
    pub fn preset(name: &str) -> Result<Self> {
        let (_, text) = PRESETS.iter().find(|(n, _)| *n == name).ok_or_else(|| {
            Error::usage(format!(
                "unknown preset '{name}' (expected {})",
                PRESETS.map(|(n, _)| n).join(" or ")
            ))
        })?;
        Self::parse(text, &format!("preset {name}"))
    }

    /// A user's sweep file.
    pub fn from_file(path: &Path) -> Result<Self> {
        let text = std::fs::read_to_string(path)
            .map_err(|e| Error::data(path, format!("cannot read: {e}")))?;
        Self::parse(&text, &path.display().to_string())
    }

    fn parse(text: &str, origin: &str) -> Result<Self> {
        let config: Self = toml::from_str(text)
            .map_err(|e| Error::usage(format!("{origin}: {}", e.to_string().trim_end())))?;
        config
            .validate()
            .map_err(|e| Error::usage(format!("{origin}: {e}")))?;
        Ok(config)
    }

    pub fn model_kind(&self) -> Result<ModelKind> {
        self.model.parse()
    }

    pub fn pruner(&self) -> Result<Pruner> {
        self.grid.pruner.parse()
    }

    /// The matrix attacks, parsed.
    pub fn attacks(&self) -> Result<Vec<AttackKind>> {
        self.attack.names.iter().map(|n| n.parse()).collect()
    }

    /// Figure 3's attacks, parsed.
    pub fn figure3_attacks(&self) -> Result<Vec<AttackKind>> {
        self.figure3.attacks.iter().map(|n| n.parse()).collect()
    }

    /// Refuses what cannot run, naming the field.
    pub fn validate(&self) -> Result<()> {
        let fail = |field: &str, what: String| Err(Error::usage(format!("{field}: {what}")));
        self.model_kind()?;
        self.pruner()?;
        self.attacks()?;
        self.figure3_attacks()?;
        self.attack.grad.parse::<crate::kernels::QuantGrad>()?;
        if self.evaluation_images == Some(0) {
            return fail("evaluation_images", "must be at least 1".into());
        }
        if self.seeds == 0 {
            return fail("seeds", "must be at least 1".into());
        }
        for (name, t) in [("baseline", &self.baseline), ("finetune", &self.finetune)] {
            if t.epochs == 0 || t.batch_size == 0 || !positive(t.learning_rate) {
                return fail(
                    name,
                    "epochs, batch_size and learning_rate must be positive".into(),
                );
            }
            if t.train_limit == Some(0) {
                return fail(name, "train_limit must be at least 1".into());
            }
        }
        if let Some(d) = self
            .grid
            .densities
            .iter()
            .find(|d| !(**d > 0.0 && **d <= 1.0))
        {
            return fail("grid.densities", format!("{d} is not in (0, 1]"));
        }
        for &bits in &self.grid.bits {
            FixedPoint::paper(bits).map_err(|e| Error::usage(format!("grid.bits: {e}")))?;
        }
        if self.grid.mask_interval == 0 {
            return fail("grid.mask_interval", "must be at least 1".into());
        }
        if self.grid.densities.is_empty() && self.grid.bits.is_empty() {
            return fail(
                "grid",
                "no compressed model (densities and bits both empty)".into(),
            );
        }
        if self.attack.names.is_empty() {
            return fail("attack.names", "no attack".into());
        }
        if self.attack.images == 0 || self.attack.batch_size == 0 {
            return fail("attack", "images and batch_size must be at least 1".into());
        }
        if !positive(self.attack.eps as f64) || self.attack.steps == 0 {
            return fail("attack", "eps and steps must be positive".into());
        }
        if self.figure3.eps.iter().any(|e| !positive(*e as f64)) || self.figure3.steps.contains(&0)
        {
            return fail("figure3", "every eps and steps must be positive".into());
        }
        if self.figure5.activation_images == 0 {
            return fail("figure5.activation_images", "must be at least 1".into());
        }
        Ok(())
    }
}
