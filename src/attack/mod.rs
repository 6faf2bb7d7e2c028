//! Untargeted attacks on whole batches: FGSM, FGM, IFGSM (the paper's Algorithm 1), IFGM, PGD,
//! DeepFool-L2, APGD (CE or DLR loss, L-inf or L2), the Square Attack, `auto` (AutoAttack's
//! cascade, through every gradient estimator the model has), and the differential attacks on
//! a pair of models (DIVA, and its margin form on APGD's schedule).
//!
//! An attack is one file: a type implementing [`Attack`] (its name, its own typed settings with
//! their defaults written once in `Default`, what it reaches, `run` on a batch) and one line of
//! the registry at the end of this file. The registry generates [`AttackKind`] (the typed name
//! every module uses) and [`AttackConfig`] (an attack with its settings); the command line's
//! flags, the sweep config's `[attacks.<name>]` tables, the cache keys and the result files all
//! read the attacks through them. An attack's settings serialise alone, so settings of attacks
//! that do not run never reach a cache key.
//!
//! Attacks see differentiable models and nothing else: how a model was compressed (masks,
//! quantisers) is the model's business. A quantised model reaches an attack as several
//! [`View`]s, one per gradient estimator of its quantisers (STE, BPDA); a gradient attack
//! follows the first, `auto` and the margin form of DIVA try them all.
//!
//! Losses are summed over the batch, so an image's gradient does not depend on the batch size,
//! and per-image random choices are seeded by (seed, the image's index in the set), so every
//! batch size and every backend gives the same images.

mod iterative;
mod loss;

use std::fmt;
use std::str::FromStr;

use burn::prelude::*;
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

use crate::kernels::QuantGrad;
use crate::{Error, Result};

pub use iterative::GradNorm;

/// Images attacked at once where no batch size is given (`advcomp attack`, the sweep).
pub const BATCH_SIZE: usize = 256;
pub use loss::{Loss, loss_gradient};

/// A model an attack can differentiate: logits for images in [0, 1]. Gradients with respect
/// to the images must flow through it when they are autodiff tensors.
pub trait Differentiable {
    fn logits(&self, images: Tensor<4>) -> Tensor<2>;
}

impl Differentiable for crate::model::Classifier {
    fn logits(&self, images: Tensor<4>) -> Tensor<2> {
        crate::model::Classifier::logits(self, images)
    }
}

/// The model as one gradient estimator shows it: the same forward pass, the gradient its
/// quantisers pass back (`Ste` for a model without quantisers, whose gradient is exact).
#[derive(Clone, Copy)]
pub struct View<'a> {
    pub grad: QuantGrad,
    pub model: &'a dyn Differentiable,
}

/// What an attack runs on: the model under each gradient estimator it has (the first is the
/// one a single gradient attack follows), and, for the differential attacks, the reference
/// model that must stay right.
#[derive(Clone)]
pub struct Target<'a> {
    views: Vec<View<'a>>,
    reference: Option<&'a dyn Differentiable>,
}

impl<'a> Target<'a> {
    /// A model with one gradient (no quantisers, or one estimator chosen).
    pub fn new(model: &'a dyn Differentiable) -> Self {
        Self::with_views(vec![View {
            grad: QuantGrad::Ste,
            model,
        }])
    }

    /// A model under several estimators, the first the default one.
    pub fn with_views(views: Vec<View<'a>>) -> Self {
        assert!(!views.is_empty(), "a target has at least one view");
        Self {
            views,
            reference: None,
        }
    }

    /// The same target with the reference model of the differential attacks.
    pub fn with_reference(mut self, reference: &'a dyn Differentiable) -> Self {
        self.reference = Some(reference);
        self
    }

    /// The model through its first estimator.
    pub fn model(&self) -> &'a dyn Differentiable {
        self.views[0].model
    }

    pub fn views(&self) -> &[View<'a>] {
        &self.views
    }

    pub fn reference(&self) -> Option<&'a dyn Differentiable> {
        self.reference
    }
}

