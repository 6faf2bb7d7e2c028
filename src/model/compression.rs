//! Compression-aware layers: one generic mechanism every model uses. A [`Compression`] holds a
//! pruning mask per weight layer and fixed-point formats for weights and activations; the
//! models route each conv / linear layer and each layer output through it. With no
//! compression the layers run exactly as burn's modules do.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt;
use std::str::FromStr;
use std::sync::{Arc, Mutex};

use burn::module::{ModuleMapper, ModuleVisitor, Param};
use burn::nn::Linear;
use burn::nn::conv::Conv2d;
use burn::prelude::*;
use serde::{Deserialize, Serialize};

use super::Network;
use crate::kernels::{self, FixedPoint, QuantGrad};
use crate::{Error, Result};

/// A pruning mask for one layer's weight: 1.0 kept, 0.0 pruned, in burn's layout of the weight
/// (`shape`), stored flat.
#[derive(Clone, Debug)]
pub struct Mask {
    pub values: Tensor<1>,
    pub shape: Vec<usize>,
}

impl Mask {
    /// Kept weights / all weights, counted from the mask.
    pub fn density(&self) -> f64 {
        let n = self.values.dims()[0];
        let kept = self.values.clone().sum().into_scalar::<f32>() as f64;
        kept / n.max(1) as f64
    }

    pub fn len(&self) -> usize {
        self.values.dims()[0]
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// How a network is compressed. The default compresses nothing.
#[derive(Clone, Debug, Default)]
pub struct Compression {
    /// Masks by layer name (`conv0`, `fc1`, ...); layers without one are dense.
    pub masks: BTreeMap<String, Mask>,
    /// Format of weights and biases of conv / linear layers.
    pub weights: Option<FixedPoint>,
    /// Format of every layer's output activation (after ReLU, batch norm + ReLU, the logits).
    pub activations: Option<FixedPoint>,
    /// The quantisers' backward pass.
    pub grad: QuantGrad,
    /// When set, every layer output is appended here (flattened, by layer name) as the
    /// forward pass computes it: the data of the activation CDFs.
    pub recorder: Option<ActivationLog>,
}

/// Layer outputs recorded during forward passes.
pub type ActivationLog = Arc<Mutex<Vec<(String, Tensor<1>)>>>;

/// How weights are pruned.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Pruner {
    /// Dynamic network surgery: masks updated during fine-tuning, pruned weights can recover.
    Dns,
    /// Keep the largest |w|; pruned weights stay pruned.
    Magnitude,
}

serde_as_text!(Pruner);

impl FromStr for Pruner {
    type Err = Error;
    fn from_str(s: &str) -> Result<Self> {
        match s {
            "dns" => Ok(Self::Dns),
            "magnitude" => Ok(Self::Magnitude),
            _ => Err(Error::usage(format!(
                "unknown pruner '{s}' (expected dns or magnitude)"
            ))),
        }
    }
}

impl fmt::Display for Pruner {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Self::Dns => "dns",
            Self::Magnitude => "magnitude",
        })
    }
}

/// A record's pruner as the metadata writes it: `none`, `dns` or `magnitude`.
mod pruner_or_none {
    use super::Pruner;
    use serde::{Deserialize, Deserializer, Serialize, Serializer};

    pub fn serialize<S: Serializer>(p: &Option<Pruner>, s: S) -> Result<S::Ok, S::Error> {
        match p {
            Some(p) => p.serialize(s),
            None => s.serialize_str("none"),
        }
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Option<Pruner>, D::Error> {
        match String::deserialize(d)?.as_str() {
            "none" => Ok(None),
            other => other.parse().map(Some).map_err(serde::de::Error::custom),
        }
    }
}

/// What a checkpoint's metadata says about its compression (JSON in the `compression` field).
#[derive(Clone, Debug, Default, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct CompressionRecord {
    /// No pruning, `dns` or `magnitude`.
    #[serde(with = "pruner_or_none")]
    pub pruner: Option<Pruner>,
    pub target_density: Option<f64>,
    /// Kept / all weights per pruned layer, counted from the masks.
    pub density: BTreeMap<String, f64>,
    /// Kept / all weights over every weight layer (dense layers count as fully kept).
    pub overall_density: f64,
    pub weights: Option<FixedPoint>,
    pub activations: Option<FixedPoint>,
    pub grad: QuantGrad,
    /// Fine-tuning epochs after compression.
    pub finetune_epochs: usize,
}

