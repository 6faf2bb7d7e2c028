//! A sweep's results as files a user opens: `cells.csv` / `cells.jsonl` (one row per seed ×
//! attack × source × target), `matrix-<attack>.csv`, `models.csv`, `eps-steps.csv`,
//! `cdf.csv`, `throughput.csv`, the paper's figures (PNG and SVG) and `report.md` /
//! `report.html` (self-contained, figures inline) with the check against the paper's claims.
//!
//! Across seeds every plotted value is the mean with a 95% t-interval; with one seed it is the
//! value with its 95% bootstrap interval over the test images.

mod claims;
mod document;
mod figures;
mod indicators;
mod plot;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::Result;
use crate::attack::{AttackConfig, AttackKind, json_float};
use crate::model::ModelLabel;
use crate::transfer::{CellMetrics, DifferentialMetrics, Gradient, UnboundedCheck};

pub use plot::{Categories, Figure, LineFigure, Look, Panel, Point, Series, XAxis, save_lines};

/// What a model of the sweep is.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Family {
    Full,
    Pruned,
    Quantised,
}

impl Family {
    pub fn name(self) -> &'static str {
        match self {
            Family::Full => "full",
            Family::Pruned => "pruned",
            Family::Quantised => "quantised",
        }
    }
}

/// One model of the sweep.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct ModelRow {
    pub seed: u64,
    pub label: ModelLabel,
    pub family: Family,
    /// The pruning target (1 for unpruned models).
    pub density: f64,
    /// The width of a quantised model's weights (W of Q(W, P), 8 of int8).
    pub bits: Option<u32>,
    /// A quantised model's scheme (`fixed point Q(W P)`, `affine per channel`): the report
    /// draws one curve against bits per scheme.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub scheme: Option<String>,
    /// Clean accuracy on the whole test split (the paper's BASE ACC).
    pub clean_accuracy: f64,
    pub checkpoint: PathBuf,
}

pub use crate::transfer::Cell;

/// Figure 3: one model (the baseline or a pruned one) attacked by itself with one step size
/// and one number of iterations.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct EpsStepsCell {
    pub seed: u64,
    pub attack: AttackKind,
    /// The model attacked (cells written before Figure 3 had pruned sources are the baseline's).
    #[serde(default = "ModelLabel::full")]
    pub source: ModelLabel,
    pub eps: f32,
    pub steps: usize,
    pub metrics: CellMetrics,
}

/// Beyond the paper: one attack crafted on the pair (a compressed model, its baseline) and how
/// its examples split the two.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct DifferentialCell {
    pub seed: u64,
    pub attack: AttackKind,
    /// The compressed model attacked (the baseline is the reference).
    pub model: ModelLabel,
    pub metrics: DifferentialMetrics,
}

/// Figure 5: the CDF of all weights or all activations of one model.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct CdfSeries {
    pub seed: u64,
    pub label: ModelLabel,
    /// `weight` or `activation`.
    pub tensor: String,
    pub points: Vec<(f32, f64)>,
}

/// How fast one adversarial set was made (not part of the compared results: timings differ
/// from run to run).
#[derive(Clone, Debug, Serialize)]
pub struct Throughput {
    pub seed: u64,
    pub attack: AttackKind,
    /// The gradient the attack followed through the source's quantisers.
    pub gradient: Gradient,
    /// The attack's budget, when it has one.
    pub budget: Option<f32>,
    pub source: ModelLabel,
    pub images: usize,
    /// Seconds the run that made the set took (NaN when its timing file is gone).
    pub seconds: f64,
    /// Where it was made (a sweep's stages may run on different machines).
    pub backend: String,
    pub adapter: String,
}

/// Where a report's numbers come from: its header, and every figure's footer.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct Provenance {
    /// `preset quick`, or `config path/to/sweep.toml`.
    pub origin: String,
    /// The sweep config, as TOML (the presets' format).
    pub config_toml: String,
    /// `lenet5`, or the ONNX file given.
    pub model: String,
    /// The SHA-256 of an ONNX model file or of a given baseline checkpoint.
    pub model_sha256: Option<String>,
    pub dataset: String,
    pub seeds: u64,
    /// Test images the clean accuracy (BASE ACC) is measured on.
    pub evaluation_images: usize,
    /// Test images attacked per source model.
    pub attack_images: usize,
    /// Of those, the first this many `auto` attacks (absent: no robustness runs).
    #[serde(default)]
    pub robustness_images: Option<usize>,
    /// What the config's scale allows one to conclude, in a sentence.
    pub scope: String,
}