/// One batch to attack: images in [0, 1], their true labels, and the index of the first image
/// in the whole set (per-image random choices are seeded by it).
pub struct Batch {
    pub images: Tensor<4>,
    pub labels: Tensor<1, Int>,
    pub first_image: usize,
}

/// One stage of a cascade (`auto`, the margin form of DIVA).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Stage {
    /// APGD with this loss through this gradient estimator (`None`: the model's own
    /// gradient, it has no quantisers).
    Apgd { loss: Loss, grad: Option<QuantGrad> },
    /// The Square Attack (no gradients).
    Square,
}

impl Stage {
    /// Whether the stage follows gradients (Square does not).
    pub fn uses_gradients(self) -> bool {
        matches!(self, Stage::Apgd { .. })
    }
}

impl fmt::Display for Stage {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Stage::Apgd {
                loss,
                grad: Some(grad),
            } => write!(f, "apgd-{loss}/{grad}"),
            Stage::Apgd { loss, grad: None } => write!(f, "apgd-{loss}"),
            Stage::Square => f.write_str("square"),
        }
    }
}

impl FromStr for Stage {
    type Err = Error;
    fn from_str(text: &str) -> Result<Self> {
        if text == "square" {
            return Ok(Stage::Square);
        }
        let bad = || Error::usage(format!("unknown attack stage '{text}'"));
        let rest = text.strip_prefix("apgd-").ok_or_else(bad)?;
        let (loss, grad) = match rest.split_once('/') {
            Some((loss, grad)) => (loss, Some(grad.parse().map_err(|_| bad())?)),
            None => (rest, None),
        };
        Ok(Stage::Apgd {
            loss: loss.parse().map_err(|_| bad())?,
            grad,
        })
    }
}

serde_as_text!(Stage);

/// Images one stage fooled (of those every earlier stage left correct).
#[derive(Clone, Copy, Debug, PartialEq, Serialize, Deserialize)]
pub struct StageKills {
    pub stage: Stage,
    pub fooled: usize,
}

/// Adds `more` to `total`, stage by stage.
pub fn add_kills(total: &mut Vec<StageKills>, more: &[StageKills]) {
    for k in more {
        match total.iter_mut().find(|t| t.stage == k.stage) {
            Some(t) => t.fooled += k.fooled,
            None => total.push(*k),
        }
    }
}

/// Adversarial images of one batch, and the iterations each image took.
pub struct AttackOutput {
    pub adversarial: Tensor<4>,
    /// Iterations (or queries) per image: DeepFool's count until its label flipped, a
    /// cascade's sum over its stages, the step count for the others.
    pub iterations: Vec<usize>,
    /// A cascade's stages in order and what each fooled (empty for a single attack).
    pub stages: Vec<StageKills>,
}

impl AttackOutput {
    fn uniform(adversarial: Tensor<4>, iterations: usize) -> Self {
        let n = adversarial.dims()[0];
        Self {
            adversarial,
            iterations: vec![iterations; n],
            stages: Vec::new(),
        }
    }
}

/// The norm of a budget.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Norm {
    #[default]
    Linf,
    L2,
}

impl fmt::Display for Norm {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Norm::Linf => "linf",
            Norm::L2 => "l2",
        })
    }
}

/// How far an attack can move an image.
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub struct Reach {
    /// The largest L-inf perturbation (`None`: not bounded in L-inf, e.g. DeepFool).
    pub linf: Option<f32>,
    /// The largest L2 perturbation where the attack bounds it.
    pub l2: Option<f32>,
}

impl Reach {
    /// The reach of a budget of `norm`.
    pub fn of(norm: Norm, budget: f32) -> Self {
        match norm {
            Norm::Linf => Reach {
                linf: Some(budget),
                l2: None,
            },
            Norm::L2 => Reach {
                linf: None,
                l2: Some(budget),
            },
        }
    }
}

/// What an attack's settings amount to, in the terms result files use.
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub struct Shape {
    /// The per-iteration step (`None` where there is none).
    pub step: Option<f32>,
    /// Iterations (or queries) at most.
    pub steps: usize,
    /// The total budget it projects onto, if any.
    pub budget: Option<f32>,
    /// How far it can move an image.
    pub reach: Reach,
}

