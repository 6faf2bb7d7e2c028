//! The pruners: dynamic network surgery (DNS, the paper's) and magnitude pruning, each one
//! file behind [`Pruner`] and one line of the registry at the end of this file.
//!
//! A pruner has its own typed settings (its target density among them), says when masks
//! change while the model is fine-tuned ([`Pruner::density_at`]), and computes one layer's
//! mask from its weights ([`Pruner::mask`]). Fine-tuning, checkpoints, the sweep and the
//! report read pruners through [`PruneKind`] and [`PruneConfig`].

mod dns;
mod magnitude;

use std::fmt;
use std::str::FromStr;

use burn::prelude::*;
use serde::Serialize;
use serde::de::DeserializeOwned;
use serde_json::{Map, Value};

pub use dns::DnsSettings;
pub use magnitude::MagnitudeSettings;

use crate::{Error, Result};

/// A pruner: one file implementing this, and one line of the registry below.
pub trait Pruner {
    /// Its settings, with their defaults in `Default`; serialised into cache keys and
    /// checkpoint records.
    type Settings: Clone + fmt::Debug + PartialEq + Default + Serialize + DeserializeOwned;
    /// The name users type (`--prune dns`, `grid.pruner = "dns"`).
    const NAME: &'static str;
    const ABOUT: &'static str;

    /// Refuses settings that cannot run, naming the field.
    fn validate(settings: &Self::Settings) -> Result<()>;
    /// The target density (kept / all weights) of every layer, in (0, 1].
    fn density(settings: &Self::Settings) -> f64;
    /// The density the masks are set to before fine-tuning step `step` of `total` (`total` 0:
    /// no fine-tuning; step 0 always has one), `None` where they stay as they are.
    fn density_at(settings: &Self::Settings, step: usize, total: usize) -> Option<f64>;
    /// A layer's mask (1.0 kept, 0.0 pruned) at `density`, from its flat `weights` and its
    /// `current` mask (all kept when `None`), and the pruner's threshold parameter where it has
    /// one (DNS's alpha).
    fn mask(
        settings: &Self::Settings,
        weights: &Tensor<1>,
        current: Option<&Tensor<1>>,
        density: f64,
    ) -> (Tensor<1>, Option<f64>);
}

/// Generates [`PruneKind`] and [`PruneConfig`] from the list of pruners.
macro_rules! registry {
    ($($kind:ident => $module:ident :: $pruner:ident,)*) => {
        /// The pruners.
        #[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
        pub enum PruneKind {
            $($kind,)*
        }

        impl PruneKind {
            pub const ALL: &[PruneKind] = &[$(PruneKind::$kind,)*];

            pub fn name(self) -> &'static str {
                match self {
                    $(PruneKind::$kind => <$module::$pruner as Pruner>::NAME,)*
                }
            }

            pub fn about(self) -> &'static str {
                match self {
                    $(PruneKind::$kind => <$module::$pruner as Pruner>::ABOUT,)*
                }
            }
        }

        /// A pruner with its settings.
        #[derive(Clone, Debug, PartialEq)]
        pub enum PruneConfig {
            $($kind(<$module::$pruner as Pruner>::Settings),)*
        }

        impl PruneConfig {
            /// `kind` with its default settings.
            pub fn new(kind: PruneKind) -> Self {
                match kind {
                    $(PruneKind::$kind => PruneConfig::$kind(Default::default()),)*
                }
            }

            pub fn kind(&self) -> PruneKind {
                match self {
                    $(PruneConfig::$kind(_) => PruneKind::$kind,)*
                }
            }

            /// The settings alone, as a JSON object.
            pub fn settings(&self) -> Map<String, Value> {
                let value = match self {
                    $(PruneConfig::$kind(s) => serde_json::to_value(s),)*
                }
                .expect("settings serialise");
                match value {
                    Value::Object(map) => map,
                    _ => unreachable!("settings are structs"),
                }
            }

            /// `kind` with `settings` (absent fields take their defaults), refusing unknown
            /// fields and values of the wrong type.
            pub fn from_settings(kind: PruneKind, settings: Map<String, Value>) -> Result<Self> {
                match kind {
                    $(PruneKind::$kind => serde_json::from_value(Value::Object(settings))
                        .map(PruneConfig::$kind),)*
                }
                .map_err(|e| Error::invalid("pruner", format!("{kind}: {e}")))
            }

            pub fn validate(&self) -> Result<()> {
                match self {
                    $(PruneConfig::$kind(s) => <$module::$pruner as Pruner>::validate(s),)*
                }
            }

            pub fn density(&self) -> f64 {
                match self {
                    $(PruneConfig::$kind(s) => <$module::$pruner as Pruner>::density(s),)*
                }
            }

            pub fn density_at(&self, step: usize, total: usize) -> Option<f64> {
                match self {
                    $(PruneConfig::$kind(s) =>
                        <$module::$pruner as Pruner>::density_at(s, step, total),)*
                }
            }

            pub fn mask(
                &self,
                weights: &Tensor<1>,
                current: Option<&Tensor<1>>,
                density: f64,
            ) -> (Tensor<1>, Option<f64>) {
                match self {
                    $(PruneConfig::$kind(s) =>
                        <$module::$pruner as Pruner>::mask(s, weights, current, density),)*
                }
            }
        }
    };
}

// Adding a pruner: a file implementing `Pruner`, and its line here.
registry! {
    Dns => dns::Dns,
    Magnitude => magnitude::Magnitude,
}

impl PruneConfig {
    /// `kind` at `density`, its other settings at their defaults.
    pub fn at(kind: PruneKind, density: f64) -> Self {
        Self::new(kind)
            .with("density", density)
            .expect("every pruner has a density")
    }

    /// The same pruner with one setting changed (refused by name when the pruner has no such
    /// setting or the value does not fit).
    pub fn with(&self, name: &str, value: impl Into<Value>) -> Result<Self> {
        let mut settings = self.settings();
        if !settings.contains_key(name) {
            return Err(Error::invalid(
                name,
                format!("is not a setting of pruner {}", self.kind()),
            ));
        }
        settings.insert(name.into(), value.into());
        Self::from_settings(self.kind(), settings)
    }

    /// `dns0.1`: the model's label in a sweep.
    pub fn label(&self) -> String {
        format!("{}{}", self.kind(), self.density())
    }
}

impl fmt::Display for PruneKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.pad(self.name())
    }
}

serde_as_text!(PruneKind);

impl FromStr for PruneKind {
    type Err = Error;
    fn from_str(s: &str) -> Result<Self> {
        PruneKind::ALL
            .iter()
            .copied()
            .find(|k| k.name() == s.to_ascii_lowercase())
            .ok_or_else(|| {
                Error::usage(format!(
                    "unknown pruner '{s}' (expected {})",
                    PruneKind::ALL
                        .iter()
                        .map(|k| k.name())
                        .collect::<Vec<_>>()
                        .join(" or ")
                ))
            })
    }
}

kind_with_settings_serde!(PruneConfig, PruneKind);

/// A density in (0, 1], or the error naming `density`.
fn check_density(density: f64) -> Result<()> {
    match density > 0.0 && density <= 1.0 {
        true => Ok(()),
        false => Err(Error::invalid(
            "density",
            format!("must lie in (0, 1] (got {density})"),
        )),
    }
}
