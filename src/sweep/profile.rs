//! The profile as two small plans on the sweep's executor: the quick preset's baseline
//! (trained once into `--out`, reused by its config's hash) unless one is given, then one
//! measuring job per model variant and batch size, and the files.

use std::path::PathBuf;
use std::rc::Rc;

use super::SweepConfig;
use super::context::{Inputs, Outcome, Training};
use super::executor::Executor;
use super::jobs;
use super::plan::{Job, ModelSpec, Plan, Stage};
use super::store::Store;
use crate::attack::{AttackConfig, AttackKind};
use crate::backend::Backend;
use crate::data::{DataChoice, Split};
use crate::model::{self, KeyMap, ModelLabel, ModelRef};
use crate::profile::{self, AttackTiming, TimeSplit};
use crate::report::Family;
use crate::{Error, Result};

/// What to profile.
pub struct ProfileOptions<'a> {
    /// The model (default: the quick preset's baseline, trained once into `out`).
    pub baseline: Option<PathBuf>,
    pub bits: Vec<u32>,
    pub densities: Vec<f64>,
    pub batch_sizes: Vec<usize>,
    pub attacks: Vec<AttackKind>,
    /// The budget of the attacks that need one (APGD, Square, auto).
    pub budget: f32,
    pub repeats: usize,
    pub out: PathBuf,
    pub backend: &'a Backend,
}

/// What the profile measured and wrote.
pub struct ProfileOutcome {
    pub timings: Vec<AttackTiming>,
    pub splits: Vec<TimeSplit>,
    pub files: Vec<PathBuf>,
}

/// Runs the profile: attack throughput per bitwidth, density and batch size.
pub fn profile_attacks(options: ProfileOptions) -> Result<ProfileOutcome> {
    let store = Store::cache(Some(&options.out), "profile")?;
    let baseline = match &options.baseline {
        Some(path) => path.clone(),
        None => quick_baseline(&options, &store)?,
    };
    let ckpt = model::load(&baseline, None, &KeyMap::default(), &options.backend.device)?;
    let dataset = ckpt.network.dataset(&DataChoice::default(), &ckpt.meta)?;
    let test = Rc::new(ckpt.network.images(&dataset, Split::Test)?);
    let variants = profile::variants(
        &ckpt.network,
        &dataset,
        &options.bits,
        &options.densities,
        &options.backend.device,
        &test,
    )?;
    let classes = ckpt.network.classes();
    // Attacks that measure robustness at a budget (APGD, Square, auto) take the profile's.
    let attacks: Vec<AttackConfig> = options
        .attacks
        .iter()
        .map(|&k| {
            let config = AttackConfig::new(k);
            match config.validate() {
                Ok(()) => Ok(config),
                Err(_) => config.with("budget", crate::attack::json_float(options.budget)),
            }
        })
        .collect::<Result<_>>()?;
    let mut plan = Plan {
        models: Vec::new(),
        jobs: Vec::new(),
    };
    for variant in &variants {
        for &batch_size in &options.batch_sizes {
            let passes: f64 = attacks.iter().map(|a| a.passes_per_image(classes)).sum();
            plan.jobs.push(Job {
                key: format!("{}-{batch_size}", variant.label),
                stage: Stage::Attack,
                name: format!("{}, batch {batch_size}", variant.label),
                cost: (options.repeats + 1) as f64 * batch_size as f64 * (passes + 4.0),
                work: Box::new(jobs::Measure {
                    variant: variant.clone(),
                    test: test.clone(),
                    batch_size,
                    attacks: attacks.clone(),
                    repeats: options.repeats,
                }),
                needs: Vec::new(),
                writes: Vec::new(),
            });
        }
    }
    plan.jobs.push(Job {
        key: "files".into(),
        stage: Stage::Report,
        name: "files".into(),
        cost: 0.0,
        work: Box::new(jobs::ProfileFiles {
            out: options.out.clone(),
            batch_sizes: options.batch_sizes.clone(),
        }),
        needs: Vec::new(),
        writes: Vec::new(),
    });
    store.log(&format!(
        "profile: {} attacks x {} models x batch sizes {:?} on {}, median of {}",
        attacks.len(),
        variants.len(),
        options.batch_sizes,
        options.backend,
        options.repeats
    ));
    // The measuring jobs carry their images and batch sizes, and load no checkpoint.
    let inputs = Inputs {
        backend: options.backend,
        load_as: None,
        test: None,
        training: None,
    };
    let all: Vec<usize> = (0..plan.jobs.len()).collect();
    let Outcome {
        timings,
        splits,
        files,
        ..
    } = Executor::new(inputs, &plan, &store).run(&all)?;
    Ok(ProfileOutcome {
        timings,
        splits,
        files,
    })
}

/// The quick preset's baseline: a one-job plan, skipped when `out` already holds it.
fn quick_baseline(options: &ProfileOptions, store: &Store) -> Result<PathBuf> {
    let preset = SweepConfig::preset("quick")?;
    let ModelRef::BuiltIn(kind) = preset.model else {
        return Err(Error::usage(format!(
            "the quick preset names {}; profile trains a built-in baseline",
            preset.model
        )));
    };
    let dataset = kind.default_dataset();
    let config = preset.baseline.config(kind, dataset, 1);
    let key = config.hash();
    let path = options
        .out
        .join(format!("baseline-{kind}-{key}.safetensors"));
    let plan = Plan {
        models: vec![ModelSpec {
            seed: 1,
            label: ModelLabel::full(),
            family: Some(Family::Full),
            key: key.clone(),
            path: path.clone(),
        }],
        jobs: vec![Job {
            key,
            stage: Stage::Baseline,
            name: format!("seed 1: baseline ({kind}, the quick preset's)"),
            cost: 3.0 * config.epochs as f64 * 60_000.0,
            work: Box::new(jobs::Train { model: 0, config }),
            needs: Vec::new(),
            writes: vec![path.clone()],
        }],
    };
    let inputs = Inputs {
        backend: options.backend,
        load_as: None,
        test: None,
        training: Some(Training {
            model: ModelRef::BuiltIn(kind),
            data: DataChoice::known(dataset, None),
            evaluation_images: None,
        }),
    };
    Executor::new(inputs, &plan, store).run(&[0])?;
    Ok(path)
}