impl Shape {
    /// `steps` steps of `step`, each clipped to within `step` of the image before it, and
    /// optionally a total L-inf budget: the reach is `min(steps x step, budget)`.
    pub fn iterative(step: f32, steps: usize, budget: Option<f32>) -> Self {
        let reach = step * steps as f32;
        Shape {
            step: Some(step),
            steps,
            budget,
            reach: Reach::of(Norm::Linf, budget.map_or(reach, |b| b.min(reach))),
        }
    }

    /// A search within a budget of `norm` (required: NaN until validated), `steps` at most.
    pub fn budgeted(norm: Norm, budget: Option<f32>, steps: usize) -> Self {
        Shape {
            step: None,
            steps,
            budget,
            reach: Reach::of(norm, budget.unwrap_or(f32::NAN)),
        }
    }
}

/// A setting of an attack as the command line and the docs show it.
#[derive(Clone, Copy, Debug)]
pub struct Parameter {
    /// The settings field (and the sweep config's key).
    pub name: &'static str,
    /// The command line's flag, without `--` (the name in kebab case unless it would clash).
    pub flag: &'static str,
    pub help: &'static str,
}

/// Every setting of every attack once (by name, the first attack's help), with the attacks
/// that have it: what the command line turns into flags.
pub fn all_parameters() -> Vec<(Parameter, Vec<AttackKind>)> {
    let mut out: Vec<(Parameter, Vec<AttackKind>)> = Vec::new();
    for &kind in AttackKind::ALL {
        for p in kind.parameters() {
            match out.iter_mut().find(|(q, _)| q.name == p.name) {
                Some((_, kinds)) => kinds.push(kind),
                None => out.push((*p, vec![kind])),
            }
        }
    }
    out
}

/// The settings several attacks share, with one help text each.
pub mod parameters {
    use super::Parameter;

    pub const STEP: Parameter = Parameter {
        name: "step",
        flag: "step",
        help: "Step per iteration: the paper's eps (torchattacks' alpha). Without a budget, the \
               sign attacks reach steps x step in L-inf (12 x 0.02 = 0.24).",
    };
    pub const STEPS: Parameter = Parameter {
        name: "steps",
        flag: "steps",
        help: "Iterations of the iterative attacks.",
    };
    pub const BUDGET: Parameter = Parameter {
        name: "budget",
        flag: "budget",
        help: "Total budget around the image (torchattacks' eps): L-inf unless --norm l2. \
               APGD, Square and auto: required; an attack without a default below: none.",
    };
    pub const SEED: Parameter = Parameter {
        name: "seed",
        flag: "seed",
        help: "Seed of the random choices (PGD's and APGD's random start, Square's windows).",
    };
    pub const NORM: Parameter = Parameter {
        name: "norm",
        flag: "norm",
        help: "Norm of the budget of APGD and auto: linf or l2 (auto's Square stage is L-inf \
               only).",
    };
    pub const ITERATIONS: Parameter = Parameter {
        name: "iterations",
        flag: "iterations",
        help: "Iterations of APGD (per restart) and of DIVA's margin form.",
    };
    pub const RESTARTS: Parameter = Parameter {
        name: "restarts",
        flag: "restarts",
        help: "APGD restarts from a new random start, on the images still correct.",
    };
    pub const QUERIES: Parameter = Parameter {
        name: "queries",
        flag: "queries",
        help: "The Square Attack's query budget per image.",
    };
    pub const P_INIT: Parameter = Parameter {
        name: "p_init",
        flag: "p-init",
        help: "The Square Attack's initial fraction of pixels per square (halved on its \
               schedule).",
    };
}

