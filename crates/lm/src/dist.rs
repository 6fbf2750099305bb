//! Data-parallel training over an `octet_dist::Collective` (FP8-LM's distributed half): gradient
//! all-reduce in the level's communication format, FP8 ZeRO, and the checks that keep ranks in step.
//!
//! Every rank runs the same model on its own rows of each global batch (rank r of N: rows
//! `[r B/N, (r+1) B/N)`), with the loss gradient scaled by `1/N` on top of the usual `1/(B/N * T)`:
//! each rank's gradient is its share of the global mean over B*T positions, and a SUM all-reduce
//! gives the mean gradient of the whole batch (the only difference from one process is the
//! summation order). Formats on the wire, by level (FP8-LM's "comm" column):
//! - fp32, fp8-te: f32 (4 bytes per parameter), MPI's SUM;
//! - bf16: bf16 (2 bytes), a custom reduction adding in f32 and rounding to bf16 (`octet_dist::wire`);
//! - fp8-o1, fp8-o2 (narrow, gradients already E4M3 per unit): E4M3 (1 byte), FP8-LM's recipe:
//!   1. all-reduce MAX of each unit's amax `A_u` (and of an overflow flag: any rank's non-finite
//!      gradient skips the step on every rank, the single-process policy);
//!   2. one scale per unit on every rank, `S_u = 2^(floor(log2(448 / A_u))) * mu`, where `mu` is
//!      FP8-LM's automatic scaling factor (`CommScaler`, a power of two): it starts at
//!      `2^-ceil(log2 N)`, at which a sum of N values each at most `448 mu` cannot exceed 448; if more
//!      than 0.001% of the summed codes sit at +-448 it halves for the next step, and after
//!      `GROW_INTERVAL` clean steps it doubles, up to 1;
//!   3. each rank re-encodes its E4M3 gradient under `S_u` (scales are powers of two, so this is a
//!      shift, exact unless a value falls to the subnormal range) and the codes are summed by the
//!      custom E4M3 reduction; the result is stored with scale `S_u`.
//!
//! Error of the E4M3 all-reduce, per element, against the exact sum of the ranks' re-encoded values
//! `x_1..x_N` (real units, i.e. divided by S): every one of the N-1 additions rounds once
//! (`wire`): `|e_k| <= u |p_k| + d / S` with `u = 2^-4`, `d = 2^-10`, `p_k` the k-th partial sum,
//! and `|p_k| <= sum_i |x_i| (1 + u)^k` by induction; so `|err| <= (N-1) (u (1+u)^(N-1) sum_i |x_i| +
//! d / S)`, in any order of reduction. The re-encoding adds at most `u |g_i| + d / S` per rank.
//! `tests/dist_mpi.rs` (crates/cli) checks this bound on real runs.
//!
//! ZeRO (`Zero`, narrow levels): Adam's m and v are partitioned by FP8-LM's greedy whole-unit
//! assignment (`octet_dist::zero`), so a unit's scale stays with it. Per step: shared scales as
//! above, a reduce-scatter of the E4M3 gradient packed by owner (each rank receives the sums of its
//! units), the global norm from per-chunk partial sums (all-reduced; zeros elsewhere, so the norm is
//! bit-identical to the unsharded one), each rank's AdamW on its units, and an all-gather of the
//! updated f16 weights with their scales. Every rank keeps the full f16 weights (it computes with
//! them) and the full E4M3 gradient buffer; only m and v are sharded.
//!
//! Delayed FP8 scaling: each linear's amax histories are all-reduced (MAX) after every step, as
//! Transformer Engine reduces amaxes over the data-parallel group, so every rank picks the same
//! scales and a checkpoint's scaling state (rank 0's) is every rank's.

use std::sync::Arc;

