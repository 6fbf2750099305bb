//! `octet_dist::Collective` over NCCL (cudarc's `nccl` feature, built with `--features cuda`; NCCL
//! itself is loaded at run time, so building needs no NCCL). The unique id is made by rank 0 and
//! shipped over the job's MPI collective (`Nccl::new(boot, ...)`), so `mpirun -np N` starts an NCCL
//! job as it starts an MPI one.
//!
//! The interface takes host slices (the trainer's gradients are host-addressable: managed memory on
//! the device backend), so each call stages through one device buffer: copy in, the NCCL collective
//! on this GPU's stream, copy out, synchronise. E4M3 sums use NCCL's own FP8 type
//! (`ncclFloat8e4m3`, NCCL >= 2.24), which adds in f32 and rounds back like `octet_dist::wire`; bf16
//! sums use `ncclBfloat16`.
//!
//! Not run here: the machines this was written on have no GPU, and the GPU machines available to the
//! project have one GPU each, so NCCL can only ever be checked there with a one-rank communicator.
//! This file is compiled (and clippy-checked) by every `--features cuda` build; no test exercises it.

use std::sync::Arc;

use cudarc::driver::{CudaContext, CudaSlice, CudaStream, DeviceRepr};
use cudarc::nccl::safe::{Comm, Id, NcclType, ReduceOp as NcclOp};
use cudarc::nccl::sys::ncclDataType_t;
use octet_dist::{Collective, Counter, Kind, ReduceOp, Traffic};

/// An E4M3 code, as NCCL's FP8 element type.
#[repr(transparent)]
#[derive(Clone, Copy, Debug, Default)]
struct E4M3(u8);

// SAFETY: a plain byte, valid for any bit pattern, same layout on host and device.
unsafe impl DeviceRepr for E4M3 {}

impl NcclType for E4M3 {
    fn as_nccl_type() -> ncclDataType_t {
        ncclDataType_t::ncclFloat8e4m3
    }
}

/// One NCCL communicator over the ranks of an MPI job, one GPU per rank.
pub struct Nccl {
    comm: Comm,
    stream: Arc<CudaStream>,
    rank: usize,
    size: usize,
    counter: Counter,
}

impl Nccl {
    /// Join the communicator of `boot`'s ranks on GPU `device`: rank 0 creates the unique id and
    /// `boot` (MPI) broadcasts its 128 bytes.
    pub fn new(boot: &dyn Collective, device: usize) -> Result<Nccl, String> {
        let (rank, size) = (boot.rank(), boot.size());
        let mut raw = [0u8; 128];
        if rank == 0 {
            let id = Id::new().map_err(|e| format!("ncclGetUniqueId: {e:?}"))?;
            for (r, &c) in raw.iter_mut().zip(id.internal()) {
                *r = c as u8;
            }
        }
        boot.broadcast_bytes(&mut raw, 0);
        let id = Id::uninit(raw.map(|b| b as std::ffi::c_char));
        let ctx = CudaContext::new(device).map_err(|e| format!("CUDA device {device}: {e}"))?;
        let stream = ctx.default_stream();
        let comm = Comm::from_rank(stream.clone(), rank, size, id).map_err(|e| format!("ncclCommInitRank: {e:?}"))?;
        Ok(Nccl { comm, stream, rank, size, counter: Counter::default() })
    }

    fn to_device<T: DeviceRepr>(&self, host: &[T]) -> CudaSlice<T> {
        self.stream.clone_htod(host).unwrap_or_else(|e| panic!("NCCL staging copy to the device: {e}"))
    }

    fn to_host<T: DeviceRepr>(&self, dev: &CudaSlice<T>, host: &mut [T]) {
        self.stream.memcpy_dtoh(dev, host).unwrap_or_else(|e| panic!("NCCL staging copy to the host: {e}"));
        self.stream.synchronize().unwrap_or_else(|e| panic!("NCCL stream: {e}"));
    }

    /// All-reduce `buf` in place through the device.
    fn all_reduce<T: DeviceRepr + NcclType>(&self, buf: &mut [T], op: NcclOp) {
        let mut d = self.to_device(buf);
        self.comm.all_reduce_in_place(&mut d, &op).unwrap_or_else(|e| panic!("ncclAllReduce: {e:?}"));
        self.to_host(&d, buf);
        self.counter.record(Kind::AllReduce, size_of_val(buf), self.size);
    }
}

