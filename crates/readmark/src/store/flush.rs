//! Planning a flush: turning buffered entries into one RocksDB batch of
//! mark operands, read-time runs and change-log entries.
//!
//! Per key: the mark RocksDB holds (`prev`: known to the entry, else one
//! read), the new state `prev ⊔ buffered`, and nothing at all if that is
//! `prev` (a stale or duplicated update costs no write and no change-log
//! entry). An advance of the mark in a conversation that keeps per-message
//! receipts writes one *run*: "this member read (from, m] at t", keyed by
//! `m`, the newest message the advance covers that another member sent,
//! tracked and within retention. Runs are what per-message receipts cost
//! now: an in-order read needs no per-message bit, because the run and the
//! mark say it all (docs/design.md §5.3).

use std::collections::HashMap;

use rocksdb::{DB, ReadOptions, WriteBatch};

use super::Cf;
use super::change_log::ChangeLog;
use super::receipts::ReceiptPolicy;
use crate::error::{Error, Result, storage};
use crate::pure::bitset::{ReadTimeRecord, TimeKind, time_key};
use crate::pure::keys;
use crate::pure::mark::MarkState;
use crate::pure::records::{ConversationRecord, MemberRecord, MessageRecord};

/// One key to write, as copied from its entry (or rebuilt by replay).
#[derive(Clone, Copy, Debug)]
pub(crate) struct Item {
    pub(crate) conversation: u64,
    pub(crate) user: u64,
    pub(crate) state: MarkState,
    /// What RocksDB holds, if the entry knows.
    pub(crate) base: Option<MarkState>,
    /// The membership the updates were made in; `None` (replay of a
    /// format-3 frame): whatever membership the user has.
    pub(crate) joined_seq: Option<u64>,
    pub(crate) version: u64,
    pub(crate) needs_sync: bool,
}

/// What became of one item.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Outcome {
    /// RocksDB holds this state once the batch lands (written, or already
    /// there: a no-op).
    Stored(MarkState),
    /// The user is not a member under the membership the updates were made
    /// in: nothing written.
    Stale,
    /// RocksDB holds this state once the batch lands, but the entry's mark
    /// is ahead of the conversation's newest message in the snapshot: a
    /// sender's own advance, journaled before its message lands. What
    /// exists was written (the mark clamped to the newest message); the
    /// entry stays dirty, and a later round writes the rest.
    Partial(MarkState),
}

/// A planned round's batches, outcomes and counts.
#[derive(Default)]
pub(crate) struct Plan {
    /// The batches to write, in order (change-log sequences follow it).
    pub(crate) batches: Vec<WriteBatch>,
    pub(crate) outcomes: Vec<Outcome>,
    pub(crate) marks: u64,
    pub(crate) runs: u64,
    /// Advances given a change sequence.
    pub(crate) sequenced: u64,
    pub(crate) no_ops: u64,
}

fn handle(db: &DB, cf: Cf) -> Result<&rocksdb::ColumnFamily> {
    db.cf_handle(cf.name())
        .ok_or(Error::InvalidArgument("column family missing"))
}

