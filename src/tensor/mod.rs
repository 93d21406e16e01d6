//! N-dimensional arrays of `f32` or `f64`, row-major and always contiguous.
//!
//! A [`Tensor`] is an immutable, reference-counted buffer plus a shape: cloning one is an
//! atomic increment, which is what lets the tape keep every intermediate value for the
//! backward pass without copying it. Kernels (elementwise with NumPy broadcasting,
//! reductions, matmul through `faer`) live in the submodules.

mod elementwise;
pub(crate) use elementwise::{
    Number, PARALLEL_MIN_LEN, elementary_functions, with_avx2, with_avx512, with_feature,
};
pub use pool::with_a_worker_awake;
mod matmul;
mod packed;
mod pool;
mod random;
mod reduce;
mod shape;

pub(crate) use reduce::normalize_axes;
pub(crate) use shape::{
    broadcast_strides, for_each_offset, gather_adjoint, index_select_adjoint, narrow_adjoint,
    shape_of,
};

pub use elementwise::{BinaryOp, UnaryOp};
pub use matmul::matmul_threads;
pub(crate) use matmul::{MatLayout, matmul_into, matmul_into_serial};
pub(crate) use packed::PackedRhs;
pub use random::{SplitMix64, splitmix64};
pub use shape::{MAX_ELEMENTS, Shape, broadcast_shapes, checked_len};

use crate::error::{Error, Result};
use std::fmt;
use std::sync::Arc;

/// What only the crate may implement or call: the trait is in a private module, so
/// users can neither implement `Element` nor name the raw product kernel.
mod sealed {
    use super::MatLayout;

    pub trait Sealed: Sized {
        /// `faer`'s product on raw buffers (see `matmul::faer_gemm`, which checks the
        /// sizes against the buffers before it builds its views).
        #[allow(clippy::too_many_arguments)]
        fn gemm(
            dst: &mut [Self],
            m: usize,
            n: usize,
            k: usize,
            lhs: (&[Self], MatLayout),
            rhs: (&[Self], MatLayout),
            accumulate: bool,
            threads: usize,
        );
        /// The elements as f32, for kernels written for f32 alone; `None` for f64.
        fn f32s(s: &[Self]) -> Option<&[f32]>;
        /// [`Sealed::f32s`], writable.
        fn f32s_mut(s: &mut [Self]) -> Option<&mut [f32]>;
    }
}

/// The element types a tensor can hold: `f32` and `f64`.
pub trait Element:
    num_traits::Float
    + num_traits::NumAssign
    + Default
    + Send
    + Sync
    + fmt::Debug
    + fmt::Display
    + std::iter::Sum
    + 'static
    + sealed::Sealed
    + Number
{
    /// `"f32"` or `"f64"`.
    const NAME: &'static str;
    /// Converts from `f64`, rounding to nearest.
    fn of(v: f64) -> Self;
    /// Widens to `f64`.
    fn as_f64(self) -> f64;
    /// Hyperbolic tangent: the standard library's for f64, a vectorisable rational
    /// approximation for f32 (within 4 ulp over the whole range; libm's `tanhf` was a
    /// third of a small MLP's training step).
    fn tanh_(self) -> Self;
    /// `eˣ`: the standard library's for f64, a vectorisable polynomial for f32 (within
    /// 2 ulp; 0 below the smallest normal result, e⁻⁸⁷·³⁴, and ∞ above e⁸⁸·³⁷).
    fn exp_(self) -> Self;
    /// The error function: libm's for f64, a vectorisable rational approximation for f32
    /// (within 1e-6 relative of libm's; a scalar libm call per element was a sixth of a
    /// GPT's forward pass).
    fn erf_(self) -> Self;
}

