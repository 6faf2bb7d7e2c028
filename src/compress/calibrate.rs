//! The grids of a data-dependent quantiser (`quant::Affine`): activations calibrated on
//! training images through the float model, weights' scales from the weights themselves
//! (refreshed while fine-tuning), biases' from both.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};

use burn::prelude::*;

use crate::data::{Images, shuffled_order};
use crate::model::{Compression, Network, weight_layers};
use crate::quant::{Grid, QuantConfig, WeightView, input_site};
use crate::{Error, Result};

/// Images per calibration forward pass.
const BATCH: usize = 250;

fn host(t: Tensor<1>) -> Vec<f32> {
    t.into_data()
        .convert::<f32>()
        .try_to_vec::<f32>()
        .expect("f32 data")
}

/// The grid of every activation site `config` quantises, from the float outputs of `network`
/// (masked as `compression` says, no quantiser) on `images` training images drawn with
/// `seed` from `train`. Sites the quantiser leaves float get none.
pub(super) fn activations(
    network: &Network,
    compression: &Compression,
    config: &QuantConfig,
    (images, seed): (usize, u64),
    train: &Images,
    device: &Device,
) -> Result<BTreeMap<String, Grid>> {
    let order = shuffled_order(train.len(), seed, 0);
    let chosen = &order[..images.min(order.len())];
    let log = Arc::new(Mutex::new(Vec::new()));
    // The quantiser with no grids yet: nothing is quantised, the recorder sees its sites.
    let recording = Compression {
        quant: Some(crate::model::Quantisation::uniform(config.clone())),
        recorder: Some(log.clone()),
        ..compression.clone()
    };
    let mut samples: BTreeMap<String, Vec<f32>> = BTreeMap::new();
    for batch in chosen.chunks(BATCH) {
        let (x, _) = train.batch(batch, device);
        let _ = network.forward_compressed(x, &recording);
        for (site, values) in std::mem::take(&mut *log.lock().expect("activation log")) {
            samples.entry(site).or_default().extend(host(values));
        }
    }
    let mut grids = BTreeMap::new();
    for (site, values) in samples {
        let grid = config
            .activation_grid(&values)
            .map_err(|e| Error::usage(format!("site {site}: {e}")))?;
        if let Some(grid) = grid {
            grids.insert(site, grid);
        }
    }
    Ok(grids)
}

/// Every weight layer's and bias's grid for `network` as `compression` masks it, into
/// `compression`'s quantisation (its activation grids stay).
pub(super) fn refresh_weights(network: &Network, compression: &mut Compression) {
    let masks = compression.masks.clone();
    let Some(quant) = compression.quant.as_mut() else {
        return;
    };
    for layer in weight_layers(network) {
        let mut values = host(layer.values);
        if let Some(mask) = masks.get(&layer.name) {
            for (v, m) in values.iter_mut().zip(host(mask.values.clone())) {
                if m == 0.0 {
                    *v = 0.0;
                }
            }
        }
        let view = WeightView {
            layer: &layer.name,
            shape: &layer.shape,
            out_axis: layer.out_axis,
            values: &values,
        };
        let weight = quant.config.weight_grid(&view);
        let input = quant.grids.activations.get(&input_site(&layer.name));
        match quant.config.bias_grid(weight.as_ref(), input) {
            Some(grid) => quant.grids.biases.insert(layer.name.clone(), grid),
            None => quant.grids.biases.remove(&layer.name),
        };
        match weight {
            Some(grid) => quant.grids.weights.insert(layer.name, grid),
            None => quant.grids.weights.remove(&layer.name),
        };
    }
}
