//! The classifiers: the paper's built-in LeNet5 and CifarNet, and any CNN imported at run time
//! from an ONNX file ([`onnx`]); their checkpoints; their compression.

mod checkpoint;
mod cifarnet;
mod compression;
mod export;
mod label;
mod layers;
mod lenet5;
pub mod onnx;

use std::fmt;
use std::path::Path;
use std::str::FromStr;

use burn::prelude::*;

pub use checkpoint::{
    Checkpoint, CheckpointMeta, KeyMap, checkpoint_dataset, load, load_checkpoint, save_checkpoint,
    save_compressed,
};
pub use cifarnet::CifarNet;
pub use compression::{
    ActivationLog, Compression, CompressionRecord, Mask, Quantisation, WeightLayer, bake,
    weight_layers,
};
pub use export::{OnnxWriter, export, export_file};
pub use label::ModelLabel;
pub use lenet5::LeNet5;
pub use onnx::OnnxModel;

/// The dropout probability the built-in models are trained with (fine-tuning a pruned model
/// scales it by the square root of its density).
pub const DROPOUT: f64 = 0.5;

use crate::data::{DataChoice, Dataset, DatasetKind, DatasetRecord, Images, Split};
use crate::{Error, Result};

/// A built-in architecture: one file implementing this trait, plus its name in the
/// `builtin_models!` list below, is all a new one needs (checkpoints, compression, attacks, the
/// CLI and the sweep work on [`Network`] and never name an architecture).
pub trait BuiltIn: Sized {
    /// The name users give (`--model lenet5`) and checkpoints record.
    const NAME: &'static str;
    /// Input image shape (channels, height, width).
    const INPUT_SHAPE: [usize; 3];
    /// Number of classes (logits per image).
    const CLASSES: usize;
    /// The dataset the model is made for when none is named.
    const DATASET: DatasetKind;
    /// A tensor name only this architecture's checkpoints hold: how a checkpoint without
    /// metadata (e.g. a PyTorch state_dict) is recognised.
    const SIGNATURE: &'static str;
    /// A freshly initialised network (seed the device first for a reproducible one).
    fn new(device: &Device) -> Self;
    /// The layer table: name, what it does, output shape, parameter count.
    fn layers() -> Vec<LayerInfo>;
    /// Logits [batch, classes] for images in [0, 1], through the compression.
    fn forward(&self, images: Tensor<4>, compression: &Compression) -> Tensor<2>;
    /// Sets the probability of every dropout layer.
    fn set_dropout(&mut self, prob: f64);
    /// Its inference graph as ONNX nodes from [`OnnxWriter::INPUT`], the parameters by their
    /// checkpoint names; returns the logits' name. The nonlinearities and weight layers must
    /// be where [`BuiltIn::forward`] quantises (the export places QDQ nodes by them).
    fn to_onnx(writer: &mut OnnxWriter) -> String;
}

