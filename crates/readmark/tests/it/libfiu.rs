//! RocksDB's and the journal's own file I/O failed by libfiu (Debian's
//! `fiu-utils`, installed by `scripts/setup.sh`): a child process runs a
//! workload under `fiu-run -x` (its POSIX wrappers preloaded), switching
//! one failure point on around each store call with some probability.
//! Every failure must come back as a typed error (then the store refuses
//! writes, or the failure is survived), never a panic; after the child
//! exits without closing, a store opened without injection holds every
//! mark acknowledged at `ProcessCrash` or `PowerLoss` and verifies clean.

use crate::common;

use std::collections::BTreeMap;
use std::ffi::{CString, c_char, c_int, c_uint, c_void};
use std::io::{BufRead, BufReader, Write};
use std::process::{Command, Stdio};

use readmark::{Config, ConversationId, Durability, Error, MessageId, Store, Timestamp, UserId};

const C: ConversationId = ConversationId(1);
const USERS: u64 = 4;
const OPS: u64 = 2_000;
const ENV_DIR: &str = "READMARK_FIU_CHILD_DIR";
const ENV_POINT: &str = "READMARK_FIU_POINT";
const ENV_PROBABILITY: &str = "READMARK_FIU_PROBABILITY";
const ENV_AT_OPEN: &str = "READMARK_FIU_AT_OPEN";
/// Rounds of the whole list (default 1): the long variant,
/// `READMARK_FIU_ROUNDS=40 cargo test --release -p readmark --test it libfiu -- --nocapture`.
const ENV_ROUNDS: &str = "READMARK_FIU_ROUNDS";

/// Each failure point of the file I/O a store does, in turn.
const POINTS: &[&str] = &[
    "posix/io/rw/write",
    "posix/io/rw/write/reduce",
    "posix/io/rw/pwrite",
    "posix/io/rw/pwrite/reduce",
    "posix/io/rw/writev",
    "posix/io/rw/read",
    "posix/io/rw/pread",
    "posix/io/rw/pread/reduce",
    "posix/io/rw/ftruncate",
    "posix/io/sync/fsync",
    "posix/io/sync/fdatasync",
    "posix/io/oc/open",
    "posix/io/oc/close",
    "posix/io/dir/rename",
    "posix/io/dir/unlink",
    "posix/mm/mmap",
    "posix/mm/msync",
    "posix/mm/munmap",
];

type EnableRandom = unsafe extern "C" fn(*const c_char, c_int, *mut c_void, c_uint, f32) -> c_int;
type Disable = unsafe extern "C" fn(*const c_char) -> c_int;

/// libfiu's control functions, present in a process started by
/// `fiu-run -x` (its preload library links libfiu).
struct Fiu {
    enable_random: EnableRandom,
    disable: Disable,
    point: CString,
    probability: f32,
}

impl Fiu {
    fn load(point: &str, probability: f32) -> Fiu {
        // SAFETY: dlsym with RTLD_DEFAULT looks up a symbol of the loaded
        // objects; the signatures are libfiu's (fiu.h).
        unsafe {
            let er = libc::dlsym(libc::RTLD_DEFAULT, c"fiu_enable_random".as_ptr());
            let d = libc::dlsym(libc::RTLD_DEFAULT, c"fiu_disable".as_ptr());
            assert!(
                !er.is_null() && !d.is_null(),
                "libfiu is not loaded: run under `fiu-run -x`"
            );
            Fiu {
                enable_random: std::mem::transmute::<*mut c_void, EnableRandom>(er),
                disable: std::mem::transmute::<*mut c_void, Disable>(d),
                point: CString::new(point).expect("point name"),
                probability,
            }
        }
    }

    /// Switches the failure point on, for every thread (the flusher's and
    /// RocksDB's background work too).
    fn enable(&self) {
        // SAFETY: libfiu's documented call, with a NUL-terminated name;
        // failnum 1 and no failinfo let its wrappers pick a valid errno.
        unsafe {
            (self.enable_random)(
                self.point.as_ptr(),
                1,
                std::ptr::null_mut(),
                0,
                self.probability,
            );
        }
    }

    /// Switches it off (while the child reports on its stdout).
    fn disable(&self) {
        // SAFETY: as above.
        unsafe {
            (self.disable)(self.point.as_ptr());
        }
    }
}

fn config() -> Config {
    common::small_config().flush_after_updates(8)
}

