//! The quantisers: fixed point Q(W, P) (the paper's) and affine integer quantisation (what
//! ONNX Runtime, PyTorch and TFLite ship), each one file behind [`Quantiser`] and one line of
//! the registry at the end of this file.
//!
//! A quantiser turns its typed settings into [`Grid`]s — for each weight (it sees the weight's
//! shape and output axis, so it can quantise per channel), each bias, and each activation site
//! (from calibration samples when its grids depend on the data) — and says where activations
//! are quantised ([`Sites`]). The one quantiser kernel (`kernels::quantise`) applies any grid;
//! models, fine-tuning, checkpoints, the sweep and the report read quantisers through
//! [`QuantKind`] and [`QuantConfig`], never by their concrete types.

mod affine;
mod fixed_point;

use std::collections::BTreeMap;
use std::fmt;
use std::str::FromStr;

use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

pub use affine::{Affine, AffineSettings, Calibration, IntType};
pub use fixed_point::{FixedPoint, FixedPointSettings};

pub use crate::kernels::Grid;
use crate::{Error, Result};

/// Where a quantiser quantises activations.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Sites {
    /// The output of every nonlinearity (after ReLU, batch norm + ReLU, ...) and the logits:
    /// the paper's rule.
    Outputs,
    /// The input of every weight layer (Conv, Gemm, MatMul) and the logits: ONNX Runtime's QDQ
    /// format, where each Conv/Gemm reads a dequantised input and its int32 bias has the scale
    /// input scale × weight scale.
    Inputs,
}

/// The activation site of a weight layer's input under [`Sites::Inputs`].
pub fn input_site(layer: &str) -> String {
    format!("{layer}:input")
}

/// A weight as a quantiser sees it.
pub struct WeightView<'a> {
    pub layer: &'a str,
    /// Its shape (burn's layout for the built-in models, ONNX's for imported ones).
    pub shape: &'a [usize],
    /// The axis of its output channels (0 for [out, in, kh, kw] and [out, in]; 1 for burn's
    /// [in, out] linear weights).
    pub out_axis: usize,
    /// Its values (masked, when pruned), row-major.
    pub values: &'a [f32],
}

/// A quantiser: one file implementing this, and one line of the registry below.
pub trait Quantiser {
    /// Its settings, with their defaults in `Default`; serialised into cache keys, checkpoint
    /// records and result files, read from the sweep config with unknown fields refused.
    type Settings: Clone + fmt::Debug + PartialEq + Default + Serialize + DeserializeOwned;
    /// The name users type (`kind = "affine"` in a sweep's grid).
    const NAME: &'static str;
    /// One line for the help and the docs.
    const ABOUT: &'static str;
    /// Whether its grids depend on the data (calibrated activations, per-weight scales): they
    /// are then computed by calibration, refreshed during fine-tuning and stored in the
    /// checkpoint; otherwise every grid follows from the settings alone.
    const DATA_DEPENDENT: bool;

    /// Refuses settings that cannot run, naming the field.
    fn validate(settings: &Self::Settings) -> Result<()>;
    /// A model's label in a sweep (`q8`, `int8-pc`): short, unique per settings the grid
    /// varies, fit for file names.
    fn label(settings: &Self::Settings) -> String;
    /// The family of schemes it belongs to, as the report's legends name them (`fixed point
    /// Q(W P)`, `affine per channel`): one curve against bits per scheme; no commas (it is a
    /// CSV field).
    fn scheme(settings: &Self::Settings) -> String;
    /// The width of its weights (the report's x axis), `None` for float weights.
    fn bits(settings: &Self::Settings) -> Option<u32>;
    /// Its settings in a line (`weights Q(8,2), activations Q(8,2)`).
    fn describe(settings: &Self::Settings) -> String;
    fn sites(settings: &Self::Settings) -> Sites;
    /// Whether it quantises weights, and activations.
    fn quantises(settings: &Self::Settings) -> (bool, bool);
    /// Training images its activation calibration runs on, and their seed (`None`: it needs
    /// none).
    fn calibration(settings: &Self::Settings) -> Option<(usize, u64)>;
    /// The grid of a weight.
    fn weight_grid(settings: &Self::Settings, weight: &WeightView) -> Option<Grid>;
    /// The grid of a bias, given its weight's grid and its layer's input grid (when the input
    /// is quantised, as under [`Sites::Inputs`]).
    fn bias_grid(
        settings: &Self::Settings,
        weight: Option<&Grid>,
        input: Option<&Grid>,
    ) -> Option<Grid>;
    /// The grid of an activation site, from its calibration samples (empty when the
    /// quantiser needs none).
    fn activation_grid(settings: &Self::Settings, samples: &[f32]) -> Result<Option<Grid>>;
    /// Whether the settings stand for grids imported from a file (a QDQ model), which the
    /// quantiser does not make: such a quantiser compresses nothing.
    fn imported(_settings: &Self::Settings) -> bool {
        false
    }
}