macro_rules! impl_element {
    ($t:ty, $name:literal, $tanh:expr, $exp:expr, $erf:expr, $f32s:ident) => {
        impl Element for $t {
            const NAME: &'static str = $name;
            #[inline(always)]
            fn of(v: f64) -> Self {
                v as $t
            }
            #[inline(always)]
            fn as_f64(self) -> f64 {
                self as f64
            }
            #[inline(always)]
            fn tanh_(self) -> Self {
                $tanh(self)
            }
            #[inline(always)]
            fn exp_(self) -> Self {
                $exp(self)
            }
            #[inline(always)]
            fn erf_(self) -> Self {
                $erf(self)
            }
        }
        impl sealed::Sealed for $t {
            #[allow(clippy::too_many_arguments)]
            fn gemm(
                dst: &mut [Self],
                m: usize,
                n: usize,
                k: usize,
                lhs: (&[Self], MatLayout),
                rhs: (&[Self], MatLayout),
                accumulate: bool,
                threads: usize,
            ) {
                matmul::faer_gemm(dst, m, n, k, lhs, rhs, accumulate, threads)
            }
            fn f32s(s: &[Self]) -> Option<&[f32]> {
                $f32s!(s)
            }
            fn f32s_mut(s: &mut [Self]) -> Option<&mut [f32]> {
                $f32s!(s)
            }
        }
    };
}
macro_rules! some {
    ($s:expr) => {
        Some($s)
    };
}
macro_rules! none {
    ($s:expr) => {{
        let _ = $s;
        None
    }};
}
impl_element!(f32, "f32", tanh_f32, exp_f32, erf_f32, some);
impl_element!(f64, "f64", f64::tanh, f64::exp, libm::erf, none);

/// eˣ as Cephes' `expf`: `x = n·ln 2 + r` with |r| ≤ ln 2 / 2 (ln 2 split in two for an
/// exact product), a degree-6 polynomial for eʳ, and 2ⁿ built in the exponent bits.
/// Branch-free selects, so that a loop of it vectorises.
#[inline(always)]
#[allow(clippy::excessive_precision)] // the coefficients as published
fn exp_f32(x: f32) -> f32 {
    const HI: f32 = 88.37; // 2ⁿ stays finite (n ≤ 127); e^88.72 would be f32::MAX
    const LO: f32 = -87.336_55; // e^LO is the smallest normal f32
    let xc = x.clamp(LO, HI);
    let n = (xc * std::f32::consts::LOG2_E + 0.5).floor();
    let r = xc - n * 0.693_359_4 - n * -2.121_944_4e-4;
    let mut p = 1.987_569_1e-4f32;
    p = p * r + 1.398_199_9e-3;
    p = p * r + 8.333_452e-3;
    p = p * r + 4.166_579_6e-2;
    p = p * r + 1.666_666_5e-1;
    p = p * r + 5.000_000_1e-1;
    let y = p * r * r + r + 1.0;
    // 2ⁿ for the integer n in [-126, 127]: n + 127 + 2²³ holds n + 127 in its low
    // mantissa bits, shifted into the exponent field (a float-to-int cast would not
    // vectorise); a NaN gives 0 here and y is NaN anyway
    let scale = f32::from_bits((n + (127.0 + 8_388_608.0)).to_bits() << 23);
    let y = y * scale;
    let y = if x < LO { 0.0 } else { y };
    if x > HI { f32::INFINITY } else { y }
}

/// erf(x) ≈ x·P(x²)/Q(x²) on [-4, 4], the rational approximation of Eigen's
/// `generic_fast_erf_float`; beyond ±4 erf is ±1 in f32.
#[inline(always)]
#[allow(clippy::excessive_precision)] // the coefficients as published
fn erf_f32(x: f32) -> f32 {
    let x = x.clamp(-4.0, 4.0);
    let x2 = x * x;
    let mut p = -2.726_142_3e-10f32;
    p = p * x2 + 2.770_681_4e-8;
    p = p * x2 + -2.101_024e-6;
    p = p * x2 + -5.692_506_4e-5;
    p = p * x2 + -7.349_906_3e-4;
    p = p * x2 + -2.954_600_1e-3;
    p = p * x2 + -1.609_603_3e-2;
    let mut q = -1.456_607_2e-5f32;
    q = q * x2 + -2.133_740_6e-4;
    q = q * x2 + -1.682_827e-3;
    q = q * x2 + -7.373_329_2e-3;
    q = q * x2 + -1.426_473_9e-2;
    x * p / q
}

