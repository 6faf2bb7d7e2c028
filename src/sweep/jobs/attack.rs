//! One row of the transfer matrix: an adversarial set crafted on one source model (or read
//! back where it is stored) and evaluated on every target; and the set's timing file.

use std::path::{Path, PathBuf};

use serde::Serialize;

use super::{Work, read_json, write_json};
use crate::Result;
use crate::attack::AttackConfig;
use crate::kernels::QuantGrad;
use crate::report::{Cell, Family, Results, Throughput};
use crate::sweep::context::Context;
use crate::transfer::{self, Gradient, Scenario};

/// Craft one adversarial set on the first `images` test images of `source`, its quantisers
/// passing gradients by `grad` (or read it back from `set`), and evaluate it on every target:
/// the set and its cells are written by this job alone. Cells without files (`cells: None`)
/// are kept in memory for the plan's last job.
pub(in crate::sweep) struct Attack {
    pub source: usize,
    pub targets: Vec<usize>,
    pub config: AttackConfig,
    pub grad: QuantGrad,
    pub images: usize,
    pub set: Option<PathBuf>,
    pub cells: Option<Vec<PathBuf>>,
}

impl Work for Attack {
    /// The set (made once, or read back when stored) on every target.
    fn run(&self, context: &Context) -> Result<String> {
        let (config, cells) = (&self.config, self.cells.as_deref());
        let (set, what) = match self.set.as_deref() {
            Some(path) if path.exists() => {
                let mut set = transfer::load(path, &context.test()?.images, self.images)?;
                set.seconds = read_timing(path).seconds;
                let what = format!(
                    "{} images, reusing the stored set {}",
                    set.len(),
                    path.display()
                );
                (set, what)
            }
            set_path => {
                let set = context.craft(self.source, None, config, self.grad, self.images)?;
                if let Some(path) = set_path {
                    transfer::save(path, &set)?;
                }
                // The sweep's throughput table reads the timing; the transfer command's cache
                // (cells in memory) holds the sets alone.
                if let (Some(path), Some(_)) = (set_path, cells) {
                    let timing = Timing {
                        seconds: set.seconds,
                        backend: context.backend().name.into(),
                        adapter: context.backend().adapter.clone(),
                    };
                    write_json(&timing_path(path), &timing)?;
                }
                let what = format!(
                    "{} images, {:.1} images/s (batch {}, {})",
                    set.len(),
                    set.images_per_second(),
                    context.test()?.batch_size,
                    context.backend()
                );
                (set, what)
            }
        };
        let source_spec = context.spec(self.source);
        let source_model = context.model(self.source)?;
        for (i, &target) in self.targets.iter().enumerate() {
            let file = cells.map(|c| &c[i]);
            if file.is_some_and(|f| f.exists()) {
                continue;
            }
            let target_model = context.model(target)?;
            let target_spec = context.spec(target);
            let metrics = context.evaluate(target, &set)?;
            let cell = Cell {
                seed: source_spec.seed,
                attack: config.kind(),
                gradient: set.diagnostics.gradient,
                budget: config.budget(),
                source: source_spec.label.clone(),
                target: target_spec.label.clone(),
                scenario: Scenario::of(
                    source_model.family != Family::Full,
                    target_model.family != Family::Full,
                    source_spec.path == target_spec.path,
                ),
                metrics,
            };
            match file {
                Some(file) => write_json(file, &cell)?,
                None => context.outcome.borrow_mut().cells.push(cell),
            }
        }
        Ok(what)
    }

    /// The cells, and the set's throughput.
    fn results(&self, context: &Context, results: &mut Results) -> Result<()> {
        let config = &self.config;
        for file in self.cells.iter().flatten() {
            results.cells.push(read_json::<Cell>(file)?);
        }
        let spec = context.spec(self.source);
        let timing = self.set.as_deref().map(read_timing).unwrap_or_default();
        results.throughput.push(Throughput {
            seed: spec.seed,
            attack: config.kind(),
            gradient: gradient(context, self.source, config, self.grad)?,
            budget: config.budget(),
            source: spec.label.clone(),
            images: self.images,
            seconds: timing.seconds,
            backend: timing.backend,
            adapter: timing.adapter,
        });
        Ok(())
    }
}

/// The gradient `config` follows through model `index`'s quantisers when they pass it by
/// `grad` (what [`transfer::craft`] records in the set).
fn gradient(
    context: &Context,
    index: usize,
    config: &AttackConfig,
    grad: QuantGrad,
) -> Result<Gradient> {
    let kind = config.kind();
    let quantised = context
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
