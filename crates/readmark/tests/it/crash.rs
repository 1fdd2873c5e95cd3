//! Crash safety shown with real kills: the test re-executes its own binary
//! as a child that writes marks and reports each acknowledged one on
//! stdout; the parent SIGKILLs it at a random moment, reopens the store and
//! checks that nothing acknowledged at `ProcessCrash` or `PowerLoss` was
//! lost and that no mark went backwards. (Model: sled's
//! `test_crash_recovery`, RocksDB's `db_crashtest.py`.)

use crate::common;

use std::collections::BTreeMap;
use std::io::{BufRead, BufReader, Write};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use readmark::{
    Config, ConversationId, Durability, Error, MessageId, Store, Timeline, Timestamp, UserId,
};

const ENV_DIR: &str = "READMARK_CRASH_CHILD_DIR";
const ENV_SEED: &str = "READMARK_CRASH_CHILD_SEED";
const CONVS: u64 = 3;
/// Timelines `0..CONVS` are main ones, the next `CONVS` a thread in each
/// conversation (rooted at message 1): thread marks go through the same
/// buffer, journal and replay.
const TIMELINES: u64 = 2 * CONVS;
const USERS: u64 = 4;

fn timeline(i: u64) -> Timeline {
    if i < CONVS {
        Timeline::main(ConversationId(i))
    } else {
        Timeline::thread(ConversationId(i - CONVS), MessageId(1))
    }
}
/// Runs, and a wall-clock budget so CI stays bounded on a loaded machine.
const RUNS: u64 = 120;
const BUDGET: Duration = Duration::from_secs(120);

fn config() -> Config {
    // Small segments and a short timer: kills land during appends, group
    // commits, rotations, flushes and retirements alike.
    Config::new()
        .write_buffer_bytes(256 << 10)
        .journal_bytes(128 << 10)
        .flush_interval(Duration::from_millis(5))
        .flush_after_updates(40)
}

/// (conversation, user) -> up_to.
type Marks = BTreeMap<(u64, u64), u64>;

/// A child's setup, which a killed earlier child may have done in part:
/// the conversation with members `0..USERS`.
fn set_up_again(store: &Store, c: ConversationId) {
    match store.create_conversation(c) {
        Ok(()) | Err(Error::ConversationExists(_)) => {}
        Err(e) => panic!("{e}"),
    }
    for u in 0..USERS {
        match store.add_member(c, UserId(u), Timestamp(0)) {
            Ok(()) | Err(Error::AlreadyMember { .. }) => {}
            Err(e) => panic!("{e}"),
        }
    }
}

/// Re-executes this test binary as the ignored child test `child` (its full
/// name, on `dir`, told by the variable `env`), SIGKILLs it after a random 5
/// to 85 ms, and returns every line it printed.
fn run_and_kill(child: &str, env: &str, dir: &std::path::Path, rng: &mut u64) -> Vec<String> {
    let exe = std::env::current_exe().unwrap();
    let mut proc = Command::new(exe)
        .args([
            "--exact",
            child,
            "--ignored",
            "--nocapture",
            "--test-threads=1",
        ])
        .env(env, dir)
        .env(ENV_SEED, (common::xorshift(rng) | 1).to_string())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let stdout = proc.stdout.take().unwrap();
    let reader = std::thread::spawn(move || {
        BufReader::new(stdout)
            .lines()
            .map_while(Result::ok)
            .collect::<Vec<_>>()
    });
    std::thread::sleep(Duration::from_millis(5 + common::xorshift(rng) % 80));
    proc.kill().unwrap(); // SIGKILL
    proc.wait().unwrap();
    reader.join().unwrap()
}

/// The child of `kill_9_at_random_points`, which runs it by name.
#[test]
#[ignore = "a child process: kill_9_at_random_points runs it"]
fn crash_child() {
    let dir = std::env::var(ENV_DIR).expect("run by kill_9_at_random_points");
    let mut rng: u64 = std::env::var(ENV_SEED).unwrap().parse().unwrap();
    let store = Store::open(&dir, config()).unwrap();
    for c in 0..CONVS {
        let c = ConversationId(c);
        set_up_again(&store, c);
        // A message above every mark the child makes (marks clamp to the
        // newest message), from a member of its own.
        match store.add_member(c, common::POSTER, Timestamp(0)) {
            Ok(()) | Err(Error::AlreadyMember { .. }) => {}
            Err(e) => panic!("{e}"),
        }
        // A root, a reply in its thread, the main timeline's newest: each
        // refused as out of order if an earlier child recorded it.
        let thread = Timeline::thread(c, MessageId(1));
        for (t, m) in [
            (Timeline::main(c), 1),
            (thread, common::FAR),
            (Timeline::main(c), common::FAR + 1),
        ] {
            match store.record_message(t, MessageId(m), common::POSTER, Timestamp(0)) {
                Ok(()) | Err(Error::MessageOutOfOrder { .. }) => {}
                Err(e) => panic!("{e}"),
            }
        }
    }
    let out = std::io::stdout();
    let mut out = out.lock();
    writeln!(out, "READY").unwrap();
    out.flush().unwrap();
    for i in 0u64.. {
        let r = common::xorshift(&mut rng);
        let (c, u) = (r % TIMELINES, (r >> 8) % USERS);
        // Mostly advancing, sometimes stale.
        let up_to = i / 2 + (r >> 16) % 64;
        let level = match (r >> 24) % 4 {
            0 => Durability::Memory,
            1 | 2 => Durability::ProcessCrash,
            _ => Durability::PowerLoss,
        };
        store
            .mark_read_with(
                timeline(c),
                UserId(u),
                MessageId(up_to),
                Timestamp(i),
                level,
            )
            .unwrap();
        writeln!(out, "ACK {level:?} {c} {u} {up_to}").unwrap();
        out.flush().unwrap();
        if (r >> 32).is_multiple_of(97) {
            store.flush_key(timeline(c), UserId(u)).unwrap();
        }
    }
}