/// The child, run under `fiu-run` by `every_io_failure_point_in_turn`.
#[test]
#[ignore = "a child process: every_io_failure_point_in_turn runs it"]
fn fiu_child() {
    let dir = std::env::var(ENV_DIR).expect("run by every_io_failure_point_in_turn");
    let point = std::env::var(ENV_POINT).unwrap();
    let probability: f32 = std::env::var(ENV_PROBABILITY).unwrap().parse().unwrap();
    let fiu = Fiu::load(&point, probability);
    let out = std::io::stdout();
    let mut out = out.lock();
    // Setup without injection.
    let store = Store::open(&dir, config()).unwrap();
    store.create_conversation(C).unwrap();
    for u in 0..USERS {
        store.add_member(C, UserId(u), Timestamp(0)).unwrap();
    }
    store.add_member(C, common::POSTER, Timestamp(0)).unwrap();
    store
        .record_message(C, MessageId(common::FAR), common::POSTER, Timestamp(0))
        .unwrap();
    store.close().unwrap();
    let _ = writeln!(out, "READY");
    // Open under injection (in half the runs): the journal's file, map and
    // recovery, RocksDB's manifest, log and `CURRENT`.
    let at_open = std::env::var(ENV_AT_OPEN).is_ok_and(|v| v == "1");
    if at_open {
        fiu.enable();
    }
    let store = match Store::open(&dir, config()) {
        Ok(s) => s,
        Err(e) => {
            fiu.disable();
            let _ = writeln!(out, "ERR {}", kind(&e));
            let _ = writeln!(out, "AFTER open-refused");
            let _ = writeln!(out, "DONE");
            let _ = out.flush();
            std::process::exit(0);
        }
    };
    fiu.enable();
    for i in 1..=OPS {
        let u = i % USERS;
        let level = match i % 3 {
            0 => Durability::Memory,
            1 => Durability::ProcessCrash,
            _ => Durability::PowerLoss,
        };
        // Flushes write RocksDB's log and memtables; compactions its
        // tables, manifest and obsolete files.
        let r = if i % 500 == 0 {
            store.compact()
        } else if i % 20 == 0 {
            store.flush()
        } else {
            store.mark_read_with(C, UserId(u), MessageId(i), Timestamp(i), level)
        };
        fiu.disable();
        match r {
            Ok(()) => {
                if i % 20 != 0 && level != Durability::Memory {
                    let _ = writeln!(out, "ACK {u} {i}");
                }
                fiu.enable();
            }
            Err(e) => {
                let _ = writeln!(out, "ERR {}", kind(&e));
                // Refused from now on, or survived (a failed read poisons
                // nothing): either way, a typed answer.
                let next = store.mark_read(C, UserId(0), MessageId(OPS + 1), Timestamp(0));
                let _ = writeln!(
                    out,
                    "AFTER {}",
                    match next {
                        Ok(()) => "survived".to_string(),
                        Err(e) => kind(&e),
                    }
                );
                break;
            }
        }
    }
    let _ = writeln!(out, "DONE");
    let _ = out.flush();
    // Leave as a crash would: no close.
    std::mem::forget(store);
    std::process::exit(0);
}

fn kind(e: &Error) -> String {
    match e {
        Error::Io(_) => "io".into(),
        Error::Storage(s) => format!("storage:{:?}", s.kind()),
        Error::Poisoned(_) => "poisoned".into(),
        other => format!("other:{other}"),
    }
}

struct Run {
    acked: BTreeMap<u64, u64>,
    error: Option<String>,
    after: Option<String>,
    /// The process aborted because memory could not be mapped: RocksDB
    /// (a cache's anonymous mmap) and Rust's thread start (a signal stack)
    /// treat that as out of memory. Only with `mmap` failing; checked as a
    /// crash.
    aborted: bool,
}