/// An attack: one file implementing this, and one line of the registry below.
pub trait Attack {
    /// Its settings, with their defaults in `Default` (the paper's or the authors' values).
    /// Serialised into cache keys, result files and JSON output; read from the sweep config
    /// with unknown fields refused.
    type Settings: Clone + fmt::Debug + PartialEq + Default + Serialize + DeserializeOwned;
    /// The name users type (`--attack NAME`, `[attacks.NAME]`).
    const NAME: &'static str;
    /// One line for the help and the docs.
    const ABOUT: &'static str;
    /// Its settings, in the order they are shown.
    const PARAMETERS: &'static [Parameter];
    /// Whether it attacks a pair (the compressed model and the reference that must stay
    /// right) rather than one model.
    const NEEDS_REFERENCE: bool = false;
    /// Whether it follows the model's gradient (all but the Square Attack).
    const USES_GRADIENTS: bool = true;
    /// Whether it runs every gradient estimator of the model itself (`auto`).
    const USES_ALL_ESTIMATORS: bool = false;

    /// Refuses settings that cannot run, naming the field.
    fn validate(settings: &Self::Settings) -> Result<()>;
    /// Its step, steps, budget and reach.
    fn shape(settings: &Self::Settings) -> Shape;
    /// Rough image passes (a forward or a backward pass of one image) per attacked image of a
    /// `classes`-class model, for progress estimates.
    fn passes_per_image(settings: &Self::Settings, classes: usize) -> f64;
    /// Runs the attack on one batch, all images together on their device.
    fn run(settings: &Self::Settings, target: &Target, batch: Batch) -> Result<AttackOutput>;
}

/// Shared checks of settings, each naming its field.
pub(crate) mod check {
    use crate::limits::MAX_STEPS;
    use crate::{Error, Result};

    pub fn positive(field: &str, value: f32) -> Result<()> {
        if value > 0.0 && value.is_finite() {
            Ok(())
        } else {
            Err(Error::invalid(
                field,
                format!("must be a positive number (got {value})"),
            ))
        }
    }

    pub fn at_least_zero(field: &str, value: f32) -> Result<()> {
        if value >= 0.0 && value.is_finite() {
            Ok(())
        } else {
            Err(Error::invalid(
                field,
                format!("must be a number of at least 0 (got {value})"),
            ))
        }
    }

    pub fn count(field: &str, value: usize) -> Result<()> {
        if (1..=MAX_STEPS).contains(&value) {
            Ok(())
        } else {
            Err(Error::invalid(
                field,
                format!("must be between 1 and {MAX_STEPS} (got {value})"),
            ))
        }
    }

    pub fn budget(value: Option<f32>) -> Result<()> {
        value.map_or(Ok(()), |b| positive("budget", b))
    }

    /// A budget the attack cannot run without.
    pub fn required_budget(attack: &str, value: Option<f32>) -> Result<f32> {
        let b = value.ok_or_else(|| {
            Error::invalid(
                "budget",
                format!("{attack} needs a budget (the robustness it measures is at one budget)"),
            )
        })?;
        positive("budget", b)?;
        Ok(b)
    }
}

/// A float as the user wrote it (`0.02`, not the f32's `0.019999999552965164`), for JSON and
/// result files.
pub fn json_float(v: f32) -> Value {
    Value::from(v.to_string().parse::<f64>().unwrap_or(f64::NAN))
}

