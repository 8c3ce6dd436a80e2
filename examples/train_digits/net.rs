//! The math of the digits sample models: the data file and its documented split, a network as an ordered list of
//! ops (the list `model.json` stores, see docs/MODEL-JSON.md), hand-written forward and backward passes, softmax
//! cross-entropy, Adam, and accuracy.
//!
//! Shared by the `train_digits` example and the integration tests (`tests/samples.rs` includes this file with
//! `#[path]`). Everything runs on one thread in a fixed order, and the only calls into the platform's maths
//! library are `exp` and `ln` in the loss, so a seed gives the same weights on every run.

use std::path::Path;

use quantstudio::Model;
use quantstudio::model::DType;
use quantstudio::runtime::graph::{GraphOp, GraphSpec};

/// Side of a digit image, in pixels.
pub const SIDE: usize = 8;
/// Pixels of a digit image.
pub const PIXELS: usize = SIDE * SIDE;
/// Digit classes.
pub const CLASSES: usize = 10;
/// The largest grey level; inputs are `level / PIXEL_MAX`, in [0, 1].
pub const PIXEL_MAX: f32 = 16.0;
/// Seed of the committed train / calibration / evaluation split (the year of the data set).
pub const SPLIT_SEED: u64 = 1998;
/// Images in the evaluation split.
pub const EVAL_LEN: usize = 360;
/// Images in the calibration split.
pub const CALIB_LEN: usize = 128;
/// Seed the committed weights were trained with.
pub const TRAIN_SEED: u64 = 1;
/// `format` of a model.json file.
pub const GRAPH_FORMAT: &str = "quantstudio-graph";
/// `version` of the model.json format this file reads and writes.
pub const GRAPH_VERSION: u64 = 1;

/// xorshift64 (13, 7, 17): the one source of randomness, so that runs are reproducible.
pub struct Rng(u64);

impl Rng {
    /// A generator whose state is the seed times the golden-ratio constant, made odd (never the zero state).
    pub fn new(seed: u64) -> Rng {
        Rng(seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1)
    }

    /// The next 64 random bits.
    pub fn next_u64(&mut self) -> u64 {
        let mut s = self.0;
        s ^= s << 13;
        s ^= s >> 7;
        s ^= s << 17;
        self.0 = s;
        s
    }

    /// An index below `n` (modulo; the bias is below 2^-50 for the sizes used here).
    pub fn below(&mut self, n: usize) -> usize {
        (self.next_u64() % n as u64) as usize
    }

    /// Uniform in [-1, 1), from the top 24 bits (exact in f32).
    pub fn symmetric(&mut self) -> f32 {
        (self.next_u64() >> 40) as f32 / (1u32 << 23) as f32 - 1.0
    }

    /// Fisher-Yates, from the last position down.
    pub fn shuffle<T>(&mut self, items: &mut [T]) {
        for i in (1..items.len()).rev() {
            let j = self.below(i + 1);
            items.swap(i, j);
        }
    }
}

/// Row numbers of the three splits, each ascending and disjoint from the others.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Split {
    /// Rows the weights are fitted on.
    pub train: Vec<usize>,
    /// Rows held out of training, for calibrating quantization.
    pub calib: Vec<usize>,
    /// Rows held out of training, for measuring accuracy.
    pub eval: Vec<usize>,
}

/// The documented stratified split (the same algorithm as tools/fixtures/make_digits_data.py): each class's rows are shuffled
/// (classes in order, one generator), the row at position k of class c gets the key (2k + 1) / (2 n_c), rows are
/// sorted by (key, class), and the first `eval_len` rows are the evaluation split, the next `calib_len` the
/// calibration split, the rest the training split. Keys are compared exactly by cross-multiplication.
pub fn stratified_split(labels: &[u8], seed: u64, eval_len: usize, calib_len: usize) -> Split {
    let mut rng = Rng::new(seed);
    // (rank in class, class size, class, row)
    let mut keyed: Vec<(usize, usize, usize, usize)> = Vec::with_capacity(labels.len());
    for class in 0..CLASSES {
        let mut rows: Vec<usize> = (0..labels.len()).filter(|&row| usize::from(labels[row]) == class).collect();
        rng.shuffle(&mut rows);
        keyed.extend(rows.iter().enumerate().map(|(rank, &row)| (rank, rows.len(), class, row)));
    }
    keyed.sort_by(|a, b| ((2 * a.0 + 1) * b.1).cmp(&((2 * b.0 + 1) * a.1)).then(a.2.cmp(&b.2)));
    let order: Vec<usize> = keyed.iter().map(|k| k.3).collect();
    let eval_end = eval_len.min(order.len());
    let calib_end = (eval_len + calib_len).min(order.len());
    let sorted = |rows: &[usize]| {
        let mut rows = rows.to_vec();
        rows.sort_unstable();
        rows
    };
    Split {
        eval: sorted(&order[..eval_end]),
        calib: sorted(&order[eval_end..calib_end]),
        train: sorted(&order[calib_end..]),
    }
}