fn run_child(dir: &std::path::Path, point: &str, probability: f32, at_open: bool) -> Run {
    let exe = std::env::current_exe().unwrap();
    let out = Command::new("fiu-run")
        .arg("-x")
        .arg(exe)
        .args([
            "--exact",
            "libfiu::fiu_child",
            "--ignored",
            "--nocapture",
            "--test-threads=1",
        ])
        .env(ENV_DIR, dir)
        .env(ENV_POINT, point)
        .env(ENV_PROBABILITY, probability.to_string())
        .env(ENV_AT_OPEN, if at_open { "1" } else { "0" })
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .output()
        .expect("fiu-run (Debian package fiu-utils, installed by scripts/setup.sh)");
    let lines: Vec<String> = BufReader::new(&out.stdout[..])
        .lines()
        .map_while(Result::ok)
        .collect();
    let stderr = String::from_utf8_lossy(&out.stderr);
    let maps_fail = point == "posix/*" || point == "posix/mm/mmap";
    let aborted = maps_fail
        && !out.status.success()
        && (stderr.contains("Anonymous mmap for RocksDB")
            || stderr.contains("failed to allocate an alternative stack"));
    assert!(
        aborted || out.status.success() && lines.iter().any(|l| l == "DONE"),
        "{point}: the child did not finish cleanly ({:?}):\n{}\n{stderr}",
        out.status,
        lines.join("\n"),
    );
    let mut run = Run {
        acked: BTreeMap::new(),
        error: None,
        after: None,
        aborted,
    };
    for l in &lines {
        let w: Vec<&str> = l.split(' ').collect();
        match w.as_slice() {
            ["ACK", u, m] => {
                let (u, m) = (u.parse().unwrap(), m.parse().unwrap());
                let e = run.acked.entry(u).or_insert(0);
                *e = (*e).max(m);
            }
            ["ERR", k] => run.error = Some((*k).to_string()),
            ["AFTER", k] => run.after = Some((*k).to_string()),
            _ => {}
        }
    }
    run
}

/// Each failure point in turn, then all of them at once: typed errors,
/// no panic, nothing acknowledged lost, a clean store after recovery.
#[test]
fn every_io_failure_point_in_turn() {
    let mut hit = Vec::new();
    let rounds: usize = std::env::var(ENV_ROUNDS)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(1);
    let one_round: Vec<(&str, f32, bool)> = POINTS
        .iter()
        .flat_map(|&p| [(p, 0.05, false), (p, 0.02, true)])
        .chain([("posix/*", 0.002, false), ("posix/*", 0.01, true)])
        .collect();
    let runs: Vec<(&str, f32, bool)> = std::iter::repeat_n(one_round, rounds).flatten().collect();
    let total = runs.len();
    let (mut acked_checked, mut typed) = (0usize, BTreeMap::<String, usize>::new());
    let mut points_hit = std::collections::BTreeSet::new();
    for (point, probability, at_open) in runs {
        let dir = tempfile::tempdir().unwrap();
        let run = run_child(dir.path(), point, probability, at_open);
        let point_name = point;
        let point = if at_open {
            format!("{point} from open")
        } else {
            point.to_string()
        };
        if let Some(e) = &run.error {
            assert!(
                e == "io" || e == "poisoned" || e.starts_with("storage:"),
                "{point}: an untyped failure: {e}"
            );
            let after = run.after.as_deref().unwrap_or("missing");
            assert!(
                matches!(after, "survived" | "poisoned" | "io" | "open-refused")
                    || after.starts_with("storage:"),
                "{point}: after the failure: {after}"
            );
            hit.push(format!("{point} ({e}, then {after})"));
            *typed.entry(format!("{e}, then {after}")).or_default() += 1;
            points_hit.insert(point_name);
        } else if run.aborted {
            hit.push(format!("{point} (aborted: no memory could be mapped)"));
            *typed.entry("abort (no memory to map)".into()).or_default() += 1;
            points_hit.insert(point_name);
        }
        // Recovery without injection.
        let store = Store::open(dir.path(), config())
            .unwrap_or_else(|e| panic!("{point}: reopen after the failure: {e}"));
        acked_checked += run.acked.len();
        for (&u, &m) in &run.acked {
            let got = store.mark(C, UserId(u)).unwrap().map_or(0, |x| x.up_to.0);
            assert!(
                got >= m,
                "{point}: acknowledged mark of u{u} >= {m} lost (found {got})"
            );
        }
        store
            .mark_read(C, UserId(0), MessageId(OPS + 2), Timestamp(1))
            .unwrap();
        store.close().unwrap();
        let report = readmark::verify(dir.path()).unwrap();
        assert!(report.problems.is_empty(), "{point}: {:?}", report.problems);
    }
    if rounds == 1 {
        println!(
            "libfiu: {} of {total} runs hit a failure, at {} distinct failure points:\n  {}",
            hit.len(),
            points_hit.len(),
            hit.join("\n  ")
        );
    } else {
        println!(
            "libfiu: {rounds} rounds, {total} runs, {} hit a failure, at {} distinct failure points ({:?}); outcomes {typed:?}; {acked_checked} users' acknowledged marks checked after recovery, none lost",
            hit.len(),
            points_hit.len(),
            points_hit,
        );
    }
    // A test that injects nothing proves nothing.
    assert!(points_hit.len() >= 6, "too few failure points hit: {hit:?}");
}
