//! `advcomp attack` (one source, its adversarial set evaluated on targets) and
//! `advcomp transfer` (the any-to-any matrix of a list of models).

use std::path::{Path, PathBuf};

use advcomp::attack::{AttackConfig, AttackKind, GradNorm};
use advcomp::backend::Backend;
use advcomp::data::{Images, Split};
use advcomp::kernels::QuantGrad;
use advcomp::model::{self, Classifier, KeyMap};
use advcomp::transfer::{self, AdversarialSet, CellMetrics};
use advcomp::{Error, ModelRole, Result};
use clap::Args;
use serde_json::json;

use super::{Common, DataArgs, open_backend, print_json};

#[derive(Args)]
pub(super) struct AttackOptions {
    /// fgsm, fgm, ifgsm, ifgm, pgd, deepfool, or diva (with --reference: fools the source
    /// while the reference stays right).
    #[arg(long, default_value = "ifgsm")]
    attack: AttackKind,
    /// Step per iteration: the paper's eps (torchattacks' alpha). Without --budget, the sign
    /// attacks reach steps x step in L-inf (12 x 0.02 = 0.24).
    #[arg(
        long = "step",
        visible_alias = "eps",
        value_name = "STEP",
        default_value_t = 0.02
    )]
    eps: f32,
    /// Iterations of the iterative attacks.
    #[arg(long, default_value_t = 12)]
    steps: usize,
    /// Total L-inf budget: each step is projected onto this ball around the image
    /// (torchattacks' eps). PGD and DIVA: 0.1 by default; the others: none.
    #[arg(long)]
    budget: Option<f32>,
    /// IFGM / FGM step: l2 (eps·sqrt(d)·g/||g||) or none (the paper's literal eps·g).
    #[arg(long, default_value = "l2")]
    grad_norm: GradNorm,
    /// Gradient through the source's quantisers: ste or identity (BPDA).
    #[arg(long, default_value = "ste")]
    grad: QuantGrad,
    /// PGD's random-start seed.
    #[arg(long, default_value_t = 1)]
    seed: u64,
    /// DeepFool's overshoot.
    #[arg(long, default_value_t = 0.02)]
    overshoot: f32,
    /// DeepFool's most iterations.
    #[arg(long, default_value_t = 50)]
    max_iterations: usize,
    /// DeepFool: only the k classes with the highest clean logits.
    #[arg(long)]
    candidates: Option<usize>,
    /// DIVA: weight c of the source's term in p_ref(y) - c * p_source(y) (default 1).
    #[arg(long)]
    diva_weight: Option<f32>,
    /// Attack the first N test images.
    #[arg(long, default_value_t = 1000, value_parser = super::image_count)]
    limit: usize,
    /// Images attacked (and evaluated) at once.
    #[arg(long, default_value_t = 256, value_parser = super::batch_size)]
    batch_size: usize,
    #[command(flatten)]
    data: DataArgs,
}

impl AttackOptions {
    fn config(&self) -> Result<AttackConfig> {
        let config = AttackConfig {
            eps: self.eps,
            steps: self.steps,
            budget: self.budget,
            grad_norm: self.grad_norm,
            seed: self.seed,
            overshoot: self.overshoot,
            max_iterations: self.max_iterations,
            candidates: self.candidates,
            ..AttackConfig::new(self.attack)
        };
        if self.diva_weight.is_some() && !self.attack.needs_reference() {
            return Err(Error::usage(format!(
                "--diva-weight is DIVA's; --attack {} does not use it",
                self.attack
            )));
        }
        let config = AttackConfig {
            weight: self.diva_weight.or(config.weight),
            ..config
        };
        config.validate()?;
        Ok(config)
    }
}

#[derive(Args)]
pub(super) struct AttackArgs {
    /// The model the examples are crafted on.
    #[arg(long)]
    source: PathBuf,
    /// Models to evaluate the examples on (comma-separated; default: the source).
    #[arg(long, value_delimiter = ',')]
    eval: Vec<PathBuf>,
    /// Write the adversarial images here (float safetensors).
    #[arg(long)]
    save_adv: Option<PathBuf>,
    /// The full model beside the (compressed) source: --attack diva crafts on the pair; with
    /// any attack, how the examples split the two is reported (evasive success: the source
    /// fooled, the reference still right).
    #[arg(long)]
    reference: Option<PathBuf>,
    #[command(flatten)]
    options: AttackOptions,
    #[command(flatten)]
    common: Common,
}