/// The digits data file (`sample-models/digits-data/digits.safetensors`).
pub struct Digits {
    /// Grey levels 0..=16, `PIXELS` per image, row-major.
    pub images: Vec<u8>,
    /// Digit of each image.
    pub labels: Vec<u8>,
    /// The committed split.
    pub split: Split,
}

impl Digits {
    /// Reads the data file and checks shapes, value ranges and that the split covers every row exactly once.
    pub fn load(path: &Path) -> Result<Digits, String> {
        let model = Model::open(path).map_err(|e| e.to_string())?;
        let (images, image_shape) = tensor_data(&model, "images", DType::U8)?;
        let (labels, label_shape) = tensor_data(&model, "labels", DType::U8)?;
        let rows = label_shape.first().copied().unwrap_or(0);
        if image_shape != [rows, PIXELS] || label_shape.len() != 1 {
            return Err(format!("images {image_shape:?} and labels {label_shape:?} do not match: {}", path.display()));
        }
        if images.iter().any(|&p| f32::from(p) > PIXEL_MAX) || labels.iter().any(|&l| usize::from(l) >= CLASSES) {
            return Err(format!("a pixel or label is out of range: {}", path.display()));
        }
        let index = |name: &str| -> Result<Vec<usize>, String> {
            let (bytes, shape) = tensor_data(&model, name, DType::I64)?;
            if shape.len() != 1 {
                return Err(format!("{name} is not 1-D: {}", path.display()));
            }
            bytes
                .chunks_exact(8)
                .map(|b| {
                    let row = i64::from_le_bytes(b.try_into().unwrap_or_default());
                    usize::try_from(row).ok().filter(|&r| r < rows).ok_or(format!("{name} holds row {row}"))
                })
                .collect()
        };
        let split = Split { train: index("train_index")?, calib: index("calib_index")?, eval: index("eval_index")? };
        let mut seen = vec![false; rows];
        for &row in split.train.iter().chain(&split.calib).chain(&split.eval) {
            if std::mem::replace(&mut seen[row], true) {
                return Err(format!("row {row} is in two splits: {}", path.display()));
            }
        }
        if seen.contains(&false) {
            return Err(format!("the splits do not cover every row: {}", path.display()));
        }
        Ok(Digits { images: images.to_vec(), labels: labels.to_vec(), split })
    }

    /// Model inputs for the given rows: `rows.len() * PIXELS` values `level / 16`, image after image.
    pub fn inputs(&self, rows: &[usize]) -> Vec<f32> {
        rows.iter()
            .flat_map(|&r| self.images[r * PIXELS..(r + 1) * PIXELS].iter().map(|&p| f32::from(p) / PIXEL_MAX))
            .collect()
    }

    /// Digits of the given rows.
    pub fn labels_of(&self, rows: &[usize]) -> Vec<usize> {
        rows.iter().map(|&r| usize::from(self.labels[r])).collect()
    }
}

/// A tensor's bytes and shape, checked for dtype.
pub fn tensor_data<'m>(model: &'m Model, name: &str, dtype: DType) -> Result<(&'m [u8], Vec<usize>), String> {
    let id = model.tensor_by_name(name).ok_or(format!("no tensor {name:?}: {}", model.path.display()))?;
    let info = model.tensor(id);
    if info.dtype != dtype {
        return Err(format!("{name} is {}, expected {dtype}: {}", info.dtype, model.path.display()));
    }
    Ok((model.tensor_bytes(id), info.shape.clone()))
}

/// Little-endian f32 values of a tensor.
pub fn f32_values(model: &Model, name: &str) -> Result<(Vec<f32>, Vec<usize>), String> {
    let (bytes, shape) = tensor_data(model, name, DType::F32)?;
    Ok((bytes.chunks_exact(4).map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]])).collect(), shape))
}

/// Which sample model.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Arch {
    /// 64 -> 128 -> 64 -> 10, ReLU.
    Mlp,
    /// conv 3x3 1 -> 8, ReLU, conv 3x3 8 -> 16, ReLU, flatten, linear 1024 -> 10.
    Cnn,
}

impl Arch {
    /// Both, in the order they are trained and listed.
    pub const ALL: [Arch; 2] = [Arch::Mlp, Arch::Cnn];

