//! Perplexity and KL divergence of a plan on a text, measured the way llama.cpp's `llama-perplexity` measures them
//! (its default mode and its `--kl-divergence` statistics), so the figures compare with a GGUF file's.
//!
//! The whole text is tokenised once (with the BOS token when the tokenizer adds one; one trailing newline of the
//! file is dropped, as `-f` does). It is cut into `chunks = min(max_chunks, tokens / ctx)` chunks of `ctx` tokens;
//! each chunk runs alone from an empty cache, its first token replaced by BOS when the tokenizer adds BOS. Only the
//! second half is scored: the logits at positions `first = ctx / 2 ..= ctx - 2` predict the tokens after them, so a
//! chunk scores `ctx - first - 1` tokens. docs/EVALUATION.md gives every formula.

use std::path::{Path, PathBuf};

use rayon::prelude::*;
use serde::Serialize;

use super::eval::argmax;
use super::{Architecture, Network, TokenSequence};
use crate::error::{Error, Result};
use crate::model::Model;
use crate::progress::Progress;
use crate::quant::Plan;

/// llama-perplexity's default context length (`-c 512`).
pub const DEFAULT_CTX_TOKENS: usize = 512;

/// The shortest context that scores at least one token per chunk.
pub const MIN_CTX_TOKENS: usize = 4;

/// A text tokenised for perplexity.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Document {
    /// Every token of the text, with the BOS token in front when the tokenizer adds one.
    pub tokens: Vec<u32>,
    /// The BOS token, when the tokenizer adds one (each chunk then starts with it).
    pub bos: Option<u32>,
    /// The text file.
    pub path: PathBuf,
}

impl Document {
    /// Reads `path` and tokenises it whole with `tokenizer.json` from `model_folder` (no truncation, no padding).
    pub fn load(path: &Path, model_folder: &Path) -> Result<Document> {
        let bad = |problem: String| Error::BadData { problem, path: path.to_owned() };
        let mut text = std::fs::read_to_string(path).map_err(|e| Error::io("cannot read", path, e))?;
        if text.ends_with('\n') {
            text.pop();
        }
        let tokenizer_path = model_folder.join("tokenizer.json");
        if !tokenizer_path.is_file() {
            return Err(bad(format!("the model has no tokenizer.json ({}) to tokenise it", tokenizer_path.display())));
        }
        let mut tokenizer = super::data::load_tokenizer(&tokenizer_path)?;
        tokenizer.with_padding(None);
        tokenizer.with_truncation(None).map_err(|e| bad(format!("cannot switch truncation off: {e}")))?;
        let encode = |text: &str, special: bool| -> Result<Vec<u32>> {
            let encoding = tokenizer.encode(text, special).map_err(|e| bad(format!("cannot be tokenised: {e}")))?;
            Ok(encoding.get_ids().to_vec())
        };
        // The tokenizer adds BOS when its post-processor puts exactly one token before a text's own tokens.
        let (with, without) = (encode("a", true)?, encode("a", false)?);
        let bos = (with.len() == without.len() + 1 && with[1..] == without[..]).then(|| with[0]);
        Ok(Document { tokens: encode(&text, true)?, bos, path: path.to_owned() })
    }
}

/// How a text is cut into chunks.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
pub struct Chunking {
    /// Tokens per chunk (llama-perplexity's `n_ctx`).
    pub ctx_tokens: usize,
    /// Chunks run.
    pub chunks: usize,
}

impl Chunking {
    /// `min(max_chunks, tokens / ctx)` chunks of `ctx_tokens`; like llama-perplexity, a text of fewer than
    /// `2 × ctx_tokens` tokens is refused.
    pub fn new(doc: &Document, ctx_tokens: usize, max_chunks: Option<usize>) -> Result<Chunking> {
        if ctx_tokens < MIN_CTX_TOKENS {
            return Err(Error::BadArguments {
                reason: format!("a context of {ctx_tokens} tokens scores nothing: give at least {MIN_CTX_TOKENS}"),
            });
        }
        if max_chunks == Some(0) {
            return Err(Error::BadArguments { reason: "--chunks 0 runs nothing: give at least 1".into() });
        }
        let tokens = doc.tokens.len();
        let needed = 2 * ctx_tokens;
        if tokens < needed {
            return Err(Error::TooFewTokens { tokens, ctx_tokens, needed, path: doc.path.clone() });
        }
        let chunks = (tokens / ctx_tokens).min(max_chunks.unwrap_or(usize::MAX));
        Ok(Chunking { ctx_tokens, chunks })
    }