/// Declares the built-in architectures: [`ModelKind`] and [`Network`]'s variants, and the
/// dispatch from them to each architecture's [`BuiltIn`] implementation.
macro_rules! builtin_models {
    ($($kind:ident),+ $(,)?) => {
        /// The built-in model architectures.
        #[derive(Clone, Copy, Debug, PartialEq, Eq)]
        pub enum ModelKind {
            $($kind),+
        }

        impl ModelKind {
            pub const ALL: [ModelKind; [$(stringify!($kind)),+].len()] = [$(ModelKind::$kind),+];

            pub fn name(self) -> &'static str {
                match self { $(ModelKind::$kind => <$kind as BuiltIn>::NAME),+ }
            }

            /// A freshly initialised network of this kind on `device` (seed the device first
            /// for a reproducible initialisation).
            pub fn init(self, device: &Device) -> Network {
                match self { $(ModelKind::$kind => Network::$kind(<$kind as BuiltIn>::new(device))),+ }
            }

            /// Input image shape (channels, height, width).
            pub fn input_shape(self) -> [usize; 3] {
                match self { $(ModelKind::$kind => <$kind as BuiltIn>::INPUT_SHAPE),+ }
            }

            /// Number of classes (logits per image).
            pub fn classes(self) -> usize {
                match self { $(ModelKind::$kind => <$kind as BuiltIn>::CLASSES),+ }
            }

            /// The dataset the model is made for when none is named.
            pub fn default_dataset(self) -> DatasetKind {
                match self { $(ModelKind::$kind => <$kind as BuiltIn>::DATASET),+ }
            }

            /// A tensor name only this architecture's checkpoints hold.
            pub fn signature(self) -> &'static str {
                match self { $(ModelKind::$kind => <$kind as BuiltIn>::SIGNATURE),+ }
            }

            /// The layer table: name, what it does, output shape, parameter count.
            pub fn layers(self) -> Vec<LayerInfo> {
                match self { $(ModelKind::$kind => <$kind as BuiltIn>::layers()),+ }
            }
        }

        /// Any of advcomp's classifiers; everything downstream (training, checkpoints,
        /// attacks) works on this one type.
        // A network is built a few times per run and moved by value through the optimiser;
        // the size difference between variants costs nothing measurable.
        #[allow(clippy::large_enum_variant)]
        #[derive(Module, Debug)]
        pub enum Network {
            $($kind($kind),)+
            /// Imported from an ONNX file.
            Onnx(OnnxModel),
        }

        impl Network {
            /// The built-in architecture, or the imported model.
            fn architecture(&self) -> std::result::Result<ModelKind, &OnnxModel> {
                match self {
                    $(Network::$kind(_) => Ok(ModelKind::$kind),)+
                    Network::Onnx(m) => Err(m),
                }
            }

            /// Visits a built-in network's parameters (named by their fields, as checkpoints
            /// name them: the enum variant is not part of the names); an imported model is
            /// handed back.
            pub(crate) fn visit_builtin<V: burn::module::ModuleVisitor>(
                &self,
                visitor: &mut V,
            ) -> std::result::Result<(), &OnnxModel> {
                match self {
                    $(Network::$kind(m) => { m.visit(visitor); Ok(()) })+
                    Network::Onnx(m) => Err(m),
                }
            }

            /// Maps a built-in network's parameters; an imported model is handed back.
            pub(crate) fn map_builtin<M: burn::module::ModuleMapper>(
                self,
                mapper: &mut M,
            ) -> std::result::Result<Network, OnnxModel> {
                match self {
                    $(Network::$kind(m) => Ok(Network::$kind(m.map(mapper))),)+
                    Network::Onnx(m) => Err(m),
                }
            }

            /// Logits of the network compressed as `compression` says (masks, quantisers).
            pub fn forward_compressed(&self, images: Tensor<4>, compression: &Compression) -> Tensor<2> {
                match self {
                    $(Network::$kind(m) => BuiltIn::forward(m, images, compression),)+
                    Network::Onnx(m) => m.forward(images, compression),
                }
            }

            /// A built-in network's inference graph (see [`BuiltIn::to_onnx`]).
            pub(crate) fn to_onnx(&self, writer: &mut OnnxWriter) -> Result<String> {
                match self {
                    $(Network::$kind(_) => Ok(<$kind as BuiltIn>::to_onnx(writer)),)+
                    Network::Onnx(m) => Err(Error::model(&m.graph.file, "has its own graph")),
                }
            }

            /// Sets the dropout probability of every dropout layer (the built-in models are
            /// built with 0.5; an imported model's Dropout nodes are identities, in
            /// fine-tuning too).
            pub fn set_dropout(&mut self, prob: f64) {
                match self {
                    $(Network::$kind(m) => m.set_dropout(prob),)+
                    Network::Onnx(_) => {}
                }
            }
        }
    };
}

// Adding a built-in architecture: a file implementing `BuiltIn`, and its type here.
builtin_models!(LeNet5, CifarNet);

impl fmt::Display for ModelKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

impl FromStr for ModelKind {
    type Err = Error;
    fn from_str(s: &str) -> Result<Self> {
        ModelKind::ALL
            .iter()
            .copied()
            .find(|k| k.name() == s.to_ascii_lowercase())
            .ok_or_else(|| {
                Error::usage(format!(
                    "unknown model '{s}' (expected one of: {})",
                    ModelKind::ALL
                        .iter()
                        .map(|k| k.name())
                        .collect::<Vec<_>>()
                        .join(", ")
                ))
            })
    }
}

