//! Mutation fuzzing of the parsers of untrusted input: safetensors files (header and data), recipes, `model.json`
//! graphs and evaluation data files.
//!
//! # Fuzzing
//!
//! Each parser gets a fixed number of mutants (`QUANTSTUDIO_FUZZ_ITERS`, default [`DEFAULT_ITERS`] per parser),
//! grown from valid seed files with the crate's seeded xorshift generator, so a run is reproducible and a failure
//! names its mutant. Mutations: bit flips, truncation, inserted and deleted spans, hostile numbers put in place of
//! numbers of the JSON (`-1`, `2^32`, `2^40`, `2^61+1`, `u64::MAX`, `1e308`, …), renamed and duplicated keys, and for
//! safetensors a changed header length field. Every mutant runs inside `catch_unwind` and must not panic; an `Err` is
//! one line; an `Ok` must be consistent (for safetensors: every tensor's bytes lie inside the file and match its
//! dtype and shape).
//!
//! An allocation failure aborts the process instead of panicking, so the in-process loops skip mutants of the
//! known-abort class (a zero-element shape with a huge dimension; a `model.json` number above [`SIZE_CAP`]); that
//! class is tested separately by running the binary as a child process, which must exit with code 2 and a one-line
//! error naming the file (not die from a signal). The minimal reproducers of what the fuzz found are child-process
//! tests too (`once_aborted_*`, `once_panicked_*`), so an abort fails only that test.
//!
//! Budget: with the default of 300 mutants per parser the module's tests take about 1.6 s (8 s with cargo's start)
//! in a debug build on the 2-core CI machine (measured with `cargo test --test integration fuzz`). Raise it for a
//! longer hunt with e.g. `QUANTSTUDIO_FUZZ_ITERS=20000`.

use std::panic::{AssertUnwindSafe, catch_unwind};
use std::path::{Path, PathBuf};

use quantstudio::Progress;
use quantstudio::model::{Model, TensorId};
use quantstudio::quant::plan::Recipe;
use quantstudio::runtime::{Architecture, EvalData, Network};
use quantstudio::seeded::XorShift64;

/// Mutants per parser unless `QUANTSTUDIO_FUZZ_ITERS` says otherwise.
const DEFAULT_ITERS: usize = 300;
/// The largest number a `model.json` mutant may hold to run in process (a bigger one may abort on allocation).
const SIZE_CAP: u64 = 1 << 16;
/// The largest input or output length a built graph is run with.
const FORWARD_CAP_ELEMS: usize = 1 << 16;
/// Failures listed in an assertion message.
const SHOWN_FAILURES: usize = 5;

/// Numbers put in place of the JSON's numbers.
const HOSTILE_NUMBERS: &[&str] = &[
    "0",
    "1",
    "-1",
    "-0",
    "3.5",
    "4294967296",
    "1099511627776",
    "2305843009213693953",
    "18446744073709551615",
    "99999999999999999999999",
    "1e308",
    "-1e308",
    "NaN",
];

fn iterations() -> usize {
    std::env::var("QUANTSTUDIO_FUZZ_ITERS").ok().and_then(|v| v.parse().ok()).unwrap_or(DEFAULT_ITERS)
}

fn below(rng: &mut XorShift64, n: usize) -> usize {
    if n == 0 { 0 } else { (rng.next_u64() % n as u64) as usize }
}

/// Byte ranges of the JSON numbers in `bytes` (a run of digits with an optional leading minus).
fn number_spans(bytes: &[u8]) -> Vec<(usize, usize)> {
    let mut spans = Vec::new();
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i].is_ascii_digit() || (bytes[i] == b'-' && bytes.get(i + 1).is_some_and(u8::is_ascii_digit)) {
            let start = i;
            i += 1;
            while i < bytes.len() && (bytes[i].is_ascii_digit() || matches!(bytes[i], b'.' | b'e' | b'E' | b'+')) {
                i += 1;
            }
            spans.push((start, i));
        } else {
            i += 1;
        }
    }
    spans
}