/// The advcomp build: its version and the git commit it was built from (`-dirty` when the
/// working tree had changes; `unknown` outside a git checkout).
pub fn build_version() -> String {
    format!(
        "advcomp {} ({})",
        env!("CARGO_PKG_VERSION"),
        option_env!("ADVCOMP_GIT_COMMIT").unwrap_or("unknown")
    )
}

/// Everything a sweep produced.
#[derive(Clone, Debug, Serialize)]
pub struct Results {
    pub title: String,
    pub provenance: Provenance,
    /// The settings of each attack of the sweep (the first seed's; only seeds differ).
    pub attacks: Vec<AttackConfig>,
    pub backend: String,
    pub adapter: String,
    pub models: Vec<ModelRow>,
    pub cells: Vec<Cell>,
    pub eps_steps: Vec<EpsStepsCell>,
    pub cdfs: Vec<CdfSeries>,
    pub throughput: Vec<Throughput>,
    /// Beyond the paper (empty when the sweep does not run it).
    pub differential: Vec<DifferentialCell>,
    /// Each model's unbounded gradient check (empty without the adaptive evaluation).
    pub unbounded: Vec<UnboundedCheck>,
}

/// An attack as the report shows it.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum Run {
    /// As the paper ran it: through the STE where the source has quantisers.
    Attack(AttackKind),
    /// The same attack through BPDA (the identity) where the source has quantisers.
    Bpda(AttackKind),
    /// `auto` at one budget.
    Auto(f32),
    /// The attack through its strongest gradient estimator: the lowest accuracy over them.
    Estimators(AttackKind),
    /// The attack at its strongest: the lowest accuracy over its estimators and over `auto`
    /// at every budget within its L-inf reach (none for DeepFool, which has no L-inf bound:
    /// its threat model is the smallest L2 step to the boundary, not a budget).
    Strongest(AttackKind),
    /// The lowest accuracy of every attack and estimator run on the cell.
    WorstCase,
}

impl Run {
    /// Its name in titles: `IFGSM`, `IFGSM (BPDA)`, `AUTO at 0.1`, `WORST CASE`.
    pub fn title(self) -> String {
        match self {
            Run::Attack(k) => k.name().to_uppercase(),
            Run::Bpda(k) => format!("{} (BPDA)", k.name().to_uppercase()),
            Run::Auto(b) => format!("AUTO at {b}"),
            Run::Estimators(k) => format!("{} (strongest estimator)", k.name().to_uppercase()),
            Run::Strongest(k) => format!("{} at its strongest", k.name().to_uppercase()),
            Run::WorstCase => "WORST CASE".into(),
        }
    }

    /// Its name in file names: `ifgsm`, `ifgsm-bpda`, `auto-0.1`, `worst-case`.
    pub fn stem(self) -> String {
        match self {
            Run::Attack(k) => k.name().into(),
            Run::Bpda(k) => format!("{k}-bpda"),
            Run::Auto(b) => format!("auto-{b}"),
            Run::Estimators(k) => format!("{k}-estimators"),
            Run::Strongest(k) => format!("{k}-strongest"),
            Run::WorstCase => "worst-case".into(),
        }
    }
}

/// The mean and 95% interval of one value over seeds (or its bootstrap interval with one).
/// Every value summarised is a fraction in [0, 1] (accuracies, rates, the mean change of pixels
/// in [0, 1]), so the interval is clipped to it: Student's t over two or three seeds reaches
/// far past it when the seeds disagree.
pub fn summarise(samples: &[(f64, [f64; 2])]) -> Point {
    let n = samples.len();
    match n {
        0 => Point::missing(),
        1 => Point::new(samples[0].0, samples[0].1[0], samples[0].1[1]),
        _ => {
            let mean = samples.iter().map(|s| s.0).sum::<f64>() / n as f64;
            let var = samples.iter().map(|s| (s.0 - mean).powi(2)).sum::<f64>() / (n - 1) as f64;
            let half = t_975(n - 1) * (var / n as f64).sqrt();
            Point::new(mean, (mean - half).max(0.0), (mean + half).min(1.0))
        }
    }
}

