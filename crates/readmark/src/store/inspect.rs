//! Offline inspection of a store directory: counts and sizes
//! ([`inspect`]), a full consistency check ([`verify`]) and a human-readable
//! dump of one conversation ([`dump`]). All three open RocksDB read-only and
//! read the journal's files without mapping or changing them, so they can
//! run on a copy, a crash image, or a store another process has open.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt::Write as _;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::Ordering;

use rocksdb::{Cache, ColumnFamilyDescriptor, DB, IteratorMode, Options};

use super::receipts::Clock;
use super::{Cf, FORMAT_VERSION, FORMAT_VERSION_KEY, cf_options};
use crate::config::Config;
use crate::error::{Error, Result, storage};
use crate::pure::bitset::{Bitset, ReadTimeRecord, TIME_KEY_LEN};
use crate::pure::journal::record::MarkRecord;
use crate::pure::journal::scan::{ScanEnd, scan_segment};
use crate::pure::journal::slot::scan_slots;
use crate::pure::journal::{JOURNAL_DIR, LEGACY_SEGMENTS, segment_path, slot_path};
use crate::pure::keys;
use crate::pure::mark::MarkState;
use crate::pure::merge::MergeCounters;
use crate::pure::records::{ConversationRecord, MemberRecord, MessageRecord};

/// One inconsistency found by [`verify`].
///
/// # Examples
///
/// ```
/// # use readmark::{Config, ConversationId, MessageId, Store, Timestamp, UserId};
/// # let dir = tempfile::tempdir()?;
/// # let store = Store::open(dir.path(), Config::new())?;
/// # let (c, alice, bob) = (ConversationId(1), UserId(1), UserId(2));
/// # store.create_conversation(c)?;
/// # store.add_member(c, alice, Timestamp(0))?;
/// # store.add_member(c, bob, Timestamp(0))?;
/// store.mark_read(c, bob, MessageId(1), Timestamp(2))?;
/// store.close()?;
/// let report = readmark::verify(dir.path())?;
/// for p in &report.problems {
///     eprintln!("{}: {} at {}", p.place, p.what, p.at);
/// }
/// assert!(report.problems.is_empty());
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Problem {
    /// Column family, or `"journal"`.
    pub place: String,
    /// The key (hex), or the journal file and offset.
    pub at: String,
    /// What is wrong.
    pub what: String,
}

/// State of one journal file: the slot file, or a segment of a format-3
/// journal not yet replayed.
///
/// # Examples
///
/// ```
/// # use readmark::{Config, ConversationId, MessageId, Store, Timestamp, UserId};
/// # let dir = tempfile::tempdir()?;
/// # let store = Store::open(dir.path(), Config::new())?;
/// # let (c, alice, bob) = (ConversationId(1), UserId(1), UserId(2));
/// # store.create_conversation(c)?;
/// # store.add_member(c, alice, Timestamp(0))?;
/// # store.add_member(c, bob, Timestamp(0))?;
/// store.mark_read(c, bob, MessageId(1), Timestamp(2))?;
/// store.close()?;
/// let report = readmark::verify(dir.path())?;
/// for s in &report.journal {
///     println!("{}: {} bytes, {} frames, {} at {}", s.path.display(), s.bytes, s.frames, s.end, s.end_offset);
/// }
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SegmentInfo {
    /// The file.
    pub path: PathBuf,
    /// Its size in bytes.
    pub bytes: u64,
    /// What an open would replay: slots holding a key (buffered updates not
    /// yet written to RocksDB), or valid frames of a segment.
    pub frames: u64,
    /// `"clean"`; `"torn"` (a write cut short by a crash: in the slot file,
    /// copies whose checksum fails, replaced by their slot's other copy;
    /// in a segment, the tail recovery ignores); or `"corrupt"` (damage a
    /// strict open refuses: a bad slot-file header, a copy whose checksum
    /// holds but whose content does not decode, a segment damaged before
    /// synced data).
    pub end: &'static str,
    /// Offset of the damage (or of a segment's end).
    pub end_offset: u64,
}

