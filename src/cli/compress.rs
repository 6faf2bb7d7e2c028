//! `advcomp compress` and `advcomp stats`, and the compression part of `advcomp info`.

use std::path::PathBuf;

use advcomp::compress::{self, CompressConfig, FinetuneSettings, LayerSummary};
use advcomp::data::{DatasetRecord, Split};
use advcomp::model::{self, Checkpoint, KeyMap, ModelRef};
use advcomp::prune::{DnsSettings, MagnitudeSettings, PruneConfig, PruneKind};
use advcomp::quant::{
    AffineSettings, Calibration, FixedPoint, FixedPointSettings, IntType, QuantConfig,
};
use advcomp::train::TrainSettings;
use advcomp::{Error, Result};
use clap::Args;
use serde_json::json;

use super::{Common, DataArgs, open_backend, print_epoch, print_json};

#[derive(Args)]
pub(super) struct CompressArgs {
    /// The baseline checkpoint to compress.
    #[arg(long)]
    checkpoint: PathBuf,
    /// Pruner: dns (dynamic network surgery) or magnitude. Default dns when --density is given.
    #[arg(long)]
    prune: Option<PruneKind>,
    /// Target density (kept / all weights) of every weight layer, in (0, 1].
    #[arg(long)]
    density: Option<f64>,
    /// Fixed-point width W of weights and activations (2..=32).
    #[arg(long)]
    bits: Option<u32>,
    /// Integer bits P including the sign (default: the paper's rule, 4->1, 8->2, else 4).
    #[arg(long)]
    int_bits: Option<u32>,
    /// Width of the weights only (overrides --bits for them).
    #[arg(long)]
    weight_bits: Option<u32>,
    /// Width of the activations only (overrides --bits for them).
    #[arg(long)]
    activation_bits: Option<u32>,
    /// Affine integer quantisation of the weights (symmetric; instead of fixed point): int8
    /// or int4, with calibrated activations (--activation-type).
    #[arg(long, conflicts_with_all = ["bits", "int_bits", "weight_bits", "activation_bits"])]
    quant: Option<IntType>,
    /// Affine: one scale per output channel (else one per tensor).
    #[arg(long, requires = "quant")]
    per_channel: bool,
    /// Affine: the activations' type (asymmetric, per tensor): uint8, int8, uint4, int4, or
    /// float (not quantised).
    #[arg(long, requires = "quant", default_value_t = ActivationType(AffineSettings::default().activations))]
    activation_type: ActivationType,
    /// Affine: how the activations' ranges are calibrated: minmax, percentile or mse.
    #[arg(long, requires = "quant", default_value_t = AffineSettings::default().calibration)]
    calibration: Calibration,
    /// Affine: training images the activations are calibrated on (drawn with --seed).
    #[arg(long, requires = "quant", default_value_t = AffineSettings::default().calibration_images, value_parser = super::image_count)]
    calibration_images: usize,
    /// Affine: the upper percentile of --calibration percentile (the lower is 100 minus it).
    #[arg(long, requires = "quant", default_value_t = AffineSettings::default().percentile)]
    percentile: f64,
    /// Any quantiser, by its settings as the sweep's [[grid.quantisers]] and checkpoints'
    /// records write them, in JSON: '{"kind": "fixed", "weights": {"bits": 8, "int_bits":
    /// 2}}' (what it leaves out takes the quantiser's defaults). The flags above are
    /// shorthands for the built-in ones; this reaches every quantiser.
    #[arg(long, value_parser = quantiser_json, conflicts_with_all = ["bits", "int_bits", "weight_bits", "activation_bits", "quant"])]
    quantiser: Option<QuantConfig>,
    /// Fine-tuning epochs (0: compress only).
    #[arg(long, default_value_t = FinetuneSettings::default().train.epochs)]
    finetune_epochs: usize,
    #[command(flatten)]
    finetune: FinetuneSettings,
    /// Seed of the shuffling and dropout while fine-tuning (and of the calibration images).
    #[arg(long, default_value_t = advcomp::train::DEFAULT_SEED)]
    seed: u64,
    /// DNS: fine-tuning steps between mask updates.
    #[arg(long, default_value_t = DnsSettings::default().mask_interval)]
    mask_interval: usize,
    /// DNS: masks stop changing after this fraction of fine-tuning.
    #[arg(long, default_value_t = DnsSettings::default().mask_freeze)]
    mask_freeze: f64,
    /// DNS: fraction of fine-tuning over which density falls from 1 to --density (0: at once).
    #[arg(long, default_value_t = DnsSettings::default().density_ramp)]
    density_ramp: f64,
    /// Magnitude: pruning rounds (1 = one-shot; more = iterative, fine-tuning between rounds).
    #[arg(long, default_value_t = MagnitudeSettings::default().rounds)]
    rounds: usize,
    #[command(flatten)]
    data: DataArgs,
    /// Evaluate on the first N test images only.
    #[arg(long, value_parser = super::image_count)]
    limit: Option<usize>,
    /// Compressed checkpoint to write.
    #[arg(long)]
    out: PathBuf,
    #[command(flatten)]
    common: Common,
}

