//! Backward passes for the compression ops, on any backend that implements them.
//!
//! - `quantise`: STE multiplies the incoming gradient by 1 inside the representable range
//!   and 0 where q clamps (it keeps the input for that test); `identity` (BPDA) passes the
//!   gradient unchanged.
//! - `apply_mask`: the gradient of the masked weight goes to the dense weight unchanged, so
//!   pruned weights keep learning and can come back (DNS); the mask gets none.
//! - `conv2d`, `matmul` and `max_pool2d`: the gradient of each tracked input only (an attack's model
//!   weights are not tracked, so an attack computes no weight gradients).
//! - `dns_update`, `quantise_ste`, `attack_step` and the convolution's and pooling's own
//!   backward ops are not differentiated (their outputs are constants).

use burn::backend::Autodiff;
use burn::backend::Backend;
use burn::backend::autodiff::checkpoint::base::Checkpointer;
use burn::backend::autodiff::checkpoint::strategy::CheckpointStrategy;
use burn::backend::autodiff::grads::Gradients;
use burn::backend::autodiff::ops::{Backward, Ops, OpsKind, unary};
use burn::backend::tensor::{FloatTensor, IntTensor};
use burn::tensor::ops::{ConvOptions, MaxPoolOptions};

use super::{KernelOps, QuantGrad, StepSettings, Table};

#[derive(Debug)]
struct Ste(Table);

impl<B: Backend + KernelOps> Backward<B, 1> for Ste {
    type State = B::FloatTensorPrimitive;

    fn backward(self, ops: Ops<Self::State, 1>, grads: &mut Gradients, _: &mut Checkpointer) {
        let x = ops.state;
        unary::<B, _>(ops.parents, ops.node, grads, |grad| {
            B::quantise_ste(x, grad, self.0)
        });
    }
}

#[derive(Debug)]
struct PassThrough;

impl<B: Backend> Backward<B, 1> for PassThrough {
    type State = ();

    fn backward(self, ops: Ops<Self::State, 1>, grads: &mut Gradients, _: &mut Checkpointer) {
        unary::<B, _>(ops.parents, ops.node, grads, |grad| grad);
    }
}

/// The gradient of `weight ⊙ mask` flows to the weight only.
#[derive(Debug)]
struct ToWeight;

impl<B: Backend> Backward<B, 2> for ToWeight {
    type State = ();

    fn backward(self, ops: Ops<Self::State, 2>, grads: &mut Gradients, _: &mut Checkpointer) {
        let [weight, _mask] = ops.parents;
        let grad = grads.consume::<B>(&ops.node);
        if let Some(weight) = weight {
            grads.register::<B>(weight.id, grad);
        }
    }
}

/// A convolution's parents, in order: x, weight and, when N is 3, bias.
#[derive(Debug)]
struct ConvBackward;

impl<B: Backend + KernelOps, const N: usize> Backward<B, N> for ConvBackward {
    type State = (
        B::FloatTensorPrimitive,
        B::FloatTensorPrimitive,
        Option<B::FloatTensorPrimitive>,
        ConvOptions<2>,
    );

    fn backward(self, ops: Ops<Self::State, N>, grads: &mut Gradients, _: &mut Checkpointer) {
        let grad = grads.consume::<B>(&ops.node);
        let (x, weight, bias, options) = ops.state;
        for (input, parent) in ops.parents.into_iter().enumerate() {
            let Some(parent) = parent else { continue };
            let (x, weight, grad, options) =
                (x.clone(), weight.clone(), grad.clone(), options.clone());
            let input_grad = match input {
                0 => B::conv_input_grad(x, weight, grad, options),
                1 => B::conv_weight_grad(x, weight, grad, options),
                _ => B::conv2d_bias_backward(x, bias.clone().expect("a bias"), grad),
            };
            grads.register::<B>(parent.id, input_grad);
        }
    }
}

/// a · b: the gradient of a is g · bᵀ, of b aᵀ · g (for tracked inputs only).
#[derive(Debug)]
struct MatmulBackward;