/// What [`inspect`] and [`verify`] report.
///
/// # Examples
///
/// ```
/// # use readmark::{Config, ConversationId, MessageId, Store, Timestamp, UserId};
/// # let dir = tempfile::tempdir()?;
/// # let store = Store::open(dir.path(), Config::new())?;
/// # let (c, alice, bob) = (ConversationId(1), UserId(1), UserId(2));
/// # store.create_conversation(c)?;
/// # store.add_member(c, alice, Timestamp(0))?;
/// # store.add_member(c, bob, Timestamp(0))?;
/// store.mark_read(c, bob, MessageId(1), Timestamp(2))?;
/// store.close()?;
/// let report = readmark::verify(dir.path())?;
/// assert_eq!(report.format_version, Some(readmark::FORMAT_VERSION));
/// assert_eq!(report.records.get("members"), Some(&2));
/// assert_eq!(report.malformed_operands, 0);
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
#[derive(Clone, Debug, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct Report {
    /// The stored format version.
    pub format_version: Option<u32>,
    /// Records per column family, by name.
    pub records: BTreeMap<&'static str, u64>,
    /// Live SST bytes per column family, by name.
    pub sst_bytes: BTreeMap<&'static str, u64>,
    /// The journal's segments.
    pub journal: Vec<SegmentInfo>,
    /// Merge inputs skipped as malformed while reading.
    pub malformed_operands: u64,
    /// Inconsistencies ([`verify`] only; empty means none found).
    pub problems: Vec<Problem>,
}

fn open_read_only(path: &Path) -> Result<(DB, Arc<MergeCounters>)> {
    if !path.join("CURRENT").exists() {
        return Err(Error::InvalidArgument(
            "no readmark store in this directory",
        ));
    }
    let opts = Options::default();
    let names = DB::list_cf(&opts, path).map_err(storage)?;
    let config = Config::new();
    let cache = Cache::new_lru_cache(8 << 20);
    let counters = Arc::new(MergeCounters::default());
    let clock = Arc::new(Clock::default());
    let descriptors = names.iter().map(|name| {
        let o = match Cf::ALL.iter().find(|c| c.name() == name) {
            Some(&cf) => cf_options(cf, &config, &cache, &counters, &clock),
            None => Options::default(),
        };
        ColumnFamilyDescriptor::new(name.as_str(), o)
    });
    let db = DB::open_cf_descriptors_read_only(&opts, path, descriptors, false).map_err(storage)?;
    Ok((db, counters))
}

fn hex(b: &[u8]) -> String {
    b.iter().fold(String::new(), |mut s, x| {
        let _ = write!(s, "{x:02x}");
        s
    })
}