impl CompressionRecord {
    /// Refuses a record that cannot describe `network`'s compression, naming the field.
    pub fn validate(&self, network: &Network) -> std::result::Result<(), String> {
        let fraction = |x: f64| (0.0..=1.0).contains(&x);
        if let Some(t) = self.target_density
            && !(t > 0.0 && t <= 1.0)
        {
            return Err(format!("target_density {t} is not in (0, 1]"));
        }
        if self.pruner.is_none() && (self.target_density.is_some() || !self.density.is_empty()) {
            return Err("densities are given but the pruner is none".into());
        }
        let layers = weight_layers(network);
        for (layer, density) in &self.density {
            if !layers.iter().any(|l| l.name == *layer) {
                return Err(format!(
                    "density for layer '{layer}', which {} does not have (its layers: {})",
                    network.model_ref(),
                    layers
                        .iter()
                        .map(|l| l.name.as_str())
                        .collect::<Vec<_>>()
                        .join(", ")
                ));
            }
            if !fraction(*density) {
                return Err(format!(
                    "density {density} of layer '{layer}' is not in [0, 1]"
                ));
            }
        }
        if !fraction(self.overall_density) {
            return Err(format!(
                "overall_density {} is not in [0, 1]",
                self.overall_density
            ));
        }
        if self.finetune_epochs > crate::limits::MAX_EPOCHS {
            return Err(format!(
                "finetune_epochs {} is more than {}",
                self.finetune_epochs,
                crate::limits::MAX_EPOCHS
            ));
        }
        Ok(())
    }
}

impl Compression {
    /// True when the forward pass is burn's plain one (a recorder alone compresses nothing but
    /// needs the compressed path to see the layer outputs).
    pub fn is_none(&self) -> bool {
        self.masks.is_empty()
            && self.weights.is_none()
            && self.activations.is_none()
            && self.recorder.is_none()
    }

    /// The same compression with its masks on `device`.
    pub fn to_device(&self, device: &Device) -> Self {
        let masks = self
            .masks
            .iter()
            .map(|(name, mask)| {
                let mask = Mask {
                    values: mask.values.clone().to_device(device),
                    shape: mask.shape.clone(),
                };
                (name.clone(), mask)
            })
            .collect();
        Self {
            masks,
            ..self.clone()
        }
    }

    /// A weight as the layer uses it: masked, then quantised.
    fn weight<const D: usize>(&self, layer: &str, weight: Tensor<D>) -> Tensor<D> {
        let weight = match self.masks.get(layer) {
            Some(mask) => {
                let mask = mask.values.clone().reshape(weight.dims());
                kernels::apply_mask(weight, mask)
            }
            None => weight,
        };
        self.quantise_weight(weight)
    }

    fn quantise_weight<const D: usize>(&self, tensor: Tensor<D>) -> Tensor<D> {
        match self.weights {
            Some(format) => kernels::fixed_point(tensor, format, self.grad),
            None => tensor,
        }
    }

    /// A flat parameter of an imported graph as its layer uses it: a weight (`masked`) masked
    /// by the mask named `name` and quantised, a bias quantised.
    pub(crate) fn flat_weight(&self, name: &str, masked: bool, w: Tensor<1>) -> Tensor<1> {
        match masked {
            true => self.weight(name, w),
            false => self.quantise_weight(w),
        }
    }

    /// `layer`'s output activation, quantised when activations are.
    pub(crate) fn activation<const D: usize>(&self, layer: &str, x: Tensor<D>) -> Tensor<D> {
        let x = match self.activations {
            Some(format) => kernels::fixed_point(x, format, self.grad),
            None => x,
        };
        if let Some(log) = &self.recorder {
            let n = x.shape().num_elements();
            let flat = x.clone().inner().reshape([n]);
            log.lock()
                .expect("activation log")
                .push((layer.to_string(), flat));
        }
        x
    }

    /// `layer`'s 2D convolution with its compressed weight and bias (the originals' autodiff
    /// graph kept, so gradients reach them), through advcomp's convolution kernel.
    pub(crate) fn conv2d(&self, layer: &str, conv: &Conv2d, x: Tensor<4>) -> Tensor<4> {
        let options = super::layers::conv_options(conv, x.dims());
        let (weight, bias) = (conv.weight.val(), conv.bias.as_ref().map(|b| b.val()));
        if self.is_none() {
            return kernels::conv2d(x, weight, bias, options);
        }
        let bias = bias.map(|b| self.quantise_weight(b));
        kernels::conv2d(x, self.weight(layer, weight), bias, options)
    }