/// tanh(x) ≈ x·P(x²)/Q(x²), the minimax rational approximation on [-7.9, 7.9] used by
/// Eigen's `ptanh_float`; beyond that range tanh is ±1 in f32. Plain `a * b + c`, not
/// `mul_add`: without `-C target-cpu` that is a library call, not an FMA instruction.
#[inline(always)]
#[allow(clippy::excessive_precision)] // the coefficients as published
fn tanh_f32(x: f32) -> f32 {
    const CLAMP: f32 = 7.905_311;
    if x.abs() > 9.0 {
        return x.signum(); // tanh rounds to ±1 in f32 from |x| ≈ 9.01
    }
    let x = x.clamp(-CLAMP, CLAMP);
    let x2 = x * x;
    let mut p = x2 * -2.760_768_5e-16 + 2.000_187_9e-13;
    p = x2 * p + -8.604_671_5e-11;
    p = x2 * p + 5.122_297e-8;
    p = x2 * p + 1.485_722_4e-5;
    p = x2 * p + 6.372_619_3e-4;
    p = x2 * p + 4.893_524_6e-3;
    let mut q = x2 * 1.198_258_4e-6 + 1.185_347_1e-4;
    q = x2 * q + 2.268_434_6e-3;
    q = x2 * q + 4.893_525e-3;
    x * p / q
}

/// Shorthand for a constant of the element type.
#[inline(always)]
pub(crate) fn c<T: Element>(v: f64) -> T {
    T::of(v)
}

/// An n-dimensional array, row-major, contiguous, shared by reference count.
#[derive(Clone)]
pub struct Tensor<T> {
    /// Written through [`unique_mut`] when nothing else shares it.
    data: Arc<[T]>,
    shape: Shape,
}

/// The buffer, writable, when `data` is its only handle: [`Arc::get_mut`] without the
/// atomic read-modify-write it takes to lock the weak count (a locked instruction on
/// x86: tens of cycles, and a barrier to the loads and stores around it, which every
/// recorded op paid three times: writing its value, handing its gradient on, and
/// recycling its buffer).
fn unique_mut<T>(data: &mut Arc<[T]>) -> Option<&mut [T]> {
    if Arc::strong_count(data) != 1 {
        return None;
    }
    // The count was read as 1 after the last clone elsewhere was dropped, with a
    // release decrement; the fence makes what that thread did with the buffer happen
    // before what follows (as `Arc::drop` and `Arc::get_mut` do).
    std::sync::atomic::fence(std::sync::atomic::Ordering::Acquire);
    if Arc::weak_count(data) != 0 {
        return None;
    }
    // A strong count of 1, read with the fence above, says that `data` is the only `Arc`
    // of the buffer and that every other `Arc` was dropped before this point. No `Weak`
    // exists: one made before another `Arc` was dropped is counted just above (the fence
    // orders its making before this read), and a new one can only be made from an
    // `Arc`, of which the only one is behind `&mut data`, which also keeps it from being
    // cloned for the lifetime of the returned slice.
    // SAFETY: by the above, the slice is the only access to the buffer while it lives
    // (what `&mut` requires), and its pointer comes from the live `Arc` itself.
    Some(unsafe { &mut *(Arc::as_ptr(data) as *mut [T]) })
}

/// Whether two shapes are equal, compared in line: slice equality calls `memcmp`, which
/// costs more than the handful of dimensions on the paths every recorded op takes.
#[inline(always)]
pub(crate) fn same_shape(a: &[usize], b: &[usize]) -> bool {
    a.len() == b.len() && a.iter().zip(b).all(|(x, y)| x == y)
}

/// `⟨a, b⟩` summed over two lists of tensors (element by element, accumulated in f64):
/// the inner product of gradients, directions and Krylov vectors kept as one tensor per
/// parameter.
pub fn dot_all<T: Element>(a: &[Tensor<T>], b: &[Tensor<T>]) -> f64 {
    a.iter()
        .zip(b)
        .map(|(x, y)| {
            x.data()
                .iter()
                .zip(y.data())
                .map(|(p, q)| p.as_f64() * q.as_f64())
                .sum::<f64>()
        })
        .sum()
}

/// The larger of two numbers, NaN when either is NaN (`f64::max` returns the other one,
/// which would let a NaN pass a check unseen). Folds of errors use it.
pub fn nan_max(a: f64, b: f64) -> f64 {
    if a.is_nan() || b.is_nan() {
        f64::NAN
    } else {
        a.max(b)
    }
}

