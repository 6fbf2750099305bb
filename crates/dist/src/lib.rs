//! octet-dist: the one `Collective` interface data-parallel training talks through (all-reduce,
//! reduce-scatter, all-gather, broadcast, barrier), with a single-process implementation (the
//! default) and Open MPI (`--features mpi`, rsmpi); the wire arithmetic of the narrow all-reduces
//! (`wire`: E4M3 and bf16 sums, the custom MPI reductions' bodies); FP8-LM's greedy whole-tensor
//! ZeRO partition (`zero`).
//!
//! Every implementation counts what it moves in one `Counter`, so the bytes a run reports are
//! measured at the interface, not estimated by the trainer. Two numbers per collective:
//! - `payload`: the bytes of this rank's buffer handed to the call (all-reduce: the buffer;
//!   reduce-scatter: the send buffer; all-gather: the receive buffer; broadcast: the buffer);
//! - `wire`: what a bandwidth-optimal ring sends per rank for it, with N ranks: all-reduce
//!   `2 (N-1)/N * payload`, reduce-scatter and all-gather `(N-1)/N * payload`, broadcast `(N-1)/N *
//!   payload` (pipelined). MPI may pick another algorithm; the ratios between levels are the same.

pub mod wire;
pub mod zero;

#[cfg(feature = "mpi")]
pub mod mpi;

use std::sync::atomic::{AtomicU64, Ordering};

/// Whether this build has the MPI implementation (`--features mpi`).
pub const MPI_BUILT: bool = cfg!(feature = "mpi");

/// A reduction of the plain (f32 / f64) collectives.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ReduceOp {
    Sum,
    Max,
}

/// Bytes moved so far, per kind of collective (see the module doc for `payload` vs `wire`).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Traffic {
    pub calls: u64,
    pub all_reduce: u64,
    pub reduce_scatter: u64,
    pub all_gather: u64,
    pub broadcast: u64,
    /// Ring-equivalent bytes this rank sends for all of the above.
    pub wire: u64,
}

impl Traffic {
    /// Payload bytes over every kind.
    pub fn payload(&self) -> u64 {
        self.all_reduce + self.reduce_scatter + self.all_gather + self.broadcast
    }
    /// Both counts added.
    pub fn plus(&self, o: &Traffic) -> Traffic {
        Traffic {
            calls: self.calls + o.calls,
            all_reduce: self.all_reduce + o.all_reduce,
            reduce_scatter: self.reduce_scatter + o.reduce_scatter,
            all_gather: self.all_gather + o.all_gather,
            broadcast: self.broadcast + o.broadcast,
            wire: self.wire + o.wire,
        }
    }
    /// What moved between `earlier` and `self`.
    pub fn since(&self, earlier: &Traffic) -> Traffic {
        Traffic {
            calls: self.calls - earlier.calls,
            all_reduce: self.all_reduce - earlier.all_reduce,
            reduce_scatter: self.reduce_scatter - earlier.reduce_scatter,
            all_gather: self.all_gather - earlier.all_gather,
            broadcast: self.broadcast - earlier.broadcast,
            wire: self.wire - earlier.wire,
        }
    }
}

/// Kinds of collective, for counting.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Kind {
    AllReduce,
    ReduceScatter,
    AllGather,
    Broadcast,
}

/// The byte counters every implementation updates (atomics: collectives take `&self`).
#[derive(Debug, Default)]
pub struct Counter {
    calls: AtomicU64,
    all_reduce: AtomicU64,
    reduce_scatter: AtomicU64,
    all_gather: AtomicU64,
    broadcast: AtomicU64,
    wire: AtomicU64,
}

impl Counter {
    /// Record one call of `kind` with `payload` bytes among `n` ranks.
    pub fn record(&self, kind: Kind, payload: usize, n: usize) {
        let p = payload as u64;
        let n = n.max(1) as u64;
        let (slot, wire) = match kind {
            Kind::AllReduce => (&self.all_reduce, 2 * (n - 1) * p / n),
            Kind::ReduceScatter => (&self.reduce_scatter, (n - 1) * p / n),
            Kind::AllGather => (&self.all_gather, (n - 1) * p / n),
            Kind::Broadcast => (&self.broadcast, (n - 1) * p / n),
        };
        self.calls.fetch_add(1, Ordering::Relaxed);
        slot.fetch_add(p, Ordering::Relaxed);
        self.wire.fetch_add(wire, Ordering::Relaxed);
    }
    pub fn traffic(&self) -> Traffic {
        let l = |a: &AtomicU64| a.load(Ordering::Relaxed);
        Traffic {
            calls: l(&self.calls),
            all_reduce: l(&self.all_reduce),
            reduce_scatter: l(&self.reduce_scatter),
            all_gather: l(&self.all_gather),
            broadcast: l(&self.broadcast),
            wire: l(&self.wire),
        }
    }
}