    /// Folder name under sample-models/.
    pub fn folder(self) -> &'static str {
        match self {
            Arch::Mlp => "digits-mlp",
            Arch::Cnn => "digits-cnn",
        }
    }

    /// Training settings of the committed weights.
    pub fn train_config(self) -> TrainConfig {
        match self {
            Arch::Mlp => TrainConfig { epochs: 60, batch: 32, learning_rate: 2e-3 },
            Arch::Cnn => TrainConfig { epochs: 30, batch: 32, learning_rate: 2e-3 },
        }
    }

    /// The untrained network, weights drawn from `seed`.
    pub fn init(self, seed: u64) -> Net {
        let rng = &mut Rng::new(seed);
        match self {
            Arch::Mlp => {
                let mut net = Net::new("pixels", &[PIXELS]);
                net.push_linear("fc1", PIXELS, 128, rng);
                net.ops.push(Op::Relu);
                net.push_linear("fc2", 128, 64, rng);
                net.ops.push(Op::Relu);
                net.push_linear("fc3", 64, CLASSES, rng);
                net
            }
            Arch::Cnn => {
                let mut net = Net::new("image", &[1, SIDE, SIDE]);
                net.push_conv3x3("conv1", 1, 8, rng);
                net.ops.push(Op::Relu);
                net.push_conv3x3("conv2", 8, 16, rng);
                net.ops.push(Op::Relu);
                net.ops.push(Op::Flatten);
                net.push_linear("fc", 16 * PIXELS, CLASSES, rng);
                net
            }
        }
    }
}

/// A learnable tensor, stored the way model.safetensors stores it.
#[derive(Clone, Debug)]
pub struct Param {
    /// Tensor name, e.g. `fc1.weight`.
    pub name: String,
    /// Shape, e.g. `[out, in]` for a linear weight.
    pub shape: Vec<usize>,
    /// Values, row-major.
    pub value: Vec<f32>,
    /// Gradient of the batch loss, same layout.
    pub grad: Vec<f32>,
}

/// One step of the network; parameters are indices into [`Net::params`].
#[derive(Clone, Debug, PartialEq)]
pub enum Op {
    /// `y = x W^T + b`, W `[out, in]`, on a 1-D input.
    Linear { weight: usize, bias: Option<usize> },
    /// Cross-correlation over a `[C, H, W]` input with W `[out, C, kh, kw]`, zero padding.
    Conv2d { weight: usize, bias: Option<usize>, stride: [usize; 2], padding: [usize; 2] },
    /// `max(x, 0)`.
    Relu,
    /// `[C, H, W]` -> `[C * H * W]`, row-major (no data movement).
    Flatten,
}

/// A network: an input shape and ops applied in order. Activations are batch-major, one sample after another.
#[derive(Clone, Debug)]
pub struct Net {
    /// Name of the input in model.json.
    pub input_name: String,
    /// Shape of one input sample (no batch axis).
    pub input_shape: Vec<usize>,
    /// The ops, in order.
    pub ops: Vec<Op>,
    /// Learnable tensors, in the order the ops first use them.
    pub params: Vec<Param>,
}

/// Sizes of one convolution.
struct ConvDims {
    c_in: usize,
    h: usize,
    w: usize,
    c_out: usize,
    kh: usize,
    kw: usize,
    stride: [usize; 2],
    padding: [usize; 2],
    oh: usize,
    ow: usize,
}

impl ConvDims {
    /// Input row of output row `oy` and kernel row `ky`, if inside the image (else it reads padding zeros).
    fn in_row(&self, oy: usize, ky: usize) -> Option<usize> {
        (oy * self.stride[0] + ky).checked_sub(self.padding[0]).filter(|&r| r < self.h)
    }

    fn in_col(&self, ox: usize, kx: usize) -> Option<usize> {
        (ox * self.stride[1] + kx).checked_sub(self.padding[1]).filter(|&c| c < self.w)
    }
}

impl Net {
    /// A network with no ops yet.
    pub fn new(input_name: &str, input_shape: &[usize]) -> Net {
        Net { input_name: input_name.into(), input_shape: input_shape.to_vec(), ops: Vec::new(), params: Vec::new() }
    }

    fn push_param(&mut self, name: String, shape: Vec<usize>, value: Vec<f32>) -> usize {
        let grad = vec![0.0; value.len()];
        self.params.push(Param { name, shape, value, grad });
        self.params.len() - 1
    }

    /// He-uniform weights, limit sqrt(6 / fan_in), since ReLU follows; zero bias.
    fn init_weight(fan_in: usize, len: usize, rng: &mut Rng) -> Vec<f32> {
        let limit = (6.0 / fan_in as f32).sqrt();
        (0..len).map(|_| rng.symmetric() * limit).collect()
    }

    fn push_linear(&mut self, name: &str, inputs: usize, outputs: usize, rng: &mut Rng) {
        let value = Self::init_weight(inputs, outputs * inputs, rng);
        let weight = self.push_param(format!("{name}.weight"), vec![outputs, inputs], value);
        let bias = self.push_param(format!("{name}.bias"), vec![outputs], vec![0.0; outputs]);
        self.ops.push(Op::Linear { weight, bias: Some(bias) });
    }