fn nccl_op(op: ReduceOp) -> NcclOp {
    match op {
        ReduceOp::Sum => NcclOp::Sum,
        ReduceOp::Max => NcclOp::Max,
    }
}

/// `x` as `T`, a `repr(transparent)` wrapper of (or the same layout as) `U`.
fn cast_mut<U, T>(x: &mut [U]) -> &mut [T] {
    assert_eq!(size_of::<U>(), size_of::<T>(), "cast between element types of one size");
    assert_eq!(align_of::<U>(), align_of::<T>(), "cast between element types of one alignment");
    // SAFETY: same size and alignment (checked), and every caller passes plain bit containers
    // (u8 <-> E4M3, u16 <-> bf16) valid for any bit pattern.
    unsafe { std::slice::from_raw_parts_mut(x.as_mut_ptr().cast::<T>(), x.len()) }
}

impl Collective for Nccl {
    fn rank(&self) -> usize {
        self.rank
    }
    fn size(&self) -> usize {
        self.size
    }
    fn name(&self) -> &'static str {
        "nccl"
    }
    fn all_reduce_f32(&self, buf: &mut [f32], op: ReduceOp) {
        self.all_reduce(buf, nccl_op(op));
    }
    fn all_reduce_f64(&self, buf: &mut [f64], op: ReduceOp) {
        self.all_reduce(buf, nccl_op(op));
    }
    fn all_reduce_bf16(&self, buf: &mut [u16]) {
        self.all_reduce(cast_mut::<u16, half::bf16>(buf), NcclOp::Sum);
    }
    fn all_reduce_e4m3(&self, buf: &mut [u8]) {
        self.all_reduce(cast_mut::<u8, E4M3>(buf), NcclOp::Sum);
    }
    fn reduce_scatter_e4m3(&self, send: &[u8], recv: &mut [u8]) {
        assert_eq!(send.len(), recv.len() * self.size, "reduce_scatter: send must be size() blocks of recv's length");
        let mut s = send.to_vec();
        let ds = self.to_device(cast_mut::<u8, E4M3>(&mut s));
        let mut dr = self.to_device(cast_mut::<u8, E4M3>(recv));
        self.comm.reduce_scatter(&ds, &mut dr, &NcclOp::Sum).unwrap_or_else(|e| panic!("ncclReduceScatter: {e:?}"));
        self.to_host(&dr, cast_mut::<u8, E4M3>(recv));
        self.counter.record(Kind::ReduceScatter, send.len(), self.size);
    }
    fn all_gather_bytes(&self, send: &[u8], recv: &mut [u8]) {
        assert_eq!(recv.len(), send.len() * self.size, "all_gather: recv must be size() blocks of send's length");
        let ds = self.to_device(send);
        let mut dr = self.to_device(recv);
        self.comm.all_gather(&ds, &mut dr).unwrap_or_else(|e| panic!("ncclAllGather: {e:?}"));
        self.to_host(&dr, recv);
        self.counter.record(Kind::AllGather, recv.len(), self.size);
    }
    fn broadcast_bytes(&self, buf: &mut [u8], root: usize) {
        let mut d = self.to_device(buf);
        self.comm.broadcast_in_place(&mut d, root as i32).unwrap_or_else(|e| panic!("ncclBroadcast: {e:?}"));
        self.to_host(&d, buf);
        self.counter.record(Kind::Broadcast, buf.len(), self.size);
    }
    fn barrier(&self) {
        let mut one = [0f32];
        let mut d = self.to_device(&one);
        self.comm.all_reduce_in_place(&mut d, &NcclOp::Sum).unwrap_or_else(|e| panic!("NCCL barrier: {e:?}"));
        self.to_host(&d, &mut one);
    }
    fn abort(&self, code: i32) -> ! {
        // Ends this process; under mpirun the job's launcher then ends the other ranks.
        std::process::exit(code)
    }
    fn traffic(&self) -> Traffic {
        self.counter.traffic()
    }
}
