//! `advcomp sweep` (the whole study, resumable) and `advcomp profile` (throughput of the
//! kernels and of the attacks per bitwidth, density and batch size). `cargo xtask sweep` and
//! `cargo xtask profile` run these.

use std::path::PathBuf;

use advcomp::attack::AttackKind;
use advcomp::backend::Backend;
use advcomp::backend::BackendChoice;
use advcomp::model::ModelRef;
use advcomp::sweep::{
    self, Count, Partition, Shard, SlurmOptions, Stage, SweepConfig, SweepOptions, TimeLimit,
};
use advcomp::{Error, Result, profile};
use clap::Args;
use serde_json::json;

use super::{Common, open_backend, print_json};

#[derive(Args)]
pub(super) struct SweepArgs {
    /// quick (default: every figure in minutes on a CPU) or paper (the paper's full grid).
    #[arg(long, default_value = "quick")]
    preset: String,
    /// A sweep file (TOML, the presets' format) instead of a preset.
    #[arg(long, conflicts_with = "preset")]
    config: Option<PathBuf>,
    /// Override the preset's model: lenet5, cifarnet, or an ONNX file (its own weights are the
    /// baseline; name the dataset with --dataset).
    #[arg(long)]
    model: Option<ModelRef>,
    /// Override the preset's dataset (mnist, fashion-mnist, cifar10).
    #[arg(long)]
    dataset: Option<advcomp::data::DatasetKind>,
    /// Override the number of seeds (curves then show mean and 95% interval across seeds).
    #[arg(long)]
    seeds: Option<u64>,
    /// Override the number of attacked test images.
    #[arg(long)]
    images: Option<usize>,
    /// Start from this baseline checkpoint instead of training one.
    #[arg(long)]
    baseline: Option<PathBuf>,
    /// With a quantised (QDQ) ONNX --model: the float ONNX model it was quantised from, the
    /// study's full model (default: the QDQ graph with its quantisers removed).
    #[arg(long, conflicts_with = "baseline")]
    reference: Option<PathBuf>,
    /// Where non-embedded datasets live.
    #[arg(long)]
    data_dir: Option<PathBuf>,
    /// Output folder (cache, results, figures, report); a rerun resumes it.
    #[arg(long, default_value = "sweep-out")]
    out: PathBuf,
    /// Run only this stage: baseline, compress, attack or report (each needs the files of
    /// the stages before it in --out).
    #[arg(long)]
    stage: Option<Stage>,
    /// Run only shard I of N of each stage's jobs (0 <= I < N), e.g.
    /// $SLURM_ARRAY_TASK_ID/$SLURM_ARRAY_TASK_COUNT or $JOB_COMPLETION_INDEX/N; shards of one
    /// stage share --out and never write the same file.
    #[arg(long)]
    shard: Option<Shard>,
    #[command(flatten)]
    slurm: SlurmArgs,
    #[command(flatten)]
    common: Common,
}

/// `--slurm` and what it asks of the cluster.
#[derive(Args)]
struct SlurmArgs {
    /// Write OUT/slurm/<stage>.sbatch (one job array per stage, chained with afterok; the last
    /// writes the report) and submit them with sbatch.
    #[arg(long, conflicts_with_all = ["stage", "shard"])]
    slurm: bool,
    /// Slurm partition (or several, comma-separated).
    #[arg(long, requires = "slurm")]
    partition: Option<Partition>,
    /// Time limit per array task (sbatch's formats: minutes, minutes:seconds,
    /// hours:minutes:seconds, days-hours, days-hours:minutes, days-hours:minutes:seconds).
    #[arg(long, requires = "slurm")]
    time: Option<TimeLimit>,
    /// GPUs per array task (sbatch --gpus-per-task; with --backend wgpu or auto).
    #[arg(long, requires = "slurm")]
    gpus_per_task: Option<Count>,
    /// CPU cores per array task (sbatch --cpus-per-task; the cpu backend uses them all).
    #[arg(long, requires = "slurm")]
    cpus_per_task: Option<Count>,
    /// At most K tasks of one stage at once.
    #[arg(long, requires = "slurm")]
    max_parallel: Option<Count>,
    /// Write and print the scripts; submit nothing.
    #[arg(long, requires = "slurm")]
    dry_run: bool,
}

