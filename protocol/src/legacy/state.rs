//! The reference server's persistent `state` file.
//!
//! ```text
//! State ::= SEQUENCE OF CHOICE {
//!   [0] ScriptJob                                   -- old queue entry: skipped
//!   [1] SEQUENCE { next UTCTime, period, ScriptJob } -- old schedule entry
//!   [2] Job                                         -- old queue entry: skipped
//!   [3] SEQUENCE { next CHOICE { UTCTime, GeneralizedTime }, period, Job }
//!   [4] SEQUENCE { platform UTF8String, jobs SEQUENCE OF Job } -- a queue
//!   [5] UTF8String                                  -- a dropped platform
//! }
//! Job ::= CHOICE { [0] ScriptJob, [1] SEQUENCE { name, opam_package } }
//! ```
//!
//! Items keep the file's order (the reference's queues are in it head
//! first). The two old queue entries are skipped as the reference skips them,
//! each reported as a [`StateWarning`] for the caller to log; the old
//! schedule entry becomes a schedule entry (and is written back in the
//! current `[3]` form). Duplicates (a platform dropped twice) are kept as
//! they are in the file, as the reference reads them: what to make of them
//! is the importer's business.

use std::fmt;

use super::{
    done, explicit_header, queue_node, read_job, read_queue, read_schedule_item,
    schedule_item_node, Job, LegacyError, Reader, ScheduleItem,
};
use crate::record::der::{self, Node};
use crate::record::RecordError;

/// One item of the state file.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum StateItem {
    /// A platform's queue, head first.
    Queue {
        /// The platform.
        platform: Vec<u8>,
        /// The queued jobs.
        jobs: Vec<Job>,
    },
    /// A schedule entry.
    Schedule(ScheduleItem),
    /// A dropped platform.
    DroppedPlatform(Vec<u8>),
}

/// The reference server's state, in file order.
#[derive(Clone, Debug, PartialEq, Eq, Default)]
pub struct State {
    /// The items.
    pub items: Vec<StateItem>,
}

/// An item of the state file that the reference skips with a warning, and so
/// does [`State::decode`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum StateWarning {
    /// `[0]`: a script job queued by an old server.
    LegacyScriptJob {
        /// Offset of the item in the file.
        offset: u64,
        /// The job's name.
        name: Vec<u8>,
    },
    /// `[2]`: a job queued by an old server.
    LegacyJob {
        /// Offset of the item in the file.
        offset: u64,
        /// The job's name.
        name: Vec<u8>,
    },
}

impl fmt::Display for StateWarning {
    /// The reference's own warning, plus where and which job.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let (what, offset, name) = match self {
            StateWarning::LegacyScriptJob { offset, name } => ("script job", offset, name),
            StateWarning::LegacyJob { offset, name } => ("job", offset, name),
        };
        write!(
            f,
            "byte {offset}: {what} for queue no longer supported, ignoring (job \"{}\")",
            crate::record::escape_bytes(name)
        )
    }
}

/// What [`State::decode`] read.
#[derive(Clone, Debug, PartialEq, Eq, Default)]
pub struct DecodedState {
    /// The state.
    pub state: State,
    /// The items skipped, in file order.
    pub warnings: Vec<StateWarning>,
}

impl State {
    /// Decodes a state file, as strictly as the reference; items it skips
    /// are returned as warnings.
    ///
    /// # Errors
    ///
    /// [`LegacyError::Malformed`] says what is wrong and at which byte. No
    /// allocation is larger than the input.
    pub fn decode(bytes: &[u8]) -> Result<DecodedState, LegacyError> {
        decode_state(bytes).map_err(LegacyError::state)
    }

    /// The encoding the reference writes for this state.
    pub fn encode(&self) -> Vec<u8> {
        Node::sequence(self.items.iter().map(item_node).collect()).to_vec()
    }

    /// The schedule entries, in file order.
    pub fn schedule(&self) -> impl Iterator<Item = &ScheduleItem> {
        self.items.iter().filter_map(|item| match item {
            StateItem::Schedule(s) => Some(s),
            _ => None,
        })
    }

    /// The queues (platform, jobs head first), in file order.
    pub fn queues(&self) -> impl Iterator<Item = (&[u8], &[Job])> {
        self.items.iter().filter_map(|item| match item {
            StateItem::Queue { platform, jobs } => Some((platform.as_slice(), jobs.as_slice())),
            _ => None,
        })
    }

    /// The dropped platforms, in file order (duplicates as in the file).
    pub fn dropped_platforms(&self) -> impl Iterator<Item = &[u8]> {
        self.items.iter().filter_map(|item| match item {
            StateItem::DroppedPlatform(p) => Some(p.as_slice()),
            _ => None,
        })
    }
}

fn item_node(item: &StateItem) -> Node<'_> {
    match item {
        StateItem::Schedule(s) => Node::explicit(3, schedule_item_node(s)),
        StateItem::Queue { platform, jobs } => Node::explicit(4, queue_node(platform, jobs)),
        StateItem::DroppedPlatform(p) => Node::explicit(5, Node::string(p)),
    }
}

fn decode_state(bytes: &[u8]) -> Result<DecodedState, RecordError> {
    let mut r = Reader::over_slice(bytes);
    let end = r.input_end();
    let (_, seq) = r.element(der::SEQUENCE, "SEQUENCE OF (state items)", end)?;
    let mut decoded = DecodedState::default();
    while r.pos < seq {
        let (at, tag, inner) = explicit_header(&mut r, seq, "[0]..[5] (state item)", 0..=5)?;
        match tag {
            0 => {
                let job = r.job(inner)?;
                decoded.warnings.push(StateWarning::LegacyScriptJob {
                    offset: at,
                    name: job.name,
                });
            }
            1 => {
                let item = read_schedule_item(&mut r, inner, true)?;
                decoded.state.items.push(StateItem::Schedule(item));
            }
            2 => {
                let job = read_job(&mut r, inner)?;
                decoded.warnings.push(StateWarning::LegacyJob {
                    offset: at,
                    name: job.name().to_vec(),
                });
            }
            3 => {
                let item = read_schedule_item(&mut r, inner, false)?;
                decoded.state.items.push(StateItem::Schedule(item));
            }
            4 => {
                let (platform, jobs) = read_queue(&mut r, inner)?;
                decoded
                    .state
                    .items
                    .push(StateItem::Queue { platform, jobs });
            }
            _ => {
                let platform = r.string(inner, "UTF8String (dropped platform)")?.1;
                decoded
                    .state
                    .items
                    .push(StateItem::DroppedPlatform(platform));
            }
        }
        r.finish(inner, "the state item")?;
    }
    r.finish(seq, "the state")?;
    done(&mut r)?;
    Ok(decoded)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_empty_state_is_an_empty_sequence() {
        assert_eq!(State::default().encode(), [0x30, 0x00]);
        assert_eq!(
            State::decode(&[0x30, 0x00]).unwrap(),
            DecodedState::default()
        );
    }

    #[test]
    fn an_unknown_item_is_refused() {
        let err = State::decode(&[0x30, 0x04, 0xa6, 0x02, 0x05, 0x00]).unwrap_err();
        assert!(
            matches!(
                &err,
                LegacyError::Malformed {
                    source: RecordError::UnexpectedTag {
                        offset: 2,
                        found: 0xa6,
                        ..
                    },
                    ..
                }
            ),
            "{err}"
        );
    }
}