/// Byte ranges of the keys of `bytes` (the text between the quotes of `"key":`).
fn key_spans(bytes: &[u8]) -> Vec<(usize, usize)> {
    let mut spans = Vec::new();
    let mut open: Option<usize> = None;
    for (i, &b) in bytes.iter().enumerate() {
        if b == b'"' {
            match open {
                None => open = Some(i + 1),
                Some(start) => {
                    open = None;
                    let rest = bytes[i + 1..].iter().find(|c| !c.is_ascii_whitespace());
                    if rest == Some(&b':') {
                        spans.push((start, i));
                    }
                }
            }
        }
    }
    spans
}

/// One mutation of `bytes`, described for the failure message.
fn mutate_once(rng: &mut XorShift64, bytes: &mut Vec<u8>) -> String {
    let len = bytes.len();
    match below(rng, 8) {
        0 if len > 0 => {
            let at = below(rng, len);
            let bit = 1u8 << below(rng, 8);
            bytes[at] ^= bit;
            format!("flip bit {bit:#x} at {at}")
        }
        1 if len > 0 => {
            let at = below(rng, len);
            bytes.truncate(at);
            format!("truncate to {at}")
        }
        2 => {
            let at = below(rng, len + 1);
            let alphabet = b"{}[]\",:0-9e\\\0\xff";
            let byte = alphabet[below(rng, alphabet.len())];
            bytes.insert(at, byte);
            format!("insert {byte:#x} at {at}")
        }
        3 => {
            let spans = number_spans(bytes);
            if spans.is_empty() {
                return "no number".into();
            }
            let (start, end) = spans[below(rng, spans.len())];
            let number = HOSTILE_NUMBERS[below(rng, HOSTILE_NUMBERS.len())];
            bytes.splice(start..end, number.bytes());
            format!("number at {start} -> {number}")
        }
        4 => {
            let spans = key_spans(bytes);
            if spans.is_empty() {
                return "no key".into();
            }
            let (start, end) = spans[below(rng, spans.len())];
            if end > start && rng.next_u64().is_multiple_of(2) {
                bytes.remove(end - 1);
                format!("key at {start} loses its last letter")
            } else {
                bytes.insert(end, b'x');
                format!("key at {start} gains an x")
            }
        }
        5 => {
            let spans = key_spans(bytes);
            if spans.is_empty() {
                return "no key".into();
            }
            let (start, end) = spans[below(rng, spans.len())];
            let value = ["null", "1", "\"x\"", "[]", "{}", "-1"][below(rng, 6)];
            let mut member = Vec::new();
            member.push(b'"');
            member.extend_from_slice(&bytes[start..end]);
            member.extend_from_slice(format!("\":{value},").as_bytes());
            bytes.splice(start - 1..start - 1, member);
            format!("key at {start} duplicated with {value}")
        }
        6 if len > 0 => {
            let start = below(rng, len);
            let end = (start + 1 + below(rng, 16)).min(len);
            bytes.drain(start..end);
            format!("delete {start}..{end}")
        }
        _ if len > 0 => {
            let start = below(rng, len);
            let end = (start + 1 + below(rng, 16)).min(len);
            let span = bytes[start..end].to_vec();
            bytes.splice(start..start, span);
            format!("duplicate {start}..{end}")
        }
        _ => "nothing".into(),
    }
}

/// One to three mutations of `seed`.
fn mutant(rng: &mut XorShift64, seed: &[u8]) -> (Vec<u8>, String) {
    let mut bytes = seed.to_vec();
    let count = 1 + below(rng, 3);
    let steps: Vec<String> = (0..count).map(|_| mutate_once(rng, &mut bytes)).collect();
    (bytes, steps.join("; "))
}