    fn push_conv3x3(&mut self, name: &str, c_in: usize, c_out: usize, rng: &mut Rng) {
        let value = Self::init_weight(c_in * 9, c_out * c_in * 9, rng);
        let weight = self.push_param(format!("{name}.weight"), vec![c_out, c_in, 3, 3], value);
        let bias = self.push_param(format!("{name}.bias"), vec![c_out], vec![0.0; c_out]);
        self.ops.push(Op::Conv2d { weight, bias: Some(bias), stride: [1, 1], padding: [1, 1] });
    }

    /// Number of learnable values.
    pub fn parameter_count(&self) -> usize {
        self.params.iter().map(|p| p.value.len()).sum()
    }

    /// Per-sample shape before each op and after the last (`ops.len() + 1` shapes); an error names the first op
    /// whose input or parameters do not fit.
    pub fn shapes(&self) -> Result<Vec<Vec<usize>>, String> {
        let mut shapes = vec![self.input_shape.clone()];
        for (i, op) in self.ops.iter().enumerate() {
            let input = &shapes[i];
            let bias_fits = |bias: &Option<usize>, len: usize| bias.is_none_or(|b| self.params[b].shape == [len]);
            let output = match op {
                Op::Linear { weight, bias } => match (input.as_slice(), self.params[*weight].shape.as_slice()) {
                    ([n], [out, inp]) if n == inp && bias_fits(bias, *out) => vec![*out],
                    _ => return Err(format!("op {i} (linear) does not fit its input {input:?}")),
                },
                Op::Conv2d { .. } => {
                    let dims = self.conv_dims(op, input).ok_or(format!("op {i} (conv2d) does not fit {input:?}"))?;
                    vec![dims.c_out, dims.oh, dims.ow]
                }
                Op::Relu => input.clone(),
                Op::Flatten => vec![input.iter().product()],
            };
            shapes.push(output);
        }
        Ok(shapes)
    }

    fn conv_dims(&self, op: &Op, input: &[usize]) -> Option<ConvDims> {
        let Op::Conv2d { weight, bias, stride, padding } = op else { return None };
        let (&[c_in, h, w], &[c_out, wc, kh, kw]) = (input, self.params[*weight].shape.as_slice()) else {
            return None;
        };
        let out_len = |len: usize, k: usize, s: usize, p: usize| (len + 2 * p).checked_sub(k).map(|d| d / s + 1);
        let bias_fits = bias.is_none_or(|b| self.params[b].shape == [c_out]);
        if wc != c_in || stride.contains(&0) || kh == 0 || kw == 0 || !bias_fits {
            return None;
        }
        let oh = out_len(h, kh, stride[0], padding[0])?;
        let ow = out_len(w, kw, stride[1], padding[1])?;
        Some(ConvDims { c_in, h, w, c_out, kh, kw, stride: *stride, padding: *padding, oh, ow })
    }

    /// Logits, `batch * CLASSES` values, for `batch` inputs laid out one after another.
    pub fn forward(&self, x: &[f32], batch: usize) -> Vec<f32> {
        self.activations(x, batch).pop().unwrap_or_default()
    }

    /// The input and every op's output, for the backward pass.
    fn activations(&self, x: &[f32], batch: usize) -> Vec<Vec<f32>> {
        let shapes = self.shapes().expect("network shapes are checked when it is built or loaded");
        let mut acts = vec![x.to_vec()];
        for (i, op) in self.ops.iter().enumerate() {
            let input = &acts[i];
            let output = match op {
                Op::Linear { weight, bias } => {
                    let w = &self.params[*weight];
                    let b = bias.map(|b| self.params[b].value.as_slice());
                    linear_forward(input, batch, w.shape[1], w.shape[0], &w.value, b)
                }
                Op::Conv2d { weight, bias, .. } => {
                    let dims = self.conv_dims(op, &shapes[i]).expect("checked shapes");
                    let b = bias.map(|b| self.params[b].value.as_slice());
                    conv2d_forward(input, batch, &dims, &self.params[*weight].value, b)
                }
                Op::Relu => input.iter().map(|&v| v.max(0.0)).collect(),
                Op::Flatten => input.clone(),
            };
            acts.push(output);
        }
        acts
    }