/// A model as a user names it: a built-in architecture, or an ONNX file (any name ending in
/// `.onnx`). Parsed once where it enters (command line, config).
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ModelRef {
    BuiltIn(ModelKind),
    Onnx(std::path::PathBuf),
}

impl ModelRef {
    /// Whether `name` names an ONNX file (it ends in `.onnx`).
    pub fn names_onnx(name: &Path) -> bool {
        name.extension()
            .is_some_and(|e| e.eq_ignore_ascii_case("onnx"))
    }
}

serde_as_text!(ModelRef);

impl From<ModelKind> for ModelRef {
    fn from(kind: ModelKind) -> Self {
        ModelRef::BuiltIn(kind)
    }
}

impl FromStr for ModelRef {
    type Err = Error;
    fn from_str(s: &str) -> Result<Self> {
        if ModelRef::names_onnx(Path::new(s)) {
            return Ok(ModelRef::Onnx(s.into()));
        }
        s.parse().map(ModelRef::BuiltIn).map_err(|_| {
            Error::usage(format!(
                "unknown model '{s}' (expected {}, or an ONNX file: path/to/model.onnx)",
                ModelKind::ALL
                    .iter()
                    .map(|k| k.name())
                    .collect::<Vec<_>>()
                    .join(", ")
            ))
        })
    }
}

impl fmt::Display for ModelRef {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ModelRef::BuiltIn(kind) => write!(f, "{kind}"),
            ModelRef::Onnx(path) => write!(f, "{}", path.display()),
        }
    }
}

/// The model a training or compression run starts from, as its config records it: the model
/// as the user named it (`lenet5`, or an ONNX file's path: `advcomp train`/`compress`), or an
/// imported file by the first 16 hex digits of its SHA-256 (`onnx-…`: the sweep, whose cache
/// keys must not depend on where the file lies). Written as that text, which is part of the
/// config's JSON and so of every cache key.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ModelIdentity {
    Named(ModelRef),
    /// The digest's first 16 hex digits.
    Digest(String),
}

impl ModelIdentity {
    const DIGEST_PREFIX: &str = "onnx-";
    const DIGEST_DIGITS: usize = 16;

    /// An imported file by its SHA-256 (hex).
    pub fn digest(sha256: &str) -> Self {
        ModelIdentity::Digest(sha256.chars().take(Self::DIGEST_DIGITS).collect())
    }
}

impl From<ModelRef> for ModelIdentity {
    fn from(model: ModelRef) -> Self {
        ModelIdentity::Named(model)
    }
}

impl From<ModelKind> for ModelIdentity {
    fn from(kind: ModelKind) -> Self {
        ModelIdentity::Named(kind.into())
    }
}

impl fmt::Display for ModelIdentity {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ModelIdentity::Named(model) => write!(f, "{model}"),
            ModelIdentity::Digest(digits) => write!(f, "{}{digits}", Self::DIGEST_PREFIX),
        }
    }
}

impl FromStr for ModelIdentity {
    type Err = Error;
    fn from_str(s: &str) -> Result<Self> {
        match s.strip_prefix(Self::DIGEST_PREFIX) {
            Some(digits)
                if digits.len() == Self::DIGEST_DIGITS
                    && digits.bytes().all(|b| b.is_ascii_hexdigit()) =>
            {
                Ok(ModelIdentity::Digest(digits.into()))
            }
            _ => s.parse().map(ModelIdentity::Named),
        }
    }
}

serde_as_text!(ModelIdentity);

impl ModelRef {
    /// The built-in architecture, if it is one.
    pub fn builtin(&self) -> Option<ModelKind> {
        match self {
            ModelRef::BuiltIn(kind) => Some(*kind),
            ModelRef::Onnx(_) => None,
        }
    }

    /// The network: freshly initialised (built-in; seed the device first), or imported with
    /// the file's weights (ONNX).
    pub fn load(&self, device: &Device) -> Result<Network> {
        match self {
            ModelRef::BuiltIn(kind) => Ok(kind.init(device)),
            ModelRef::Onnx(path) => {
                let model = onnx::import(path, device)?;
                if let Some(op) = &model.graph.stripped {
                    eprintln!(
                        "model {}: the final node {op} was removed (attacks need logits)",
                        path.display()
                    );
                }
                Ok(Network::Onnx(model))
            }
        }
    }
}

