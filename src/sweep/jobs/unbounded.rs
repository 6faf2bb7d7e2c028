//! The unbounded check of a model's gradient: a gradient attack with a budget of 1.0 must
//! leave about no image correct.

use std::path::PathBuf;

use super::{Work, read_json, write_json};
use crate::Result;
use crate::kernels::QuantGrad;
use crate::report::Results;
use crate::sweep::context::Context;
use crate::transfer::{UnboundedCheck, indicators};

/// The unbounded check of `model`'s gradient through `grad`, on the first `images` test
/// images.
pub(in crate::sweep) struct Unbounded {
    pub model: usize,
    pub grad: QuantGrad,
    pub images: usize,
    pub cell: PathBuf,
}

impl Work for Unbounded {
    fn run(&self, context: &Context) -> Result<String> {
        let model = self.model;
        let attack = indicators::unbounded_attack();
        let set = context.craft(model, None, &attack, self.grad, self.images)?;
        let metrics = context.evaluate(model, &set)?;
        let check = UnboundedCheck {
            seed: context.spec(model).seed,
            model: context.spec(model).label.clone(),
            gradient: set.diagnostics.gradient,
            accuracy: metrics.adversarial_accuracy,
        };
        write_json(&self.cell, &check)?;
        Ok(format!(
            "{:.1}% still correct at a budget of 1.0",
            100.0 * check.accuracy
        ))
    }

    fn results(&self, _context: &Context, results: &mut Results) -> Result<()> {
        results.unbounded.push(read_json(&self.cell)?);
        Ok(())
    }
}
