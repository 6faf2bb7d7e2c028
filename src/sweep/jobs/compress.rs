//! Compressing a model and fine-tuning it.

use super::Work;
use crate::Result;
use crate::compress::{self, CompressConfig};
use crate::sweep::context::Context;

/// Compress model `base` into model `model` and fine-tune it.
pub(in crate::sweep) struct Compress {
    pub model: usize,
    pub base: usize,
    pub config: CompressConfig,
}

impl Work for Compress {
    fn run(&self, context: &Context) -> Result<String> {
        let config = &self.config;
        let training = context.training()?;
        let spec = context.spec(self.model);
        let bar = context.store.stage(
            config.finetune.epochs as u64,
            &format!("{} s{}", spec.label, spec.seed),
            "epochs",
        );
        let outcome = compress::compress_checkpoint(
            &context.spec(self.base).path,
            &training.data,
            config,
            training.evaluation_images,
            context.device(),
            &spec.path,
            |_| bar.inc(1),
        )?;
        bar.finish_and_clear();
        Ok(format!(
            "{:.2}% clean accuracy (baseline {:.2}%)",
            100.0 * outcome.test_accuracy,
            100.0 * outcome.base_accuracy
        ))
    }
}