/// A safetensors file with its header mutated as text, the length prefix rewritten to match (or changed itself).
fn safetensors_mutant(rng: &mut XorShift64, seed: &[u8]) -> (Vec<u8>, String) {
    let (header, data) = split_safetensors(seed).expect("valid seed");
    match below(rng, 4) {
        0 => mutant(rng, seed),
        1 => {
            let mut bytes = seed.to_vec();
            let real = header.len() as u64;
            let length = [0, 1, real - 1, real + 1, real + 8, seed.len() as u64, u64::MAX, 1 << 40][below(rng, 8)];
            bytes[..8].copy_from_slice(&length.to_le_bytes());
            (bytes, format!("header length {real} -> {length}"))
        }
        _ => {
            let (mut header, how) = mutant(rng, header);
            if rng.next_u64().is_multiple_of(4) {
                header.extend(std::iter::repeat_n(b' ', below(rng, 9)));
            }
            let mut bytes = (header.len() as u64).to_le_bytes().to_vec();
            bytes.extend_from_slice(&header);
            bytes.extend_from_slice(data);
            (bytes, format!("header: {how}"))
        }
    }
}

fn split_safetensors(bytes: &[u8]) -> Option<(&[u8], &[u8])> {
    let length = u64::from_le_bytes(bytes.get(..8)?.try_into().ok()?);
    let end = usize::try_from(length).ok()?.checked_add(8)?;
    Some((bytes.get(8..end)?, bytes.get(end..)?))
}

/// Whether a safetensors file declares a zero-element tensor with a dimension above [`SIZE_CAP`] (the known-abort
/// class of code that allocates per row).
fn has_huge_empty_tensor(bytes: &[u8]) -> bool {
    let Some((header, _)) = split_safetensors(bytes) else { return false };
    let Ok(serde_json::Value::Object(map)) = serde_json::from_slice::<serde_json::Value>(header) else {
        return false;
    };
    map.values().filter_map(|t| t.get("shape")?.as_array().cloned()).any(|shape| {
        let dims: Vec<Option<u64>> = shape.iter().map(serde_json::Value::as_u64).collect();
        dims.contains(&Some(0)) && dims.iter().any(|d| d.is_none_or(|d| d > SIZE_CAP))
    })
}

/// Whether any number in a JSON document is above [`SIZE_CAP`] in magnitude (or not an integer that fits).
fn has_big_number(doc: &serde_json::Value) -> bool {
    match doc {
        serde_json::Value::Number(n) => match (n.as_u64(), n.as_i64()) {
            (Some(u), _) => u > SIZE_CAP,
            (None, Some(i)) => i.unsigned_abs() > SIZE_CAP,
            _ => n.as_f64().is_none_or(|f| f.abs() > SIZE_CAP as f64),
        },
        serde_json::Value::Array(items) => items.iter().any(has_big_number),
        serde_json::Value::Object(map) => map.values().any(has_big_number),
        _ => false,
    }
}

/// What went wrong with one mutant, or `None`.
fn judge<T>(
    outcome: std::thread::Result<quantstudio::Result<T>>,
    check: impl FnOnce(&T) -> Option<String>,
) -> Option<String> {
    match outcome {
        Err(panic) => {
            let message = panic
                .downcast_ref::<String>()
                .cloned()
                .or_else(|| panic.downcast_ref::<&str>().map(|s| (*s).to_owned()))
                .unwrap_or_default();
            Some(format!("panicked: {message}"))
        }
        Ok(Err(e)) if e.to_string().contains('\n') => Some(format!("error of several lines: {e:?}")),
        Ok(Err(_)) => None,
        Ok(Ok(value)) => check(&value),
    }
}

/// Runs `iters` mutants through `run`; fails listing the first failures with their mutants.
struct Campaign {
    name: &'static str,
    tried: usize,
    skipped: usize,
    accepted: usize,
    failures: Vec<String>,
}

impl Campaign {
    fn new(name: &'static str) -> Campaign {
        Campaign { name, tried: 0, skipped: 0, accepted: 0, failures: Vec::new() }
    }

    fn record(&mut self, bytes: &[u8], how: &str, problem: Option<String>) {
        self.tried += 1;
        if let Some(problem) = problem {
            let shown: String = String::from_utf8_lossy(bytes).chars().take(600).collect();
            self.failures.push(format!("{problem}\n  mutation: {how}\n  bytes: {shown:?}"));
        }
    }