fn journal_info(path: &Path, problems: &mut Vec<Problem>) -> Result<Vec<SegmentInfo>> {
    let dir = path.join(JOURNAL_DIR);
    let mut out = Vec::new();
    let p = slot_path(&dir);
    match std::fs::read(&p) {
        Ok(bytes) => {
            let scan = scan_slots(&bytes);
            let damage = if scan.bad_header {
                Some((
                    0,
                    "slot file header damaged (a strict open refuses the store)",
                ))
            } else {
                scan.malformed.first().map(|&o| {
                    (o, "slot copy checksum holds but its content does not decode (a strict open refuses the store)")
                })
            };
            let (end, off) = match damage {
                Some((o, what)) => {
                    problems.push(Problem {
                        place: "journal".into(),
                        at: format!("{}:{o}", p.display()),
                        what: what.into(),
                    });
                    ("corrupt", o)
                }
                None if scan.torn > 0 => ("torn", 0),
                None => ("clean", 0),
            };
            out.push(SegmentInfo {
                path: p,
                bytes: bytes.len() as u64,
                frames: scan.slots_used,
                end,
                end_offset: off as u64,
            });
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => return Err(e.into()),
    }
    for i in 0..LEGACY_SEGMENTS {
        let p = segment_path(&dir, i);
        let bytes = match std::fs::read(&p) {
            Ok(b) => b,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => continue,
            Err(e) => return Err(e.into()),
        };
        let scan = scan_segment(&bytes, false);
        let (end, off) = match scan.end {
            ScanEnd::Clean { offset } => ("clean", offset),
            ScanEnd::TornTail { offset } => ("torn", offset),
            ScanEnd::Corrupt { offset } => {
                problems.push(Problem {
                    place: "journal".into(),
                    at: format!("{}:{offset}", p.display()),
                    what: "damaged frame before synced data (a strict open refuses the store)"
                        .into(),
                });
                ("corrupt", offset)
            }
        };
        for f in &scan.frames {
            if MarkRecord::decode(f.payload).is_none() {
                problems.push(Problem {
                    place: "journal".into(),
                    at: format!("{}:{}", p.display(), f.offset),
                    what: "frame checksum holds but its payload does not decode".into(),
                });
            }
        }
        out.push(SegmentInfo {
            path: p,
            bytes: bytes.len() as u64,
            frames: scan.frames.len() as u64,
            end,
            end_offset: off as u64,
        });
    }
    Ok(out)
}

fn format_version(db: &DB) -> Result<Option<u32>> {
    let Some(meta) = db.cf_handle(Cf::Meta.name()) else {
        return Ok(None);
    };
    Ok(db
        .get_cf(meta, FORMAT_VERSION_KEY)
        .map_err(storage)?
        .and_then(|v| <[u8; 4]>::try_from(v.as_slice()).ok())
        .map(u32::from_be_bytes))
}

/// Counts, sizes and journal state of the store in `path`, read-only.
///
/// # Errors
///
/// [`Error::InvalidArgument`] if `path` holds no store; RocksDB errors.
///
/// # Examples
///
/// ```
/// # use readmark::{Config, ConversationId, Store};
/// # let dir = tempfile::tempdir()?;
/// let store = Store::open(dir.path(), Config::new())?;
/// store.create_conversation(ConversationId(1))?;
/// store.close()?;
/// let report = readmark::inspect(dir.path())?;
/// assert_eq!(report.records["conversations"], 1);
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
pub fn inspect(path: &Path) -> Result<Report> {
    let (db, _) = open_read_only(path)?;
    let mut report = Report {
        format_version: format_version(&db)?,
        ..Report::default()
    };
    for cf in Cf::ALL {
        let Some(h) = db.cf_handle(cf.name()) else {
            continue;
        };
        let n = db.iterator_cf(h, IteratorMode::Start).count() as u64;
        report.records.insert(cf.name(), n);
        let sst = db
            .property_int_value_cf(h, "rocksdb.live-sst-files-size")
            .map_err(storage)?
            .unwrap_or(0);
        report.sst_bytes.insert(cf.name(), sst);
    }
    report.journal = journal_info(path, &mut Vec::new())?;
    Ok(report)
}

/// Checks every record of the store in `path` and every journal frame, and
/// reports what is inconsistent, without changing anything: keys of the
/// right width, values that decode, the user index twin of every
/// membership, conversation counts against the records they count,
/// deletions against deleted messages, one slot per member, marks of
/// members only, and undamaged journal segments.
///
/// # Errors
///
/// [`Error::InvalidArgument`] if `path` holds no store; RocksDB errors
/// (a file RocksDB itself cannot read is an error, not a problem).
///
/// # Examples
///
/// ```
/// # use readmark::{Config, ConversationId, Store, Timestamp, UserId};
/// # let dir = tempfile::tempdir()?;
/// let store = Store::open(dir.path(), Config::new())?;
/// store.create_conversation(ConversationId(1))?;
/// store.add_member(ConversationId(1), UserId(2), Timestamp(0))?;
/// store.close()?;
/// assert!(readmark::verify(dir.path())?.problems.is_empty());
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
pub fn verify(path: &Path) -> Result<Report> {
    let mut report = inspect(path)?;
    let (db, counters) = open_read_only(path)?;
    let mut problems = Vec::new();
    match report.format_version {
        Some(FORMAT_VERSION) => {}
        // Killed during its first open, before the version was written:
        // `Store::open` adopts it, as long as it holds nothing.
        None if report.records.values().all(|&n| n == 0) => {}
        other => problems.push(Problem {
            place: Cf::Meta.name().into(),
            at: hex(FORMAT_VERSION_KEY),
            what: format!("format version {other:?}, this build reads {FORMAT_VERSION}"),
        }),
    }
    let mut bad = |cf: Cf, key: &[u8], what: &str| {
        problems.push(Problem {
            place: cf.name().into(),
            at: hex(key),
            what: what.to_string(),
        });
    };
    let each = |cf: Cf, f: &mut dyn FnMut(&[u8], &[u8])| -> Result<()> {
        let Some(h) = db.cf_handle(cf.name()) else {
            return Ok(());
        };
        for item in db.iterator_cf(h, IteratorMode::Start) {
            let (k, v) = item.map_err(storage)?;
            f(&k, &v);
        }
        Ok(())
    };
    let mut convs: BTreeMap<u64, ConversationRecord> = BTreeMap::new();
    each(Cf::Conversations, &mut |k, v| match (
        <[u8; 8]>::try_from(k),
        ConversationRecord::decode(v),
    ) {
        (Ok(id), Some(r)) => {
            convs.insert(u64::from_be_bytes(id), r);
        }
        (Err(_), _) => bad(Cf::Conversations, k, "key is not 8 bytes"),
        (_, None) => bad(Cf::Conversations, k, "conversation record does not decode"),
    })?;
    let mut members: BTreeMap<(u64, u64), MemberRecord> = BTreeMap::new();
    each(
        Cf::Members,
        &mut |k, v| match (keys::decode_pair_key(k), MemberRecord::decode(v)) {
            (Some(p), Some(r)) => {
                members.insert(p, r);
            }
            (None, _) => bad(Cf::Members, k, "key is not 16 bytes"),
            (_, None) => bad(Cf::Members, k, "member record does not decode"),
        },
    )?;
    let mut index = BTreeSet::new();
    each(
        Cf::UserConversations,
        &mut |k, v| match keys::decode_pair_key(k) {
            Some((u, c)) if v.is_empty() => {
                index.insert((c, u));
            }
            Some(_) => bad(Cf::UserConversations, k, "index value is not empty"),
            None => bad(Cf::UserConversations, k, "key is not 16 bytes"),
        },
    )?;
    let mut messages: BTreeMap<(u64, u64), MessageRecord> = BTreeMap::new();
    each(
        Cf::Messages,
        &mut |k, v| match (keys::decode_pair_key(k), MessageRecord::decode(v)) {
            (Some(p), Some(r)) => {
                messages.insert(p, r);
            }
            (None, _) => bad(Cf::Messages, k, "key is not 16 bytes"),
            (_, None) => bad(Cf::Messages, k, "message record does not decode"),
        },
    )?;
    let mut deletions = BTreeSet::new();
    each(Cf::Deletions, &mut |k, v| match keys::decode_pair_key(k) {
        Some(p) if v.is_empty() => {
            deletions.insert(p);
        }
        Some(_) => bad(Cf::Deletions, k, "deletion value is not empty"),
        None => bad(Cf::Deletions, k, "key is not 16 bytes"),
    })?;
    // Threads (format 6): each entry names a thread record that names it
    // back, in an existing conversation, rooted at one of its messages.
    let mut thread_index: BTreeMap<u64, (u64, u64)> = BTreeMap::new();
    each(
        Cf::Threads,
        &mut |k, v| match (keys::decode_pair_key(k), <[u8; 8]>::try_from(v)) {
            (Some((c, root)), Ok(id)) => {
                let id = u64::from_be_bytes(id);
                if convs.get(&id).and_then(|r| r.thread) != Some((c, root)) {
                    bad(Cf::Threads, k, "thread entry without its thread record");
                }
                if !messages.contains_key(&(c, root)) {
                    bad(Cf::Threads, k, "thread rooted at no main-timeline message");
                }
                thread_index.insert(id, (c, root));
            }
            (None, _) => bad(Cf::Threads, k, "key is not 16 bytes"),
            (_, Err(_)) => bad(Cf::Threads, k, "thread id is not 8 bytes"),
        },
    )?;
    // Whose members a timeline's marks belong to.
    let owner = |c: u64| convs.get(&c).and_then(|r| r.thread).map_or(c, |(p, _)| p);
    let mut orphan_marks = 0u64;
    let mut marks_past_newest = 0u64;
    each(Cf::Marks, &mut |k, v| match keys::decode_pair_key(k) {
        None => bad(Cf::Marks, k, "key is not 16 bytes"),
        Some(p) => match MarkState::decode(v) {
            None => bad(Cf::Marks, k, "mark value does not decode"),
            Some(state) => {
                if !members.contains_key(&(owner(p.0), p.1)) {
                    // A write that raced a leave can land after it; the next
                    // join of that user deletes it. Counted, not a problem.
                    orphan_marks += 1;
                }
                // Clamped since format 4's semantics fix (design §3.1);
                // older versions took such marks as given. Counted, since
                // a store written by them may hold some.
                let newest = convs.get(&p.0).and_then(ConversationRecord::last_message);
                if state
                    .mark
                    .is_some_and(|m| newest.is_none_or(|n| m.up_to > n))
                {
                    marks_past_newest += 1;
                }
            }
        },
    })?;
    each(Cf::Receipts, &mut |k, v| {
        if keys::decode_pair_key(k).is_none() {
            bad(Cf::Receipts, k, "key is not 16 bytes");
        } else if Bitset::decode(v).is_none() {
            bad(Cf::Receipts, k, "receipt bitset does not decode");
        }
    })?;
    each(Cf::ReadTimes, &mut |k, v| {
        if k.len() != TIME_KEY_LEN {
            bad(Cf::ReadTimes, k, "key is not 25 bytes");
        } else if k[crate::pure::bitset::TIME_KEY_KIND] > 1 {
            bad(Cf::ReadTimes, k, "unknown read-time kind");
        } else if ReadTimeRecord::decode(v).is_none() {
            bad(Cf::ReadTimes, k, "read-time record does not decode");
        }
    })?;
    // Cross-checks.
    for (&(c, u), m) in &members {
        let key = keys::pair_key(c, u);
        if !convs.contains_key(&c) {
            bad(
                Cf::Members,
                &key,
                "member of a conversation that does not exist",
            );
        }
        if !index.contains(&(c, u)) {
            bad(Cf::Members, &key, "membership without its user index entry");
        }
        // The newest message of any of the conversation's timelines.
        if let Some(j) = m.joined_after
            && !messages.contains_key(&(c, j.0))
            && !thread_index
                .iter()
                .any(|(&t, &(p, _))| p == c && messages.contains_key(&(t, j.0)))
        {
            bad(Cf::Members, &key, "joined_after names no recorded message");
        }
    }
    for &(c, u) in &index {
        if !members.contains_key(&(c, u)) {
            bad(
                Cf::UserConversations,
                &keys::pair_key(u, c),
                "user index entry without a membership",
            );
        }
    }
    for (&c, r) in &convs {
        let key = keys::id_key(c);
        let in_conv = |&&(x, _): &&(u64, u64)| x == c;
        let n_members = members.keys().filter(in_conv).count() as u64;
        if let Some((parent, _)) = r.thread {
            if thread_index.get(&c) != r.thread.as_ref() {
                bad(Cf::Conversations, &key, "thread record without its entry");
            }
            if convs.get(&parent).is_none_or(|p| {
                p.newest_any
                    .is_none_or(|n| r.last_message().is_some_and(|l| l.0 > n))
            }) {
                bad(
                    Cf::Conversations,
                    &key,
                    "thread newer than its conversation's newest message",
                );
            }
        } else if n_members != r.member_count {
            bad(
                Cf::Conversations,
                &key,
                "member_count differs from the member records",
            );
        }
        let msgs: Vec<(&(u64, u64), &MessageRecord)> =
            messages.iter().filter(|(k, _)| k.0 == c).collect();
        if msgs.len() as u64 != r.message_count {
            bad(
                Cf::Conversations,
                &key,
                "message_count differs from the message records",
            );
        }
        if let Some((last, _)) = msgs.last()
            && last.1 != r.last_message
        {
            bad(
                Cf::Conversations,
                &key,
                "last_message is not the newest message",
            );
        }
        let ordinals_ok = msgs
            .iter()
            .enumerate()
            .all(|(i, (_, m))| m.ordinal == i as u64 + 1);
        if !ordinals_ok {
            bad(
                Cf::Conversations,
                &key,
                "message ordinals are not 1, 2, 3, ... in id order",
            );
        }
        let deleted = msgs.iter().filter(|(_, m)| m.excluded()).count() as u64;
        if deleted != r.deleted_count {
            bad(
                Cf::Conversations,
                &key,
                "deleted_count differs from the deleted messages",
            );
        }
        let mut slots = BTreeSet::new();
        for (&(_, u), m) in members.iter().filter(|(k, _)| k.0 == c) {
            if let Some(s) = m.slot
                && !slots.insert(s)
            {
                bad(
                    Cf::Members,
                    &keys::pair_key(c, u),
                    "receipt slot held by two members",
                );
            }
        }
    }
    for (&(c, m), r) in &messages {
        if r.excluded() != deletions.contains(&(c, m)) {
            bad(
                Cf::Messages,
                &keys::pair_key(c, m),
                "deleted flag and deletions index disagree",
            );
        }
    }
    for &(c, m) in &deletions {
        if !messages.contains_key(&(c, m)) {
            bad(
                Cf::Deletions,
                &keys::pair_key(c, m),
                "deletion of a message that does not exist",
            );
        }
    }
    let mut mentions = 0u64;
    each(
        Cf::Mentions,
        &mut |k, _| match super::mentions::decode_message(k) {
            None => bad(Cf::Mentions, k, "mention key has neither layout"),
            Some((c, m)) if !messages.contains_key(&(c.0, m.0)) => {
                bad(Cf::Mentions, k, "mention of a message that does not exist");
            }
            Some(_) => mentions += 1,
        },
    )?;
    if mentions > 0 {
        report.records.insert("mentions", mentions);
    }
    let mut journal_problems = Vec::new();
    report.journal = journal_info(path, &mut journal_problems)?;
    problems.extend(journal_problems);
    report.malformed_operands = counters.malformed.load(Ordering::Relaxed);
    if marks_past_newest > 0 {
        report.records.insert(
            "marks past the newest message (older versions)",
            marks_past_newest,
        );
    }
    if orphan_marks > 0 {
        report.records.insert("marks of non-members", orphan_marks);
    }
    report.problems = problems;
    Ok(report)
}

/// One conversation, human-readable: its record, members (slot, join
/// point), marks, messages, and the receipts of its newest `messages`
/// messages. Read-only.
///
/// # Errors
///
/// [`Error::InvalidArgument`] if `path` holds no store,
/// [`Error::UnknownConversation`], RocksDB errors.
///
/// # Examples
///
/// ```
/// # use readmark::{Config, ConversationId, Store, Timestamp, UserId};
/// # let dir = tempfile::tempdir()?;
/// let store = Store::open(dir.path(), Config::new())?;
/// store.create_conversation(ConversationId(1))?;
/// store.add_member(ConversationId(1), UserId(2), Timestamp(0))?;
/// store.close()?;
/// let text = readmark::dump(dir.path(), ConversationId(1), 20)?;
/// assert!(text.contains("u2"));
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
pub fn dump(path: &Path, conversation: crate::ConversationId, messages: usize) -> Result<String> {
    let (db, _) = open_read_only(path)?;
    let h = |cf: Cf| {
        db.cf_handle(cf.name())
            .ok_or(Error::InvalidArgument("column family missing"))
    };
    let c = conversation.0;
    let conv = db
        .get_cf(h(Cf::Conversations)?, keys::id_key(c))
        .map_err(storage)?
        .ok_or(Error::UnknownConversation(conversation))?;
    let mut out = String::new();
    match ConversationRecord::decode(&conv) {
        Some(r) => {
            let _ = writeln!(
                out,
                "conversation {conversation}: {} members, {} messages ({} deleted), newest m{}, per-message receipts {}, threshold {}",
                r.member_count,
                r.message_count,
                r.deleted_count,
                r.last_message,
                if r.per_message { "on" } else { "off" },
                r.threshold
                    .map_or("store default".to_string(), |t| t.to_string()),
            );
        }
        None => {
            let _ = writeln!(
                out,
                "conversation {conversation}: record does not decode ({})",
                hex(&conv)
            );
        }
    }
    let prefix = |cf: Cf| -> Result<Vec<(u64, Vec<u8>)>> {
        let (lower, upper) = keys::prefix_range(c, 0);
        let mut ro = rocksdb::ReadOptions::default();
        ro.set_iterate_lower_bound(lower.clone());
        if let Some(u) = upper {
            ro.set_iterate_upper_bound(u);
        }
        let mut it = db.raw_iterator_cf_opt(h(cf)?, ro);
        it.seek(&lower);
        let mut v = Vec::new();
        while let (Some(k), Some(val)) = (it.key(), it.value()) {
            if let Some((_, inner)) = keys::decode_pair_key(k) {
                v.push((inner, val.to_vec()));
            }
            it.next();
        }
        it.status().map_err(storage)?;
        Ok(v)
    };
    let marks: BTreeMap<u64, Vec<u8>> = prefix(Cf::Marks)?.into_iter().collect();
    let mut slot_of = BTreeMap::new();
    // (user, joined after, read up to): who a message's readers by mark are.
    let mut covering: Vec<(u64, u64, u64)> = Vec::new();
    let _ = writeln!(out, "members (user, slot, joined after, mark):");
    for (u, v) in prefix(Cf::Members)? {
        let m = MemberRecord::decode(&v);
        if let Some(s) = m.and_then(|m| m.slot) {
            slot_of.insert(s, u);
        }
        let stored = marks
            .get(&u)
            .and_then(|v| MarkState::decode(v))
            .and_then(|s| s.mark);
        if let Some(mk) = stored {
            covering.push((
                u,
                m.and_then(|m| m.joined_after).map_or(0, |j| j.0),
                mk.up_to.0,
            ));
        }
        let mark = stored.map_or("-".to_string(), |m| {
            format!("m{} at t{}", m.up_to.0, m.at.0)
        });
        let _ = writeln!(
            out,
            "  u{u}  slot {}  joined after {}  read up to {mark}",
            m.and_then(|m| m.slot)
                .map_or("-".to_string(), |s| s.to_string()),
            m.and_then(|m| m.joined_after)
                .map_or("-".to_string(), |j| format!("m{}", j.0)),
        );
    }
    let msgs = prefix(Cf::Messages)?;
    let _ = writeln!(
        out,
        "newest {} of {} messages (id, sender, sent, flags, [readers by mark | bits: slot -> user]):",
        messages.min(msgs.len()),
        msgs.len()
    );
    for (m, v) in msgs.iter().rev().take(messages).rev() {
        let r = MessageRecord::decode(v);
        let bits = db
            .get_cf(h(Cf::Receipts)?, keys::pair_key(c, *m))
            .map_err(storage)?
            .and_then(|b| Bitset::decode(&b));
        let sender = r.map(|r| r.sender.0);
        let by_mark = covering
            .iter()
            .filter(|&&(u, after, up_to)| Some(u) != sender && *m > after && *m <= up_to)
            .map(|(u, ..)| format!("u{u}"))
            .collect::<Vec<_>>();
        let by_mark = if by_mark.is_empty() {
            "-".to_string()
        } else {
            by_mark.join(" ")
        };
        let bits = bits.map_or("-".to_string(), |b| {
            b.slots()
                .map(|s| match slot_of.get(&s) {
                    Some(u) => format!("{s}->u{u}"),
                    None => format!("{s}->(left)"),
                })
                .collect::<Vec<_>>()
                .join(" ")
        });
        let _ = writeln!(
            out,
            "  m{m}  {}  t{}  {}{}  [{by_mark} | bits: {bits}]",
            r.map_or("?".to_string(), |r| format!("u{}", r.sender.0)),
            r.map_or(0, |r| r.sent_at.0),
            if r.is_some_and(|r| r.tracked) {
                "tracked"
            } else {
                "untracked"
            },
            if r.is_some_and(|r| r.deleted) {
                " deleted"
            } else {
                ""
            },
        );
    }
    Ok(out)
}
