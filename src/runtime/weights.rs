//! Weights as the runtime reads them: f32 values, either as stored (FP32 reference) or as a plan makes them
//! (simulated quantization: every value quantized and dequantized exactly as `docs/QUANTIZATION.md` defines).

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use crate::error::{Error, Result};
use crate::model::{Model, TensorId};
use crate::progress::Progress;
use crate::quant::pass::TensorData;
use crate::quant::quantize_tensor;
use crate::quant::{Plan, Precision, params};

/// A deployed INT8 linear layer: its packed codes, one weight scale per output, and its input's quantization.
pub type Int8Linear = (super::qgemm::PackedInt8, Vec<f32>, crate::quant::InputQuant);

/// One weight tensor in f32.
#[derive(Debug)]
pub struct Weight {
    /// The tensor's name in the checkpoint.
    pub name: String,
    /// Its shape.
    pub shape: Vec<usize>,
    /// Row-major values.
    pub values: Vec<f32>,
}

/// Reads the weights of one model under one plan (`None`: FP32 as stored). Tensors are read once and shared.
pub struct WeightSource<'m> {
    model: &'m Model,
    plan: Option<&'m Plan>,
    /// Checks for cancel only: the caller's stage counts its own units, not the elements quantized here.
    progress: Progress,
    /// Where tensors the plan keeps in FP32 come from, so two networks share them.
    reference: Option<&'m WeightSource<'m>>,
    /// Where tensors come from that another plan already made at the same precision.
    donor: Option<&'m WeightSource<'m>>,
    /// Whether W8A8 layers run as a deployment would (INT8 codes and integer products) instead of simulated.
    deployed: bool,
    /// Bytes of the INT8, FP16 and BF16 weights handed out for deployed layers.
    int8_bytes: std::sync::atomic::AtomicU64,
    /// Deployed INT8 layers handed out.
    int8_layers: std::sync::atomic::AtomicU64,
    /// Deployed layers handed out with compact (FP16, BF16, INT8) weights converted at run time.
    compact_layers: std::sync::atomic::AtomicU64,
    loaded: Mutex<HashMap<String, Arc<Weight>>>,
}

