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

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::Result;
use crate::attack::AttackKind;
use crate::transfer::{CellMetrics, DifferentialMetrics, Scenario};

pub use figures::{Figure, LineFigure, Panel, Point, Series, save_lines};

/// What a model of the sweep is.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Family {
    Full,
    Pruned,
    Quantised,
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

/// Figure 3: the baseline attacked by itself with one eps and one number of iterations.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct EpsStepsCell {
    pub seed: u64,
    pub attack: AttackKind,
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

/// Everything a sweep produced.
#[derive(Clone, Debug, Serialize)]
pub struct Results {
    pub title: String,
    /// The sweep config as TOML-equivalent JSON, for the report's header.
    pub config: serde_json::Value,
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

fn cells_csv(view: &View) -> String {
    let mut csv = String::from(
        "seed,attack,source,target,scenario,source_density,source_bits,target_density,\
         target_bits,images,clean_accuracy,adversarial_accuracy,adversarial_accuracy_ci_low,\
         adversarial_accuracy_ci_high,success_rate,mean_abs_delta,mean_abs_delta_ci_low,\
         mean_abs_delta_ci_high,l0,l2,linf,mean_iterations\n",
    );
    let describe = |label: &str| {
        view.model(label)
            .map_or((String::new(), String::new()), |m| {
                (
                    m.density.to_string(),
                    m.bits.map_or(String::new(), |b| b.to_string()),
                )
            })
    };
    for c in &view.results.cells {
        let m = &c.metrics;
        let (sd, sb) = describe(&c.source);
        let (td, tb) = describe(&c.target);
        let fields = [
            c.seed.to_string(),
            c.attack.to_string(),
            c.source.clone(),
            c.target.clone(),
            c.scenario.to_string(),
            sd,
            sb,
            td,
            tb,
            m.images.to_string(),
            m.clean_accuracy.to_string(),
            m.adversarial_accuracy.to_string(),
            m.adversarial_accuracy_ci[0].to_string(),
            m.adversarial_accuracy_ci[1].to_string(),
            m.success_rate.to_string(),
            m.mean_abs_delta.to_string(),
            m.mean_abs_delta_ci[0].to_string(),
            m.mean_abs_delta_ci[1].to_string(),
            m.l0.to_string(),
            m.l2.to_string(),
            m.linf.to_string(),
            m.mean_iterations.to_string(),
        ];
        let line: Vec<String> = fields.iter().map(|f| csv_field(f)).collect();
        csv.push_str(&line.join(","));
        csv.push('\n');
    }
    csv
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
    write_text(&out.join("cells.csv"), &cells_csv(&view))?;
    let jsonl: String = results
        .cells
        .iter()
        .map(|c| {
            let mut v = serde_json::to_value(c).expect("cell serialises");
            let source = view.model(&c.source);
            let target = view.model(&c.target);
            v["source_density"] = source.map(|m| m.density).into();
            v["source_bits"] = source.and_then(|m| m.bits).into();
            v["target_density"] = target.map(|m| m.density).into();
            v["target_bits"] = target.and_then(|m| m.bits).into();
            format!("{v}\n")
        })
        .collect();
    write_text(&out.join("cells.jsonl"), &jsonl)?;
    let labels = matrix_labels(&view);
    for attack in view.attacks() {
        write_text(
            &out.join(format!("matrix-{attack}.csv")),
            &matrix_csv(&view, attack, &labels),
        )?;
    }
    let mut models = String::from("seed,label,family,density,bits,clean_accuracy,checkpoint\n");
    for m in &results.models {
        models.push_str(&format!(
            "{},{},{},{},{},{},{}\n",
            m.seed,
            m.label,
            format!("{:?}", m.family).to_lowercase(),
            m.density,
            m.bits.map_or(String::new(), |b| b.to_string()),
            m.clean_accuracy,
            csv_field(&m.checkpoint.display().to_string())
        ));
    }
    write_text(&out.join("models.csv"), &models)?;
    let mut eps_steps =
        String::from("seed,attack,eps,steps,images,adversarial_accuracy,mean_abs_delta\n");
    for c in &results.eps_steps {
        eps_steps.push_str(&format!(
            "{},{},{},{},{},{},{}\n",
            c.seed,
            c.attack,
            c.eps,
            c.steps,
            c.metrics.images,
            c.metrics.adversarial_accuracy,
            c.metrics.mean_abs_delta
        ));
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
            "seed,attack,model,family,density,bits,images,both_correct,evasive_success_rate,\
             success_rate_compressed,success_rate_reference\n",
        );
        for d in &results.differential {
            let model = view.model(&d.model);
            let m = &d.metrics;
            csv.push_str(&format!(
                "{},{},{},{},{},{},{},{},{},{},{}\n",
                d.seed,
                d.attack,
                d.model,
                model.map_or(String::new(), |r| format!("{:?}", r.family).to_lowercase()),
                model.map_or(String::new(), |r| r.density.to_string()),
                model
                    .and_then(|r| r.bits)
                    .map_or(String::new(), |b| b.to_string()),
                m.images,
                m.both_correct,
                m.evasive_success_rate,
                m.success_rate_compressed,
                m.success_rate_reference
            ));
        }
        write_text(&out.join("differential.csv"), &csv)?;
    }
    let figures = figures::draw_all(&out.join("figures"), &view, &labels)?;
    let claims = claims::check(&view);
    document::write(out, &view, &figures, &claims)
}
