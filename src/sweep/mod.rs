//! The whole study in one call: baseline -> every compressed model of the grid (fine-tuned)
//! -> adversarial sets per source model and attack -> every cell of the transfer matrix ->
//! Figure 3's eps/iteration grid and Figure 5's CDFs -> results, figures and report.
//!
//! The config expands into a [`plan`] of typed jobs, each with a content-addressed output
//! file (its name carries a hash of everything it depends on), in four [`Stage`]s. One
//! executor runs the jobs whose outputs are missing, in order: a rerun reuses what exists and
//! a killed run picks up where it stopped. The same executor runs one stage's share of jobs
//! (`--stage S --shard I/N`) in as many processes as there are shards, on a shared output
//! folder; [`slurm`] writes and submits that as Slurm job arrays. The report is always built
//! from the files on disk, so every way of running gives the same results.

mod config;
mod context;
mod executor;
mod jobs;
mod plan;
mod profile;
mod slurm;
mod store;

use std::path::{Path, PathBuf};
use std::time::Instant;

use serde::Serialize;

use crate::attack::AttackConfig;
use crate::backend::Backend;
use crate::data::{DataChoice, DatasetKind, Images, Split};
use crate::kernels::QuantGrad;
use crate::model::{self, ModelLabel, ModelRef};
use crate::report::{self, Cell};
use crate::{Error, Result, stable_hash};

pub use config::{PRESETS, SweepConfig};
use context::{Inputs, Loaded, TestImages, Training};
use executor::{Executor, check_inputs};
use plan::{Job, ModelSpec, Plan, PlanInputs, Stage as JobStage};
pub use plan::{Shard, Stage};
pub use profile::{ProfileOptions, ProfileOutcome, profile_attacks};
pub use slurm::{Count, Partition, SlurmOptions, SlurmSubmission, TimeLimit};
use store::Store;

/// What to run and where.
pub struct SweepOptions<'a> {
    pub config: SweepConfig,
    pub out: PathBuf,
    pub backend: &'a Backend,
    /// A baseline checkpoint to start from instead of training one.
    pub baseline: Option<PathBuf>,
    /// Where non-embedded datasets live.
    pub data_dir: Option<PathBuf>,
    /// Run only this stage (every stage when `None`).
    pub stage: Option<Stage>,
    /// Run only this shard's share of each stage's jobs.
    pub shard: Shard,
    /// Where the config came from, for the report: `preset quick`, `config sweep.toml`.
    pub origin: String,
}

/// What a finished run wrote.
#[derive(Clone, Debug, Serialize)]
pub struct SweepSummary {
    /// The report, when this run wrote it (a run of an earlier stage does not).
    pub report: Option<PathBuf>,
    pub models: usize,
    pub cells: usize,
    /// Jobs this run was given, and how many of them it ran (the others were done).
    pub jobs: usize,
    pub jobs_run: usize,
    pub seconds: f64,
}

/// Everything a run needs, checked before anything is written.
struct Prepared {
    /// Files the user gave (never overwritten).
    inputs: Vec<PathBuf>,
    plan: Plan,
    model: ModelRef,
    dataset: DatasetKind,
    test: Images,
    images: usize,
}

impl Prepared {
    /// Whether `out` can be written (and is none of the inputs).
    fn check_output(&self, out: &Path) -> Result<()> {
        let inputs: Vec<&Path> = self.inputs.iter().map(PathBuf::as_path).collect();
        crate::files::check_output_dir("--out", out, &inputs)
    }
}

