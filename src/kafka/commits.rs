//! The route consumer's offset commits while they are out: asynchronous, so that a commit
//! never stops the consumer thread (a synchronous one holds it for a broker round trip, and
//! for up to `session.timeout.ms` while the group coordinator moves), and checked per
//! partition when librdkafka's commit callback reports back, so one refused partition does not
//! count as all of them failing.
//!
//! Kafka also refuses commits for their size: a partition's metadata past
//! `offset.metadata.max.bytes`, and one request whose records pass the offsets topic's
//! `max.message.bytes` (1 MiB by default; a few hundred partitions with full acked-range
//! metadata). So a commit goes out in requests of at most [`REQUEST_BUDGET`] bytes; a request
//! refused whole is split in halves and sent again, down to one partition, which then goes
//! without its metadata, as does a partition whose metadata alone was refused. Metadata only
//! spares redeliveries after a takeover: an offset without it is still a correct commit.
//!
//! Pure bookkeeping (no librdkafka here): the thread sends what [`InFlight`] returns and hands
//! back what the callback said, so every decision has a unit test below.

use std::collections::HashSet;
use std::time::{Duration, Instant};

use rdkafka::types::RDKafkaErrorCode;
use tokio::sync::oneshot;

use super::{CommitOutcome, TopicPartition};
use crate::offsets::CommitPoint;

/// Most bytes of one commit request: well under the 1 MiB Kafka stores in one offsets-topic
/// batch by default.
pub const REQUEST_BUDGET: usize = 256 * 1024;
/// Bytes a partition costs in a commit request beside its metadata (topic, partition, offset,
/// the record's framing): an estimate on the safe side.
const PER_PARTITION: usize = 96;
/// How long a commit may wait for its callback before it is reported as failed (its points
/// go again with the next commit).
pub const ANSWER_LIMIT: Duration = Duration::from_secs(60);

/// One commit request: the points it carries.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Request {
    pub points: Vec<(TopicPartition, CommitPoint)>,
}

impl Request {
    /// What identifies the request in librdkafka's answer: its partitions and offsets, sorted.
    fn key(&self) -> Vec<(TopicPartition, i64)> {
        key_of(self.points.iter().map(|(tp, p)| (tp.clone(), p.offset)))
    }
}

fn key_of(parts: impl Iterator<Item = (TopicPartition, i64)>) -> Vec<(TopicPartition, i64)> {
    let mut key: Vec<(TopicPartition, i64)> = parts.collect();
    key.sort();
    key
}

/// What librdkafka's commit callback said about one request.
#[derive(Debug, Clone)]
pub struct Answer {
    /// Each partition of the request, its offset and its own error, if any.
    pub parts: Vec<(TopicPartition, i64, Option<RDKafkaErrorCode>)>,
    /// The request's error: librdkafka sets it when the request failed, or when every
    /// partition did (then it is the last partition's).
    pub error: Option<RDKafkaErrorCode>,
}

/// A commit the dispatcher asked for, finished: who to tell, and what.
pub struct Finished {
    pub done: Option<oneshot::Sender<CommitOutcome>>,
    pub outcome: CommitOutcome,
    /// The points that landed, for the committed offsets the operator sees.
    pub landed: Vec<(TopicPartition, CommitPoint)>,
    pub started: Instant,
}

/// One commit the dispatcher asked for, while requests of it are out.
struct Open {
    points: Vec<(TopicPartition, CommitPoint)>,
    out: Vec<Request>,
    outcome: CommitOutcome,
    done: Option<oneshot::Sender<CommitOutcome>>,
    started: Instant,
}

impl Open {
    fn finished(self) -> Finished {
        let landed = self.points.iter().filter(|(tp, _)| self.outcome.landed.contains(tp)).cloned().collect::<Vec<_>>();
        Finished { done: self.done, outcome: self.outcome, landed, started: self.started }
    }
}

/// The commits that are out, and the partitions whose metadata Kafka refused.
#[derive(Default)]
pub struct InFlight {
    open: Vec<Open>,
    /// Partitions committed without metadata from now on (Kafka refused theirs as too large).
    plain: HashSet<TopicPartition>,
}

impl InFlight {
    /// A commit of `points` starts at `now`: the requests to send.
    pub fn start(
        &mut self,
        points: Vec<(TopicPartition, CommitPoint)>,
        done: Option<oneshot::Sender<CommitOutcome>>,
        now: Instant,
    ) -> Vec<Request> {
        let points: Vec<(TopicPartition, CommitPoint)> = points
            .into_iter()
            .map(|(tp, point)| {
                let point = if self.plain.contains(&tp) { plain(point) } else { point };
                (tp, point)
            })
            .collect();
        let out = split(&points, REQUEST_BUDGET);
        self.open.push(Open { points, out: out.clone(), outcome: CommitOutcome::default(), done, started: now });
        out
    }

