//! `advcomp attack` (one source, its adversarial set evaluated on targets, with the
//! indicators of attack failure) and `advcomp transfer` (the any-to-any matrix of a list of
//! models).

use std::path::{Path, PathBuf};

use advcomp::attack::{AttackConfig, AttackKind, all_parameters};
use advcomp::backend::Backend;
use advcomp::data::{Images, Split};
use advcomp::kernels::QuantGrad;
use advcomp::model::{self, Classifier, KeyMap, ModelLabel};
use advcomp::transfer::{self, AdversarialSet, Cell, UnboundedCheck, indicators};
use advcomp::{Error, ModelRole, Result};
use clap::{ArgMatches, Args, FromArgMatches};
use serde_json::{Map, Value, json};

use super::{Common, DataArgs, open_backend, print_json};

/// Every attack's settings as flags, made from the attack registry: a flag names a setting,
/// and is refused for an attack that does not have it.
pub(super) struct SettingsFlags {
    given: Map<String, Value>,
}

impl SettingsFlags {
    /// A flag's text as a JSON value: numbers and booleans as such, anything else a string
    /// (each attack's settings type then says whether it fits).
    fn value(text: &str) -> Value {
        serde_json::from_str::<Value>(text)
            .ok()
            .filter(|v| v.is_number() || v.is_boolean())
            .unwrap_or_else(|| Value::String(text.to_string()))
    }
}

impl FromArgMatches for SettingsFlags {
    fn from_arg_matches(matches: &ArgMatches) -> std::result::Result<Self, clap::Error> {
        let mut given = Map::new();
        for (p, _) in all_parameters() {
            if let Some(text) = matches.get_one::<String>(p.name) {
                given.insert(p.name.to_string(), Self::value(text));
            }
        }
        Ok(Self { given })
    }

    fn update_from_arg_matches(
        &mut self,
        matches: &ArgMatches,
    ) -> std::result::Result<(), clap::Error> {
        *self = Self::from_arg_matches(matches)?;
        Ok(())
    }
}

impl Args for SettingsFlags {
    fn augment_args(mut command: clap::Command) -> clap::Command {
        for (p, kinds) in all_parameters() {
            // Each attack with its default, from its settings' `Default`.
            let attacks: Vec<String> = kinds
                .iter()
                .map(|k| match AttackConfig::new(*k).settings().get(p.name) {
                    Some(Value::Null) | None => k.name().to_string(),
                    Some(Value::String(v)) => format!("{k} {v}"),
                    Some(v) => format!("{k} {v}"),
                })
                .collect();
            let mut arg = clap::Arg::new(p.name)
                .long(p.flag)
                .value_name(p.name.to_ascii_uppercase())
                .allow_negative_numbers(true)
                .help(format!("{} [{}]", p.help, attacks.join(", ")));
            if p.name == "step" {
                arg = arg.visible_alias("eps");
            }
            command = command.arg(arg);
        }
        command
    }

    fn augment_args_for_update(command: clap::Command) -> clap::Command {
        Self::augment_args(command)
    }
}

/// The flags of each setting, for errors: `weight` -> `--diva-weight`.
pub(super) fn setting_flags() -> Vec<(&'static str, String)> {
    all_parameters()
        .into_iter()
        .map(|(p, _)| (p.name, format!("--{}", p.flag)))
        .collect()
}

#[derive(Args)]
pub(super) struct AttackOptions {
    /// The attack: fgsm, fgm, ifgsm, ifgm, pgd, deepfool, apgd, square, auto (the worst case
    /// over attacks and gradient estimators; needs --budget), or, with --reference, diva or
    /// diva-margin (fool the source while the reference stays right). Each attack takes the
    /// settings below marked with its name; their defaults are the paper's or the authors'.
    #[arg(long, default_value = "ifgsm")]
    attack: AttackKind,
    #[command(flatten)]
    settings: SettingsFlags,
    /// Gradient through the source's quantisers: ste (default) or identity (BPDA). auto and
    /// diva-margin run both.
    #[arg(long)]
    grad: Option<QuantGrad>,
    /// Skip the checks that rerun the attack (through the other gradient estimator; with a
    /// budget of 1.0): the indicators of attack failure they feed are then not computed.
    #[arg(long)]
    no_checks: bool,
    /// Attack the first N test images.
    #[arg(long, default_value_t = 1000, value_parser = super::image_count)]
    limit: usize,
    /// Images attacked (and evaluated) at once.
    #[arg(long, default_value_t = advcomp::attack::BATCH_SIZE, value_parser = super::batch_size)]
    batch_size: usize,
    #[command(flatten)]
    data: DataArgs,
}