/// The 97.5% quantile of Student's t with `df` degrees of freedom.
fn t_975(df: usize) -> f64 {
    const TABLE: [f64; 10] = [
        12.706, 4.303, 3.182, 2.776, 2.571, 2.447, 2.365, 2.306, 2.262, 2.228,
    ];
    match df {
        0 => f64::NAN,
        1..=10 => TABLE[df - 1],
        11..=30 => 2.042 + (2.228 - 2.042) * (30 - df) as f64 / 20.0,
        _ => 1.96,
    }
}

/// Lookups over the results that the figures, tables and claims share.
pub(crate) struct View<'a> {
    pub results: &'a Results,
    /// label -> (family, density, bits), from the first seed that has it.
    models: BTreeMap<&'a str, &'a ModelRow>,
}

impl<'a> View<'a> {
    fn new(results: &'a Results) -> Self {
        let mut models = BTreeMap::new();
        for m in &results.models {
            models.entry(m.label.as_str()).or_insert(m);
        }
        Self { results, models }
    }

    pub fn model(&self, label: &str) -> Option<&'a ModelRow> {
        self.models.get(label).copied()
    }

    /// Labels of one family in grid order: pruned by falling density, quantised by scheme (in
    /// grid order) and falling bitwidth.
    pub fn family(&self, family: Family) -> Vec<&'a ModelRow> {
        let schemes = self.schemes();
        let rank = |m: &ModelRow| {
            let scheme = m.scheme.as_deref();
            schemes.iter().position(|s| Some(*s) == scheme)
        };
        let mut rows: Vec<_> = self
            .models
            .values()
            .copied()
            .filter(|m| m.family == family)
            .collect();
        rows.sort_by(|a, b| {
            (rank(a).cmp(&rank(b)))
                .then(b.density.total_cmp(&a.density))
                .then(b.bits.unwrap_or(99).cmp(&a.bits.unwrap_or(99)))
        });
        rows
    }

    /// The quantisation schemes of the sweep, in grid order (the order models appear in).
    pub fn schemes(&self) -> Vec<&'a str> {
        let mut out: Vec<&str> = Vec::new();
        for m in &self.results.models {
            if let Some(s) = m.scheme.as_deref()
                && !out.contains(&s)
            {
                out.push(s);
            }
        }
        out
    }

    /// The models one of the paper's figures or claims compares: the pruned ones, or the
    /// quantised ones of the grid's first scheme (fixed point Q(W,P) in the presets, as in the
    /// paper). The other schemes have a figure of their own beside it.
    pub fn paper_family(&self, family: Family) -> Vec<&'a ModelRow> {
        let first = self.schemes().first().copied();
        self.family(family)
            .into_iter()
            .filter(|m| family != Family::Quantised || m.scheme.as_deref() == first)
            .collect()
    }

    /// The quantised models of one scheme, by falling bitwidth.
    pub fn scheme(&self, scheme: &str) -> Vec<&'a ModelRow> {
        self.family(Family::Quantised)
            .into_iter()
            .filter(|m| m.scheme.as_deref() == Some(scheme))
            .collect()
    }

    /// The attacks of the matrix in the sweep's order (`auto` apart: [`View::runs`]).
    pub fn attacks(&self) -> Vec<AttackKind> {
        let mut out = Vec::new();
        for c in &self.results.cells {
            if c.attack != AttackKind::Auto && !out.contains(&c.attack) {
                out.push(c.attack);
            }
        }
        out
    }

    /// `auto`'s budgets, rising.
    pub fn auto_budgets(&self) -> Vec<f32> {
        let mut out: Vec<f32> = Vec::new();
        for c in &self.results.cells {
            if c.attack == AttackKind::Auto
                && let Some(b) = c.budget
                && !out.contains(&b)
            {
                out.push(b);
            }
        }
        out.sort_by(f32::total_cmp);
        out
    }

    /// Whether any set was made through BPDA.
    pub fn has_bpda(&self) -> bool {
        self.results
            .cells
            .iter()
            .any(|c| c.gradient == Gradient::Identity)
    }

    /// Every way the report shows the attacks: each attack as the paper ran it, through BPDA
    /// (when any source has quantisers), `auto` at each budget, and the worst case.
    pub fn runs(&self, bpda: bool) -> Vec<Run> {
        let mut out: Vec<Run> = self.attacks().into_iter().map(Run::Attack).collect();
        if bpda && self.has_bpda() {
            out.extend(self.attacks().into_iter().map(Run::Bpda));
        }
        out.extend(self.auto_budgets().into_iter().map(Run::Auto));
        if !self.auto_budgets().is_empty() || self.has_bpda() {
            out.push(Run::WorstCase);
        }
        out
    }

    /// The L-inf reach of `attack` as the sweep ran it (`None`: unbounded).
    fn reach(&self, attack: AttackKind) -> Option<f32> {
        self.results
            .attacks
            .iter()
            .find(|a| a.kind() == attack)
            .and_then(AttackConfig::linf_reach)
    }

    /// Whether `cell` is one of `run`'s candidates.
    fn in_run(&self, run: Run, cell: &Cell) -> bool {
        let plain = |k: AttackKind| cell.attack == k && cell.attack != AttackKind::Auto;
        match run {
            Run::Attack(k) => plain(k) && cell.gradient != Gradient::Identity,
            Run::Bpda(k) => plain(k) && cell.gradient != Gradient::Ste,
            Run::Auto(b) => cell.attack == AttackKind::Auto && cell.budget == Some(b),
            Run::Estimators(k) => plain(k),
            Run::Strongest(k) => {
                plain(k)
                    || (cell.attack == AttackKind::Auto
                        && match (self.reach(k), cell.budget) {
                            (Some(reach), Some(b)) => b <= reach + 1e-6,
                            _ => false,
                        })
            }
            Run::WorstCase => true,
        }
    }

    /// The cell of `run` on (source, target) in `seed`: the one cell, or the one with the
    /// lowest adversarial accuracy of the candidates.
    pub fn run_cell(&self, run: Run, seed: u64, source: &str, target: &str) -> Option<&'a Cell> {
        self.results
            .cells
            .iter()
            .filter(|c| c.seed == seed && c.source == source && c.target == target)
            .filter(|c| self.in_run(run, c))
            .min_by(|a, b| {
                a.metrics
                    .adversarial_accuracy
                    .total_cmp(&b.metrics.adversarial_accuracy)
            })
    }

    /// A value computed on each seed's numbers alone, as its mean and 95% interval over seeds
    /// (no interval with one seed); seeds where it cannot be computed are left out.
    pub fn over_seeds(&self, value: impl Fn(u64) -> Option<f64>) -> Point {
        let samples: Vec<_> = self
            .seeds()
            .into_iter()
            .filter_map(value)
            .map(|v| (v, [v, v]))
            .collect();
        summarise(&samples)
    }

    fn seeds(&self) -> Vec<u64> {
        let mut seeds: Vec<u64> = self.results.models.iter().map(|m| m.seed).collect();
        seeds.sort();
        seeds.dedup();
        seeds
    }

    /// One metric of `run`'s (source, target) cell over seeds.
    pub fn cell(
        &self,
        run: Run,
        source: &str,
        target: &str,
        metric: fn(&CellMetrics) -> (f64, [f64; 2]),
    ) -> Point {
        let samples: Vec<_> = self
            .seeds()
            .into_iter()
            .filter_map(|seed| self.run_cell(run, seed, source, target))
            .map(|c| metric(&c.metrics))
            .collect();
        summarise(&samples)
    }

    /// The one-line provenance every figure carries (files by their names only, so it fits).
    pub fn footer(&self) -> String {
        let p = &self.results.provenance;
        let name = |s: &str| s.rsplit(['/', '\\']).next().unwrap_or(s).to_string();
        format!(
            "{} on {}, {}, {} seed{}, {} attacked images per source, BASE ACC on {}; {}",
            name(&p.model),
            p.dataset,
            // `config path/to/sweep.toml` -> `config sweep.toml`.
            p.origin
                .split_once(' ')
                .map_or(p.origin.clone(), |(kind, what)| format!(
                    "{kind} {}",
                    name(what)
                )),
            p.seeds,
            if p.seeds == 1 { "" } else { "s" },
            p.attack_images,
            p.evaluation_images,
            build_version()
        )
    }

    /// BASE ACC of a model over seeds (a t-interval with several seeds, none with one).
    pub fn base_accuracy(&self, label: &str) -> Point {
        let samples: Vec<_> = self
            .results
            .models
            .iter()
            .filter(|m| m.label == label)
            .map(|m| (m.clean_accuracy, [m.clean_accuracy; 2]))
            .collect();
        summarise(&samples)
    }
}