/// Plans the writes of `items` as batches of at most `keys_per_batch`
/// keys, from one snapshot. Called with the flush lock held (or by the
/// single-threaded replay at open), so the change sequence is assigned in
/// write order and no two plans start from the same mark. Small batches
/// keep a writer whose own write (a send) queues behind one in RocksDB's
/// write queue from waiting for a whole round.
///
/// Records that do not decode are not an error here: a damaged member
/// record must not stop marks from being written (that would poison the
/// store). Its key gets its mark and no run; catch-up treats the reader as
/// private (fail closed).
pub(crate) fn plan_round(
    db: &DB,
    policy: &ReceiptPolicy,
    changes: &ChangeLog,
    items: &[Item],
    keys_per_batch: usize,
) -> Result<Plan> {
    let mut plan = Plan {
        outcomes: Vec::with_capacity(items.len()),
        ..Plan::default()
    };
    let mut batch = WriteBatch::default();
    let mut in_batch = 0usize;
    if items.is_empty() {
        return Ok(plan);
    }
    let (conversations, members, marks, times) = (
        handle(db, Cf::Conversations)?,
        handle(db, Cf::Members)?,
        handle(db, Cf::Marks)?,
        handle(db, Cf::ReadTimes)?,
    );
    let snapshot = db.snapshot();
    let ro = || {
        let mut ro = ReadOptions::default();
        ro.set_snapshot(&snapshot);
        ro
    };
    let now = policy.clock.now();
    let messages = handle(db, Cf::Messages)?;
    let mut messages_it: Option<rocksdb::DBRawIterator<'_>> = None;
    let mut records: HashMap<u64, Option<ConversationRecord>> = HashMap::new();
    for item in items {
        if in_batch >= keys_per_batch.max(1) {
            plan.batches.push(std::mem::take(&mut batch));
            in_batch = 0;
        }
        let (c, u) = (item.conversation, item.user);
        let key = keys::pair_key(c, u);
        let mut record = |c: u64| -> Result<Option<ConversationRecord>> {
            if let Some(r) = records.get(&c) {
                return Ok(*r);
            }
            let r = db
                .get_pinned_cf_opt(conversations, keys::id_key(c), &ro())
                .map_err(storage)?
                .and_then(|v| ConversationRecord::decode(&v));
            records.insert(c, r);
            Ok(r)
        };
        // A thread's members, and its receipt mode, are its conversation's
        // (docs/design.md §13).
        let owner = if c & crate::ids::THREAD_BIT != 0 {
            match record(c)?.and_then(|r| r.thread) {
                Some((parent, _)) => parent,
                None => {
                    // No thread record yet: the sender's advance of a
                    // thread's first reply is buffered (and journaled)
                    // before the reply and the thread's record are written,
                    // as any send's is before its message. Nothing to write
                    // now; the entry stays dirty for a later round. (At
                    // replay, a thread whose reply never landed: nothing.)
                    let prev = item.base.unwrap_or_default();
                    plan.outcomes.push(Outcome::Partial(prev));
                    continue;
                }
            }
        } else {
            c
        };
        let member_key = keys::pair_key(owner, u);
        let member = match db
            .get_pinned_cf_opt(members, member_key, &ro())
            .map_err(storage)?
        {
            None => {
                plan.outcomes.push(Outcome::Stale);
                continue;
            }
            Some(v) => MemberRecord::decode(&v),
        };
        if let (Some(m), Some(j)) = (&member, item.joined_seq)
            && m.joined_seq != j
        {
            plan.outcomes.push(Outcome::Stale);
            continue;
        }
        let prev = match item.base {
            Some(b) => b,
            // The merge's output always decodes (invariant 10).
            None => db
                .get_pinned_cf_opt(marks, key, &ro())
                .map_err(storage)?
                .and_then(|v| MarkState::decode(&v))
                .unwrap_or_default(),
        };
        let mut new = prev.join(item.state);
        // No mark past the newest message in RocksDB (design §3.1): a
        // sender's advance can be flushed between its journaling and its
        // message's write; only what exists is written now.
        let mut partial = false;
        if let (Some(m), true) = (new.mark, new.mark != prev.mark) {
            // An undecodable record bounds nothing (fail open for marks,
            // as for member records above).
            if let Some(r) = record(c)? {
                let last = r.last_message();
                if last.is_none_or(|l| m.up_to > l) {
                    partial = true;
                    new.mark = match last {
                        Some(l) if prev.mark.is_none_or(|p| p.up_to < l) => {
                            Some(crate::pure::mark::ReadMark { up_to: l, at: m.at })
                        }
                        _ => prev.mark,
                    };
                }
            }
        }
        if new == prev {
            plan.no_ops += 1;
            plan.outcomes.push(if partial {
                Outcome::Partial(prev)
            } else {
                Outcome::Stored(prev)
            });
            continue;
        }
        let advanced = new.mark != prev.mark;
        let flagged = new.flag != prev.flag;
        if advanced || flagged {
            // The change-log entry of an advance is its sequence, in the
            // mark: catch-up finds the marks that moved since a cursor by
            // scanning them (docs/design.md §12.5), and no row is written.
            // A flag change gets its own sequence, which only the owner's
            // catch-up reads: nobody else sees the flag, nor that it moved.
            let seq = changes.next(db)?;
            if advanced {
                new.changed = seq;
            }
            if flagged {
                new.flag_changed = seq;
            }
            plan.sequenced += 1;
        }
        // A private member's reads get no run: going public later must not
        // reveal what was read while private (privacy.rs).
        let runs_kept = member
            .as_ref()
            .is_some_and(|m| m.slot.is_some() && !m.is_private());
        if let (true, true, Some(m), Some(mark)) = (advanced, runs_kept, &member, new.mark) {
            let small = record(owner)?.is_some_and(|r| r.per_message);
            if small {
                let from = m.read_position(prev.mark.map(|p| p.up_to)).map(|p| p.0);
                // Usually the message the mark points at qualifies: one
                // point read. Otherwise walk back, with one iterator for
                // the whole round (making one per advance costs more than
                // its seeks).
                let up_to = mark.up_to.0;
                let exact = db
                    .get_pinned_cf_opt(messages, keys::pair_key(c, up_to), &ro())
                    .map_err(storage)?
                    .and_then(|v| MessageRecord::decode(&v))
                    .filter(|r| from.is_none_or(|f| up_to > f) && r.sender.0 != u && r.tracked);
                let newest = match exact {
                    Some(r) if policy.expired(r.sent_at.0, now) => None,
                    Some(r) => Some((up_to, r.sent_at.0)),
                    None => {
                        let it = messages_it
                            .get_or_insert_with(|| db.raw_iterator_cf_opt(messages, ro()));
                        newest_receipt_message(it, policy, now, c, u, from, up_to)?
                    }
                };
                if let Some((message, sent_at)) = newest {
                    // Nothing is read before it is sent: the clamp also
                    // keeps the run alive as long as the messages it times.
                    let run = ReadTimeRecord {
                        at: mark.at.0.max(sent_at),
                        from,
                    };
                    batch.put_cf(times, time_key(c, u, TimeKind::Run, message), run.encode());
                    plan.runs += 1;
                }
            }
        }
        batch.merge_cf(marks, key, new.encode());
        plan.marks += 1;
        in_batch += 1;
        plan.outcomes.push(if partial {
            Outcome::Partial(new)
        } else {
            Outcome::Stored(new)
        });
    }
    if !batch.is_empty() {
        plan.batches.push(batch);
    }
    Ok(plan)
}

