//! A model's label in a sweep's results, its log and its file names: `full`, or what its
//! compression makes of it (`dns0.1`, `q8`, `int8-pc`, `dns0.1-q8`). Built here only; the
//! report finds the full model's cells through [`ModelLabel::FULL`].

use std::fmt;

use serde::{Deserialize, Serialize};

use crate::prune::PruneConfig;
use crate::quant::QuantConfig;

/// A model's label (written as its text in every result file).
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(transparent)]
pub struct ModelLabel(String);

impl ModelLabel {
    /// The full (uncompressed) model's label.
    pub const FULL: &'static str = "full";

    /// The full model.
    pub fn full() -> Self {
        Self(Self::FULL.into())
    }

    /// A compressed model: its pruner's label (`dns0.1`) and its quantiser's (`q8`), joined by
    /// `-`.
    pub fn compressed(prune: Option<&PruneConfig>, quant: Option<&QuantConfig>) -> Self {
        let parts: Vec<String> = [prune.map(PruneConfig::label), quant.map(QuantConfig::label)]
            .into_iter()
            .flatten()
            .collect();
        Self(parts.join("-"))
    }

    /// A model the user named (`advcomp transfer --models`).
    pub fn named(name: impl Into<String>) -> Self {
        Self(name.into())
    }

    pub fn is_full(&self) -> bool {
        self.0 == Self::FULL
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl std::ops::Deref for ModelLabel {
    type Target = str;
    fn deref(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for ModelLabel {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.pad(&self.0)
    }
}

impl From<ModelLabel> for String {
    fn from(label: ModelLabel) -> String {
        label.0
    }
}

impl PartialEq<str> for ModelLabel {
    fn eq(&self, other: &str) -> bool {
        self.0 == other
    }
}

impl PartialEq<&str> for ModelLabel {
    fn eq(&self, other: &&str) -> bool {
        self.0 == *other
    }
}

impl PartialEq<String> for ModelLabel {
    fn eq(&self, other: &String) -> bool {
        &self.0 == other
    }
}
