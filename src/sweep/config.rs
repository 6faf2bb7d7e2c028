//! What a sweep runs: the TOML presets in `assets/presets/` (embedded in the binary) or a
//! user's file of the same shape. Every field has docs/design.md's default, so a file names only
//! what it changes; an unknown field is refused by name.

use std::collections::BTreeMap;
use std::path::Path;

use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

use crate::attack::{AttackConfig, AttackKind};
use crate::compress::FinetuneSettings;
use crate::data::DatasetKind;
use crate::kernels::QuantGrad;
use crate::model::ModelRef;
use crate::prune::{DnsSettings, PruneConfig, PruneKind};
use crate::quant::{FixedPoint, FixedPointSettings, QuantConfig};
use crate::train::TrainSettings;
use crate::{Error, Result};

/// The presets shipped in `assets/presets/`, by name.
pub const PRESETS: [(&str, &str); 2] = [
    ("quick", include_str!("../../assets/presets/quick.toml")),
    ("paper", include_str!("../../assets/presets/paper.toml")),
];

/// The compressed models: one per density (pruned), one per bitwidth (weights and
/// activations in fixed point with the paper's P rule), and one per quantiser listed (any
/// quantiser with its own settings: `[[grid.quantisers]] kind = "affine" ...`).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Grid {
    pub pruner: PruneKind,
    pub densities: Vec<f64>,
    pub bits: Vec<u32>,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub quantisers: Vec<QuantConfig>,
    /// Fine-tuning steps between mask updates, for a pruner that has the setting (DNS; short
    /// fine-tuning needs short intervals).
    pub mask_interval: usize,
}

impl Default for Grid {
    fn default() -> Self {
        Self {
            pruner: PruneKind::Dns,
            densities: vec![1.0, 0.8, 0.6, 0.4, 0.3, 0.2, 0.1, 0.05],
            bits: vec![32, 24, 16, 12, 10, 8, 6, 4],
            quantisers: Vec::new(),
            mask_interval: DnsSettings::default().mask_interval,
        }
    }
}

impl Grid {
    /// The pruner at `density` with this grid's settings.
    pub fn pruner_at(&self, density: f64) -> PruneConfig {
        let pruner = PruneConfig::at(self.pruner, density);
        match pruner.settings().contains_key("mask_interval") {
            true => pruner
                .with("mask_interval", self.mask_interval)
                .unwrap_or(pruner),
            false => pruner,
        }
    }

    /// Every quantiser of the grid: fixed point at each of `bits` (the paper's P rule), then
    /// `quantisers`.
    pub fn all_quantisers(&self) -> Result<Vec<QuantConfig>> {
        let mut out = Vec::new();
        for &bits in &self.bits {
            let settings = FixedPointSettings::paper(bits)
                .map_err(|e| Error::invalid("grid.bits", e.to_string()))?;
            out.push(QuantConfig::Fixed(settings));
        }
        out.extend(self.quantisers.iter().cloned());
        Ok(out)
    }
}

/// The attacks of the transfer matrix.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Attacks {
    pub names: Vec<AttackKind>,
    /// Attacked test images per source model (the first N of the test split).
    pub images: usize,
    pub batch_size: usize,
    /// The step of every attack that takes one (absent: each attack's own default, the
    /// paper's 0.02).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub eps: Option<f32>,
    /// The iterations of every attack that takes steps (absent: each attack's own, 12).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub steps: Option<usize>,
    /// DeepFool: only the k classes with the highest clean logits (all when absent).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub deepfool_candidates: Option<usize>,
    /// The gradient estimators every gradient attack runs through on a model whose
    /// activations are quantised (each its own set and cells); models without quantisers
    /// have one exact gradient.
    pub gradients: Vec<QuantGrad>,
    /// Any attack's own settings, by attack (`[attack.settings.auto] queries = 1000`), over
    /// its defaults; `eps` and `steps` above apply first.
    #[serde(skip_serializing_if = "BTreeMap::is_empty")]
    pub settings: BTreeMap<AttackKind, Map<String, Value>>,
    /// Read only to be refused with a pointer to where it went (the attacks' estimators and
    /// the fine-tuning's were one setting before).
    #[serde(skip_serializing)]
    pub grad: Option<QuantGrad>,
}

