//! The machine's limits, measured where the benchmarks run: multiply-add throughput of
//! one core and of every core (f32 and f64, on the widest vector unit the CPU has:
//! AVX-512, AVX2 with FMA, or the x86-64 baseline) and memory bandwidth (a STREAM-style
//! triad over buffers larger than the last-level cache). Each workload row is then placed
//! against the peak that bounds it: its share of peak says how much room is left.

use serde::Serialize;
use std::time::Instant;

/// Independent multiply-add chains per vector register file: enough to cover the latency
/// of two FMA units (4 cycles each) several times over.
const CHAINS: usize = 12;

/// The measured limits.
#[derive(Clone, Debug, Serialize)]
pub struct Peaks {
    /// The CPU, as the operating system names it.
    pub cpu: String,
    /// The vector unit the multiply-add loops ran on (`avx512`, `avx2+fma`, `baseline`).
    pub isa: &'static str,
    /// Threads of the rayon pool (the "all cores" figures use each of them).
    pub threads: usize,
    /// f32 multiply-add throughput of one core, GFLOP/s (a multiply-add counts 2).
    pub f32_one_gflops: f64,
    /// f32 multiply-add throughput of all threads, GFLOP/s.
    pub f32_all_gflops: f64,
    /// f64 multiply-add throughput of one core, GFLOP/s.
    pub f64_one_gflops: f64,
    /// f64 multiply-add throughput of all threads, GFLOP/s.
    pub f64_all_gflops: f64,
    /// Triad bandwidth of one core, GB/s (24 bytes per element, STREAM's count).
    pub triad_one_gbps: f64,
    /// Triad bandwidth of all threads, GB/s.
    pub triad_all_gbps: f64,
}

/// `n` rounds of `acc[i] = acc[i]·a + b` on every chain: written for any lane count, so
/// that inside a function compiled for a vector unit the lanes fill its registers.
#[inline(always)]
fn fma_rounds<T: num_traits::Float, const N: usize>(acc: &mut [T; N], a: T, b: T, n: usize) {
    for _ in 0..n {
        for x in acc.iter_mut() {
            *x = x.mul_add(a, b);
        }
    }
}

/// The same rounds as a multiply then an add, for CPUs without a fused multiply-add
/// (where `mul_add` would call a slow software routine).
#[inline(always)]
fn mul_add_rounds<T: num_traits::Float, const N: usize>(acc: &mut [T; N], a: T, b: T, n: usize) {
    for _ in 0..n {
        for x in acc.iter_mut() {
            *x = *x * a + b;
        }
    }
}

/// `n` rounds on `N` lanes, fused (`fma`) or as a multiply then an add: the sum of the
/// chains (so the work cannot be dropped) and the floating-point operations done.
#[inline(always)]
fn run_chains<T: num_traits::Float + Into<f64>, const N: usize>(
    fma: bool,
    a: T,
    b: T,
    n: usize,
) -> (f64, f64) {
    let mut acc = [T::one(); N];
    if fma {
        fma_rounds(&mut acc, a, b, n);
    } else {
        mul_add_rounds(&mut acc, a, b, n);
    }
    (acc.iter().map(|&v| v.into()).sum(), (2 * N * n) as f64)
}

/// The kernels, one per vector unit and precision, with as many lanes as the unit holds
/// times [`CHAINS`].
#[cfg(target_arch = "x86_64")]
mod x86 {
    use super::{CHAINS, run_chains};

    #[target_feature(enable = "avx512f,fma")]
    pub fn f32_avx512(n: usize) -> (f64, f64) {
        run_chains::<f32, { 16 * CHAINS }>(true, 0.999_99, 1e-6, n)
    }
    #[target_feature(enable = "avx512f,fma")]
    pub fn f64_avx512(n: usize) -> (f64, f64) {
        run_chains::<f64, { 8 * CHAINS }>(true, 0.999_999, 1e-7, n)
    }
    #[target_feature(enable = "avx2,fma")]
    pub fn f32_avx2(n: usize) -> (f64, f64) {
        run_chains::<f32, { 8 * CHAINS }>(true, 0.999_99, 1e-6, n)
    }
    #[target_feature(enable = "avx2,fma")]
    pub fn f64_avx2(n: usize) -> (f64, f64) {
        run_chains::<f64, { 4 * CHAINS }>(true, 0.999_999, 1e-7, n)
    }
}

fn f32_baseline(n: usize) -> (f64, f64) {
    run_chains::<f32, { 4 * CHAINS }>(false, 0.999_99, 1e-6, n)
}

fn f64_baseline(n: usize) -> (f64, f64) {
    run_chains::<f64, { 2 * CHAINS }>(false, 0.999_999, 1e-7, n)
}

/// The widest vector unit this CPU has that the kernels can use.
fn isa() -> &'static str {
    #[cfg(target_arch = "x86_64")]
    {
        if is_x86_feature_detected!("avx512f") && is_x86_feature_detected!("fma") {
            return "avx512";
        }
        if is_x86_feature_detected!("avx2") && is_x86_feature_detected!("fma") {
            return "avx2+fma";
        }
    }
    "baseline"
}