/// Generates [`AttackKind`] and [`AttackConfig`] from the list of attacks.
macro_rules! registry {
    ($($kind:ident => $module:ident :: $attack:ident,)*) => {
        $(mod $module;)*

        /// The attacks.
        #[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
        pub enum AttackKind {
            $($kind,)*
        }

        impl AttackKind {
            pub const ALL: &[AttackKind] = &[$(AttackKind::$kind,)*];

            pub fn name(self) -> &'static str {
                match self {
                    $(AttackKind::$kind => <$module::$attack as Attack>::NAME,)*
                }
            }

            pub fn about(self) -> &'static str {
                match self {
                    $(AttackKind::$kind => <$module::$attack as Attack>::ABOUT,)*
                }
            }

            /// Its settings, in the order they are shown.
            pub fn parameters(self) -> &'static [Parameter] {
                match self {
                    $(AttackKind::$kind => <$module::$attack as Attack>::PARAMETERS,)*
                }
            }

            /// Whether it attacks a pair: the model attacked and a reference that must stay
            /// right.
            pub fn needs_reference(self) -> bool {
                match self {
                    $(AttackKind::$kind => <$module::$attack as Attack>::NEEDS_REFERENCE,)*
                }
            }

            /// Whether it follows the model's gradient.
            pub fn uses_gradients(self) -> bool {
                match self {
                    $(AttackKind::$kind => <$module::$attack as Attack>::USES_GRADIENTS,)*
                }
            }

            /// Whether it runs every gradient estimator of the model itself.
            pub fn uses_all_estimators(self) -> bool {
                match self {
                    $(AttackKind::$kind => <$module::$attack as Attack>::USES_ALL_ESTIMATORS,)*
                }
            }
        }

        /// An attack with its settings.
        #[derive(Clone, Debug, PartialEq)]
        pub enum AttackConfig {
            $($kind(<$module::$attack as Attack>::Settings),)*
        }

        impl AttackConfig {
            /// `kind` with its default settings.
            pub fn new(kind: AttackKind) -> Self {
                match kind {
                    $(AttackKind::$kind => AttackConfig::$kind(Default::default()),)*
                }
            }

            pub fn kind(&self) -> AttackKind {
                match self {
                    $(AttackConfig::$kind(_) => AttackKind::$kind,)*
                }
            }

            /// The settings alone, as a JSON object, floats as written (settings' floats are
            /// f32: 0.02, not the f64 0.019999999552965164 serde_json would make of it).
            pub fn settings(&self) -> Map<String, Value> {
                let value = match self {
                    $(AttackConfig::$kind(s) => serde_json::to_value(s),)*
                }
                .expect("settings serialise");
                match value {
                    Value::Object(map) => map
                        .into_iter()
                        .map(|(k, v)| match v.as_f64() {
                            Some(x) if v.is_f64() => (k, json_float(x as f32)),
                            _ => (k, v),
                        })
                        .collect(),
                    _ => unreachable!("settings are structs"),
                }
            }

            /// `kind` with `settings` (a JSON object of its fields; absent ones take their
            /// defaults), refusing unknown fields and values of the wrong type by name.
            pub fn from_settings(kind: AttackKind, settings: Map<String, Value>) -> Result<Self> {
                let known = kind.parameters();
                if let Some(name) = settings.keys().find(|k| !known.iter().any(|p| p.name == *k)) {
                    return Err(Error::invalid(
                        name.clone(),
                        format!(
                            "is not a setting of {kind} (its settings: {})",
                            if known.is_empty() {
                                "none".to_string()
                            } else {
                                known.iter().map(|p| p.name).collect::<Vec<_>>().join(", ")
                            }
                        ),
                    ));
                }
                let parse = |given: &Map<String, Value>| {
                    let mut all = AttackConfig::new(kind).settings();
                    all.extend(given.clone());
                    match kind {
                        $(AttackKind::$kind => serde_json::from_value(Value::Object(all))
                            .map(AttackConfig::$kind),)*
                    }
                };
                parse(&settings).map_err(|e| {
                    // The field whose value does not fit: the first that fails on its own.
                    let field = settings
                        .iter()
                        .find(|(k, v)| {
                            parse(&Map::from_iter([((*k).clone(), (*v).clone())])).is_err()
                        })
                        .map_or_else(|| "settings".to_string(), |(k, _)| k.clone());
                    Error::invalid(field, format!("{kind}: {e}"))
                })
            }

            pub fn validate(&self) -> Result<()> {
                match self {
                    $(AttackConfig::$kind(s) => <$module::$attack as Attack>::validate(s),)*
                }
            }

            /// Its step, steps, budget and reach.
            pub fn shape(&self) -> Shape {
                match self {
                    $(AttackConfig::$kind(s) => <$module::$attack as Attack>::shape(s),)*
                }
            }

            pub fn passes_per_image(&self, classes: usize) -> f64 {
                match self {
                    $(AttackConfig::$kind(s) =>
                        <$module::$attack as Attack>::passes_per_image(s, classes),)*
                }
            }

            /// Runs the attack on one batch (after checking its settings).
            pub fn run(&self, target: &Target, batch: Batch) -> Result<AttackOutput> {
                self.validate()?;
                if self.kind().needs_reference() && target.reference().is_none() {
                    return Err(Error::invalid(
                        "attack",
                        format!(
                            "{} attacks a pair: the compressed model and the full model it \
                             must leave right",
                            self.kind()
                        ),
                    ));
                }
                match self {
                    $(AttackConfig::$kind(s) => <$module::$attack as Attack>::run(s, target, batch),)*
                }
            }
        }
    };
}