impl Default for Attacks {
    fn default() -> Self {
        Self {
            names: vec![AttackKind::Ifgsm, AttackKind::Ifgm, AttackKind::DeepFool],
            images: 10_000,
            batch_size: crate::attack::BATCH_SIZE,
            eps: None,
            steps: None,
            deepfool_candidates: None,
            gradients: vec![QuantGrad::Ste, QuantGrad::Identity],
            settings: BTreeMap::new(),
            grad: None,
        }
    }
}

/// The adaptive evaluation: `auto` (the worst case over attacks and gradient estimators) on
/// every model at each budget, as its own attack of the transfer matrix, and the unbounded
/// check of every model's gradient.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Robustness {
    pub enabled: bool,
    /// L-inf budgets (pixel units): 0.1 and 0.3, the budgets MNIST robustness is reported at
    /// (Madry et al. 2018, Croce & Hein 2020).
    pub budgets: Vec<f32>,
    /// Images `auto` attacks per source (absent: `attack.images`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub images: Option<usize>,
}

impl Default for Robustness {
    fn default() -> Self {
        Self {
            enabled: true,
            budgets: vec![0.1, 0.3],
            images: None,
        }
    }
}

/// Figure 3: the baseline and pruned models, each attacked by itself at each step size (eps)
/// and each number of iterations.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Figure3 {
    pub attacks: Vec<AttackKind>,
    pub eps: Vec<f32>,
    pub steps: Vec<usize>,
    /// The pruned models attacked beside the baseline, by density (each one of
    /// `grid.densities`); absent: every density of the grid.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub densities: Option<Vec<f64>>,
}

impl Figure3 {
    /// Whether the pruned model of `density` is one of Figure 3's sources.
    pub fn includes(&self, density: f64) -> bool {
        self.densities.as_ref().is_none_or(|d| d.contains(&density))
    }
}

impl Default for Figure3 {
    fn default() -> Self {
        Self {
            attacks: vec![AttackKind::Ifgm, AttackKind::Ifgsm],
            eps: vec![0.002, 0.005, 0.01, 0.02, 0.03, 0.04],
            steps: vec![1, 3, 6, 12, 24],
            densities: None,
        }
    }
}

/// Beyond the paper: DIVA on every compressed model against its baseline, in its own form and
/// its margin form, beside PGD with the same step, steps and budget (how evasive ordinary
/// examples are).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
#[derive(Default)]
pub struct Differential {
    pub enabled: bool,
    /// c in p_F(y) - c * p_C(y) (absent: DIVA's own default, or `[attack.settings.diva]`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub weight: Option<f32>,
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

/// A whole sweep.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct SweepConfig {
    /// A built-in architecture, or an ONNX file (the baseline is then the file's own weights,
    /// not retrained).
    pub model: ModelRef,
    /// The model's own dataset when absent.
    pub dataset: Option<DatasetKind>,
    /// Seeds 1..=N: each seed trains its own baseline, fine-tunes its own compressed models
    /// and seeds its attacks; curves then show the mean and a 95% interval across seeds.
    pub seeds: u64,
    /// Clean accuracy (BASE ACC) on the first N test images (all when absent).
    pub evaluation_images: Option<usize>,
    pub baseline: TrainSettings,
    pub finetune: FinetuneSettings,
    pub grid: Grid,
    pub attack: Attacks,
    pub figure3: Figure3,
    pub figure5: Figure5,
    pub differential: Differential,
    pub robustness: Robustness,
}