    /// Whether any commit is out.
    pub fn is_empty(&self) -> bool {
        self.open.is_empty()
    }

    /// librdkafka answered a request (or refused to send it, `error` alone): the requests to
    /// send again instead, and the commits that are now finished. An answer that matches no
    /// request out (a synchronous commit's, or one given up on) changes nothing.
    pub fn answered(&mut self, answer: Answer) -> (Vec<Request>, Vec<Finished>) {
        let key = key_of(answer.parts.iter().map(|(tp, offset, _)| (tp.clone(), *offset)));
        let Some((c, r)) = self
            .open
            .iter()
            .enumerate()
            .find_map(|(c, open)| open.out.iter().position(|req| req.key() == key).map(|r| (c, r)))
        else {
            return (Vec::new(), Vec::new());
        };
        let request = self.open[c].out.remove(r);
        let again = self.settle(c, request, &answer);
        self.open[c].out.extend(again.iter().cloned());
        let finished = if self.open[c].out.is_empty() { vec![self.open.remove(c).finished()] } else { Vec::new() };
        (again, finished)
    }

    /// Sorts a request's partitions into landed, refused and to send again.
    fn settle(&mut self, c: usize, request: Request, answer: &Answer) -> Vec<Request> {
        let error_of = |tp: &TopicPartition| {
            answer.parts.iter().find(|(t, _, _)| t == tp).and_then(|(_, _, e)| *e).or(answer.error)
        };
        let all_failed = request.points.iter().all(|(tp, _)| error_of(tp).is_some());
        if all_failed && request.points.len() > 1 && answer.error.is_some_and(may_be_size) {
            // Refused whole, maybe for its size: halves, each on its own.
            let (left, right) = request.points.split_at(request.points.len() / 2);
            return vec![Request { points: left.to_vec() }, Request { points: right.to_vec() }];
        }
        let shared = request.points.len() > 1;
        let mut again = Vec::new();
        // Partitions refused for the others' metadata: Kafka refuses a whole request when one
        // partition's metadata is too large.
        let mut bystanders = Vec::new();
        for (tp, point) in request.points {
            match error_of(&tp) {
                None => self.open[c].outcome.landed.push(tp),
                Some(code) if metadata_refused(code) || may_be_size(code) => {
                    if !point.metadata.is_empty() {
                        // Its metadata is too much for Kafka: the offset alone, now and from now on.
                        self.plain.insert(tp.clone());
                        again.push(Request { points: vec![(tp, plain(point))] });
                    } else if shared {
                        bystanders.push((tp, point));
                    } else {
                        self.open[c].outcome.refused.push((tp, format!("{code:?}")));
                    }
                }
                Some(code) => self.open[c].outcome.refused.push((tp, format!("{code:?}"))),
            }
        }
        if !bystanders.is_empty() {
            again.push(Request { points: bystanders });
        }
        again
    }

    /// Commits out since before `now - limit`, given up on: reported with every partition not
    /// yet settled as refused (their points go again with the next commit).
    pub fn expire(&mut self, now: Instant, limit: Duration) -> Vec<Finished> {
        let mut finished = Vec::new();
        let mut i = 0;
        while i < self.open.len() {
            if now.duration_since(self.open[i].started) < limit {
                i += 1;
                continue;
            }
            let mut open = self.open.remove(i);
            let waiting: Vec<TopicPartition> =
                open.out.drain(..).flat_map(|r| r.points.into_iter().map(|(tp, _)| tp)).collect();
            let reason = format!("no answer from Kafka in {} s", limit.as_secs());
            open.outcome.refused.extend(waiting.into_iter().map(|tp| (tp, reason.clone())));
            finished.push(open.finished());
        }
        finished
    }
}

/// The point without its metadata.
fn plain(point: CommitPoint) -> CommitPoint {
    CommitPoint { offset: point.offset, metadata: String::new() }
}

