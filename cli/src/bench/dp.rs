//! Data-parallel workloads, run under `mpirun` in an `mpi` build: the sum of gradients
//! across ranks and W1 steps on the ranks.

use super::*;

/// Workloads run by name only, under `mpirun` in a build with the `mpi` feature.
pub const MPI_WORKLOADS: &[&str] = &["allreduce", "w1_step_dp"];

/// Sums of 4 KiB to 64 MiB of f32 across the processes of `c` through
/// [`Collective::sum_f32`] (the trainer's path): the median time of each size, the
/// algorithmic bandwidth (bytes / time) and the bus bandwidth of a ring all-reduce,
/// 2(N−1)/N · bytes / time. Every process must call this; rank 0's rows are the ones to
/// print. Each sum is checked: every element must come out as 1 + 2 + … + N.
pub fn allreduce(cfg: &BenchConfig, c: &dyn chainrule::train::Collective) -> Result<Vec<BenchRow>> {
    let ranks = c.ranks();
    let want = (ranks * (ranks + 1) / 2) as f32;
    let mine = (c.rank() + 1) as f32;
    let mut rows = Vec::new();
    for kib in [4usize, 16, 64, 256, 1024, 4096, 16384, 65536] {
        let n = kib * 1024 / 4;
        let mut buf = vec![mine; n];
        let once = |buf: &mut Vec<f32>| -> Result<f64> {
            buf.fill(mine);
            let t = Instant::now();
            c.sum_f32(buf)?;
            Ok(t.elapsed().as_secs_f64())
        };
        once(&mut buf)?;
        // every process must make the same number of calls: rank 0's estimate decides
        let mut estimate = [once(&mut buf)? as f32];
        c.broadcast_f32(&mut estimate)?;
        let per_size = cfg.budget.as_secs_f64() / 8.0;
        let reps = (per_size / f64::from(estimate[0]).max(1e-7)).clamp(5.0, 10_000.0) as usize;
        let mut samples = Vec::with_capacity(reps);
        for _ in 0..reps {
            samples.push(once(&mut buf)?);
        }
        let wrong = buf.iter().filter(|&&v| v != want).count();
        if wrong > 0 {
            return Err(Error::invalid(
                "bench allreduce",
                format!("{wrong} of {n} sums differ from {want} ({kib} KiB)"),
            ));
        }
        samples.sort_by(f64::total_cmp);
        let t = Timing {
            median_s: samples[samples.len() / 2],
            min_s: samples[0],
            reps,
        };
        let bytes = (n * 4) as f64;
        let mut row = BenchRow::new(format!("allreduce/{kib}KiB"), t)
            .with("ranks", ranks)
            .with("bytes", bytes)
            .with(
                "bus_gbps",
                2.0 * (ranks as f64 - 1.0) / ranks as f64 * bytes / t.median_s / 1e9,
            );
        row.gbps = Some(bytes / t.median_s / 1e9);
        rows.push(row);
    }
    Ok(rows)
}

/// W1 training steps data-parallel over the processes that `collective()` joins (the
/// global batch of 128 split between them), with the gradient sums after the backward
/// sweep (`w1_step_dp/blocking`) and during it (`w1_step_dp/overlapped`). Each mode runs
/// a fixed number of steps (the processes must make the same calls); the losses of steps
/// 0 and 10 are checked against the single-process anchor. `all_reduce_s` is the median
/// time a step waits for its sums after the sweep; `hidden` is the share of the blocking
/// sums' time that the overlap removed from the step:
/// (blocking step − overlapped step) / blocking all-reduce.
pub fn w1_step_dp(
    collective: &dyn Fn() -> Box<dyn chainrule::train::Collective>,
) -> Result<Vec<BenchRow>> {
    const STEPS: usize = 400;
    let mut rows: Vec<BenchRow> = Vec::new();
    let mut blocking = (f64::NAN, f64::NAN);
    for overlap in [false, true] {
        let mut step = AnchorStep::w1().distributed(collective(), overlap)?;
        let mut losses = Vec::new();
        for _ in 0..11 {
            losses.push(step.step()?);
        }
        let (mut total, mut waits, mut sweeps) = (Vec::new(), Vec::new(), Vec::new());
        for _ in 0..STEPS {
            let t = Instant::now();
            step.step()?;
            total.push(t.elapsed().as_secs_f64());
            waits.push(step.times.all_reduce);
            sweeps.push(step.times.backward);
        }
        let median = |v: &mut Vec<f64>| {
            v.sort_by(f64::total_cmp);
            v[v.len() / 2]
        };
        let min = total.iter().copied().fold(f64::INFINITY, f64::min);
        let t = Timing {
            median_s: median(&mut total),
            min_s: min,
            reps: STEPS,
        };
        let name = if overlap { "overlapped" } else { "blocking" };
        let mut row = BenchRow::new(format!("w1_step_dp/{name}"), t)
            .with("ranks", step.shard.1)
            .with("all_reduce_s", median(&mut waits))
            .with("backward_s", median(&mut sweeps))
            .with("loss@0", losses[0] as f64)
            .with("loss@10", losses[10] as f64);
        if overlap {
            let hidden = (blocking.0 - t.median_s) / blocking.1;
            row = row.with("hidden", hidden);
        } else {
            blocking = (t.median_s, median(&mut waits));
        }
        rows.push(
            row.verify_extra("loss@0", W1_LOSSES[0], LOSS_TOL)?
                .verify_extra("loss@10", W1_LOSSES[1], LOSS_TOL)?,
        );
    }
    Ok(rows)
}
