//! FP8-LM's ZeRO partition: whole tensors (each with its own scale, so a scale is never split across
//! ranks) assigned largest first, each to the currently least-loaded rank. Deterministic: ties in
//! size keep layout order, ties in load go to the lower rank, so every rank computes the same
//! assignment from the same sizes.

/// Owner rank of each of the tensors with element counts `sizes`, over `ranks` ranks.
pub fn greedy_partition(sizes: &[usize], ranks: usize) -> Vec<usize> {
    assert!(ranks >= 1, "a partition needs at least one rank");
    let mut order: Vec<usize> = (0..sizes.len()).collect();
    // Stable sort: equal sizes stay in layout order.
    order.sort_by(|&a, &b| sizes[b].cmp(&sizes[a]));
    let mut load = vec![0usize; ranks];
    let mut owner = vec![0; sizes.len()];
    for t in order {
        let r = (0..ranks).min_by_key(|&r| (load[r], r)).expect("ranks >= 1");
        owner[t] = r;
        load[r] += sizes[t];
    }
    owner
}

/// Elements each rank owns under `owner`.
pub fn loads(sizes: &[usize], owner: &[usize], ranks: usize) -> Vec<usize> {
    let mut load = vec![0; ranks];
    for (&s, &r) in sizes.iter().zip(owner) {
        load[r] += s;
    }
    load
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn largest_tensor_goes_to_the_least_loaded_rank() {
        // 10 -> r0; 7 -> r1; 5 -> r1 (7 < 10); 3 -> r0 (10 < 12); 1 -> r1 (12 < 13).
        let sizes = [5, 10, 1, 7, 3];
        let owner = greedy_partition(&sizes, 2);
        assert_eq!(owner, vec![1, 0, 1, 1, 0]);
        assert_eq!(loads(&sizes, &owner, 2), vec![13, 13]);
    }

    #[test]
    fn one_rank_owns_everything_and_more_ranks_than_tensors_leave_some_empty() {
        assert_eq!(greedy_partition(&[3, 1, 2], 1), vec![0, 0, 0]);
        let owner = greedy_partition(&[3, 1], 4);
        assert_eq!(owner, vec![0, 1]);
        assert_eq!(loads(&[3, 1], &owner, 4), vec![3, 1, 0, 0]);
    }
}