/// Checks the config, the model and the data, and expands the plan.
fn prepare(options: &SweepOptions) -> Result<Prepared> {
    let config = &options.config;
    config.validate()?;
    let kind = config.model.clone();
    // The model as given (a built-in one freshly made): what the dataset must fit.
    let network = kind.load(&options.backend.device)?;
    // Checked here, not with the rest of the config: the classes are the model's.
    if let Some(k) = config.attack.deepfool_candidates
        && k > network.classes()
    {
        return Err(Error::invalid(
            "attack.deepfool_candidates",
            format!(
                "{k} is more than the {} classes of {kind}",
                network.classes()
            ),
        ));
    }
    let choice = DataChoice {
        dataset: config.dataset,
        dir: options.data_dir.clone(),
        ..DataChoice::default()
    };
    let dataset = network.dataset(&choice, &model::CheckpointMeta::default())?;
    let identity = match network.model_sha256() {
        Some(sha) => model::ModelIdentity::digest(&sha),
        None => kind.clone().into(),
    };
    let key_of = |path: &Path| -> Result<String> {
        let bytes = crate::files::read_input(
            path,
            crate::limits::MAX_DATA_BYTES as u64,
            1,
            Error::checkpoint,
        )?;
        Ok(stable_hash([bytes.as_slice()]))
    };
    // A QDQ file is the study's one compressed model, as the file quantises it; its full model
    // is the reference (`--reference`, a float ONNX) or the same graph run without its
    // quantisers (the executor strips them from the full model).
    let quantised = match (&kind, &network) {
        (ModelRef::Onnx(path), model::Network::Onnx(m)) if m.graph.qdq.is_some() => {
            let config = &m.graph.qdq.as_ref().expect("checked").config;
            Some((
                path.clone(),
                key_of(path)?,
                ModelLabel::compressed(None, Some(config)),
            ))
        }
        _ => None,
    };
    if let (Some(reference), Some(_)) = (&options.baseline, &quantised) {
        let full = model::load(
            reference,
            None,
            &model::KeyMap::default(),
            &options.backend.device,
        )?;
        if full.network.input_shape() != network.input_shape()
            || full.network.classes() != network.classes()
        {
            return Err(Error::checkpoint(
                reference,
                format!(
                    "takes images {:?} and gives {} classes; the quantised model {} takes {:?} \
                     and gives {}",
                    full.network.input_shape(),
                    full.network.classes(),
                    kind,
                    network.input_shape(),
                    network.classes()
                ),
            ));
        }
    }
    let baseline = options.baseline.clone().or(match &kind {
        ModelRef::Onnx(path) => Some(path.clone()),
        ModelRef::BuiltIn(_) => None,
    });
    let baseline = match baseline {
        // The QDQ file as its own full model: another model than the file's compressed one.
        Some(path) if quantised.as_ref().is_some_and(|(q, _, _)| *q == path) => {
            let key = stable_hash([key_of(&path)?.as_bytes(), b"without its quantisers"]);
            Some((path, key))
        }
        Some(path) => {
            let key = key_of(&path)?;
            Some((path, key))
        }
        None => None,
    };
    // Everything that can be refused is refused before the output folder is touched.
    let test = network.images(&dataset, Split::Test)?;
    let dataset = dataset
        .kind()
        .expect("a sweep reads a dataset advcomp knows");
    let images = config.attack.images.min(test.len());
    let inputs: Vec<PathBuf> = baseline.iter().map(|(p, _)| p.clone()).collect();
    let title = match network.model_sha256() {
        Some(sha) => format!("advcomp sweep: {kind} (SHA-256 {sha}) on {dataset}"),
        None => format!("advcomp sweep: {kind} on {dataset}"),
    };
    let evaluated = config
        .evaluation_images
        .unwrap_or(test.len())
        .min(test.len());
    let provenance = report::Provenance {
        origin: options.origin.clone(),
        config_toml: toml::to_string(config)
            .map_err(|e| Error::invalid("config", format!("cannot be written as TOML: {e}")))?,
        model: kind.to_string(),
        model_sha256: match (&baseline, network.model_sha256()) {
            (_, Some(sha)) => Some(sha),
            (Some((path, _)), None) => Some(crate::files::sha256_of_file(
                path,
                crate::limits::MAX_DATA_BYTES as u64,
                Error::checkpoint,
            )?),
            (None, None) => None,
        },
        dataset: dataset.to_string(),
        seeds: config.seeds,
        evaluation_images: evaluated,
        attack_images: images,
        robustness_images: config
            .robustness
            .enabled
            .then(|| config.robustness_images().min(images)),
        scope: scope(
            config,
            images,
            evaluated,
            network.model_sha256().is_some() || baseline.is_some(),
            quantised.is_some(),
        ),
    };
    let plan = PlanInputs {
        provenance,
        config,
        root: &options.out,
        model: &identity,
        baseline,
        quantised,
        dataset,
        images,
        images_available: test.len(),
        classes: network.classes(),
        title,
    }
    .expand()?;

    Ok(Prepared {
        inputs,
        plan,
        model: kind,
        dataset,
        test,
        images,
    })
}

