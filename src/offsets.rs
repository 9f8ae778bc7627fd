//! Offset tracking per partition: which received offsets are still owed an ack, and therefore
//! which offset may be committed.
//!
//! Pure state, no I/O. The dispatcher records every offset it receives from Kafka and every
//! ack it gets back; the commit loop asks [`PartitionTracker::commit_point`] what to commit.
//! The committed offset is the lowest offset still owed an ack (or one past the last received
//! offset when nothing is owed), so acks may arrive in any order and a commit never passes an
//! un-acked message. Offsets need not be contiguous (compaction, transaction markers): only
//! offsets actually received count. Offsets the consumer steps over without handing them out
//! (transaction markers, aborted records under `read_committed`) are covered by the consumer's
//! position ([`PartitionTracker::reached`]): when nothing is owed, the commit point moves up to
//! it, so a partition that ends in a marker is committed to its end.
//!
//! Acked offsets above the commit point are written into the commit's metadata
//! ([`encode_acked`]); a gateway that takes the partition over reads them back and skips those
//! messages instead of redelivering them.

use std::collections::VecDeque;

use base64::Engine;

/// Largest commit metadata we write: Kafka's default `offset.metadata.max.bytes` is 4096.
pub const MAX_METADATA_LEN: usize = 3_500;
const METADATA_PREFIX: &str = "fanout1:";

#[derive(Debug, Clone, Copy)]
struct Entry {
    offset: i64,
    /// Whether the route's subscriber acked it (or it needs no ack).
    acked: bool,
}

/// What happened to a received offset.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Track {
    /// New: deliver it.
    New,
    /// Recorded as acked by a previous owner of the partition (commit metadata): do not deliver.
    AlreadyAcked,
    /// At or below an offset already received: Kafka re-sent it, ignore.
    Stale,
    /// Below the commit point: everything there was acked or is no record, so the log itself
    /// went back (a topic deleted and created again, a log truncated by an unclean leader
    /// election, an offset reset): the partition must start over from this offset.
    Behind,
}

/// Outcome of one ack.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AckOutcome {
    /// The offset was owed an ack: it now counts as done.
    Done,
    /// Not a pending offset (never received, or already fully acked).
    Unknown,
}

/// Tracks one partition from the moment it is assigned until it is revoked.
#[derive(Debug, Clone)]
pub struct PartitionTracker {
    /// Received offsets at or above the commit point, ascending.
    pending: VecDeque<Entry>,
    /// Commit point when `pending` is empty; `None` until the first offset is known.
    next: Option<i64>,
    /// Number of entries in `pending` that still owe acks.
    owed: usize,
    /// Offsets acked by a previous owner above its commit point, ascending ranges.
    skip: Vec<(i64, i64)>,
    /// The consumer's position as last reported: everything below it was either received or
    /// is no record to deliver. The commit point moves up to it whenever nothing is pending.
    reached: Option<i64>,
}

/// What to commit for a partition: the offset and the metadata that records acks above it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CommitPoint {
    pub offset: i64,
    pub metadata: String,
}

impl PartitionTracker {
    /// `start` is the group's committed offset if there is one; `skip` the acked ranges decoded
    /// from its metadata.
    pub fn new(start: Option<i64>, skip: Vec<(i64, i64)>) -> Self {
        Self { pending: VecDeque::new(), next: start, owed: 0, skip, reached: None }
    }

    /// Records a received offset, owed an ack unless a previous owner recorded it as acked.
    pub fn track(&mut self, offset: i64) -> Track {
        if self.committable().is_some_and(|point| offset < point) {
            return Track::Behind;
        }
        // Everything below `floor` has been received already (or committed before we started).
        let floor = self.pending.back().map(|e| e.offset + 1).or(self.next);
        if floor.is_some_and(|floor| offset < floor) {
            return Track::Stale;
        }
        if self.next.is_none() {
            self.next = Some(offset);
        }
        if self.skipped(offset) {
            self.pending.push_back(Entry { offset, acked: true });
            self.advance();
            return Track::AlreadyAcked;
        }
        self.pending.push_back(Entry { offset, acked: false });
        self.owed += 1;
        Track::New
    }