use octet_core::fp8::{self, Fp8Format};
use octet_core::scaling::{pow2, scale_exponent};
use octet_core::{Error, Layout, Result, ScaledBuf};
use octet_dist::{Collective, ReduceOp, wire, zero};
use octet_optim::{AdamWConfig, Fp8AdamW, StateFormats};

use crate::model::{Buffers, LanguageModel};
use crate::narrow::Narrow;
use crate::precision::{LinearScaling, Precision};

/// Clean steps after which `mu` doubles.
pub const GROW_INTERVAL: u64 = 1000;
/// FP8-LM: `mu` halves when more than 0.001% of the summed values hit the FP8 maximum.
pub const SATURATION_LIMIT: f64 = 1e-5;

/// What travels on the wire for a level's gradients.
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Wire {
    F32,
    Bf16,
    E4M3,
}

impl Wire {
    pub fn of(p: Precision) -> Wire {
        match p {
            Precision::Fp32 | Precision::Fp8Te => Wire::F32,
            Precision::Bf16 => Wire::Bf16,
            Precision::Fp8O1 | Precision::Fp8O2 | Precision::Fp8O2V8 => Wire::E4M3,
        }
    }
}

/// FP8-LM's automatic scaling factor `mu = 2^mu_exp` of the E4M3 all-reduce (module doc).
#[derive(Clone, Copy, Debug, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct CommScaler {
    pub mu_exp: i32,
    /// Clean steps since the last change.
    pub clean: u64,
    /// Times `mu` halved.
    pub backoffs: u64,
    /// The rank count `mu` was set up for (a resume on another count starts afresh).
    pub ranks: usize,
}

impl CommScaler {
    /// The safe start for `ranks`: `mu = 2^-ceil(log2 ranks)`.
    pub fn new(ranks: usize) -> Self {
        CommScaler { mu_exp: Self::safe_exp(ranks), clean: 0, backoffs: 0, ranks }
    }
    /// `-ceil(log2 ranks)`: at this `mu` no sum can exceed 448.
    pub fn safe_exp(ranks: usize) -> i32 {
        -(ranks.max(1).next_power_of_two().trailing_zeros() as i32)
    }
    /// After a reduction in which a share `saturated` of the summed codes sat at +-448. At or below
    /// the safe `mu` a code at 448 is an exact sum, not a clipped one (e.g. two ranks' amax at the
    /// same element), so `mu` only backs off from above it.
    pub fn observe(&mut self, saturated: f64) {
        if saturated > SATURATION_LIMIT && self.mu_exp > Self::safe_exp(self.ranks) {
            self.mu_exp -= 1;
            self.clean = 0;
            self.backoffs += 1;
        } else {
            self.clean += 1;
            if self.clean >= GROW_INTERVAL && self.mu_exp < 0 {
                self.mu_exp += 1;
                self.clean = 0;
            }
        }
    }
}

/// What one gradient synchronisation found.
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub struct SyncReport {
    /// Some rank's gradient was not finite: every rank skips the step.
    pub overflow: bool,
    /// Summed E4M3 codes at +-448 (narrow levels).
    pub saturated: usize,
}

/// A rank's view of a data-parallel job.
pub struct DataParallel<'a> {
    pub coll: &'a dyn Collective,
    pub comm: CommScaler,
}

impl<'a> DataParallel<'a> {
    pub fn new(coll: &'a dyn Collective) -> Self {
        DataParallel { coll, comm: CommScaler::new(coll.size()) }
    }
    pub fn rank(&self) -> usize {
        self.coll.rank()
    }
    pub fn size(&self) -> usize {
        self.coll.size()
    }

    /// Rows of a global batch of `b` rows this rank trains on.
    pub fn rows(&self, b: usize) -> Result<std::ops::Range<usize>> {
        let n = self.size();
        if !b.is_multiple_of(n) {
            return Err(Error::config(
                "batch",
                format!("the global batch {b} does not split evenly over {n} ranks (give a multiple of {n})"),
            ));
        }
        let per = b / n;
        Ok(self.rank() * per..(self.rank() + 1) * per)
    }

