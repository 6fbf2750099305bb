//! Convex hull against pymatgen's `PhaseDiagram`: tests/golden/hull/phase_diagrams.json, written by
//! tools/ref/hull_reference.py (Cu-Ag-Au-Pd with duplicate compositions, collinear phases, entries
//! exactly on the hull, polymorphs; an elements-only system; a collinear binary).

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::time::Instant;

use octet_materials::hull::{HullEntry, PhaseDiagram, Stability};
use octet_materials::{Composition, Element};
use serde_json::Value;

/// Energies: the bound. pymatgen's own numbers carry ~1e-15 of round-off and its facet
/// solve ~1e-12, so anything near 1e-6 is a real disagreement.
const E_TOL: f64 = 1e-6;
/// Decomposition atom fractions (pymatgen solves its facet by least squares, ~1e-13 here).
const X_TOL: f64 = 1e-6;

fn golden() -> Value {
    let path = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../tests/golden/hull/phase_diagrams.json");
    serde_json::from_str(&std::fs::read_to_string(&path).unwrap()).unwrap()
}

fn composition(v: &Value) -> Composition {
    let pairs = v.as_object().unwrap().iter().map(|(el, x)| (Element::from_symbol(el).unwrap(), x.as_f64().unwrap()));
    Composition::from_amounts(pairs).unwrap()
}

/// Returns whether the decomposition differed from pymatgen's by a tie, and the energy above hull's
/// deviation.
fn check(system: &str, name: &str, pd: &PhaseDiagram, got: &Stability, want: &Value) -> (bool, f64) {
    let ctx = format!("{system}/{name}");
    let num = |k: &str| want[k].as_f64().unwrap();
    assert!(
        (got.e_form_per_atom - num("e_form_per_atom")).abs() <= E_TOL,
        "{ctx}: e_form {} vs {}",
        got.e_form_per_atom,
        num("e_form_per_atom")
    );
    assert!(
        (got.e_above_hull - num("e_above_hull")).abs() <= E_TOL,
        "{ctx}: e_above_hull {} vs {}",
        got.e_above_hull,
        num("e_above_hull")
    );
    let want_d: BTreeMap<&str, f64> =
        want["decomposition"].as_object().unwrap().iter().map(|(k, v)| (k.as_str(), v.as_f64().unwrap())).collect();
    let got_d: BTreeMap<&str, f64> =
        got.decomposition.iter().map(|&(j, x)| (pd.entries()[j].name.as_str(), x)).collect();
    if got_d.keys().eq(want_d.keys()) {
        for (k, x) in &want_d {
            assert!((got_d[k] - x).abs() <= X_TOL, "{ctx}: fraction of {k}: {} vs {x}", got_d[k]);
        }
        return (false, (got.e_above_hull - num("e_above_hull")).abs());
    }
    // A non-simplicial hull facet (more than d+1 coplanar vertices) has many decompositions: accept
    // another one only if pymatgen's has the same composition and energy in this diagram.
    let index = |k: &str| pd.entries().iter().position(|e| e.name == k).unwrap();
    let frac = |j: usize, el: Element| pd.entries()[j].composition.get(el) / pd.entries()[j].composition.num_atoms();
    for &el in pd.elements() {
        let a: f64 = got.decomposition.iter().map(|&(j, x)| x * frac(j, el)).sum();
        let b: f64 = want_d.iter().map(|(k, x)| x * frac(index(k), el)).sum();
        assert!((a - b).abs() <= X_TOL, "{ctx}: decompositions {got_d:?} vs {want_d:?} differ in {el}");
    }
    let h: f64 = want_d.iter().map(|(k, x)| x * pd.formation_energy_per_atom(index(k))).sum();
    assert!(
        (h - got.hull_e_form_per_atom).abs() <= E_TOL,
        "{ctx}: decomposition {got_d:?} vs pymatgen's {want_d:?}: hull energy {} vs {h}",
        got.hull_e_form_per_atom
    );
    println!("{ctx}: tie on a non-simplicial facet: {got_d:?}, pymatgen {want_d:?}");
    (true, (got.e_above_hull - num("e_above_hull")).abs())
}