#[test]
fn kill_9_at_random_points() {
    let dir = tempfile::tempdir().unwrap();
    // Durable floor per key: what the last verification saw.
    let mut floor: BTreeMap<(u64, u64), u64> = BTreeMap::new();
    let mut rng = 0x5EED_u64;
    let started = Instant::now();
    let mut runs = 0u64;
    let mut checked_acks = 0u64;
    // User 0's catch-up cursor taken after the previous verification, with
    // the marks it saw then.
    let mut cursor: Option<(readmark::Cursor, Marks)> = None;
    let mut caught_up = 0u64;
    while runs < RUNS && started.elapsed() < BUDGET {
        runs += 1;
        let lines = run_and_kill("crash::crash_child", ENV_DIR, dir.path(), &mut rng);
        let ready = lines.iter().any(|l| l == "READY");
        let acks: Vec<(String, u64, u64, u64)> = lines
            .iter()
            .filter_map(|l| l.strip_prefix("ACK "))
            .map(|rest| {
                let f: Vec<&str> = rest.split(' ').collect();
                (
                    f[0].to_string(),
                    f[1].parse().unwrap(),
                    f[2].parse().unwrap(),
                    f[3].parse().unwrap(),
                )
            })
            .collect();

        let store = Store::open(dir.path(), config()).unwrap();
        let mut durable: BTreeMap<(u64, u64), u64> = BTreeMap::new();
        for (level, c, u, up_to) in &acks {
            if level != "Memory" {
                let e = durable.entry((*c, *u)).or_insert(0);
                *e = (*e).max(*up_to);
            }
        }
        for c in 0..TIMELINES {
            for u in 0..USERS {
                let got = match store.mark(timeline(c), UserId(u)) {
                    Ok(m) => m.map_or(0, |m| m.up_to.0),
                    // Killed before its setup finished: nothing was
                    // acknowledged for this key, nothing can be lost.
                    Err(
                        Error::UnknownConversation(_)
                        | Error::NotMember { .. }
                        | Error::UnknownThread { .. },
                    ) => {
                        assert!(
                            !ready && !durable.contains_key(&(c, u)),
                            "run {runs}: membership lost"
                        );
                        0
                    }
                    Err(e) => panic!("run {runs}: {e}"),
                };
                if let Some(&want) = durable.get(&(c, u)) {
                    assert!(
                        got >= want,
                        "run {runs}: acknowledged mark ({c},{u}) >= {want} lost: found {got}"
                    );
                    checked_acks += 1;
                }
                let before = floor.get(&(c, u)).copied().unwrap_or(0);
                assert!(
                    got >= before,
                    "run {runs}: mark ({c},{u}) went backwards: {before} -> {got}"
                );
                floor.insert((c, u), got);
            }
        }
        // Catch-up across the crash: every mark that moved since the cursor
        // (journal replay included) is listed, with its current value.
        if let Some((cur, before)) = cursor.take() {
            let (states, _) = common::catch_up(&store, UserId(0), cur, 5);
            let listed: BTreeMap<(u64, u64), u64> = states
                .iter()
                .map(|s| {
                    let i = s.conversation.0 + if s.thread.is_some() { CONVS } else { 0 };
                    ((i, s.reader.0), s.up_to.0)
                })
                .collect();
            for (&key, &now) in &floor {
                if now > before.get(&key).copied().unwrap_or(0) {
                    assert_eq!(
                        listed.get(&key),
                        Some(&now),
                        "run {runs}: catch-up missed {key:?} moving to {now}"
                    );
                    caught_up += 1;
                }
            }
        }
        if store
            .is_member(ConversationId(0), UserId(0))
            .unwrap_or(false)
        {
            cursor = Some((store.snapshot(UserId(0)).unwrap().cursor, floor.clone()));
        }
        store.close().unwrap();
    }
    assert!(
        caught_up > 0,
        "catch-up was never checked: the harness is broken"
    );
    assert!(runs >= 20, "only {runs} runs fit in the budget");
    assert!(
        checked_acks > 0,
        "no child acknowledged anything: the harness is broken"
    );
    eprintln!(
        "crash test: {runs} kills, {checked_acks} acknowledged keys verified, {caught_up} moved marks found by catch-up across a crash"
    );
}