    /// Forward and backward over one batch: sets every [`Param::grad`] to the gradient of the mean cross-entropy
    /// and returns that loss.
    pub fn loss_and_gradients(&mut self, x: &[f32], labels: &[usize]) -> f32 {
        let batch = labels.len();
        let shapes = self.shapes().expect("network shapes are checked when it is built or loaded");
        let acts = self.activations(x, batch);
        let (loss, mut grad) = softmax_cross_entropy(acts.last().map_or(&[][..], Vec::as_slice), labels);
        for p in &mut self.params {
            p.grad.fill(0.0);
        }
        for i in (0..self.ops.len()).rev() {
            let input = &acts[i];
            let needs_input_grad = i > 0;
            grad = match &self.ops[i] {
                Op::Linear { weight, bias } => {
                    let (outputs, inputs) = (self.params[*weight].shape[0], self.params[*weight].shape[1]);
                    if let Some(b) = bias {
                        bias_backward(&grad, batch, outputs, 1, &mut self.params[*b].grad);
                    }
                    let w = &mut self.params[*weight];
                    linear_backward(input, &grad, batch, inputs, outputs, &w.value, &mut w.grad, needs_input_grad)
                }
                op @ Op::Conv2d { weight, bias, .. } => {
                    let dims = self.conv_dims(op, &shapes[i]).expect("checked shapes");
                    if let Some(b) = bias {
                        bias_backward(&grad, batch, dims.c_out, dims.oh * dims.ow, &mut self.params[*b].grad);
                    }
                    let w = &mut self.params[*weight];
                    conv2d_backward(input, &grad, batch, &dims, &w.value, &mut w.grad, needs_input_grad)
                }
                Op::Relu => grad.iter().zip(input).map(|(&g, &v)| if v > 0.0 { g } else { 0.0 }).collect(),
                Op::Flatten => grad,
            };
        }
        loss
    }

    /// Predicted digit of each input (the first largest logit).
    pub fn predict(&self, x: &[f32], batch: usize) -> Vec<usize> {
        let classes = self.shapes().ok().and_then(|s| s.last().map(|l| l.iter().product())).unwrap_or(CLASSES);
        self.forward(x, batch).chunks_exact(classes).map(argmax).collect()
    }

    /// Correctly classified inputs among `labels.len()`, evaluated in chunks to bound memory.
    pub fn correct(&self, x: &[f32], labels: &[usize]) -> usize {
        const CHUNK: usize = 256;
        let sample_len: usize = self.input_shape.iter().product();
        labels
            .chunks(CHUNK)
            .zip(x.chunks(CHUNK * sample_len))
            .map(|(l, xs)| self.predict(xs, l.len()).iter().zip(l).filter(|(p, l)| p == l).count())
            .sum()
    }

    /// The model.json text describing this network (docs/MODEL-JSON.md): keys in a fixed order, one op per line.
    pub fn graph_text(&self, description: &str) -> String {
        let quote = |text: &str| serde_json::Value::from(text).to_string();
        let list =
            |values: &[usize]| format!("[{}]", values.iter().map(usize::to_string).collect::<Vec<_>>().join(", "));
        let tensors = |weight: &usize, bias: &Option<usize>| {
            let mut fields = format!(", \"weight\": {}", quote(&self.params[*weight].name));
            if let Some(b) = bias {
                fields += &format!(", \"bias\": {}", quote(&self.params[*b].name));
            }
            fields
        };
        let ops: Vec<String> = self
            .ops
            .iter()
            .map(|op| match op {
                Op::Linear { weight, bias } => format!("{{\"op\": \"linear\"{}}}", tensors(weight, bias)),
                Op::Conv2d { weight, bias, stride, padding } => format!(
                    "{{\"op\": \"conv2d\"{}, \"stride\": {}, \"padding\": {}}}",
                    tensors(weight, bias),
                    list(stride),
                    list(padding)
                ),
                Op::Relu => "{\"op\": \"relu\"}".into(),
                Op::Flatten => "{\"op\": \"flatten\"}".into(),
            })
            .map(|line| format!("    {line}"))
            .collect();
        let output_shape = self.shapes().ok().and_then(|s| s.last().cloned()).unwrap_or_default();
        format!(
            "{{\n  \"format\": {},\n  \"version\": {GRAPH_VERSION},\n  \"inputs\": [\n    {{\"name\": {}, \"dtype\": \"F32\", \
             \"shape\": {}, \"description\": {}}}\n  ],\n  \"ops\": [\n{}\n  ],\n  \"outputs\": [\n    {{\"name\": \
             \"logits\", \"dtype\": \"F32\", \"shape\": {}}}\n  ]\n}}\n",
            quote(GRAPH_FORMAT),
            quote(&self.input_name),
            list(&self.input_shape),
            quote(description),
            ops.join(",\n"),
            list(&output_shape)
        )
    }