impl<'m> WeightSource<'m> {
    /// A source over `model`; `plan` decides each tensor's simulated precision (see [`Plan::tensor`]).
    pub fn new(model: &'m Model, plan: Option<&'m Plan>, progress: &Progress) -> WeightSource<'m> {
        WeightSource {
            model,
            plan,
            progress: progress.uncounted(),
            reference: None,
            donor: None,
            deployed: false,
            int8_bytes: std::sync::atomic::AtomicU64::new(0),
            int8_layers: std::sync::atomic::AtomicU64::new(0),
            compact_layers: std::sync::atomic::AtomicU64::new(0),
            loaded: Mutex::new(HashMap::new()),
        }
    }

    /// A source for `plan` that takes the tensors the plan keeps in FP32 from `reference` (shared, not re-read).
    pub fn sharing(reference: &'m WeightSource<'m>, plan: &'m Plan) -> WeightSource<'m> {
        WeightSource {
            plan: Some(plan),
            reference: Some(reference),
            ..WeightSource::new(reference.model, None, &reference.progress)
        }
    }

    /// A source for `plan` whose W8A8 layers run as deployed: INT8 codes packed for the integer product
    /// ([`WeightSource::int8_linear`]) instead of dequantized f32.
    pub fn deployed(model: &'m Model, plan: &'m Plan, progress: &Progress) -> WeightSource<'m> {
        WeightSource { deployed: true, ..WeightSource::new(model, Some(plan), progress) }
    }

    /// For a deployed source and a W8A8 or W8A8-dynamic layer with symmetric weights: the weight `name`
    /// (`[outputs, inputs]`) as packed INT8 codes with their per-row scales, and the input's quantization. `None`
    /// otherwise (the layer runs on f32 weights).
    pub fn int8_linear(&self, name: &str, outputs: usize, inputs: usize) -> Result<Option<Int8Linear>> {
        self.int8_linear_stacked(&[name], outputs, inputs)
    }

    /// [`WeightSource::int8_linear`] for several weights of `[outputs, inputs]` that read the same input (BERT's
    /// query, key and value), their codes stacked along the outputs into one product: `Some` only when every one
    /// of them runs on the integer product with the same input quantization.
    pub fn int8_linear_stacked(&self, names: &[&str], outputs: usize, inputs: usize) -> Result<Option<Int8Linear>> {
        let (Some(plan), true) = (self.plan, self.deployed) else { return Ok(None) };
        let mut parts = Vec::with_capacity(names.len());
        for name in names {
            let id = self.id_with_shape(name, Some(&[outputs, inputs]))?;
            let (Precision::Int8(scheme), Some(input)) =
                (plan.tensor(self.model, id), plan.input_quant(self.model.tensor(id).layer))
            else {
                return Ok(None);
            };
            if !scheme.symmetric || parts.first().is_some_and(|(_, _, first)| *first != input) {
                return Ok(None);
            }
            parts.push((id, scheme, input));
        }
        let Some(&(_, _, input)) = parts.first() else { return Ok(None) };
        let mut codes = Vec::with_capacity(names.len() * outputs * inputs);
        let mut scales = Vec::with_capacity(names.len() * outputs);
        for (id, scheme, _) in parts {
            self.progress.check()?;
            let quantized = match self.plan {
                Some(plan) => plan.int8_tensor(self.model, id, scheme, &self.progress)?,
                None => {
                    std::borrow::Cow::Owned(quantize_tensor(&TensorData::of(self.model, id)?, scheme, &self.progress)?)
                }
            };
            codes.extend_from_slice(&quantized.codes);
            match quantized.params.as_slice() {
                [one] => scales.extend(std::iter::repeat_n(one.scale, outputs)),
                rows => scales.extend(rows.iter().map(|p| p.scale)),
            }
        }
        let packed = super::qgemm::PackedInt8::pack(&codes, scales.len(), inputs)?;
        self.int8_bytes
            .fetch_add(packed.size_bytes() as u64 + 4 * scales.len() as u64, std::sync::atomic::Ordering::Relaxed);
        self.int8_layers.fetch_add(names.len() as u64, std::sync::atomic::Ordering::Relaxed);
        Ok(Some((packed, scales, input)))
    }

    /// For a deployed source and a linear layer the plan stores in FP16, BF16, FP8, INT4 or INT8 without an integer
    /// product (weight-only INT8, or W8A8 with asymmetric weights): the weight `name` (`[outputs, inputs]`) held compact,
    /// converted tile by tile as it multiplies ([`super::wgemm`]). `None` otherwise.
    pub fn compact_linear(
        &self,
        name: &str,
        outputs: usize,
        inputs: usize,
    ) -> Result<Option<super::wgemm::PackedWeights>> {
        let (Some(plan), true) = (self.plan, self.deployed) else { return Ok(None) };
        let id = self.id_with_shape(name, Some(&[outputs, inputs]))?;
        self.progress.check()?;
        let data = TensorData::of(self.model, id)?;
        let packed = match plan.tensor(self.model, id) {
            // llama.cpp's blocks run on their dequantized f32 values.
            Precision::Fp32 | Precision::Q8_0 | Precision::Q4_0 | Precision::Q4K | Precision::Q6K => return Ok(None),
            Precision::Int4(scheme) if scheme.fits(inputs) => {
                let quantized = plan.int4_tensor(self.model, id, scheme, &self.progress)?;
                super::wgemm::PackedWeights::int4(
                    &quantized.codes,
                    &quantized.params,
                    scheme.group_size,
                    outputs,
                    inputs,
                )?
            }
            Precision::Int4(_) => return Ok(None),
            Precision::Fp16 | Precision::Bf16 if data.len() != outputs * inputs => return Ok(None),
            Precision::Fp16 => {
                let mut buf = Vec::new();
                super::wgemm::PackedWeights::fp16(data.values(0..data.len(), &mut buf), outputs, inputs)?
            }
            Precision::Bf16 => {
                let mut buf = Vec::new();
                super::wgemm::PackedWeights::bf16(data.values(0..data.len(), &mut buf), outputs, inputs)?
            }
            Precision::Int8(scheme) => {
                let quantized = plan.int8_tensor(self.model, id, scheme, &self.progress)?;
                super::wgemm::PackedWeights::int8(&quantized.codes, &quantized.params, outputs, inputs)?
            }
            Precision::Fp8(scheme) => {
                let quantized = crate::quant::quantize_tensor_fp8(&data, scheme.granularity, &self.progress)?;
                super::wgemm::PackedWeights::fp8(&quantized.codes, &quantized.scales, outputs, inputs)?
            }
        };
        self.int8_bytes.fetch_add(packed.size_bytes() as u64, std::sync::atomic::Ordering::Relaxed);
        self.compact_layers.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        Ok(Some(packed))
    }

    /// [`WeightSource::sharing`], also taking from `donor` (a source of another plan over the same reference)
    /// every tensor that plan makes at the same precision as `plan` does, so that it is not quantized again.
    pub fn sharing_with(
        reference: &'m WeightSource<'m>,
        donor: &'m WeightSource<'m>,
        plan: &'m Plan,
    ) -> WeightSource<'m> {
        WeightSource { donor: Some(donor), ..WeightSource::sharing(reference, plan) }
    }

    /// The source that already holds tensor `id` as this source's plan makes it, if another one does.
    fn delegate(&self, id: TensorId) -> Option<&'m WeightSource<'m>> {
        let precision = |plan: Option<&Plan>| plan.map_or(Precision::Fp32, |p| p.tensor(self.model, id));
        let mine = precision(self.plan);
        if let Some(reference) = self.reference
            && mine == Precision::Fp32
        {
            return Some(reference);
        }
        self.donor.filter(|donor| precision(donor.plan) == mine)
    }

    /// Bytes of the weights this source has handed out: f32 tensors read (not counting those it shares from its
    /// reference) and packed INT8 weights with their scales.
    pub fn loaded_bytes(&self) -> u64 {
        let f32_bytes: u64 = self.loaded.lock().map_or(0, |m| m.values().map(|w| w.values.len() as u64 * 4).sum());
        f32_bytes + self.int8_bytes.load(std::sync::atomic::Ordering::Relaxed)
    }

    /// Layers this source handed out as deployed INT8 (integer products).
    pub fn int8_layers(&self) -> u64 {
        self.int8_layers.load(std::sync::atomic::Ordering::Relaxed)
    }

    /// Layers this source handed out with compact weights converted at run time.
    pub fn compact_layers(&self) -> u64 {
        self.compact_layers.load(std::sync::atomic::Ordering::Relaxed)
    }

    /// The model the weights come from.
    pub fn model(&self) -> &'m Model {
        self.model
    }

    /// The error of a tensor the architecture needs that the checkpoint lacks.
    pub fn missing(&self, name: &str) -> Error {
        Error::MissingTensor { name: name.to_owned(), path: self.model.path.clone() }
    }

    /// Whether the checkpoint has a tensor of this name.
    pub fn has(&self, name: &str) -> bool {
        self.model.tensor_by_name(name).is_some()
    }

    /// The stored shape of tensor `name` (from the header; nothing is read).
    pub fn shape(&self, name: &str) -> Result<&'m [usize]> {
        Ok(&self.model.tensor(self.id_with_shape(name, None)?).shape)
    }

    /// The id of tensor `name`, checked to have `shape` when one is given.
    fn id_with_shape(&self, name: &str, shape: Option<&[usize]>) -> Result<TensorId> {
        let id = self.model.tensor_by_name(name).ok_or_else(|| self.missing(name))?;
        let stored = &self.model.tensor(id).shape;
        match shape {
            Some(expected) if stored != expected => Err(Error::TensorShape {
                name: name.to_owned(),
                stored: stored.clone(),
                expected: expected.to_vec(),
                path: self.model.shard_path(id).to_owned(),
            }),
            _ => Ok(id),
        }
    }

    /// The name of the model layer tensor `name` belongs to (the tensor name itself when the model lacks it).
    pub fn layer_name(&self, name: &str) -> String {
        match self.model.tensor_by_name(name) {
            Some(id) => self.model.layer(self.model.tensor(id).layer).name.clone(),
            None => name.to_owned(),
        }
    }

    /// How the plan quantizes the input of the layer tensor `name` belongs to: `Some` for a calibrated W8A8
    /// layer or a W8A8-dynamic one; always `None` for the FP32 reference.
    pub fn input_quant(&self, name: &str) -> Option<crate::quant::InputQuant> {
        let plan = self.plan?;
        let id = self.model.tensor_by_name(name)?;
        plan.input_quant(self.model.tensor(id).layer)
    }

    /// The tensor `name`, checked to have `shape` when one is given.
    pub fn get(&self, name: &str, shape: Option<&[usize]>) -> Result<Arc<Weight>> {
        let id = self.id_with_shape(name, shape)?;
        if let Some(source) = self.delegate(id) {
            return source.get(name, shape);
        }
        let cached = self.loaded.lock().map_err(|_| poisoned())?.get(name).cloned();
        let weight = match cached {
            Some(w) => w,
            None => {
                self.progress.check()?;
                let w = Arc::new(self.read(id)?);
                self.loaded.lock().map_err(|_| poisoned())?.insert(name.to_owned(), w.clone());
                w
            }
        };
        Ok(weight)
    }

    /// The `[outputs, inputs]` weight of a linear layer, transposed to `[inputs, outputs]` as
    /// [`super::ops::linear`] takes it (read, simulated, transposed and cached once).
    pub fn get_linear(&self, name: &str, outputs: usize, inputs: usize) -> Result<Arc<Weight>> {
        let key = format!("{name} (transposed)");
        if let Some(w) = self.loaded.lock().map_err(|_| poisoned())?.get(&key).cloned() {
            return Ok(w);
        }
        if let Some(id) = self.model.tensor_by_name(name)
            && let Some(source) = self.delegate(id)
        {
            return source.get_linear(name, outputs, inputs);
        }
        // Read, simulated and transposed straight into the cache: the stored layout is never kept.
        let id = self.id_with_shape(name, Some(&[outputs, inputs]))?;
        self.progress.check()?;
        let stored = self.read(id)?;
        let transposed = Arc::new(Weight {
            name: stored.name,
            shape: vec![inputs, outputs],
            values: super::ops::transpose(&stored.values, outputs, inputs),
        });
        let mut loaded = self.loaded.lock().map_err(|_| poisoned())?;
        loaded.insert(key, transposed.clone());
        Ok(transposed)
    }

    fn read(&self, id: TensorId) -> Result<Weight> {
        let info = self.model.tensor(id);
        let data = TensorData::of(self.model, id)?;
        let precision = self.plan.map_or(Precision::Fp32, |p| p.tensor(self.model, id));
        // A layer GPTQ quantized: its codes' values (they exist only for the layer's current precision).
        let values = match self.plan.and_then(|plan| plan.gptq_tensor(self.model, id)) {
            Some(gptq) => gptq.codes.dequantized(data.cols),
            None => simulate(&data, precision, &self.progress)?,
        };
        Ok(Weight { name: info.name.clone(), shape: info.shape.clone(), values })
    }
}

