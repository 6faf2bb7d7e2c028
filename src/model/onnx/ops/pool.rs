//! MaxPool and AveragePool over 2-D windows of images.

use burn::tensor::module::avg_pool2d;
use burn::tensor::ops::{AvgPoolOptions, MaxPoolOptions};

use super::prelude::*;
use crate::kernels::max_pool2d;

#[derive(Clone, Debug)]
pub enum PoolKind {
    Max(MaxPoolOptions<2>),
    Average(AvgPoolOptions<2>),
}

#[derive(Clone, Debug)]
pub struct Pool {
    pub x: Operand,
    pub kind: PoolKind,
}

pub fn max_pool(_: &mut Builder, n: &Node) -> Result<Built, String> {
    build::refuse_auto_pad(n)?;
    let a = &n.attrs;
    let kernel = build::pair(a.ints("kernel_shape"), 0, "kernel_shape")?;
    let x = build::operand_of(n)?;
    one(Op::Pool(Pool {
        x,
        kind: PoolKind::Max(MaxPoolOptions {
            kernel_size: kernel,
            stride: build::pair(a.ints("strides"), 1, "strides")?,
            padding: build::pads2(a.ints("pads"))?,
            dilation: build::pair(a.ints("dilations"), 1, "dilations")?,
            ceil_mode: a.int("ceil_mode", 0) == 1,
        }),
    }))
}

pub fn average_pool(_: &mut Builder, n: &Node) -> Result<Built, String> {
    build::refuse_auto_pad(n)?;
    let a = &n.attrs;
    let dilations = build::pair(a.ints("dilations"), 1, "dilations")?;
    if dilations != [1, 1] {
        return Err(format!("dilations {dilations:?} are not supported"));
    }
    let x = build::operand_of(n)?;
    one(Op::Pool(Pool {
        x,
        kind: PoolKind::Average(AvgPoolOptions {
            kernel_size: build::pair(a.ints("kernel_shape"), 0, "kernel_shape")?,
            stride: build::pair(a.ints("strides"), 1, "strides")?,
            padding: build::pads2(a.ints("pads"))?,
            count_include_pad: a.int("count_include_pad", 0) == 1,
            ceil_mode: a.int("ceil_mode", 0) == 1,
        }),
    }))
}

impl StepKind for Pool {
    fn operands(&self) -> Vec<Operand> {
        vec![self.x]
    }

    /// Rank, positive attributes, pads smaller than the window (ONNX Runtime's rule: a window
    /// that lies wholly in the padding has nothing to pool).
    fn output_shape(&self, shape: Shape) -> Result<Vec<Dim>, String> {
        let (kernel, stride, dilation, pads, ceil) = match &self.kind {
            PoolKind::Max(o) => (
                o.kernel_size,
                o.stride,
                o.dilation,
                &o.padding,
                o.ceil_mode,
            ),
            PoolKind::Average(o) => (o.kernel_size, o.stride, [1, 1], &o.padding, o.ceil_mode),
        };
        let (n, [c, h, w]) = shapes::image(&shape(self.x))?;
        shapes::positive("kernel_shape", &kernel)?;
        shapes::positive("strides", &stride)?;
        shapes::positive("dilations", &dilation)?;
        shapes::pads_in_range(pads)?;
        if pads
            .iter()
            .zip(kernel)
            .any(|(&(begin, end), k)| begin >= k || end >= k)
        {
            return Err(format!(
                "pads {pads:?} must be smaller than the kernel {kernel:?}"
            ));
        }
        let [oh, ow] = shapes::spatial([h, w], kernel, stride, dilation, pads, ceil)?;
        Ok(vec![n, Dim::new(c as i64), oh, ow])
    }

    fn run(&self, env: &Env) -> Value {
        let x = env.get(self.x).as_rank::<4>();
        Value::new(match &self.kind {
            PoolKind::Max(o) => max_pool2d(x, o.clone()),
            PoolKind::Average(o) => avg_pool2d(x, o.clone()),
        })
    }
}
