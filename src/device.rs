//! Where training and evaluation run: the device kinds, their burn backends, and the one place
//! that turns a [`DeviceKind`] into a backend type ([`run_on`]); `encode`, `eval` and the
//! benchmarks all go through it. [`ConvBackend`] says how each backend runs the networks'
//! convolutions: on the CPU through [`crate::conv`] (forward, and a custom autodiff step for
//! both gradients), on CUDA with burn's own.

use burn::backend::Flex;
use burn::backend::autodiff::NodeId;
use burn::backend::autodiff::checkpoint::base::Checkpointer;
use burn::backend::autodiff::checkpoint::strategy::NoCheckpointing;
use burn::backend::autodiff::grads::Gradients;
use burn::backend::autodiff::ops::{Backward, Ops, OpsKind};
use burn::backend::flex::FlexTensor;
use burn::tensor::backend::{AutodiffBackend, Backend};
use burn::tensor::ops::ConvOptions;
use burn::tensor::{Int, Tensor, TensorData, TensorPrimitive};
use std::sync::Arc;

use crate::conv::ConvGeometry;
use crate::dense::DenseShape;
use crate::error::{Error, Result};
use crate::predictor::COORDS;

/// Where training runs.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum DeviceKind {
    Cpu,
    Cuda,
}

impl DeviceKind {
    pub fn name(self) -> &'static str {
        match self {
            DeviceKind::Cpu => "cpu",
            DeviceKind::Cuda => "cuda",
        }
    }

    /// The device with its backend, as reports record it.
    pub fn describe(self) -> String {
        match self {
            DeviceKind::Cpu => match training_threads() {
                1 => "cpu (burn Flex, 1 thread)".into(),
                n => format!("cpu (burn Flex, {n} threads)"),
            },
            DeviceKind::Cuda => "cuda (burn-cuda)".into(),
        }
    }

    /// Fails early when this build cannot use the device at all.
    pub fn check_built(self) -> Result<()> {
        if self == DeviceKind::Cuda && !cfg!(feature = "cuda") {
            return Err(cuda_not_built());
        }
        Ok(())
    }
}

/// The CPU autodiff backend.
pub type CpuAutodiff = burn::backend::Autodiff<burn::backend::Flex>;

/// The CUDA autodiff backend.
#[cfg(feature = "cuda")]
pub type CudaAutodiff = burn::backend::Autodiff<burn::backend::Cuda>;

/// Work generic over the backend: [`run_on`] picks the backend and device for a [`DeviceKind`].
pub trait BackendJob {
    type Output;
    fn run<B: TrainBackend>(self, device: &B::Device) -> Result<Self::Output>;
}

/// A training backend: autodiff, and convolutions through [`ConvBackend`] with and without it.
pub trait TrainBackend: AutodiffBackend<InnerBackend: ConvBackend> + ConvBackend {}
impl<B> TrainBackend for B
where
    B: AutodiffBackend + ConvBackend,
    B::InnerBackend: ConvBackend,
{
}

/// How a backend runs training's heavy products: a network convolution (NCHW input,
/// `[cout, cin, k, k]` weights, a bias, equal stride and zero padding on both axes, no groups or
/// dilation) and the predictor's dense layers.
pub trait ConvBackend: Backend {
    /// Whether the backend computes on this process's threads (the CPU backend): then work that
    /// splits into independent halves runs them on separate threads (phase 1's kernel batch).
    const ON_HOST_THREADS: bool = false;

    /// `act(conv(x) + bias + residual)`: a convolution with a residual block's epilogue (the
    /// residual added when given, then ReLU when `relu`).
    #[allow(clippy::too_many_arguments)]
    fn conv2d_block(
        x: Tensor<Self, 4>,
        weight: Tensor<Self, 4>,
        bias: Tensor<Self, 1>,
        stride: usize,
        pad: usize,
        residual: Option<Tensor<Self, 4>>,
        relu: bool,
    ) -> Tensor<Self, 4> {
        let options = ConvOptions::new([stride; 2], [pad; 2], [1, 1], 1);
        let y = burn::tensor::module::conv2d(x, weight, Some(bias), options);
        let y = match residual {
            Some(r) => y + r,
            None => y,
        };
        if relu {
            burn::tensor::activation::relu(y)
        } else {
            y
        }
    }