    fn finish(self) {
        eprintln!(
            "fuzz {}: {} mutants run, {} accepted, {} skipped as known-abort class, {} failures",
            self.name,
            self.tried,
            self.accepted,
            self.skipped,
            self.failures.len()
        );
        assert!(
            self.failures.is_empty(),
            "fuzz {}: {} of {} mutants failed; first ones:\n{}",
            self.name,
            self.failures.len(),
            self.tried,
            self.failures.iter().take(SHOWN_FAILURES).cloned().collect::<Vec<_>>().join("\n")
        );
    }
}

thread_local! {
    /// Whether this thread's panics are being collected by a campaign (and so not printed).
    static QUIET: std::cell::Cell<bool> = const { std::cell::Cell::new(false) };
}

/// Quiet this thread's panics while a campaign runs (collected and reported); other tests' panics print
/// as usual, since the hook is global.
fn quietly<R>(body: impl FnOnce() -> R) -> R {
    static INSTALL: std::sync::Once = std::sync::Once::new();
    INSTALL.call_once(|| {
        let previous = std::panic::take_hook();
        std::panic::set_hook(Box::new(move |info| {
            if !QUIET.with(std::cell::Cell::get) {
                previous(info);
            }
        }));
    });
    QUIET.with(|q| q.set(true));
    let result = catch_unwind(AssertUnwindSafe(body));
    QUIET.with(|q| q.set(false));
    match result {
        Ok(r) => r,
        Err(panic) => std::panic::resume_unwind(panic),
    }
}

fn fixture(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures").join(name)
}

/// A copy of a fixture folder in `dir`.
fn copy_fixture(name: &str, dir: &Path) -> PathBuf {
    let folder = dir.join(name);
    std::fs::create_dir(&folder).expect("mkdir");
    for entry in std::fs::read_dir(fixture(name)).expect("list fixture") {
        let path = entry.expect("entry").path();
        std::fs::copy(&path, folder.join(path.file_name().expect("file name"))).expect("copy fixture");
    }
    folder
}

fn sample(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("sample-models").join(name)
}

/// An `Ok` model is consistent: every tensor's bytes lie in the file and match its dtype and shape.
fn model_consistency(model: &Model, file_bytes: usize) -> Option<String> {
    for (i, tensor) in model.tensors.iter().enumerate() {
        let expected =
            tensor.shape.iter().try_fold(tensor.dtype.size_bytes() as u64, |acc, &d| acc.checked_mul(d as u64));
        if expected != Some(tensor.size_bytes()) {
            return Some(format!(
                "accepted {}: shape {:?} but {} bytes",
                tensor.name,
                tensor.shape,
                tensor.size_bytes()
            ));
        }
        let bytes = model.tensor_bytes(TensorId(i));
        if bytes.len() as u64 != tensor.size_bytes() || tensor.size_bytes() > file_bytes as u64 {
            return Some(format!("accepted {}: {} bytes outside a {file_bytes}-byte file", tensor.name, bytes.len()));
        }
    }
    None
}

/// The safetensors parser on mutants of the tiny checkpoint and the bundled sample: no panic, one-line errors,
/// accepted files consistent.
#[test]
fn safetensors_mutants() {
    let dir = crate::common::temp_dir();
    let seeds = [
        crate::common::safetensors_bytes(&crate::common::tiny_sample_specs(), None),
        std::fs::read(sample("digits-mlp/model.safetensors")).expect("read sample"),
    ];
    let mut rng = XorShift64::new(21);
    let mut campaign = Campaign::new("safetensors");
    let path = dir.path().join("mutant.safetensors");
    quietly(|| {
        for i in 0..iterations() {
            let seed = &seeds[i % seeds.len()];
            let (bytes, how) = safetensors_mutant(&mut rng, seed);
            std::fs::write(&path, &bytes).expect("write mutant");
            let outcome = catch_unwind(|| {
                let model = Model::open(&path)?;
                Ok((model_consistency(&model, bytes.len()), ()))
            });
            if matches!(outcome, Ok(Ok(_))) {
                campaign.accepted += 1;
            }
            let problem = judge(outcome, |(problem, ())| problem.clone());
            campaign.record(&bytes, &how, problem);
        }
    });
    campaign.finish();
}

