//! The paper's classifiers (LeNet5, CifarNet) and their checkpoints.

mod checkpoint;
mod cifarnet;
mod compression;
mod lenet5;

use std::fmt;
use std::str::FromStr;

use burn::prelude::*;

pub use checkpoint::{
    Checkpoint, CheckpointMeta, KeyMap, checkpoint_dataset, load_checkpoint, save_checkpoint,
    save_compressed,
};
pub use cifarnet::CifarNet;
pub use compression::{
    Compression, CompressionRecord, Mask, Pruner, WeightLayer, bake, weight_layers,
};
pub use lenet5::LeNet5;

use crate::data::DatasetKind;
use crate::{Error, Result};

/// The model architectures advcomp knows.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ModelKind {
    LeNet5,
    CifarNet,
}

impl ModelKind {
    pub const ALL: [ModelKind; 2] = [ModelKind::LeNet5, ModelKind::CifarNet];

    pub fn name(self) -> &'static str {
        match self {
            ModelKind::LeNet5 => "lenet5",
            ModelKind::CifarNet => "cifarnet",
        }
    }

    /// A freshly initialised network of this kind on `device` (seed the device first for a
    /// reproducible initialisation).
    pub fn init(self, device: &Device) -> Network {
        match self {
            ModelKind::LeNet5 => Network::LeNet5(LeNet5::new(device)),
            ModelKind::CifarNet => Network::CifarNet(CifarNet::new(device)),
        }
    }

    /// Input image shape (channels, height, width).
    pub fn input_shape(self) -> [usize; 3] {
        match self {
            ModelKind::LeNet5 => [1, 28, 28],
            ModelKind::CifarNet => [3, 32, 32],
        }
    }

    /// The dataset the model is made for when none is named.
    pub fn default_dataset(self) -> DatasetKind {
        match self {
            ModelKind::LeNet5 => DatasetKind::Mnist,
            ModelKind::CifarNet => DatasetKind::Cifar10,
        }
    }

    /// Refuses a dataset whose images the model cannot take.
    pub fn check_dataset(self, dataset: DatasetKind) -> Result<()> {
        if dataset.image_shape() != self.input_shape() {
            return Err(Error::usage(format!(
                "model {self} takes {:?} images but dataset {dataset} has {:?}",
                self.input_shape(),
                dataset.image_shape()
            )));
        }
        Ok(())
    }

    /// The layer table: name, what it does, output shape, parameter count.
    pub fn layers(self) -> Vec<LayerInfo> {
        match self {
            ModelKind::LeNet5 => LeNet5::layers(),
            ModelKind::CifarNet => CifarNet::layers(),
        }
    }
}

impl fmt::Display for ModelKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

impl FromStr for ModelKind {
    type Err = Error;
    fn from_str(s: &str) -> Result<Self> {
        ModelKind::ALL
            .into_iter()
            .find(|k| k.name() == s.to_ascii_lowercase())
            .ok_or_else(|| {
                Error::usage(format!(
                    "unknown model '{s}' (expected one of: lenet5, cifarnet)"
                ))
            })
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

impl Classifier {
    /// Logits [batch, 10] for images in [0, 1], through the compression.
    pub fn logits(&self, images: Tensor<4>) -> Tensor<2> {
        self.network.forward_compressed(images, &self.compression)
    }
}

/// Any of advcomp's classifiers; everything downstream (training, checkpoints, attacks) works
/// on this one type.
// A network is built a few times per run and moved by value through the optimiser; the size
// difference between variants costs nothing measurable.
#[allow(clippy::large_enum_variant)]
#[derive(Module, Debug)]
pub enum Network {
    LeNet5(LeNet5),
    CifarNet(CifarNet),
}

impl Network {
    pub fn kind(&self) -> ModelKind {
        match self {
            Network::LeNet5(_) => ModelKind::LeNet5,
            Network::CifarNet(_) => ModelKind::CifarNet,
        }
    }

    /// Logits [batch, 10] for images [batch, channels, height, width] in [0, 1].
    pub fn forward(&self, images: Tensor<4>) -> Tensor<2> {
        self.forward_compressed(images, &Compression::default())
    }

    /// Logits of the network compressed as `compression` says (masks, quantisers).
    pub fn forward_compressed(&self, images: Tensor<4>, compression: &Compression) -> Tensor<2> {
        match self {
            Network::LeNet5(m) => m.forward(images, compression),
            Network::CifarNet(m) => m.forward(images, compression),
        }
    }

    /// Sets the dropout probability of every dropout layer (the models are built with 0.5).
    pub fn set_dropout(&mut self, prob: f64) {
        match self {
            Network::LeNet5(m) => m.dropout.prob = prob,
            Network::CifarNet(m) => m.dropout.prob = prob,
        }
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