pub(crate) fn adversarial_accuracy(m: &CellMetrics) -> (f64, [f64; 2]) {
    (m.adversarial_accuracy, m.adversarial_accuracy_ci)
}

pub(crate) fn clean_accuracy(m: &CellMetrics) -> (f64, [f64; 2]) {
    (m.clean_accuracy, [m.clean_accuracy; 2])
}

pub(crate) fn mean_abs_delta(m: &CellMetrics) -> (f64, [f64; 2]) {
    (m.mean_abs_delta, m.mean_abs_delta_ci)
}

/// The folder, beside the result files, that holds the figures.
pub const FIGURES: &str = "figures";

fn csv_field(s: &str) -> String {
    if s.contains([',', '"', '\n']) {
        format!("\"{}\"", s.replace('"', "\"\""))
    } else {
        s.to_string()
    }
}

fn write_text(path: &Path, text: &str) -> Result<()> {
    crate::write_atomically(path, text.as_bytes())
}

/// The columns of `cells.csv` and the fields of `cells.jsonl`, in order. Fractions end in
/// `_frac` (0..1); perturbations are in pixel units (images in [0, 1]).
const CELL_COLUMNS: [&str; 39] = [
    "seed",
    "attack",
    "scenario",
    "scenario_label",
    "source",
    "source_density",
    "source_bits",
    "source_sha256",
    "target",
    "target_density",
    "target_bits",
    "target_sha256",
    "step",
    "steps",
    "budget",
    "linf_reach",
    "grad",
    "images",
    "clean_acc_frac",
    "adv_acc_frac",
    "adv_acc_frac_ci_low",
    "adv_acc_frac_ci_high",
    "success_frac",
    "mean_abs_delta",
    "mean_abs_delta_ci_low",
    "mean_abs_delta_ci_high",
    "l0_pixels",
    "l2",
    "linf",
    "mean_iterations",
    "estimator_gap",
    "zero_gradient_images_frac",
    "zero_gradient_pixels_frac",
    "gradient_free_only_frac",
    "transfer_beats_white_box",
    "unbounded_acc_frac",
    "non_monotone",
    "masking_suspected",
    "attack_settings",
];

