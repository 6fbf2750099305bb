//! `Collective` over Open MPI (rsmpi, `--features mpi`): MPI_COMM_WORLD, the built-in SUM / MAX for
//! f32 and f64, and two user-defined reductions (`MPI_Op_create`) for the narrow payloads, whose
//! bodies are `crate::wire`'s E4M3 and bf16 additions. Errors are fatal (Open MPI's default
//! `MPI_ERRORS_ARE_FATAL`), and a rank that dies makes mpirun end the job.

use std::ffi::{c_int, c_void};

use mpi::collective::{SystemOperation, UnsafeUserOperation};
use mpi::environment::Universe;
use mpi::ffi::MPI_Datatype;
use mpi::topology::SimpleCommunicator;
use mpi::traits::*;

use crate::{Collective, Counter, Kind, ReduceOp, Traffic, wire};

/// MPI_COMM_WORLD of this job. Finalises MPI when dropped.
pub struct Mpi {
    world: SimpleCommunicator,
    e4m3_sum: UnsafeUserOperation,
    bf16_sum: UnsafeUserOperation,
    counter: Counter,
    // Declared last: dropped (MPI_Finalize) after the operations are freed.
    _universe: Universe,
}

/// MPI user function: `inout[i] = in[i] (+) inout[i]` over `len` E4M3 codes (MPI_UINT8_T).
unsafe extern "C" fn e4m3_sum(invec: *mut c_void, inout: *mut c_void, len: *mut c_int, _: *mut MPI_Datatype) {
    // SAFETY: MPI passes two buffers of `*len` elements of the operation's datatype (u8), disjoint.
    unsafe {
        let n = *len as usize;
        let x = std::slice::from_raw_parts(invec as *const u8, n);
        let acc = std::slice::from_raw_parts_mut(inout as *mut u8, n);
        wire::e4m3_add_into(acc, x);
    }
}

/// MPI user function: the same for bf16 bit patterns (MPI_UINT16_T).
unsafe extern "C" fn bf16_sum(invec: *mut c_void, inout: *mut c_void, len: *mut c_int, _: *mut MPI_Datatype) {
    // SAFETY: as `e4m3_sum`, with u16 elements.
    unsafe {
        let n = *len as usize;
        let x = std::slice::from_raw_parts(invec as *const u16, n);
        let acc = std::slice::from_raw_parts_mut(inout as *mut u16, n);
        wire::bf16_add_into(acc, x);
    }
}

impl Mpi {
    /// Initialise MPI (once per process) and take MPI_COMM_WORLD.
    pub fn init() -> Result<Mpi, String> {
        let universe = mpi::initialize().ok_or("MPI was already initialised in this process")?;
        let world = universe.world();
        // SAFETY: both functions handle any length of their datatype and never panic (wire.rs);
        // both additions are commutative (and associative up to rounding, as MPI allows for
        // floating-point reductions).
        let (e4m3_sum, bf16_sum) =
            unsafe { (UnsafeUserOperation::commutative(e4m3_sum), UnsafeUserOperation::commutative(bf16_sum)) };
        Ok(Mpi { world, e4m3_sum, bf16_sum, counter: Counter::default(), _universe: universe })
    }
    fn n(&self) -> usize {
        self.size()
    }
}

fn system(op: ReduceOp) -> SystemOperation {
    match op {
        ReduceOp::Sum => SystemOperation::sum(),
        ReduceOp::Max => SystemOperation::max(),
    }
}

impl Collective for Mpi {
    fn rank(&self) -> usize {
        self.world.rank() as usize
    }
    fn size(&self) -> usize {
        self.world.size() as usize
    }
    fn name(&self) -> &'static str {
        "mpi"
    }
    fn all_reduce_f32(&self, buf: &mut [f32], op: ReduceOp) {
        let send = buf.to_vec();
        self.world.all_reduce_into(&send[..], buf, system(op));
        self.counter.record(Kind::AllReduce, size_of_val(buf), self.n());
    }
    fn all_reduce_f64(&self, buf: &mut [f64], op: ReduceOp) {
        let send = buf.to_vec();
        self.world.all_reduce_into(&send[..], buf, system(op));
        self.counter.record(Kind::AllReduce, size_of_val(buf), self.n());
    }
    fn all_reduce_bf16(&self, buf: &mut [u16]) {
        let send = buf.to_vec();
        self.world.all_reduce_into(&send[..], buf, &self.bf16_sum);
        self.counter.record(Kind::AllReduce, size_of_val(buf), self.n());
    }
    fn all_reduce_e4m3(&self, buf: &mut [u8]) {
        let send = buf.to_vec();
        self.world.all_reduce_into(&send[..], buf, &self.e4m3_sum);
        self.counter.record(Kind::AllReduce, buf.len(), self.n());
    }
    fn reduce_scatter_e4m3(&self, send: &[u8], recv: &mut [u8]) {
        assert_eq!(send.len(), recv.len() * self.n(), "reduce_scatter: send must be size() blocks of recv's length");
        self.world.reduce_scatter_block_into(send, recv, &self.e4m3_sum);
        self.counter.record(Kind::ReduceScatter, send.len(), self.n());
    }
    fn all_gather_bytes(&self, send: &[u8], recv: &mut [u8]) {
        assert_eq!(recv.len(), send.len() * self.n(), "all_gather: recv must be size() blocks of send's length");
        self.world.all_gather_into(send, recv);
        self.counter.record(Kind::AllGather, recv.len(), self.n());
    }
    fn broadcast_bytes(&self, buf: &mut [u8], root: usize) {
        self.world.process_at_rank(root as i32).broadcast_into(buf);
        self.counter.record(Kind::Broadcast, buf.len(), self.n());
    }
    fn barrier(&self) {
        self.world.barrier();
    }
    fn abort(&self, code: i32) -> ! {
        self.world.abort(code)
    }
    fn traffic(&self) -> Traffic {
        self.counter.traffic()
    }
}