    fn skipped(&mut self, offset: i64) -> bool {
        // Ranges below `offset` can never match again: offsets only grow.
        while let Some(&(_, end)) = self.skip.first() {
            if end < offset {
                self.skip.remove(0);
            } else {
                break;
            }
        }
        self.skip.first().is_some_and(|&(start, _)| start <= offset)
    }

    /// Records the ack of `offset`.
    pub fn ack(&mut self, offset: i64) -> AckOutcome {
        let Ok(i) = self.pending.binary_search_by_key(&offset, |e| e.offset) else {
            return AckOutcome::Unknown;
        };
        let entry = &mut self.pending[i];
        if entry.acked {
            return AckOutcome::Unknown;
        }
        entry.acked = true;
        self.owed -= 1;
        if i == 0 {
            self.advance();
        }
        AckOutcome::Done
    }

    fn advance(&mut self) {
        while let Some(front) = self.pending.front() {
            if !front.acked {
                break;
            }
            self.next = Some(front.offset + 1);
            self.pending.pop_front();
        }
        self.catch_up();
    }

    /// The consumer's position is `position`: every offset below it has been handed out (and
    /// received here) or was stepped over by the consumer (a transaction's commit or abort
    /// marker, an aborted record), which librdkafka never hands out. The caller passes only a
    /// position that covers no record still on its way or dropped to be fetched again.
    pub fn reached(&mut self, position: i64) {
        if self.reached.is_some_and(|r| r >= position) {
            return;
        }
        self.reached = Some(position);
        self.catch_up();
    }

    /// With nothing pending, the commit point is the consumer's position if that is further.
    fn catch_up(&mut self) {
        if !self.pending.is_empty() {
            return;
        }
        if let Some(reached) = self.reached {
            if self.next.is_none_or(|next| next < reached) {
                self.next = Some(reached);
            }
        }
    }

    /// The offset to commit: every received offset below it has been acked.
    pub fn committable(&self) -> Option<i64> {
        self.pending.front().map(|e| e.offset).or(self.next)
    }

    /// Offsets held but not yet committable (owed or acked above a gap): what the partition
    /// holds in memory, the number flow control bounds.
    pub fn uncommitted(&self) -> usize {
        self.pending.len()
    }

    /// Offsets still owed at least one ack.
    pub fn owed(&self) -> usize {
        self.owed
    }

    /// Ranges of acked offsets above the commit point, ascending and merged. Two acked
    /// entries next to each other among *received* offsets share a range even when Kafka's
    /// offsets have a gap between them: nothing in the gap exists to be delivered.
    pub fn acked_above(&self) -> Vec<(i64, i64)> {
        let mut ranges: Vec<(i64, i64)> = Vec::new();
        let mut previous_acked = false;
        for e in &self.pending {
            let acked = e.acked;
            if acked {
                match ranges.last_mut() {
                    Some((_, end)) if previous_acked => *end = e.offset,
                    _ => ranges.push((e.offset, e.offset)),
                }
            }
            previous_acked = acked;
        }
        ranges
    }

    /// The offset that holds the commit point back while later ones are acked: the lowest
    /// received offset still owed an ack, when some offset above it is acked. None when the
    /// partition commits freely or everything it holds is owed (a slow subscriber, not one
    /// message). O(1): acked entries never stay at the front, so any acked entry is above it.
    pub fn head_of_line(&self) -> Option<i64> {
        let front = self.pending.front()?;
        (!front.acked && self.owed < self.pending.len()).then_some(front.offset)
    }

    /// Commit point with metadata, or `None` before any offset is known.
    pub fn commit_point(&self) -> Option<CommitPoint> {
        let offset = self.committable()?;
        Some(CommitPoint { offset, metadata: encode_acked(offset, &self.acked_above()) })
    }
}

/// Encodes acked ranges above `base` as `fanout1:` + base64 of varints (gap, length) pairs.
/// Ranges that do not fit in [`MAX_METADATA_LEN`] are left out: those messages are then
/// redelivered after a takeover, which is safe (at-least-once), just not as thrifty.
pub fn encode_acked(base: i64, ranges: &[(i64, i64)]) -> String {
    if ranges.is_empty() {
        return String::new();
    }
    let max_raw = (MAX_METADATA_LEN - METADATA_PREFIX.len()) / 4 * 3;
    let mut raw = Vec::new();
    let mut cursor = base;
    for &(start, end) in ranges {
        if start < cursor || end < start {
            break;
        }
        let mut item = Vec::with_capacity(20);
        put_varint(&mut item, (start - cursor) as u64);
        put_varint(&mut item, (end - start) as u64);
        if raw.len() + item.len() > max_raw {
            break;
        }
        raw.extend_from_slice(&item);
        cursor = end + 1;
    }
    format!("{METADATA_PREFIX}{}", base64::engine::general_purpose::STANDARD_NO_PAD.encode(raw))
}