fn poisoned() -> Error {
    Error::Thread { problem: "a weight loader thread panicked".into() }
}

/// The values of a tensor after quantizing and dequantizing it at `precision` (FP32: the stored values widened).
pub fn simulate(data: &TensorData, precision: Precision, progress: &Progress) -> Result<Vec<f32>> {
    let mut buf = Vec::new();
    let mut values = data.values(0..data.len(), &mut buf).to_vec();
    match precision {
        Precision::Fp32 => {}
        Precision::Fp16 => values.iter_mut().for_each(|v| *v = params::round_fp16(*v)),
        Precision::Bf16 => values.iter_mut().for_each(|v| *v = params::round_bf16(*v)),
        Precision::Int8(scheme) => values = quantize_tensor(data, scheme, progress)?.dequantized(data.cols),
        Precision::Fp8(scheme) => {
            // x_hat = e4m3(q) · scale: `fp8::quantize_dequantize` bit for bit.
            let quantized = crate::quant::quantize_tensor_fp8(data, scheme.granularity, progress)?;
            let cols = data.cols.max(1);
            for (i, (v, &q)) in values.iter_mut().zip(&quantized.codes).enumerate() {
                *v = crate::quant::fp8::e4m3_to_f32(q) * quantized.row_scale(i / cols);
            }
        }
        Precision::Q8_0 | Precision::Q4_0 | Precision::Q4K | Precision::Q6K | Precision::Int4(_) => {
            // The values ggml decodes from the blocks llama-quantize writes, or the groups' `(q - zero_point) *
            // scale`. The plan gives these only to 2-D tensors whose rows are whole blocks or groups; anything
            // else is a caller's bug, reported.
            match precision.row_format() {
                Some(format) if format.fits(data.cols) => {
                    progress.check()?;
                    format.fake_quantize_rows(&mut values, data.cols);
                }
                _ => {
                    return Err(Error::KernelInput {
                        problem: format!("{precision} cannot take rows of {} values", data.cols),
                    });
                }
            }
        }
    }
    Ok(values)
}