#[derive(Args)]
pub(super) struct ExportArgs {
    /// The model: a checkpoint (compressed or not) or an ONNX file.
    #[arg(long)]
    checkpoint: PathBuf,
    /// The ONNX file to write.
    #[arg(long)]
    out: PathBuf,
    /// Rename tensors of the checkpoint: old=new,...
    #[arg(long, default_value = "")]
    map: KeyMap,
}

#[derive(Args)]
pub(super) struct StatsArgs {
    /// The model whose weights (and activations) are described.
    #[arg(long)]
    checkpoint: PathBuf,
    /// Also record every layer's output activation on the first N test images.
    #[arg(long, default_value_t = 10)]
    activations: usize,
    #[command(flatten)]
    data: DataArgs,
    /// Write the CSV here instead of stdout.
    #[arg(long)]
    out: Option<PathBuf>,
    /// Rename tensors of the checkpoint: old=new,...
    #[arg(long, default_value = "")]
    map: KeyMap,
    #[command(flatten)]
    common: Common,
}

/// An activation type, or `float`.
#[derive(Clone, Copy)]
struct ActivationType(Option<IntType>);

impl std::fmt::Display for ActivationType {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self.0 {
            Some(t) => t.fmt(f),
            None => f.write_str("float"),
        }
    }
}

impl std::str::FromStr for ActivationType {
    type Err = advcomp::Error;
    fn from_str(s: &str) -> Result<Self> {
        match s {
            "float" => Ok(Self(None)),
            other => other.parse().map(|t| Self(Some(t))),
        }
    }
}

/// `--quantiser`: a quantiser's settings in JSON, read as the sweep config reads them.
fn quantiser_json(text: &str) -> std::result::Result<QuantConfig, String> {
    serde_json::from_str(text).map_err(|e| e.to_string())
}

fn format(bits: Option<u32>, int_bits: Option<u32>) -> Result<Option<FixedPoint>> {
    match (bits, int_bits) {
        (Some(w), Some(p)) => FixedPoint::new(w, p).map(Some),
        (Some(w), None) => FixedPoint::paper(w).map(Some),
        (None, _) => Ok(None),
    }
}

