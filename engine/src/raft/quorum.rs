//! Majority arithmetic, kept apart so it can be read and tested alone.

/// How many votes make a majority of `voters`.
pub fn majority(voters: usize) -> usize {
    voters / 2 + 1
}

/// The highest index that a majority holds, given each voter's match index
/// (the leader's own durable index included). Reorders `matched`.
pub fn committed_index(matched: &mut [u64]) -> u64 {
    assert!(!matched.is_empty(), "a cluster has at least one voter");
    matched.sort_unstable_by(|a, b| b.cmp(a));
    matched[majority(matched.len()) - 1]
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn majority_of_odd_and_even_clusters() {
        assert_eq!(majority(1), 1);
        assert_eq!(majority(3), 2);
        assert_eq!(majority(4), 3);
        assert_eq!(majority(5), 3);
    }

    #[test]
    fn committed_index_is_the_majority_th_highest_match() {
        assert_eq!(committed_index(&mut [5, 3, 1]), 3);
        assert_eq!(committed_index(&mut [1, 9, 9, 2, 2]), 2);
        assert_eq!(committed_index(&mut [7]), 7);
        assert_eq!(committed_index(&mut [4, 4, 0, 0]), 0);
    }
}