    /// The first position whose logits are scored: `ctx / 2`.
    pub fn first_scored(&self) -> usize {
        self.ctx_tokens / 2
    }

    /// Tokens scored per chunk: `ctx - ctx / 2 - 1`.
    pub fn scored_per_chunk(&self) -> usize {
        self.ctx_tokens - self.first_scored() - 1
    }

    /// The tokens chunk `index` runs on: `ctx` tokens of the text, the first replaced by `bos` when given.
    pub fn input(&self, doc: &Document, index: usize) -> Vec<u32> {
        let start = index * self.ctx_tokens;
        let mut tokens = doc.tokens[start..start + self.ctx_tokens].to_vec();
        if let Some(bos) = doc.bos {
            tokens[0] = bos;
        }
        tokens
    }
}

/// The scores of one predicted token.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct TokenScore {
    /// `-ln P_fp32(token)`.
    pub nll_fp32: f64,
    /// `-ln P_plan(token)`.
    pub nll_plan: f64,
    /// KL(P_fp32 ‖ P_plan) over the vocabulary, in nats.
    pub kl: f64,
    /// Whether both put their largest logit on the same token (the first largest on ties).
    pub same_top: bool,
    /// Whether the plan's logits hold a NaN or an infinity.
    pub plan_nonfinite: bool,
    /// Whether FP32's logits hold a NaN or an infinity.
    pub fp32_nonfinite: bool,
}

/// Scores positions `first ..= ctx - 2` of one chunk: row `i` of the `[ctx, vocab]` logits predicts `tokens[i + 1]`.
pub fn score_chunk(
    tokens: &[u32],
    logits_fp32: &[f32],
    logits_plan: &[f32],
    vocab: usize,
    first: usize,
) -> Vec<TokenScore> {
    let rows = logits_fp32.chunks_exact(vocab).zip(logits_plan.chunks_exact(vocab));
    rows.enumerate()
        .take(tokens.len().saturating_sub(1))
        .skip(first)
        .map(|(i, (row_r, row_p))| {
            let target = tokens[i + 1] as usize;
            let (lr, lp) = (log_softmax(row_r), log_softmax(row_p));
            let kl = lr.iter().zip(&lp).map(|(a, b)| if a.is_finite() { a.exp() * (a - b) } else { 0.0 }).sum::<f64>();
            TokenScore {
                nll_fp32: -lr[target],
                nll_plan: -lp[target],
                kl: kl.max(0.0),
                same_top: argmax(row_r) == argmax(row_p),
                plan_nonfinite: row_p.iter().any(|v| !v.is_finite()),
                fp32_nonfinite: row_r.iter().any(|v| !v.is_finite()),
            }
        })
        .collect()
}

/// `ln softmax(logits)` in f64: `logit - max - ln Σ exp(logit - max)`.
fn log_softmax(logits: &[f32]) -> Vec<f64> {
    let max = logits.iter().map(|&v| v as f64).fold(f64::NEG_INFINITY, f64::max);
    let log_sum = logits.iter().map(|&v| (v as f64 - max).exp()).sum::<f64>().ln() + max;
    logits.iter().map(|&v| v as f64 - log_sum).collect()
}

/// A figure with its uncertainty (one standard error).
#[derive(Clone, Copy, Debug, PartialEq, Serialize)]
pub struct Estimate {
    /// The value.
    pub value: f64,
    /// Its ± (one standard error).
    pub error: f64,
}

impl Estimate {
    /// llama-perplexity's final estimate from `Σ nll`, `Σ nll²` over `count` tokens: `PPL = exp(mean)`, and
    /// `± = PPL · sqrt((mean(nll²) - mean²) / (count - 1))` (0 when that variance is not positive).
    pub fn perplexity(nll_sum: f64, nll2_sum: f64, count: usize) -> Estimate {
        let n = count.max(1) as f64;
        let mean = nll_sum / n;
        let variance = nll2_sum / n - mean * mean;
        let value = mean.exp();
        let error = if variance > 0.0 && count > 1 { (variance / (n - 1.0)).sqrt() * value } else { 0.0 };
        Estimate { value, error }
    }