#[test]
fn matches_pymatgen_phase_diagram() {
    let g = golden();
    let mut checked = 0;
    let (mut ties, mut worst) = (0, 0.0f64);
    for sys in g["systems"].as_array().unwrap() {
        let sname = sys["name"].as_str().unwrap();
        let entries: Vec<HullEntry> = sys["entries"]
            .as_array()
            .unwrap()
            .iter()
            .map(|e| {
                HullEntry::new(
                    e["name"].as_str().unwrap(),
                    composition(&e["composition"]),
                    e["energy"].as_f64().unwrap(),
                )
            })
            .collect();
        let t = Instant::now();
        let pd = PhaseDiagram::new(entries).unwrap();
        let built = t.elapsed();
        for (i, want) in sys["results"].as_array().unwrap().iter().enumerate() {
            let name = want["name"].as_str().unwrap();
            assert_eq!(pd.entries()[i].name, name);
            let (tie, dev) = check(sname, name, &pd, pd.stability(i), want);
            ties += tie as usize;
            worst = worst.max(dev);
            assert_eq!(pd.is_stable(i), want["stable"].as_bool().unwrap(), "{sname}/{name}: stable");
            checked += 1;
        }
        for want in sys["candidates"].as_array().unwrap() {
            let name = want["name"].as_str().unwrap();
            let got = pd.analyse(&composition(&want["composition"]), want["energy"].as_f64().unwrap()).unwrap();
            let (tie, dev) = check(sname, name, &pd, &got, want);
            ties += tie as usize;
            worst = worst.max(dev);
            checked += 1;
        }
        println!(
            "{sname}: {} entries, {} stable, built in {:.2} ms",
            pd.entries().len(),
            pd.stable_entries().len(),
            built.as_secs_f64() * 1e3
        );
    }
    assert_eq!(checked, 70);
    println!("largest |e_above_hull - pymatgen|: {worst:.2e} eV/atom");
    // The Ag-Au-Pd face has Au, AgAu, AuPd and AgAuPd2 on one plane (dyadic energies): only
    // compositions on that face may tie.
    assert!(ties <= 3, "{ties} ties");
}

/// Decompositions reproduce the composition and the hull energy: sum_j x_j f_j = f, sum_j x_j = 1,
/// sum_j x_j E_f_j = E_f - e_above_hull.
#[test]
fn decompositions_are_consistent() {
    let g = golden();
    let sys = &g["systems"][0];
    let entries: Vec<HullEntry> = sys["entries"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| {
            HullEntry::new(e["name"].as_str().unwrap(), composition(&e["composition"]), e["energy"].as_f64().unwrap())
        })
        .collect();
    let pd = PhaseDiagram::new(entries).unwrap();
    for i in 0..pd.entries().len() {
        let s = pd.stability(i);
        let total: f64 = s.decomposition.iter().map(|p| p.1).sum();
        assert!((total - 1.0).abs() < 1e-12, "{i}: fractions sum to {total}");
        let n = pd.entries()[i].composition.num_atoms();
        for &el in pd.elements() {
            let want = pd.entries()[i].composition.get(el) / n;
            let got: f64 = s
                .decomposition
                .iter()
                .map(|&(j, x)| x * pd.entries()[j].composition.get(el) / pd.entries()[j].composition.num_atoms())
                .sum();
            assert!((got - want).abs() < 1e-12, "{i} {el}: {got} vs {want}");
        }
        let h: f64 = s.decomposition.iter().map(|&(j, x)| x * pd.formation_energy_per_atom(j)).sum();
        assert!((h - (s.e_form_per_atom - s.e_above_hull)).abs() < 1e-12);
        assert!(s.e_above_hull >= -1e-12, "{i}: an entry of the diagram cannot lie below its hull");
        assert!(s.decomposition.iter().all(|&(j, _)| pd.is_stable(j)));
    }
}

#[test]
fn candidate_with_foreign_element_is_an_error() {
    let pd = PhaseDiagram::new(vec![HullEntry::new("Cu", Composition::parse("Cu").unwrap(), -4.0)]).unwrap();
    let err = pd.analyse(&Composition::parse("CuO").unwrap(), -9.0).unwrap_err();
    assert!(err.to_string().contains("O is not among"), "{err}");
}