/// The recipe parser and resolver on mutants of a full recipe for the CNN sample.
#[test]
fn recipe_mutants() {
    let model = Model::open(&sample("digits-cnn")).expect("open sample");
    let mut seed_recipe = Recipe::starting(&model);
    let extra: Recipe = serde_json::from_str(
        r#"{"format":"quantstudio-recipe","version":1,"default":"fp32","rules":[{"pattern":"conv*","precision":"bf16"}]}"#,
    )
    .unwrap_or_else(|_| Recipe::default());
    seed_recipe.rules.extend(extra.rules);
    let seed = seed_recipe.to_json().into_bytes();
    Recipe::from_json(&seed_recipe.to_json(), Path::new("seed.json"))
        .and_then(|r| r.resolve(&model))
        .expect("the seed recipe resolves");
    let mut rng = XorShift64::new(22);
    let mut campaign = Campaign::new("recipe");
    quietly(|| {
        for _ in 0..iterations() {
            let (bytes, how) = mutant(&mut rng, &seed);
            let text = String::from_utf8_lossy(&bytes).into_owned();
            let outcome = catch_unwind(AssertUnwindSafe(|| {
                let recipe = Recipe::from_json(&text, Path::new("mutant.json"))?;
                let plan = recipe.resolve(&model)?;
                Ok(plan.coverage(&model))
            }));
            if matches!(outcome, Ok(Ok(_))) {
                campaign.accepted += 1;
            }
            let problem = judge(outcome, |_| None);
            campaign.record(&bytes, &how, problem);
        }
    });
    campaign.finish();
}

/// `model.json` graphs: a model folder with a mutated graph is opened, its architecture detected, its network
/// built and, when its sizes are small, run on zeros; the output must have the declared length.
#[test]
fn model_json_mutants() {
    let dir = crate::common::temp_dir();
    let mut seeds = Vec::new();
    for name in ["digits-mlp", "digits-cnn"] {
        let folder = dir.path().join(name);
        std::fs::create_dir(&folder).expect("mkdir");
        for file in ["config.json", "model.safetensors"] {
            std::fs::copy(sample(name).join(file), folder.join(file)).expect("copy sample");
        }
        seeds.push((folder, std::fs::read(sample(name).join("model.json")).expect("read model.json")));
    }
    let mut rng = XorShift64::new(23);
    let mut campaign = Campaign::new("model.json");
    let progress = Progress::new();
    quietly(|| {
        for i in 0..iterations() {
            let (folder, seed) = &seeds[i % seeds.len()];
            let (bytes, how) = mutant(&mut rng, seed);
            if serde_json::from_slice::<serde_json::Value>(&bytes).is_ok_and(|doc| has_big_number(&doc)) {
                campaign.skipped += 1;
                continue;
            }
            std::fs::write(folder.join("model.json"), &bytes).expect("write mutant");
            let outcome = catch_unwind(AssertUnwindSafe(|| {
                let model = Model::open(folder)?;
                let arch = Architecture::detect(&model)?;
                let Network::Graph(net) = Network::build(&model, &arch, None, &progress)? else {
                    return Ok(Some("a graph folder built as another architecture".to_owned()));
                };
                if net.input_len() > FORWARD_CAP_ELEMS || net.output_len() > FORWARD_CAP_ELEMS {
                    return Ok(None);
                }
                let out = net.forward(&vec![0.0; net.input_len()]);
                Ok((out.len() != net.output_len())
                    .then(|| format!("output of {} values, {} declared", out.len(), net.output_len())))
            }));
            if matches!(outcome, Ok(Ok(_))) {
                campaign.accepted += 1;
            }
            let problem = judge(outcome, |p| p.clone());
            campaign.record(&bytes, &how, problem);
        }
    });
    campaign.finish();
}

