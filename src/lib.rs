//! advcomp: how adversarial examples transfer between a full-precision classifier and its
//! compressed (pruned, fixed-point quantised) versions.
//!
//! One folder per concern: [`data`] (datasets, batching), [`model`] (LeNet5, CifarNet,
//! checkpoints), [`backend`] (which device runs the work), [`train`] (training and evaluation),
//! [`kernels`] (the WGSL kernels and their references), [`compress`], [`attack`], [`transfer`]
//! (adversarial sets and cell metrics), [`report`] (result files, figures, report page),
//! [`sweep`] (the whole study, cached and resumable) and [`profile`] (throughput).
//! The command line lives in the `advcomp` binary, not here.

/// Serde for a value users name in text (an attack, a dataset, a model): written with its
/// `Display`, read with its `FromStr`, so a config file, a result file and the command line
/// spell it the same way and a bad name gets the same message everywhere.
macro_rules! serde_as_text {
    ($type:ty) => {
        impl serde::Serialize for $type {
            fn serialize<S: serde::Serializer>(
                &self,
                s: S,
            ) -> std::result::Result<S::Ok, S::Error> {
                s.collect_str(self)
            }
        }
        impl<'de> serde::Deserialize<'de> for $type {
            fn deserialize<D: serde::Deserializer<'de>>(
                d: D,
            ) -> std::result::Result<Self, D::Error> {
                let text = <std::borrow::Cow<'de, str>>::deserialize(d)?;
                text.parse().map_err(serde::de::Error::custom)
            }
        }
    };
}

/// Serde for a kind with its settings (a quantiser, a pruner): `{"kind": NAME, ...its
/// settings}`, the kind first; read back through the config's `from_settings`, which refuses
/// unknown settings by name.
macro_rules! kind_with_settings_serde {
    ($config:ty, $kind:ty) => {
        impl serde::Serialize for $config {
            fn serialize<S: serde::Serializer>(
                &self,
                s: S,
            ) -> std::result::Result<S::Ok, S::Error> {
                use serde::ser::SerializeMap;
                let settings = self.settings();
                let mut out = s.serialize_map(Some(settings.len() + 1))?;
                out.serialize_entry("kind", self.kind().name())?;
                for (k, v) in &settings {
                    out.serialize_entry(k, v)?;
                }
                out.end()
            }
        }
        impl<'de> serde::Deserialize<'de> for $config {
            fn deserialize<D: serde::Deserializer<'de>>(
                d: D,
            ) -> std::result::Result<Self, D::Error> {
                use serde::de::Error as _;
                let mut map = serde_json::Map::<String, serde_json::Value>::deserialize(d)?;
                let kind: $kind = match map.remove("kind") {
                    Some(serde_json::Value::String(name)) => {
                        name.parse().map_err(D::Error::custom)?
                    }
                    _ => {
                        return Err(D::Error::custom(format!(
                            "names no kind (kind = {})",
                            <$kind>::ALL
                                .iter()
                                .map(|k| format!("\"{}\"", k.name()))
                                .collect::<Vec<_>>()
                                .join(" or ")
                        )));
                    }
                };
                <$config>::from_settings(kind, map).map_err(D::Error::custom)
            }
        }
    };
}

pub mod attack;
pub mod backend;
pub mod compress;
pub mod data;
mod error;
pub mod files;
pub mod kernels;
pub mod model;
pub mod profile;
pub mod prune;
pub mod quant;
pub mod report;
pub mod sweep;
pub mod train;
pub mod transfer;

pub use error::{Error, ModelRole, Result};
pub use files::write_atomically;

/// The tool's version, written into every checkpoint it makes.
pub const VERSION: &str = env!("CARGO_PKG_VERSION");

/// A stable 64-bit FNV-1a hash of `parts` (in order), as 16 hex digits: the key of configs in
/// checkpoints and of cached artefacts.
pub fn stable_hash<'a>(parts: impl IntoIterator<Item = &'a [u8]>) -> String {
    format!("{:016x}", stable_hash64(parts))
}

/// The FNV-1a hash of [`stable_hash`] as a number (e.g. to seed a random generator).
pub fn stable_hash64<'a>(parts: impl IntoIterator<Item = &'a [u8]>) -> u64 {
    parts
        .into_iter()
        .flatten()
        .fold(0xcbf2_9ce4_8422_2325u64, |h, b| {
            (h ^ *b as u64).wrapping_mul(0x0000_0100_0000_01b3)
        })
}

/// Upper bounds on the counts advcomp accepts from command lines, config files and data
/// files: far above any real run, low enough that no size computed from them overflows or
/// asks for more memory than a machine has.
pub mod limits {
    /// Images per batch (attacks, training, evaluation, profiling).
    pub const MAX_BATCH_SIZE: usize = 1 << 16;
    /// Training or fine-tuning epochs.
    pub const MAX_EPOCHS: usize = 10_000;
    /// Iterations of an attack (steps, DeepFool's most iterations).
    pub const MAX_STEPS: usize = 100_000;
    /// Seeds of a sweep.
    pub const MAX_SEEDS: u64 = 1_000;
    /// Shards a sweep's stage is split into (`--shard I/N`).
    pub const MAX_SHARDS: usize = 100_000;
    /// Images of a dataset, an adversarial set, or a limit on either.
    pub const MAX_IMAGES: usize = 100_000_000;
    /// Bytes of one data file once decompressed (16 GiB), and of a checkpoint.
    pub const MAX_DATA_BYTES: usize = 1 << 34;
    /// Bytes of an ONNX file: protobuf's own limit (2 GiB); larger models keep their weights
    /// in external data files beside it (each read within [`MAX_DATA_BYTES`]).
    pub const MAX_MODEL_BYTES: usize = 1 << 31;
    /// Bytes of a sweep config (TOML) and of a result file advcomp reads back (JSON).
    pub const MAX_TEXT_BYTES: usize = 1 << 26;
    /// Timed repeats of a measurement.
    pub const MAX_REPEATS: usize = 10_000;
    /// Elements per kernel call in the kernel profile (4 GiB of f32).
    pub const MAX_KERNEL_ELEMENTS: usize = 1 << 30;

    /// A count given as text (a flag's value), between `min` and `max`.
    pub fn bounded(text: &str, min: usize, max: usize) -> std::result::Result<usize, String> {
        let value: usize = text
            .parse()
            .map_err(|_| format!("'{text}' is not a whole number"))?;
        if (min..=max).contains(&value) {
            Ok(value)
        } else {
            Err(format!("must be between {min} and {max} (got {value})"))
        }
    }

    /// Images per batch, as text.
    pub fn batch_size(text: &str) -> std::result::Result<usize, String> {
        bounded(text, 1, MAX_BATCH_SIZE)
    }

    /// A number of images (a limit on a dataset), as text.
    pub fn image_count(text: &str) -> std::result::Result<usize, String> {
        bounded(text, 1, MAX_IMAGES)
    }
}
