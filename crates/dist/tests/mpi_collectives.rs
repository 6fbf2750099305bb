//! The MPI `Collective` checked across real processes: run by `cargo test`, this binary starts
//! itself under `mpirun -np 2` and `-np 3`; each rank then checks every collective against what it
//! can compute alone (every rank's input is a function of its rank), and the byte counters.

#[cfg(feature = "mpi")]
fn main() {
    use octet_dist::launched_by_mpirun;
    if launched_by_mpirun().is_some() {
        rank_checks();
        return;
    }
    let Some(mpirun) = find("mpirun") else {
        println!("SKIPPED mpi_collectives: no `mpirun` on PATH (apt-get install openmpi-bin)");
        return;
    };
    let me = std::env::current_exe().expect("test binary path");
    for np in ["2", "3"] {
        let out = std::process::Command::new(&mpirun)
            .args(["--allow-run-as-root", "--oversubscribe", "-np", np])
            .arg(&me)
            .output()
            .expect("run mpirun");
        let text = format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
        assert!(out.status.success(), "mpirun -np {np} failed:\n{text}");
        let n: usize = np.parse().unwrap();
        assert_eq!(text.matches("collectives ok").count(), n, "every rank reports:\n{text}");
        println!("mpi_collectives -np {np}: ok");
    }
}

#[cfg(feature = "mpi")]
fn find(prog: &str) -> Option<std::path::PathBuf> {
    std::env::var_os("PATH")?.to_str()?.split(':').map(|d| std::path::Path::new(d).join(prog)).find(|p| p.is_file())
}

#[cfg(feature = "mpi")]
fn rank_checks() {
    use octet_core::fp8::{self, Fp8Format, Overflow};
    use octet_dist::{Collective, ReduceOp, mpi::Mpi, wire};

    let c = Mpi::init().expect("MPI init");
    let (r, n) = (c.rank(), c.size());
    // f32 sum and max: rank q contributes q + i (exact small integers: any order gives the same sum).
    let mut x: Vec<f32> = (0..5).map(|i| (r + i) as f32).collect();
    c.all_reduce_f32(&mut x, ReduceOp::Sum);
    let want: Vec<f32> = (0..5).map(|i| (0..n).map(|q| (q + i) as f32).sum()).collect();
    assert_eq!(x, want);
    let mut m = [r as f64, -(r as f64)];
    c.all_reduce_f64(&mut m, ReduceOp::Max);
    assert_eq!(m, [(n - 1) as f64, 0.0]);

    // E4M3 sum. Rank q's codes: encode(v(q, i)); with 2 ranks one addition, so the result is
    // exactly `e4m3_add_into`'s; with 3 the order is MPI's, so compare with the exact sum within
    // the bound of two roundings (wire.rs): |e| <= u (|a+b| + |a+b+c|) + 2d, u = 2^-4, d = 2^-10.
    let v = |q: usize, i: usize| ((q * 37 + i * 11) % 29) as f32 * 0.37 - 5.0;
    let len = 1000;
    let enc =
        |q: usize| -> Vec<u8> { (0..len).map(|i| fp8::encode(Fp8Format::E4M3, v(q, i), Overflow::Saturate)).collect() };
    let mut codes = enc(r);
    c.all_reduce_e4m3(&mut codes);
    let dec = |c: u8| fp8::decode(Fp8Format::E4M3, c);
    if n == 2 {
        let mut want = enc(0);
        wire::e4m3_add_into(&mut want, &enc(1));
        assert_eq!(codes, want, "two ranks: one E4M3 addition");
    }
    let all: Vec<Vec<u8>> = (0..n).map(enc).collect();
    for i in 0..len {
        let parts: Vec<f32> = all.iter().map(|e| dec(e[i])).collect();
        let exact: f32 = parts.iter().sum();
        let mut bound = 0.0;
        let mut partial = parts[0];
        for p in &parts[1..] {
            partial += p;
            bound += 2f32.powi(-4) * partial.abs().max(exact.abs()) + 2f32.powi(-10);
        }
        // Intermediate sums in another order are bounded by the sum of magnitudes.
        let mags: f32 = parts.iter().map(|p| p.abs()).sum();
        let bound = bound.max((n - 1) as f32 * (2f32.powi(-4) * mags + 2f32.powi(-10)));
        assert!((dec(codes[i]) - exact).abs() <= bound, "element {i}: {} vs {exact} (bound {bound})", dec(codes[i]));
    }
    // Every rank holds the same result.
    let mut gathered = vec![0u8; len * n];
    c.all_gather_bytes(&codes, &mut gathered);
    for q in 0..n {
        assert_eq!(&gathered[q * len..(q + 1) * len], &codes[..], "rank {q} disagrees");
    }

    // bf16 sum of small integers is exact.
    let mut b: Vec<u16> = (0..4).map(|i| half::bf16::from_f32((r * i) as f32).to_bits()).collect();
    c.all_reduce_bf16(&mut b);
    let tri = (n * (n - 1) / 2) as f32;
    assert_eq!(
        b.iter().map(|&x| half::bf16::from_bits(x).to_f32()).collect::<Vec<_>>(),
        vec![0.0, tri, 2.0 * tri, 3.0 * tri]
    );

    // Reduce-scatter: block q of rank r's send is (r + q) as an E4M3 integer; rank q gets sum_r (r + q).
    let blk = 3;
    let send: Vec<u8> =
        (0..n * blk).map(|k| fp8::encode(Fp8Format::E4M3, (r + k / blk) as f32, Overflow::Saturate)).collect();
    let mut recv = vec![0u8; blk];
    c.reduce_scatter_e4m3(&send, &mut recv);
    let want = (0..n).map(|q| (q + r) as f32).sum::<f32>();
    assert!(recv.iter().all(|&x| dec(x) == want), "reduce-scatter block {r}: {recv:?} vs {want}");

    // Broadcast from the last rank.
    let mut bc = vec![r as u8; 7];
    c.broadcast_bytes(&mut bc, n - 1);
    assert_eq!(bc, vec![(n - 1) as u8; 7]);
    c.barrier();

    // Counted at the interface: payload bytes of each call.
    let t = c.traffic();
    assert_eq!(t.all_reduce as usize, 5 * 4 + 2 * 8 + len + 4 * 2);
    assert_eq!(t.all_gather as usize, len * n);
    assert_eq!(t.reduce_scatter as usize, n * blk);
    assert_eq!(t.broadcast, 7);
    assert_eq!(t.calls, 7);
    println!("rank {r}/{n}: collectives ok");
}

#[cfg(not(feature = "mpi"))]
fn main() {
    println!("SKIPPED mpi_collectives: built without --features mpi (cargo test --features octet-dist/mpi)");
}
