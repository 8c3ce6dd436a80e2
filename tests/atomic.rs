//! Folder-atomic export against the real binary: kill -9 mid-export leaves OUT old or new and the next export
//! leaves no litter; foreign folders, the input's folder and folders inside it are refused; zero-element tensors.

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Instant;

use quantstudio::export::{self, ExportOptions};
use quantstudio::model::Model;
use quantstudio::progress::Progress;
use quantstudio::quant::{Granularity, Int8Scheme, Plan, Precision};

use crate::common::{self, Spec};

/// Kills per run of the loop: half aimed at fractions of the time one export takes (a tenth to a bit past it), half
/// a few milliseconds after the export starts writing.
const KILLS: u32 = 16;

/// A model big enough that the debug binary takes a noticeable time to export it (19 MB of F32).
fn write_slow_model(folder: &Path) {
    std::fs::create_dir_all(folder).unwrap();
    let mut specs = common::tiny_sample_specs();
    for i in 0..8 {
        let name = format!("model.layers.0.mlp.extra{i}.weight");
        specs.push(Spec::f32(&name, &[768, 768], &common::normal(768 * 768, 1000 + i, 0.05)));
    }
    common::write_model(&folder.join("model.safetensors"), &specs);
    std::fs::write(folder.join("config.json"), common::TINY_SAMPLE_CONFIG).unwrap();
    std::fs::write(folder.join("tokenizer.json"), "{}").unwrap();
}

/// Every file under `dir`, relative, with its bytes.
fn files(dir: &Path) -> Vec<(PathBuf, Vec<u8>)> {
    common::snapshot(dir).into_iter().map(|(p, b)| (p.strip_prefix(dir).unwrap().to_owned(), b)).collect()
}

fn names_in(dir: &Path) -> Vec<String> {
    let mut names: Vec<String> =
        std::fs::read_dir(dir).unwrap().map(|e| e.unwrap().file_name().to_string_lossy().into_owned()).collect();
    names.sort();
    names
}

fn quantize_args<'a>(input: &'a str, precision: &'a str, out: &'a str) -> Vec<&'a str> {
    vec!["quantize", input, "--precision", precision, "--force", "-o", out]
}

fn export_cli(input: &Path, precision: &str, out: &Path) {
    let (code, _, stderr) = common::run_cli(&quantize_args(input.to_str().unwrap(), precision, out.to_str().unwrap()));
    assert_eq!(code, 0, "{stderr}");
}

fn copy_folder(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).unwrap();
    for (relative, bytes) in files(from) {
        let target = to.join(&relative);
        std::fs::create_dir_all(target.parent().unwrap()).unwrap();
        std::fs::write(target, bytes).unwrap();
    }
}

#[test]
fn kill_9_during_export_leaves_the_old_or_the_new_folder_and_the_next_export_no_litter() {
    let dir = common::temp_dir();
    let input = dir.path().join("input");
    write_slow_model(&input);
    let refs = dir.path().join("refs");
    let (old_ref, new_ref) = (refs.join("old"), refs.join("new"));
    export_cli(&input, "fp16", &old_ref);
    // The time of one export, the least of two (tests run side by side: one may be slowed by its neighbours).
    let mut export_time = std::time::Duration::MAX;
    for _ in 0..2 {
        let _ = std::fs::remove_dir_all(&new_ref);
        let started = Instant::now();
        export_cli(&input, "int8", &new_ref);
        export_time = export_time.min(started.elapsed());
    }
    let (old, new) = (files(&old_ref), files(&new_ref));
    assert_ne!(old, new);

    let place = dir.path().join("place");
    std::fs::create_dir_all(&place).unwrap();
    let out = place.join("out");
    copy_folder(&old_ref, &out);
    let (mut killed_running, mut left_old, mut left_new, mut littered) = (0, 0, 0, 0);
    // Even kills are aimed by the measured time (an early one that finds the export already done, a faster run
    // than measured, brings the later ones earlier); odd kills wait until the export has started writing (its
    // staging folder appears beside OUT), then a few milliseconds more, so that they land mid-write whatever the
    // load on the machine.
    let mut aim = export_time;
    for k in 0..KILLS {
        let delay = aim.mul_f64(0.1 + 1.2 * f64::from(k) / f64::from(KILLS));
        // Litter of an earlier kill may still be there: the export's own staging folder is a change to this.
        let before = names_in(&place);
        let mut child = Command::new(env!("CARGO_BIN_EXE_quantstudio"))
            .args(quantize_args(input.to_str().unwrap(), "int8", out.to_str().unwrap()))
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        if k % 2 == 0 {
            std::thread::sleep(delay);
        } else {
            let started = Instant::now();
            while names_in(&place) == before
                && child.try_wait().unwrap().is_none()
                && started.elapsed() < export_time * 20
            {
                std::thread::sleep(std::time::Duration::from_millis(1));
            }
            std::thread::sleep(std::time::Duration::from_millis(u64::from(k)));
        }
        if child.try_wait().unwrap().is_none() {
            killed_running += 1;
        } else if k % 2 == 0 {
            aim = aim.mul_f64(0.6);
        }
        child.kill().unwrap(); // SIGKILL on unix
        child.wait().unwrap();
        if names_in(&place) != ["out"] {
            littered += 1;
        }
        let now = files(&out);
        if now == old {
            left_old += 1;
        } else if now == new {
            left_new += 1;
            // Start the next kill from the older export again.
            std::fs::remove_dir_all(&out).unwrap();
            copy_folder(&old_ref, &out);
        } else {
            panic!("after a kill at {delay:?} OUT is neither the old nor the new export: {:?}", names_in(&out));
        }
    }
    eprintln!(
        "one export {export_time:?}; {killed_running} kills mid-export: {left_old} left the old folder, {left_new} the new, {littered} with litter"
    );
    assert!(killed_running >= KILLS / 2, "only {killed_running} kills hit a running export");
    assert!(left_old > 0, "no kill interrupted the export ({left_new} finished)");
    assert!(littered > 0, "no kill left a staging folder behind, so the clean-up below proves nothing");

    export_cli(&input, "int8", &out);
    assert_eq!(files(&out), new);
    assert_eq!(names_in(&place), ["out"], "litter beside OUT after the next export");
}

