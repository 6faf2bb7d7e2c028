//! Compression-aware layers: one generic mechanism every model uses. A [`Compression`] holds a
//! pruning mask per weight layer and, when quantised, a [`Quantisation`] (a quantiser from
//! `quant` and its grids); the models route each conv / linear layer, each layer input and
//! each layer output through it. With no compression the layers run exactly as burn's modules
//! do.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::{Arc, Mutex};

use burn::module::{ModuleMapper, ModuleVisitor, Param};
use burn::nn::Linear;
use burn::nn::conv::Conv2d;
use burn::prelude::*;
use serde::{Deserialize, Serialize};

use super::Network;
use crate::kernels::{self, QuantGrad};
use crate::prune::{PruneConfig, PruneKind};
use crate::quant::{FixedPoint, FixedPointSettings, Grid, Grids, QuantConfig, Sites, input_site};

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

/// A quantised model's quantiser and the grids it made for it (those that depend on the
/// data; the others follow from the quantiser's settings).
#[derive(Clone, Debug, PartialEq)]
pub struct Quantisation {
    pub config: QuantConfig,
    pub grids: Grids,
}

impl Quantisation {
    /// A quantiser whose grids all follow from its settings.
    pub fn uniform(config: QuantConfig) -> Self {
        Self {
            config,
            grids: Grids::default(),
        }
    }

    pub(crate) fn weight_grid(&self, layer: &str) -> Option<Grid> {
        (self.grids.weights.get(layer).cloned()).or_else(|| self.config.uniform_weight_grid())
    }

    pub(crate) fn bias_grid(&self, layer: &str) -> Option<Grid> {
        match self.config.kind().data_dependent() {
            true => self.grids.biases.get(layer).cloned(),
            false => self.config.bias_grid(None, None),
        }
    }

    /// The grid of activation site `site` (`input`: the input of weight layer `site`).
    pub(crate) fn activation_grid(&self, site: &str, input: bool) -> Option<Grid> {
        let key = match input {
            true => input_site(site),
            false => site.to_string(),
        };
        self.grids.activations.get(&key).cloned().or_else(|| {
            (!input && self.config.sites() == Sites::Outputs)
                .then(|| self.config.uniform_activation_grid())
                .flatten()
        })
    }
}

/// How a network is compressed. The default compresses nothing.
#[derive(Clone, Debug, Default)]
pub struct Compression {
    /// Masks by layer name (`conv0`, `fc1`, ...); layers without one are dense.
    pub masks: BTreeMap<String, Mask>,
    /// The quantiser and its grids (weights, biases, activations), if quantised.
    pub quant: Option<Quantisation>,
    /// The weights and biases are stored compressed already: only activations run through
    /// the quantisers (an attack's frozen model, whose weights never change).
    pub weights_baked: bool,
    /// The quantisers' backward pass.
    pub grad: QuantGrad,
    /// When set, every activation at the quantiser's sites (by default every layer output)
    /// is appended here (flattened, by site name) as the forward pass computes it: the data
    /// of calibration and of the activation CDFs.
    pub recorder: Option<ActivationLog>,
}

/// Layer outputs recorded during forward passes.
pub type ActivationLog = Arc<Mutex<Vec<(String, Tensor<1>)>>>;

/// What a checkpoint's metadata says about its compression (JSON in the `compression` field).
#[derive(Clone, Debug, Default, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, try_from = "StoredRecord")]
pub struct CompressionRecord {
    /// The pruner and its settings (its target density among them), if pruned.
    pub pruner: Option<PruneConfig>,
    /// Kept / all weights per pruned layer, counted from the masks.
    pub density: BTreeMap<String, f64>,
    /// Kept / all weights over every weight layer (dense layers count as fully kept).
    pub overall_density: f64,
    /// The quantiser and its settings, if quantised.
    pub quantiser: Option<QuantConfig>,
    /// The grids a data-dependent quantiser made (per-channel weight scales, calibrated
    /// activations).
    #[serde(default, skip_serializing_if = "Grids::is_empty")]
    pub grids: Grids,
    pub grad: QuantGrad,
    /// Fine-tuning epochs after compression.
    pub finetune_epochs: usize,
}