/// Decodes what [`encode_acked`] wrote for commit point `base`. Metadata written by anyone
/// else (or garbage) decodes to nothing: the messages are simply redelivered.
pub fn decode_acked(base: i64, metadata: &str) -> Vec<(i64, i64)> {
    let Some(body) = metadata.strip_prefix(METADATA_PREFIX) else {
        return Vec::new();
    };
    let Ok(raw) = base64::engine::general_purpose::STANDARD_NO_PAD.decode(body) else {
        return Vec::new();
    };
    let mut ranges = Vec::new();
    let mut cursor = base;
    let mut input = raw.as_slice();
    while !input.is_empty() {
        let (Some(gap), Some(len)) = (take_varint(&mut input), take_varint(&mut input)) else {
            return Vec::new();
        };
        let (Ok(gap), Ok(len)) = (i64::try_from(gap), i64::try_from(len)) else {
            return Vec::new();
        };
        let Some(start) = cursor.checked_add(gap) else { return Vec::new() };
        let Some(end) = start.checked_add(len) else { return Vec::new() };
        ranges.push((start, end));
        cursor = end + 1;
    }
    ranges
}

fn put_varint(out: &mut Vec<u8>, mut v: u64) {
    while v >= 0x80 {
        out.push((v as u8) | 0x80);
        v >>= 7;
    }
    out.push(v as u8);
}

fn take_varint(input: &mut &[u8]) -> Option<u64> {
    let mut v = 0u64;
    for shift in (0..64).step_by(7) {
        let (&b, rest) = input.split_first()?;
        *input = rest;
        v |= u64::from(b & 0x7f) << shift;
        if b & 0x80 == 0 {
            return Some(v);
        }
    }
    None
}

#[cfg(test)]
mod tests {
    #[test]
    fn the_head_of_line_is_the_lowest_owed_offset_once_a_later_one_is_acked() {
        let mut t = PartitionTracker::new(Some(10), vec![]);
        for o in 10..14 {
            t.track(o);
        }
        assert_eq!(t.head_of_line(), None, "all owed: a slow subscriber, not one message");
        t.ack(12);
        assert_eq!(t.head_of_line(), Some(10));
        t.ack(10);
        assert_eq!(t.head_of_line(), Some(11), "the next owed one holds the rest now");
        t.ack(11);
        assert_eq!(t.head_of_line(), None, "13 is owed and nothing above it is acked");
        t.ack(13);
        assert_eq!(t.head_of_line(), None);
    }

    use super::*;

    #[test]
    fn a_record_below_the_commit_point_means_the_log_went_back() {
        let mut t = PartitionTracker::new(Some(100), Vec::new());
        assert_eq!(t.track(100), Track::New);
        assert_eq!(t.track(101), Track::New);
        assert_eq!(t.track(100), Track::Stale, "a re-send of what is held");
        assert_eq!(t.track(99), Track::Behind, "below the group's commit: the log started over");
        t.ack(100);
        t.ack(101);
        assert_eq!(t.track(101), Track::Behind);
        assert_eq!(t.track(0), Track::Behind);
        assert_eq!(PartitionTracker::new(None, Vec::new()).track(0), Track::New, "nothing known yet");
    }
    use proptest::prelude::*;

    #[test]
    fn commits_lowest_unacked_offset() {
        let mut t = PartitionTracker::new(None, vec![]);
        for o in 10..15 {
            assert_eq!(t.track(o), Track::New);
        }
        assert_eq!(t.committable(), Some(10));
        assert_eq!(t.ack(12), AckOutcome::Done);
        assert_eq!(t.ack(11), AckOutcome::Done);
        assert_eq!(t.committable(), Some(10), "10 is still owed");
        assert_eq!(t.ack(10), AckOutcome::Done);
        assert_eq!(t.committable(), Some(13));
        assert_eq!(t.ack(14), AckOutcome::Done);
        assert_eq!(t.ack(13), AckOutcome::Done);
        assert_eq!(t.committable(), Some(15));
        assert_eq!(t.uncommitted(), 0);
    }