#[test]
fn litter_of_a_crashed_export_is_recovered_or_removed_by_the_next_one() {
    let dir = common::temp_dir();
    let input = dir.path().join("input");
    common::write_tiny_sample(&input);
    let place = dir.path().join("place");
    let out = place.join("out");
    export_cli(&input, "fp16", &out);
    let old = files(&out);
    // A crash between the two renames of the fallback: OUT set aside, the new export staged, OUT missing. The
    // process ids are of no running process (above the largest pid Linux hands out).
    let set_aside = place.join(".out.quantstudio-old-4194999");
    std::fs::rename(&out, &set_aside).unwrap();
    copy_folder(&set_aside, &place.join(".out.quantstudio-tmp-4194999"));
    let model = Model::open(&input).unwrap();
    // An export into OUT first puts the whole earlier export back, then replaces it.
    let options = ExportOptions { force: true, ..Default::default() };
    let summary = export::export(&model, &Plan::all(&model, Precision::Bf16), &out, &options, &Progress::new());
    summary.unwrap();
    assert_ne!(files(&out), old);
    assert_eq!(names_in(&place), ["out"]);
}

#[test]
fn a_foreign_folder_is_refused_unless_overwrite() {
    let dir = common::temp_dir();
    let input = dir.path().join("input");
    common::write_tiny_sample(&input);
    let out = dir.path().join("out");
    // Another model's shards and index.
    std::fs::create_dir_all(&out).unwrap();
    common::write_model(&out.join("model-00001-of-00002.safetensors"), &[Spec::f32("x", &[2], &[1.0, 2.0])]);
    std::fs::write(
        out.join("model.safetensors.index.json"),
        r#"{"weight_map": {"x": "model-00001-of-00002.safetensors"}}"#,
    )
    .unwrap();
    let before = files(&out);
    let args = quantize_args(input.to_str().unwrap(), "int8", out.to_str().unwrap());
    let (code, _, stderr) = common::run_cli(&args);
    assert_eq!(code, 2, "{stderr}");
    assert_eq!(stderr.trim().lines().count(), 1, "{stderr}");
    assert!(stderr.contains("--overwrite") && stderr.contains(out.to_str().unwrap()), "{stderr}");
    assert_eq!(files(&out), before);

    let mut args = args.clone();
    args.push("--overwrite");
    let (code, _, stderr) = common::run_cli(&args);
    assert_eq!(code, 0, "{stderr}");
    let left = names_in(&out);
    assert!(!left.iter().any(|n| n.starts_with("model-0000")), "{left:?}");
    assert!(Model::open(&out).unwrap().tensors.iter().any(|t| t.name.contains("q_proj")));
    assert_eq!(names_in(dir.path()), ["input", "out"]);
}

/// Runs `quantize INPUT -o OUT` and checks the refusal: exit 2, one line naming both folders, input unchanged.
fn assert_refused(input: &Path, out: &Path, input_folder: &Path) {
    let before = files(input_folder);
    let (code, _, stderr) = common::run_cli(&quantize_args(input.to_str().unwrap(), "int8", out.to_str().unwrap()));
    assert_eq!(code, 2, "{} -> {}: {stderr}", input.display(), out.display());
    assert_eq!(stderr.trim().lines().count(), 1, "{stderr}");
    let canonical_input = input_folder.canonicalize().unwrap();
    assert!(stderr.contains(canonical_input.to_str().unwrap()), "{stderr}");
    let out_named = out.file_name().unwrap().to_str().unwrap();
    assert!(stderr.trim_end().ends_with(out_named), "{stderr}");
    assert_eq!(files(input_folder), before, "the input changed");
}

