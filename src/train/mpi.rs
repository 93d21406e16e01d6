//! [`Collective`] over MPI (the `mpi` crate, rsmpi): the processes of an MPI job
//! (`mpirun -np N ...`, Slurm's `srun`) train one model. Collectives use the blocking
//! `MPI_Allreduce` and `MPI_Bcast` of the job's world communicator; an MPI error aborts
//! the job (MPI's default handler), so no process is left waiting on one that failed.

use super::Collective;
use crate::error::Result;
use mpi::collective::SystemOperation;
use mpi::topology::SimpleCommunicator;
use mpi::traits::*;
use std::cell::RefCell;

/// Elements per MPI call: MPI counts are 32-bit, so longer buffers go in parts.
const PART: usize = 1 << 28;

/// The processes of an MPI communicator, as a [`Collective`].
pub struct MpiCollective {
    world: SimpleCommunicator,
    /// The send buffer of a sum (MPI's reduce reads one buffer and writes another).
    scratch_f32: RefCell<Vec<f32>>,
}

impl MpiCollective {
    /// The processes of `world` (usually `mpi::initialize()`'s `universe.world()`).
    pub fn new(world: SimpleCommunicator) -> Self {
        MpiCollective {
            world,
            scratch_f32: RefCell::new(Vec::new()),
        }
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