impl Default for SweepConfig {
    fn default() -> Self {
        Self {
            model: ModelRef::BuiltIn(crate::model::ModelKind::LeNet5),
            dataset: None,
            seeds: 1,
            evaluation_images: None,
            baseline: TrainSettings::default(),
            finetune: FinetuneSettings::default(),
            grid: Grid::default(),
            attack: Attacks::default(),
            figure3: Figure3::default(),
            figure5: Figure5::default(),
            differential: Differential::default(),
            robustness: Robustness::default(),
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
        let origin = format!("config file {}", path.display());
        let bytes =
            crate::files::read_input(path, crate::limits::MAX_TEXT_BYTES as u64, 2, |_, m| {
                Error::usage(format!("{origin}: {m}"))
            })?;
        let text = String::from_utf8(bytes)
            .map_err(|e| Error::usage(format!("{origin}: not UTF-8 text: {e}")))?;
        Self::parse(&text, &origin)
    }

    fn parse(text: &str, origin: &str) -> Result<Self> {
        let config: Self = toml::from_str(text).map_err(|e| {
            let Some(span) = e.span() else {
                return Error::usage(format!("{origin}: {}", e.to_string().trim_end()));
            };
            // A table with flattened settings (`[finetune]`) reports an unknown key at the
            // table: point at the key's own line.
            let start = e
                .message()
                .strip_prefix("unknown field `")
                .and_then(|rest| rest.split('`').next())
                .and_then(|key| key_line(text, span.start, key))
                .unwrap_or(span.start);
            let line = text[..start].matches('\n').count() + 1;
            let field = field_at(text, start)
                .map(|f| format!("{f}: "))
                .unwrap_or_default();
            Error::usage(format!("{origin}, line {line}: {field}{}", e.message()))
        })?;
        config
            .validate()
            .map_err(|e| Error::usage(format!("{origin}: {e}")))?;
        Ok(config)
    }

    /// Refuses what cannot run, naming the field: everything is checked here, before a sweep
    /// writes or trains anything.
    pub fn validate(&self) -> Result<()> {
        use crate::limits::{MAX_BATCH_SIZE, MAX_IMAGES, MAX_SEEDS, MAX_STEPS};
        let fail = |field: &str, what: String| Err(Error::invalid(field, what));
        let count = |field: &str, value: usize, max: usize| {
            if (1..=max).contains(&value) {
                Ok(())
            } else {
                fail(field, format!("must be between 1 and {max} (got {value})"))
            }
        };
        if matches!(self.model, ModelRef::Onnx(_)) && self.dataset.is_none() {
            return fail(
                "dataset",
                "an ONNX model does not say which dataset it takes; name it".into(),
            );
        }
        if let Some(n) = self.evaluation_images {
            count("evaluation_images", n, MAX_IMAGES)?;
        }
        if !(1..=MAX_SEEDS).contains(&self.seeds) {
            return fail(
                "seeds",
                format!("must be between 1 and {MAX_SEEDS} (got {})", self.seeds),
            );
        }
        if self.attack.grad.is_some() {
            return fail(
                "attack.grad",
                "the attacks run every gradient estimator in attack.gradients on the same \
                 models; the estimator the compressed models are fine-tuned with is \
                 finetune.grad"
                    .into(),
            );
        }
        if self.attack.gradients.is_empty() {
            return fail(
                "attack.gradients",
                "needs at least one gradient estimator (ste, identity)".into(),
            );
        }
        for (section, t) in [
            ("baseline", &self.baseline),
            ("finetune", &self.finetune.train),
        ] {
            t.config(self.model.clone(), DatasetKind::Mnist, 1)
                .validate()
                .map_err(|e| e.in_section(section, &[]))?;
            if let Some(n) = t.train_limit {
                count(&format!("{section}.train_limit"), n, MAX_IMAGES)?;
            }
        }
        // Repeated values would be the same job twice (one output file, two writers).
        fn repeated<T: PartialEq + std::fmt::Display>(values: &[T]) -> Option<String> {
            values
                .iter()
                .enumerate()
                .find(|(i, v)| values[..*i].contains(v))
                .map(|(_, v)| v.to_string())
        }
        for (field, value) in [
            ("grid.densities", repeated(&self.grid.densities)),
            ("grid.bits", repeated(&self.grid.bits)),
            ("attack.names", repeated(&self.attack.names)),
            ("attack.gradients", repeated(&self.attack.gradients)),
            ("robustness.budgets", repeated(&self.robustness.budgets)),
            ("figure3.attacks", repeated(&self.figure3.attacks)),
            ("figure3.eps", repeated(&self.figure3.eps)),
            ("figure3.steps", repeated(&self.figure3.steps)),
            (
                "figure3.densities",
                repeated(self.figure3.densities.as_deref().unwrap_or_default()),
            ),
        ] {
            if let Some(value) = value {
                return fail(field, format!("{value} is listed twice"));
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
            FixedPoint::paper(bits).map_err(|e| Error::invalid("grid.bits", e.to_string()))?;
        }
        for q in &self.grid.quantisers {
            q.validate()
                .and_then(|_| crate::compress::refuse_imported(q))
                .map_err(|e| e.in_section("grid.quantisers", &[]))?;
        }
        let labels: Vec<String> = self
            .grid
            .all_quantisers()?
            .iter()
            .map(QuantConfig::label)
            .collect();
        if let Some(label) = repeated(&labels) {
            return fail(
                "grid.quantisers",
                format!("two quantisers are both {label} (the same model twice)"),
            );
        }
        count("grid.mask_interval", self.grid.mask_interval, MAX_STEPS)?;
        if self.grid.densities.is_empty() && labels.is_empty() {
            return fail(
                "grid",
                "no compressed model (densities, bits and quantisers all empty)".into(),
            );
        }
        if self.attack.names.is_empty() {
            return fail("attack.names", "no attack".into());
        }
        for (field, attacks) in [
            ("attack.names", &self.attack.names),
            ("figure3.attacks", &self.figure3.attacks),
        ] {
            if let Some(kind) = attacks.iter().find(|k| k.needs_reference()) {
                return fail(
                    field,
                    format!(
                        "{kind} attacks a pair of models, not one source; the sweep runs it \
                         on every compressed model against its baseline with [differential] \
                         enabled = true"
                    ),
                );
            }
        }
        count("attack.images", self.attack.images, MAX_IMAGES)?;
        count("attack.batch_size", self.attack.batch_size, MAX_BATCH_SIZE)?;
        let renames = [
            ("step", "attack.eps"),
            ("candidates", "attack.deepfool_candidates"),
        ];
        // Each table's fields must be its attack's (its values are checked where it runs).
        for kind in self.attack.settings.keys() {
            self.attack_config(*kind, None, None, 1)
                .map_err(|e| e.in_section(&format!("attack.settings.{kind}"), &[]))?;
        }
        for &kind in &self.attack.names {
            self.matrix_attack(kind, 1)
                .and_then(|c| c.validate())
                .map_err(|e| e.in_section("attack", &renames))?;
        }
        if self.robustness.enabled {
            if self.robustness.budgets.is_empty() {
                return fail("robustness.budgets", "no budget".into());
            }
            if let Some(n) = self.robustness.images {
                count("robustness.images", n, MAX_IMAGES)?;
            }
            for &budget in &self.robustness.budgets {
                self.robustness_attack(budget, 1)
                    .and_then(|c| c.validate())
                    .map_err(|e| e.in_section("robustness", &[("budget", "robustness.budgets")]))?;
            }
        }
        if let Some(d) = self
            .figure3
            .densities
            .iter()
            .flatten()
            .find(|d| !self.grid.densities.contains(d))
        {
            return fail(
                "figure3.densities",
                format!("{d} is not one of grid.densities"),
            );
        }
        if self.figure3.eps.is_empty() || self.figure3.steps.is_empty() {
            return fail(
                "figure3",
                "eps and steps need at least one value each".into(),
            );
        }
        for &kind in &self.figure3.attacks {
            for &eps in &self.figure3.eps {
                for &steps in &self.figure3.steps {
                    self.attack_config(kind, Some(eps), Some(steps), 1)
                        .and_then(|c| c.validate())
                        .map_err(|e| e.in_section("figure3", &[("step", "figure3.eps")]))?;
                }
            }
        }
        for attack in self.differential_attacks(1)? {
            attack
                .validate()
                .map_err(|e| e.in_section("differential", &[]))?;
        }
        count(
            "figure5.activation_images",
            self.figure5.activation_images,
            MAX_IMAGES,
        )?;
        Ok(())
    }

    /// The settings of `kind` for `seed`: its defaults, then `eps` and `steps` where it takes
    /// them, this sweep's DeepFool candidates, its `[attack.settings.<kind>]` table, and the
    /// seed where it draws random numbers.
    pub fn attack_config(
        &self,
        kind: AttackKind,
        eps: Option<f32>,
        steps: Option<usize>,
        seed: u64,
    ) -> Result<AttackConfig> {
        let has = |name: &str| kind.parameters().iter().any(|p| p.name == name);
        let mut settings = Map::new();
        if let Some(eps) = eps.filter(|_| has("step")) {
            settings.insert("step".into(), crate::attack::json_float(eps));
        }
        if let Some(steps) = steps.filter(|_| has("steps")) {
            settings.insert("steps".into(), steps.into());
        }
        if let (AttackKind::DeepFool, Some(k)) = (kind, self.attack.deepfool_candidates) {
            settings.insert("candidates".into(), k.into());
        }
        if has("seed") {
            settings.insert("seed".into(), seed.into());
        }
        if let Some(own) = self.attack.settings.get(&kind) {
            settings.extend(own.clone());
        }
        AttackConfig::from_settings(kind, settings)
    }

    /// An attack of the transfer matrix (the shared `eps` and `steps` applied).
    pub fn matrix_attack(&self, kind: AttackKind, seed: u64) -> Result<AttackConfig> {
        self.attack_config(kind, self.attack.eps, self.attack.steps, seed)
    }

    /// `auto` at `budget` (its other settings from `[attack.settings.auto]`).
    pub fn robustness_attack(&self, budget: f32, seed: u64) -> Result<AttackConfig> {
        self.attack_config(AttackKind::Auto, None, None, seed)?
            .with("budget", crate::attack::json_float(budget))
    }

    /// The differential stage's attacks on `seed`: DIVA in its own form (with this sweep's
    /// weight) and its margin form, and PGD with the matrix's step, steps and DIVA's budget.
    pub fn differential_attacks(&self, seed: u64) -> Result<Vec<AttackConfig>> {
        let mut diva = self.matrix_attack(AttackKind::Diva, seed)?;
        if let Some(weight) = self.differential.weight {
            diva = diva.with("weight", crate::attack::json_float(weight))?;
        }
        let budget = crate::attack::json_float(diva.budget().expect("DIVA has a budget"));
        let margin = self
            .attack_config(AttackKind::DivaMargin, None, None, seed)?
            .with("budget", budget.clone())?;
        let pgd = self
            .matrix_attack(AttackKind::Pgd, seed)?
            .with("budget", budget)?;
        Ok(vec![diva, margin, pgd])
    }

    /// The images `auto` attacks per source.
    pub fn robustness_images(&self) -> usize {
        self.robustness.images.unwrap_or(self.attack.images)
    }
}

/// The byte offset of the line that sets `key` in the table that begins at or around
/// `offset` (before the next table starts).
fn key_line(text: &str, offset: usize, key: &str) -> Option<usize> {
    let table_start = text[..offset.min(text.len())]
        .rfind('\n')
        .map_or(0, |i| i + 1);
    let mut at = table_start;
    for (i, line) in text[table_start..].split('\n').enumerate() {
        let trimmed = line.trim();
        if i > 0 && trimmed.starts_with('[') {
            return None;
        }
        if let Some((k, _)) = trimmed.split_once('=')
            && k.trim().trim_matches('"') == key
        {
            return Some(at);
        }
        at += line.len() + 1;
    }
    None
}

/// The dotted name (`attack.eps`) of the TOML key whose value is at byte `offset`: the key of
/// the nearest `key = ...` line at or above it, in the nearest `[table]` above that.
fn field_at(text: &str, offset: usize) -> Option<String> {
    let offset = offset.min(text.len());
    // The whole line the error points into (an unknown key's error points at the key itself).
    let line_end = text[offset..].find('\n').map_or(text.len(), |i| offset + i);
    let lines: Vec<&str> = text[..line_end].split('\n').collect();
    let mut key = None;
    for line in lines.iter().rev() {
        let line = line.trim();
        if let Some(table) = line.strip_prefix('[') {
            let table = table.trim_end_matches(']').trim();
            return key.map(|k| format!("{table}.{k}"));
        }
        if key.is_none()
            && let Some((k, _)) = line.split_once('=')
        {
            key = Some(k.trim().trim_matches('"').to_string());
        }
    }
    key
}
