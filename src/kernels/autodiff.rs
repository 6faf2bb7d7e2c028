//! Backward passes for the compression ops, on any backend that implements them.
//!
//! - `fixed_point`: STE multiplies the incoming gradient by 1 inside the representable range
//!   and 0 where q clamps (it keeps the input for that test); `identity` (BPDA) passes the
//!   gradient unchanged.
//! - `apply_mask`: the gradient of the masked weight goes to the dense weight unchanged, so
//!   pruned weights keep learning and can come back (DNS); the mask gets none.
//! - `dns_update`, `fixed_point_ste` and `attack_step` are not differentiated (their outputs
//!   are constants).

use burn::backend::Autodiff;
use burn::backend::Backend;
use burn::backend::autodiff::checkpoint::base::Checkpointer;
use burn::backend::autodiff::checkpoint::strategy::CheckpointStrategy;
use burn::backend::autodiff::grads::Gradients;
use burn::backend::autodiff::ops::{Backward, Ops, OpsKind, unary};
use burn::backend::tensor::FloatTensor;

use super::{FixedPoint, KernelOps, QuantGrad, StepSettings};

#[derive(Debug)]
struct Ste(FixedPoint);

impl<B: Backend + KernelOps> Backward<B, 1> for Ste {
    type State = B::FloatTensorPrimitive;

    fn backward(self, ops: Ops<Self::State, 1>, grads: &mut Gradients, _: &mut Checkpointer) {
        let x = ops.state;
        unary::<B, _>(ops.parents, ops.node, grads, |grad| {
            B::fixed_point_ste(x, grad, self.0)
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

impl<B: Backend + KernelOps, C: CheckpointStrategy> KernelOps for Autodiff<B, C> {
    fn fixed_point(x: FloatTensor<Self>, format: FixedPoint, grad: QuantGrad) -> FloatTensor<Self> {
        match grad {
            QuantGrad::Ste => match Ste(format)
                .prepare::<C>([x.node()])
                .compute_bound()
                .stateful()
            {
                OpsKind::Tracked(prep) => {
                    let input = x.into_primitive();
                    prep.finish(input.clone(), B::fixed_point(input, format, grad))
                }
                OpsKind::UnTracked(prep) => {
                    prep.finish(B::fixed_point(x.into_primitive(), format, grad))
                }
            },
            QuantGrad::Identity => {
                let (input, node) = x.into_parts();
                PassThrough
                    .prepare::<C>([node])
                    .compute_bound()
                    .stateless(B::fixed_point(input, format, grad))
            }
        }
    }

    fn fixed_point_ste(
        x: FloatTensor<Self>,
        grad: FloatTensor<Self>,
        format: FixedPoint,
    ) -> FloatTensor<Self> {
        FloatTensor::<Self>::new(B::fixed_point_ste(
            x.into_primitive(),
            grad.into_primitive(),
            format,
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
}