    /// `x w + b` (`x [rows, inputs]`, `w [inputs, outputs]`), then ReLU when `relu`.
    fn dense(
        x: Tensor<Self, 2>,
        w: Tensor<Self, 2>,
        b: Tensor<Self, 1>,
        relu: bool,
    ) -> Tensor<Self, 2> {
        let y = x.matmul(w) + b.unsqueeze::<2>();
        if relu {
            burn::tensor::activation::relu(y)
        } else {
            y
        }
    }

    /// The predictor's separable first layer: row `r` is `sum_c parts[c][rows[c][r]] + bias`
    /// (then ReLU when `relu`); `parts[c]` is `[extent_c, width]`. See [`crate::dense::gather_sum`].
    fn gather_sum(
        parts: [Tensor<Self, 2>; COORDS],
        rows: &[GatherIndex<Self>; COORDS],
        bias: Tensor<Self, 1>,
        relu: bool,
    ) -> Tensor<Self, 2> {
        let y = parts
            .into_iter()
            .zip(rows)
            .map(|(p, r)| p.select(0, r.device.clone()))
            .reduce(|a, b| a + b)
            .expect("COORDS > 0")
            + bias.unsqueeze::<2>();
        if relu {
            burn::tensor::activation::relu(y)
        } else {
            y
        }
    }
}

/// One coordinate's table row for every kernel of a batch: on the host (the CPU backend's
/// [`ConvBackend::gather_sum`] reads these) and as a device tensor (burn's `select` elsewhere).
#[derive(Clone, Debug)]
pub struct GatherIndex<B: Backend> {
    pub host: Arc<[u32]>,
    pub device: Tensor<B, 1, Int>,
}

impl<B: Backend> GatherIndex<B> {
    pub fn new(host: Vec<u32>, device: &B::Device) -> Self {
        let n = host.len();
        let ints: Vec<i32> = host.iter().map(|&v| v as i32).collect();
        GatherIndex {
            device: Tensor::from_data(TensorData::new(ints, [n]), device),
            host: host.into(),
        }
    }
}

#[cfg(feature = "cuda")]
impl ConvBackend for burn::backend::Cuda {}
#[cfg(feature = "cuda")]
impl ConvBackend for CudaAutodiff {}

fn geometry(x: [usize; 4], w: [usize; 4], stride: usize, pad: usize) -> ConvGeometry {
    assert_eq!(x[1], w[1], "conv: input channels differ from the weight's");
    assert_eq!(w[2], w[3], "conv: square kernels only");
    ConvGeometry {
        batch: x[0],
        cin: x[1],
        h: x[2],
        w: x[3],
        cout: w[0],
        k: w[2],
        stride,
        pad,
    }
}

/// The backend tensors of a convolution's operands.
fn primitives<B: Backend, const D: usize>(
    x: Tensor<B, D>,
    weight: Tensor<B, D>,
    bias: Tensor<B, 1>,
) -> (
    B::FloatTensorPrimitive,
    B::FloatTensorPrimitive,
    B::FloatTensorPrimitive,
) {
    let t = |p: TensorPrimitive<B>| p.tensor();
    (
        t(x.into_primitive()),
        t(weight.into_primitive()),
        t(bias.into_primitive()),
    )
}

fn f32s(t: &FlexTensor) -> &[f32] {
    t.as_slice::<f32>()
        .expect("conv: contiguous f32 tensors (the networks run in f32)")
}

fn flex(values: Vec<f32>, shape: impl Into<burn::tensor::Shape>) -> FlexTensor {
    FlexTensor::from_data(TensorData::new(values, shape))
}

fn dims4(t: &FlexTensor) -> [usize; 4] {
    let d = t.layout().shape();
    [d[0], d[1], d[2], d[3]]
}

