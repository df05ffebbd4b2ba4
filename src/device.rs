//! Where training and evaluation run: the device kinds, their burn backends, and the one place
//! that turns a [`DeviceKind`] into a backend type ([`run_on`]); `encode`, `eval` and the
//! benchmarks all go through it.

use burn::tensor::backend::AutodiffBackend;

use crate::error::{Error, Result};

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
            DeviceKind::Cpu => format!(
                "cpu (burn Flex, {} threads)",
                crate::decode::default_threads()
            ),
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
    fn run<B: AutodiffBackend>(self, device: &B::Device) -> Result<Self::Output>;
}

/// Runs `job` on the backend of `kind`.
pub fn run_on<J: BackendJob>(kind: DeviceKind, job: J) -> Result<J::Output> {
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
/// not shrink while the process lives, which suits a one-shot encoder.
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
        });
    }
}
