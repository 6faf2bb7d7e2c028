//! Conv: a 2-D convolution with a weight (and bias) stored in the file.

use burn::tensor::ops::ConvOptions;

use super::prelude::*;
use crate::kernels::conv2d;

#[derive(Clone, Debug)]
pub struct Conv {
    pub x: Operand,
    pub weight: usize,
    pub bias: Option<usize>,
    pub options: ConvOptions<2>,
}

pub fn convert(b: &mut Builder, n: &Node) -> Result<Built, String> {
    build::refuse_auto_pad(n)?;
    let x = b.operand(n, 0)?;
    let weight = b.weight(n, 1)?;
    let bias = b.bias(n, 2)?;
    let w = b.params[weight].shape.clone();
    if w.len() != 4 {
        return Err(format!(
            "the weight has shape {w:?}; only 2-D convolutions (a weight [M, C/group, kH, kW]) \
             are supported"
        ));
    }
    if let Some(k) = n.attrs.ints("kernel_shape") {
        let k: Vec<usize> = k.iter().map(|&v| v as usize).collect();
        kernel(&k, &w)?;
    }
    one(Op::Conv(Conv {
        x,
        weight,
        bias,
        options: ConvOptions {
            stride: build::pair(n.attrs.ints("strides"), 1, "strides")?,
            padding: build::pads2(n.attrs.ints("pads"))?,
            dilation: build::pair(n.attrs.ints("dilations"), 1, "dilations")?,
            groups: n.attrs.int("group", 1) as usize,
        },
    }))
}

/// A Conv's `kernel_shape` attribute against its weight [M, C/group, kH, kW].
fn kernel(kernel_shape: &[usize], weight: &[usize]) -> Result<(), String> {
    if weight.len() == 4 && kernel_shape != [weight[2], weight[3]] {
        return Err(format!(
            "kernel_shape {kernel_shape:?} does not match the weight's {:?}",
            &weight[2..]
        ));
    }
    Ok(())
}

impl StepKind for Conv {
    fn operands(&self) -> Vec<Operand> {
        vec![self.x]
    }

    fn output_shape(&self, shape: Shape) -> Result<Vec<Dim>, String> {
        let x = shape(self.x);
        let w = shapes::fixed(&shape(Operand::Param(self.weight)));
        let bias = self.bias.map(|b| shapes::fixed(&shape(Operand::Param(b))));
        let o = &self.options;
        let (n, [channels, h, width]) = shapes::image(&x)?;
        shapes::rank("the weight", &w, 4)?;
        shapes::positive("strides", &o.stride)?;
        shapes::positive("dilations", &o.dilation)?;
        shapes::positive("group", &[o.groups])?;
        shapes::pads_in_range(&o.padding)?;
        let (groups, out) = (o.groups, w[0]);
        if channels % groups != 0 {
            return Err(format!(
                "group {groups} does not divide the input's {channels} channels"
            ));
        }
        if out % groups != 0 {
            return Err(format!(
                "group {groups} does not divide the weight's {out} output channels"
            ));
        }
        if w[1] * groups != channels {
            return Err(format!(
                "the weight {w:?} takes {} input channels (x group {groups}), the input has \
                 {channels}",
                w[1] * groups
            ));
        }
        if let Some(b) = bias
            && b != [out]
        {
            return Err(format!("the bias has shape {b:?}; [{out}] is needed"));
        }
        let [oh, ow] = shapes::spatial(
            [h, width],
            [w[2], w[3]],
            o.stride,
            o.dilation,
            &o.padding,
            false,
        )?;
        Ok(vec![n, Dim::new(out as i64), oh, ow])
    }

    /// The im2col matrix: input channels per group × kernel × output pixels.
    fn workspace(&self, shape: Shape, out: &[Dim]) -> usize {
        let w = shapes::fixed(&shape(Operand::Param(self.weight)));
        w[1..]
            .iter()
            .try_fold(1usize, |n, &d| n.checked_mul(d))
            .and_then(|k| k.checked_mul(out[2].at(1)))
            .and_then(|k| k.checked_mul(out[3].at(1)))
            .unwrap_or(usize::MAX)
    }

    fn run(&self, env: &Env) -> Value {
        let shape = env.shape(self.weight);
        let w4: Tensor<4> = env
            .weight(self.weight)
            .reshape([shape[0], shape[1], shape[2], shape[3]]);
        let b = self.bias.map(|b| env.weight(b));
        let x = env.input(self.weight, env.get(self.x)).as_rank::<4>();
        Value::new(conv2d(x, w4, b, self.options.clone()))
    }
}