/// A record as stored: today's, or one written before pruners and quantisers were kinds
/// (`pruner` a name beside `target_density`; `weights` and `activations` fixed-point formats).
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct StoredRecord {
    #[serde(default)]
    pruner: Option<serde_json::Value>,
    #[serde(default)]
    target_density: Option<f64>,
    #[serde(default)]
    density: BTreeMap<String, f64>,
    overall_density: f64,
    #[serde(default)]
    quantiser: Option<QuantConfig>,
    #[serde(default)]
    grids: Grids,
    #[serde(default)]
    weights: Option<FixedPoint>,
    #[serde(default)]
    activations: Option<FixedPoint>,
    grad: QuantGrad,
    finetune_epochs: usize,
}

impl TryFrom<StoredRecord> for CompressionRecord {
    type Error = String;
    fn try_from(r: StoredRecord) -> std::result::Result<Self, String> {
        let pruner = match r.pruner {
            None | Some(serde_json::Value::Null) => None,
            Some(serde_json::Value::String(name)) if name == "none" => None,
            Some(serde_json::Value::String(name)) => {
                let kind: PruneKind = name.parse().map_err(|e: crate::Error| e.to_string())?;
                let density = r.target_density.unwrap_or(1.0);
                if !(density > 0.0 && density <= 1.0) {
                    return Err(format!("target_density {density} is not in (0, 1]"));
                }
                Some(PruneConfig::at(kind, density))
            }
            Some(value) => Some(serde_json::from_value(value).map_err(|e| e.to_string())?),
        };
        let legacy = (r.weights.is_some() || r.activations.is_some()).then_some(
            QuantConfig::Fixed(FixedPointSettings {
                weights: r.weights,
                activations: r.activations,
            }),
        );
        Ok(Self {
            pruner,
            density: r.density,
            overall_density: r.overall_density,
            quantiser: r.quantiser.or(legacy),
            grids: r.grids,
            grad: r.grad,
            finetune_epochs: r.finetune_epochs,
        })
    }
}