impl AttackOptions {
    fn config(&self) -> Result<AttackConfig> {
        let config = AttackConfig::from_settings(self.attack, self.settings.given.clone())?;
        config.validate()?;
        if self.grad.is_some() && self.attack.uses_all_estimators() {
            return Err(Error::usage(format!(
                "--grad: {} runs every gradient estimator of the source's quantisers itself",
                self.attack
            )));
        }
        Ok(config)
    }

    fn grad(&self) -> QuantGrad {
        self.grad.unwrap_or_default()
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
    name: ModelLabel,
    path: PathBuf,
    classifier: Classifier,
    /// The checkpoint's metadata: which dataset it was made on.
    meta: model::CheckpointMeta,
    compressed: bool,
}

impl Loaded {
    /// The same model with its quantisers passing gradients by `grad`.
    fn through(&self, grad: QuantGrad) -> Classifier {
        let mut classifier = self.classifier.clone();
        classifier.compression.grad = grad;
        classifier
    }

    /// Whether its activations are quantised: only then do gradient estimators differ.
    fn quantised(&self) -> bool {
        self.classifier.compression.quantises_activations()
    }
}

fn load(path: &Path, backend: &Backend, grad: QuantGrad) -> Result<Loaded> {
    let ckpt = model::load(path, None, &KeyMap::default(), &backend.device)?;
    let mut classifier = ckpt.classifier();
    let compressed = !classifier.compression.is_none();
    classifier.compression.grad = grad;
    Ok(Loaded {
        name: ModelLabel::named(
            path.file_stem()
                .map_or("model".into(), |s| s.to_string_lossy().into_owned()),
        ),
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

/// Crafts `config`'s set on `source` (through its classifier's estimator), with a progress bar
/// and, unless `quiet`, a line of its speed.
fn craft(
    source: &Loaded,
    classifier: &Classifier,
    reference: Option<&Loaded>,
    images: &Images,
    options: &AttackOptions,
    config: &AttackConfig,
    backend: &Backend,
) -> Result<AdversarialSet> {
    let description = json!({ "source": source.path, "attack": config }).to_string();
    let bar = transfer::image_bar(options.limit.min(images.len()), config.kind().name());
    let set = transfer::craft(
        classifier,
        images,
        options.limit,
        options.batch_size,
        config,
        reference.map(|r| &r.classifier),
        &backend.device,
        description,
        &bar,
    )
    .map_err(|e| named(e, source, reference))?;
    bar.finish_and_clear();
    eprintln!(
        "{} on {} ({}): {} images in {:.1} s = {:.1} images/s (batch {}, {} on {})",
        config.kind(),
        source.name,
        set.diagnostics.gradient,
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

/// The cell of `set` (made on `source`) on `target`.
fn cell(
    source: &Loaded,
    target: &Loaded,
    config: &AttackConfig,
    set: &AdversarialSet,
    images: &Images,
    options: &AttackOptions,
    backend: &Backend,
) -> Result<Cell> {
    let metrics = transfer::evaluate(
        &target.classifier,
        set,
        images,
        options.batch_size,
        &backend.device,
    )
    .map_err(|e| e.naming(ModelRole::Target, &target.path))?;
    Ok(Cell {
        seed: 0,
        attack: config.kind(),
        gradient: set.diagnostics.gradient,
        budget: config.budget(),
        source: source.name.clone(),
        target: target.name.clone(),
        scenario: transfer::Scenario::of(
            source.compressed,
            target.compressed,
            source.path == target.path,
        ),
        metrics,
    })
}

fn cells_json(cells: &[&Cell]) -> Vec<Value> {
    cells
        .iter()
        .map(|c| {
            json!({
                "source": c.source,
                "target": c.target,
                "scenario": c.scenario,
                "gradient": c.gradient,
                "metrics": c.metrics,
            })
        })
        .collect()
}

fn print_cells(cells: &[&Cell]) {
    // As wide as the longest name, so long checkpoint names keep the table aligned.
    let width = |pick: fn(&Cell) -> &str| cells.iter().map(|c| pick(c).len()).max().unwrap_or(0);
    let (ws, wt) = (
        width(|c| &c.source).max("source".len()),
        width(|c| &c.target).max("target".len()),
    );
    println!(
        "{:<ws$} {:<wt$} {:<16} {:<12} {:>8} {:>8} {:>8} {:>9} {:>7} {:>7} {:>6} {:>7}",
        "source",
        "target",
        "scenario",
        "gradient",
        "clean",
        "adv acc",
        "success",
        "mean|d|",
        "L0",
        "L2",
        "Linf",
        "iters"
    );
    for c in cells {
        let m = &c.metrics;
        println!(
            "{:<ws$} {:<wt$} {:<16} {:<12} {:>7.2}% {:>7.2}% {:>7.2}% {:>9.5} {:>7.1} {:>7.3} {:>6.3} {:>7.1}{}",
            c.source,
            c.target,
            c.scenario,
            c.gradient,
            100.0 * m.clean_accuracy,
            100.0 * m.adversarial_accuracy,
            100.0 * m.success_rate,
            m.mean_abs_delta,
            m.l0,
            m.l2,
            m.linf,
            m.mean_iterations,
            if m.masking_suspected {
                "  masking suspected"
            } else {
                ""
            }
        );
    }
}

/// The checks that rerun the attack: through the source's other gradient estimator (the
/// estimator gap), and an unbounded gradient attack (a budget of 1.0 must reach about 0%).
/// Returns their cells (on the same targets) and the unbounded check.
#[allow(clippy::too_many_arguments)]
fn checks(
    source: &Loaded,
    targets: &[Loaded],
    config: &AttackConfig,
    images: &Images,
    options: &AttackOptions,
    backend: &Backend,
) -> Result<(Vec<Cell>, Vec<UnboundedCheck>)> {
    let kind = config.kind();
    let mut twins = Vec::new();
    let mut unbounded = Vec::new();
    if options.no_checks || !kind.uses_gradients() || kind.needs_reference() {
        return Ok((twins, unbounded));
    }
    let grad = options.grad();
    let other = match grad {
        QuantGrad::Ste => QuantGrad::Identity,
        QuantGrad::Identity => QuantGrad::Ste,
    };
    if source.quantised() && !kind.uses_all_estimators() {
        eprintln!("check: the same attack through the other gradient estimator ({other})");
        let set = craft(
            source,
            &source.through(other),
            None,
            images,
            options,
            config,
            backend,
        )?;
        for target in targets {
            twins.push(cell(
                source, target, config, &set, images, options, backend,
            )?);
        }
    }
    // Through the estimator the attack followed (auto: BPDA, its strongest on a quantised
    // model).
    let check_grad = match (kind.uses_all_estimators(), source.quantised()) {
        (true, true) => QuantGrad::Identity,
        _ => grad,
    };
    let attack = indicators::unbounded_attack();
    eprintln!("check: {}", attack.describe());
    let set = craft(
        source,
        &source.through(check_grad),
        None,
        images,
        options,
        &attack,
        backend,
    )?;
    let on_source = cell(source, source, &attack, &set, images, options, backend)?;
    unbounded.push(UnboundedCheck {
        seed: 0,
        model: source.name.clone(),
        gradient: set.diagnostics.gradient,
        accuracy: on_source.metrics.adversarial_accuracy,
    });
    Ok((twins, unbounded))
}

pub(super) fn attack_command(args: AttackArgs) -> Result<()> {
    let config = args.options.config()?;
    if config.kind().needs_reference() && args.reference.is_none() {
        return Err(Error::usage(format!(
            "--attack {} needs --reference: the full model that must stay right while the \
             (compressed) --source is fooled",
            config.kind()
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
    let grad = args.options.grad();
    let source = load(&args.source, &backend, grad)?;
    let reference = args
        .reference
        .as_ref()
        .map(|p| load(p, &backend, grad))
        .transpose()?;
    let targets = if args.eval.is_empty() {
        let mut targets = vec![load(&args.source, &backend, grad)?];
        if let Some(path) = &args.reference {
            targets.push(load(path, &backend, grad)?);
        }
        targets
    } else {
        args.eval
            .iter()
            .map(|p| load(p, &backend, grad))
            .collect::<Result<Vec<_>>>()?
    };
    let mut all: Vec<&Loaded> = vec![&source];
    all.extend(targets.iter());
    all.extend(reference.iter());
    let images = test_images(&all, &args.options.data)?;
    eprintln!("{}", config.describe());
    let set = craft(
        &source,
        &source.classifier,
        reference.as_ref(),
        &images,
        &args.options,
        &config,
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
    let mut cells = Vec::new();
    for target in &targets {
        cells.push(cell(
            &source,
            target,
            &config,
            &set,
            &images,
            &args.options,
            &backend,
        )?);
    }
    let asked = cells.len();
    let (twins, unbounded) = checks(&source, &targets, &config, &images, &args.options, &backend)?;
    cells.extend(twins);
    indicators::complete(&mut cells, &unbounded);
    let (main, twins) = cells.split_at(asked);
    let main: Vec<&Cell> = main.iter().collect();
    let twins: Vec<&Cell> = twins.iter().collect();
    let warnings: Vec<String> = main
        .iter()
        .filter(|c| c.source == c.target)
        .filter_map(|c| {
            c.metrics.indicators.sentence(
                &c.source,
                &format!("{} ({})", c.attack, c.gradient),
                c.metrics.adversarial_accuracy,
            )
        })
        .collect();
    for w in &warnings {
        eprintln!("warning: {w}");
    }
    if args.common.json {
        print_json(json!({
            "source": args.source,
            "attack": config.used_parameters(),
            "gradient": set.diagnostics.gradient,
            "images": set.len(),
            "seconds": set.seconds,
            "images_per_second": set.images_per_second(),
            "batch_size": args.options.batch_size,
            "backend": backend.name,
            "adapter": backend.adapter,
            "cells": cells_json(&main),
            "stages": set.diagnostics.stages,
            "checks": {
                "other_gradient": cells_json(&twins),
                "unbounded": unbounded,
            },
            "warnings": warnings,
            "differential": differential,
        }));
    } else {
        print_cells(&main);
        if !set.diagnostics.stages.is_empty() {
            let stages: Vec<String> = set
                .diagnostics
                .stages
                .iter()
                .map(|s| format!("{} {}", s.stage, s.fooled))
                .collect();
            println!("images fooled per stage: {}", stages.join(", "));
        }
        if !twins.is_empty() {
            println!("the same attack through the other gradient estimator:");
            print_cells(&twins);
        }
        for u in &unbounded {
            println!(
                "unbounded check ({}, {}): {:.2}% still correct",
                indicators::unbounded_attack().describe(),
                u.gradient,
                100.0 * u.accuracy
            );
        }
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
    let kind = config.kind();
    if kind.needs_reference() {
        return Err(Error::usage(format!(
            "--attack {kind}: the matrix attacks each model alone; {kind} attacks a pair (use \
             advcomp attack --attack {kind} --source C --reference F)"
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
    let grad = args.options.grad();
    let models = args
        .models
        .iter()
        .map(|p| load(p, &backend, grad))
        .collect::<Result<Vec<_>>>()?;
    let images = test_images(&models.iter().collect::<Vec<_>>(), &args.options.data)?;
    let mut cells = advcomp::sweep::transfer_matrix(advcomp::sweep::MatrixOptions {
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
        grad,
        cache: args.cache.clone(),
        out: args.out.clone(),
        backend: &backend,
    })?;
    indicators::complete(&mut cells, &[]);
    let cells: Vec<&Cell> = cells.iter().collect();
    let warnings: Vec<String> = cells
        .iter()
        .filter(|c| c.source == c.target)
        .filter_map(|c| {
            c.metrics.indicators.sentence(
                &c.source,
                &kind.to_string(),
                c.metrics.adversarial_accuracy,
            )
        })
        .collect();
    for w in &warnings {
        eprintln!("warning: {w}");
    }
    if args.common.json {
        print_json(json!({
            "attack": config.used_parameters(),
            "matrix": args.out,
            "cells": cells_json(&cells),
            "warnings": warnings,
            "backend": backend.name,
            "adapter": backend.adapter,
        }));
    } else {
        print_matrix(&cells);
        println!(
            "matrix of adversarial accuracy -> {} (every metric: --json)",
            args.out.display()
        );
    }
    Ok(())
}

/// The transfer matrix as a matrix: accuracy (%) of each target (column) on each source's
/// (row) examples, the diagonal marked, and each target's clean accuracy under it.
fn print_matrix(cells: &[&Cell]) {
    let mut names: Vec<&str> = Vec::new();
    for c in cells {
        if !names.contains(&c.source.as_str()) {
            names.push(&c.source);
        }
    }
    let value = |s: &str, t: &str| {
        cells
            .iter()
            .find(|c| c.source == s && c.target == t)
            .map(|c| &c.metrics)
    };
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
        let clean = cells
            .iter()
            .find(|c| c.target == *t)
            .map_or("-".into(), |c| {
                format!("{:.1}", 100.0 * c.metrics.clean_accuracy)
            });
        line.push_str(&format!(" {clean:>width$}"));
    }
    println!("{line}");
    println!(
        "adversarial accuracy (%) of each target (column) on each source's examples (row); [diagonal]: a model attacked with its own examples"
    );
}
