//! The `advcomp` command line: a thin layer that parses arguments, calls the library and
//! prints tables or JSON. Progress and the backend line go to stderr so `--json` output on
//! stdout stays machine-readable.

mod attack;
mod compress;
mod study;

use std::path::{Path, PathBuf};
use std::time::Instant;

use advcomp::backend::{self, Backend, BackendChoice};
use advcomp::data::{DataChoice, DatasetKind, Split};
use advcomp::limits::{batch_size, image_count};
use advcomp::model::{self, KeyMap, ModelRef};
use advcomp::train::{self, TrainSettings};
use advcomp::{Error, Result};
use clap::{Args, Parser, Subcommand};
use serde_json::json;

#[derive(Parser)]
#[command(
    name = "advcomp",
    version,
    about = "Adversarial-example transfer between full and compressed networks"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Print a model's layer table and parameter count (or a checkpoint's).
    Info(InfoArgs),
    /// Train a baseline model and write its checkpoint.
    Train(TrainArgs),
    /// Clean test accuracy of a checkpoint (ours, or a PyTorch-exported safetensors file).
    Eval(EvalArgs),
    /// Prune and/or quantise a baseline checkpoint, fine-tune it, write the compressed model.
    Compress(compress::CompressArgs),
    /// CDF data (CSV) of a checkpoint's weights and of its activations on test images.
    Stats(compress::StatsArgs),
    /// Write a model (compressed or not) as an ONNX file ONNX Runtime runs: quantised weights,
    /// biases and activations as QuantizeLinear / DequantizeLinear (QDQ) nodes.
    Export(compress::ExportArgs),
    /// Craft adversarial examples on a source model and evaluate them on target models.
    Attack(attack::AttackArgs),
    /// The any-to-any transfer matrix of a list of models under one attack.
    Transfer(attack::TransferArgs),
    /// The whole study (baseline, compressed grid, attacks, every scenario, figures, report);
    /// cached and resumable.
    Sweep(study::SweepArgs),
    /// Throughput: attacks (images/s) per bitwidth, density and batch size, or the kernels.
    Profile(study::ProfileArgs),
    /// Print a shell completion script: `advcomp completions bash > ~/.local/share/bash-completion/completions/advcomp`.
    Completions(CompletionsArgs),
}

#[derive(Args)]
struct CompletionsArgs {
    /// bash, zsh, fish, elvish or powershell.
    shell: clap_complete::Shell,
}

#[derive(Args)]
struct Common {
    /// auto (a hardware GPU if present, else cpu), wgpu (any adapter, lavapipe included) or cpu.
    #[arg(long, default_value = "auto")]
    backend: BackendChoice,
    /// Print one JSON object on stdout instead of tables.
    #[arg(long)]
    json: bool,
}

#[derive(Args)]
struct DataArgs {
    /// mnist (embedded), fashion-mnist or cifar10; default: the model's own.
    #[arg(long, conflicts_with_all = ["data", "test_data"])]
    dataset: Option<DatasetKind>,
    /// Read the dataset from this directory instead of its default location.
    #[arg(long, conflicts_with_all = ["data", "test_data"])]
    data_dir: Option<PathBuf>,
    /// Your own training images: an ImageFolder directory (DIR/<class>/*.png|jpg, classes in
    /// sorted order) or a safetensors file with `images` [N,C,H,W] (u8, or f32 in [0,1]) and
    /// `labels` [N].
    #[arg(long, value_name = "DIR|FILE.safetensors")]
    data: Option<PathBuf>,
    /// Your own test images, likewise.
    #[arg(long, value_name = "DIR|FILE.safetensors")]
    test_data: Option<PathBuf>,
}

impl DataArgs {
    fn choice(&self) -> DataChoice {
        DataChoice {
            dataset: self.dataset,
            dir: self.data_dir.clone(),
            train: self.data.clone(),
            test: self.test_data.clone(),
        }
    }

    /// The files named, which no output may overwrite.
    fn inputs(&self) -> Vec<&Path> {
        [&self.data, &self.test_data]
            .into_iter()
            .flatten()
            .map(PathBuf::as_path)
            .collect()
    }
}

#[derive(Args)]
struct InfoArgs {
    /// lenet5, cifarnet, or an ONNX file (path/to/model.onnx).
    #[arg(long, default_value = "lenet5")]
    model: ModelRef,
    /// Show this checkpoint's metadata as well.
    #[arg(long)]
    checkpoint: Option<PathBuf>,
    /// Rename tensors of the checkpoint: old=new,...
    #[arg(long, default_value = "")]
    map: KeyMap,
    #[command(flatten)]
    common: Common,
}