/// The newest message in `(from, up_to]` of `c` that keeps per-message
/// receipts for `user` (tracked, sent by someone else, within retention),
/// with its `sent_at`: the key of the run an advance over that range
/// writes. Newest first, stopping at the first message past retention
/// (times follow ids, so every older one is past it too). Usually the first
/// message looked at qualifies; a sender's own advance walks back over the
/// messages they sent.
fn newest_receipt_message(
    it: &mut rocksdb::DBRawIterator<'_>,
    policy: &ReceiptPolicy,
    now: u64,
    c: u64,
    user: u64,
    from: Option<u64>,
    up_to: u64,
) -> Result<Option<(u64, u64)>> {
    it.seek_for_prev(keys::pair_key(c, up_to));
    while let (Some(k), Some(v)) = (it.key(), it.value()) {
        let Some((kc, m)) = keys::decode_pair_key(k) else {
            break;
        };
        if kc != c || from.is_some_and(|f| m <= f) {
            break;
        }
        if let Some(r) = MessageRecord::decode(v) {
            if policy.expired(r.sent_at.0, now) {
                break;
            }
            if r.tracked && r.sender.0 != user {
                return Ok(Some((m, r.sent_at.0)));
            }
        }
        it.prev();
    }
    it.status().map_err(storage)?;
    Ok(None)
}

#[cfg(test)]
mod tests {
    use crate::config::{Config, Durability};
    use crate::ids::{ConversationId, MessageId, Timestamp, UserId};
    use crate::pure::mark::MarkState;
    use crate::store::Store;
    use crate::store::writer::Applied;