    #[test]
    fn gaps_in_kafka_offsets_do_not_block_commits() {
        let mut t = PartitionTracker::new(Some(0), vec![]);
        t.track(3);
        t.track(7);
        assert_eq!(t.committable(), Some(3));
        t.ack(3);
        assert_eq!(t.committable(), Some(7));
        t.ack(7);
        assert_eq!(t.committable(), Some(8));
    }

    #[test]
    fn commits_step_over_offsets_the_consumer_passed_without_handing_out() {
        // A transaction of 3..=5 and its commit marker at 6; the consumer's position is 7.
        let mut t = PartitionTracker::new(Some(3), vec![]);
        for o in 3..=5 {
            t.track(o);
        }
        t.reached(7);
        assert_eq!(t.committable(), Some(3), "owed offsets hold the commit point");
        t.ack(4);
        t.ack(5);
        assert_eq!(t.committable(), Some(3));
        t.ack(3);
        assert_eq!(t.committable(), Some(7), "nothing owed: the marker at 6 is stepped over");
        // An aborted transaction 7..=9 and its marker at 10: nothing handed out, position 11.
        t.reached(11);
        assert_eq!(t.committable(), Some(11));
        assert_eq!(t.track(11), Track::New);
        t.reached(5);
        assert_eq!(t.committable(), Some(11), "an older position moves nothing back");
    }

    #[test]
    fn unknown_and_repeated_acks_are_reported() {
        let mut t = PartitionTracker::new(None, vec![]);
        t.track(5);
        t.track(6);
        assert_eq!(t.ack(99), AckOutcome::Unknown);
        assert_eq!(t.ack(6), AckOutcome::Done);
        assert_eq!(t.ack(6), AckOutcome::Unknown, "already acked above the commit point");
        assert_eq!(t.ack(5), AckOutcome::Done);
        assert_eq!(t.ack(5), AckOutcome::Unknown, "already committed");
    }

    #[test]
    fn resent_offsets_are_stale_and_offsets_below_the_commit_point_behind() {
        let mut t = PartitionTracker::new(Some(10), vec![]);
        assert_eq!(t.track(9), Track::Behind, "below what the group committed");
        assert_eq!(t.track(10), Track::New);
        assert_eq!(t.track(10), Track::Stale, "held: a re-send");
        t.ack(10);
        assert_eq!(t.track(10), Track::Behind, "acked and committable: only a log that began again has it");
        assert_eq!(t.track(11), Track::New);
    }

    #[test]
    fn skip_ranges_from_metadata_count_as_acked() {
        let mut t = PartitionTracker::new(Some(100), vec![(102, 103), (105, 105)]);
        assert_eq!(t.track(100), Track::New);
        assert_eq!(t.track(101), Track::New);
        assert_eq!(t.track(102), Track::AlreadyAcked);
        assert_eq!(t.track(103), Track::AlreadyAcked);
        assert_eq!(t.track(104), Track::New);
        assert_eq!(t.track(105), Track::AlreadyAcked);
        assert_eq!(t.track(106), Track::New);
        t.ack(100);
        t.ack(101);
        assert_eq!(t.committable(), Some(104));
    }

    #[test]
    fn commit_point_carries_acked_ranges() {
        let mut t = PartitionTracker::new(Some(0), vec![]);
        for o in [0, 1, 2, 3, 5, 6, 9] {
            t.track(o);
        }
        for o in [1, 2, 5, 6, 9] {
            t.ack(o);
        }
        assert_eq!(t.acked_above(), vec![(1, 2), (5, 9)], "3 is owed; 5,6,9 are adjacent received");
        let point = t.commit_point().expect("known");
        assert_eq!(point.offset, 0);
        assert_eq!(decode_acked(0, &point.metadata), vec![(1, 2), (5, 9)]);
    }