    /// `layer`'s linear map x · W + b with its compressed weight and bias, through advcomp's
    /// matrix product.
    pub(crate) fn linear(&self, layer: &str, fc: &Linear, x: Tensor<2>) -> Tensor<2> {
        let (weight, bias) = (fc.weight.val(), fc.bias.as_ref().map(|b| b.val()));
        let (weight, bias) = match self.is_none() {
            true => (weight, bias),
            false => (
                self.weight(layer, weight),
                bias.map(|b| self.quantise_weight(b)),
            ),
        };
        let y = kernels::matmul(x, weight);
        match bias {
            Some(b) => y + b.unsqueeze::<2>(),
            None => y,
        }
    }

    /// The record for a checkpoint's metadata; densities are counted from the masks.
    pub fn record(
        &self,
        network: &Network,
        pruner: Option<Pruner>,
        target: Option<f64>,
        epochs: usize,
    ) -> CompressionRecord {
        let density = self
            .masks
            .iter()
            .map(|(name, mask)| (name.clone(), mask.density()))
            .collect();
        CompressionRecord {
            pruner,
            target_density: target,
            density,
            overall_density: self.overall_density(network),
            weights: self.weights,
            activations: self.activations,
            grad: self.grad,
            finetune_epochs: epochs,
        }
    }

    /// Kept / all weights over every weight layer of `network`.
    pub fn overall_density(&self, network: &Network) -> f64 {
        let (mut kept, mut all) = (0.0, 0usize);
        for layer in weight_layers(network) {
            let n = layer.shape.iter().product::<usize>();
            all += n;
            kept += match self.masks.get(&layer.name) {
                Some(mask) => mask.density() * n as f64,
                None => n as f64,
            };
        }
        kept / all.max(1) as f64
    }
}

/// A layer whose weight can be pruned: a conv or linear weight (rank >= 2).
#[derive(Clone, Debug)]
pub struct WeightLayer {
    pub name: String,
    /// The weight, flattened, without autodiff (for statistics and mask updates).
    pub values: Tensor<1>,
    /// burn's shape of the weight.
    pub shape: Vec<usize>,
}

struct WeightCollector {
    path: Vec<String>,
    layers: Vec<WeightLayer>,
}

impl ModuleVisitor for WeightCollector {
    fn enter_module(&mut self, name: &str, _container_type: &str) {
        self.path.push(name.to_string());
    }
    fn exit_module(&mut self, _name: &str, _container_type: &str) {
        self.path.pop();
    }
    fn visit_float<const D: usize>(&mut self, param: &Param<Tensor<D>>) {
        if D < 2 || self.path.last().map(String::as_str) != Some("weight") {
            return;
        }
        let tensor = param.val().inner();
        let shape = tensor.dims().to_vec();
        let n = shape.iter().product::<usize>();
        self.layers.push(WeightLayer {
            name: self.path[..self.path.len() - 1].join("."),
            values: tensor.reshape([n]),
            shape,
        });
    }
}

/// Every prunable layer of `network`, in the model's order: found from the parameters
/// themselves (any weight of rank >= 2), so new models need no list.
pub fn weight_layers(network: &Network) -> Vec<WeightLayer> {
    let mut collector = WeightCollector {
        path: Vec::new(),
        layers: Vec::new(),
    };
    match network.visit_builtin(&mut collector) {
        Ok(()) => collector.layers,
        Err(imported) => imported.weight_layers(),
    }
}

struct Baker<'a> {
    compression: &'a Compression,
    weight_layers: BTreeSet<String>,
    path: Vec<String>,
}

impl ModuleMapper for Baker<'_> {
    fn enter_module(&mut self, name: &str, _container_type: &str) {
        self.path.push(name.to_string());
    }
    fn exit_module(&mut self, _name: &str, _container_type: &str) {
        self.path.pop();
    }
    fn map_float<const D: usize>(&mut self, param: Param<Tensor<D>>) -> Param<Tensor<D>> {
        let Some((field, layer)) = self.path.split_last() else {
            return param;
        };
        let layer = layer.join(".");
        if !self.weight_layers.contains(&layer) {
            return param;
        }
        let compression = self.compression;
        match field.as_str() {
            "weight" => param.map(|w| compression.weight(&layer, w.inner())),
            "bias" => param.map(|b| compression.quantise_weight(b.inner())),
            _ => param,
        }
    }
}

/// `network` with every conv / linear weight replaced by what the compressed layer uses
/// (masked, quantised) and every bias quantised, so the stored tensors are the compressed
/// model. Applying the compression again changes nothing: q and the mask are idempotent.
pub fn bake(network: Network, compression: &Compression) -> Network {
    let weight_layers = weight_layers(&network)
        .into_iter()
        .map(|layer| layer.name)
        .collect();
    let mut baker = Baker {
        compression,
        weight_layers,
        path: Vec::new(),
    };
    network
        .map_builtin(&mut baker)
        .unwrap_or_else(|imported| Network::Onnx(imported.bake(compression)))
}