#[derive(Args)]
pub(super) struct TransferArgs {
    /// Every model of the matrix (comma-separated checkpoints): each is a source and a target.
    #[arg(long, value_delimiter = ',', required = true)]
    models: Vec<PathBuf>,
    /// The matrix of adversarial accuracy (rows: source, columns: target) as CSV.
    #[arg(long)]
    out: PathBuf,
    /// Keep each source's adversarial set here (float safetensors, keyed by a hash of the
    /// source checkpoint, the attack and the image count) and reuse it when present.
    #[arg(long)]
    cache: Option<PathBuf>,
    #[command(flatten)]
    options: AttackOptions,
    #[command(flatten)]
    common: Common,
}

/// A loaded checkpoint, named by its file.
struct Loaded {
    name: String,
    path: PathBuf,
    classifier: Classifier,
    /// The checkpoint's metadata: which dataset it was made on.
    meta: model::CheckpointMeta,
    compressed: bool,
}

fn load(path: &Path, backend: &Backend, grad: QuantGrad) -> Result<Loaded> {
    let ckpt = model::load(path, None, &KeyMap::default(), &backend.device)?;
    let mut classifier = ckpt.classifier();
    let compressed = !classifier.compression.is_none();
    classifier.compression.grad = grad;
    Ok(Loaded {
        name: path
            .file_stem()
            .map_or("model".into(), |s| s.to_string_lossy().into_owned()),
        path: path.to_path_buf(),
        meta: ckpt.meta,
        classifier,
        compressed,
    })
}

/// The test images every model of the run takes.
fn test_images(models: &[&Loaded], data: &DataArgs) -> Result<Images> {
    let no_meta = model::CheckpointMeta::default();
    let mut choice = data.choice();
    // The source's checkpoint names the dataset (or says it was the user's own files, which
    // must then be given again); the other models must take the same images.
    let first = &models[0].classifier.network;
    let dataset = first.dataset(&choice, &models[0].meta)?;
    choice.dataset = choice.dataset.or(dataset.kind());
    let images = first.images(&dataset, Split::Test)?;
    for m in &models[1..] {
        let network = &m.classifier.network;
        network.dataset(&choice, &no_meta)?;
        if network.input_shape() != images.shape() || network.classes() < images.classes_needed() {
            return Err(Error::usage(format!(
                "model {} takes {:?} images with {} classes but {} has {:?} with {}",
                m.path.display(),
                network.input_shape(),
                network.classes(),
                dataset.describe(Split::Test),
                images.shape(),
                images.classes_needed()
            )));
        }
    }
    Ok(images)
}

fn craft(
    source: &Loaded,
    reference: Option<&Loaded>,
    images: &Images,
    options: &AttackOptions,
    backend: &Backend,
) -> Result<AdversarialSet> {
    let config = options.config()?;
    let description = json!({ "source": source.path, "attack": config }).to_string();
    eprintln!("{}", config.describe());
    let bar = transfer::image_bar(options.limit.min(images.len()), config.kind.name());
    let set = transfer::craft(
        &source.classifier,
        images,
        options.limit,
        options.batch_size,
        &config,
        reference.map(|r| &r.classifier),
        &backend.device,
        description,
        &bar,
    )
    .map_err(|e| named(e, source, reference))?;
    bar.finish_and_clear();
    eprintln!(
        "{} on {}: {} images in {:.1} s = {:.1} images/s (batch {}, {} on {})",
        config.kind,
        source.name,
        set.len(),
        set.seconds,
        set.images_per_second(),
        options.batch_size,
        backend.name,
        backend.adapter
    );
    Ok(set)
}

/// `error` naming the file of the model that gave NaN or infinite numbers.
fn named(error: Error, source: &Loaded, reference: Option<&Loaded>) -> Error {
    let error = error.naming(ModelRole::Source, &source.path);
    match reference {
        Some(r) => error.naming(ModelRole::Reference, &r.path),
        None => error,
    }
}

/// One evaluated cell: source name, target name, scenario, metrics.
type Row = (String, String, transfer::Scenario, CellMetrics);

fn cell(source: &Loaded, target: &Loaded, metrics: CellMetrics) -> Row {
    let scenario = transfer::Scenario::of(
        source.compressed,
        target.compressed,
        source.path == target.path,
    );
    (source.name.clone(), target.name.clone(), scenario, metrics)
}

fn rows_json(rows: &[Row]) -> Vec<serde_json::Value> {
    rows.iter()
        .map(|(s, t, scenario, m)| json!({"source": s, "target": t, "scenario": scenario, "metrics": m}))
        .collect()
}