    /// A network from a model.json document and the weights it names. The document is read by the studio's own
    /// reader (`GraphSpec::parse`, which checks format, version and op fields); this program trains only the ops
    /// it has gradients for (linear, one-group conv2d, relu, flatten) and checks dtypes and shapes.
    pub fn from_graph(graph: &serde_json::Value, weights: &Model) -> Result<Net, String> {
        let spec = GraphSpec::parse(graph)?;
        let mut net = Net::new(&spec.input_name, &spec.input_shape);
        let param = |net: &mut Net, name: &str| -> Result<usize, String> {
            if let Some(i) = net.params.iter().position(|p| p.name == name) {
                return Ok(i);
            }
            let (value, shape) = f32_values(weights, name)?;
            Ok(net.push_param(name.into(), shape, value))
        };
        for (i, op) in spec.ops.iter().enumerate() {
            let parsed = match op {
                GraphOp::Linear { weight, bias } => Op::Linear {
                    weight: param(&mut net, weight)?,
                    bias: bias.as_deref().map(|b| param(&mut net, b)).transpose()?,
                },
                GraphOp::Conv2d { weight, bias, stride, padding, groups: 1 } => Op::Conv2d {
                    weight: param(&mut net, weight)?,
                    bias: bias.as_deref().map(|b| param(&mut net, b)).transpose()?,
                    stride: *stride,
                    padding: *padding,
                },
                GraphOp::Relu => Op::Relu,
                GraphOp::Flatten => Op::Flatten,
                other => {
                    return Err(format!(
                        "op {i}: {other:?} cannot be trained here (linear, one-group conv2d, relu and flatten can)"
                    ));
                }
            };
            net.ops.push(parsed);
        }
        let shapes = net.shapes()?;
        if shapes.last() != Some(&spec.output_shape) {
            return Err(format!("outputs do not match the computed output shape {:?}", shapes.last()));
        }
        Ok(net)
    }
}

fn argmax(values: &[f32]) -> usize {
    let mut best = 0;
    for (i, &v) in values.iter().enumerate() {
        if v > values[best] {
            best = i;
        }
    }
    best
}

/// `acc[i] += scale * values[i]`. The hot loops are `while` loops over indices, not ranges or iterator adaptors:
/// the integration tests train in the debug build, where each `next()` is a real call; in release all forms
/// compile alike.
fn add_scaled(acc: &mut [f32], scale: f32, values: &[f32]) {
    let n = acc.len();
    let values = &values[..n];
    let mut i = 0;
    while i < n {
        acc[i] += scale * values[i];
        i += 1;
    }
}

/// `sum_i a[i] b[i]` in a fixed order: eight running sums, sum j taking the elements i with i mod 8 = j, added
/// from sum 0 to sum 7, then the tail. Independent sums vectorize in release, where one chain of dependent adds
/// would wait on each add's latency.
fn dot(a: &[f32], b: &[f32]) -> f32 {
    let n = a.len();
    let b = &b[..n];
    let whole = n - n % 8;
    let [mut s0, mut s1, mut s2, mut s3, mut s4, mut s5, mut s6, mut s7] = [0.0f32; 8];
    let mut i = 0;
    while i < whole {
        s0 += a[i] * b[i];
        s1 += a[i + 1] * b[i + 1];
        s2 += a[i + 2] * b[i + 2];
        s3 += a[i + 3] * b[i + 3];
        s4 += a[i + 4] * b[i + 4];
        s5 += a[i + 5] * b[i + 5];
        s6 += a[i + 6] * b[i + 6];
        s7 += a[i + 7] * b[i + 7];
        i += 8;
    }
    let mut sum = s0 + s1 + s2 + s3 + s4 + s5 + s6 + s7;
    while i < n {
        sum += a[i] * b[i];
        i += 1;
    }
    sum
}

/// `y[n, o] = b[o] + sum_i w[o, i] x[n, i]`, the sum as [`dot`] orders it.
fn linear_forward(x: &[f32], batch: usize, inputs: usize, outputs: usize, w: &[f32], b: Option<&[f32]>) -> Vec<f32> {
    let mut y = vec![0.0; batch * outputs];
    for n in 0..batch {
        let xn = &x[n * inputs..(n + 1) * inputs];
        for o in 0..outputs {
            y[n * outputs + o] = b.map_or(0.0, |b| b[o]) + dot(&w[o * inputs..(o + 1) * inputs], xn);
        }
    }
    y
}

/// Accumulates `dw += dy^T x` and returns `dx = dy w` (empty when not needed).
#[allow(clippy::too_many_arguments)]
fn linear_backward(
    x: &[f32],
    dy: &[f32],
    batch: usize,
    inputs: usize,
    outputs: usize,
    w: &[f32],
    dw: &mut [f32],
    needs_input_grad: bool,
) -> Vec<f32> {
    let mut dx = if needs_input_grad { vec![0.0; batch * inputs] } else { Vec::new() };
    for n in 0..batch {
        let xn = &x[n * inputs..(n + 1) * inputs];
        for o in 0..outputs {
            let g = dy[n * outputs + o];
            add_scaled(&mut dw[o * inputs..(o + 1) * inputs], g, xn);
            if needs_input_grad {
                add_scaled(&mut dx[n * inputs..(n + 1) * inputs], g, &w[o * inputs..(o + 1) * inputs]);
            }
        }
    }
    dx
}

/// `db[o] += sum over batch and positions of dy[n, o, p]`.
fn bias_backward(dy: &[f32], batch: usize, channels: usize, positions: usize, db: &mut [f32]) {
    for n in 0..batch {
        for (o, d) in db.iter_mut().enumerate().take(channels) {
            let start = (n * channels + o) * positions;
            *d += dy[start..start + positions].iter().sum::<f32>();
        }
    }
}