pub(super) fn sweep_command(args: SweepArgs) -> Result<()> {
    let mut config = match &args.config {
        Some(path) => SweepConfig::from_file(path)?,
        None => SweepConfig::preset(&args.preset)?,
    };
    if let Some(model) = &args.model {
        config.model = model.clone();
        if args.dataset.is_none() {
            config.dataset = None;
        }
    }
    if let Some(dataset) = &args.dataset {
        config.dataset = Some(*dataset);
    }
    if let Some(seeds) = args.seeds {
        config.seeds = seeds;
    }
    if let Some(images) = args.images {
        config.attack.images = images;
    }
    config.validate()?;
    // Submitting to Slurm needs no device here: the tasks open their own.
    let backend = if args.slurm.slurm {
        open_backend(BackendChoice::Cpu)?
    } else {
        open_backend(args.common.backend)?
    };
    if let Some(reference) = &args.reference {
        let quantised = match config.model.load(&backend.device)? {
            advcomp::model::Network::Onnx(m) => m.graph.qdq.is_some(),
            _ => false,
        };
        if !quantised {
            return Err(Error::usage(format!(
                "--reference {}: the model {} is not a quantised (QDQ) ONNX file; --reference \
                 names the float model of one",
                reference.display(),
                config.model
            )));
        }
    }
    let options = SweepOptions {
        config,
        out: args.out.clone(),
        backend: &backend,
        // A QDQ model's reference is the sweep's given full model.
        baseline: args.baseline.clone().or(args.reference.clone()),
        data_dir: args.data_dir.clone(),
        stage: args.stage,
        shard: args.shard.unwrap_or(Shard::WHOLE),
        origin: match &args.config {
            Some(path) => format!("config {}", path.display()),
            None => format!("preset {}", args.preset),
        },
    };
    if args.slurm.slurm {
        let s = &args.slurm;
        let slurm = SlurmOptions {
            partition: s.partition.clone(),
            time: s.time.clone(),
            gpus_per_task: s.gpus_per_task,
            cpus_per_task: s.cpus_per_task,
            max_parallel: s.max_parallel,
            dry_run: s.dry_run,
            backend: args.common.backend.to_string(),
        };
        let submission = sweep::submit_to_slurm(&options, &slurm)?;
        if args.common.json {
            print_json(json!(submission));
        } else if s.dry_run {
            for script in &submission.scripts {
                let text = std::fs::read_to_string(script).map_err(|e| Error::io(script, e))?;
                println!("==> {} <==\n{text}", script.display());
            }
            println!(
                "dry run: nothing submitted; submit the scripts in this order, each with \
                 --dependency=afterok:<the previous job id>"
            );
        } else {
            println!(
                "submitted {} stage(s) to Slurm: job ids {} (each after the previous succeeds); \
                 follow with `squeue -j {}`; task logs in {}; the report lands in {}",
                submission.job_ids.len(),
                submission.job_ids.join(", "),
                submission.job_ids.join(","),
                args.out.join("slurm/logs").display(),
                args.out.join("report.md").display()
            );
        }
        return Ok(());
    }
    let summary = sweep::run(&options)?;
    if args.common.json {
        print_json(json!(summary));
    } else {
        match &summary.report {
            Some(report) => println!(
                "sweep done in {:.0} s: {} models, {} cells -> {} (and report.html, cells.csv, figures/ in {})",
                summary.seconds,
                summary.models,
                summary.cells,
                report.display(),
                args.out.display()
            ),
            None => println!(
                "{} of {} job(s) run in {:.0} s ({} already done) in {}",
                summary.jobs_run,
                summary.jobs,
                summary.seconds,
                summary.jobs - summary.jobs_run,
                args.out.display()
            ),
        }
    }
    Ok(())
}

#[derive(Args)]
pub(super) struct ProfileArgs {
    /// Profile the compression kernels (GB/s) instead of the attacks.
    #[arg(long)]
    kernels: bool,
    /// Bitwidths of the quantised variants (weights and activations; comma-separated).
    #[arg(long, value_delimiter = ',', default_values_t = [32, 16, 8, 4])]
    bits: Vec<u32>,
    /// Densities of the (magnitude-)pruned variants (comma-separated); none by default.
    #[arg(long, value_delimiter = ',')]
    density: Vec<f64>,
    /// Batch sizes to time each attack at (comma-separated).
    #[arg(long, value_delimiter = ',', default_values_t = [64, 256, 1024], value_parser = super::batch_size)]
    batch_sizes: Vec<usize>,
    /// Attacks to time (comma-separated; e.g. ifgsm,ifgm,deepfool,apgd,square,auto).
    #[arg(long, value_delimiter = ',', default_values_t = [AttackKind::Ifgsm, AttackKind::Ifgm, AttackKind::DeepFool])]
    attacks: Vec<AttackKind>,
    /// The L-inf budget of the attacks that measure robustness at one (apgd, square, auto).
    #[arg(long, default_value_t = 0.3)]
    budget: f32,
    /// Timed repeats per measurement (after one warm-up); the median is reported.
    #[arg(long, default_value_t = 3, value_parser = repeats)]
    repeats: usize,
    /// Baseline checkpoint (default: the quick preset's baseline, trained once into --out).
    #[arg(long)]
    baseline: Option<PathBuf>,
    /// Elements per kernel call (with --kernels).
    #[arg(long, default_value_t = 1 << 24, value_parser = elements)]
    elements: usize,
    /// Folder for attacks.csv, split.csv and the throughput figure.
    #[arg(long, default_value = "profile-out")]
    out: PathBuf,
    #[command(flatten)]
    common: Common,
}