/// Evaluation data files: mutants of the MLP sample's `eval.safetensors`, loaded as the CLI loads `--data`.
#[test]
fn eval_data_mutants() {
    let dir = crate::common::temp_dir();
    let seed = std::fs::read(sample("digits-mlp/eval.safetensors")).expect("read sample");
    let path = dir.path().join("eval.safetensors");
    let mut rng = XorShift64::new(24);
    let mut campaign = Campaign::new("eval data");
    quietly(|| {
        for _ in 0..iterations() {
            let (bytes, how) = safetensors_mutant(&mut rng, &seed);
            if has_huge_empty_tensor(&bytes) {
                campaign.skipped += 1;
                continue;
            }
            std::fs::write(&path, &bytes).expect("write mutant");
            let outcome = catch_unwind(AssertUnwindSafe(|| EvalData::load(&path, dir.path())));
            if matches!(outcome, Ok(Ok(_))) {
                campaign.accepted += 1;
            }
            let problem = judge(outcome, |data| match data {
                EvalData::Samples { inputs, sample_shape, labels } => {
                    let per_sample: usize = sample_shape.iter().product();
                    let count = data.len();
                    if per_sample == 0 || inputs.len() != count * per_sample {
                        Some(format!("{} inputs for {count} samples of shape {sample_shape:?}", inputs.len()))
                    } else if labels.as_ref().is_some_and(|l| l.len() != count) {
                        Some(format!("labels for other than {count} samples"))
                    } else {
                        None
                    }
                }
                EvalData::Sequences(_) => None,
            });
            campaign.record(&bytes, &how, problem);
        }
    });
    campaign.finish();
}

/// `tokenizer.json`: mutants of the BERT fixture's tokenizer, used to tokenise its text data as `eval --data` does.
#[test]
fn tokenizer_mutants() {
    let dir = crate::common::temp_dir();
    let folder = copy_fixture("tiny-bert", dir.path());
    let seed = std::fs::read(folder.join("tokenizer.json")).expect("read tokenizer");
    let text = folder.join("inputs.txt");
    let mut rng = XorShift64::new(25);
    let mut campaign = Campaign::new("tokenizer.json");
    quietly(|| {
        for _ in 0..iterations() {
            let (bytes, how) = mutant(&mut rng, &seed);
            if serde_json::from_slice::<serde_json::Value>(&bytes).is_ok_and(|doc| has_big_number(&doc)) {
                campaign.skipped += 1;
                continue;
            }
            std::fs::write(folder.join("tokenizer.json"), &bytes).expect("write mutant");
            let outcome = catch_unwind(AssertUnwindSafe(|| EvalData::load(&text, &folder)));
            if matches!(outcome, Ok(Ok(_))) {
                campaign.accepted += 1;
            }
            let problem = judge(outcome, |data| match data {
                EvalData::Sequences(s) if s.is_empty() => Some("no sequences accepted".to_owned()),
                EvalData::Sequences(_) => None,
                EvalData::Samples { .. } => Some("text tokenised as samples".to_owned()),
            });
            campaign.record(&bytes, &how, problem);
        }
    });
    campaign.finish();
}

/// Runs the binary with `args`; asserts that it exits with code 2 (not a signal, not success) and one stderr line
/// naming `file`.
fn assert_clean_refusal(args: &[&str], file: &Path) {
    let (code, _stdout, stderr) = crate::common::run_cli(args);
    let file_name = file.file_name().and_then(|f| f.to_str()).unwrap_or_default();
    assert_eq!(code, 2, "{args:?} must exit with code 2 (-1 is a signal: an abort); stderr: {stderr}");
    assert_eq!(stderr.trim_end().lines().count(), 1, "{args:?} must print one line: {stderr}");
    assert!(stderr.contains(file_name), "{args:?} must name {file_name}: {stderr}");
}

fn write_safetensors_header(path: &Path, header: &str, data: &[u8]) {
    let mut bytes = (header.len() as u64).to_le_bytes().to_vec();
    bytes.extend_from_slice(header.as_bytes());
    bytes.extend_from_slice(data);
    std::fs::write(path, bytes).expect("write file");
}

