//! Beyond the paper: attacks crafted on a pair (compressed model, its reference) — DIVA, and
//! PGD for comparison — and how their examples split the pair.

use std::path::PathBuf;

use super::{Work, read_json, write_json};
use crate::Result;
use crate::attack::AttackConfig;
use crate::kernels::QuantGrad;
use crate::report::{DifferentialCell, Results};
use crate::sweep::context::Context;
use crate::transfer;

/// Each of `attacks` crafted on the pair (`compressed`, `reference`) on the first `images`
/// test images, and how its examples split the pair.
pub(in crate::sweep) struct Differential {
    pub compressed: usize,
    pub reference: usize,
    pub attacks: Vec<AttackConfig>,
    pub images: usize,
    pub cell: PathBuf,
}

impl Work for Differential {
    fn run(&self, context: &Context) -> Result<String> {
        let (compressed, reference) = (self.compressed, self.reference);
        let (c, f) = (context.model(compressed)?, context.model(reference)?);
        let mut cells = Vec::new();
        let mut what = Vec::new();
        for config in &self.attacks {
            let set = context.craft(
                compressed,
                Some(reference),
                config,
                QuantGrad::Ste,
                self.images,
            )?;
            let test = context.test()?;
            let metrics = transfer::evaluate_pair(
                &c.classifier,
                &f.classifier,
                &set,
                &test.images,
                test.batch_size,
                context.device(),
            )
            .map_err(|e| context.named(e, compressed, Some(reference)))?;
            what.push(format!(
                "{} evasive {:.1}%",
                config.kind(),
                100.0 * metrics.evasive_success_rate
            ));
            cells.push(DifferentialCell {
                seed: context.spec(compressed).seed,
                attack: config.kind(),
                model: context.spec(compressed).label.clone(),
                metrics,
            });
        }
        write_json(&self.cell, &cells)?;
        Ok(what.join(", "))
    }

    fn results(&self, _context: &Context, results: &mut Results) -> Result<()> {
        results
            .differential
            .extend(read_json::<Vec<DifferentialCell>>(&self.cell)?);
        Ok(())
    }
}