/// [`checked_len`] for a constructor, and whether the system will allocate that many
/// elements at all: asked for more than it can map, the request is an
/// [`Error::OutOfMemory`] instead of an abort in the allocator (parameters of a layer
/// sized from a command line, say). The probe maps no pages, so it costs a system call.
pub(crate) fn allocatable<T: Element>(op: &'static str, shape: &[usize]) -> Result<usize> {
    let n = checked_len(op, shape)?;
    let mut probe: Vec<T> = Vec::new();
    probe.try_reserve_exact(n).map_err(|_| Error::OutOfMemory {
        op,
        shape: crate::error::Dims(shape.to_vec()),
        bytes: n.saturating_mul(std::mem::size_of::<T>()),
    })?;
    Ok(n)
}

/// Allocates `n` zeros without a copy (all-zero bits are 0.0 for f32 and f64).
pub(crate) fn zeroed_buffer<T: Element>(n: usize) -> Arc<[T]> {
    let buf = Arc::<[T]>::new_zeroed_slice(n);
    // SAFETY: `Element` is sealed to f32 and f64, for which all-zero bits are +0.0.
    unsafe { buf.assume_init() }
}

impl<T: Element> Tensor<T> {
    /// Builds a tensor from row-major data and a shape.
    pub fn from_vec(data: Vec<T>, shape: &[usize]) -> Result<Self> {
        let n = checked_len("from_vec", shape)?;
        if n != data.len() {
            return Err(Error::shape_detail(
                "from_vec",
                &[data.len()],
                shape,
                format!("{} elements cannot fill shape {:?}", data.len(), shape),
            ));
        }
        Ok(Tensor {
            data: data.into(),
            shape: shape_of(shape),
        })
    }

    /// Builds a tensor whose buffer is filled by `fill` (used by kernels to avoid a copy).
    /// `shape` must be valid ([`checked_len`]): one of an existing tensor, or one checked
    /// by the public constructor or op that asked for it.
    pub(crate) fn build(shape: &[usize], fill: impl FnOnce(&mut [T])) -> Self {
        debug_assert!(checked_len("build", shape).is_ok());
        let n = shape.iter().product();
        let mut data = zeroed_buffer::<T>(n);
        fill(unique_mut(&mut data).expect("fresh buffer is unique"));
        Tensor {
            data,
            shape: shape_of(shape),
        }
    }

    /// [`Tensor::build`] over `buffer` when it holds the shape's number of elements and
    /// nothing else shares it (a buffer recycled by the tape), over fresh zeros otherwise.
    pub(crate) fn build_over(
        mut buffer: Arc<[T]>,
        shape: &[usize],
        fill: impl FnOnce(&mut [T]),
    ) -> Self {
        if buffer.len() == shape.iter().product::<usize>()
            && let Some(out) = unique_mut(&mut buffer)
        {
            fill(out);
            return Tensor {
                data: buffer,
                shape: shape_of(shape),
            };
        }
        Tensor::build(shape, fill)
    }

    /// A 0-dimensional tensor holding one value.
    pub fn scalar(v: T) -> Self {
        Tensor {
            data: Arc::from([v]),
            shape: Shape::new(),
        }
    }

    /// All zeros; an error when the shape holds more than [`MAX_ELEMENTS`].
    pub fn zeros(shape: &[usize]) -> Result<Self> {
        allocatable::<T>("zeros", shape)?;
        Ok(Self::zeroed(shape))
    }

    /// All zeros of a valid shape (one of an existing tensor, or checked by the caller).
    pub(crate) fn zeroed(shape: &[usize]) -> Self {
        debug_assert!(checked_len("zeroed", shape).is_ok());
        Tensor {
            data: zeroed_buffer(shape.iter().product()),
            shape: shape_of(shape),
        }
    }

    /// All ones; an error when the shape holds more than [`MAX_ELEMENTS`].
    pub fn ones(shape: &[usize]) -> Result<Self> {
        Self::full(shape, T::one())
    }

    /// Every element equal to `v`; an error when the shape holds more than
    /// [`MAX_ELEMENTS`].
    pub fn full(shape: &[usize], v: T) -> Result<Self> {
        allocatable::<T>("full", shape)?;
        Ok(Self::build(shape, |d| d.fill(v)))
    }

    /// Every element equal to `v`, for a valid shape (as [`Tensor::zeroed`]).
    pub(crate) fn filled(shape: &[usize], v: T) -> Self {
        Self::build(shape, |d| d.fill(v))
    }

