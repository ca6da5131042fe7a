//! Settling a group of writes that share one transaction: the one place that decides what
//! happens when the group fails, for both the actors' batches ([`TxActor`]) and the
//! requests' group commits ([`GroupCommit`]).
//!
//! The group is tried together. A member that fails on its own is answered alone and the rest
//! tried again without it; a transaction that lost a conflict with another one is tried again
//! at once (a bounded number of times); a group refused as a whole without saying who is to
//! blame (a combined statement, a deferred write at commit) is split in halves and each half
//! settled the same way, so one bad member costs a few transactions, never its neighbours'
//! effects; a failure that fails everyone (the connection) answers every member.
//!
//! [`TxActor`]: crate::TxActor
//! [`GroupCommit`]: crate::GroupCommit

/// What one attempt at a group came to (everything was rolled back unless it is `Done`).
#[derive(Debug)]
pub(crate) enum Verdict<E> {
    /// Committed: every member is done.
    Done,
    /// This member failed on its own: answer it, try the rest again.
    Blame(usize, E),
    /// Refused as a whole; who is to blame is unknown.
    Refused(E),
    /// Lost a conflict with another transaction: the same attempt may succeed at once.
    Conflict(E),
    /// A failure that fails every member (the connection, the pool).
    Failed(E),
    /// Stop settling now (a panic: whatever is undecided comes back later).
    Halt,
}

/// A group being settled: how to attempt some of its members, and what to do with the
/// answers.
pub(crate) trait Group {
    /// What a failed member is answered.
    type Error: Clone;

    /// One attempt at `members`, in one transaction.
    async fn attempt(&mut self, members: &[usize]) -> Verdict<Self::Error>;

    /// `members` were committed.
    fn done(&mut self, members: &[usize]);

    /// `member` failed with `error`.
    fn failed(&mut self, member: usize, error: Self::Error);
}

/// Times in a row a group is tried again at once after losing a conflict.
pub(crate) const CONFLICT_RETRIES: u32 = 3;

/// Settles `members` of `group` (see the [module](self)); false if it was halted.
///
/// Halving finds one bad member in about `2 log2 n` attempts. A group refused whatever its
/// members (a read-only database, a statement timeout) would take `2n - 1`; past a bound of
/// a few bad members' worth of refusals, what is left fails with the last refusal instead
/// (the deliveries come back later; nothing is lost).
pub(crate) async fn settle<G: Group>(group: &mut G, members: Vec<usize>) -> bool {
    let depth = (usize::BITS - members.len().leading_zeros()) as usize;
    let mut refusals_left = 4 * depth + 2;
    let mut stack = vec![members];
    while let Some(mut members) = stack.pop() {
        let mut conflicts = 0;
        while !members.is_empty() {
            let verdict = group.attempt(&members).await;
            if matches!(verdict, Verdict::Refused(_)) {
                refusals_left = refusals_left.saturating_sub(1);
            }
            match verdict {
                Verdict::Done => {
                    group.done(&members);
                    break;
                }
                Verdict::Blame(member, e) => {
                    group.failed(member, e);
                    members.retain(|&m| m != member);
                }
                Verdict::Conflict(_) if conflicts < CONFLICT_RETRIES => conflicts += 1,
                Verdict::Refused(e) if refusals_left == 0 => {
                    for m in members.iter().chain(stack.iter().flatten()) {
                        group.failed(*m, e.clone());
                    }
                    return true;
                }
                Verdict::Refused(_) if members.len() > 1 => {
                    // Each half on its own, the first half first (kept in order).
                    let second = members.split_off(members.len() / 2);
                    stack.push(second);
                    stack.push(std::mem::take(&mut members));
                }
                Verdict::Refused(e) | Verdict::Conflict(e) | Verdict::Failed(e) => {
                    for &m in &members {
                        group.failed(m, e.clone());
                    }
                    break;
                }
                Verdict::Halt => return false,
            }
        }
    }
    true
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Members whose number is in `bad` are refused; a group holding one is refused as a
    /// whole. Counts attempts.
    struct Numbers {
        bad: Vec<usize>,
        blame_directly: bool,
        attempts: usize,
        done: Vec<usize>,
        failed: Vec<usize>,
    }

    impl Group for Numbers {
        type Error = String;

        async fn attempt(&mut self, members: &[usize]) -> Verdict<String> {
            self.attempts += 1;
            match members.iter().find(|m| self.bad.contains(m)) {
                None => Verdict::Done,
                Some(&m) if self.blame_directly => Verdict::Blame(m, format!("{m} is bad")),
                Some(_) => Verdict::Refused("refused".into()),
            }
        }

        fn done(&mut self, members: &[usize]) {
            self.done.extend(members);
        }

        fn failed(&mut self, member: usize, _: String) {
            self.failed.push(member);
        }
    }

    fn numbers(bad: &[usize], blame_directly: bool) -> Numbers {
        Numbers {
            bad: bad.to_vec(),
            blame_directly,
            attempts: 0,
            done: Vec::new(),
            failed: Vec::new(),
        }
    }

    #[tokio::test]
    async fn a_group_refused_as_a_whole_is_halved_until_the_bad_member_is_alone() {
        let mut g = numbers(&[37], false);
        assert!(settle(&mut g, (0..64).collect()).await);
        assert_eq!(g.failed, vec![37]);
        let mut done = g.done.clone();
        done.sort_unstable();
        assert_eq!(done, (0..64).filter(|&n| n != 37).collect::<Vec<_>>());
        // One attempt of the whole, then two per halving step (log2 64 = 6): 13.
        assert_eq!(g.attempts, 13, "bisected, not one at a time");
    }

    #[tokio::test]
    async fn a_member_to_blame_is_taken_out_and_the_rest_committed_together() {
        let mut g = numbers(&[3, 9], true);
        assert!(settle(&mut g, (0..16).collect()).await);
        assert_eq!(g.failed, vec![3, 9]);
        assert_eq!(g.done.len(), 14);
        assert_eq!(g.attempts, 3);
    }

    #[tokio::test]
    async fn a_group_refused_whatever_its_members_is_given_up_after_a_bounded_number_of_tries() {
        let mut g = numbers(&(0..256).collect::<Vec<_>>(), false);
        assert!(settle(&mut g, (0..256).collect()).await);
        assert_eq!(g.failed.len(), 256, "every member answered");
        assert!(g.done.is_empty());
        assert!(g.attempts <= 40, "{} attempts, not 511", g.attempts);
    }

    struct Conflicted(usize);

    impl Group for Conflicted {
        type Error = String;

        async fn attempt(&mut self, _: &[usize]) -> Verdict<String> {
            self.0 += 1;
            Verdict::Conflict("deadlock".into())
        }

        fn done(&mut self, _: &[usize]) {}

        fn failed(&mut self, _: usize, _: String) {}
    }

    #[tokio::test]
    async fn conflicts_are_tried_again_a_bounded_number_of_times() {
        let mut g = Conflicted(0);
        assert!(settle(&mut g, vec![0, 1]).await);
        assert_eq!(g.0, 1 + CONFLICT_RETRIES as usize);
    }
}