/// What a sweep of `config` can and cannot say, for the report's summary.
fn scope(
    config: &SweepConfig,
    images: usize,
    evaluated: usize,
    given_baseline: bool,
    qdq: bool,
) -> String {
    let limit = |t: &crate::train::TrainSettings| {
        t.train_limit
            .map_or(String::new(), |n| format!(" on {n} training images"))
    };
    let plural = |n: usize, what: &str| format!("{n} {what}{}", if n == 1 { "" } else { "s" });
    let baseline = if qdq {
        "a quantised (QDQ) ONNX file as quantised, against its full model (its graph without the \
         quantisers, or the given float reference)"
            .to_string()
    } else if given_baseline {
        "the given baseline".to_string()
    } else {
        format!(
            "a baseline trained for {}{}",
            plural(config.baseline.epochs, "epoch"),
            limit(&config.baseline)
        )
    };
    // Half the width of a 95% interval of an accuracy near 50% measured on `images` images.
    let noise = 100.0 * 1.96 * (0.25 / images.max(1) as f64).sqrt();
    let compressed = match qdq {
        true => "no compression step".to_string(),
        false => format!(
            "compressed models fine-tuned for {}{}",
            plural(config.finetune.train.epochs, "epoch"),
            limit(&config.finetune.train)
        ),
    };
    let attacked = if images < evaluated {
        format!(
            "the first {images} of the {evaluated} test images attacked per source (clean \
             accuracy on all {evaluated})"
        )
    } else {
        format!("{} attacked per source", plural(images, "test image"))
    };
    format!(
        "{baseline}; {compressed}; {attacked}; {}. \
         With {images} images an accuracy near 50% is known to about ±{noise:.0} points (95%), \
         so smaller differences are noise{}.",
        plural(config.seeds as usize, "seed"),
        if config.seeds < 2 {
            "; with one seed the intervals cover the choice of test images, not of training \
             runs"
        } else {
            ""
        }
    )
}

/// Runs (or resumes) the sweep, or one stage's shard of it, in `options.out`.
pub fn run(options: &SweepOptions) -> Result<SweepSummary> {
    let start = Instant::now();
    let prepared = prepare(options)?;
    let selected = prepared.plan.select(options.stage, options.shard);
    let whole = options.stage.is_none() && options.shard == Shard::WHOLE;
    if let Some(stage) = options.stage {
        // A stage run on its own starts only when everything it reads exists.
        let jobs = selected.iter().map(|&j| &prepared.plan.jobs[j]);
        check_inputs(&format!("stage {stage}"), jobs)?;
    }
    prepared.check_output(&options.out)?;
    let store = Store::open(&options.out, !whole)?;
    let config = &options.config;
    store.log(&format!(
        "sweep: {} on {}, {} seed(s), {} models, {} jobs ({}{}), {} attacked images, backend {}, output {}",
        prepared.model,
        prepared.dataset,
        config.seeds,
        prepared.plan.models.len(),
        selected.len(),
        options.stage.map_or("every stage".into(), |s| format!("stage {s}")),
        if options.shard == Shard::WHOLE {
            String::new()
        } else {
            format!(", shard {}", options.shard)
        },
        prepared.images,
        options.backend,
        options.out.display()
    ));
    let inputs = Inputs {
        backend: options.backend,
        load_as: Some(prepared.model.clone()),
        test: Some(TestImages {
            images: prepared.test,
            batch_size: config.attack.batch_size,
        }),
        training: Some(Training {
            model: prepared.model.clone(),
            data: DataChoice::known(prepared.dataset, options.data_dir.clone()),
            evaluation_images: config.evaluation_images,
        }),
    };
    let outcome = Executor::new(inputs, &prepared.plan, &store).run(&selected)?;
    let (report, models, cells) = match outcome.report {
        Some((path, models, cells)) => (Some(path), models, cells),
        None => (None, prepared.plan.models.len(), 0),
    };
    Ok(SweepSummary {
        report,
        models,
        cells,
        jobs: selected.len(),
        jobs_run: outcome.jobs_run,
        seconds: start.elapsed().as_secs_f64(),
    })
}