registry! {
    Fgsm => fgsm::Fgsm,
    Fgm => fgm::Fgm,
    Ifgsm => ifgsm::Ifgsm,
    Ifgm => ifgm::Ifgm,
    Pgd => pgd::Pgd,
    DeepFool => deepfool::DeepFool,
    Apgd => apgd::Apgd,
    Square => square::Square,
    Auto => auto::Auto,
    Diva => diva::Diva,
    DivaMargin => diva_margin::DivaMargin,
}

impl fmt::Display for AttackKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.pad(self.name())
    }
}

serde_as_text!(AttackKind);

impl FromStr for AttackKind {
    type Err = Error;
    fn from_str(s: &str) -> Result<Self> {
        AttackKind::ALL
            .iter()
            .copied()
            .find(|k| k.name() == s.to_ascii_lowercase())
            .ok_or_else(|| {
                Error::usage(format!(
                    "unknown attack '{s}' (expected {})",
                    AttackKind::ALL
                        .iter()
                        .map(|k| k.name())
                        .collect::<Vec<_>>()
                        .join(", ")
                ))
            })
    }
}

/// `{"attack": NAME, ...its settings}`: what cache keys hash and result files record.
impl Serialize for AttackConfig {
    fn serialize<S: serde::Serializer>(&self, s: S) -> std::result::Result<S::Ok, S::Error> {
        // `attack` first, then the settings (serde_json's own map would sort the keys).
        use serde::ser::SerializeMap;
        let settings = self.settings();
        let mut out = s.serialize_map(Some(settings.len() + 1))?;
        out.serialize_entry("attack", self.kind().name())?;
        for (k, v) in &settings {
            out.serialize_entry(k, v)?;
        }
        out.end()
    }
}

impl<'de> Deserialize<'de> for AttackConfig {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> std::result::Result<Self, D::Error> {
        use serde::de::Error as _;
        let mut map = Map::<String, Value>::deserialize(d)?;
        let kind: AttackKind = match map.remove("attack") {
            Some(Value::String(name)) => name.parse().map_err(D::Error::custom)?,
            _ => return Err(D::Error::custom("an attack config names its attack")),
        };
        AttackConfig::from_settings(kind, map).map_err(D::Error::custom)
    }
}

impl AttackConfig {
    pub fn reach(&self) -> Reach {
        self.shape().reach
    }

    /// The per-iteration step, where there is one.
    pub fn step(&self) -> Option<f32> {
        self.shape().step
    }

    /// Iterations (or queries) at most.
    pub fn steps(&self) -> usize {
        self.shape().steps
    }

    /// The total budget the attack projects onto, if any.
    pub fn budget(&self) -> Option<f32> {
        self.shape().budget
    }

    /// The same attack with one setting changed (refused by name when the attack has no such
    /// setting or the value does not fit).
    pub fn with(self, name: &str, value: impl Into<Value>) -> Result<Self> {
        let mut settings = self.settings();
        settings.insert(name.to_string(), value.into());
        AttackConfig::from_settings(self.kind(), settings)
    }

    /// The largest L-inf perturbation the attack can reach (`None`: unbounded in L-inf).
    pub fn linf_reach(&self) -> Option<f32> {
        self.reach().linf
    }

    /// The attack and its settings by name, with floats as written (0.02, not
    /// 0.019999999552965164) and its L-inf reach: what JSON output and reports show.
    pub fn used_parameters(&self) -> Map<String, Value> {
        let mut out = Map::new();
        out.insert("attack".into(), self.kind().name().into());
        out.extend(self.settings());
        if let Some(r) = self.linf_reach() {
            out.insert("linf_reach".into(), json_float(r));
        }
        if let Some(r) = self.reach().l2 {
            out.insert("l2_reach".into(), json_float(r));
        }
        out
    }