/// Runs the kernel of `isa` for precision `f64` (else f32) with `n` rounds.
fn kernel(isa: &str, f64: bool, n: usize) -> (f64, f64) {
    #[cfg(target_arch = "x86_64")]
    {
        // Each kernel needs the features named on it. `isa` comes from `isa()` (the
        // callers are private to this module), which names a vector unit only after
        // detecting exactly those features on this CPU at run time.
        match (isa, f64) {
            // SAFETY: "avx512" means AVX-512F and FMA were detected (above).
            ("avx512", false) => return unsafe { x86::f32_avx512(n) },
            // SAFETY: as above, AVX-512F and FMA were detected.
            ("avx512", true) => return unsafe { x86::f64_avx512(n) },
            // SAFETY: "avx2+fma" means AVX2 and FMA were detected (above).
            ("avx2+fma", false) => return unsafe { x86::f32_avx2(n) },
            // SAFETY: as above, AVX2 and FMA were detected.
            ("avx2+fma", true) => return unsafe { x86::f64_avx2(n) },
            _ => {}
        }
    }
    let _ = isa;
    if f64 {
        f64_baseline(n)
    } else {
        f32_baseline(n)
    }
}

/// The best GFLOP/s of `tries` runs of the kernel: on one thread, or on every thread of
/// the rayon pool at once.
fn flops_peak(isa: &'static str, f64: bool, all: bool, tries: usize) -> f64 {
    // calibrate the rounds to about 40 ms on one thread
    let mut n = 1 << 14;
    loop {
        let t = Instant::now();
        std::hint::black_box(kernel(isa, f64, std::hint::black_box(n)));
        let s = t.elapsed().as_secs_f64();
        if s > 0.01 || n > 1 << 30 {
            n = ((n as f64) * 0.04 / s.max(1e-9)) as usize;
            break;
        }
        n *= 4;
    }
    // The kernel is a pure function of its arguments: with `n` known to the optimiser it
    // may compute it once, outside the timed loop (LLVM did, and one core "reached"
    // 84 million GFLOP/s). `black_box(n)` after the clock starts makes every call's
    // argument unknown until then, so each timed call does its work inside the timing.
    let mut best = 0.0f64;
    for _ in 0..tries {
        let t = Instant::now();
        let flops: f64 = if all {
            rayon::broadcast(|_| std::hint::black_box(kernel(isa, f64, std::hint::black_box(n))).1)
                .iter()
                .sum()
        } else {
            std::hint::black_box(kernel(isa, f64, std::hint::black_box(n))).1
        };
        best = best.max(flops / t.elapsed().as_secs_f64() / 1e9);
    }
    best
}

/// The best triad bandwidth of `tries` passes `a = b + s·c` over f64 buffers of 2²³
/// elements each (192 MiB in all, past any last-level cache), on one thread or on all.
fn triad_peak(all: bool, tries: usize) -> f64 {
    use rayon::prelude::*;
    const N: usize = 1 << 23;
    const CHUNK: usize = 1 << 16;
    let mut a = vec![0.0f64; N];
    let b = vec![1.0f64; N];
    let c = vec![2.0f64; N];
    let s = std::hint::black_box(3.0);
    let mut best = 0.0f64;
    for _ in 0..tries {
        let t = Instant::now();
        if all {
            a.par_chunks_mut(CHUNK)
                .zip(b.par_chunks(CHUNK).zip(c.par_chunks(CHUNK)))
                .for_each(|(a, (b, c))| {
                    for ((a, b), c) in a.iter_mut().zip(b).zip(c) {
                        *a = b + s * c;
                    }
                });
        } else {
            for ((a, b), c) in a.iter_mut().zip(&b).zip(&c) {
                *a = b + s * c;
            }
        }
        let secs = t.elapsed().as_secs_f64();
        std::hint::black_box(&a);
        best = best.max(24.0 * N as f64 / secs / 1e9);
    }
    best
}

/// The CPU's model name (`/proc/cpuinfo` on Linux), or the architecture elsewhere.
pub fn cpu_name() -> String {
    std::fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|s| {
            s.lines()
                .find_map(|l| l.strip_prefix("model name"))
                .and_then(|l| l.split_once(':'))
                .map(|(_, v)| v.trim().to_string())
        })
        .unwrap_or_else(|| std::env::consts::ARCH.to_string())
}

/// Measures the peaks (about a second and a half).
pub fn measure_peaks() -> Peaks {
    let isa = isa();
    Peaks {
        cpu: cpu_name(),
        isa,
        threads: rayon::current_num_threads(),
        f32_one_gflops: flops_peak(isa, false, false, 5),
        f32_all_gflops: flops_peak(isa, false, true, 5),
        f64_one_gflops: flops_peak(isa, true, false, 5),
        f64_all_gflops: flops_peak(isa, true, true, 5),
        triad_one_gbps: triad_peak(false, 5),
        triad_all_gbps: triad_peak(true, 5),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_kernel_does_the_same_arithmetic() {
        // the kernels' results agree with the baseline's per chain (same recurrence)
        let isa = isa();
        for f64 in [false, true] {
            let (sum, flops) = kernel(isa, f64, 1000);
            let (base, base_flops) = if f64 {
                f64_baseline(1000)
            } else {
                f32_baseline(1000)
            };
            let per_chain = |s: f64, fl: f64| s / (fl / 2.0 / 1000.0);
            assert!(
                (per_chain(sum, flops) - per_chain(base, base_flops)).abs() < 1e-4,
                "{isa} f64={f64}: {sum} over {flops} against {base} over {base_flops}"
            );
        }
    }
}