/// The forward pass on host tensors, with the block epilogue of [`ConvBackend::conv2d_block`];
/// also returns the contiguous inputs for the backward.
fn host_forward(
    x: &FlexTensor,
    weight: &FlexTensor,
    bias: &FlexTensor,
    (stride, pad): (usize, usize),
    residual: Option<&FlexTensor>,
    relu: bool,
) -> (FlexTensor, FlexTensor, ConvGeometry, FlexTensor) {
    let (x, weight, bias) = (
        x.to_contiguous(),
        weight.to_contiguous(),
        bias.to_contiguous(),
    );
    let g = geometry(dims4(&x), dims4(&weight), stride, pad);
    // The core count, not the pool's size: the weight gradient sums per-chunk partials, so the
    // chunk count fixes the rounding, and the file must not depend on RAYON_NUM_THREADS.
    let threads = crate::decode::default_threads();
    let mut y = crate::conv::forward(f32s(&x), f32s(&weight), Some(f32s(&bias)), &g, threads);
    if residual.is_some() || relu {
        let residual = residual.map(FlexTensor::to_contiguous);
        crate::conv::epilogue(&mut y, residual.as_ref().map(f32s), relu);
    }
    let y = flex(y, [g.batch, g.cout, g.out_h(), g.out_w()]);
    (x, weight, g, y)
}

impl ConvBackend for Flex {
    const ON_HOST_THREADS: bool = true;

    fn conv2d_block(
        x: Tensor<Self, 4>,
        weight: Tensor<Self, 4>,
        bias: Tensor<Self, 1>,
        stride: usize,
        pad: usize,
        residual: Option<Tensor<Self, 4>>,
        relu: bool,
    ) -> Tensor<Self, 4> {
        let (x, w, b) = primitives(x, weight, bias);
        let residual = residual.map(|r| r.into_primitive().tensor());
        let (_, _, _, y) = host_forward(&x, &w, &b, (stride, pad), residual.as_ref(), relu);
        Tensor::from_primitive(TensorPrimitive::Float(y))
    }

    fn dense(
        x: Tensor<Self, 2>,
        w: Tensor<Self, 2>,
        b: Tensor<Self, 1>,
        relu: bool,
    ) -> Tensor<Self, 2> {
        let (x, w, b) = primitives(x, w, b);
        let (_, _, _, y) = host_dense(&x, &w, &b, relu);
        Tensor::from_primitive(TensorPrimitive::Float(y))
    }

    fn gather_sum(
        parts: [Tensor<Self, 2>; COORDS],
        rows: &[GatherIndex<Self>; COORDS],
        bias: Tensor<Self, 1>,
        relu: bool,
    ) -> Tensor<Self, 2> {
        let parts = parts.map(|p| p.into_primitive().tensor());
        let bias = bias.into_primitive().tensor();
        let (_, _, y) = host_gather_sum(&parts, rows, &bias, relu);
        Tensor::from_primitive(TensorPrimitive::Float(y))
    }
}

/// [`crate::dense::gather_sum`] on host tensors; also returns the tables' extents and the width.
fn host_gather_sum<B: Backend>(
    parts: &[FlexTensor; COORDS],
    rows: &[GatherIndex<B>; COORDS],
    bias: &FlexTensor,
    relu: bool,
) -> ([usize; COORDS], usize, FlexTensor) {
    let parts = parts.each_ref().map(FlexTensor::to_contiguous);
    let bias = bias.to_contiguous();
    let width = bias.layout().shape()[0];
    let extents = parts.each_ref().map(|p| p.layout().shape()[0]);
    let slices = parts.each_ref().map(f32s);
    let idx = rows.each_ref().map(|r| &r.host[..]);
    let y = crate::dense::gather_sum(&slices, &idx, f32s(&bias), relu);
    (extents, width, flex(y, [idx[0].len(), width]))
}

/// The backward step of the host first layer ([`crate::dense::gather_sum_backward`]).
#[derive(Debug)]
struct HostGatherBackward;

#[derive(Clone, Debug)]
struct HostGatherState {
    rows: [Arc<[u32]>; COORDS],
    extents: [usize; COORDS],
    width: usize,
    /// The output when the layer ends in ReLU.
    relu_out: Option<FlexTensor>,
}

impl Backward<Flex, { COORDS + 1 }> for HostGatherBackward {
    type State = HostGatherState;