fn repeats(text: &str) -> std::result::Result<usize, String> {
    advcomp::limits::bounded(text, 1, advcomp::limits::MAX_REPEATS)
}

fn elements(text: &str) -> std::result::Result<usize, String> {
    advcomp::limits::bounded(text, 1, advcomp::limits::MAX_KERNEL_ELEMENTS)
}

pub(super) fn profile_command(args: ProfileArgs) -> Result<()> {
    let inputs: Vec<&std::path::Path> = args.baseline.iter().map(PathBuf::as_path).collect();
    if args.kernels {
        advcomp::files::check_output_dir("--out", &args.out, &inputs)?;
        return profile_kernels(&args, &open_backend(args.common.backend)?);
    }
    let attacks = &args.attacks;
    if let Some(kind) = attacks.iter().find(|k| k.needs_reference()) {
        return Err(Error::usage(format!(
            "--attacks: {kind} attacks a pair of models; the profile times single-model attacks"
        )));
    }
    advcomp::files::check_output_dir("--out", &args.out, &inputs)?;
    let backend = open_backend(args.common.backend)?;
    let outcome = sweep::profile_attacks(sweep::ProfileOptions {
        baseline: args.baseline.clone(),
        bits: args.bits.clone(),
        densities: args.density.clone(),
        batch_sizes: args.batch_sizes.clone(),
        attacks: args.attacks.clone(),
        budget: args.budget,
        repeats: args.repeats,
        out: args.out.clone(),
        backend: &backend,
    })?;
    println!(
        "{:<10} {:<14} {:>6} {:>12} {:>10} {:>8}",
        "attack", "model", "batch", "median s", "images/s", "iters"
    );
    for t in &outcome.timings {
        println!(
            "{:<10} {:<14} {:>6} {:>12.4} {:>10.1} {:>8.2}",
            t.attack.name(),
            t.model,
            t.batch_size,
            t.median_seconds,
            t.images_per_second,
            t.mean_iterations
        );
    }
    println!(
        "\n{:<14} {:>6} {:>12} {:>12} {:>14} {:>12}",
        "model", "batch", "forward ms", "backward ms", "compress ms", "step ms"
    );
    for s in &outcome.splits {
        println!(
            "{:<14} {:>6} {:>12.3} {:>12.3} {:>14.3} {:>12.3}",
            s.model,
            s.batch_size,
            1e3 * s.forward_seconds,
            1e3 * s.backward_seconds,
            1e3 * s.compression_kernel_seconds,
            1e3 * s.attack_step_seconds
        );
    }
    let files: Vec<String> = outcome
        .files
        .iter()
        .map(|f| f.display().to_string())
        .collect();
    println!("backend {backend}; -> {}", files.join(", "));
    Ok(())
}

fn profile_kernels(args: &ProfileArgs, backend: &Backend) -> Result<()> {
    eprintln!(
        "profile: compression kernels on {backend}, {} f32 elements, median of {}",
        args.elements, args.repeats
    );
    let timings = profile::kernel_throughput(&backend.device, args.elements, args.repeats);
    let mut csv =
        String::from("kernel,backend,adapter,elements,bytes,median_seconds,gb_per_second\n");
    println!("{:<32} {:>12} {:>10}", "kernel", "median ms", "GB/s");
    for t in &timings {
        println!(
            "{:<32} {:>12.3} {:>10.2}",
            t.kernel,
            1e3 * t.median_seconds,
            t.gb_per_second
        );
        csv.push_str(&format!(
            "{},{},\"{}\",{},{},{},{}\n",
            t.kernel,
            backend.name,
            backend.adapter,
            t.elements,
            t.bytes,
            t.median_seconds,
            t.gb_per_second
        ));
    }
    let path = args.out.join("kernels.csv");
    advcomp::write_atomically(&path, csv.as_bytes())?;
    println!("adapter: {}; -> {}", backend.adapter, path.display());
    Ok(())
}