    /// A tensor of zeros with the same shape as `self`.
    pub fn zeros_like(&self) -> Self {
        Self::zeroed(&self.shape)
    }

    /// `0, 1, ..., n-1` as a 1-D tensor; an error when `n` exceeds [`MAX_ELEMENTS`].
    pub fn arange(n: usize) -> Result<Self> {
        checked_len("arange", &[n])?;
        Ok(Self::build(&[n], |d| {
            for (i, v) in d.iter_mut().enumerate() {
                *v = c(i as f64);
            }
        }))
    }

    /// The shape.
    pub fn shape(&self) -> &[usize] {
        &self.shape
    }

    /// Number of dimensions.
    pub fn ndim(&self) -> usize {
        self.shape.len()
    }

    /// Number of elements.
    pub fn len(&self) -> usize {
        self.data.len()
    }

    /// True when the tensor holds no elements.
    pub fn is_empty(&self) -> bool {
        self.data.is_empty()
    }

    /// The elements in row-major order.
    pub fn data(&self) -> &[T] {
        &self.data
    }

    /// Mutable access to the elements, copying the buffer first if it is shared.
    pub fn data_mut(&mut self) -> &mut [T] {
        Arc::make_mut(&mut self.data)
    }

    /// The elements, writable in place, when nothing else shares the buffer; `None`
    /// otherwise (no copy is made).
    pub(crate) fn data_mut_if_unique(&mut self) -> Option<&mut [T]> {
        unique_mut(&mut self.data)
    }

    /// This tensor's buffer when nothing else shares it (so it can be overwritten later).
    pub(crate) fn into_unique_buffer(mut self) -> Option<Arc<[T]>> {
        unique_mut(&mut self.data).is_some().then_some(self.data)
    }

    /// A buffer kept for overwriting ([`Tensor::into_unique_buffer`]) as a 1-D tensor.
    pub(crate) fn from_buffer(data: Arc<[T]>) -> Self {
        Tensor {
            shape: shape_of(&[data.len()]),
            data,
        }
    }

    /// The elements for overwriting, as a buffer of `shape` (a valid one): this tensor's
    /// own buffer when it has that many elements and nothing else shares it, a fresh one
    /// otherwise (never a copy: the old contents are to be overwritten). Replayed steps
    /// and the tape's recycled buffers go through it.
    pub(crate) fn overwrite(&mut self, shape: &[usize]) -> &mut [T] {
        if !same_shape(&self.shape, shape) {
            if self.data.len() == shape.iter().product::<usize>() {
                self.shape = shape_of(shape);
            } else {
                *self = Tensor::zeroed(shape);
            }
        }
        if unique_mut(&mut self.data).is_none() {
            *self = Tensor::zeroed(shape);
        }
        unique_mut(&mut self.data).expect("unique after the checks above")
    }

    /// The elements as a `Vec`.
    pub fn to_vec(&self) -> Vec<T> {
        self.data.to_vec()
    }

    /// The single value of a one-element tensor.
    pub fn item(&self) -> Result<T> {
        if self.data.len() == 1 {
            Ok(self.data[0])
        } else {
            Err(Error::invalid(
                "item",
                format!(
                    "tensor of shape {:?} has {} elements, not 1",
                    self.shape(),
                    self.len()
                ),
            ))
        }
    }

    /// The element at a multi-index.
    pub fn get(&self, index: &[usize]) -> Result<T> {
        if index.len() != self.ndim() || index.iter().zip(self.shape()).any(|(i, d)| i >= d) {
            return Err(Error::invalid(
                "get",
                format!(
                    "index {:?} out of range for shape {:?}",
                    index,
                    self.shape()
                ),
            ));
        }
        // in range on every axis of a valid shape: the offset is below len()
        let mut off = 0;
        for (i, d) in index.iter().zip(self.shape()) {
            off = off * d + i;
        }
        Ok(self.data[off])
    }

    /// Converts to another element type.
    pub fn cast<U: Element>(&self) -> Tensor<U> {
        Tensor::build(&self.shape, |d| {
            for (o, &v) in d.iter_mut().zip(self.data.iter()) {
                *o = U::of(v.as_f64());
            }
        })
    }