    fn backward(
        self,
        ops: Ops<Self::State, { COORDS + 1 }>,
        grads: &mut Gradients,
        _: &mut Checkpointer,
    ) {
        let nodes = ops.parents.map(|p| p.map(|n| n.id));
        let dy = grads.consume::<Flex>(&ops.node).to_contiguous();
        let st = ops.state;
        let idx = st.rows.each_ref().map(|r| &r[..]);
        let g = crate::dense::gather_sum_backward(
            f32s(&dy),
            st.relu_out.as_ref().map(f32s),
            &idx,
            &st.extents,
            st.width,
        );
        let values = g
            .dparts
            .into_iter()
            .zip(st.extents)
            .map(|(d, e)| flex(d, [e, st.width]))
            .chain(std::iter::once(flex(g.dbias, [st.width])));
        for (node, value) in nodes.into_iter().zip(values) {
            if let Some(node) = node {
                grads.register::<Flex>(node, value);
            }
        }
    }
}

/// [`crate::dense::forward`] on host tensors; also returns the contiguous operands and shape
/// for the backward.
fn host_dense(
    x: &FlexTensor,
    w: &FlexTensor,
    b: &FlexTensor,
    relu: bool,
) -> (FlexTensor, FlexTensor, DenseShape, FlexTensor) {
    let (x, w, b) = (x.to_contiguous(), w.to_contiguous(), b.to_contiguous());
    let (xd, wd) = (x.layout().shape(), w.layout().shape());
    assert_eq!(xd[1], wd[0], "dense: x's columns differ from w's rows");
    let s = DenseShape {
        rows: xd[0],
        inputs: wd[0],
        outputs: wd[1],
    };
    let y = crate::dense::forward(f32s(&x), f32s(&w), f32s(&b), s, relu);
    let y = flex(y, [s.rows, s.outputs]);
    (x, w, s, y)
}

/// The backward step of a host dense layer ([`crate::dense::backward`]).
#[derive(Debug)]
struct HostDenseBackward;

#[derive(Clone, Debug)]
struct HostDenseState {
    x: FlexTensor,
    w: FlexTensor,
    /// The layer's output when it ends in ReLU (its positive entries pass the gradient).
    relu_out: Option<FlexTensor>,
    shape: DenseShape,
}

impl Backward<Flex, 3> for HostDenseBackward {
    type State = HostDenseState;

    fn backward(self, ops: Ops<Self::State, 3>, grads: &mut Gradients, _: &mut Checkpointer) {
        let [node_x, node_w, node_b] = ops.parents.map(|p| p.map(|n| n.id));
        let dy = grads.consume::<Flex>(&ops.node).to_contiguous();
        let HostDenseState {
            x,
            w,
            relu_out,
            shape: s,
        } = ops.state;
        let g = crate::dense::backward(
            f32s(&x),
            f32s(&w),
            relu_out.as_ref().map(f32s),
            f32s(&dy),
            s,
            node_x.is_some(),
        );
        let dx = g.dx.map(|dx| flex(dx, [s.rows, s.inputs]));
        let dw = flex(g.dw, [s.inputs, s.outputs]);
        register(
            grads,
            [node_x, node_w, node_b],
            [dx, Some(dw), Some(flex(g.db, [s.outputs]))],
        );
    }
}

/// Registers each parent's gradient (a parent that needs none is `None`, and so may its gradient).
fn register(grads: &mut Gradients, parents: [Option<NodeId>; 3], values: [Option<FlexTensor>; 3]) {
    for (node, value) in parents.into_iter().zip(values) {
        if let (Some(node), Some(value)) = (node, value) {
            grads.register::<Flex>(node, value);
        }
    }
}

/// The backward step of a host convolution: input (when it needs a gradient), weight and bias
/// gradients from [`crate::conv::backward`], after the epilogue's ReLU; `N = 4` when a residual
/// was added (its gradient is the one at the convolution's output).
#[derive(Debug)]
struct HostConvBackward<const N: usize>;

#[derive(Clone, Debug)]
struct HostConvState {
    x: FlexTensor,
    weight: FlexTensor,
    geometry: ConvGeometry,
    /// The output when the epilogue ends in ReLU.
    relu_out: Option<FlexTensor>,
}

