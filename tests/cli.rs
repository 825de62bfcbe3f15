//! The built `acdit` binary as a user runs it.

use std::path::Path;
use std::process::{Command, Output};

fn acdit(dir: &Path, binary: &Path, args: &[&str]) -> Output {
    Command::new(binary)
        .args(args)
        .current_dir(dir)
        .env_remove("CARGO_MANIFEST_DIR")
        .output()
        .expect("the binary runs")
}

fn text(output: &Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    )
}

/// The binary copied on its own into `dir`, to be run from there: built-in models must come
/// from inside the binary, not from the source tree it was built in.
fn binary_alone(dir: &Path) -> std::path::PathBuf {
    let binary = dir.join("acdit");
    std::fs::copy(env!("CARGO_BIN_EXE_acdit"), &binary).unwrap();
    binary
}

#[test]
fn the_binary_alone_samples_the_built_in_model() {
    let temp = tempfile::tempdir().unwrap();
    let binary = binary_alone(temp.path());
    let args = [
        "sample",
        "--classes",
        "3,7",
        "--per-class",
        "1",
        "--steps",
        "2",
    ];
    let output = acdit(temp.path(), &binary, &args);
    assert!(output.status.success(), "{}", text(&output));
    let png = std::fs::read(temp.path().join("samples.png")).unwrap();
    assert!(png.starts_with(b"\x89PNG\r\n\x1a\n"));
}

/// A reader that goes away (`acdit ... | head`) ends the process as it ends any Unix tool, by
/// SIGPIPE, not by a panic in the middle of a print. The pipe's read end is closed before the
/// process starts, so its first print meets a broken pipe.
#[cfg(unix)]
#[test]
fn a_closed_output_pipe_ends_the_process_quietly() {
    use std::os::unix::process::ExitStatusExt;
    let (reader, writer) = std::io::pipe().unwrap();
    drop(reader);
    let output = Command::new(env!("CARGO_BIN_EXE_acdit"))
        .args(["train", "--preset", "fashion-mnist", "--print-config"])
        .stdout(writer)
        .output()
        .unwrap();
    assert_eq!(
        output.status.signal(),
        Some(libc::SIGPIPE),
        "{}",
        text(&output)
    );
    assert!(!text(&output).contains("panicked"), "{}", text(&output));
}

#[test]
fn print_config_writes_the_resolved_config_as_toml() {
    let temp = tempfile::tempdir().unwrap();
    let binary = Path::new(env!("CARGO_BIN_EXE_acdit"));
    let args = [
        "train",
        "--preset",
        "fashion-mnist",
        "--steps",
        "7",
        "--print-config",
    ];
    let output = acdit(temp.path(), binary, &args);
    assert!(output.status.success(), "{}", text(&output));
    let config: acdit::train::TrainConfig =
        toml::from_str(&String::from_utf8_lossy(&output.stdout)).unwrap();
    let mut expected = acdit::train::TrainConfig::fashion_mnist();
    expected.steps = 7;
    assert_eq!(config, expected);
    assert_eq!(std::fs::read_dir(temp.path()).unwrap().count(), 0);
}

#[test]
fn help_shows_what_each_preset_sets_and_the_guidance_alias() {
    let temp = tempfile::tempdir().unwrap();
    let binary = Path::new(env!("CARGO_BIN_EXE_acdit"));
    let help = text(&acdit(temp.path(), binary, &["train", "--help"]));
    assert!(
        help.contains("[presets: mnist 9000, fashion-mnist 5000, moving-mnist 24000]"),
        "{help}"
    );
    assert!(
        help.contains("[presets: mnist none, fashion-mnist none, moving-mnist 5]"),
        "{help}"
    );
    let output = acdit(
        temp.path(),
        binary,
        &["sample", "--guidance-scale", "2", "--classes", "12"],
    );
    assert!(!output.status.success());
    assert!(
        text(&output).contains("class 12 is out of range"),
        "{}",
        text(&output)
    );
}

#[test]
fn a_checkpoint_with_one_nan_is_refused_naming_the_tensor() {
    let temp = tempfile::tempdir().unwrap();
    let weights = concat!(env!("CARGO_MANIFEST_DIR"), "/weights/mnist/ema.safetensors");
    let mut bytes = std::fs::read(weights).unwrap();
    let header_len = u64::from_le_bytes(bytes[..8].try_into().unwrap()) as usize;
    let header: serde_json::Value = serde_json::from_slice(&bytes[8..8 + header_len]).unwrap();
    let start = header["blocks.2.mlp.fc1.weight"]["data_offsets"][0]
        .as_u64()
        .unwrap() as usize;
    let at = 8 + header_len + start + 4 * 17;
    bytes[at..at + 4].copy_from_slice(&f32::NAN.to_le_bytes());
    let path = temp.path().join("nan.safetensors");
    std::fs::write(&path, bytes).unwrap();
    let binary = Path::new(env!("CARGO_BIN_EXE_acdit"));
    let output = acdit(
        temp.path(),
        binary,
        &["sample", "--checkpoint", path.to_str().unwrap()],
    );
    assert!(!output.status.success());
    let message = text(&output);
    assert!(
        message.contains("blocks.2.mlp.fc1.weight: 1 of its"),
        "{message}"
    );
    assert!(!temp.path().join("samples.png").exists());
}