/// Every grid of a quantised model that is not the same for every layer: by weight layer, by
/// bias layer, by activation site. What a data-dependent quantiser's checkpoint stores.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Grids {
    #[serde(skip_serializing_if = "BTreeMap::is_empty")]
    pub weights: BTreeMap<String, Grid>,
    #[serde(skip_serializing_if = "BTreeMap::is_empty")]
    pub biases: BTreeMap<String, Grid>,
    #[serde(skip_serializing_if = "BTreeMap::is_empty")]
    pub activations: BTreeMap<String, Grid>,
}

impl Grids {
    pub fn is_empty(&self) -> bool {
        self.weights.is_empty() && self.biases.is_empty() && self.activations.is_empty()
    }
}

/// Generates [`QuantKind`] and [`QuantConfig`] from the list of quantisers.
macro_rules! registry {
    ($($kind:ident => $module:ident :: $quantiser:ident,)*) => {
        /// The quantisers.
        #[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
        pub enum QuantKind {
            $($kind,)*
        }

        impl QuantKind {
            pub const ALL: &[QuantKind] = &[$(QuantKind::$kind,)*];

            pub fn name(self) -> &'static str {
                match self {
                    $(QuantKind::$kind => <$module::$quantiser as Quantiser>::NAME,)*
                }
            }

            pub fn about(self) -> &'static str {
                match self {
                    $(QuantKind::$kind => <$module::$quantiser as Quantiser>::ABOUT,)*
                }
            }

            pub fn data_dependent(self) -> bool {
                match self {
                    $(QuantKind::$kind => <$module::$quantiser as Quantiser>::DATA_DEPENDENT,)*
                }
            }
        }

        /// A quantiser with its settings.
        #[derive(Clone, Debug, PartialEq)]
        pub enum QuantConfig {
            $($kind(<$module::$quantiser as Quantiser>::Settings),)*
        }

        impl QuantConfig {
            /// `kind` with its default settings.
            pub fn new(kind: QuantKind) -> Self {
                match kind {
                    $(QuantKind::$kind => QuantConfig::$kind(Default::default()),)*
                }
            }

            pub fn kind(&self) -> QuantKind {
                match self {
                    $(QuantConfig::$kind(_) => QuantKind::$kind,)*
                }
            }

            /// The settings alone, as a JSON object.
            pub fn settings(&self) -> Map<String, Value> {
                let value = match self {
                    $(QuantConfig::$kind(s) => serde_json::to_value(s),)*
                }
                .expect("settings serialise");
                match value {
                    Value::Object(map) => map,
                    _ => unreachable!("settings are structs"),
                }
            }

            /// `kind` with `settings` (absent fields take their defaults), refusing unknown
            /// fields and values of the wrong type.
            pub fn from_settings(kind: QuantKind, settings: Map<String, Value>) -> Result<Self> {
                let config = match kind {
                    $(QuantKind::$kind => serde_json::from_value(Value::Object(settings))
                        .map(QuantConfig::$kind),)*
                }
                .map_err(|e| Error::invalid("quantiser", format!("{kind}: {e}")))?;
                config.validate()?;
                Ok(config)
            }

            pub fn validate(&self) -> Result<()> {
                match self {
                    $(QuantConfig::$kind(s) => <$module::$quantiser as Quantiser>::validate(s),)*
                }
            }

            pub fn label(&self) -> String {
                match self {
                    $(QuantConfig::$kind(s) => <$module::$quantiser as Quantiser>::label(s),)*
                }
            }

            pub fn scheme(&self) -> String {
                match self {
                    $(QuantConfig::$kind(s) => <$module::$quantiser as Quantiser>::scheme(s),)*
                }
            }

            pub fn bits(&self) -> Option<u32> {
                match self {
                    $(QuantConfig::$kind(s) => <$module::$quantiser as Quantiser>::bits(s),)*
                }
            }

            pub fn describe(&self) -> String {
                match self {
                    $(QuantConfig::$kind(s) => <$module::$quantiser as Quantiser>::describe(s),)*
                }
            }

            pub fn sites(&self) -> Sites {
                match self {
                    $(QuantConfig::$kind(s) => <$module::$quantiser as Quantiser>::sites(s),)*
                }
            }

            /// Whether it quantises weights, and activations.
            pub fn quantises(&self) -> (bool, bool) {
                match self {
                    $(QuantConfig::$kind(s) => <$module::$quantiser as Quantiser>::quantises(s),)*
                }
            }

            pub fn calibration(&self) -> Option<(usize, u64)> {
                match self {
                    $(QuantConfig::$kind(s) => <$module::$quantiser as Quantiser>::calibration(s),)*
                }
            }

            pub fn weight_grid(&self, weight: &WeightView) -> Option<Grid> {
                match self {
                    $(QuantConfig::$kind(s) =>
                        <$module::$quantiser as Quantiser>::weight_grid(s, weight),)*
                }
            }

            pub fn bias_grid(&self, weight: Option<&Grid>, input: Option<&Grid>) -> Option<Grid> {
                match self {
                    $(QuantConfig::$kind(s) =>
                        <$module::$quantiser as Quantiser>::bias_grid(s, weight, input),)*
                }
            }

            pub fn imported(&self) -> bool {
                match self {
                    $(QuantConfig::$kind(s) => <$module::$quantiser as Quantiser>::imported(s),)*
                }
            }

            pub fn activation_grid(&self, samples: &[f32]) -> Result<Option<Grid>> {
                match self {
                    $(QuantConfig::$kind(s) =>
                        <$module::$quantiser as Quantiser>::activation_grid(s, samples),)*
                }
            }
        }
    };
}