/// `points` in requests of at most `budget` bytes each (a partition bigger than that alone).
fn split(points: &[(TopicPartition, CommitPoint)], budget: usize) -> Vec<Request> {
    let mut requests = Vec::new();
    let mut current: Vec<(TopicPartition, CommitPoint)> = Vec::new();
    let mut size = 0;
    for (tp, point) in points {
        let cost = PER_PARTITION + tp.topic.len() + point.metadata.len();
        if !current.is_empty() && size + cost > budget {
            requests.push(Request { points: std::mem::take(&mut current) });
            size = 0;
        }
        current.push((tp.clone(), point.clone()));
        size += cost;
    }
    if !current.is_empty() {
        requests.push(Request { points: current });
    }
    requests
}

/// Kafka's answers to a commit that was too big to store: the classic coordinator's
/// INVALID_COMMIT_OFFSET_SIZE, message-size errors, and the UNKNOWN_SERVER_ERROR Kafka 4's
/// coordinator gives for a batch over the offsets topic's limit.
fn may_be_size(code: RDKafkaErrorCode) -> bool {
    matches!(
        code,
        RDKafkaErrorCode::InvalidCommitOffsetSize
            | RDKafkaErrorCode::MessageSizeTooLarge
            | RDKafkaErrorCode::MessageBatchTooLarge
            | RDKafkaErrorCode::Unknown
    )
}

