//! A sweep's results as files a user opens: `cells.csv` / `cells.jsonl` (one row per seed ×
//! attack × source × target), `matrix-<attack>.csv`, `models.csv`, `eps-steps.csv`,
//! `cdf.csv`, `throughput.csv`, the paper's figures (PNG and SVG) and `report.md` /
//! `report.html` (self-contained, figures inline) with the check against the paper's claims.
//!
//! Across seeds every plotted value is the mean with a 95% t-interval; with one seed it is the
//! value with its 95% bootstrap interval over the test images.

mod bitmap_text;
mod claims;
mod document;
mod figures;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::Result;
use crate::attack::{AttackConfig, AttackKind, json_float};
use crate::kernels::QuantGrad;
use crate::transfer::{CellMetrics, DifferentialMetrics, Scenario};

pub use figures::{Categories, Figure, LineFigure, Look, Panel, Point, Series, XAxis, save_lines};

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
    /// `full`, `dns0.1`, `q8`, ...
    pub label: String,
    pub family: Family,
    /// The pruning target (1 for unpruned models).
    pub density: f64,
    /// Weight and activation bitwidth of a quantised model.
    pub bits: Option<u32>,
    /// Clean accuracy on the whole test split (the paper's BASE ACC).
    pub clean_accuracy: f64,
    pub checkpoint: PathBuf,
}

/// One (attack, source, target) cell of one seed.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Cell {
    pub seed: u64,
    pub attack: AttackKind,
    pub source: String,
    pub target: String,
    pub scenario: Scenario,
    pub metrics: CellMetrics,
}

/// Figure 3: one model (the baseline or a pruned one) attacked by itself with one step size
/// and one number of iterations.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct EpsStepsCell {
    pub seed: u64,
    pub attack: AttackKind,
    /// The model attacked (cells written before Figure 3 had pruned sources are the baseline's).
    #[serde(default = "full_label")]
    pub source: String,
    pub eps: f32,
    pub steps: usize,
    pub metrics: CellMetrics,
}

fn full_label() -> String {
    "full".into()
}

/// Beyond the paper: one attack crafted on the pair (a compressed model, its baseline) and how
/// its examples split the two.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct DifferentialCell {
    pub seed: u64,
    pub attack: AttackKind,
    /// The compressed model attacked (the baseline is the reference).
    pub model: String,
    pub metrics: DifferentialMetrics,
}

/// Figure 5: the CDF of all weights or all activations of one model.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct CdfSeries {
    pub seed: u64,
    pub label: String,
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
    pub source: String,
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
    /// The settings of each attack of the sweep (the first seed's; only PGD's seed differs).
    pub attacks: Vec<AttackConfig>,
    /// Gradient through the quantisers.
    pub grad: QuantGrad,
    pub backend: String,
    pub adapter: String,
    pub models: Vec<ModelRow>,
    pub cells: Vec<Cell>,
    pub eps_steps: Vec<EpsStepsCell>,
    pub cdfs: Vec<CdfSeries>,
    pub throughput: Vec<Throughput>,
    /// Beyond the paper (empty when the sweep does not run it).
    pub differential: Vec<DifferentialCell>,
}

