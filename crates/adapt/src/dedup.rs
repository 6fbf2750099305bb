//! Duplicate removal: exact duplicates by content hash (confirmed byte for byte), near duplicates by
//! MinHash over word shingles with LSH banding.
//!
//! Near-duplicate rule: a document's shingles are its overlapping runs of [`SHINGLE`] whitespace-
//! separated words (the whole word list when shorter). Its signature is, for each of [`HASHES`] seeded
//! hash functions, the minimum hash over its shingles; the fraction of equal signature entries
//! estimates the Jaccard similarity of two shingle sets. Signatures are cut into [`BANDS`] bands of
//! [`HASHES`]/[`BANDS`] rows; documents sharing a band are candidates, and a candidate whose estimated
//! Jaccard with an earlier kept document is >= [`THRESHOLD`] is dropped. (With 32 bands of 4 rows a
//! pair at Jaccard 0.8 becomes a candidate with probability 1 - (1 - 0.8^4)^32 > 0.9999.)
//!
//! Documents are visited in the order given and the first of each group is kept, so the result is
//! deterministic.

use std::collections::HashMap;

use rayon::prelude::*;

use crate::corpus::{hash64, mix64};

/// Words per shingle.
pub const SHINGLE: usize = 5;
/// MinHash signature length.
pub const HASHES: usize = 128;
/// LSH bands (HASHES / BANDS rows each).
pub const BANDS: usize = 32;
/// Estimated Jaccard similarity at or above which a document is a near duplicate.
pub const THRESHOLD: f64 = 0.8;

/// The MinHash signature of `text` (module doc).
pub fn signature(text: &str) -> Vec<u64> {
    let words: Vec<u64> = text.split_whitespace().map(|w| hash64(w.as_bytes())).collect();
    let mut sig = vec![u64::MAX; HASHES];
    let mut add = |window: &[u64]| {
        let mut h = 0x9e37_79b9_7f4a_7c15u64;
        for &w in window {
            h = mix64(h ^ w);
        }
        for (i, s) in sig.iter_mut().enumerate() {
            let v = mix64(h ^ (i as u64).wrapping_mul(0xd1b5_4a32_d192_ed03));
            if v < *s {
                *s = v;
            }
        }
    };
    if words.len() <= SHINGLE {
        add(&words);
    } else {
        words.windows(SHINGLE).for_each(&mut add);
    }
    sig
}

/// Estimated Jaccard similarity of two signatures.
pub fn similarity(a: &[u64], b: &[u64]) -> f64 {
    a.iter().zip(b).filter(|(x, y)| x == y).count() as f64 / a.len() as f64
}

/// What deduplication decided for each input document.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Verdict {
    Keep,
    /// Same bytes as the kept document at this index.
    Exact(usize),
    /// Estimated Jaccard >= THRESHOLD with the kept document at this index.
    Near(usize),
}

/// Verdicts for `texts`, in order (module doc). Signatures are computed in parallel.
pub fn dedup(texts: &[&str]) -> Vec<Verdict> {
    let mut verdicts = vec![Verdict::Keep; texts.len()];
    // Exact: first by hash, then confirmed by comparing bytes.
    let mut seen: HashMap<u64, Vec<usize>> = HashMap::new();
    for (i, t) in texts.iter().enumerate() {
        let bucket = seen.entry(hash64(t.as_bytes())).or_default();
        if let Some(&j) = bucket.iter().find(|&&j| texts[j] == *t) {
            verdicts[i] = Verdict::Exact(j);
        } else {
            bucket.push(i);
        }
    }
    // Near: LSH over the documents that survived.
    let live: Vec<usize> = (0..texts.len()).filter(|&i| verdicts[i] == Verdict::Keep).collect();
    let sigs: Vec<Vec<u64>> = live.par_iter().map(|&i| signature(texts[i])).collect();
    let rows = HASHES / BANDS;
    let mut bands: Vec<HashMap<u64, Vec<usize>>> = vec![HashMap::new(); BANDS];
    for (k, &i) in live.iter().enumerate() {
        let sig = &sigs[k];
        let keys: Vec<u64> =
            (0..BANDS).map(|b| sig[b * rows..(b + 1) * rows].iter().fold(b as u64, |h, &x| mix64(h ^ x))).collect();
        let mut dup = None;
        'bands: for (b, key) in keys.iter().enumerate() {
            if let Some(cands) = bands[b].get(key) {
                for &c in cands {
                    if similarity(sig, &sigs[c]) >= THRESHOLD {
                        dup = Some(live[c]);
                        break 'bands;
                    }
                }
            }
        }
        match dup {
            Some(j) => verdicts[i] = Verdict::Near(j),
            None => {
                for (b, key) in keys.into_iter().enumerate() {
                    bands[b].entry(key).or_default().push(k);
                }
            }
        }
    }
    verdicts
}

#[cfg(test)]
mod tests {
    use super::*;

    fn words(n: usize, seed: usize) -> String {
        (0..n).map(|i| format!("w{}", (i * 7919 + seed * 104_729) % 100_003)).collect::<Vec<_>>().join(" ")
    }

    #[test]
    fn exact_copies_and_small_edits_are_dropped_distinct_texts_kept() {
        let a = words(400, 1);
        let b = words(400, 2);
        // One word in 400 changed: 5 of ~396 shingles differ, Jaccard ~ 0.975.
        let mut near: Vec<String> = a.split(' ').map(String::from).collect();
        near[200] = "changed".into();
        let near = near.join(" ");
        let texts = [a.as_str(), b.as_str(), a.as_str(), near.as_str()];
        let v = dedup(&texts);
        assert_eq!(v, vec![Verdict::Keep, Verdict::Keep, Verdict::Exact(0), Verdict::Near(0)]);
    }

    #[test]
    fn half_overlap_is_not_a_near_duplicate() {
        let a = words(400, 3);
        let half: Vec<&str> = a.split(' ').take(200).collect();
        let other = format!("{} {}", half.join(" "), words(200, 4));
        let sim = similarity(&signature(&a), &signature(&other));
        assert!(sim < 0.5, "estimated Jaccard {sim}");
        assert_eq!(dedup(&[a.as_str(), other.as_str()]), vec![Verdict::Keep, Verdict::Keep]);
    }

    #[test]
    fn signature_estimates_jaccard() {
        // Two 1000-word texts sharing the first 600 words: shingle Jaccard = 596 / (996 + 400) ~ 0.427.
        let base: Vec<String> = words(1000, 5).split(' ').map(String::from).collect();
        let mut other = base.clone();
        for (i, w) in other.iter_mut().enumerate().skip(600) {
            *w = format!("x{i}");
        }
        let est = similarity(&signature(&base.join(" ")), &signature(&other.join(" ")));
        assert!((est - 0.427).abs() < 0.12, "estimate {est}");
    }
}