impl<const N: usize> Backward<Flex, N> for HostConvBackward<N> {
    type State = HostConvState;

    fn backward(self, ops: Ops<Self::State, N>, grads: &mut Gradients, _: &mut Checkpointer) {
        let nodes = ops.parents.map(|p| p.map(|n| n.id));
        let dy = grads.consume::<Flex>(&ops.node).to_contiguous();
        let HostConvState {
            x,
            weight,
            geometry: g,
            relu_out,
        } = ops.state;
        let dz = match &relu_out {
            Some(y) => flex(
                crate::conv::epilogue_backward(f32s(&dy), f32s(y)),
                [g.batch, g.cout, g.out_h(), g.out_w()],
            ),
            None => dy,
        };
        // As in the forward pass: the chunk count, hence the rounding, follows the core count.
        let threads = crate::decode::default_threads();
        let (dx, dw, db) = crate::conv::backward(
            f32s(&x),
            f32s(&weight),
            f32s(&dz),
            &g,
            nodes[0].is_some(),
            threads,
        );
        let dx = dx.map(|dx| flex(dx, [g.batch, g.cin, g.h, g.w]));
        let dw = flex(dw, [g.cout, g.cin, g.k, g.k]);
        let db = flex(db, [g.cout]);
        if let Some(&Some(node)) = nodes.get(3) {
            grads.register::<Flex>(node, dz);
        }
        register(
            grads,
            [nodes[0], nodes[1], nodes[2]],
            [dx, Some(dw), Some(db)],
        );
    }
}

impl ConvBackend for CpuAutodiff {
    const ON_HOST_THREADS: bool = true;

    fn conv2d_block(
        x: Tensor<Self, 4>,
        weight: Tensor<Self, 4>,
        bias: Tensor<Self, 1>,
        stride: usize,
        pad: usize,
        residual: Option<Tensor<Self, 4>>,
        relu: bool,
    ) -> Tensor<Self, 4> {
        let (x, w, b) = primitives(x, weight, bias);
        let residual = residual.map(|r| r.into_primitive().tensor());
        let (xc, wc, geometry, y) = host_forward(
            &x.primitive,
            &w.primitive,
            &b.primitive,
            (stride, pad),
            residual.as_ref().map(|r| &r.primitive),
            relu,
        );
        let state = HostConvState {
            x: xc,
            weight: wc,
            geometry,
            relu_out: relu.then(|| y.clone()),
        };
        let nodes = [x.node.clone(), w.node.clone(), b.node.clone()];
        let out = match residual {
            None => match HostConvBackward::<3>
                .prepare::<NoCheckpointing>(nodes)
                .compute_bound()
                .stateful()
            {
                OpsKind::Tracked(prep) => prep.finish(state, y),
                OpsKind::UnTracked(prep) => prep.finish(y),
            },
            Some(r) => {
                let [a, b, c] = nodes;
                match HostConvBackward::<4>
                    .prepare::<NoCheckpointing>([a, b, c, r.node.clone()])
                    .compute_bound()
                    .stateful()
                {
                    OpsKind::Tracked(prep) => prep.finish(state, y),
                    OpsKind::UnTracked(prep) => prep.finish(y),
                }
            }
        };
        Tensor::from_primitive(TensorPrimitive::Float(out))
    }

    fn dense(
        x: Tensor<Self, 2>,
        w: Tensor<Self, 2>,
        b: Tensor<Self, 1>,
        relu: bool,
    ) -> Tensor<Self, 2> {
        let (x, w, b) = primitives(x, w, b);
        let (xc, wc, shape, y) = host_dense(&x.primitive, &w.primitive, &b.primitive, relu);
        let nodes = [x.node.clone(), w.node.clone(), b.node.clone()];
        let out = match HostDenseBackward
            .prepare::<NoCheckpointing>(nodes)
            .compute_bound()
            .stateful()
        {
            OpsKind::Tracked(prep) => prep.finish(
                HostDenseState {
                    x: xc,
                    w: wc,
                    relu_out: relu.then(|| y.clone()),
                    shape,
                },
                y,
            ),
            OpsKind::UnTracked(prep) => prep.finish(y),
        };
        Tensor::from_primitive(TensorPrimitive::Float(out))
    }