/// A model's density, bitwidth and checkpoint hash, by (seed, label).
struct ModelFacts<'a> {
    view: &'a View<'a>,
    hashes: BTreeMap<(u64, &'a str), String>,
}

impl ModelFacts<'_> {
    fn describe(&self, seed: u64, label: &str) -> [Value; 3] {
        let model = self.view.model(label);
        [
            model.map_or(Value::Null, |m| m.density.into()),
            model.and_then(|m| m.bits).into(),
            self.hashes
                .get(&(seed, label))
                .map_or(Value::Null, |h| h.clone().into()),
        ]
    }
}

/// The sweep's settings of `c`'s attack, with `c`'s seed.
fn config_of(results: &Results, c: &Cell) -> Option<AttackConfig> {
    let config = results
        .attacks
        .iter()
        .find(|a| a.kind() == c.attack && a.budget() == c.budget)?;
    let has_seed = c.attack.parameters().iter().any(|p| p.name == "seed");
    if has_seed {
        config.clone().with("seed", c.seed).ok()
    } else {
        Some(config.clone())
    }
}

/// One cell as values in [`CELL_COLUMNS`] order (`Null`: an empty CSV field).
fn cell_row(facts: &ModelFacts, c: &Cell) -> [Value; 39] {
    let r = facts.view.results;
    let config = config_of(r, c);
    let config = config.as_ref();
    let m = &c.metrics;
    let i = &m.indicators;
    let [sd, sb, sh] = facts.describe(c.seed, &c.source);
    let [td, tb, th] = facts.describe(c.seed, &c.target);
    let opt = |v: Option<f64>| v.map_or(Value::Null, Value::from);
    [
        c.seed.into(),
        c.attack.name().into(),
        c.scenario.number().into(),
        c.scenario.label().into(),
        c.source.to_string().into(),
        sd,
        sb,
        sh,
        c.target.to_string().into(),
        td,
        tb,
        th,
        config
            .and_then(AttackConfig::step)
            .map_or(Value::Null, json_float),
        config.map_or(Value::Null, |a| a.steps().into()),
        config
            .and_then(AttackConfig::budget)
            .map_or(Value::Null, json_float),
        config
            .and_then(AttackConfig::linf_reach)
            .map_or(Value::Null, json_float),
        c.gradient.name().into(),
        m.images.into(),
        m.clean_accuracy.into(),
        m.adversarial_accuracy.into(),
        m.adversarial_accuracy_ci[0].into(),
        m.adversarial_accuracy_ci[1].into(),
        m.success_rate.into(),
        m.mean_abs_delta.into(),
        m.mean_abs_delta_ci[0].into(),
        m.mean_abs_delta_ci[1].into(),
        m.l0.into(),
        m.l2.into(),
        m.linf.into(),
        m.mean_iterations.into(),
        opt(i.estimator_gap),
        opt(i.zero_gradient_images),
        opt(i.zero_gradient_pixels),
        opt(i.gradient_free_only),
        opt(i.transfer_beats_white_box),
        opt(i.unbounded_accuracy),
        opt(i.non_monotone),
        m.masking_suspected.into(),
        config.map_or(Value::Null, |a| Value::Object(a.used_parameters())),
    ]
}