impl<B: Backend + KernelOps> Backward<B, 2> for MatmulBackward {
    type State = (B::FloatTensorPrimitive, B::FloatTensorPrimitive);

    fn backward(self, ops: Ops<Self::State, 2>, grads: &mut Gradients, _: &mut Checkpointer) {
        let grad = grads.consume::<B>(&ops.node);
        let (a, b) = ops.state;
        let [a_node, b_node] = ops.parents;
        if let Some(node) = a_node {
            grads.register::<B>(node.id, B::matmul(grad.clone(), B::float_transpose(b)));
        }
        if let Some(node) = b_node {
            grads.register::<B>(node.id, B::matmul(B::float_transpose(a), grad));
        }
    }
}

/// Max pooling: the gradient goes to each window's maximum.
#[derive(Debug)]
struct MaxPoolBackward(MaxPoolOptions<2>);

impl<B: Backend + KernelOps> Backward<B, 1> for MaxPoolBackward {
    type State = (B::FloatTensorPrimitive, B::IntTensorPrimitive);

    fn backward(self, ops: Ops<Self::State, 1>, grads: &mut Gradients, _: &mut Checkpointer) {
        let (x, indices) = ops.state;
        unary::<B, _>(ops.parents, ops.node, grads, |grad| {
            B::max_pool_input_grad(x, self.0, grad, indices)
        });
    }
}

impl<B: Backend + KernelOps, C: CheckpointStrategy> KernelOps for Autodiff<B, C> {
    fn quantise(x: FloatTensor<Self>, table: Table, grad: QuantGrad) -> FloatTensor<Self> {
        match grad {
            QuantGrad::Ste => match Ste(table.clone())
                .prepare::<C>([x.node()])
                .compute_bound()
                .stateful()
            {
                OpsKind::Tracked(prep) => {
                    let input = x.into_primitive();
                    prep.finish(input.clone(), B::quantise(input, table, grad))
                }
                OpsKind::UnTracked(prep) => {
                    prep.finish(B::quantise(x.into_primitive(), table, grad))
                }
            },
            QuantGrad::Identity => {
                let (input, node) = x.into_parts();
                PassThrough
                    .prepare::<C>([node])
                    .compute_bound()
                    .stateless(B::quantise(input, table, grad))
            }
        }
    }

    fn quantise_ste(
        x: FloatTensor<Self>,
        grad: FloatTensor<Self>,
        table: Table,
    ) -> FloatTensor<Self> {
        FloatTensor::<Self>::new(B::quantise_ste(
            x.into_primitive(),
            grad.into_primitive(),
            table,
        ))
    }

    fn apply_mask(weight: FloatTensor<Self>, mask: FloatTensor<Self>) -> FloatTensor<Self> {
        let (weight, weight_node) = weight.into_parts();
        let (mask, mask_node) = mask.into_parts();
        ToWeight
            .prepare::<C>([weight_node, mask_node])
            .compute_bound()
            .stateless(B::apply_mask(weight, mask))
    }

    fn dns_update(
        weight: FloatTensor<Self>,
        mask: FloatTensor<Self>,
        t_low: f32,
        t_high: f32,
    ) -> FloatTensor<Self> {
        FloatTensor::<Self>::new(B::dns_update(
            weight.into_primitive(),
            mask.into_primitive(),
            t_low,
            t_high,
        ))
    }

    fn attack_step(
        x: FloatTensor<Self>,
        x0: FloatTensor<Self>,
        grad: FloatTensor<Self>,
        factor: FloatTensor<Self>,
        step: StepSettings,
    ) -> FloatTensor<Self> {
        FloatTensor::<Self>::new(B::attack_step(
            x.into_primitive(),
            x0.into_primitive(),
            grad.into_primitive(),
            factor.into_primitive(),
            step,
        ))
    }