#[derive(Args)]
struct TrainArgs {
    /// lenet5 or cifarnet (trained from scratch), or an ONNX file (fine-tuned from its own
    /// weights).
    #[arg(long, default_value = "lenet5")]
    model: ModelRef,
    #[command(flatten)]
    data: DataArgs,
    /// Passes over the training images.
    #[arg(long, default_value_t = TrainSettings::default().epochs)]
    epochs: usize,
    #[command(flatten)]
    settings: TrainSettings,
    /// Seed of the weight initialisation, shuffling and dropout.
    #[arg(long, default_value_t = train::DEFAULT_SEED)]
    seed: u64,
    /// Evaluate on the first N test images only.
    #[arg(long, value_parser = image_count)]
    limit: Option<usize>,
    /// Checkpoint to write (default: runs/<model>-<dataset>-seed<seed>.safetensors).
    #[arg(long)]
    out: Option<PathBuf>,
    #[command(flatten)]
    common: Common,
}

#[derive(Args)]
struct EvalArgs {
    /// A checkpoint, or an ONNX file.
    #[arg(long)]
    checkpoint: Option<PathBuf>,
    /// The architecture (lenet5, cifarnet, or an ONNX file), when the checkpoint's metadata and
    /// tensor names do not tell; an ONNX file alone (no --checkpoint) is evaluated with its
    /// own weights.
    #[arg(long)]
    model: Option<ModelRef>,
    /// Rename tensors of the checkpoint: old=new,...
    #[arg(long, default_value = "")]
    map: KeyMap,
    #[command(flatten)]
    data: DataArgs,
    /// Evaluate on the first N test images only.
    #[arg(long, value_parser = image_count)]
    limit: Option<usize>,
    /// Test images per forward pass.
    #[arg(long, default_value_t = train::EVAL_BATCH_SIZE, value_parser = batch_size)]
    batch_size: usize,
    /// Also write each image's prediction here (CSV: image, label, predicted; a tie between
    /// top logits goes to the lowest class, as NumPy's argmax).
    #[arg(long)]
    predictions: Option<PathBuf>,
    #[command(flatten)]
    common: Common,
}

/// Runs the command line and returns the process exit code.
pub fn run() -> i32 {
    // SAFETY: first thing in main, before any other thread exists.
    unsafe { backend::silence_mesa_warnings() };
    backend::keep_freed_memory();
    if let Some(notice) = backend::init_cpu_threads() {
        eprintln!("note: {notice}");
    }
    let cli = Cli::parse();
    advcomp::files::stop_cleanly_on_signals(match cli.command {
        Command::Sweep(_) => {
            "rerun the same command to resume: the models, sets and cells already finished are kept"
        }
        Command::Transfer(_) => {
            "rerun the same command to resume (with --cache, the finished sets are reused); no matrix was written"
        }
        _ => "no output was written; rerun the command",
    });
    // Library errors name settings by their field; a command names them by its flags.
    let flags: Vec<(&str, String)> = match cli.command {
        Command::Compress(_) => vec![
            ("epochs", "--finetune-epochs".into()),
            ("learning_rate", "--lr".into()),
            ("magnitude_rounds", "--rounds".into()),
        ],
        Command::Sweep(_) => Vec::new(),
        _ => {
            let mut flags = vec![("learning_rate", "--lr".to_string())];
            flags.extend(attack::setting_flags());
            flags
        }
    };
    let flags: Vec<(&str, &str)> = flags.iter().map(|(f, s)| (*f, s.as_str())).collect();
    let sweep = matches!(cli.command, Command::Sweep(_));
    let result = match cli.command {
        Command::Info(args) => info(args),
        Command::Train(args) => train_command(args),
        Command::Eval(args) => eval(args),
        Command::Compress(args) => compress::compress_command(args),
        Command::Stats(args) => compress::stats_command(args),
        Command::Export(args) => compress::export_command(args),
        Command::Attack(args) => attack::attack_command(args),
        Command::Transfer(args) => attack::transfer_command(args),
        Command::Sweep(args) => study::sweep_command(args),
        Command::Profile(args) => study::profile_command(args),
        Command::Completions(args) => {
            use clap::CommandFactory;
            clap_complete::generate(
                args.shell,
                &mut Cli::command(),
                "advcomp",
                &mut std::io::stdout(),
            );
            Ok(())
        }
    };
    // A sweep's fields are those of its config file (`attack.eps`), not flags.
    let result = result.map_err(|e| if sweep { e } else { e.for_flags(&flags) });
    match result {
        Ok(()) => 0,
        Err(error) => {
            eprintln!("error: {error}");
            error.exit_code()
        }
    }
}

