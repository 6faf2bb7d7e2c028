//! What the jobs of a plan share while the executor runs them: the run's inputs, the plan's
//! models (each loaded once per process), their clean predictions, and what the run produces
//! besides files.

use std::cell::RefCell;
use std::collections::HashMap;
use std::path::PathBuf;
use std::rc::Rc;

use super::plan::{ModelSpec, Plan};
use super::store::Store;
use crate::attack::AttackConfig;
use crate::backend::Backend;
use crate::data::{DataChoice, Images};
use crate::kernels::QuantGrad;
use crate::model::{self, Classifier, KeyMap, ModelRef};
use crate::profile::{AttackTiming, TimeSplit};
use crate::report::{Cell, Family};
use crate::transfer::{self, AdversarialSet};
use crate::{Error, ModelRole, Result};

/// What a plan's jobs read besides their own work, set by the command that runs the plan.
pub(super) struct Inputs<'a> {
    pub backend: &'a Backend,
    /// The architecture checkpoints are read as (`None`: each file's own).
    pub load_as: Option<ModelRef>,
    /// What the attack and evaluation jobs run on (the sweep's and the transfer command's
    /// plans; the profile's jobs carry their own images).
    pub test: Option<TestImages>,
    /// What the plan's training jobs train, on which data (`None`: the plan trains nothing).
    pub training: Option<Training>,
}

/// The test split and the batch the attacks and evaluations take it in.
pub(super) struct TestImages {
    /// Attacks take the first images of it.
    pub images: Images,
    pub batch_size: usize,
}

/// What the training and compression jobs train, on which data.
pub(super) struct Training {
    pub model: ModelRef,
    pub data: DataChoice,
    /// Clean accuracy during and after training: on this many test images (`None`: all).
    pub evaluation_images: Option<usize>,
}

/// A model of the plan, loaded.
pub(super) struct Loaded {
    pub classifier: Classifier,
    pub family: Family,
    pub density: f64,
    /// Clean accuracy as its checkpoint records it.
    pub recorded_accuracy: Option<f64>,
}

impl Loaded {
    /// `checkpoint`'s classifier (each job chooses the gradient its quantisers pass back).
    pub fn new(checkpoint: model::Checkpoint) -> Self {
        let density = checkpoint.record().map_or(1.0, |r| r.target_density());
        let recorded_accuracy = checkpoint.meta.accuracy;
        let classifier = checkpoint.classifier();
        Loaded {
            density,
            recorded_accuracy,
            ..Loaded::from_classifier(classifier)
        }
    }

    /// A classifier loaded by the caller (its gradient already chosen).
    pub fn from_classifier(classifier: Classifier) -> Self {
        let compression = &classifier.compression;
        let family = if compression.quant.is_some() {
            Family::Quantised
        } else if compression.is_none() {
            Family::Full
        } else {
            Family::Pruned
        };
        Loaded {
            family,
            density: 1.0,
            recorded_accuracy: None,
            classifier,
        }
    }

    /// The classifier with its quantisers passing gradients by `grad`.
    fn through(&self, grad: QuantGrad) -> Classifier {
        let mut classifier = self.classifier.clone();
        classifier.compression.grad = grad;
        classifier
    }
}

/// What a run of the executor produced besides files.
#[derive(Default)]
pub(super) struct Outcome {
    pub jobs_run: usize,
    /// The report, its model count and cell count, when the report job ran.
    pub report: Option<(PathBuf, usize, usize)>,
    /// Cells of attack jobs that keep them in memory, in plan order.
    pub cells: Vec<Cell>,
    /// The profile's measurements, and the files written from them.
    pub timings: Vec<AttackTiming>,
    pub splits: Vec<TimeSplit>,
    pub files: Vec<PathBuf>,
}

/// A model's predictions on the first test images.
pub(super) type Predictions = Rc<Vec<i64>>;

/// What every job of a plan is run with.
pub(super) struct Context<'a> {
    pub inputs: Inputs<'a>,
    pub plan: &'a Plan,
    pub store: &'a Store,
    /// Models loaded so far, by index in the plan.
    loaded: RefCell<HashMap<usize, Rc<Loaded>>>,
    /// Clean predictions of model `index` on the first `n` test images, by (index, n): every
    /// cell of a target compares against the same ones.
    clean: RefCell<HashMap<(usize, usize), Predictions>>,
    pub outcome: RefCell<Outcome>,
}

impl<'a> Context<'a> {
    pub fn new(inputs: Inputs<'a>, plan: &'a Plan, store: &'a Store) -> Self {
        Self {
            inputs,
            plan,
            store,
            loaded: RefCell::new(HashMap::new()),
            clean: RefCell::new(HashMap::new()),
            outcome: RefCell::new(Outcome::default()),
        }
    }