/// The mean and 95% interval of one value over seeds (or its bootstrap interval with one).
pub fn summarise(samples: &[(f64, [f64; 2])]) -> Point {
    let n = samples.len();
    match n {
        0 => Point::missing(),
        1 => Point::new(samples[0].0, samples[0].1[0], samples[0].1[1]),
        _ => {
            let mean = samples.iter().map(|s| s.0).sum::<f64>() / n as f64;
            let var = samples.iter().map(|s| (s.0 - mean).powi(2)).sum::<f64>() / (n - 1) as f64;
            let half = t_975(n - 1) * (var / n as f64).sqrt();
            Point::new(mean, mean - half, mean + half)
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

    /// Labels of one family in grid order: pruned by falling density, quantised by falling
    /// bitwidth.
    pub fn family(&self, family: Family) -> Vec<&'a ModelRow> {
        let mut rows: Vec<_> = self
            .models
            .values()
            .copied()
            .filter(|m| m.family == family)
            .collect();
        rows.sort_by(|a, b| {
            b.density
                .total_cmp(&a.density)
                .then(b.bits.unwrap_or(99).cmp(&a.bits.unwrap_or(99)))
        });
        rows
    }

    pub fn attacks(&self) -> Vec<AttackKind> {
        let mut out = Vec::new();
        for c in &self.results.cells {
            if !out.contains(&c.attack) {
                out.push(c.attack);
            }
        }
        out
    }

    /// One metric of the (attack, source, target) cell over seeds.
    pub fn cell(
        &self,
        attack: AttackKind,
        source: &str,
        target: &str,
        metric: fn(&CellMetrics) -> (f64, [f64; 2]),
    ) -> Point {
        let samples: Vec<_> = self
            .results
            .cells
            .iter()
            .filter(|c| c.attack == attack && c.source == source && c.target == target)
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

/// Where a scenario's cell is for a compressed model: (source, target).
pub(crate) type CellOf = fn(&str) -> (&str, &str);

/// The paper's three scenarios, with how each cell is found for a compressed model `c`.
pub(crate) const SCENARIOS: [(&str, CellOf); 3] = [
    ("1 COMP->COMP", |c| (c, c)),
    ("2 FULL->COMP", |c| ("full", c)),
    ("3 COMP->FULL", |c| (c, "full")),
];

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
const CELL_COLUMNS: [&str; 31] = [
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

/// One cell as values in [`CELL_COLUMNS`] order (`Null`: an empty CSV field).
fn cell_row(facts: &ModelFacts, c: &Cell) -> [Value; 31] {
    let r = facts.view.results;
    // The sweep's settings of this attack, with this cell's seed (PGD's random start).
    let config = r
        .attacks
        .iter()
        .find(|a| a.kind == c.attack)
        .map(|a| AttackConfig {
            seed: c.seed,
            ..a.clone()
        });
    let config = config.as_ref();
    let m = &c.metrics;
    let [sd, sb, sh] = facts.describe(c.seed, &c.source);
    let [td, tb, th] = facts.describe(c.seed, &c.target);
    let uses_step = c.attack != AttackKind::DeepFool;
    [
        c.seed.into(),
        c.attack.name().into(),
        c.scenario.number().into(),
        c.scenario.label().into(),
        c.source.clone().into(),
        sd,
        sb,
        sh,
        c.target.clone().into(),
        td,
        tb,
        th,
        config
            .filter(|_| uses_step)
            .map_or(Value::Null, |a| json_float(a.eps)),
        config.map_or(Value::Null, |a| match a.kind {
            AttackKind::DeepFool => a.max_iterations.into(),
            AttackKind::Fgsm | AttackKind::Fgm => 1.into(),
            _ => a.steps.into(),
        }),
        config
            .and_then(AttackConfig::effective_budget)
            .map_or(Value::Null, json_float),
        config
            .and_then(AttackConfig::linf_reach)
            .map_or(Value::Null, json_float),
        r.grad.to_string().into(),
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

fn matrix_csv(view: &View, attack: AttackKind, labels: &[&str]) -> String {
    let mut csv = format!("source\\target,{}\n", labels.join(","));
    for s in labels {
        let row: Vec<String> = labels
            .iter()
            .map(|t| view.cell(attack, s, t, adversarial_accuracy).y.to_string())
            .collect();
        csv.push_str(&format!("{s},{}\n", row.join(",")));
    }
    csv
}

/// Writes every result file, figure and the report into `out`; returns the report's path.
pub fn write(out: &Path, results: &Results) -> Result<PathBuf> {
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
    for attack in view.attacks() {
        write_text(
            &out.join(format!("matrix-{attack}.csv")),
            &matrix_csv(&view, attack, &labels),
        )?;
    }
    let mut models =
        String::from("seed,label,family,density,bits,clean_acc_frac,checkpoint,sha256\n");
    for m in &results.models {
        // Relative to the output folder, so the folder can be moved or shared as it is.
        let path = m.checkpoint.strip_prefix(out).unwrap_or(&m.checkpoint);
        models.push_str(&csv_line([
            m.seed.into(),
            m.label.clone().into(),
            m.family.name().into(),
            m.density.into(),
            m.bits.into(),
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
        let config = AttackConfig {
            eps: c.eps,
            steps: c.steps,
            ..AttackConfig::new(c.attack)
        };
        let [_, _, sha] = facts.describe(c.seed, &c.source);
        eps_steps.push_str(&csv_line([
            c.seed.into(),
            c.attack.name().into(),
            c.source.clone().into(),
            sha,
            json_float(c.eps),
            c.steps.into(),
            config.linf_reach().map_or(Value::Null, json_float),
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
    let mut speed =
        String::from("seed,attack,source,images,seconds,images_per_second,backend,adapter\n");
    for t in &results.throughput {
        speed.push_str(&format!(
            "{},{},{},{},{:.3},{:.2},{},{}\n",
            t.seed,
            t.attack,
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
             step,steps,budget,linf_reach,diva_weight,images,both_correct,evasive_success_frac,\
             success_frac_compressed,success_frac_reference\n",
        );
        for d in &results.differential {
            let model = view.model(&d.model);
            let m = &d.metrics;
            let config = results.attacks.iter().find(|a| a.kind == d.attack);
            let setting = |f: fn(&AttackConfig) -> Option<f32>| {
                config.and_then(f).map_or(Value::Null, json_float)
            };
            csv.push_str(&csv_line([
                d.seed.into(),
                d.attack.name().into(),
                d.model.clone().into(),
                model.map_or(Value::Null, |r| r.family.name().into()),
                model.map_or(Value::Null, |r| r.density.into()),
                model.and_then(|r| r.bits).into(),
                facts.describe(d.seed, &d.model)[2].clone(),
                "full".into(),
                facts.describe(d.seed, "full")[2].clone(),
                setting(|a| Some(a.eps)),
                config.map_or(Value::Null, |a| a.steps.into()),
                setting(AttackConfig::effective_budget),
                setting(AttackConfig::linf_reach),
                setting(|a| a.weight),
                m.images.into(),
                m.both_correct.into(),
                m.evasive_success_rate.into(),
                m.success_rate_compressed.into(),
                m.success_rate_reference.into(),
            ]));
        }
        write_text(&out.join("differential.csv"), &csv)?;
    }
    let footer = view.footer();
    let figures = figures::draw_all(&out.join("figures"), &view, &labels, &footer)?;
    let claims = claims::check(&view);
    document::write(out, &view, &figures, &claims)
}