    /// The mean of `x` over ranks.
    pub fn mean(&self, x: f64) -> f64 {
        let mut v = [x];
        self.coll.all_reduce_f64(&mut v, ReduceOp::Sum);
        v[0] / self.size() as f64
    }

    /// Sum the ranks' gradient shares into the global mean gradient, in the level's wire format
    /// (module doc). With ZeRO the narrow gradients are reduce-scattered by `Zero::step` instead.
    pub fn all_reduce_grads(&mut self, model: &mut dyn LanguageModel) -> SyncReport {
        let wire_fmt = Wire::of(model.precision());
        match model.buffers() {
            Buffers::Plain { grads, .. } => {
                let g: &mut [f32] = &mut grads.data;
                match wire_fmt {
                    Wire::Bf16 => {
                        let mut b = vec![0u16; g.len()];
                        wire::to_bf16(g, &mut b);
                        self.coll.all_reduce_bf16(&mut b);
                        wire::from_bf16(&b, g);
                    }
                    _ => self.coll.all_reduce_f32(g, ReduceOp::Sum),
                }
                SyncReport::default()
            }
            Buffers::Narrow(nw) => {
                if self.shared_scales(nw) {
                    return SyncReport { overflow: true, saturated: 0 };
                }
                let (codes, _) = nw.grads.codes_and_scales_mut();
                self.coll.all_reduce_e4m3(codes);
                let saturated = wire::saturated(codes);
                self.comm.observe(saturated as f64 / codes.len().max(1) as f64);
                SyncReport { overflow: false, saturated }
            }
        }
    }

    /// Steps 1-3 of the E4M3 all-reduce up to the sum: agree on each unit's scale and re-encode the
    /// local gradient under it. Returns true (on every rank) if any rank's gradient overflowed.
    fn shared_scales(&self, nw: &mut Narrow) -> bool {
        let units: Vec<_> = nw.units.specs().iter().map(|s| s.range()).collect();
        let nu = units.len();
        let table = Fp8Format::E4M3.decode_table();
        let mut amax = vec![0f32; nu + 1];
        {
            let (codes, scales) = nw.grads.codes_and_scales_mut();
            for (u, r) in units.iter().enumerate() {
                let m = codes[r.clone()].iter().fold(0f32, |a, &c| a.max(table[c as usize].abs()));
                amax[u] = m / scales[u];
            }
        }
        amax[nu] = if nw.overflow { 1.0 } else { 0.0 };
        if amax[..nu].iter().any(|a| !a.is_finite()) {
            amax[nu] = 1.0;
        }
        self.coll.all_reduce_f32(&mut amax, ReduceOp::Max);
        if amax[nu] != 0.0 {
            nw.overflow = true;
            return true;
        }
        let (codes, scales) = nw.grads.codes_and_scales_mut();
        let mut scratch = vec![];
        for (u, r) in units.iter().enumerate() {
            let shared = match scale_exponent(amax[u], Fp8Format::E4M3.max(), 0) {
                Some(k) => pow2((k + self.comm.mu_exp).clamp(-126, 127)),
                None => 1.0,
            };
            if shared != scales[u] {
                let c = &mut codes[r.clone()];
                scratch.resize(c.len(), 0.0);
                // decode(q) * (S / s): the value times the shared scale, then one encode.
                fp8::dequantize(Fp8Format::E4M3, c, shared / scales[u], &mut scratch);
                fp8::quantize(Fp8Format::E4M3, &scratch, 1.0, c);
                scales[u] = shared;
            }
        }
        false
    }