#[test]
fn out_may_be_neither_the_input_folder_nor_inside_it() {
    let dir = common::temp_dir();
    let input = dir.path().join("input");
    common::write_tiny_sample(&input);
    let weights = input.join("model.safetensors");
    for source in [&input, &weights] {
        assert_refused(source, &input, &input);
        assert_refused(source, &input.join("quantized"), &input);
        assert_refused(source, &input.join("a/b"), &input);
    }
    // Through symlinks: a link to the input folder, and a folder inside it reached through a link.
    #[cfg(unix)]
    {
        let link = dir.path().join("link");
        std::os::unix::fs::symlink(&input, &link).unwrap();
        for source in [&input, &weights] {
            assert_refused(source, &link, &input);
            assert_refused(source, &link.join("quantized"), &input);
        }
        assert_refused(&link, &input.join("quantized"), &input);
    }
    assert_eq!(names_in(&input), ["config.json", "model.safetensors"]);
}

#[test]
fn zero_element_tensors_export() {
    let dir = common::temp_dir();
    let input = dir.path().join("input");
    std::fs::create_dir_all(&input).unwrap();
    let mut specs = common::tiny_sample_specs();
    specs.insert(0, Spec::f32("model.layers.0.mlp.empty_proj.weight", &[0, 64], &[]));
    specs.push(Spec::f32("model.layers.0.mlp.empty_proj.bias", &[0], &[]));
    specs.push(Spec::f32("model.extra.weight", &[3, 0], &[]));
    common::write_model(&input.join("model.safetensors"), &specs);
    std::fs::write(input.join("config.json"), common::TINY_SAMPLE_CONFIG).unwrap();
    let model = Model::open(&input).unwrap();
    let options = ExportOptions { force: true, ..Default::default() };
    for precision in
        [Precision::Fp16, Precision::Fp32, Precision::Int8(Int8Scheme::weights(true, Granularity::PerChannel))]
    {
        let out = dir.path().join(format!("out-{}", precision.label().replace(' ', "-")));
        let plan = Plan::all(&model, precision);
        export::export(&model, &plan, &out, &options, &Progress::new())
            .unwrap_or_else(|e| panic!("{}: {e}", precision.label()));
        let exported = Model::open(&out).unwrap();
        let names: Vec<&str> = exported.tensors.iter().map(|t| t.name.as_str()).collect();
        let bias = exported.tensors.iter().find(|t| t.name == "model.layers.0.mlp.empty_proj.bias");
        assert_eq!(bias.map(|t| t.shape.clone()), Some(vec![0]), "{names:?}");
        let extra =
            exported.tensors.iter().find(|t| t.name == "model.extra.weight" || t.name == "model.extra.weight_packed");
        assert!(extra.is_some_and(|t| t.shape.contains(&0)), "{names:?}");
        assert!(exported.tensors.iter().any(|t| t.name.starts_with("model.layers.0.mlp.empty_proj.weight")));
    }
}

/// The window's export goes through the same code: a refused destination reaches the status line as an error.
#[cfg(feature = "gui")]
#[test]
fn the_window_reports_a_refused_destination_as_an_error() {
    use egui_kittest::Harness;
    use quantstudio::app::{Command, Preferences, StudioApp};
    const WORKER_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(60);

    let dir = common::temp_dir();
    let input = dir.path().join("input");
    common::write_tiny_sample(&input);
    let foreign = dir.path().join("foreign");
    std::fs::create_dir_all(&foreign).unwrap();
    std::fs::write(foreign.join("notes.txt"), "mine").unwrap();
    let app = StudioApp::new(Preferences::default(), Some(input.clone()), || {});
    let mut h =
        Harness::builder().with_size([1280.0, 800.0]).build_ui_state(|ui, app: &mut StudioApp| app.frame_ui(ui), app);
    let step_until = |h: &mut Harness<'static, StudioApp>, what: &str, done: &dyn Fn(&StudioApp) -> bool| {
        let start = Instant::now();
        while !done(h.state()) {
            assert!(start.elapsed() < WORKER_TIMEOUT, "timed out waiting for {what}");
            h.step();
            std::thread::sleep(std::time::Duration::from_millis(2));
        }
        h.step();
    };
    step_until(&mut h, "the model to open", &|app| app.studio.model.is_some() && !app.studio.is_busy());
    for (dest, says) in [(input.join("quantized"), "inside it"), (foreign.clone(), "--overwrite")] {
        h.state_mut().studio.notice = None;
        h.state_mut().send(Command::Export { dest: dest.clone(), force: true });
        h.step();
        step_until(&mut h, "the refusal", &|app| app.studio.notice.is_some() && !app.studio.is_busy());
        let notice = h.state().studio.notice.clone().unwrap();
        assert!(notice.is_error && notice.text.contains(says), "{notice:?}");
    }
    assert!(!input.join("quantized").exists());
    assert_eq!(names_in(&foreign), ["notes.txt"]);
}