    #[test]
    fn metadata_is_bounded() {
        let ranges: Vec<(i64, i64)> = (0..10_000).map(|i| (i * 3 + 1, i * 3 + 1)).collect();
        let text = encode_acked(0, &ranges);
        assert!(text.len() <= MAX_METADATA_LEN, "{}", text.len());
        let decoded = decode_acked(0, &text);
        assert!(!decoded.is_empty());
        assert_eq!(decoded[..], ranges[..decoded.len()], "a prefix survives");
    }

    #[test]
    fn foreign_or_garbage_metadata_decodes_to_nothing() {
        assert!(decode_acked(0, "").is_empty());
        assert!(decode_acked(0, "written by another tool").is_empty());
        assert!(decode_acked(0, "fanout1:!!!").is_empty());
        assert!(decode_acked(0, "fanout1:gA").is_empty(), "truncated varint");
    }

    #[derive(Debug, Clone)]
    enum Op {
        Receive,
        Ack(usize),
    }

    fn ops() -> impl Strategy<Value = Vec<Op>> {
        prop::collection::vec(prop_oneof![1 => Just(Op::Receive), 1 => (0usize..1000).prop_map(Op::Ack)], 0..400)
    }

    proptest! {
        /// For any interleaving of receives (with gaps) and out-of-order acks, the commit point
        /// never passes an offset that is still owed an ack, and it reaches one past the last
        /// received offset once everything is acked.
        #[test]
        fn commit_never_passes_an_unacked_offset(ops in ops(), gaps in prop::collection::vec(1i64..4, 400)) {
            let mut t = PartitionTracker::new(None, vec![]);
            let mut next_offset = 1_000i64;
            let mut received: Vec<i64> = Vec::new();
            let mut acked = std::collections::BTreeSet::new();
            for (i, op) in ops.iter().enumerate() {
                match op {
                    Op::Receive => {
                        next_offset += gaps[i % gaps.len()];
                        prop_assert_eq!(t.track(next_offset), Track::New);
                        received.push(next_offset);
                    }
                    Op::Ack(pick) => {
                        if received.is_empty() { continue; }
                        let o = received[pick % received.len()];
                        let outcome = t.ack(o);
                        if acked.insert(o) {
                            prop_assert_eq!(outcome, AckOutcome::Done);
                        } else {
                            prop_assert_eq!(outcome, AckOutcome::Unknown);
                        }
                    }
                }
                if let Some(c) = t.committable() {
                    for o in &received {
                        if *o < c {
                            prop_assert!(acked.contains(o), "committed {} past un-acked {}", c, o);
                        }
                    }
                    // And it is as far as it may go: the commit point itself is owed.
                    if received.iter().any(|o| !acked.contains(o)) {
                        prop_assert!(received.contains(&c) && !acked.contains(&c));
                    }
                }
                // Metadata round-trips to exactly the acked offsets above the commit point.
                if let Some(point) = t.commit_point() {
                    let ranges = decode_acked(point.offset, &point.metadata);
                    let above: Vec<i64> = received.iter().copied()
                        .filter(|o| *o >= point.offset && acked.contains(o)).collect();
                    for o in &above {
                        prop_assert!(ranges.iter().any(|(s, e)| s <= o && o <= e));
                    }
                    for o in received.iter().filter(|o| !acked.contains(o)) {
                        prop_assert!(!ranges.iter().any(|(s, e)| s <= o && o <= e));
                    }
                }
            }
            for o in &received {
                if acked.insert(*o) { t.ack(*o); }
            }
            if let Some(last) = received.last() {
                prop_assert_eq!(t.committable(), Some(last + 1));
                prop_assert_eq!(t.uncommitted(), 0);
            }
        }

        /// A takeover that reads the metadata skips exactly the acked offsets.
        #[test]
        fn takeover_skips_exactly_what_was_acked(acks in prop::collection::vec(any::<bool>(), 1..300)) {
            let mut old = PartitionTracker::new(Some(0), vec![]);
            for o in 0..acks.len() as i64 { old.track(o); }
            for (o, a) in acks.iter().enumerate() { if *a { old.ack(o as i64); } }
            let point = old.commit_point().expect("known");
            let mut new = PartitionTracker::new(Some(point.offset), decode_acked(point.offset, &point.metadata));
            for (o, a) in acks.iter().enumerate().skip(point.offset as usize) {
                let expect = if *a { Track::AlreadyAcked } else { Track::New };
                prop_assert_eq!(new.track(o as i64), expect);
            }
        }
    }
}