    /// All-reduce (MAX) every FP8 linear's amax histories, so every rank scales alike (module doc).
    pub fn sync_scaling(&self, scaling: &mut [LinearScaling]) {
        let mut all = vec![];
        for s in scaling.iter_mut() {
            for m in [&mut s.input, &mut s.weight, &mut s.grad_output] {
                all.extend_from_slice(m.amax_history.values_mut());
            }
        }
        if all.is_empty() {
            return;
        }
        self.coll.all_reduce_f32(&mut all, ReduceOp::Max);
        let mut at = 0;
        for s in scaling.iter_mut() {
            for m in [&mut s.input, &mut s.weight, &mut s.grad_output] {
                let v = m.amax_history.values_mut();
                v.copy_from_slice(&all[at..at + v.len()]);
                at += v.len();
            }
        }
    }

    /// Check that every rank holds the same weights (FNV-1a over their stored bytes and scales);
    /// an error names the ranks that differ. Returns the hash.
    pub fn check_same_weights(&self, model: &dyn LanguageModel, step: usize) -> Result<u64> {
        let h = weights_hash(model);
        let mut all = vec![0u8; 8 * self.size()];
        self.coll.all_gather_bytes(&h.to_le_bytes(), &mut all);
        let hashes: Vec<u64> = all.chunks_exact(8).map(|c| u64::from_le_bytes(c.try_into().unwrap())).collect();
        if let Some(r) = hashes.iter().position(|&x| x != hashes[0]) {
            return Err(Error::Other(format!(
                "after step {step} the weights of rank {r} (hash {:016x}) differ from rank 0's ({:016x})",
                hashes[r], hashes[0]
            )));
        }
        Ok(h)
    }
}

/// FNV-1a (64-bit) of a model's stored weights: the f32 bits at the plain levels, the f16 bytes and
/// scales at the narrow ones.
pub fn weights_hash(model: &dyn LanguageModel) -> u64 {
    let mut h = 0xcbf2_9ce4_8422_2325u64;
    let mut eat = |bytes: &[u8]| {
        for &b in bytes {
            h = (h ^ b as u64).wrapping_mul(0x0100_0000_01b3);
        }
    };
    match (model.narrow(), model.plain()) {
        (Some(nw), _) => {
            let (bytes, scales) = nw.weights.to_raw();
            eat(&bytes);
            scales.iter().for_each(|s| eat(&s.to_le_bytes()));
        }
        (None, Some((p, _))) => p.data.iter().for_each(|x| eat(&x.to_le_bytes())),
        (None, None) => {}
    }
    h
}

/// A rank's shard of FP8-LM's ZeRO optimizer (module doc): AdamW state for the units it owns.
#[derive(Clone, Debug)]
pub struct Zero {
    /// Owner rank of every unit.
    pub owner: Vec<usize>,
    /// Units of each rank, in unit-layout order (the packing order on the wire).
    pub per_rank: Vec<Vec<usize>>,
    /// This rank's index.
    pub rank: usize,
    /// The optimizer over this rank's units (its layout: `per_rank[rank]`'s units, in order).
    pub opt: Fp8AdamW,
    units: Arc<Layout>,
}

impl Zero {
    /// The shard of `rank` of `ranks` over the unit layout `units` (weight decay per unit).
    pub fn new(
        units: Arc<Layout>,
        decay: &[bool],
        cfg: AdamWConfig,
        formats: StateFormats,
        rank: usize,
        ranks: usize,
    ) -> Zero {
        let sizes: Vec<usize> = units.specs().iter().map(|s| s.numel()).collect();
        let owner = zero::greedy_partition(&sizes, ranks);
        let per_rank: Vec<Vec<usize>> =
            (0..ranks).map(|r| (0..sizes.len()).filter(|&u| owner[u] == r).collect()).collect();
        let mine = &per_rank[rank];
        let sub = Arc::new(Layout::new(
            mine.iter().map(|&u| (units.specs()[u].name.clone(), units.specs()[u].shape.clone())),
        ));
        let opt = Fp8AdamW::new(sub, mine.iter().map(|&u| decay[u]).collect(), cfg, formats);
        Zero { owner, per_rank, rank, opt, units }
    }