/// Marks a patch position that falls in the padding.
const PADDING: usize = usize::MAX;

/// Where each patch value comes from: `table[((c * kh + ky) * kw + kx) * OH * OW + oy * OW + ox]` is the index
/// of `x[c, oy * sy + ky - py, ox * sx + kx - px]` within one sample, or [`PADDING`]. The same for every sample, so
/// it is made once per batch.
fn patch_table(d: &ConvDims) -> Vec<usize> {
    let mut table = Vec::with_capacity(d.c_in * d.kh * d.kw * d.oh * d.ow);
    for c in 0..d.c_in {
        for ky in 0..d.kh {
            for kx in 0..d.kw {
                for oy in 0..d.oh {
                    for ox in 0..d.ow {
                        table.push(match (d.in_row(oy, ky), d.in_col(ox, kx)) {
                            (Some(iy), Some(ix)) => (c * d.h + iy) * d.w + ix,
                            _ => PADDING,
                        });
                    }
                }
            }
        }
    }
    table
}

/// The patches of one sample, one row per weight position (see [`patch_table`]), zero in the padding; the
/// convolution is then a matrix product whose inner loops run over contiguous output positions.
fn im2col(xn: &[f32], table: &[usize], cols: &mut [f32]) {
    let mut i = 0;
    while i < table.len() {
        let src = table[i];
        cols[i] = if src == PADDING { 0.0 } else { xn[src] };
        i += 1;
    }
}

/// The reverse of [`im2col`]: adds each patch gradient onto the input position it was read from.
fn col2im_add(dcols: &[f32], table: &[usize], dxn: &mut [f32]) {
    let mut i = 0;
    while i < table.len() {
        let dst = table[i];
        if dst != PADDING {
            dxn[dst] += dcols[i];
        }
        i += 1;
    }
}

/// Cross-correlation with zero padding: `y[n, o, oy, ox] = b[o] + sum_{c, ky, kx} w[o, c, ky, kx] *
/// x[n, c, oy * sy + ky - py, ox * sx + kx - px]`, summed in (c, ky, kx) order.
fn conv2d_forward(x: &[f32], batch: usize, d: &ConvDims, w: &[f32], b: Option<&[f32]>) -> Vec<f32> {
    let (in_len, out_plane, patch) = (d.c_in * d.h * d.w, d.oh * d.ow, d.c_in * d.kh * d.kw);
    let out_len = d.c_out * out_plane;
    let table = patch_table(d);
    let mut cols = vec![0.0; patch * out_plane];
    let mut y = vec![0.0; batch * out_len];
    for n in 0..batch {
        im2col(&x[n * in_len..(n + 1) * in_len], &table, &mut cols);
        for o in 0..d.c_out {
            let yo = &mut y[n * out_len + o * out_plane..n * out_len + (o + 1) * out_plane];
            yo.fill(b.map_or(0.0, |b| b[o]));
            for k in 0..patch {
                add_scaled(yo, w[o * patch + k], &cols[k * out_plane..(k + 1) * out_plane]);
            }
        }
    }
    y
}

/// Accumulates the weight gradient (`dw[o, k] += dy[o, :] . cols[k, :]`) and returns the input gradient
/// (`dcols[k, :] = sum_o w[o, k] dy[o, :]`, folded back by [`col2im_add`]; empty when not needed).
fn conv2d_backward(
    x: &[f32],
    dy: &[f32],
    batch: usize,
    d: &ConvDims,
    w: &[f32],
    dw: &mut [f32],
    needs_input_grad: bool,
) -> Vec<f32> {
    let (in_len, out_plane, patch) = (d.c_in * d.h * d.w, d.oh * d.ow, d.c_in * d.kh * d.kw);
    let out_len = d.c_out * out_plane;
    let table = patch_table(d);
    let mut cols = vec![0.0; patch * out_plane];
    let mut dcols = vec![0.0; patch * out_plane];
    let mut dx = if needs_input_grad { vec![0.0; batch * in_len] } else { Vec::new() };
    for n in 0..batch {
        im2col(&x[n * in_len..(n + 1) * in_len], &table, &mut cols);
        dcols.fill(0.0);
        for o in 0..d.c_out {
            let go = &dy[n * out_len + o * out_plane..n * out_len + (o + 1) * out_plane];
            for k in 0..patch {
                dw[o * patch + k] += dot(go, &cols[k * out_plane..(k + 1) * out_plane]);
                if needs_input_grad {
                    add_scaled(&mut dcols[k * out_plane..(k + 1) * out_plane], w[o * patch + k], go);
                }
            }
        }
        if needs_input_grad {
            col2im_add(&dcols, &table, &mut dx[n * in_len..(n + 1) * in_len]);
        }
    }
    dx
}