    fn conv(
        x: FloatTensor<Self>,
        weight: FloatTensor<Self>,
        options: ConvOptions<2>,
    ) -> FloatTensor<Self> {
        let (x, x_node) = x.into_parts();
        let (weight, weight_node) = weight.into_parts();
        match ConvBackward
            .prepare::<C>([x_node, weight_node])
            .compute_bound()
            .stateful()
        {
            OpsKind::Tracked(prep) => {
                let state = (x.clone(), weight.clone(), None, options.clone());
                prep.finish(state, B::conv(x, weight, options))
            }
            OpsKind::UnTracked(prep) => prep.finish(B::conv(x, weight, options)),
        }
    }

    fn conv_bias(
        x: FloatTensor<Self>,
        weight: FloatTensor<Self>,
        bias: FloatTensor<Self>,
        options: ConvOptions<2>,
    ) -> FloatTensor<Self> {
        let (x, x_node) = x.into_parts();
        let (weight, weight_node) = weight.into_parts();
        let (bias, bias_node) = bias.into_parts();
        match ConvBackward
            .prepare::<C>([x_node, weight_node, bias_node])
            .compute_bound()
            .stateful()
        {
            OpsKind::Tracked(prep) => {
                let state = (
                    x.clone(),
                    weight.clone(),
                    Some(bias.clone()),
                    options.clone(),
                );
                prep.finish(state, B::conv_bias(x, weight, bias, options))
            }
            OpsKind::UnTracked(prep) => prep.finish(B::conv_bias(x, weight, bias, options)),
        }
    }

    fn conv_input_grad(
        x: FloatTensor<Self>,
        weight: FloatTensor<Self>,
        output_grad: FloatTensor<Self>,
        options: ConvOptions<2>,
    ) -> FloatTensor<Self> {
        FloatTensor::<Self>::new(B::conv_input_grad(
            x.into_primitive(),
            weight.into_primitive(),
            output_grad.into_primitive(),
            options,
        ))
    }

    fn conv_weight_grad(
        x: FloatTensor<Self>,
        weight: FloatTensor<Self>,
        output_grad: FloatTensor<Self>,
        options: ConvOptions<2>,
    ) -> FloatTensor<Self> {
        FloatTensor::<Self>::new(B::conv_weight_grad(
            x.into_primitive(),
            weight.into_primitive(),
            output_grad.into_primitive(),
            options,
        ))
    }

    fn matmul(a: FloatTensor<Self>, b: FloatTensor<Self>) -> FloatTensor<Self> {
        let (a, a_node) = a.into_parts();
        let (b, b_node) = b.into_parts();
        match MatmulBackward
            .prepare::<C>([a_node, b_node])
            .compute_bound()
            .stateful()
        {
            OpsKind::Tracked(prep) => {
                let state = (a.clone(), b.clone());
                prep.finish(state, B::matmul(a, b))
            }
            OpsKind::UnTracked(prep) => prep.finish(B::matmul(a, b)),
        }
    }

    fn max_pool(x: FloatTensor<Self>, options: MaxPoolOptions<2>) -> FloatTensor<Self> {
        match MaxPoolBackward(options.clone())
            .prepare::<C>([x.node()])
            .compute_bound()
            .stateful()
        {
            OpsKind::Tracked(prep) => {
                let x = x.into_primitive();
                let (output, indices) = B::max_pool_with_indices(x.clone(), options);
                prep.finish((x, indices), output)
            }
            OpsKind::UnTracked(prep) => prep.finish(B::max_pool(x.into_primitive(), options)),
        }
    }

    fn max_pool_with_indices(
        x: FloatTensor<Self>,
        options: MaxPoolOptions<2>,
    ) -> (FloatTensor<Self>, IntTensor<Self>) {
        let (output, indices) = B::max_pool_with_indices(x.into_primitive(), options);
        (FloatTensor::<Self>::new(output), indices)
    }

    fn max_pool_input_grad(
        x: FloatTensor<Self>,
        options: MaxPoolOptions<2>,
        output_grad: FloatTensor<Self>,
        indices: IntTensor<Self>,
    ) -> FloatTensor<Self> {
        FloatTensor::<Self>::new(B::max_pool_input_grad(
            x.into_primitive(),
            options,
            output_grad.into_primitive(),
            indices,
        ))
    }
}