/// `features` then `probe` through the binary, run where no data was fetched: the built-in
/// model's clean-path features of the built-in test digits classify them far above chance.
#[test]
fn features_of_the_built_in_model_probe_well() {
    let temp = tempfile::tempdir().unwrap();
    let binary = Path::new(env!("CARGO_BIN_EXE_acdit"));
    let out = temp.path().join("test.safetensors");
    let out = out.to_str().unwrap();
    let args = [
        "features", "--split", "test", "--pool", "mean", "--out", out,
    ];
    let output = acdit(temp.path(), binary, &args);
    assert!(output.status.success(), "{}", text(&output));
    assert!(text(&output).contains("clean path"), "{}", text(&output));
    let json = temp.path().join("probe.json");
    let args = [
        "probe",
        "--train",
        out,
        "--test",
        out,
        "--json",
        json.to_str().unwrap(),
    ];
    let output = acdit(temp.path(), binary, &args);
    assert!(output.status.success(), "{}", text(&output));
    let report: serde_json::Value = serde_json::from_slice(&std::fs::read(&json).unwrap()).unwrap();
    assert_eq!(report["test_examples"], 1000);
    assert!(report["train_accuracy"].as_f64().unwrap() > 0.8, "{report}");
}

/// bf16 weights and activations (a setting of the whole process, so only a test of the binary
/// can try it): the same seed draws nearly the same digits as in f32.
#[test]
fn bf16_sampling_draws_what_f32_draws() {
    let temp = tempfile::tempdir().unwrap();
    let binary = Path::new(env!("CARGO_BIN_EXE_acdit"));
    let mut grids = Vec::new();
    for dtype in ["f32", "bf16"] {
        let out = format!("{dtype}.png");
        let args = [
            "sample",
            "--classes",
            "0,1",
            "--per-class",
            "2",
            "--steps",
            "5",
            "--dtype",
            dtype,
            "--out",
            &out,
        ];
        let output = acdit(temp.path(), binary, &args);
        assert!(output.status.success(), "{}", text(&output));
        grids.push(image::open(temp.path().join(&out)).unwrap().into_luma8());
    }
    let (f32_grid, bf16_grid) = (&grids[0], &grids[1]);
    assert_eq!(f32_grid.dimensions(), bf16_grid.dimensions());
    let differences: Vec<f64> = f32_grid
        .pixels()
        .zip(bf16_grid.pixels())
        .map(|(a, b)| (f64::from(a.0[0]) - f64::from(b.0[0])).abs())
        .collect();
    let mean = differences.iter().sum::<f64>() / differences.len() as f64;
    assert!(mean > 0.0, "bf16 drew exactly the f32 grid: was it bf16?");
    assert!(mean < 8.0, "mean pixel difference {mean}");
}

/// The built-in video model, from the binary alone where no data was fetched: `predict` uses it
/// when no checkpoint is named and keeps the given frames, and `sample --model moving-mnist`
/// writes its clips.
#[test]
fn the_binary_alone_predicts_and_samples_with_the_built_in_video_model() {
    use acdit::video::clips::{ClipLayout, read_clips};
    let temp = tempfile::tempdir().unwrap();
    let binary = binary_alone(temp.path());
    let context = [
        "data",
        "moving-mnist",
        "--clips",
        "2",
        "--frames",
        "8",
        "--size",
        "32",
        "--digits",
        "1",
        "--out",
        "context.npz",
    ];
    let output = acdit(temp.path(), &binary, &context);
    assert!(output.status.success(), "{}", text(&output));
    let predict = [
        "predict",
        "--context",
        "context.npz",
        "--context-frames",
        "4",
        "--steps",
        "2",
        "--out-dir",
        "predicted",
    ];
    let output = acdit(temp.path(), &binary, &predict);
    assert!(output.status.success(), "{}", text(&output));
    let truth = read_clips(&temp.path().join("context.npz"), ClipLayout::Nfhw).unwrap();
    let predicted = read_clips(
        &temp.path().join("predicted/predicted.npz"),
        ClipLayout::Nfhw,
    )
    .unwrap();
    assert_eq!((predicted.n, predicted.frames), (2, 8));
    assert_eq!(predicted.labels, truth.labels);
    let given = 4 * 32 * 32;
    for i in 0..2 {
        assert_eq!(
            predicted.clip(i)[..given],
            truth.clip(i)[..given],
            "clip {i}"
        );
    }

    let sample = [
        "sample",
        "--model",
        "moving-mnist",
        "--classes",
        "5",
        "--per-class",
        "1",
        "--steps",
        "2",
        "--out-dir",
        "sampled",
    ];
    let output = acdit(temp.path(), &binary, &sample);
    assert!(output.status.success(), "{}", text(&output));
    let sampled = read_clips(&temp.path().join("sampled/clips.npz"), ClipLayout::Nfhw).unwrap();
    assert_eq!(
        (sampled.n, sampled.frames, sampled.height, sampled.width),
        (1, 8, 32, 32)
    );
    assert_eq!(sampled.labels, Some(vec![5]));
}
