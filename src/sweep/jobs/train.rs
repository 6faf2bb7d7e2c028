//! Training a baseline from scratch.

use super::Work;
use crate::Error;
use crate::Result;
use crate::sweep::context::Context;
use crate::train::{self, TrainConfig};

/// Train model `model` from scratch.
pub(in crate::sweep) struct Train {
    pub model: usize,
    pub config: TrainConfig,
}

impl Work for Train {
    fn run(&self, context: &Context) -> Result<String> {
        let config = &self.config;
        let training = context.training()?;
        if training.model.builtin().is_none() {
            return Err(Error::usage(
                "an imported model is its own baseline; it is not trained",
            ));
        }
        let spec = context.spec(self.model);
        let store = context.store;
        let bar = store.stage(
            config.epochs as u64,
            &format!("{} s{}", spec.label, spec.seed),
            "epochs",
        );
        store.log(&format!(
            "seed {}: training the baseline ({} epochs)",
            spec.seed, config.epochs
        ));
        let outcome = train::train_baseline(
            &training.model,
            &training.data,
            config,
            training.evaluation_images,
            context.device(),
            &spec.path,
            false,
            |r| {
                bar.inc(1);
                store.log(&format!(
                    "seed {}: baseline epoch {}: loss {:.4}, test accuracy {:.2}%",
                    spec.seed,
                    r.epoch,
                    r.train_loss,
                    100.0 * r.test_accuracy
                ));
            },
        )?;
        bar.finish_and_clear();
        Ok(format!(
            "trained, {:.2}% clean accuracy",
            100.0 * outcome.test_accuracy
        ))
    }
}
