//! The sweep's results, figures and report, from the files of every earlier job.

use super::Work;
use crate::attack::AttackConfig;
use crate::report::{self, CdfSeries, Family, ModelRow};
use crate::sweep::context::Context;
use crate::{ModelRole, Result, compress, train};

/// The sweep's tables, figures and report, from every file of the plan.
pub(in crate::sweep) struct Report {
    pub title: String,
    /// Where the numbers come from (the config as TOML among it), for the report's header.
    pub provenance: report::Provenance,
    /// The settings of each attack of the sweep (the first seed's).
    pub attacks: Vec<AttackConfig>,
    /// Clean accuracy of a model whose checkpoint does not record it: on this many test
    /// images (`None`: all).
    pub evaluation_images: Option<usize>,
    /// Figure 5: activations recorded on this many test images.
    pub activation_images: usize,
}

impl Work for Report {
    fn run(&self, context: &Context) -> Result<String> {
        let plan = context.plan;
        let models = (0..plan.models.len())
            .map(|m| self.row(context, m))
            .collect::<Result<Vec<_>>>()?;
        let backend = context.backend();
        let mut results = report::Results {
            title: self.title.clone(),
            provenance: self.provenance.clone(),
            attacks: self.attacks.clone(),
            backend: backend.name.into(),
            adapter: backend.adapter.clone(),
            models,
            cells: Vec::new(),
            eps_steps: Vec::new(),
            cdfs: Vec::new(),
            throughput: Vec::new(),
            differential: Vec::new(),
            unbounded: Vec::new(),
        };
        for job in &plan.jobs {
            job.work.results(context, &mut results)?;
        }
        results.cdfs = self.cdfs(context, &results.models)?;
        let report = report::write(context.store.root(), &results)?;
        let what = format!(
            "{} models, {} cells -> {}",
            results.models.len(),
            results.cells.len(),
            report.display()
        );
        context.outcome.borrow_mut().report =
            Some((report, results.models.len(), results.cells.len()));
        Ok(what)
    }
}

impl Report {
    /// Model `index` as a row of `models.csv` (its clean accuracy measured when its
    /// checkpoint does not record it).
    fn row(&self, context: &Context, index: usize) -> Result<ModelRow> {
        let spec = context.spec(index);
        let m = context.model(index)?;
        let quantiser = m.classifier.compression.quant.as_ref().map(|q| &q.config);
        let clean_accuracy = match m.recorded_accuracy {
            Some(a) => a,
            None => train::evaluate(
                &m.classifier.network,
                &m.classifier.compression,
                &context.test()?.images,
                context.device(),
                train::EVAL_BATCH_SIZE,
                self.evaluation_images,
            )
            .map_err(|e| e.naming(ModelRole::Target, &spec.path))?,
        };
        Ok(ModelRow {
            seed: spec.seed,
            label: spec.label.clone(),
            family: spec.family.unwrap_or(m.family),
            density: m.density,
            bits: quantiser.and_then(|q| q.bits()),
            scheme: quantiser.map(|q| q.scheme()),
            clean_accuracy,
            checkpoint: spec.path.clone(),
        })
    }

    /// Figure 5's CDFs of all weights and all activations of the baseline and each quantised
    /// model of the first seed (from the checkpoints, so the same on every run).
    fn cdfs(&self, context: &Context, rows: &[ModelRow]) -> Result<Vec<CdfSeries>> {
        let test = &context.test()?.images;
        let n = self.activation_images.min(test.len());
        let indices: Vec<usize> = (0..n).collect();
        let mut out = Vec::new();
        for (index, row) in rows.iter().enumerate() {
            if row.seed != 1 || row.family == Family::Pruned {
                continue;
            }
            let m = context.model(index)?;
            let (images, _) = test.batch(&indices, context.device());
            let points = compress::cdf_rows(
                &m.classifier.network,
                &m.classifier.compression,
                Some(images),
            );
            for tensor in ["weight", "activation"] {
                out.push(CdfSeries {
                    seed: row.seed,
                    label: row.label.clone(),
                    tensor: tensor.into(),
                    points: points
                        .iter()
                        .filter(|r| r.tensor == tensor && r.layer == "all")
                        .map(|r| (r.value, r.fraction))
                        .collect(),
                });
            }
        }
        Ok(out)
    }
}