/// A JSON value as a CSV field: strings quoted where needed, null empty, objects as JSON.
fn csv_value(v: &Value) -> String {
    match v {
        Value::Null => String::new(),
        Value::String(s) => csv_field(s),
        Value::Object(_) | Value::Array(_) => csv_field(&v.to_string()),
        other => other.to_string(),
    }
}

fn csv_line(values: impl IntoIterator<Item = Value>) -> String {
    let fields: Vec<String> = values.into_iter().map(|v| csv_value(&v)).collect();
    fields.join(",") + "\n"
}

fn cells_files(facts: &ModelFacts) -> (String, String) {
    let mut csv = CELL_COLUMNS.join(",") + "\n";
    let mut jsonl = String::new();
    for c in &facts.view.results.cells {
        let row = cell_row(facts, c);
        // Written field by field: the fields keep the columns' order.
        let fields: Vec<String> = CELL_COLUMNS
            .iter()
            .zip(row.iter())
            .map(|(k, v)| format!("{}:{v}", Value::from(*k)))
            .collect();
        jsonl.push_str(&format!("{{{}}}\n", fields.join(",")));
        csv.push_str(&csv_line(row));
    }
    (csv, jsonl)
}

/// Model labels in matrix order: the baseline, pruned, quantised.
fn matrix_labels<'a>(view: &View<'a>) -> Vec<&'a str> {
    [Family::Full, Family::Pruned, Family::Quantised]
        .into_iter()
        .flat_map(|f| view.family(f))
        .map(|m| m.label.as_str())
        .collect()
}

fn matrix_csv(view: &View, run: Run, labels: &[&str]) -> String {
    let mut csv = format!("source\\target,{}\n", labels.join(","));
    for s in labels {
        let row: Vec<String> = labels
            .iter()
            .map(|t| view.cell(run, s, t, adversarial_accuracy).y.to_string())
            .collect();
        csv.push_str(&format!("{s},{}\n", row.join(",")));
    }
    csv
}