    /// A mean and its standard error as `--kl-divergence` computes them: `sqrt((mean(x²) - mean²) / (count - 1))`,
    /// 0 when not positive or when `count <= 10`.
    pub fn mean(sum: f64, sum2: f64, count: usize) -> Estimate {
        if count == 0 {
            return Estimate { value: 0.0, error: 0.0 };
        }
        let n = count as f64;
        let value = sum / n;
        let variance = sum2 / n - value * value;
        let error = if variance > 0.0 && count > 10 { (variance / (n - 1.0)).sqrt() } else { 0.0 };
        Estimate { value, error }
    }

    /// A fraction of `count` and its binomial standard error `sqrt(p (1 - p) / (count - 1))`.
    pub fn fraction(hits: usize, count: usize) -> Estimate {
        let p = hits as f64 / count.max(1) as f64;
        let error = if count > 1 { (p * (1.0 - p) / (count - 1) as f64).sqrt() } else { 0.0 };
        Estimate { value: p, error }
    }
}

/// The value at `fraction` of ascending `sorted` values, interpolating linearly between the two nearest ranks
/// (`--kl-divergence`'s percentiles); 0 for no values.
pub fn percentile(sorted: &[f64], fraction: f64) -> f64 {
    let (Some(&lowest), Some(&highest)) = (sorted.first(), sorted.last()) else { return 0.0 };
    if fraction <= 0.0 {
        return lowest;
    }
    if fraction >= 1.0 {
        return highest;
    }
    let rank = fraction * (sorted.len() - 1) as f64;
    let below = rank.floor() as usize;
    let t = rank - below as f64;
    (1.0 - t) * sorted[below] + t * sorted[(below + 1).min(sorted.len() - 1)]
}

/// Perplexity of FP32 and a plan on one text, and how far the plan's next-token distributions are from FP32's.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct PerplexityReport {
    /// Tokens per chunk.
    pub ctx_tokens: usize,
    /// Chunks run.
    pub chunks: usize,
    /// Tokens of the whole text.
    pub text_tokens: usize,
    /// Tokens scored: `chunks × (ctx - ctx/2 - 1)`.
    pub scored_tokens: usize,
    /// The BOS token each chunk starts with, when the tokenizer adds one.
    pub bos_token: Option<u32>,
    /// FP32 perplexity ± its standard error.
    pub fp32_perplexity: Estimate,
    /// The plan's perplexity ± its standard error.
    pub plan_perplexity: Estimate,
    /// Mean over scored tokens of KL(P_fp32 ‖ P_plan), in nats, ± its standard error.
    pub kl_mean: Estimate,
    /// 99th percentile of the per-token KL, in nats.
    pub kl_p99: f64,
    /// Largest per-token KL, in nats.
    pub kl_max: f64,
    /// Fraction of scored tokens where the plan's top token is FP32's, ± its standard error.
    pub same_top: Estimate,
    /// Scored positions whose plan logits hold a NaN or an infinity (the plan's figures are then NaN).
    pub plan_nonfinite_positions: usize,
}

impl PerplexityReport {
    /// The figures in one phrase, with llama-perplexity's precision ("PPL 12.3456 ± 0.12345 (FP32 …)").
    pub fn headline(&self) -> String {
        let figures = format!(
            "PPL {} (FP32 {}), KL mean {:.6}, KL p99 {:.6}, same top {:.3}%",
            format_perplexity(&self.plan_perplexity),
            format_perplexity(&self.fp32_perplexity),
            self.kl_mean.value,
            self.kl_p99,
            self.same_top.value * 100.0
        );
        match self.plan_nonfinite_positions {
            0 => figures,
            n => format!("BROKEN: the plan's logits are NaN or infinite at {n} positions; {figures}"),
        }
    }
}

/// A perplexity as llama-perplexity prints its final estimate: `12.3456 +/- 0.12345`.
pub fn format_perplexity(estimate: &Estimate) -> String {
    format!("{:.4} +/- {:.5}", estimate.value, estimate.error)
}

/// Sums over scored tokens, combined in chunk order.
#[derive(Clone, Debug, Default)]
struct Sums {
    count: usize,
    nll_fp32: f64,
    nll2_fp32: f64,
    nll_plan: f64,
    nll2_plan: f64,
    kl: f64,
    kl2: f64,
    kl_values: Vec<f64>,
    same_top: usize,
    plan_nonfinite: usize,
    fp32_nonfinite: usize,
}