/// Once aborted (a regression test now): `inspect` of a zero-element tensor with a first dimension of 2^40 (a
/// 72-byte file) opens it.
#[test]
fn once_aborted_inspect_empty_tensor_of_2_pow_40_rows() {
    let dir = crate::common::temp_dir();
    let path = dir.path().join("empty-rows.safetensors");
    write_safetensors_header(&path, r#"{"w":{"dtype":"F32","shape":[1099511627776,0],"data_offsets":[0,0]}}"#, &[]);
    // Zero-element tensors are valid: the file opens and reports the tensor, cheaply.
    let (code, stdout, stderr) = crate::common::run_cli(&["inspect", path.to_str().expect("utf-8 path")]);
    assert_eq!(code, 0, "inspect must open a zero-element tensor (-1 is a signal: an abort); stderr: {stderr}");
    assert!(stdout.contains('w'), "the tensor is listed: {stdout}");
}

/// Once aborted (a regression test now): evaluation data whose `input_ids` has shape `[2^40, 0]`.
#[test]
fn once_aborted_eval_input_ids_of_2_pow_40_rows() {
    let dir = crate::common::temp_dir();
    let path = dir.path().join("ids.safetensors");
    write_safetensors_header(
        &path,
        r#"{"input_ids":{"dtype":"I64","shape":[1099511627776,0],"data_offsets":[0,0]}}"#,
        &[],
    );
    let model = fixture("tiny-bert");
    assert_clean_refusal(
        &[
            "eval",
            model.to_str().expect("utf-8 path"),
            "--precision",
            "int8",
            "--data",
            path.to_str().expect("utf-8 path"),
        ],
        &path,
    );
}

/// Once aborted (a regression test now): a conv padding of 2^61+1 in `model.json` wraps the shape arithmetic.
#[test]
fn once_aborted_model_json_conv_padding_2_pow_61_plus_1() {
    let dir = crate::common::temp_dir();
    let folder = dir.path().join("cnn");
    std::fs::create_dir(&folder).expect("mkdir");
    for file in ["config.json", "model.safetensors"] {
        std::fs::copy(sample("digits-cnn").join(file), folder.join(file)).expect("copy sample");
    }
    let graph = std::fs::read_to_string(sample("digits-cnn/model.json")).expect("read model.json");
    let hostile = graph.replacen("\"padding\": [1, 1]", "\"padding\": [2305843009213693953, 1]", 1);
    assert_ne!(graph, hostile, "the sample's first conv has padding [1, 1]");
    let path = folder.join("model.json");
    std::fs::write(&path, hostile).expect("write model.json");
    let data = sample("digits-cnn/eval.safetensors");
    let args =
        ["eval", folder.to_str().expect("utf-8 path"), "--precision", "int8", "--data", data.to_str().expect("utf-8")];
    assert_clean_refusal(&args, &path);
}

/// Once aborted (a regression test now): a `tokenizer.json` padding to a fixed length of 2e8 tokens.
#[test]
fn once_aborted_tokenizer_fixed_padding_of_2e8() {
    let dir = crate::common::temp_dir();
    let folder = copy_fixture("tiny-bert", dir.path());
    let path = folder.join("tokenizer.json");
    let mut doc: serde_json::Value =
        serde_json::from_slice(&std::fs::read(&path).expect("read tokenizer")).expect("tokenizer json");
    doc["padding"]["strategy"] = serde_json::json!({"Fixed": 200_000_000u64});
    std::fs::write(&path, doc.to_string()).expect("write tokenizer");
    let data = folder.join("inputs.txt");
    let args =
        ["eval", folder.to_str().expect("utf-8"), "--precision", "int8", "--data", data.to_str().expect("utf-8")];
    assert_clean_refusal(&args, &path);
}

/// Once panicked: a `tokenizer.json` cut short (the fixture's first 2651 bytes) panics in the tokenizer's deserializer
/// ("Helper: Error(\"EOF while parsing an object\" …)") instead of a one-line error naming the file.
#[test]
fn once_panicked_truncated_tokenizer_json() {
    let dir = crate::common::temp_dir();
    let folder = copy_fixture("tiny-bert", dir.path());
    let path = folder.join("tokenizer.json");
    let bytes = std::fs::read(&path).expect("read tokenizer");
    std::fs::write(&path, &bytes[..2651.min(bytes.len())]).expect("write tokenizer");
    let data = folder.join("inputs.txt");
    let args =
        ["eval", folder.to_str().expect("utf-8"), "--precision", "int8", "--data", data.to_str().expect("utf-8")];
    assert_clean_refusal(&args, &path);
}