/// A partition's metadata past `offset.metadata.max.bytes`.
fn metadata_refused(code: RDKafkaErrorCode) -> bool {
    code == RDKafkaErrorCode::OffsetMetadataTooLarge
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tp(partition: i32) -> TopicPartition {
        TopicPartition { topic: "t".into(), partition }
    }

    fn point(offset: i64, metadata_bytes: usize) -> CommitPoint {
        CommitPoint { offset, metadata: "m".repeat(metadata_bytes) }
    }

    fn answer(request: &Request, errors: &[(i32, RDKafkaErrorCode)], error: Option<RDKafkaErrorCode>) -> Answer {
        let parts = request
            .points
            .iter()
            .map(|(tp, p)| (tp.clone(), p.offset, errors.iter().find(|(n, _)| *n == tp.partition).map(|(_, e)| *e)))
            .collect();
        Answer { parts, error }
    }

    #[test]
    fn requests_stay_within_the_budget_and_keep_every_point() {
        let points: Vec<_> = (0..300).map(|p| (tp(p), point(10, 3_500))).collect();
        let requests = split(&points, REQUEST_BUDGET);
        assert_eq!(requests.len(), 5, "300 partitions of 3.5 KB: over 1 MiB in one request");
        for r in &requests {
            let bytes: usize = r.points.iter().map(|(tp, p)| PER_PARTITION + tp.topic.len() + p.metadata.len()).sum();
            assert!(bytes <= REQUEST_BUDGET, "{bytes}");
        }
        let back: Vec<_> = requests.into_iter().flat_map(|r| r.points).collect();
        assert_eq!(back, points);
        assert_eq!(split(&[(tp(0), point(1, 300_000))], REQUEST_BUDGET).len(), 1, "one too big goes alone");
    }

    #[test]
    fn a_partial_refusal_lands_the_rest() {
        let mut inflight = InFlight::default();
        let (done, _rx) = oneshot::channel();
        let out = inflight.start(vec![(tp(0), point(5, 0)), (tp(1), point(7, 0))], Some(done), Instant::now());
        let (again, finished) =
            inflight.answered(answer(&out[0], &[(1, RDKafkaErrorCode::TopicAuthorizationFailed)], None));
        assert!(again.is_empty());
        let f = finished.into_iter().next().expect("finished");
        assert_eq!(f.outcome.landed, vec![tp(0)]);
        assert_eq!(f.outcome.refused.iter().map(|(tp, _)| tp.clone()).collect::<Vec<_>>(), vec![tp(1)]);
        assert_eq!(f.landed, vec![(tp(0), point(5, 0))], "only what landed is recorded as committed");
        assert!(inflight.is_empty());
    }

    #[test]
    fn a_refused_metadata_goes_without_it_now_and_from_then_on() {
        let mut inflight = InFlight::default();
        let out = inflight.start(vec![(tp(0), point(5, 3_000)), (tp(1), point(7, 10))], None, Instant::now());
        let (again, finished) =
            inflight.answered(answer(&out[0], &[(0, RDKafkaErrorCode::OffsetMetadataTooLarge)], None));
        assert!(finished.is_empty(), "partition 0 is sent again");
        assert_eq!(again, vec![Request { points: vec![(tp(0), point(5, 0))] }]);
        let (_, finished) = inflight.answered(answer(&again[0], &[], None));
        assert_eq!(finished[0].outcome.landed, vec![tp(1), tp(0)]);
        assert!(finished[0].outcome.refused.is_empty());
        let next = inflight.start(vec![(tp(0), point(9, 3_000))], None, Instant::now());
        assert_eq!(next[0].points[0].1, point(9, 0), "remembered");
    }

    #[test]
    fn partitions_refused_for_another_ones_metadata_go_again_as_they_are() {
        let mut inflight = InFlight::default();
        let out = inflight.start(vec![(tp(0), point(5, 300)), (tp(1), point(7, 0))], None, Instant::now());
        let code = RDKafkaErrorCode::OffsetMetadataTooLarge;
        let (again, finished) = inflight.answered(answer(&out[0], &[(0, code), (1, code)], Some(code)));
        assert!(finished.is_empty());
        assert_eq!(
            again,
            vec![Request { points: vec![(tp(0), point(5, 0))] }, Request { points: vec![(tp(1), point(7, 0))] }]
        );
        let (_, finished) = inflight.answered(answer(&again[1], &[], None));
        assert!(finished.is_empty());
        let (_, finished) = inflight.answered(answer(&again[0], &[], None));
        assert_eq!(finished[0].outcome.landed, vec![tp(1), tp(0)]);
        // Alone and without metadata, a refusal is final.
        let out = inflight.start(vec![(tp(2), point(1, 0))], None, Instant::now());
        let (again, finished) = inflight.answered(answer(&out[0], &[(2, code)], Some(code)));
        assert!(again.is_empty());
        assert_eq!(finished[0].outcome.refused.len(), 1);
    }

    #[test]
    fn a_request_refused_whole_for_its_size_is_halved_down_to_one_partition_without_metadata() {
        let mut inflight = InFlight::default();
        let too_big = RDKafkaErrorCode::Unknown;
        let all = |r: &Request| -> Vec<(i32, RDKafkaErrorCode)> {
            r.points.iter().map(|(tp, _)| (tp.partition, too_big)).collect()
        };
        let out = inflight.start((0..4).map(|p| (tp(p), point(p.into(), 100))).collect(), None, Instant::now());
        let (halves, _) = inflight.answered(answer(&out[0], &all(&out[0]), Some(too_big)));
        assert_eq!(halves.iter().map(|r| r.points.len()).collect::<Vec<_>>(), vec![2, 2]);
        let (quarters, _) = inflight.answered(answer(&halves[0], &all(&halves[0]), Some(too_big)));
        assert_eq!(quarters.len(), 2);
        let (_, done) = inflight.answered(answer(&halves[1], &[], None));
        assert!(done.is_empty(), "the first half is still out");
        let (alone, _) = inflight.answered(answer(&quarters[0], &all(&quarters[0]), Some(too_big)));
        assert_eq!(alone, vec![Request { points: vec![(tp(0), point(0, 0))] }], "one partition: without metadata");
        let (_, done) = inflight.answered(answer(&quarters[1], &[], None));
        assert!(done.is_empty());
        let (_, done) = inflight.answered(answer(&alone[0], &[], None));
        let mut landed = done[0].outcome.landed.clone();
        landed.sort();
        assert_eq!(landed, (0..4).map(tp).collect::<Vec<_>>());
    }

    #[test]
    fn a_refusal_that_is_not_about_size_is_not_retried() {
        let mut inflight = InFlight::default();
        let out = inflight.start(vec![(tp(0), point(5, 100)), (tp(1), point(7, 100))], None, Instant::now());
        let code = RDKafkaErrorCode::RebalanceInProgress;
        let (again, done) = inflight.answered(answer(&out[0], &[(0, code), (1, code)], Some(code)));
        assert!(again.is_empty());
        assert_eq!(done[0].outcome.refused.len(), 2);
        assert!(done[0].outcome.landed.is_empty());
    }

    #[test]
    fn answers_that_match_nothing_change_nothing_and_unanswered_commits_expire() {
        let mut inflight = InFlight::default();
        let start = Instant::now();
        let out = inflight.start(vec![(tp(0), point(5, 0))], None, start);
        let stranger = Request { points: vec![(tp(0), point(6, 0))] };
        assert!(inflight.answered(answer(&stranger, &[], None)).1.is_empty(), "another commit's answer");
        assert!(inflight.expire(start + Duration::from_secs(1), ANSWER_LIMIT).is_empty());
        let expired = inflight.expire(start + ANSWER_LIMIT, ANSWER_LIMIT);
        assert_eq!(expired[0].outcome.refused.len(), 1);
        assert!(inflight.is_empty());
        assert!(inflight.answered(answer(&out[0], &[], None)).1.is_empty(), "too late: given up on");
    }
}