/// Writes the sweep's Slurm scripts (one job array per stage, chained) and submits them.
pub fn submit_to_slurm(options: &SweepOptions, slurm: &SlurmOptions) -> Result<SlurmSubmission> {
    let prepared = prepare(options)?;
    prepared.check_output(&options.out)?;
    slurm::submit(options, &prepared.plan, slurm)
}

/// A model of the transfer command, loaded by the caller (it chose the test images from them).
pub struct MatrixModel {
    /// Its name in the matrix (the file's stem).
    pub name: ModelLabel,
    pub path: PathBuf,
    /// Its gradient through the quantisers already chosen.
    pub classifier: crate::model::Classifier,
}

/// The transfer command: every model attacked (once) and every set evaluated on every model.
pub struct MatrixOptions<'a> {
    pub models: Vec<MatrixModel>,
    pub test: Images,
    pub config: AttackConfig,
    /// Attacked images (the first N of `test`).
    pub limit: usize,
    pub batch_size: usize,
    pub grad: QuantGrad,
    /// Where each source's set is kept and reused (by a hash of the checkpoint's bytes, the
    /// test images, the attack and the image count).
    pub cache: Option<PathBuf>,
    /// The matrix CSV.
    pub out: PathBuf,
    pub backend: &'a Backend,
}

/// Runs the transfer command's plan — one attack job per source, then the matrix — on the
/// sweep's executor; returns every cell (rows: source, columns: target).
pub fn transfer_matrix(options: MatrixOptions) -> Result<Vec<Cell>> {
    let images = options.limit.min(options.test.len());
    let mut plan = Plan {
        models: Vec::new(),
        jobs: Vec::new(),
    };
    for m in &options.models {
        let mut bytes = crate::files::read_input(
            &m.path,
            crate::limits::MAX_DATA_BYTES as u64,
            1,
            Error::checkpoint,
        )?;
        // The test images are part of the key: two runs on different files of the user's with
        // the same count and labels must not share adversarial sets.
        bytes.extend_from_slice(options.test.fingerprint().as_bytes());
        plan.models.push(ModelSpec {
            seed: 1,
            label: m.name.clone(),
            family: None,
            key: stable_hash([bytes.as_slice()]),
            path: m.path.clone(),
        });
        let key = crate::transfer::set_key(&bytes, &options.config, options.grad, images);
        let set = options.cache.as_ref().map(|dir| {
            dir.join(format!(
                "{}-{}-{key}.safetensors",
                m.name,
                options.config.kind()
            ))
        });
        let classes = m.classifier.network.classes();
        plan.jobs.push(Job {
            key,
            stage: JobStage::Attack,
            name: format!("{} on {}", options.config.kind(), m.name),
            cost: images as f64
                * (options.config.passes_per_image(classes) + 2.0 * options.models.len() as f64),
            work: Box::new(jobs::Attack {
                source: plan.models.len() - 1,
                targets: (0..options.models.len()).collect(),
                config: options.config.clone(),
                grad: options.grad,
                images,
                set,
                cells: None,
            }),
            needs: Vec::new(),
            writes: Vec::new(),
        });
    }
    plan.jobs.push(Job {
        key: "matrix".into(),
        stage: JobStage::Report,
        name: "matrix".into(),
        cost: 0.0,
        work: Box::new(jobs::Matrix {
            out: options.out.clone(),
        }),
        needs: Vec::new(),
        writes: Vec::new(),
    });
    let store = Store::cache(options.cache.as_deref(), "transfer")?;
    let inputs = Inputs {
        backend: options.backend,
        load_as: None,
        test: Some(TestImages {
            images: options.test,
            batch_size: options.batch_size,
        }),
        training: None,
    };
    let executor = Executor::new(inputs, &plan, &store);
    for (index, m) in options.models.into_iter().enumerate() {
        executor.preload(index, Loaded::from_classifier(m.classifier));
    }
    let all: Vec<usize> = (0..plan.jobs.len()).collect();
    Ok(executor.run(&all)?.cells)
}