/// Collective operations over the ranks of one job. Every rank calls the same operations in the same
/// order with buffers of the same lengths (MPI's rule); a dead rank ends the job (Open MPI aborts
/// it), it never hangs the others.
pub trait Collective {
    fn rank(&self) -> usize;
    fn size(&self) -> usize;
    /// "single", "mpi".
    fn name(&self) -> &'static str;
    /// Element-wise `op` over all ranks, result on every rank.
    fn all_reduce_f32(&self, buf: &mut [f32], op: ReduceOp);
    fn all_reduce_f64(&self, buf: &mut [f64], op: ReduceOp);
    /// Sum of bf16 bit patterns: each addition in f32, rounded to bf16 (`wire::bf16_add_into`).
    fn all_reduce_bf16(&self, buf: &mut [u16]);
    /// Sum of E4M3 codes under one shared scale: each addition decodes, adds (exactly, in f32) and
    /// re-encodes, rounding to nearest even and saturating at +-448 (`wire::e4m3_add_into`).
    fn all_reduce_e4m3(&self, buf: &mut [u8]);
    /// Reduce-scatter of E4M3 codes (sums as `all_reduce_e4m3`): `send` is `size()` equal blocks,
    /// block r for rank r; this rank receives the sum of everyone's block `rank()` in `recv`.
    fn reduce_scatter_e4m3(&self, send: &[u8], recv: &mut [u8]);
    /// Gather equal blocks: `recv` is `size()` blocks of `send.len()` bytes, block r from rank r.
    fn all_gather_bytes(&self, send: &[u8], recv: &mut [u8]);
    fn broadcast_bytes(&self, buf: &mut [u8], root: usize);
    fn barrier(&self);
    /// End the whole job with `code` (MPI_Abort): the way out of an error on one rank, since the
    /// others would wait for it in their next collective.
    fn abort(&self, code: i32) -> !;
    /// Bytes moved so far (see the module doc).
    fn traffic(&self) -> Traffic;
}

/// The job of one process: every reduction is the identity, every gather a copy. Counts payload
/// like the others (wire bytes are 0 with one rank).
#[derive(Debug, Default)]
pub struct Single {
    counter: Counter,
}

impl Single {
    pub fn new() -> Self {
        Single::default()
    }
}

impl Collective for Single {
    fn rank(&self) -> usize {
        0
    }
    fn size(&self) -> usize {
        1
    }
    fn name(&self) -> &'static str {
        "single"
    }
    fn all_reduce_f32(&self, buf: &mut [f32], _: ReduceOp) {
        self.counter.record(Kind::AllReduce, size_of_val(buf), 1);
    }
    fn all_reduce_f64(&self, buf: &mut [f64], _: ReduceOp) {
        self.counter.record(Kind::AllReduce, size_of_val(buf), 1);
    }
    fn all_reduce_bf16(&self, buf: &mut [u16]) {
        self.counter.record(Kind::AllReduce, size_of_val(buf), 1);
    }
    fn all_reduce_e4m3(&self, buf: &mut [u8]) {
        self.counter.record(Kind::AllReduce, buf.len(), 1);
    }
    fn reduce_scatter_e4m3(&self, send: &[u8], recv: &mut [u8]) {
        recv.copy_from_slice(send);
        self.counter.record(Kind::ReduceScatter, send.len(), 1);
    }
    fn all_gather_bytes(&self, send: &[u8], recv: &mut [u8]) {
        recv.copy_from_slice(send);
        self.counter.record(Kind::AllGather, recv.len(), 1);
    }
    fn broadcast_bytes(&self, buf: &mut [u8], _: usize) {
        self.counter.record(Kind::Broadcast, buf.len(), 1);
    }
    fn barrier(&self) {}
    fn abort(&self, code: i32) -> ! {
        std::process::exit(code)
    }
    fn traffic(&self) -> Traffic {
        self.counter.traffic()
    }
}

/// Whether this process was started by `mpirun` / `mpiexec` (Open MPI, or a PMI launcher).
pub fn launched_by_mpirun() -> Option<usize> {
    ["OMPI_COMM_WORLD_SIZE", "PMI_SIZE", "PMIX_SIZE"]
        .iter()
        .find_map(|k| std::env::var(k).ok())
        .and_then(|v| v.parse().ok())
        .or_else(|| std::env::var("PMIX_RANK").ok().map(|_| 0))
}

/// The job this process belongs to: MPI when started by mpirun (and built with `--features mpi`),
/// else one process. Initialises MPI, which a process may do only once: call this once, early.
pub fn init() -> Result<Box<dyn Collective>, String> {
    let Some(n) = launched_by_mpirun() else { return Ok(Box::new(Single::new())) };
    #[cfg(feature = "mpi")]
    {
        let _ = n;
        Ok(Box::new(mpi::Mpi::init()?))
    }
    #[cfg(not(feature = "mpi"))]
    {
        if n <= 1 {
            return Ok(Box::new(Single::new()));
        }
        Err(format!(
            "started by mpirun with {n} processes, but this octet was built without MPI: rebuild with \
             `cargo build --release --features octet-cli/mpi` (needs libopenmpi-dev and libclang-dev)"
        ))
    }
}