impl Sums {
    fn add(&mut self, score: &TokenScore) {
        self.count += 1;
        self.nll_fp32 += score.nll_fp32;
        self.nll2_fp32 += score.nll_fp32 * score.nll_fp32;
        self.nll_plan += score.nll_plan;
        self.nll2_plan += score.nll_plan * score.nll_plan;
        self.kl += score.kl;
        self.kl2 += score.kl * score.kl;
        self.kl_values.push(score.kl);
        self.same_top += usize::from(score.same_top);
        self.plan_nonfinite += usize::from(score.plan_nonfinite);
        self.fp32_nonfinite += usize::from(score.fp32_nonfinite);
    }

    fn report(mut self, doc: &Document, chunking: Chunking) -> Result<PerplexityReport> {
        if self.fp32_nonfinite > 0 {
            return Err(Error::NonFiniteReference { count: self.fp32_nonfinite, plan_count: self.plan_nonfinite });
        }
        self.kl_values.sort_by(f64::total_cmp);
        Ok(PerplexityReport {
            ctx_tokens: chunking.ctx_tokens,
            chunks: chunking.chunks,
            text_tokens: doc.tokens.len(),
            scored_tokens: self.count,
            bos_token: doc.bos,
            fp32_perplexity: Estimate::perplexity(self.nll_fp32, self.nll2_fp32, self.count),
            plan_perplexity: Estimate::perplexity(self.nll_plan, self.nll2_plan, self.count),
            kl_mean: Estimate::mean(self.kl, self.kl2, self.count),
            kl_p99: percentile(&self.kl_values, 0.99),
            kl_max: self.kl_values.last().copied().unwrap_or(0.0),
            same_top: Estimate::fraction(self.same_top, self.count),
            plan_nonfinite_positions: self.plan_nonfinite,
        })
    }
}

