//! Loss and order checks on the `seq` numbers one receiving connection sees.
//!
//! PROTOCOL.md promises that every member sees a room's messages in `seq` order, each once,
//! with no gaps. `RoomOrder` holds a receiver to exactly that: a jump past `last + 1` counts
//! the skipped numbers as lost, and a `seq` at or below the last one seen counts as out of
//! order (or duplicated). `PairWindow` serves direct messages, where one connection learns a
//! pair's numbers from two frame kinds (acks of its own sends, and the partner's `dm`s) whose
//! relative order nothing promises, so it tolerates reordering within a window and counts
//! only numbers that never show up.

/// What one observed `seq` revealed.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Verdict {
    /// Numbers skipped over in the live stream.
    pub lost: u64,
    /// 1 when the number was at or below the last one seen.
    pub out_of_order: u64,
    /// Numbers skipped over between the `since` of a resuming join and the room's
    /// `last_seq` at that join: history the server should have replayed.
    pub resume_missed: u64,
    /// The message is replayed history (at or below a resuming join's `last_seq`), not a
    /// live delivery, so its age says nothing about delivery latency.
    pub replayed: bool,
}

/// One receiving connection's view of one room's `seq`.
#[derive(Clone, Debug, Default)]
pub struct RoomOrder {
    /// Highest `seq` seen (or the baseline from the join); `None` before either.
    last: Option<u64>,
    /// While resuming: numbers up to this bound are replayed history, not live messages.
    /// `Some(u64::MAX)` until the resuming join's ack says where history ends.
    resume_until: Option<u64>,
}

impl RoomOrder {
    /// The highest `seq` seen, which a reconnecting client passes as `since`.
    pub fn last(&self) -> Option<u64> {
        self.last
    }

    /// Prepares for a join. With `since`, the server is asked to replay what came after it,
    /// so the baseline stays where this connection left off.
    pub fn joining(&mut self, since: Option<u64>) {
        match since {
            Some(s) => {
                self.last = Some(s);
                self.resume_until = Some(u64::MAX);
            }
            None => {
                self.last = None;
                self.resume_until = None;
            }
        }
    }

    /// The join ack's `last_seq`: the room's number when this connection joined.
    pub fn joined(&mut self, last_seq: u64) {
        if self.resume_until.is_some() {
            // Resuming: history up to `last_seq` should be replayed, so keep the baseline.
            self.resume_until = Some(last_seq);
            return;
        }
        // A message may have overtaken the ack; nothing at or below the ack's number is owed.
        self.last = Some(self.last.map_or(last_seq, |l| l.max(last_seq)));
    }

    /// Checks one received message number.
    pub fn observe(&mut self, seq: u64) -> Verdict {
        let mut verdict = Verdict::default();
        let Some(last) = self.last else {
            // No baseline yet (the ack is still to come): this one sets it.
            self.last = Some(seq);
            return verdict;
        };
        if seq <= last {
            verdict.out_of_order = 1;
            return verdict;
        }

        // Split the skipped numbers between replayed history and the live stream.
        let skipped_from = last + 1;
        match self.resume_until {
            Some(bound) => {
                verdict.replayed = seq <= bound;
                let missed_end = seq.min(bound.saturating_add(1));
                verdict.resume_missed = missed_end.saturating_sub(skipped_from);
                verdict.lost = seq - skipped_from.max(missed_end);
                if seq > bound {
                    self.resume_until = None;
                }
            }
            None => verdict.lost = seq - skipped_from,
        }
        self.last = Some(seq);
        verdict
    }
}

/// Width of the reordering window of `PairWindow`, in sequence numbers.
const WINDOW: u64 = 64;

/// The numbers of one direct-message pair as seen from one side, in any order within
/// `WINDOW` of the lowest missing one.
#[derive(Clone, Debug, Default)]
pub struct PairWindow {
    /// Every number up to and including `floor` is accounted for (seen or counted lost).
    floor: Option<u64>,
    /// Bit `i` set: number `floor + 1 + i` was seen.
    above: u64,
}

impl PairWindow {
    /// Records a number; returns how many numbers fell out of the window unseen (lost)
    /// and whether this one was a repeat.
    pub fn see(&mut self, seq: u64) -> (u64, bool) {
        let Some(floor) = self.floor else {
            // The first number seen is the baseline: the pair may predate this connection.
            self.floor = Some(seq);
            return (0, false);
        };
        if seq <= floor {
            return (0, true);
        }

        // Slide the window forward until `seq` fits, counting the holes pushed out.
        let mut lost = 0;
        let mut floor = floor;
        let offset = seq - floor - 1;
        if offset >= WINDOW {
            let shift = offset - WINDOW + 1;
            if shift >= WINDOW {
                lost += shift - u64::from(self.above.count_ones());
                self.above = 0;
            } else {
                let gone = self.above & ((1u64 << shift) - 1);
                lost += shift - u64::from(gone.count_ones());
                self.above >>= shift;
            }
            floor += shift;
        }

        let bit = 1u64 << (seq - floor - 1);
        if self.above & bit != 0 {
            self.floor = Some(floor);
            return (lost, true);
        }
        self.above |= bit;

        // Advance past the run of seen numbers just above the floor.
        let run = u64::from(self.above.trailing_ones());
        floor += run;
        self.above = if run >= WINDOW { 0 } else { self.above >> run };
        self.floor = Some(floor);
        (lost, false)
    }