/// Writes every result file, figure and the report into `out`; returns the report's path.
/// The indicators that compare cells are filled in first.
pub fn write(out: &Path, results: &Results) -> Result<PathBuf> {
    let mut results = results.clone();
    crate::transfer::indicators::complete(&mut results.cells, &results.unbounded);
    indicators::non_monotone(&mut results);
    let results = &results;
    let view = View::new(results);
    let mut hashes = BTreeMap::new();
    for m in &results.models {
        hashes.insert(
            (m.seed, m.label.as_str()),
            crate::files::sha256_of_file(
                &m.checkpoint,
                crate::limits::MAX_DATA_BYTES as u64,
                crate::Error::checkpoint,
            )?,
        );
    }
    let facts = ModelFacts {
        view: &view,
        hashes,
    };
    let (cells_csv, cells_jsonl) = cells_files(&facts);
    write_text(&out.join("cells.csv"), &cells_csv)?;
    write_text(&out.join("cells.jsonl"), &cells_jsonl)?;
    let labels = matrix_labels(&view);
    for run in view.runs(true) {
        write_text(
            &out.join(format!("matrix-{}.csv", run.stem())),
            &matrix_csv(&view, run, &labels),
        )?;
    }
    let mut models =
        String::from("seed,label,family,density,bits,scheme,clean_acc_frac,checkpoint,sha256\n");
    for m in &results.models {
        // Relative to the output folder, so the folder can be moved or shared as it is.
        let path = m.checkpoint.strip_prefix(out).unwrap_or(&m.checkpoint);
        models.push_str(&csv_line([
            m.seed.into(),
            m.label.to_string().into(),
            m.family.name().into(),
            m.density.into(),
            m.bits.into(),
            m.scheme.clone().into(),
            m.clean_accuracy.into(),
            path.display().to_string().into(),
            facts.hashes[&(m.seed, m.label.as_str())].clone().into(),
        ]));
    }
    write_text(&out.join("models.csv"), &models)?;
    let mut eps_steps = String::from(
        "seed,attack,source,source_sha256,step,steps,linf_reach,images,adv_acc_frac,\
         mean_abs_delta\n",
    );
    for c in &results.eps_steps {
        let config = AttackConfig::new(c.attack)
            .with("step", json_float(c.eps))
            .and_then(|a| a.with("steps", c.steps));
        let [_, _, sha] = facts.describe(c.seed, &c.source);
        eps_steps.push_str(&csv_line([
            c.seed.into(),
            c.attack.name().into(),
            c.source.to_string().into(),
            sha,
            json_float(c.eps),
            c.steps.into(),
            config
                .ok()
                .and_then(|a| a.linf_reach())
                .map_or(Value::Null, json_float),
            c.metrics.images.into(),
            c.metrics.adversarial_accuracy.into(),
            c.metrics.mean_abs_delta.into(),
        ]));
    }
    write_text(&out.join("eps-steps.csv"), &eps_steps)?;
    let mut cdf = String::from("seed,model,tensor,value,fraction\n");
    for s in &results.cdfs {
        for (v, f) in &s.points {
            cdf.push_str(&format!("{},{},{},{v},{f}\n", s.seed, s.label, s.tensor));
        }
    }
    write_text(&out.join("cdf.csv"), &cdf)?;
    let mut speed = String::from(
        "seed,attack,gradient,budget,source,images,seconds,images_per_second,backend,adapter\n",
    );
    for t in &results.throughput {
        speed.push_str(&format!(
            "{},{},{},{},{},{},{:.3},{:.2},{},{}\n",
            t.seed,
            t.attack,
            t.gradient,
            t.budget.map_or(String::new(), |b| b.to_string()),
            t.source,
            t.images,
            t.seconds,
            t.images as f64 / t.seconds.max(1e-9),
            t.backend,
            csv_field(&t.adapter)
        ));
    }
    write_text(&out.join("throughput.csv"), &speed)?;
    if !results.differential.is_empty() {
        let mut csv = String::from(
            "seed,attack,model,family,density,bits,model_sha256,reference,reference_sha256,\
             step,steps,budget,linf_reach,diva_weight,images,both_correct,\
             evasive_success_frac,success_frac_compressed,success_frac_reference,\
             attack_settings\n",
        );
        for d in &results.differential {
            let model = view.model(&d.model);
            let m = &d.metrics;
            let config = results.attacks.iter().find(|a| a.kind() == d.attack);
            let setting = |f: fn(&AttackConfig) -> Option<f32>| {
                config.and_then(f).map_or(Value::Null, json_float)
            };
            csv.push_str(&csv_line([
                d.seed.into(),
                d.attack.name().into(),
                d.model.to_string().into(),
                model.map_or(Value::Null, |r| r.family.name().into()),
                model.map_or(Value::Null, |r| r.density.into()),
                model.and_then(|r| r.bits).into(),
                facts.describe(d.seed, &d.model)[2].clone(),
                ModelLabel::FULL.into(),
                facts.describe(d.seed, ModelLabel::FULL)[2].clone(),
                setting(AttackConfig::step),
                config.map_or(Value::Null, |a| a.steps().into()),
                setting(AttackConfig::budget),
                setting(AttackConfig::linf_reach),
                config
                    .and_then(|a| a.settings().get("weight").cloned())
                    .unwrap_or(Value::Null),
                m.images.into(),
                m.both_correct.into(),
                m.evasive_success_rate.into(),
                m.success_rate_compressed.into(),
                m.success_rate_reference.into(),
                config.map_or(Value::Null, |a| Value::Object(a.used_parameters())),
            ]));
        }
        write_text(&out.join("differential.csv"), &csv)?;
    }
    let footer = view.footer();
    let figures = figures::draw_all(&out.join(FIGURES), &view, &labels, &footer)?;
    let paper = claims::check(&view, claims::Judge::Paper);
    let worst = claims::check(&view, claims::Judge::WorstCase);
    document::write(out, &view, &figures, &paper, &worst)
}
