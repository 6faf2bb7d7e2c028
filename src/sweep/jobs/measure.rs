//! The profile's measurement of one model variant at one batch size.

use std::rc::Rc;

use super::Work;
use crate::Result;
use crate::attack::AttackConfig;
use crate::data::Images;
use crate::profile::{self, Variant};
use crate::sweep::context::Context;

/// Every attack's throughput on `variant` at `batch_size` on the `test` images, and where
/// one iteration's time goes (timings are always measured afresh, never reused).
pub(in crate::sweep) struct Measure {
    pub variant: Variant,
    pub test: Rc<Images>,
    pub batch_size: usize,
    pub attacks: Vec<AttackConfig>,
    pub repeats: usize,
}

impl Work for Measure {
    fn run(&self, context: &Context) -> Result<String> {
        let (variant, batch_size, repeats) = (&self.variant, self.batch_size, self.repeats);
        let split = profile::time_split(variant, &self.test, batch_size, repeats, context.device());
        let mut what = Vec::new();
        for config in &self.attacks {
            let t = profile::attack_throughput(
                variant,
                config,
                &self.test,
                batch_size,
                repeats,
                context.device(),
            )?;
            what.push(format!("{} {:.1} images/s", t.attack, t.images_per_second));
            context.outcome.borrow_mut().timings.push(t);
        }
        context.outcome.borrow_mut().splits.push(split);
        Ok(what.join(", "))
    }
}