    /// The attack's settings in a line (the CLI prints it, the report's header lists it):
    /// `ifgsm: step 0.02 x 12 steps, L-inf reach 0.24`.
    pub fn describe(&self) -> String {
        let used = self.used_parameters();
        let text = |v: &Value| v.to_string().replace('"', "");
        let mut parts = Vec::new();
        match (used.get("step"), used.get("steps")) {
            (Some(step), Some(steps)) => {
                parts.push(format!("step {} x {} steps", text(step), text(steps)))
            }
            (Some(step), None) => parts.push(format!("step {}", text(step))),
            _ => {}
        }
        for p in self.kind().parameters() {
            if matches!(p.name, "step" | "steps") {
                continue;
            }
            if let Some(v) = used.get(p.name) {
                parts.push(format!("{} {}", p.name.replace('_', " "), text(v)));
            }
        }
        parts.push(match (self.reach().linf, self.reach().l2) {
            (Some(r), _) => format!("L-inf reach {r}"),
            (None, Some(r)) => format!("L2 reach {r}"),
            (None, None) if self.kind() == AttackKind::DeepFool => {
                "L-inf reach: until the label flips".into()
            }
            (None, None) => "L-inf reach: unbounded (give --budget)".into(),
        });
        format!("{}: {}", self.kind(), parts.join(", "))
    }
}

/// Runs `config` on one batch of `model` through its first (or only) gradient: the
/// single-model form of [`AttackConfig::run`]. `first_image` is the batch's first image's
/// index in the whole set.
pub fn attack(
    model: &impl Differentiable,
    images: Tensor<4>,
    labels: Tensor<1, Int>,
    config: &AttackConfig,
    first_image: usize,
) -> Result<AttackOutput> {
    config.run(
        &Target::new(model),
        Batch {
            images,
            labels,
            first_image,
        },
    )
}

/// Runs `config` on `model` with `reference` beside it (the differential attacks craft on the
/// pair; any other attack ignores the reference).
pub fn attack_pair(
    model: &impl Differentiable,
    reference: &impl Differentiable,
    images: Tensor<4>,
    labels: Tensor<1, Int>,
    config: &AttackConfig,
    first_image: usize,
) -> Result<AttackOutput> {
    config.run(
        &Target::new(model).with_reference(reference),
        Batch {
            images,
            labels,
            first_image,
        },
    )
}

pub use diva::differential_gradient;

/// Host copies of small per-image tensors.
pub(crate) fn host_f32<const D: usize>(t: Tensor<D>) -> Vec<f32> {
    t.into_data()
        .convert::<f32>()
        .try_to_vec::<f32>()
        .expect("f32 data")
}

pub(crate) fn host_i64<const D: usize>(t: Tensor<D, Int>) -> Vec<i64> {
    t.into_data()
        .convert::<i64>()
        .try_to_vec::<i64>()
        .expect("integer data")
}

/// A per-image random generator: seeded by (seed, stream, the image's index in the set), so
/// any batch size and any backend draw the same numbers for the same image.
pub(crate) fn image_rng(seed: u64, stream: u64, image: usize) -> rand::rngs::StdRng {
    use rand::SeedableRng;
    rand::rngs::StdRng::seed_from_u64(crate::stable_hash64([
        &seed.to_le_bytes()[..],
        &stream.to_le_bytes()[..],
        &(image as u64).to_le_bytes()[..],
    ]))
}

/// `if_true` where `rows[i]` holds, `if_false` elsewhere (rows along the first dimension).
pub(crate) fn select_rows(rows: &[bool], if_true: Tensor<4>, if_false: Tensor<4>) -> Tensor<4> {
    let dims = if_true.dims();
    let device = if_true.device();
    let mask = Tensor::<1, Bool>::from_data(TensorData::new(rows.to_vec(), [rows.len()]), &device)
        .reshape([dims[0], 1, 1, 1])
        .expand(dims);
    if_false.mask_where(mask, if_true)
}