    /// A store with alice (1) and bob (2) in conversation 1, where bob's
    /// message 10 is written and flushed.
    fn with_message_10() -> (tempfile::TempDir, Store) {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path(), Config::new()).unwrap();
        let c = ConversationId(1);
        store.create_conversation(c).unwrap();
        for u in [UserId(1), UserId(2)] {
            store.add_member(c, u, Timestamp(0)).unwrap();
        }
        store
            .record_message(c, MessageId(10), UserId(2), Timestamp(1))
            .unwrap();
        store.flush().unwrap();
        (dir, store)
    }

    /// Post-mortem (review of issue 14): a sender's advance is journaled
    /// and buffered before its message is written, and a flush round in
    /// between wrote the mark past the newest message to RocksDB, where a
    /// crash before the message landed left it for good. Now the round
    /// writes what exists and keeps the rest buffered.
    #[test]
    fn regression_a_flush_never_writes_a_mark_past_the_newest_message() {
        let (_dir, store) = with_message_10();
        let (c, alice, bob) = (ConversationId(1), UserId(1), UserId(2));
        // Alice's send of 20, caught between its journaling and its write.
        let apply = |verified| {
            store
                .writer
                .apply(
                    c.0,
                    alice.0,
                    MarkState::from_mark(MessageId(20), Timestamp(2)),
                    Durability::ProcessCrash,
                    verified,
                    false,
                )
                .unwrap()
        };
        if let Applied::Verify = apply(None) {
            // First update of the key: verified as record_message does.
            let member = store.view().require_member(c, alice).unwrap();
            apply(Some(crate::store::writer::Verified {
                joined_seq: member.joined_seq,
                base: None,
            }));
        }
        store.flush().unwrap();
        let stored = store.view().stored_mark(c, alice).unwrap();
        assert_eq!(stored.mark.map(|m| m.up_to), Some(MessageId(10)));
        assert_eq!(store.stats().pending_keys, 1, "the rest stays buffered");
        // Reads still see the buffered state (what the send acknowledges).
        assert_eq!(store.mark(c, alice).unwrap().unwrap().up_to, MessageId(20));
        // Once the message exists, the next round writes the rest.
        store
            .record_message(c, MessageId(20), bob, Timestamp(3))
            .unwrap();
        store.flush().unwrap();
        let stored = store.view().stored_mark(c, alice).unwrap();
        assert_eq!(stored.mark.map(|m| m.up_to), Some(MessageId(20)));
        assert_eq!(store.stats().pending_keys, 0);
    }

    /// Post-mortem (review of the threads change): the sender's advance of
    /// a thread's first reply is buffered before the thread's record
    /// exists, and a flush round in between found no record and dropped
    /// the entry as stale: the reply's sender lost their own read mark.
    /// Now the entry waits, dirty, for the record.
    #[test]
    fn regression_a_first_replys_advance_waits_for_its_thread() {
        let (_dir, store) = with_message_10();
        let (c, alice, bob) = (ConversationId(1), UserId(1), UserId(2));
        // The id the thread on 10 will take (the store's first).
        let t = crate::store::threads::thread_id(0, c);
        let member = store.view().require_member(c, alice).unwrap();
        let verified = crate::store::writer::Verified {
            joined_seq: member.joined_seq,
            base: None,
        };
        // Alice's first reply (20), caught between journaling and writing.
        store
            .writer
            .apply(
                t.0,
                alice.0,
                MarkState::from_mark(MessageId(20), Timestamp(2)),
                Durability::ProcessCrash,
                Some(verified),
                false,
            )
            .unwrap();
        store.flush().unwrap();
        assert_eq!(store.stats().pending_keys, 1, "the entry waits");
        // The thread comes to exist (here by bob's reply, which takes the
        // id above), and the next round writes alice's mark.
        let thread = crate::ids::Timeline::thread(c, MessageId(10));
        store
            .record_message(thread, MessageId(20), bob, Timestamp(3))
            .unwrap();
        store.flush().unwrap();
        let stored = store.view().stored_mark(t, alice).unwrap();
        assert_eq!(stored.mark.map(|m| m.up_to), Some(MessageId(20)));
        assert_eq!(
            store.mark(thread, alice).unwrap().unwrap().up_to,
            MessageId(20)
        );
    }
}