    /// Elements of the largest shard (the reduce-scatter block).
    fn block(&self) -> usize {
        self.per_rank.iter().map(|us| us.iter().map(|&u| self.units.specs()[u].numel()).sum()).max().unwrap_or(0)
    }

    /// Take this shard's units of full-layout moments (a checkpoint's).
    pub fn load_full(&mut self, m: &ScaledBuf, v: &ScaledBuf, step: u64) {
        for (j, &u) in self.per_rank[self.rank].iter().enumerate() {
            let (b, s) = m.tensor_raw(u);
            self.opt.m.set_tensor_raw(j, &b, s);
            let (b, s) = v.tensor_raw(u);
            self.opt.v.set_tensor_raw(j, &b, s);
        }
        self.opt.step = step;
    }

    /// The full-layout m and v, gathered from every shard (collective: every rank calls it; for a
    /// checkpoint, which rank 0 writes).
    pub fn gather_full(&self, coll: &dyn Collective) -> (ScaledBuf, ScaledBuf) {
        let f = self.opt.formats();
        (self.gather_buf(coll, &self.opt.m, f.m), self.gather_buf(coll, &self.opt.v, f.v))
    }

    fn gather_buf(&self, coll: &dyn Collective, part: &ScaledBuf, format: octet_core::StateFormat) -> ScaledBuf {
        let mut full = ScaledBuf::zeros(format, self.units.clone()).with_margin(part.margin());
        let blocks = self.all_gather_units(coll, |j| part.tensor_raw(j), &full);
        for (u, (b, s)) in blocks {
            full.set_tensor_raw(u, &b, &s);
        }
        full
    }

    /// All-gather every rank's units: `raw(j)` gives this rank's j-th unit as (bytes, scales); returns
    /// (unit, bytes, scales) for every unit of every rank. `shape` (a full-layout buffer of the same
    /// format) gives the sizes.
    #[allow(clippy::type_complexity)]
    fn all_gather_units<'b>(
        &self,
        coll: &dyn Collective,
        raw: impl Fn(usize) -> (Vec<u8>, &'b [f32]),
        shape: &ScaledBuf,
    ) -> Vec<(usize, (Vec<u8>, Vec<f32>))> {
        let size_of =
            |u: usize| (shape.layout().specs()[u].numel() * shape.format().element_bytes(), shape.scales(u).len());
        let block = self
            .per_rank
            .iter()
            .map(|us| us.iter().map(|&u| size_of(u)).map(|(b, s)| b + 4 * s).sum::<usize>())
            .max()
            .unwrap_or(0);
        let mut send = Vec::with_capacity(block);
        for j in 0..self.per_rank[self.rank].len() {
            let (b, s) = raw(j);
            send.extend_from_slice(&b);
            s.iter().for_each(|x| send.extend_from_slice(&x.to_le_bytes()));
        }
        send.resize(block, 0);
        let mut recv = vec![0u8; block * self.per_rank.len()];
        coll.all_gather_bytes(&send, &mut recv);
        let mut out = vec![];
        for (r, us) in self.per_rank.iter().enumerate() {
            let mut at = r * block;
            for &u in us {
                let (nb, ns) = size_of(u);
                let b = recv[at..at + nb].to_vec();
                at += nb;
                let s =
                    recv[at..at + 4 * ns].chunks_exact(4).map(|c| f32::from_le_bytes(c.try_into().unwrap())).collect();
                at += 4 * ns;
                out.push((u, (b, s)));
            }
        }
        out
    }

