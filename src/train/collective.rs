//! Data-parallel training: N processes train one model, each on its share of every
//! global batch. What the trainer needs from the processes' transport is four collective
//! operations ([`Collective`]); `train::mpi` (cargo feature `mpi`) provides them over MPI.
//! Gradients are weighted by each share's size before they are summed, so the summed
//! gradient is the gradient of the global batch, as one process would compute it.

use crate::error::Result;

/// The collective operations of a group of processes that train one model. Every process
/// of the group must make the same calls in the same order with buffers of the same
/// lengths (the trainer does: all of them run the same loop on the same shapes).
pub trait Collective {
    /// This process's index, 0 ..= `ranks() − 1`; rank 0 writes the run's files.
    fn rank(&self) -> usize;
    /// How many processes train together.
    fn ranks(&self) -> usize;
    /// Replaces `values` on every process by their elementwise sum over all processes.
    fn sum_f32(&self, values: &mut [f32]) -> Result<()>;
    /// Replaces `values` on every process by their elementwise sum over all processes.
    fn sum_f64(&self, values: &mut [f64]) -> Result<()>;
    /// Replaces `values` on every process by rank 0's.
    fn broadcast_f32(&self, values: &mut [f32]) -> Result<()>;
    /// Replaces `bytes` on every process by rank 0's (any length).
    fn broadcast_bytes(&self, bytes: &mut Vec<u8>) -> Result<()>;

    /// Whether [`Collective::start_sum_f32`] returns before the sum is done, so that a
    /// trainer can sum each gradient while the backward sweep computes the next one.
    fn overlaps(&self) -> bool {
        false
    }
    /// Starts summing a copy of `values` over all processes and returns at once; the
    /// sums started are completed, in order, by [`Collective::finish_sums`]. Only called
    /// when [`Collective::overlaps`] says so.
    fn start_sum_f32(&self, values: &[f32]) -> Result<()> {
        let _ = values;
        Err(crate::error::Error::invalid(
            "start_sum_f32",
            "this collective sums only blocking (sum_f32)",
        ))
    }
    /// Lets started sums advance (an MPI library moves a non-blocking collective only
    /// inside MPI calls).
    fn progress(&self) -> Result<()> {
        Ok(())
    }
    /// Waits for every started sum and hands each result, in the order the sums were
    /// started, to `write(i, sum)`.
    fn finish_sums(&self, write: &mut dyn FnMut(usize, &[f32])) -> Result<()> {
        let _ = write;
        Ok(())
    }

    /// True on every process when `flag` is true on any of them.
    fn any(&self, flag: bool) -> Result<bool> {
        let mut v = [f64::from(u8::from(flag))];
        self.sum_f64(&mut v)?;
        Ok(v[0] > 0.0)
    }
}

/// FNV-1a over 32-bit words: what the processes of a data-parallel run compare to tell
/// that their data or parameters are the same (not a cryptographic hash; fast on
/// hundreds of megabytes).
pub fn fingerprint(words: impl Iterator<Item = u32>) -> u64 {
    words.fold(0xcbf2_9ce4_8422_2325u64, |h, w| {
        (h ^ u64::from(w)).wrapping_mul(0x0000_0100_0000_01b3)
    })
}

/// This process's share of a global batch of `len` rows: rows `len·r/N .. len·(r+1)/N`
/// for rank r of N (shares differ by at most one row).
pub fn share(len: usize, rank: usize, ranks: usize) -> std::ops::Range<usize> {
    let ranks = ranks.max(1);
    len * rank / ranks..len * (rank + 1) / ranks
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn shares_cover_the_batch_once_and_differ_by_at_most_one_row() {
        for len in [1, 2, 7, 32, 129] {
            for ranks in 1..=5 {
                let parts: Vec<_> = (0..ranks).map(|r| share(len, r, ranks)).collect();
                assert_eq!(parts[0].start, 0);
                assert_eq!(parts[ranks - 1].end, len);
                for w in parts.windows(2) {
                    assert_eq!(w[0].end, w[1].start);
                }
                let sizes: Vec<usize> = parts.iter().map(|p| p.len()).collect();
                let (lo, hi) = (sizes.iter().min().unwrap(), sizes.iter().max().unwrap());
                assert!(hi - lo <= 1, "{len} rows over {ranks}: {sizes:?}");
            }
        }
    }
}
