//! The profile's CSVs and figure, from the measurements its jobs kept in memory.

use std::path::PathBuf;

use super::Work;
use crate::Result;
use crate::attack::AttackKind;
use crate::profile;
use crate::sweep::context::Context;

/// The profile's `attacks.csv`, `split.csv` and figure, in `out`.
pub(in crate::sweep) struct ProfileFiles {
    pub out: PathBuf,
    pub batch_sizes: Vec<usize>,
}

impl Work for ProfileFiles {
    fn run(&self, context: &Context) -> Result<String> {
        let mut outcome = context.outcome.borrow_mut();
        let mut attacks: Vec<AttackKind> = Vec::new();
        for t in &outcome.timings {
            if !attacks.contains(&t.attack) {
                attacks.push(t.attack);
            }
        }
        let files = profile::write_files(
            &self.out,
            &outcome.timings,
            &outcome.splits,
            &attacks,
            &self.batch_sizes,
            context.backend(),
        )?;
        let what = format!("-> {}", files[0].display());
        outcome.files = files;
        Ok(what)
    }
}