impl CompressionRecord {
    /// Refuses a record that cannot describe `network`'s compression, naming the field.
    pub fn validate(&self, network: &Network) -> std::result::Result<(), String> {
        let fraction = |x: f64| (0.0..=1.0).contains(&x);
        if let Some(p) = &self.pruner {
            p.validate().map_err(|e| format!("pruner: {e}"))?;
        }
        if let Some(q) = &self.quantiser {
            q.validate().map_err(|e| format!("quantiser: {e}"))?;
        }
        if self.pruner.is_none() && !self.density.is_empty() {
            return Err("densities are given but the pruner is none".into());
        }
        let layers = weight_layers(network);
        let unknown = |what: &str, layer: &str| {
            format!(
                "{what} for layer '{layer}', which {} does not have (its layers: {})",
                network.model_ref(),
                layers
                    .iter()
                    .map(|l| l.name.as_str())
                    .collect::<Vec<_>>()
                    .join(", ")
            )
        };
        for (layer, density) in &self.density {
            if !layers.iter().any(|l| l.name == *layer) {
                return Err(unknown("density", layer));
            }
            if !fraction(*density) {
                return Err(format!(
                    "density {density} of layer '{layer}' is not in [0, 1]"
                ));
            }
        }
        for (what, grids) in [
            ("weight grid", &self.grids.weights),
            ("bias grid", &self.grids.biases),
        ] {
            for (layer, grid) in grids {
                let Some(l) = layers.iter().find(|l| l.name == *layer) else {
                    return Err(unknown(what, layer));
                };
                let shape = match what {
                    "weight grid" => l.shape.clone(),
                    _ => vec![l.shape[l.out_axis]],
                };
                grid.fits(&shape)
                    .map_err(|e| format!("{what} of layer '{layer}': {e}"))?;
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

    /// The target density (1 when not pruned).
    pub fn target_density(&self) -> f64 {
        self.pruner.as_ref().map_or(1.0, PruneConfig::density)
    }
}

/// `x` quantised on `grid` as a tensor of `shape` (the grid's axis is `shape`'s; `x` may be
/// that tensor flattened or reshaped).
fn quantise_as<const D: usize>(
    x: Tensor<D>,
    shape: &[usize],
    grid: &Grid,
    grad: QuantGrad,
) -> Tensor<D> {
    let Some(axis) = grid.axis else {
        return kernels::quantise(x, grid, grad);
    };
    let dims = x.dims();
    let inner: usize = shape[axis + 1..].iter().product();
    let channels = shape[axis];
    let outer = dims.iter().product::<usize>() / (inner * channels).max(1);
    let along_1 = Grid {
        axis: Some(1),
        ..grid.clone()
    };
    kernels::quantise(x.reshape([outer, channels, inner]), &along_1, grad).reshape(dims)
}

impl Compression {
    /// True when the forward pass is burn's plain one (a recorder alone compresses nothing but
    /// needs the compressed path to see the layer outputs).
    pub fn is_none(&self) -> bool {
        self.masks.is_empty() && self.quant.is_none() && self.recorder.is_none()
    }

    /// A compression of fixed-point formats only (either may be `None`).
    pub fn fixed_point(weights: Option<FixedPoint>, activations: Option<FixedPoint>) -> Self {
        let settings = FixedPointSettings {
            weights,
            activations,
        };
        Self {
            quant: (weights.is_some() || activations.is_some())
                .then(|| Quantisation::uniform(QuantConfig::Fixed(settings))),
            ..Self::default()
        }
    }

    /// Whether weights go through a quantiser.
    pub fn quantises_weights(&self) -> bool {
        self.quant.as_ref().is_some_and(|q| q.config.quantises().0)
    }

    /// Whether activations go through a quantiser (a model with quantised activations has a
    /// gradient estimator to choose).
    pub fn quantises_activations(&self) -> bool {
        self.quant.as_ref().is_some_and(|q| q.config.quantises().1)
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

    /// A weight of `shape` as the layer uses it: masked, then quantised.
    pub(crate) fn weight<const D: usize>(
        &self,
        layer: &str,
        shape: &[usize],
        weight: Tensor<D>,
    ) -> Tensor<D> {
        if self.weights_baked {
            return weight;
        }
        let weight = match self.masks.get(layer) {
            Some(mask) => {
                let mask = mask.values.clone().reshape(weight.dims());
                kernels::apply_mask(weight, mask)
            }
            None => weight,
        };
        match self.quant.as_ref().and_then(|q| q.weight_grid(layer)) {
            Some(grid) => quantise_as(weight, shape, &grid, self.grad),
            None => weight,
        }
    }

    /// A layer's bias as the layer uses it: quantised.
    fn bias<const D: usize>(&self, layer: &str, bias: Tensor<D>) -> Tensor<D> {
        if self.weights_baked {
            return bias;
        }
        match self.quant.as_ref().and_then(|q| q.bias_grid(layer)) {
            Some(grid) => kernels::quantise(bias, &grid, self.grad),
            None => bias,
        }
    }

    /// A flat parameter of an imported graph (ONNX `shape`) as its layer uses it: a weight
    /// (`masked`) masked by the mask named `name` and quantised, a bias quantised.
    pub(crate) fn flat_weight(
        &self,
        name: &str,
        masked: bool,
        shape: &[usize],
        w: Tensor<1>,
    ) -> Tensor<1> {
        match masked {
            true => self.weight(name, shape, w),
            false => self.bias(name, w),
        }
    }

    /// Whether the recorder takes site `site` (`input`: a weight layer's input).
    fn records(&self, site: &str, input: bool) -> bool {
        let inputs = self
            .quant
            .as_ref()
            .is_some_and(|q| q.config.sites() == Sites::Inputs);
        match input {
            true => inputs,
            false => !inputs || site == "logits",
        }
    }

    fn log<const D: usize>(&self, site: String, x: &Tensor<D>) {
        if let Some(log) = &self.recorder {
            let n = x.shape().num_elements();
            let flat = x.clone().inner().reshape([n]);
            log.lock().expect("activation log").push((site, flat));
        }
    }

    /// `site`'s activation (a layer's output, or a quantiser's node in an imported QDQ
    /// graph), quantised when the quantiser has a grid there.
    pub(crate) fn activation<const D: usize>(&self, site: &str, x: Tensor<D>) -> Tensor<D> {
        let x = match self
            .quant
            .as_ref()
            .and_then(|q| q.activation_grid(site, false))
        {
            Some(grid) => kernels::quantise(x, &grid, self.grad),
            None => x,
        };
        if self.recorder.is_some() && self.records(site, false) {
            self.log(site.to_string(), &x);
        }
        x
    }

    /// The input of weight layer `layer`, quantised when the quantiser has a grid there
    /// (recorded before: calibration sees the float values).
    pub(crate) fn layer_input<const D: usize>(&self, layer: &str, x: Tensor<D>) -> Tensor<D> {
        if self.recorder.is_some() && self.records(layer, true) {
            self.log(input_site(layer), &x);
        }
        match self
            .quant
            .as_ref()
            .and_then(|q| q.activation_grid(layer, true))
        {
            Some(grid) => kernels::quantise(x, &grid, self.grad),
            None => x,
        }
    }

    /// `layer`'s 2D convolution with its compressed input, weight and bias (the originals'
    /// autodiff graph kept, so gradients reach them), through advcomp's convolution kernel.
    pub(crate) fn conv2d(&self, layer: &str, conv: &Conv2d, x: Tensor<4>) -> Tensor<4> {
        let options = super::layers::conv_options(conv, x.dims());
        let (weight, bias) = (conv.weight.val(), conv.bias.as_ref().map(|b| b.val()));
        if self.is_none() {
            return kernels::conv2d(x, weight, bias, options);
        }
        let x = self.layer_input(layer, x);
        let shape = weight.dims();
        let bias = bias.map(|b| self.bias(layer, b));
        kernels::conv2d(x, self.weight(layer, &shape, weight), bias, options)
    }

    /// `layer`'s linear map x · W + b with its compressed input, weight and bias, through
    /// advcomp's matrix product.
    pub(crate) fn linear(&self, layer: &str, fc: &Linear, x: Tensor<2>) -> Tensor<2> {
        let (weight, bias) = (fc.weight.val(), fc.bias.as_ref().map(|b| b.val()));
        let (x, weight, bias) = match self.is_none() {
            true => (x, weight, bias),
            false => {
                let shape = weight.dims();
                (
                    self.layer_input(layer, x),
                    self.weight(layer, &shape, weight),
                    bias.map(|b| self.bias(layer, b)),
                )
            }
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
        pruner: Option<PruneConfig>,
        epochs: usize,
    ) -> CompressionRecord {
        let density = self
            .masks
            .iter()
            .map(|(name, mask)| (name.clone(), mask.density()))
            .collect();
        CompressionRecord {
            pruner,
            density,
            overall_density: self.overall_density(network),
            quantiser: self.quant.as_ref().map(|q| q.config.clone()),
            grids: self
                .quant
                .as_ref()
                .map(|q| q.grids.clone())
                .unwrap_or_default(),
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
    /// The axis of its output channels: 0 for a convolution's [out, in, kh, kw] and ONNX's
    /// [out, in]; 1 for burn's [in, out] linear weights and ONNX MatMul's.
    pub out_axis: usize,
}

struct WeightCollector {
    path: Vec<String>,
    /// The type of the module each path element is a field of.
    containers: Vec<String>,
    layers: Vec<WeightLayer>,
}

impl ModuleVisitor for WeightCollector {
    fn enter_module(&mut self, name: &str, container_type: &str) {
        self.path.push(name.to_string());
        self.containers.push(container_type.to_string());
    }
    fn exit_module(&mut self, _name: &str, _container_type: &str) {
        self.path.pop();
        self.containers.pop();
    }
    fn visit_float<const D: usize>(&mut self, param: &Param<Tensor<D>>) {
        if D < 2 || self.path.last().map(String::as_str) != Some("weight") {
            return;
        }
        let tensor = param.val().inner();
        let shape = tensor.dims().to_vec();
        let n = shape.iter().product::<usize>();
        // burn's Linear keeps its weight as [in, out].
        let linear = self.containers.last().map(String::as_str) == Some("Struct:Linear");
        self.layers.push(WeightLayer {
            name: self.path[..self.path.len() - 1].join("."),
            values: tensor.reshape([n]),
            shape,
            out_axis: if linear { 1 } else { 0 },
        });
    }
}

/// Every prunable layer of `network`, in the model's order: found from the parameters
/// themselves (any weight of rank >= 2), so new models need no list.
pub fn weight_layers(network: &Network) -> Vec<WeightLayer> {
    let mut collector = WeightCollector {
        path: Vec::new(),
        containers: Vec::new(),
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
            "weight" => param.map(|w| {
                let shape = w.dims().to_vec();
                compression.weight(&layer, &shape, w.inner())
            }),
            "bias" => param.map(|b| compression.bias(&layer, b.inner())),
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