    /// Hands the context a model already loaded (the transfer command loads its models to
    /// choose the test images).
    pub fn preload(&self, index: usize, model: Loaded) {
        self.loaded.borrow_mut().insert(index, Rc::new(model));
    }

    pub fn backend(&self) -> &Backend {
        self.inputs.backend
    }

    pub fn device(&self) -> &burn::tensor::Device {
        &self.inputs.backend.device
    }

    /// The test images and their batch size.
    pub fn test(&self) -> Result<&TestImages> {
        self.inputs
            .test
            .as_ref()
            .ok_or_else(|| Error::usage("this plan reads no test images"))
    }

    /// What the plan's training jobs train.
    pub fn training(&self) -> Result<&Training> {
        self.inputs
            .training
            .as_ref()
            .ok_or_else(|| Error::usage("this plan trains nothing"))
    }

    pub fn spec(&self, index: usize) -> &ModelSpec {
        &self.plan.models[index]
    }

    /// Model `index` of the plan, loaded once per process.
    pub fn model(&self, index: usize) -> Result<Rc<Loaded>> {
        if let Some(m) = self.loaded.borrow().get(&index) {
            return Ok(m.clone());
        }
        let mut checkpoint = model::load(
            &self.spec(index).path,
            self.inputs.load_as.clone(),
            &KeyMap::default(),
            self.device(),
        )?;
        // A QDQ file as its own full model: its quantisers removed.
        let qdq = matches!(&checkpoint.network, model::Network::Onnx(m) if m.graph.qdq.is_some());
        if qdq && self.spec(index).family == Some(Family::Full) {
            checkpoint.compression = model::Compression::default();
            checkpoint.meta.compression = None;
        }
        let loaded = Rc::new(Loaded::new(checkpoint));
        self.loaded.borrow_mut().insert(index, loaded.clone());
        Ok(loaded)
    }

    /// Model `index`'s clean predictions on the first `n` test images, computed once.
    pub fn clean_predictions(&self, index: usize, n: usize) -> Result<Predictions> {
        if let Some(p) = self.clean.borrow().get(&(index, n)) {
            return Ok(p.clone());
        }
        let test = self.test()?;
        let predictions = Rc::new(
            transfer::clean_predictions(
                &self.model(index)?.classifier,
                &test.images,
                n,
                test.batch_size,
                self.device(),
            )
            .map_err(|e| e.naming(ModelRole::Target, &self.spec(index).path))?,
        );
        self.clean
            .borrow_mut()
            .insert((index, n), predictions.clone());
        Ok(predictions)
    }

    /// `error` naming the file of the model (`source`, or `reference` beside it) that gave
    /// NaN or infinite numbers.
    pub fn named(&self, error: Error, source: usize, reference: Option<usize>) -> Error {
        let error = error.naming(ModelRole::Source, &self.spec(source).path);
        match reference {
            Some(r) => error.naming(ModelRole::Reference, &self.spec(r).path),
            None => error,
        }
    }

    /// Crafts one adversarial set on the first `images` test images of model `source`, its
    /// quantisers passing gradients by `grad` (DIVA: with `reference` beside it).
    pub fn craft(
        &self,
        source: usize,
        reference: Option<usize>,
        config: &AttackConfig,
        grad: QuantGrad,
        images: usize,
    ) -> Result<AdversarialSet> {
        let test = self.test()?;
        let spec = self.spec(source);
        let model = self.model(source)?;
        let reference_index = reference;
        let reference = reference.map(|r| self.model(r)).transpose()?;
        let label = format!("{} {}", config.kind(), spec.label);
        let bar = self.store.add(transfer::image_bar(images, &label));
        let description = serde_json::json!({ "source": spec.path, "attack": config }).to_string();
        let set = transfer::craft(
            &model.through(grad),
            &test.images,
            images,
            test.batch_size,
            config,
            reference.as_ref().map(|r| &r.classifier),
            self.device(),
            description,
            &bar,
        )
        .map_err(|e| self.named(e, source, reference_index))?;
        bar.finish_and_clear();
        Ok(set)
    }

    /// The adversarial accuracy and the other metrics of `set` on model `target`.
    pub fn evaluate(&self, target: usize, set: &AdversarialSet) -> Result<transfer::CellMetrics> {
        let test = self.test()?;
        transfer::evaluate_against(
            &self.model(target)?.classifier,
            set,
            &test.images,
            &self.clean_predictions(target, set.len())?,
            test.batch_size,
            self.device(),
        )
        .map_err(|e| e.naming(ModelRole::Target, &self.spec(target).path))
    }
}