    fn gather_sum(
        parts: [Tensor<Self, 2>; COORDS],
        rows: &[GatherIndex<Self>; COORDS],
        bias: Tensor<Self, 1>,
        relu: bool,
    ) -> Tensor<Self, 2> {
        let parts = parts.map(|p| p.into_primitive().tensor());
        let bias = bias.into_primitive().tensor();
        let inner = parts.each_ref().map(|p| p.primitive.clone());
        let (extents, width, y) = host_gather_sum(&inner, rows, &bias.primitive, relu);
        let nodes: [_; COORDS + 1] =
            std::array::from_fn(|i| parts.get(i).map_or(bias.node.clone(), |p| p.node.clone()));
        let out = match HostGatherBackward
            .prepare::<NoCheckpointing>(nodes)
            .compute_bound()
            .stateful()
        {
            OpsKind::Tracked(prep) => prep.finish(
                HostGatherState {
                    rows: rows.each_ref().map(|r| r.host.clone()),
                    extents,
                    width,
                    relu_out: relu.then(|| y.clone()),
                },
                y,
            ),
            OpsKind::UnTracked(prep) => prep.finish(y),
        };
        Tensor::from_primitive(TensorPrimitive::Float(out))
    }
}

/// Threads CPU training runs on: burn Flex's rayon pool, which the host convolution shares
/// (`RAYON_NUM_THREADS` sets it; the machine's core count otherwise).
pub fn training_threads() -> usize {
    rayon::current_num_threads()
}

/// Runs `job` on the backend of `kind`.
///
/// Jobs in one process run one at a time (a job started inside another runs at once). burn's
/// autodiff keeps process-wide graph state: a backward step holds its graph's lock while the
/// host convolution waits for rayon's pool, and another training's step on a pool thread may be
/// waiting for that lock (it sweeps every graph when its backward ends): two encodes at once in
/// one process deadlocked (seen with the time-limit tests).
pub fn run_on<J: BackendJob>(kind: DeviceKind, job: J) -> Result<J::Output> {
    thread_local! {
        static DEPTH: std::cell::Cell<usize> = const { std::cell::Cell::new(0) };
    }
    static ONE_AT_A_TIME: std::sync::Mutex<()> = std::sync::Mutex::new(());
    /// Holds the process's turn (outermost job only) and counts the nesting, also on unwind.
    struct Turn {
        _held: Option<std::sync::MutexGuard<'static, ()>>,
    }
    impl Drop for Turn {
        fn drop(&mut self) {
            DEPTH.with(|d| d.set(d.get() - 1));
        }
    }
    // A job that panicked leaves nothing behind that the next one depends on.
    let guard = (DEPTH.with(|d| d.get()) == 0)
        .then(|| ONE_AT_A_TIME.lock().unwrap_or_else(|e| e.into_inner()));
    DEPTH.with(|d| d.set(d.get() + 1));
    let _turn = Turn { _held: guard };
    run_job(kind, job)
}

fn run_job<J: BackendJob>(kind: DeviceKind, job: J) -> Result<J::Output> {
    match kind {
        DeviceKind::Cpu => job.run::<CpuAutodiff>(&Default::default()),
        #[cfg(feature = "cuda")]
        DeviceKind::Cuda => {
            let device = cuda_device()?;
            job.run::<CudaAutodiff>(&device)
        }
        #[cfg(not(feature = "cuda"))]
        DeviceKind::Cuda => Err(cuda_not_built()),
    }
}

/// The error for CUDA requests in a build without the `cuda` feature.
pub fn cuda_not_built() -> Error {
    Error::DeviceUnavailable {
        device: "cuda".into(),
        why: "this nernc was built without the `cuda` feature (cargo build --features cuda)".into(),
    }
}