/// One row of a model's layer table.
#[derive(Clone, Debug, serde::Serialize)]
pub struct LayerInfo {
    pub name: String,
    pub kind: String,
    /// Output shape (channels, height, width) for one image.
    pub output: [usize; 3],
    pub params: usize,
}

impl LayerInfo {
    fn new(name: &str, kind: &str, output: [usize; 3], params: usize) -> Self {
        Self {
            name: name.into(),
            kind: kind.into(),
            output,
            params,
        }
    }
}

/// A network with its compression: what attacks differentiate and evaluations run.
#[derive(Clone, Debug)]
pub struct Classifier {
    pub network: Network,
    pub compression: Compression,
}

/// `Ok` when every one of `logits` (of images `first_image`, `first_image` + 1, ...) is a
/// finite number; else a [`Error::NonFinite`] of the model in `role`, naming the first image
/// and class that is not. A NaN or infinite logit makes every number computed from it
/// meaningless (an argmax, a loss, an attack's gradient).
pub fn check_logits(logits: &Tensor<2>, first_image: usize, role: crate::ModelRole) -> Result<()> {
    let [_, classes] = logits.dims();
    match first_non_finite(logits.clone().inner()) {
        None => Ok(()),
        Some((i, value)) => Err(Error::NonFinite {
            role,
            problem: format!(
                "its logits hold {value} for image {} (class {}); a classifier's logits are \
                 finite numbers",
                first_image + i / classes.max(1),
                i % classes.max(1)
            ),
        }),
    }
}

/// The first element of `values` (row-major) that is NaN or infinite, and its value.
pub(crate) fn first_non_finite<const D: usize>(values: Tensor<D>) -> Option<(usize, f32)> {
    let values = values
        .into_data()
        .convert::<f32>()
        .try_to_vec::<f32>()
        .unwrap_or_default();
    values
        .iter()
        .position(|v| !v.is_finite())
        .map(|i| (i, values[i]))
}

/// Each row's predicted class: the index of its largest logit, the lowest index where several
/// are equal (NumPy's and ONNX Runtime's argmax). Quantised logits lie on a grid, so ties
/// happen (on 0.6-0.9% of test images for ONNX Runtime's int8 models); every prediction
/// advcomp makes breaks them this way, on every backend.
pub fn predictions(logits: Tensor<2>) -> Vec<i64> {
    let [_, classes] = logits.dims();
    let values: Vec<f32> = logits
        .inner()
        .into_data()
        .convert::<f32>()
        .try_to_vec::<f32>()
        .expect("f32 logits");
    values
        .chunks(classes.max(1))
        .map(|row| {
            let mut best = 0;
            for (i, v) in row.iter().enumerate() {
                if *v > row[best] {
                    best = i;
                }
            }
            best as i64
        })
        .collect()
}

impl Classifier {
    /// Logits [batch, 10] for images in [0, 1], through the compression.
    pub fn logits(&self, images: Tensor<4>) -> Tensor<2> {
        self.network.forward_compressed(images, &self.compression)
    }

    /// The same classifier with its weights compressed once (masked and quantised: [`bake`])
    /// and only the activation quantisers left to run: the same logits, bit for bit (mask
    /// and q are idempotent), without compressing every weight again at every forward pass.
    /// For attacks and evaluations, which never differentiate the weights.
    pub fn frozen(&self) -> Classifier {
        let compression = &self.compression;
        if compression.weights_baked || compression.masks.is_empty() && compression.quant.is_none()
        {
            return self.clone();
        }
        Classifier {
            network: bake(self.network.clone(), compression),
            compression: Compression {
                masks: Default::default(),
                weights_baked: true,
                ..compression.clone()
            },
        }
    }
}

impl Network {
    /// The built-in architecture, `None` for an imported model.
    pub fn builtin(&self) -> Option<ModelKind> {
        self.architecture().ok()
    }

    /// The SHA-256 of an imported model's ONNX file.
    pub fn model_sha256(&self) -> Option<String> {
        self.architecture().err().map(|m| m.graph.sha256.clone())
    }