/// Mean cross-entropy of softmax(logits) against the labels, and its gradient `(p - onehot) / batch`.
pub fn softmax_cross_entropy(logits: &[f32], labels: &[usize]) -> (f32, Vec<f32>) {
    let batch = labels.len();
    let classes = logits.len() / batch.max(1);
    let mut grad = vec![0.0; logits.len()];
    let mut loss_sum = 0.0f64;
    for ((row, g), &label) in logits.chunks_exact(classes).zip(grad.chunks_exact_mut(classes)).zip(labels) {
        // Shift by the largest logit so exp never overflows.
        let max = row.iter().fold(f32::NEG_INFINITY, |m, &v| m.max(v));
        let mut total = 0.0f32;
        for (gi, &v) in g.iter_mut().zip(row) {
            *gi = (v - max).exp();
            total += *gi;
        }
        loss_sum += f64::from(total.ln() - (row[label] - max));
        for gi in g.iter_mut() {
            *gi /= total * batch as f32;
        }
        g[label] -= 1.0 / batch as f32;
    }
    ((loss_sum / batch.max(1) as f64) as f32, grad)
}

/// Adam (Kingma & Ba), bias-corrected, no weight decay.
pub struct Adam {
    m: Vec<Vec<f32>>,
    v: Vec<Vec<f32>>,
    /// BETA1^t and BETA2^t after t steps, kept as running products (plain multiplications, the same on every
    /// platform, unlike `powi`).
    beta1_power: f32,
    beta2_power: f32,
}

impl Adam {
    const BETA1: f32 = 0.9;
    const BETA2: f32 = 0.999;
    const EPSILON: f32 = 1e-8;

    /// Zero moments for the network's parameters.
    pub fn new(net: &Net) -> Adam {
        let zeros = || net.params.iter().map(|p| vec![0.0; p.value.len()]).collect();
        Adam { m: zeros(), v: zeros(), beta1_power: 1.0, beta2_power: 1.0 }
    }

    /// One update from the current gradients.
    pub fn step(&mut self, net: &mut Net, learning_rate: f32) {
        self.beta1_power *= Self::BETA1;
        self.beta2_power *= Self::BETA2;
        let correction1 = 1.0 - self.beta1_power;
        let correction2 = 1.0 - self.beta2_power;
        for ((p, m), v) in net.params.iter_mut().zip(&mut self.m).zip(&mut self.v) {
            for (((value, &g), m), v) in p.value.iter_mut().zip(&p.grad).zip(m.iter_mut()).zip(v.iter_mut()) {
                *m = Self::BETA1 * *m + (1.0 - Self::BETA1) * g;
                *v = Self::BETA2 * *v + (1.0 - Self::BETA2) * g * g;
                *value -= learning_rate * (*m / correction1) / ((*v / correction2).sqrt() + Self::EPSILON);
            }
        }
    }
}

/// How a network is trained.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct TrainConfig {
    /// Passes over the training split.
    pub epochs: usize,
    /// Images per step (the last step of an epoch may have fewer).
    pub batch: usize,
    /// Adam's step size at the start; it falls linearly to zero at the last step.
    pub learning_rate: f64,
}

/// Trains `net` on the training split: each epoch visits the rows in an order shuffled by `rng`. Calls `on_epoch`
/// with the epoch number (from 1) and the mean training loss of that epoch.
pub fn train(net: &mut Net, data: &Digits, config: &TrainConfig, rng: &mut Rng, mut on_epoch: impl FnMut(usize, f32)) {
    let mut adam = Adam::new(net);
    let mut rows = data.split.train.clone();
    let steps_per_epoch = rows.len().div_ceil(config.batch.max(1));
    let total_steps = (steps_per_epoch * config.epochs).max(1);
    let mut step = 0;
    for epoch in 1..=config.epochs {
        rng.shuffle(&mut rows);
        let mut loss_sum = 0.0f64;
        for chunk in rows.chunks(config.batch.max(1)) {
            let loss = net.loss_and_gradients(&data.inputs(chunk), &data.labels_of(chunk));
            loss_sum += f64::from(loss) * chunk.len() as f64;
            let learning_rate = (config.learning_rate * (1.0 - step as f64 / total_steps as f64)) as f32;
            adam.step(net, learning_rate);
            step += 1;
        }
        on_epoch(epoch, (loss_sum / rows.len().max(1) as f64) as f32);
    }
}

/// Initialises `arch` from `seed` and trains it with `config`: what the example does and the tests repeat.
pub fn train_from_seed(
    arch: Arch,
    data: &Digits,
    config: &TrainConfig,
    seed: u64,
    on_epoch: impl FnMut(usize, f32),
) -> Net {
    // One stream for the weights, another for the batch order, both from the seed.
    let mut net = arch.init(seed);
    let mut rng = Rng::new(seed ^ 0x00D1_6175);
    train(&mut net, data, config, &mut rng, on_epoch);
    net
}