    /// True when both tensors share one buffer (no copy was made).
    pub fn shares_buffer(&self, other: &Self) -> bool {
        Arc::ptr_eq(&self.data, &other.data)
    }

    /// True when every element is finite.
    pub fn all_finite(&self) -> bool {
        self.data.iter().all(|v| v.is_finite())
    }

    /// Largest absolute difference to another tensor of the same shape: NaN when either
    /// holds a NaN at some position, or an infinity where the other does not hold the
    /// same one (a check that reads it fails instead of passing).
    pub fn max_abs_diff(&self, other: &Self) -> Result<f64> {
        if self.shape() != other.shape() {
            return Err(Error::shape("max_abs_diff", self.shape(), other.shape()));
        }
        Ok(self
            .data
            .iter()
            .zip(other.data.iter())
            .map(|(a, b)| (a.as_f64() - b.as_f64()).abs())
            .fold(0.0, nan_max))
    }

    /// Euclidean norm of all elements, accumulated in f64.
    pub fn norm(&self) -> f64 {
        self.data
            .iter()
            .map(|v| {
                let v = v.as_f64();
                v * v
            })
            .sum::<f64>()
            .sqrt()
    }

    pub(crate) fn with_shape(data: Arc<[T]>, shape: &[usize]) -> Self {
        debug_assert_eq!(checked_len("with_shape", shape).ok(), Some(data.len()));
        Tensor {
            data,
            shape: shape_of(shape),
        }
    }

    pub(crate) fn buffer(&self) -> &Arc<[T]> {
        &self.data
    }
}

impl<T: Element> fmt::Debug for Tensor<T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Tensor<{}>{:?} ", T::NAME, self.shape())?;
        const SHOW: usize = 8;
        let d = &self.data;
        if d.len() <= SHOW {
            write!(f, "{:?}", d)
        } else {
            write!(f, "{:?} ... ({} elements)", &d[..SHOW], d.len())
        }
    }
}

impl<T: Element> PartialEq for Tensor<T> {
    fn eq(&self, other: &Self) -> bool {
        self.shape == other.shape && self.data == other.data
    }
}

#[cfg(test)]
mod tests {
    use super::Element;

    #[test]
    fn the_f32_exp_and_erf_stay_within_their_stated_errors() {
        let (mut worst_exp, mut worst_erf) = (0f64, 0f64);
        for i in -200_000..=200_000 {
            let x = i as f32 * 4.5e-4; // [-90, 90] for exp, [-6, 6] for erf below
            let want = f64::from(x).exp();
            let got = f64::from(x.exp_());
            if want > f64::from(f32::MIN_POSITIVE) && x <= 88.37 {
                let ulp = f64::from(f32::EPSILON) * want;
                worst_exp = worst_exp.max((got - want).abs() / ulp);
            }
            let x = i as f32 * 3e-5;
            let want = libm::erf(f64::from(x));
            let got = f64::from(x.erf_());
            if want != 0.0 {
                worst_erf = worst_erf.max((got - want).abs() / want.abs());
            }
        }
        assert!(worst_exp <= 2.0, "exp: {worst_exp} ulp");
        assert!(worst_erf <= 1e-6, "erf: {worst_erf}");
        assert_eq!((-1e4f32).exp_(), 0.0);
        assert_eq!(f32::NEG_INFINITY.exp_(), 0.0);
        assert_eq!(1e4f32.exp_(), f32::INFINITY);
        assert!(f32::NAN.exp_().is_nan() && f32::NAN.erf_().is_nan());
        assert!((10f32.erf_() - 1.0).abs() <= 1e-6 && (-10f32).erf_() == -(10f32.erf_()));
    }

    #[test]
    fn fast_f32_tanh_is_accurate() {
        let mut worst = 0f64;
        for i in -200_000..=200_000 {
            let x = i as f32 * 5e-5;
            let err = (super::tanh_f32(x) as f64 - (x as f64).tanh()).abs();
            worst = worst.max(err / (x as f64).tanh().abs().max(1e-30));
        }
        for x in [20.0f32, -20.0, 1e30, f32::INFINITY] {
            assert_eq!(super::tanh_f32(x), x.signum());
        }
        assert!(worst < 4.8e-7, "worst relative error {worst}");
    }
}
