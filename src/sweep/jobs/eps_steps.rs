//! One Figure 3 point: a model attacked by itself at one step size and step count.

use std::path::PathBuf;

use super::{Work, read_json, write_json};
use crate::Result;
use crate::attack::AttackConfig;
use crate::kernels::QuantGrad;
use crate::report::{EpsStepsCell, Results};
use crate::sweep::context::Context;

/// One Figure 3 point: `model` attacked by itself on the first `images` test images (the set
/// is not kept).
pub(in crate::sweep) struct EpsSteps {
    pub model: usize,
    pub config: AttackConfig,
    pub images: usize,
    pub cell: PathBuf,
}

impl Work for EpsSteps {
    fn run(&self, context: &Context) -> Result<String> {
        let (model, config) = (self.model, &self.config);
        let set = context.craft(model, None, config, QuantGrad::Ste, self.images)?;
        let metrics = context.evaluate(model, &set)?;
        let what = format!(
            "adversarial accuracy {:.1}%",
            100.0 * metrics.adversarial_accuracy
        );
        write_json(
            &self.cell,
            &EpsStepsCell {
                seed: context.spec(model).seed,
                source: context.spec(model).label.clone(),
                attack: config.kind(),
                eps: config.step().unwrap_or(f32::NAN),
                steps: config.steps(),
                metrics,
            },
        )?;
        Ok(what)
    }

    fn results(&self, _context: &Context, results: &mut Results) -> Result<()> {
        results
            .eps_steps
            .push(read_json::<EpsStepsCell>(&self.cell)?);
        Ok(())
    }
}