fn print_cells(rows: &[Row]) {
    // As wide as the longest name, so long checkpoint names keep the table aligned.
    let width = |pick: fn(&Row) -> &str| rows.iter().map(|r| pick(r).len()).max().unwrap_or(0);
    let (ws, wt) = (
        width(|r| &r.0).max("source".len()),
        width(|r| &r.1).max("target".len()),
    );
    println!(
        "{:<ws$} {:<wt$} {:<16} {:>8} {:>8} {:>8} {:>9} {:>7} {:>7} {:>6} {:>6}",
        "source",
        "target",
        "scenario",
        "clean",
        "adv acc",
        "success",
        "mean|d|",
        "L0",
        "L2",
        "Linf",
        "iters"
    );
    for (source, target, scenario, m) in rows {
        println!(
            "{:<ws$} {:<wt$} {:<16} {:>7.2}% {:>7.2}% {:>7.2}% {:>9.5} {:>7.1} {:>7.3} {:>6.3} {:>6.2}",
            source,
            target,
            scenario,
            100.0 * m.clean_accuracy,
            100.0 * m.adversarial_accuracy,
            100.0 * m.success_rate,
            m.mean_abs_delta,
            m.l0,
            m.l2,
            m.linf,
            m.mean_iterations
        );
    }
}

pub(super) fn attack_command(args: AttackArgs) -> Result<()> {
    let config = args.options.config()?;
    if config.kind.needs_reference() && args.reference.is_none() {
        return Err(Error::usage(format!(
            "--attack {} needs --reference: the full model that must stay right while the \
             (compressed) --source is fooled",
            config.kind
        )));
    }
    if let Some(path) = &args.save_adv {
        let mut inputs = vec![args.source.as_path()];
        inputs.extend(args.eval.iter().map(PathBuf::as_path));
        inputs.extend(args.reference.as_deref());
        inputs.extend(args.options.data.inputs());
        advcomp::files::check_output_file("--save-adv", path, &inputs)?;
    }
    let backend = open_backend(args.common.backend)?;
    let source = load(&args.source, &backend, args.options.grad)?;
    let reference = args
        .reference
        .as_ref()
        .map(|p| load(p, &backend, args.options.grad))
        .transpose()?;
    let targets = if args.eval.is_empty() {
        let mut targets = vec![load(&args.source, &backend, args.options.grad)?];
        if let Some(path) = &args.reference {
            targets.push(load(path, &backend, args.options.grad)?);
        }
        targets
    } else {
        args.eval
            .iter()
            .map(|p| load(p, &backend, args.options.grad))
            .collect::<Result<Vec<_>>>()?
    };
    let mut all: Vec<&Loaded> = vec![&source];
    all.extend(targets.iter());
    all.extend(reference.iter());
    let images = test_images(&all, &args.options.data)?;
    let set = craft(
        &source,
        reference.as_ref(),
        &images,
        &args.options,
        &backend,
    )?;
    let differential = match &reference {
        Some(reference) => Some(
            transfer::evaluate_pair(
                &source.classifier,
                &reference.classifier,
                &set,
                &images,
                args.options.batch_size,
                &backend.device,
            )
            .map_err(|e| named(e, &source, Some(reference)))?,
        ),
        None => None,
    };
    if let Some(path) = &args.save_adv {
        transfer::save(path, &set)?;
        eprintln!("adversarial images -> {}", path.display());
    }
    let mut rows = Vec::new();
    for target in &targets {
        let metrics = transfer::evaluate(
            &target.classifier,
            &set,
            &images,
            args.options.batch_size,
            &backend.device,
        )
        .map_err(|e| e.naming(ModelRole::Target, &target.path))?;
        rows.push(cell(&source, target, metrics));
    }
    if args.common.json {
        print_json(json!({
            "source": args.source,
            "attack": config.used_parameters(),
            "images": set.len(),
            "seconds": set.seconds,
            "images_per_second": set.images_per_second(),
            "batch_size": args.options.batch_size,
            "backend": backend.name,
            "adapter": backend.adapter,
            "cells": rows_json(&rows),
            "differential": differential,
        }));
    } else {
        print_cells(&rows);
        if let (Some(d), Some(reference)) = (&differential, &reference) {
            println!(
                "evasive success {:.2}% ({} fooled, {} still right, of the {} images both \
                 classified correctly); success on {} {:.2}%, on {} {:.2}%",
                100.0 * d.evasive_success_rate,
                source.name,
                reference.name,
                d.both_correct,
                source.name,
                100.0 * d.success_rate_compressed,
                reference.name,
                100.0 * d.success_rate_reference
            );
        }
        println!(
            "throughput: {:.1} images/s ({} images, batch {}, {} on {})",
            set.images_per_second(),
            set.len(),
            args.options.batch_size,
            backend.name,
            backend.adapter
        );
    }
    Ok(())
}