    /// One ZeRO step over the narrow model `nw` (module doc): returns (global gradient norm of the
    /// unscaled mean gradient, skipped). `grad_scale` is the trainer's gradient scale, `clip` the
    /// clipping threshold (0 = off).
    pub fn step(
        &mut self,
        dp: &mut DataParallel<'_>,
        nw: &mut Narrow,
        grad_scale: f64,
        clip: f64,
        lr: f64,
    ) -> Result<(f64, bool)> {
        if dp.shared_scales(nw) {
            return Ok((f64::INFINITY, true));
        }
        let n = self.per_rank.len();
        let block = self.block();
        let ranges: Vec<_> = self.units.specs().iter().map(|s| s.range()).collect();
        // Reduce-scatter: block r = rank r's units' codes, in order, zero-padded.
        let mut recv = vec![0u8; block];
        {
            let (codes, _) = nw.grads.codes_and_scales_mut();
            let mut send = vec![0u8; block * n];
            for (r, us) in self.per_rank.iter().enumerate() {
                let mut at = r * block;
                for &u in us {
                    send[at..at + ranges[u].len()].copy_from_slice(&codes[ranges[u].clone()]);
                    at += ranges[u].len();
                }
            }
            dp.coll.reduce_scatter_e4m3(&send, &mut recv);
            let mut at = 0;
            for &u in &self.per_rank[self.rank] {
                codes[ranges[u].clone()].copy_from_slice(&recv[at..at + ranges[u].len()]);
                at += ranges[u].len();
            }
        }
        // Norm and saturation, from this rank's units (zeros elsewhere), summed over ranks.
        let mut parts: Vec<f64> = nw
            .grads
            .sum_squares_parts()
            .into_iter()
            .map(|(u, s)| if self.owner[u] == self.rank { s } else { 0.0 })
            .collect();
        parts.push(wire::saturated(&recv) as f64);
        dp.coll.all_reduce_f64(&mut parts, ReduceOp::Sum);
        let saturated = parts.pop().unwrap_or(0.0);
        dp.comm.observe(saturated / self.units.total().max(1) as f64);
        let grad_norm = parts.iter().sum::<f64>().sqrt() / grad_scale;
        if !grad_norm.is_finite() {
            return Ok((f64::INFINITY, true));
        }
        let clip_factor = if clip > 0.0 && grad_norm > clip { clip / grad_norm } else { 1.0 };
        // This shard's weights and gradients, updated by its optimizer.
        let mine = self.per_rank[self.rank].clone();
        let sub = self.opt.layout().clone();
        let mut w = ScaledBuf::zeros(nw.weights.format(), sub.clone()).with_margin(nw.weights.margin());
        let mut g = ScaledBuf::zeros(nw.grads.format(), sub);
        for (j, &u) in mine.iter().enumerate() {
            let (b, s) = nw.weights.tensor_raw(u);
            w.set_tensor_raw(j, &b, s);
            let (b, s) = nw.grads.tensor_raw(u);
            g.set_tensor_raw(j, &b, s);
        }
        let report = self.opt.update_master_scaled(&mut w, &g, (clip_factor / grad_scale) as f32, lr);
        let mut skipped = [if report.skipped { 1.0f32 } else { 0.0 }];
        dp.coll.all_reduce_f32(&mut skipped, ReduceOp::Max);
        if (skipped[0] != 0.0) != report.skipped {
            return Err(Error::Other(
                "ZeRO: one shard's AdamW update overflowed while the others applied theirs; the ranks' \
                 weights no longer agree (lower the learning rate, or train without --zero)"
                    .into(),
            ));
        }
        if report.skipped {
            return Ok((grad_norm, true));
        }
        // All-gather the updated weights (f16 bytes and scales) of every shard.
        let gathered = self.all_gather_units(dp.coll, |j| w.tensor_raw(j), &nw.weights);
        for (u, (b, s)) in gathered {
            nw.weights.set_tensor_raw(u, &b, &s);
        }
        Ok((grad_norm, false))
    }

    /// Bytes of this shard's m and v (with scales).
    pub fn state_bytes(&self) -> (usize, usize) {
        (self.opt.m.bytes(), self.opt.v.bytes())
    }
}