fn print_epoch(r: &train::EpochReport) {
    eprintln!(
        "epoch {:>3}: train loss {:.4}, train acc {:.2}%, test acc {:.2}% ({:.1} s)",
        r.epoch,
        r.train_loss,
        100.0 * r.train_accuracy,
        100.0 * r.test_accuracy,
        r.seconds
    );
}

fn open_backend(choice: BackendChoice) -> Result<Backend> {
    let backend = backend::select(choice)?;
    eprintln!("backend: {backend}");
    Ok(backend)
}

fn print_json(value: serde_json::Value) {
    println!("{}", serde_json::to_string_pretty(&value).expect("json"));
}

fn info(args: InfoArgs) -> Result<()> {
    let backend = open_backend(args.common.backend)?;
    let start = Instant::now();
    let checkpoint = match &args.checkpoint {
        Some(path) => Some(model::load(path, None, &args.map, &backend.device)?),
        None => None,
    };
    let network = match &checkpoint {
        Some(ckpt) => ckpt.network.clone(),
        None => args.model.load(&backend.device)?,
    };
    let load_seconds = start.elapsed().as_secs_f64();
    let compression = checkpoint.as_ref().map(compress::compression_report);
    let kind = network.model_ref();
    let layers = network.layers();
    let count = network.parameter_count();
    if args.common.json {
        print_json(json!({
            "model": kind.to_string(),
            "model_sha256": network.model_sha256(),
            "input": network.input_shape(),
            "load_seconds": load_seconds,
            "parameters": count,
            "layers": layers,
            "checkpoint": checkpoint.as_ref().map(|c| &c.meta),
            "compression": compression.as_ref().map(|c| &c.0),
            "weights": compression.as_ref().map(|c| &c.1),
            "backend": backend.name,
            "adapter": backend.adapter,
        }));
        return Ok(());
    }
    println!(
        "model {kind}: input {:?}{}",
        network.input_shape(),
        match network.model_sha256() {
            Some(sha) => format!(", SHA-256 {sha}, imported in {:.3} s", load_seconds),
            None => String::new(),
        }
    );
    let width = layers
        .iter()
        .map(|l| l.name.len())
        .max()
        .unwrap_or(0)
        .max(10);
    println!(
        "{:<width$} {:<36} {:>15} {:>10}",
        "layer", "operation", "output (C,H,W)", "params"
    );
    for layer in &layers {
        println!(
            "{:<width$} {:<36} {:>15} {:>10}",
            layer.name,
            layer.kind,
            format!("{:?}", layer.output),
            layer.params
        );
    }
    println!(
        "parameters: {count} (counted from the model's tensors; batch-norm running statistics excluded)"
    );
    if let (Some(ckpt), Some((_, summary))) = (&checkpoint, &compression) {
        println!(
            "checkpoint: {}",
            serde_json::to_string(&ckpt.meta).expect("json")
        );
        compress::print_compression(ckpt, summary);
    }
    Ok(())
}

/// What `eval` evaluates: the checkpoint (onto `--model` when given), or an ONNX file alone.
fn eval_model(args: &EvalArgs, device: &burn::tensor::Device) -> Result<model::Checkpoint> {
    match (&args.checkpoint, &args.model) {
        (Some(path), model) => model::load(path, model.clone(), &args.map, device),
        (None, Some(ModelRef::Onnx(path))) => model::load(path, None, &args.map, device),
        (None, _) => Err(Error::usage(
            "give --checkpoint FILE (a checkpoint or an ONNX file), or --model FILE.onnx",
        )),
    }
}