/// Runs FP32 and `plan` on the chunks of `doc` and scores both (chunks in parallel, one progress step each, checked
/// for cancel before each).
pub fn perplexity(
    model: &Model,
    arch: &Architecture,
    plan: &Plan,
    doc: &Document,
    ctx_tokens: usize,
    max_chunks: Option<usize>,
    progress: &Progress,
) -> Result<PerplexityReport> {
    if !matches!(arch, Architecture::Llama(_)) {
        return Err(Error::PerplexityNeedsDecoder { family: arch.family() });
    }
    let chunking = Chunking::new(doc, ctx_tokens, max_chunks)?;
    plan.check_calibrated(model)?;
    let (Network::Llama(reference), Network::Llama(planned)) = Network::build_pair(model, arch, plan, progress)? else {
        return Err(Error::PerplexityNeedsDecoder { family: arch.family() });
    };
    let vocab = reference.config.vocab_size;
    progress.start_stage(
        format!("perplexity: {} chunks of {} tokens, FP32 and the plan", chunking.chunks, chunking.ctx_tokens),
        chunking.chunks as u64,
    );
    let parts = (0..chunking.chunks)
        .into_par_iter()
        .map(|index| {
            progress.check()?;
            let input = TokenSequence::new(chunking.input(doc, index));
            let logits_fp32 = reference.forward(&input, &mut reference.new_cache())?;
            progress.check()?;
            let logits_plan = planned.forward(&input, &mut planned.new_cache())?;
            let start = index * chunking.ctx_tokens;
            let targets = &doc.tokens[start..start + chunking.ctx_tokens];
            let scores = score_chunk(targets, &logits_fp32, &logits_plan, vocab, chunking.first_scored());
            progress.advance(1);
            Ok(scores)
        })
        .collect::<Result<Vec<_>>>()?;
    let mut sums = Sums::default();
    for score in parts.iter().flatten() {
        sums.add(score);
    }
    sums.report(doc, chunking)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn doc(tokens: Vec<u32>, bos: Option<u32>) -> Document {
        Document { tokens, bos, path: PathBuf::from("text.txt") }
    }

    #[test]
    fn chunking_follows_llama_perplexity() {
        let d = doc((10..30).collect(), Some(1));
        let c = Chunking::new(&d, 8, None).unwrap();
        assert_eq!((c.chunks, c.first_scored(), c.scored_per_chunk()), (2, 4, 3));
        assert_eq!(Chunking::new(&d, 8, Some(1)).unwrap().chunks, 1);
        assert_eq!(c.input(&d, 1), vec![1, 19, 20, 21, 22, 23, 24, 25]);
        assert_eq!(c.input(&doc((10..30).collect(), None), 1)[0], 18);
        assert_eq!(Chunking::new(&d, 10, None).unwrap().chunks, 2);
        assert!(matches!(Chunking::new(&d, 11, None), Err(Error::TooFewTokens { tokens: 20, needed: 22, .. })));
        assert!(Chunking::new(&d, 3, None).is_err());
        assert!(Chunking::new(&d, 8, Some(0)).is_err());
    }

    #[test]
    fn scores_a_hand_made_chunk() {
        // ctx 4, vocab 2: first = 2, so only row 2 (predicting tokens[3]) is scored.
        let tokens = [0, 1, 0, 1];
        let fp32 = [9.0, 9.0, 9.0, 9.0, 0.0, 0.0, 5.0, 5.0];
        // Row 2 of the plan: softmax(0, ln 3) = (1/4, 3/4).
        let plan = [0.0, 0.0, 0.0, 0.0, 0.0, 3f32.ln(), 7.0, 1.0];
        let scores = score_chunk(&tokens, &fp32, &plan, 2, 2);
        assert_eq!(scores.len(), 1);
        let s = scores[0];
        assert!((s.nll_fp32 - 2f64.ln()).abs() < 1e-12);
        assert!((s.nll_plan - (4.0f64 / 3.0).ln()).abs() < 1e-7);
        let kl = 0.5 * (0.5f64 / 0.25).ln() + 0.5 * (0.5f64 / 0.75).ln();
        assert!((s.kl - kl).abs() < 1e-7);
        // FP32's tie goes to the first token, the plan's top is the second.
        assert!(!s.same_top);
        assert!(!s.plan_nonfinite && !s.fp32_nonfinite);
    }

    #[test]
    fn estimates_use_llama_perplexity_formulas() {
        // nll = 1, 2, 3: mean 2, mean of squares 14/3, variance 2/3, ± = e² · sqrt((2/3) / 2).
        let e = Estimate::perplexity(6.0, 14.0, 3);
        assert!((e.value - 2f64.exp()).abs() < 1e-12);
        assert!((e.error - 2f64.exp() * (1.0f64 / 3.0).sqrt()).abs() < 1e-12);
        assert_eq!(Estimate::perplexity(3.0, 3.0, 3).error, 0.0);
        // The KL mean has no ± until more than 10 values.
        assert_eq!(Estimate::mean(6.0, 14.0, 3), Estimate { value: 2.0, error: 0.0 });
        let values: Vec<f64> = (0..20).map(f64::from).collect();
        let (sum, sum2) = (values.iter().sum::<f64>(), values.iter().map(|v| v * v).sum::<f64>());
        let m = Estimate::mean(sum, sum2, 20);
        assert!((m.value - 9.5).abs() < 1e-12);
        assert!((m.error - ((sum2 / 20.0 - 9.5 * 9.5) / 19.0).sqrt()).abs() < 1e-12);
        let f = Estimate::fraction(3, 4);
        assert!((f.value - 0.75).abs() < 1e-12 && (f.error - (0.75f64 * 0.25 / 3.0).sqrt()).abs() < 1e-12);
        assert!((percentile(&values, 0.99) - 18.81).abs() < 1e-9);
        assert_eq!(percentile(&values, 1.0), 19.0);
        assert_eq!(percentile(&[], 0.5), 0.0);
    }

    #[test]
    fn sums_refuse_a_broken_reference_and_flag_a_broken_plan() {
        let d = doc(vec![0, 1, 0, 1, 0, 1, 0, 1], None);
        let chunking = Chunking::new(&d, 4, None).unwrap();
        let fp32 = [0.0, 0.0, 0.0, 0.0, 1.0, 2.0, 0.0, 0.0];
        let nan_plan = [0.0, 0.0, 0.0, 0.0, f32::NAN, 2.0, 0.0, 0.0];
        let mut sums = Sums::default();
        score_chunk(&[0, 1, 0, 1], &fp32, &nan_plan, 2, 2).iter().for_each(|s| sums.add(s));
        let report = sums.report(&d, chunking).unwrap();
        assert_eq!(report.plan_nonfinite_positions, 1);
        assert!(report.headline().starts_with("BROKEN"));
        let mut sums = Sums::default();
        score_chunk(&[0, 1, 0, 1], &nan_plan, &fp32, 2, 2).iter().for_each(|s| sums.add(s));
        assert!(matches!(sums.report(&d, chunking), Err(Error::NonFiniteReference { count: 1, .. })));
    }
}
