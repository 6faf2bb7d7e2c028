//! The transfer command's matrix CSV, from the cells its attack jobs kept in memory.

use std::path::PathBuf;

use super::Work;
use crate::sweep::context::Context;
use crate::{Error, Result};

/// The transfer command's matrix of adversarial accuracy (rows: source, columns: target).
pub(in crate::sweep) struct Matrix {
    pub out: PathBuf,
}

impl Work for Matrix {
    /// The cells in memory come source by source, each over every target in order.
    fn run(&self, context: &Context) -> Result<String> {
        let out = &self.out;
        let outcome = context.outcome.borrow();
        let labels: Vec<&str> = context
            .plan
            .models
            .iter()
            .map(|m| m.label.as_str())
            .collect();
        if outcome.cells.len() != labels.len() * labels.len() {
            return Err(Error::usage(format!(
                "the matrix needs {} cells, the attacks made {}",
                labels.len() * labels.len(),
                outcome.cells.len()
            )));
        }
        let mut csv = format!("source\\target,{}\n", labels.join(","));
        for (source, row) in labels.iter().zip(outcome.cells.chunks(labels.len())) {
            let mut line = vec![source.to_string()];
            line.extend(
                row.iter()
                    .map(|c| c.metrics.adversarial_accuracy.to_string()),
            );
            csv.push_str(&line.join(","));
            csv.push('\n');
        }
        crate::write_atomically(out, csv.as_bytes())?;
        Ok(format!("-> {}", out.display()))
    }
}