    /// At the end: holes below the highest number seen are lost for good.
    pub fn finish(&self) -> u64 {
        if self.above == 0 {
            return 0;
        }
        let highest = u64::from(WINDOW as u32 - self.above.leading_zeros());
        highest - u64::from(self.above.count_ones())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn run(order: &mut RoomOrder, seqs: &[u64]) -> Verdict {
        let mut total = Verdict::default();
        for &s in seqs {
            let v = order.observe(s);
            total.lost += v.lost;
            total.out_of_order += v.out_of_order;
            total.resume_missed += v.resume_missed;
        }
        total
    }

    #[test]
    fn in_order_stream_is_clean() {
        let mut o = RoomOrder::default();
        o.joining(None);
        o.joined(10);
        assert_eq!(run(&mut o, &[11, 12, 13, 14]), Verdict::default());
        assert_eq!(o.last(), Some(14));
    }

    #[test]
    fn gap_counts_each_missing_number() {
        let mut o = RoomOrder::default();
        o.joined(0);
        let v = run(&mut o, &[1, 2, 5, 6, 9]);
        assert_eq!(
            v,
            Verdict {
                lost: 4,
                ..Verdict::default()
            }
        );
    }

    #[test]
    fn first_message_after_join_is_checked_against_last_seq() {
        let mut o = RoomOrder::default();
        o.joined(7);
        assert_eq!(o.observe(9).lost, 1);
    }

    #[test]
    fn repeats_and_regressions_are_out_of_order() {
        let mut o = RoomOrder::default();
        o.joined(0);
        let v = run(&mut o, &[1, 2, 2, 3, 1, 4]);
        assert_eq!(
            v,
            Verdict {
                out_of_order: 2,
                ..Verdict::default()
            }
        );
    }

    #[test]
    fn a_late_message_is_lost_then_out_of_order() {
        let mut o = RoomOrder::default();
        o.joined(0);
        let v = run(&mut o, &[1, 3, 2, 4]);
        assert_eq!(
            v,
            Verdict {
                lost: 1,
                out_of_order: 1,
                ..Verdict::default()
            }
        );
    }

    #[test]
    fn message_before_the_ack_sets_the_baseline() {
        let mut o = RoomOrder::default();
        o.joining(None);
        assert_eq!(o.observe(21), Verdict::default());
        o.joined(20);
        assert_eq!(o.observe(22), Verdict::default());
    }

    #[test]
    fn resume_with_full_replay_is_clean() {
        let mut o = RoomOrder::default();
        o.joined(0);
        run(&mut o, &[1, 2, 3]);
        o.joining(o.last());
        o.joined(6);
        assert!(o.observe(4).replayed);
        assert_eq!(run(&mut o, &[5, 6, 7, 8]), Verdict::default());
        assert!(!o.observe(9).replayed);
    }

    #[test]
    fn resume_without_replay_counts_resume_missed_not_lost() {
        let mut o = RoomOrder::default();
        o.joined(0);
        run(&mut o, &[1, 2, 3]);
        o.joining(o.last());
        o.joined(6);
        // 4..=6 were history the server did not replay; 7 and 8 are live.
        let v = run(&mut o, &[7, 8]);
        assert_eq!(
            v,
            Verdict {
                resume_missed: 3,
                ..Verdict::default()
            }
        );
    }

    #[test]
    fn resume_gap_straddling_the_bound_splits() {
        let mut o = RoomOrder::default();
        o.joined(0);
        o.observe(1);
        o.joining(o.last());
        o.joined(3);
        // 2, 3 were owed as history, 4 and 5 as live messages.
        let v = o.observe(6);
        assert_eq!(
            v,
            Verdict {
                lost: 2,
                resume_missed: 2,
                ..Verdict::default()
            }
        );
        // Out of resume mode now: later gaps are plain losses.
        assert_eq!(o.observe(8).lost, 1);
    }

    #[test]
    fn resume_gap_before_the_ack_counts_as_missed() {
        let mut o = RoomOrder::default();
        o.joined(0);
        o.observe(1);
        o.joining(o.last());
        let v = o.observe(5);
        assert_eq!(
            v,
            Verdict {
                resume_missed: 3,
                replayed: true,
                ..Verdict::default()
            }
        );
    }

    #[test]
    fn pair_window_tolerates_reordering() {
        let mut w = PairWindow::default();
        let mut lost = 0;
        let mut dups = 0;
        for s in [1, 3, 2, 5, 4, 6, 8, 7] {
            let (l, d) = w.see(s);
            lost += l;
            dups += u64::from(d);
        }
        assert_eq!((lost, dups, w.finish()), (0, 0, 0));
    }

    #[test]
    fn pair_window_counts_holes_at_finish_and_repeats() {
        let mut w = PairWindow::default();
        for s in [1, 2, 4, 6] {
            assert_eq!(w.see(s), (0, false));
        }
        assert_eq!(w.see(4), (0, true));
        assert_eq!(w.see(1), (0, true));
        // 3 and 5 never came.
        assert_eq!(w.finish(), 2);
    }

    #[test]
    fn pair_window_counts_holes_pushed_out() {
        let mut w = PairWindow::default();
        w.see(1);
        // Jump far ahead: 2..=99 are unseen; those pushed below the window are lost now.
        let (lost, dup) = w.see(100);
        assert!(!dup);
        assert_eq!(lost + w.finish(), 98);

        // A huge jump clears the window entirely.
        let mut w = PairWindow::default();
        w.see(1);
        w.see(3);
        let (lost, _) = w.see(1000);
        assert_eq!(lost + w.finish(), 997);
    }

    #[test]
    fn pair_window_fills_a_full_window() {
        let mut w = PairWindow::default();
        w.see(0);
        for s in (2..=64).rev() {
            w.see(s);
        }
        assert_eq!(w.see(1), (0, false));
        assert_eq!(w.finish(), 0);
        assert_eq!(w.see(65), (0, false));
    }
}