fn config(args: &CompressArgs, model: ModelRef, dataset: DatasetRecord) -> Result<CompressConfig> {
    let prune = match (args.prune, args.density) {
        (Some(p), Some(d)) => Some((p, d)),
        (None, Some(d)) => Some((PruneKind::Dns, d)),
        (Some(p), None) => {
            return Err(Error::usage(format!(
                "--prune {p} needs --density (kept fraction of weights, e.g. --density 0.1)"
            )));
        }
        (None, None) => None,
    };
    if args.int_bits.is_some()
        && args.bits.is_none()
        && args.weight_bits.is_none()
        && args.activation_bits.is_none()
    {
        return Err(Error::usage("--int-bits needs --bits (the total width)"));
    }
    let finetune = FinetuneSettings {
        train: TrainSettings {
            epochs: args.finetune_epochs,
            ..args.finetune.train.clone()
        },
        ..args.finetune.clone()
    };
    let mut config = finetune.config(model, dataset, args.seed);
    config.prune = match prune {
        None => None,
        Some((kind, density)) => {
            let pruner = PruneConfig::at(kind, density);
            // Each pruner takes its own settings; the other's flags keep their defaults.
            let own: &[(&str, serde_json::Value)] = match kind {
                PruneKind::Dns => &[
                    ("mask_interval", args.mask_interval.into()),
                    ("mask_freeze", args.mask_freeze.into()),
                    ("density_ramp", args.density_ramp.into()),
                ],
                PruneKind::Magnitude => &[("rounds", args.rounds.into())],
            };
            let mut pruner = pruner;
            for (name, value) in own {
                pruner = pruner.with(name, value.clone())?;
            }
            Some(pruner)
        }
    };
    let weights = format(args.weight_bits.or(args.bits), args.int_bits)?;
    let activations = format(args.activation_bits.or(args.bits), args.int_bits)?;
    config.quant = match args.quant {
        _ if args.quantiser.is_some() => args.quantiser.clone(),
        Some(t) => Some(QuantConfig::Affine(AffineSettings {
            weights: Some(t),
            activations: args.activation_type.0,
            per_channel: args.per_channel,
            calibration: args.calibration,
            calibration_images: args.calibration_images,
            percentile: args.percentile,
            seed: args.seed,
        })),
        None if weights.is_some() || activations.is_some() => {
            Some(QuantConfig::Fixed(FixedPointSettings {
                weights,
                activations,
            }))
        }
        None => None,
    };
    config.validate()?;
    Ok(config)
}

pub(super) fn compress_command(args: CompressArgs) -> Result<()> {
    let mut inputs = args.data.inputs();
    inputs.push(&args.checkpoint);
    advcomp::files::check_output_file("--out", &args.out, &inputs)?;
    let backend = open_backend(args.common.backend)?;
    // Read the base once up front so its model names the fine-tuning config.
    let base = model::load(&args.checkpoint, None, &KeyMap::default(), &backend.device)?;
    let kind = base.network.model_ref();
    let choice = args.data.choice();
    let dataset = base.network.dataset(&choice, &base.meta)?;
    let config = config(&args, kind.clone(), dataset.record())?;
    drop(base);
    eprintln!(
        "compressing {} ({kind} on {dataset}): prune {}, quantise {}, {} fine-tuning epochs",
        args.checkpoint.display(),
        config.prune.as_ref().map_or("none".into(), |p| format!(
            "{} to density {}",
            p.kind(),
            p.density()
        )),
        config
            .quant
            .as_ref()
            .map_or("none".into(), |q| format!("{}: {q}", q.kind())),
        config.finetune.epochs
    );
    let outcome = compress::compress_checkpoint(
        &args.checkpoint,
        &choice,
        &config,
        args.limit,
        &backend.device,
        &args.out,
        print_epoch,
    )?;
    if args.common.json {
        print_json(json!({
            "outcome": outcome,
            "config": config,
            "backend": backend.name,
            "adapter": backend.adapter,
        }));
        return Ok(());
    }
    let record = &outcome.record;
    for (layer, density) in &record.density {
        let alpha = outcome
            .alphas
            .iter()
            .find(|(l, _)| l == layer)
            .map_or(String::new(), |(_, a)| format!(" (alpha {a:.3})"));
        println!("  {layer:<8} density {:.4}{alpha}", density);
    }
    println!(
        "{}: test accuracy {:.2}% (baseline {:.2}%), overall density {:.4}, {} ({:.0} s); checkpoint {}",
        kind,
        100.0 * outcome.test_accuracy,
        100.0 * outcome.base_accuracy,
        record.overall_density,
        quantised(record.quantiser.as_ref()),
        outcome.seconds,
        args.out.display()
    );
    Ok(())
}