fn train_command(args: TrainArgs) -> Result<()> {
    let backend = open_backend(args.common.backend)?;
    // The model first: an imported one says which images it takes.
    let network = args.model.load(&backend.device)?;
    let choice = args.data.choice();
    let dataset = network.dataset(&choice, &model::CheckpointMeta::default())?;
    let settings = TrainSettings {
        epochs: args.epochs,
        ..args.settings.clone()
    };
    let config = settings.config(args.model.clone(), dataset.record(), args.seed);
    config.validate()?;
    let out = args.out.clone().unwrap_or_else(|| {
        let model = match &args.model {
            ModelRef::BuiltIn(kind) => kind.to_string(),
            ModelRef::Onnx(path) => path
                .file_stem()
                .map_or("model".into(), |s| s.to_string_lossy().into_owned()),
        };
        let data = dataset.kind().map_or("own".into(), |k| k.to_string());
        PathBuf::from(format!("runs/{model}-{data}-seed{}.safetensors", args.seed))
    });
    let mut inputs = args.data.inputs();
    if let ModelRef::Onnx(path) = &args.model {
        inputs.push(path);
    }
    advcomp::files::check_output_file("--out", &out, &inputs)?;
    eprintln!(
        "{} {} on {dataset}, {} epochs, batch {}, {:?} lr {} ({:?}), seed {}",
        match args.model {
            ModelRef::BuiltIn(_) => "training",
            ModelRef::Onnx(_) => "fine-tuning",
        },
        args.model,
        config.epochs,
        config.batch_size,
        config.optimizer,
        config.learning_rate,
        config.schedule,
        config.seed
    );
    let outcome = train::train_baseline(
        &args.model,
        &choice,
        &config,
        args.limit,
        &backend.device,
        &out,
        false,
        print_epoch,
    )?;
    if args.common.json {
        print_json(json!({
            "checkpoint": outcome.checkpoint,
            "config": config,
            "epochs": outcome.epochs,
            "test_accuracy": outcome.test_accuracy,
            "seconds": outcome.seconds,
            "backend": backend.name,
            "adapter": backend.adapter,
        }));
    } else {
        println!(
            "{} on {}: test accuracy {:.2}% after {} epochs ({:.0} s); checkpoint {}",
            args.model,
            dataset,
            100.0 * outcome.test_accuracy,
            config.epochs,
            outcome.seconds,
            out.display()
        );
    }
    Ok(())
}

fn eval(args: EvalArgs) -> Result<()> {
    if let Some(out) = &args.predictions {
        let mut inputs = args.data.inputs();
        inputs.extend(args.checkpoint.iter().map(PathBuf::as_path));
        advcomp::files::check_output_file("--predictions", out, &inputs)?;
    }
    let backend = open_backend(args.common.backend)?;
    let ckpt = eval_model(&args, &backend.device)?;
    let kind = ckpt.network.model_ref();
    let dataset = ckpt.network.dataset(&args.data.choice(), &ckpt.meta)?;
    let test_set = ckpt.network.images(&dataset, Split::Test)?;
    let n = args.limit.unwrap_or(test_set.len()).min(test_set.len());
    let start = Instant::now();
    let named = args
        .checkpoint
        .clone()
        .unwrap_or_else(|| kind.to_string().into());
    let accuracy = train::evaluate(
        &ckpt.network,
        &ckpt.compression,
        &test_set,
        &backend.device,
        args.batch_size,
        Some(n),
    )
    .map_err(|e| e.naming(advcomp::ModelRole::Target, &named))?;
    let seconds = start.elapsed().as_secs_f64();
    if let Some(out) = &args.predictions {
        let predicted = advcomp::transfer::clean_predictions(
            &ckpt.classifier(),
            &test_set,
            n,
            args.batch_size,
            &backend.device,
        )?;
        let mut csv = String::from("image,label,predicted\n");
        for (i, p) in predicted.iter().enumerate() {
            csv.push_str(&format!("{i},{},{p}\n", test_set.labels[i]));
        }
        advcomp::write_atomically(out, csv.as_bytes())?;
    }
    if args.common.json {
        print_json(json!({
            "checkpoint": args.checkpoint,
            "model": kind.to_string(),
            "dataset": dataset.to_string(),
            "images": n,
            "accuracy": accuracy,
            "metadata": ckpt.meta,
            "seconds": seconds,
            "images_per_second": n as f64 / seconds,
            "batch_size": args.batch_size,
            "backend": backend.name,
            "adapter": backend.adapter,
        }));
    } else {
        println!(
            "{kind} on {dataset} test ({n} images): accuracy {:.2}% ({:.0} images/s, batch {})",
            100.0 * accuracy,
            n as f64 / seconds,
            args.batch_size
        );
    }
    Ok(())
}
