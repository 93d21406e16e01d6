//! [`Collective`] over MPI (the `mpi` crate, rsmpi): the processes of an MPI job
//! (`mpirun -np N ...`, Slurm's `srun`) train one model. Collectives use the blocking
//! `MPI_Allreduce` and `MPI_Bcast` of the job's world communicator; an MPI error aborts
//! the job (MPI's default handler), so no process is left waiting on one that failed.

use super::Collective;
use crate::error::Result;
use mpi::collective::SystemOperation;
use mpi::datatype::Equivalence;
use mpi::environment::Universe;
use mpi::ffi;
use mpi::raw::AsRaw;
use mpi::topology::SimpleCommunicator;
use mpi::traits::*;
use std::cell::RefCell;
use std::rc::Rc;

/// Elements per MPI call: MPI counts are 32-bit, so longer buffers go in parts.
const PART: usize = 1 << 28;

/// The processes of an MPI communicator, as a [`Collective`].
pub struct MpiCollective {
    world: SimpleCommunicator,
    /// The send buffer of a sum (MPI's reduce reads one buffer and writes another).
    scratch_f32: RefCell<Vec<f32>>,
    /// Sums started with `MPI_Iallreduce`, oldest first.
    pending: RefCell<Vec<PendingSum>>,
    /// MPI stays initialised while any collective made from it lives: the last one (or
    /// the caller's own handle) to go finalises it. Declared last, so dropped last: the
    /// sums above are waited before.
    _universe: Rc<Universe>,
}

/// A non-blocking sum in flight. Its two buffers belong to it alone: nothing reads or
/// writes them, and they are not dropped, until MPI reports the request complete (their
/// heap memory does not move when this struct moves).
struct PendingSum {
    send: Vec<f32>,
    recv: Vec<f32>,
    request: ffi::MPI_Request,
    complete: bool,
    /// The last part of a started sum (a buffer longer than [`PART`] goes in parts).
    ends_sum: bool,
}

impl PendingSum {
    /// Blocks until the sum is done.
    fn wait(&mut self) {
        if !self.complete {
            // SAFETY: an unfinished MPI_Iallreduce request; the buffers MPI writes are
            // owned by `self` and alive. (Before MPI_Finalize: the collective that owns the sum holds the universe and drops it last.)
            unsafe { ffi::MPI_Wait(&mut self.request, ffi::RSMPI_STATUS_IGNORE) };
            self.complete = true;
        }
    }
}

impl MpiCollective {
    /// The processes of `universe`'s world (`Rc::new(mpi::initialize()?)`). The
    /// collective holds the universe, so it cannot outlive MPI: several collectives
    /// (and the caller) may share one.
    pub fn new(universe: Rc<Universe>) -> Self {
        MpiCollective {
            world: universe.world(),
            _universe: universe,
            scratch_f32: RefCell::new(Vec::new()),
            pending: RefCell::new(Vec::new()),
        }
    }
}

impl Drop for PendingSum {
    /// A sum still in flight keeps its buffers until MPI is done with them, however it
    /// is dropped: with the collective, or while a panic in `finish_sums`'s callback
    /// unwinds past the sums after it (freeing them unwaited would leave MPI writing
    /// into freed memory).
    fn drop(&mut self) {
        self.wait();
    }
}

impl Collective for MpiCollective {
    fn rank(&self) -> usize {
        usize::try_from(self.world.rank()).unwrap_or(0)
    }
    fn ranks(&self) -> usize {
        usize::try_from(self.world.size()).unwrap_or(1)
    }
    fn sum_f32(&self, values: &mut [f32]) -> Result<()> {
        let mut send = self.scratch_f32.borrow_mut();
        for part in values.chunks_mut(PART) {
            send.clear();
            send.extend_from_slice(part);
            self.world
                .all_reduce_into(&send[..], part, SystemOperation::sum());
        }
        Ok(())
    }
    fn overlaps(&self) -> bool {
        true
    }
    fn start_sum_f32(&self, values: &[f32]) -> Result<()> {
        let mut pending = self.pending.borrow_mut();
        if values.is_empty() {
            // nothing to send, but a result to hand back in its turn
            pending.push(PendingSum {
                send: Vec::new(),
                recv: Vec::new(),
                // SAFETY: RSMPI_REQUEST_NULL is a constant initialised by the MPI library.
                request: unsafe { ffi::RSMPI_REQUEST_NULL },
                complete: true,
                ends_sum: true,
            });
            return Ok(());
        }
        let parts = values.len().div_ceil(PART);
        for (i, part) in values.chunks(PART).enumerate() {
            let send = part.to_vec();
            let mut recv = vec![0.0f32; part.len()];
            let count = i32::try_from(part.len()).expect("parts hold at most 2^28 elements");
            // SAFETY: RSMPI_REQUEST_NULL is a constant initialised by the MPI library.
            let mut request = unsafe { ffi::RSMPI_REQUEST_NULL };
            // The buffers move untouched into the PendingSum below, which keeps them
            // until the request completes (`finish_sums` or `Drop` waits for it).
            // SAFETY: `send` and `recv` are owned copies of `count` floats each.
            unsafe {
                ffi::MPI_Iallreduce(
                    send.as_ptr().cast(),
                    recv.as_mut_ptr().cast(),
                    count,
                    f32::equivalent_datatype().as_raw(),
                    SystemOperation::sum().as_raw(),
                    self.world.as_raw(),
                    &mut request,
                )
            };
            pending.push(PendingSum {
                send,
                recv,
                request,
                complete: false,
                ends_sum: i + 1 == parts,
            });
        }
        Ok(())
    }
    fn progress(&self) -> Result<()> {
        for p in self.pending.borrow_mut().iter_mut().filter(|p| !p.complete) {
            let mut done = 0;
            // SAFETY: as in `PendingSum::wait`; MPI_Test only polls the request.
            unsafe { ffi::MPI_Test(&mut p.request, &mut done, ffi::RSMPI_STATUS_IGNORE) };
            p.complete = done != 0;
        }
        Ok(())
    }
    fn finish_sums(&self, write: &mut dyn FnMut(usize, &[f32])) -> Result<()> {
        let pending = std::mem::take(&mut *self.pending.borrow_mut());
        let mut index = 0;
        let mut joined: Vec<f32> = Vec::new();
        for mut p in pending {
            p.wait();
            drop(std::mem::take(&mut p.send));
            if !p.ends_sum {
                joined.extend_from_slice(&p.recv);
            } else if joined.is_empty() {
                write(index, &p.recv);
                index += 1;
            } else {
                joined.extend_from_slice(&p.recv);
                write(index, &joined);
                joined.clear();
                index += 1;
            }
        }
        Ok(())
    }
    fn sum_f64(&self, values: &mut [f64]) -> Result<()> {
        for part in values.chunks_mut(PART) {
            let send = part.to_vec();
            self.world
                .all_reduce_into(&send[..], part, SystemOperation::sum());
        }
        Ok(())
    }
    fn broadcast_f32(&self, values: &mut [f32]) -> Result<()> {
        let root = self.world.process_at_rank(0);
        for part in values.chunks_mut(PART) {
            root.broadcast_into(part);
        }
        Ok(())
    }
    fn broadcast_bytes(&self, bytes: &mut Vec<u8>) -> Result<()> {
        let root = self.world.process_at_rank(0);
        let mut len = bytes.len() as u64;
        root.broadcast_into(&mut len);
        bytes.resize(usize::try_from(len).unwrap_or(0), 0);
        for part in bytes.chunks_mut(PART) {
            root.broadcast_into(part);
        }
        Ok(())
    }
}