const ENV_SEND_DIR: &str = "READMARK_CRASH_SEND_CHILD_DIR";
const SEND_RUNS: u64 = 40;
const SEND_BUDGET: Duration = Duration::from_secs(60);

/// The child of `kill_9_while_sending`: in one small group (per-message
/// receipts on), members send messages and read, and every acknowledged
/// send is reported.
#[test]
#[ignore = "a child process: kill_9_while_sending runs it"]
fn send_child() {
    let dir = std::env::var(ENV_SEND_DIR).expect("run by kill_9_while_sending");
    let mut rng: u64 = std::env::var(ENV_SEED).unwrap().parse().unwrap();
    let store = Store::open(&dir, config()).unwrap();
    let c = ConversationId(7);
    set_up_again(&store, c);
    let out = std::io::stdout();
    let mut out = out.lock();
    writeln!(out, "READY").unwrap();
    out.flush().unwrap();
    loop {
        let r = common::xorshift(&mut rng);
        let u = r % USERS;
        // Ids grow across runs: the wall clock in microseconds.
        let now = Timestamp::now().get();
        let id = u64::try_from(
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .unwrap()
                .as_micros(),
        )
        .unwrap();
        if (r >> 8).is_multiple_of(3) {
            match store.record_message(c, MessageId(id), UserId(u), Timestamp(now)) {
                Ok(()) => {
                    writeln!(out, "SENT {id} {u}").unwrap();
                    out.flush().unwrap();
                }
                Err(Error::MessageOutOfOrder { .. }) => {}
                Err(e) => panic!("{e}"),
            }
        } else {
            store
                .mark_read(c, UserId(u), MessageId(id), Timestamp(now))
                .unwrap();
        }
    }
}

/// Kills a child that sends and reads in a small group at random points:
/// the crash image verifies clean (counts, slots, receipts, journal), every
/// acknowledged message exists and its sender's mark covers it (the
/// advance is journaled before the message is written), and "read by"
/// follows the rule for every message.
#[test]
fn kill_9_while_sending() {
    let dir = tempfile::tempdir().unwrap();
    let c = ConversationId(7);
    let mut rng = 0xC0FFEE_u64;
    let started = Instant::now();
    let (mut runs, mut sends) = (0u64, 0u64);
    while runs < SEND_RUNS && started.elapsed() < SEND_BUDGET {
        runs += 1;
        let sent: Vec<(u64, u64)> =
            run_and_kill("crash::send_child", ENV_SEND_DIR, dir.path(), &mut rng)
                .iter()
                .filter_map(|l| l.strip_prefix("SENT "))
                .map(|rest| {
                    let f: Vec<u64> = rest.split(' ').map(|x| x.parse().unwrap()).collect();
                    (f[0], f[1])
                })
                .collect();
        if dir.path().join("CURRENT").exists() {
            let report = readmark::verify(dir.path()).unwrap();
            assert!(
                report.problems.is_empty() && report.malformed_operands == 0,
                "run {runs}: crash image inconsistent: {:?}",
                report.problems
            );
        }
        let store = Store::open(dir.path(), config()).unwrap();
        for &(id, u) in &sent {
            let n = store.read_count(c, UserId(u), MessageId(id));
            assert!(
                n.is_ok(),
                "run {runs}: acknowledged message {id} lost: {n:?}"
            );
            let mark = store.mark(c, UserId(u)).unwrap().map_or(0, |m| m.up_to.0);
            assert!(
                mark >= id,
                "run {runs}: sender {u}'s mark {mark} does not cover its message {id}"
            );
            // The rule: readers are members (the sender excluded) whose
            // mark covers the message or who have its bit; here nobody
            // views, so readers are exactly the covering members.
            let page = store
                .read_by(c, UserId(u), MessageId(id), readmark::Page::first(10))
                .unwrap();
            for r in &page.readers {
                assert_ne!(r.user, UserId(u), "run {runs}: sender listed");
                let m = store.mark(c, r.user).unwrap().map_or(0, |m| m.up_to.0);
                assert!(
                    m >= id,
                    "run {runs}: reader {} without a covering mark",
                    r.user
                );
            }
            sends += 1;
        }
        store.close().unwrap();
    }
    assert!(runs >= 10, "only {runs} runs fit in the budget");
    assert!(
        sends > 0,
        "no child acknowledged a send: the harness is broken"
    );
    eprintln!("crash test (sends): {runs} kills, {sends} acknowledged sends verified");
}