/// The default CUDA device, after checking that it works: cubecl panics when no driver or GPU
/// is present, so probe once and turn that into an error.
#[cfg(feature = "cuda")]
pub fn cuda_device() -> Result<burn::backend::cuda::CudaDevice> {
    let dev = burn::backend::cuda::CudaDevice::default();
    let hook = std::panic::take_hook();
    std::panic::set_hook(Box::new(|_| {}));
    let probe = std::panic::catch_unwind(|| {
        let t: burn::tensor::Tensor<CudaAutodiff, 1> = burn::tensor::Tensor::ones([4], &dev);
        t.sum().into_data()
    });
    std::panic::set_hook(hook);
    probe.map(|_| dev).map_err(|_| Error::DeviceUnavailable {
        device: "cuda".into(),
        why: "no usable CUDA driver or GPU found (is CUDA_PATH set to the toolkit headers?)".into(),
    })
}

/// Training allocates and frees tensors of a few MB at every step. By default glibc hands such
/// blocks back to the kernel (mmap threshold, heap trimming) and gets them back as fresh zeroed
/// pages: a third of a CPU phase-1 step went to page faults (perf: `clear_page_erms`,
/// `exc_page_fault`). Keeping freed memory in the heap removes that; the cost is a heap that does
/// not shrink while the process lives, which suits a one-shot encoder. glibc's mmap threshold
/// cannot be raised past 32 MiB, so blocks above it (ResNet-56's phase-2 activations of the
/// predictor, 94.5k kernels x 335 floats = 127 MB each) were still fresh pages at every step; with
/// mmap off they come from the heap too (ResNet-56 phase 2 at hidden 335: 2.45-2.64 s per step
/// before, 1.96-2.05 after, the same peak RSS).
pub fn keep_freed_memory() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    {
        static ONCE: std::sync::Once = std::sync::Once::new();
        // SAFETY: mallopt only changes allocator tuning parameters; it is called before the
        // training threads allocate (and glibc serialises it with the arena locks anyway).
        ONCE.call_once(|| unsafe {
            // 32 MiB is glibc's ceiling for the mmap threshold on 64-bit.
            libc::mallopt(libc::M_MMAP_THRESHOLD, 32 << 20);
            libc::mallopt(libc::M_TRIM_THRESHOLD, 1 << 30);
            libc::mallopt(libc::M_TOP_PAD, 64 << 20);
            libc::mallopt(libc::M_MMAP_MAX, 0);
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Uniform values in [-1, 1) from a fixed seed.
    fn draw(rng: &mut crate::rng::SplitMix64, n: usize) -> Vec<f32> {
        (0..n)
            .map(|_| (rng.next_f64() * 2.0 - 1.0) as f32)
            .collect()
    }

    /// Every list of `got` equals the same list of `want` to float rounding.
    fn assert_all_close(got: &[Vec<f32>], want: &[Vec<f32>], what: &str) {
        assert_eq!(got.len(), want.len(), "{what}");
        for (g, w) in got.iter().zip(want) {
            assert_eq!(g.len(), w.len(), "{what}");
            for (a, b) in g.iter().zip(w) {
                assert!(
                    (a - b).abs() <= 1e-5 * (1.0 + b.abs()),
                    "{what}: {a} against {b}"
                );
            }
        }
    }

    fn host<const D: usize>(
        t: Tensor<<CpuAutodiff as AutodiffBackend>::InnerBackend, D>,
    ) -> Vec<f32> {
        t.into_data().into_vec::<f32>().unwrap()
    }

    /// The CPU's convolution with a block epilogue (residual add, ReLU) gives the values and the
    /// gradients of x, the weight, the bias and the residual that burn's own convolution, add and
    /// ReLU give, with and without each part of the epilogue.
    #[test]
    fn host_conv_block_matches_burns_composition() {
        type B = CpuAutodiff;
        let device = Default::default();
        let mut rng = crate::rng::SplitMix64::new(5);
        let (xs, ws, bs, rs) = ([2, 3, 6, 6], [4, 3, 3, 3], [4], [2, 4, 6, 6]);
        let (xv, wv, bv, rv, mv) = (
            draw(&mut rng, 2 * 3 * 36),
            draw(&mut rng, 4 * 27),
            draw(&mut rng, 4),
            draw(&mut rng, 2 * 4 * 36),
            draw(&mut rng, 2 * 4 * 36),
        );
        for (with_residual, relu) in [(false, false), (false, true), (true, false), (true, true)] {
            let run = |fused: bool| {
                let leaf4 = |v: &[f32], d: [usize; 4]| {
                    Tensor::<B, 4>::from_data(TensorData::new(v.to_vec(), d), &device)
                        .require_grad()
                };
                let (x, w, r) = (leaf4(&xv, xs), leaf4(&wv, ws), leaf4(&rv, rs));
                let b = Tensor::<B, 1>::from_data(TensorData::new(bv.clone(), bs), &device)
                    .require_grad();
                let res = with_residual.then(|| r.clone());
                let y = if fused {
                    B::conv2d_block(x.clone(), w.clone(), b.clone(), 1, 1, res, relu)
                } else {
                    let options = ConvOptions::new([1; 2], [1; 2], [1, 1], 1);
                    let y = burn::tensor::module::conv2d(
                        x.clone(),
                        w.clone(),
                        Some(b.clone()),
                        options,
                    );
                    let y = match res {
                        Some(r) => y + r,
                        None => y,
                    };
                    if relu {
                        burn::tensor::activation::relu(y)
                    } else {
                        y
                    }
                };
                let m = Tensor::<B, 4>::from_data(TensorData::new(mv.clone(), rs), &device);
                let grads = (y.clone() * m).sum().backward();
                let mut out = vec![
                    host(y.inner()),
                    host(x.grad(&grads).unwrap()),
                    host(w.grad(&grads).unwrap()),
                    host(b.grad(&grads).unwrap()),
                ];
                if with_residual {
                    out.push(host(r.grad(&grads).unwrap()));
                } else {
                    assert!(r.grad(&grads).is_none());
                }
                out
            };
            let what = format!("residual {with_residual}, relu {relu}");
            assert_all_close(&run(true), &run(false), &what);
        }
    }

    /// The CPU's fused first layer gives the forward values and the gradients (every table's and
    /// the bias's, registered on the right parents) of burn's own select, add and ReLU.
    #[test]
    fn host_gather_sum_matches_burns_composition() {
        type B = CpuAutodiff;
        let device = Default::default();
        let width = 5;
        let extents = [2usize, 4, 3];
        let mut rng = crate::rng::SplitMix64::new(3);
        let parts_v: Vec<Vec<f32>> = extents.iter().map(|&e| draw(&mut rng, e * width)).collect();
        let bias_v = draw(&mut rng, width);
        let n = 11;
        let weights = draw(&mut rng, n * width);
        let rows: [GatherIndex<B>; COORDS] = std::array::from_fn(|c| {
            GatherIndex::new(
                (0..n).map(|k| ((k * 7 + c) % extents[c]) as u32).collect(),
                &device,
            )
        });
        let run = |fused: bool| {
            let parts: [Tensor<B, 2>; COORDS] = std::array::from_fn(|c| {
                Tensor::<B, 2>::from_data(
                    TensorData::new(parts_v[c].clone(), [extents[c], width]),
                    &device,
                )
                .require_grad()
            });
            let bias = Tensor::<B, 1>::from_data(TensorData::new(bias_v.clone(), [width]), &device)
                .require_grad();
            let y = if fused {
                B::gather_sum(parts.clone(), &rows, bias.clone(), true)
            } else {
                let sum = parts
                    .clone()
                    .into_iter()
                    .zip(&rows)
                    .map(|(p, r)| p.select(0, r.device.clone()))
                    .reduce(|a, b| a + b)
                    .unwrap()
                    + bias.clone().unsqueeze::<2>();
                burn::tensor::activation::relu(sum)
            };
            let w =
                Tensor::<B, 2>::from_data(TensorData::new(weights.clone(), [n, width]), &device);
            let grads = (y.clone() * w).sum().backward();
            let mut out = vec![host(y.inner())];
            out.extend(parts.iter().map(|p| host(p.grad(&grads).unwrap())));
            out.push(host(bias.grad(&grads).unwrap()));
            out
        };
        assert_all_close(&run(true), &run(false), "first layer");
    }
}