/// The export runs on the CPU: it reads the weights once and writes a file.
pub(super) fn export_command(args: ExportArgs) -> Result<()> {
    advcomp::files::check_output_file("--out", &args.out, &[&args.checkpoint])?;
    let device = advcomp::backend::cpu().device;
    let ckpt = model::load(&args.checkpoint, None, &args.map, &device)?;
    model::export_file(&ckpt.network, &ckpt.compression, &args.out)?;
    println!(
        "{} ({}) -> {}",
        args.checkpoint.display(),
        quantised(ckpt.compression.quant.as_ref().map(|q| &q.config)),
        args.out.display()
    );
    Ok(())
}

pub(super) fn stats_command(args: StatsArgs) -> Result<()> {
    if let Some(out) = &args.out {
        let mut inputs = args.data.inputs();
        inputs.push(&args.checkpoint);
        advcomp::files::check_output_file("--out", out, &inputs)?;
    }
    let backend = open_backend(args.common.backend)?;
    let ckpt = model::load(&args.checkpoint, None, &args.map, &backend.device)?;
    let images = if args.activations > 0 {
        let dataset = ckpt.network.dataset(&args.data.choice(), &ckpt.meta)?;
        let test = ckpt.network.images(&dataset, Split::Test)?;
        let n = args.activations.min(test.len());
        Some(test.batch(&(0..n).collect::<Vec<_>>(), &backend.device).0)
    } else {
        None
    };
    let rows = compress::cdf_rows(&ckpt.network, &ckpt.compression, images);
    let mut csv = String::from("tensor,layer,value,cdf\n");
    for row in &rows {
        csv.push_str(&format!(
            "{},{},{:e},{}\n",
            row.tensor, row.layer, row.value, row.fraction
        ));
    }
    match &args.out {
        Some(path) => {
            advcomp::write_atomically(path, csv.as_bytes())?;
            eprintln!("{} CDF points -> {}", rows.len(), path.display());
        }
        None => print!("{csv}"),
    }
    Ok(())
}

/// The compression part of `info --checkpoint`: formats, then one row per weight layer.
pub(super) fn compression_report(ckpt: &Checkpoint) -> (serde_json::Value, Vec<LayerSummary>) {
    let summary = compress::weight_summary(&ckpt.network, &ckpt.compression);
    let record = json!({
        "record": ckpt.record(),
        "quantiser": ckpt.compression.quant.as_ref().map(|q| &q.config),
        "overall_density": ckpt.compression.overall_density(&ckpt.network),
    });
    (record, summary)
}

pub(super) fn print_compression(ckpt: &Checkpoint, summary: &[LayerSummary]) {
    println!(
        "compression: {}, overall density {:.4}",
        quantised(ckpt.compression.quant.as_ref().map(|q| &q.config)),
        ckpt.compression.overall_density(&ckpt.network)
    );
    println!(
        "{:<8} {:>8} {:>8} {:>8} {:>10} {:>10} {:>9} {:>9}  histogram (10 bins, min..max)",
        "layer", "weights", "density", "distinct", "min", "max", "|w| p50", "|w| p99"
    );
    for s in summary {
        println!(
            "{:<8} {:>8} {:>8.4} {:>8} {:>10.4} {:>10.4} {:>9.4} {:>9.4}  {:?}",
            s.layer,
            s.weights,
            s.density,
            s.distinct,
            s.min,
            s.max,
            s.abs_p50,
            s.abs_p99,
            s.histogram
        );
    }
}

/// `weights Q(8,2), activations Q(8,2)`, or `weights and activations float32`.
fn quantised(config: Option<&QuantConfig>) -> String {
    config.map_or("weights and activations float32".into(), |q| q.describe())
}