    /// How the model is named: `lenet5`, `cifarnet`, or the ONNX file.
    pub fn model_ref(&self) -> ModelRef {
        match self.architecture() {
            Ok(kind) => ModelRef::BuiltIn(kind),
            // Absolute, so a checkpoint names the file it was made from wherever it is read.
            Err(m) => ModelRef::Onnx(
                std::path::absolute(&m.graph.file).unwrap_or_else(|_| m.graph.file.clone()),
            ),
        }
    }

    /// Input image shape (channels, height, width).
    pub fn input_shape(&self) -> [usize; 3] {
        match self.architecture() {
            Ok(kind) => kind.input_shape(),
            Err(m) => m.graph.input_shape,
        }
    }

    /// The layer table: name, what it does, output shape, parameter count.
    pub fn layers(&self) -> Vec<LayerInfo> {
        match self.architecture() {
            Ok(kind) => kind.layers(),
            Err(m) => m.layers(),
        }
    }

    /// Number of classes (the logits per image).
    pub fn classes(&self) -> usize {
        match self.architecture() {
            Ok(kind) => kind.classes(),
            Err(m) => m.graph.classes,
        }
    }

    /// The images to use: the user's own files when `choice` names them; else the dataset it
    /// names, or the one `meta` names, or the built-in model's own (an imported model without
    /// either is refused: its file does not say). A known dataset's images must fit the model
    /// (own files are checked when read, by [`Network::images`]).
    pub fn dataset(&self, choice: &DataChoice, meta: &CheckpointMeta) -> Result<Dataset> {
        if choice.is_own() {
            if choice.dataset.is_some() || choice.dir.is_some() {
                return Err(Error::invalid(
                    "dataset",
                    "names a dataset advcomp knows, while data / test_data name your own \
                     files: give one or the other",
                ));
            }
            return Ok(Dataset::Own {
                train: choice.train.clone(),
                test: choice.test.clone(),
            });
        }
        if let (None, Some(own @ DatasetRecord::Own(_))) = (choice.dataset, &meta.dataset) {
            return Err(Error::invalid(
                "test_data",
                format!(
                    "not given, and model {} was made on {own}: give those files again (or \
                     name a dataset)",
                    self.model_ref(),
                ),
            ));
        }
        let kind = choice
            .dataset
            .or_else(|| checkpoint_dataset(meta))
            .or_else(|| self.builtin().map(ModelKind::default_dataset))
            .ok_or_else(|| {
                Error::invalid(
                    "dataset",
                    format!(
                        "not given, and model {}'s file does not say which dataset it takes \
                         (or give your own images)",
                        self.model_ref()
                    ),
                )
            })?;
        let (model, data) = (self.input_shape(), kind.image_shape());
        if model != data {
            return Err(Error::usage(format!(
                "model {} takes {model:?} images but dataset {kind} has {data:?}",
                self.model_ref()
            )));
        }
        Ok(Dataset::Known {
            kind,
            dir: choice.dir.clone(),
        })
    }

    /// One split of `dataset`, checked against the model: image shape and labels (each must
    /// name one of the model's classes).
    pub fn images(&self, dataset: &Dataset, split: Split) -> Result<Images> {
        let images = dataset.load(split)?;
        let source = dataset.describe(split);
        let (model, data) = (self.input_shape(), images.shape());
        if model != data {
            return Err(Error::usage(format!(
                "model {} takes {model:?} images but {source} has {data:?} \
                 (channels, height, width; images are not resized)",
                self.model_ref()
            )));
        }
        if images.classes_needed() > self.classes() {
            return Err(Error::usage(format!(
                "{source} has label {} but model {} has {} classes (labels are 0..={})",
                images.classes_needed() - 1,
                self.model_ref(),
                self.classes(),
                self.classes() - 1
            )));
        }
        Ok(images)
    }

    /// Logits [batch, 10] for images [batch, channels, height, width] in [0, 1].
    pub fn forward(&self, images: Tensor<4>) -> Tensor<2> {
        self.forward_compressed(images, &Compression::default())
    }

    /// Number of trainable parameters (batch-norm running statistics excluded), counted from
    /// the tensors themselves.
    pub fn parameter_count(&self) -> usize {
        checkpoint::export_tensors(self)
            .iter()
            .filter(|t| !t.name.ends_with("running_mean") && !t.name.ends_with("running_var"))
            .map(|t| t.values.len())
            .sum()
    }
}