pub(super) fn transfer_command(args: TransferArgs) -> Result<()> {
    if args.models.len() < 2 {
        return Err(Error::usage("--models needs at least two checkpoints"));
    }
    let config = args.options.config()?;
    if config.kind.needs_reference() {
        return Err(Error::usage(format!(
            "--attack {}: the matrix attacks each model alone; {} attacks a pair (use advcomp \
             attack --attack {} --source C --reference F)",
            config.kind, config.kind, config.kind
        )));
    }
    let mut inputs: Vec<&Path> = args.models.iter().map(PathBuf::as_path).collect();
    inputs.extend(args.options.data.inputs());
    advcomp::files::check_output_file("--out", &args.out, &inputs)?;
    if let Some(dir) = &args.cache {
        advcomp::files::check_output_dir("--cache", dir, &inputs)?;
    }
    let backend = open_backend(args.common.backend)?;
    eprintln!("{}", config.describe());
    let models = args
        .models
        .iter()
        .map(|p| load(p, &backend, args.options.grad))
        .collect::<Result<Vec<_>>>()?;
    let images = test_images(&models.iter().collect::<Vec<_>>(), &args.options.data)?;
    let cells = advcomp::sweep::transfer_matrix(advcomp::sweep::MatrixOptions {
        models: models
            .into_iter()
            .map(|m| advcomp::sweep::MatrixModel {
                name: m.name,
                path: m.path,
                classifier: m.classifier,
            })
            .collect(),
        test: images,
        config: config.clone(),
        limit: args.options.limit,
        batch_size: args.options.batch_size,
        grad: args.options.grad,
        cache: args.cache.clone(),
        out: args.out.clone(),
        backend: &backend,
    })?;
    let rows: Vec<Row> = cells
        .into_iter()
        .map(|c| (c.source, c.target, c.scenario, c.metrics))
        .collect();
    if args.common.json {
        print_json(json!({
            "attack": config.used_parameters(),
            "matrix": args.out,
            "cells": rows_json(&rows),
            "backend": backend.name,
            "adapter": backend.adapter,
        }));
    } else {
        print_matrix(&rows);
        println!(
            "matrix of adversarial accuracy -> {} (every metric: --json)",
            args.out.display()
        );
    }
    Ok(())
}

/// The transfer matrix as a matrix: accuracy (%) of each target (column) on each source's
/// (row) examples, the diagonal marked, and each target's clean accuracy under it.
fn print_matrix(rows: &[Row]) {
    let mut names: Vec<&str> = Vec::new();
    for (source, ..) in rows {
        if !names.contains(&source.as_str()) {
            names.push(source);
        }
    }
    let value = |s: &str, t: &str| rows.iter().find(|r| r.0 == s && r.1 == t).map(|r| &r.3);
    let first = names
        .iter()
        .map(|n| n.len())
        .chain(["source \\ target".len(), "clean".len()])
        .max()
        .unwrap_or(0);
    let width = names.iter().map(|n| n.len()).max().unwrap_or(0).max(8);
    let mut line = format!("{:<first$}", "source \\ target");
    for n in &names {
        line.push_str(&format!(" {n:>width$}"));
    }
    println!("{line}");
    for s in &names {
        let mut line = format!("{s:<first$}");
        for t in &names {
            let cell = value(s, t).map_or("-".into(), |m| {
                let v = format!("{:.1}", 100.0 * m.adversarial_accuracy);
                if s == t { format!("[{v}]") } else { v }
            });
            line.push_str(&format!(" {cell:>width$}"));
        }
        println!("{line}");
    }
    let mut line = format!("{:<first$}", "clean");
    for t in &names {
        let clean = rows
            .iter()
            .find(|r| r.1 == *t)
            .map_or("-".into(), |r| format!("{:.1}", 100.0 * r.3.clean_accuracy));
        line.push_str(&format!(" {clean:>width$}"));
    }
    println!("{line}");
    println!(
        "adversarial accuracy (%) of each target (column) on each source's examples (row); [diagonal]: a model attacked with its own examples"
    );
}