// Adding a quantiser: a file implementing `Quantiser` (and its kernel, if the grid kernel
// cannot express it), and its line here.
registry! {
    Fixed => fixed_point::FixedPoint,
    Affine => affine::Affine,
}

impl QuantConfig {
    /// The grid every layer's weights share when it does not depend on the data (fixed
    /// point), for a weight of any shape.
    pub fn uniform_weight_grid(&self) -> Option<Grid> {
        if self.kind().data_dependent() {
            return None;
        }
        self.weight_grid(&WeightView {
            layer: "",
            shape: &[],
            out_axis: 0,
            values: &[],
        })
    }

    /// The grid every activation site shares when it does not depend on the data.
    pub fn uniform_activation_grid(&self) -> Option<Grid> {
        match self.kind().data_dependent() {
            true => None,
            false => self.activation_grid(&[]).ok().flatten(),
        }
    }
}

impl fmt::Display for QuantKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.pad(self.name())
    }
}

serde_as_text!(QuantKind);

impl FromStr for QuantKind {
    type Err = Error;
    fn from_str(s: &str) -> Result<Self> {
        QuantKind::ALL
            .iter()
            .copied()
            .find(|k| k.name() == s.to_ascii_lowercase())
            .ok_or_else(|| {
                Error::usage(format!(
                    "unknown quantiser '{s}' (expected {})",
                    QuantKind::ALL
                        .iter()
                        .map(|k| k.name())
                        .collect::<Vec<_>>()
                        .join(", ")
                ))
            })
    }
}

impl fmt::Display for QuantConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.describe())
    }
}

kind_with_settings_serde!(QuantConfig, QuantKind);
