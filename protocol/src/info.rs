//! The `info` answer in parts (protocol version 2): the server cuts its
//! state into [`InfoItem`]s and packs them into
//! [`ServerToClient::InfoPart`]s that each fit a byte budget, followed by
//! [`ServerToClient::InfoEnd`]; the client puts the items together again
//! into an [`InfoSummary`]. However large the schedule, no frame of the
//! answer outgrows the frame limit, and scripts are never part of it
//! (`show NAME` prints one job's script).
//!
//! A queue longer than fits in one part is cut into pieces of the same
//! platform; [`InfoSummary::push`] joins consecutive pieces again.

use crate::message::{
    self, InfoItem, JobSummary, QueueInfo, RunningBuild, ServerToClient, WorkerInfo,
};

/// The most payload bytes a server puts in one `info` part (less when its
/// frame limit is smaller).
pub const INFO_PART_BYTES: usize = 256 * 1024;

/// What `info` shows, put together from the parts of the answer.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct InfoSummary {
    /// Every scheduled job, by name, without its script.
    pub schedule: Vec<JobSummary>,
    /// Every platform's queue, front first.
    pub queues: Vec<QueueInfo>,
    /// Builds being run now.
    pub running: Vec<RunningBuild>,
    /// Platforms that refuse work.
    pub dropped_platforms: Vec<String>,
    /// Workers connected now.
    pub workers: Vec<WorkerInfo>,
}

/// Why the parts of an `info` answer do not add up.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[error(
    "the info answer is incomplete: {received} items received, the server announced {announced}"
)]
pub struct Incomplete {
    /// Items received in parts.
    pub received: u64,
    /// Items the final marker announced.
    pub announced: u64,
}

impl InfoSummary {
    /// Adds one item as received; a queue piece of the same platform as the
    /// previous queue continues it.
    pub fn push(&mut self, item: InfoItem) {
        match item {
            InfoItem::Job(job) => self.schedule.push(job),
            InfoItem::Queue(piece) => match self.queues.last_mut() {
                Some(q) if q.platform == piece.platform => q.jobs.extend(piece.jobs),
                _ => self.queues.push(piece),
            },
            InfoItem::Running(r) => self.running.push(r),
            InfoItem::DroppedPlatform(p) => self.dropped_platforms.push(p),
            InfoItem::Worker(w) => self.workers.push(w),
        }
    }

    /// The items of this summary, queues cut into pieces of at most
    /// `queue_piece` job names.
    pub fn into_items(self, queue_piece: usize) -> Vec<InfoItem> {
        let queue_piece = queue_piece.max(1);
        let mut items: Vec<InfoItem> = Vec::new();
        items.extend(self.schedule.into_iter().map(InfoItem::Job));
        for q in self.queues {
            if q.jobs.is_empty() {
                items.push(InfoItem::Queue(q));
                continue;
            }
            for piece in q.jobs.chunks(queue_piece) {
                items.push(InfoItem::Queue(QueueInfo {
                    platform: q.platform.clone(),
                    jobs: piece.to_vec(),
                }));
            }
        }
        items.extend(self.running.into_iter().map(InfoItem::Running));
        items.extend(
            self.dropped_platforms
                .into_iter()
                .map(InfoItem::DroppedPlatform),
        );
        items.extend(self.workers.into_iter().map(InfoItem::Worker));
        items
    }

    /// The whole answer: parts whose encoded size stays within `budget`
    /// bytes (an item larger than the budget on its own travels alone),
    /// then the end marker with the item count.
    pub fn into_answer(self, budget: usize) -> Vec<ServerToClient> {
        // Job names are at most 255 bytes (plus a length prefix), so a
        // queue piece of this many names stays within the budget.
        let items = self.into_items(budget / 264);
        let count = items.len() as u64;
        let mut answer = Vec::new();
        let mut part: Vec<InfoItem> = Vec::new();
        // Variant tag and list length prefix: at most 1 + 9 bytes.
        const OVERHEAD: usize = 10;
        let mut size = OVERHEAD;
        for item in items {
            let len = message::encode(&item).map_or(usize::MAX / 2, |b| b.len());
            if !part.is_empty() && size + len > budget {
                answer.push(ServerToClient::InfoPart(std::mem::take(&mut part)));
                size = OVERHEAD;
            }
            size += len;
            part.push(item);
        }
        if !part.is_empty() {
            answer.push(ServerToClient::InfoPart(part));
        }
        answer.push(ServerToClient::InfoEnd { items: count });
        answer
    }

    /// Checks the count of the end marker against the items received.
    ///
    /// # Errors
    ///
    /// [`Incomplete`] when they differ.
    pub fn check_count(received: u64, announced: u64) -> Result<(), Incomplete> {
        if received == announced {
            Ok(())
        } else {
            Err(Incomplete {
                received,
                announced,
            })
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::message::{JobSummaryKind, Timestamp};
    use crate::trigger::Trigger;
    use uuid::Uuid;

    fn big_summary() -> InfoSummary {
        let name = |i: usize| format!("{i:0>200}");
        InfoSummary {
            schedule: (0..3000)
                .map(|i| JobSummary {
                    name: name(i),
                    kind: JobSummaryKind::Script {
                        platform: "linux".into(),
                        script_bytes: 9 << 20,
                    },
                    trigger: Trigger::Daily,
                    next_run: Some(Timestamp(i as i64)),
                    timeout_secs: None,
                })
                .collect(),
            queues: vec![
                QueueInfo {
                    platform: "empty".into(),
                    jobs: vec![],
                },
                QueueInfo {
                    platform: "linux".into(),
                    jobs: (0..3000).map(name).collect(),
                },
                QueueInfo {
                    platform: "other".into(),
                    jobs: vec![name(1)],
                },
            ],
            running: vec![RunningBuild {
                uuid: Uuid::from_u128(1),
                job: name(1),
                platform: "linux".into(),
                started: Timestamp(3),
                worker: "w".into(),
            }],
            dropped_platforms: vec!["old".into()],
            workers: vec![WorkerInfo {
                platform: "linux".into(),
                host: "h".into(),
                peer: "p".into(),
                running: None,
            }],
        }
    }

    #[test]
    fn parts_fit_the_budget_and_reassemble_exactly() {
        let summary = big_summary();
        for budget in [1024, 64 * 1024, INFO_PART_BYTES] {
            let answer = summary.clone().into_answer(budget);
            assert!(answer.len() > 2, "budget {budget}: one part only");
            let mut back = InfoSummary::default();
            let mut received = 0;
            let (last, parts) = answer.split_last().unwrap();
            for part in parts {
                assert!(
                    message::encode(part).unwrap().len() <= budget,
                    "budget {budget}"
                );
                let ServerToClient::InfoPart(items) = part else {
                    panic!("{part:?}")
                };
                received += items.len() as u64;
                items.iter().cloned().for_each(|i| back.push(i));
            }
            let ServerToClient::InfoEnd { items } = last else {
                panic!("{last:?}")
            };
            InfoSummary::check_count(received, *items).unwrap();
            assert_eq!(back, summary, "budget {budget}");
        }
    }

    #[test]
    fn an_empty_state_is_one_end_marker() {
        assert_eq!(
            InfoSummary::default().into_answer(1024),
            vec![ServerToClient::InfoEnd { items: 0 }]
        );
    }

    #[test]
    fn a_missing_part_is_noticed() {
        let err = InfoSummary::check_count(3, 4).unwrap_err();
        assert_eq!(
            err.to_string(),
            "the info answer is incomplete: 3 items received, the server announced 4"
        );
    }
}
