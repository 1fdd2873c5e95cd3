//! `readmark events`: what real-time receipts cost and how fast they are,
//! on a real store, in real time.
//!
//! The generated world of `readmark bench` (DMs, groups of 3–50, channels
//! of 200–1,500, Zipf activity) is played at wall-clock pace: a workload
//! step every `1 / --steps-per-sec` seconds; a step either posts 1–6
//! messages or opens a conversation for one member, who then scrolls
//! through what is new at one `mark_read` per message every `--scroll-ms`
//! (at most the newest 50). One subscriber thread receives the events, as
//! an embedding server's dispatcher would. Measured per coalescing window
//! (`--windows`, each a separate run of the same stream): mark advances,
//! events, events per advance, recipients per event by conversation size,
//! and latency from the first and from the last advance an event carries
//! to its delivery (hdrhistogram, µs).

use std::cmp::Reverse;
use std::collections::{BinaryHeap, HashMap};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use hdrhistogram::Histogram;
use indicatif::{ProgressBar, ProgressStyle};
use readmark::{Config, ConversationId, Event, MessageId, Store, Timestamp, UserId};
use serde::Serialize;

use super::workload::{Step, Workload, WorldParams};
use super::EventsArgs;

/// Conversation size buckets of the fan-out table.
const BUCKETS: [(&str, u64, u64); 4] = [
    ("DM (2)", 2, 2),
    ("group 3-10", 3, 10),
    ("group 11-50", 11, 50),
    ("channel > 50", 51, u64::MAX),
];

#[derive(Debug, Serialize)]
struct Bucket {
    size: &'static str,
    events: u64,
    recipients_mean: f64,
    recipients_p99: u64,
    recipients_max: u64,
    capped: u64,
}

#[derive(Debug, Serialize)]
struct RunReport {
    window_ms: u64,
    seconds: f64,
    mark_calls: u64,
    advances: u64,
    events: u64,
    events_per_advance: f64,
    advances_per_event: f64,
    /// Σ (recipients + the reader's own devices, counted once) over events.
    pushes: u64,
    pushes_per_advance: f64,
    lagged: u64,
    /// Events delivered by the final drain (not in the latency figures).
    drained_at_end: u64,
    first_advance_to_event_us: (u64, u64, u64),
    last_advance_to_event_us: (u64, u64, u64),
    buckets: Vec<Bucket>,
}

enum Action {
    Step,
    Scroll { conv: usize, reader: u64, msg: u64 },
}

/// Actions by due time (ties in scheduling order).
#[derive(Default)]
struct Timeline {
    heap: BinaryHeap<Reverse<(Instant, u64)>>,
    actions: HashMap<u64, Action>,
    seq: u64,
}

impl Timeline {
    fn push(&mut self, at: Instant, a: Action) {
        self.seq += 1;
        self.actions.insert(self.seq, a);
        self.heap.push(Reverse((at, self.seq)));
    }

    fn pop(&mut self) -> Option<(Instant, Action)> {
        let Reverse((at, seq)) = self.heap.pop()?;
        self.actions.remove(&seq).map(|a| (at, a))
    }
}

fn histogram() -> readmark::Result<Histogram<u64>> {
    Histogram::<u64>::new(3).map_err(|_| readmark::Error::InvalidArgument("histogram"))
}

fn micros(d: Duration) -> u64 {
    u64::try_from(d.as_micros()).unwrap_or(u64::MAX)
}

fn quantiles(h: &Histogram<u64>) -> (u64, u64, u64) {
    (h.value_at_quantile(0.5), h.value_at_quantile(0.99), h.max())
}

pub(crate) fn run(args: &EventsArgs) -> readmark::Result<()> {
    let mut reports = Vec::new();
    for &w in &args.windows {
        reports.push(run_once(args, w)?);
    }
    if args.json {
        return super::print_json(&reports);
    }
    println!(
        "readmark events: {} users, seed {}, {} s per run, {} steps/s, scroll every {} ms",
        args.users, args.seed, args.seconds, args.steps_per_sec, args.scroll_ms
    );
    println!();
    println!("| window | mark_read calls | advances | events | events / advance | pushes / advance | first advance -> event p50 / p99 / max | last advance -> event p50 / p99 / max | lagged |");
    println!("|---|---|---|---|---|---|---|---|---|");
    for r in &reports {
        let ms = |us: u64| us as f64 / 1000.0;
        let (f, l) = (r.first_advance_to_event_us, r.last_advance_to_event_us);
        println!(
            "| {} ms | {} | {} | {} | {:.3} | {:.2} | {:.1} / {:.1} / {:.1} ms | {:.1} / {:.1} / {:.1} ms | {} |",
            r.window_ms,
            r.mark_calls,
            r.advances,
            r.events,
            r.events_per_advance,
            r.pushes_per_advance,
            ms(f.0),
            ms(f.1),
            ms(f.2),
            ms(l.0),
            ms(l.1),
            ms(l.2),
            r.lagged
        );
    }
    for r in &reports {
        println!();
        println!("Fan-out per event, window {} ms:", r.window_ms);
        println!();
        println!("| conversation size | events | recipients mean | p99 | max | capped |");
        println!("|---|---|---|---|---|---|");
        for b in &r.buckets {
            println!(
                "| {} | {} | {:.2} | {} | {} | {} |",
                b.size, b.events, b.recipients_mean, b.recipients_p99, b.recipients_max, b.capped
            );
        }
    }
    Ok(())
}

/// Per-bucket recipient histograms and capped counts.
struct FanOut {
    hist: Vec<Histogram<u64>>,
    capped: Vec<u64>,
}

fn run_once(args: &EventsArgs, window_ms: u64) -> readmark::Result<RunReport> {
    let dir = tempfile::tempdir()?;
    let store = Store::open(
        dir.path(),
        Config::new().event_window(Duration::from_millis(window_ms)),
    )?;
    let params = WorldParams::for_users(args.users);
    let mut world = Workload::new(args.seed, &params);
    let sizes: HashMap<u64, u64> = world
        .convs
        .iter()
        .map(|c| (c.id, c.members.len() as u64))
        .collect();
    for c in &world.convs {
        store.create_conversation(ConversationId(c.id))?;
        for &u in &c.members {
            store.add_member(ConversationId(c.id), UserId(u), Timestamp::now())?;
        }
    }

    let open_advances: Mutex<HashMap<(u64, u64), (Instant, Instant)>> = Mutex::new(HashMap::new());
    let stop = AtomicBool::new(false);
    let bar = if args.quiet {
        ProgressBar::hidden()
    } else {
        ProgressBar::new((args.seconds * 10.0) as u64)
    };
    bar.set_style(
        ProgressStyle::with_template("window {msg:>6} [{bar:40}] {elapsed}/{len} (tenths of s)")
            .unwrap_or_else(|_| ProgressStyle::default_bar()),
    );
    bar.set_message(format!("{window_ms} ms"));

    let mut fan = FanOut {
        hist: (0..BUCKETS.len())
            .map(|_| histogram())
            .collect::<readmark::Result<_>>()?,
        capped: vec![0; BUCKETS.len()],
    };
    let (mut first_h, mut last_h) = (histogram()?, histogram()?);
    let (mut events, mut pushes, mut lagged, mut drained) = (0u64, 0u64, 0u64, 0u64);
    let (mut mark_calls, mut advances) = (0u64, 0u64);
    let mut driver_error = None;
    let start = Instant::now();

    let sub = store.subscribe();
    let subscriber_result: readmark::Result<()> = std::thread::scope(|scope| {
        let subscriber = scope.spawn(|| -> readmark::Result<()> {
            let mut record = |e: &readmark::ReceiptEvent, at_end: bool| {
                events += 1;
                pushes += 1 + e.recipients.len() as u64;
                let size = sizes.get(&e.conversation.0).copied().unwrap_or(0);
                if let Some(i) = BUCKETS.iter().position(|b| size >= b.1 && size <= b.2) {
                    let _ = fan.hist[i].record(e.recipients.len() as u64);
                    fan.capped[i] += u64::from(e.capped);
                }
                let opened = open_advances
                    .lock()
                    .map(|mut m| m.remove(&(e.conversation.0, e.reader.0)))
                    .unwrap_or(None);
                if at_end {
                    drained += 1;
                } else if let Some((first, last)) = opened {
                    let _ = first_h.record(micros(first.elapsed()));
                    let _ = last_h.record(micros(last.elapsed()));
                }
            };
            while !stop.load(Ordering::Acquire) {
                match sub.recv_timeout(Duration::from_millis(20))? {
                    Some(Event::Receipt(e)) => record(&e, false),
                    Some(Event::Lagged { dropped }) => lagged += dropped,
                    Some(_) | None => {}
                }
            }
            for e in sub.drain()? {
                match e {
                    Event::Receipt(e) => record(&e, true),
                    Event::Lagged { dropped } => lagged += dropped,
                    _ => {}
                }
            }
            Ok(())
        });

        // The driver: a timeline of steps and scrolls at wall-clock pace.
        let step_every = Duration::from_secs_f64(1.0 / args.steps_per_sec.max(1) as f64);
        let scroll_every = Duration::from_millis(args.scroll_ms);
        let end = start + Duration::from_secs_f64(args.seconds);
        let mut timeline = Timeline::default();
        timeline.push(start, Action::Step);
        let mut messages: Vec<Vec<u64>> = vec![Vec::new(); world.convs.len()];
        let mut marks: HashMap<(usize, u64), u64> = HashMap::new();
        let mut next_msg = 0u64;
        while let Some((at, action)) = timeline.pop() {
            if at >= end {
                break;
            }
            let now = Instant::now();
            if at > now {
                // Pacing the workload to wall-clock time, not waiting for
                // anything to happen.
                std::thread::sleep(at - now);
            }
            bar.set_position(start.elapsed().as_millis() as u64 / 100);
            let r = (|| -> readmark::Result<()> {
                match action {
                    Action::Step => {
                        timeline.push(at + step_every, Action::Step);
                        match world.next_step() {
                            Step::Messages {
                                conv,
                                sender,
                                count,
                            } => {
                                for _ in 0..count {
                                    next_msg += 1;
                                    let c = ConversationId(world.convs[conv].id);
                                    store.record_message(
                                        c,
                                        MessageId(next_msg),
                                        UserId(sender),
                                        Timestamp::now(),
                                    )?;
                                    messages[conv].push(next_msg);
                                    marks.insert((conv, sender), next_msg);
                                }
                            }
                            Step::Read { conv, reader } => {
                                let mark = marks.get(&(conv, reader)).copied().unwrap_or(0);
                                let new: Vec<u64> = messages[conv]
                                    .iter()
                                    .copied()
                                    .filter(|&m| m > mark)
                                    .collect();
                                let skip = new.len().saturating_sub(50);
                                for (i, &msg) in new[skip..].iter().enumerate() {
                                    timeline.push(
                                        at + scroll_every * i as u32,
                                        Action::Scroll { conv, reader, msg },
                                    );
                                }
                            }
                        }
                    }
                    Action::Scroll { conv, reader, msg } => {
                        let c = world.convs[conv].id;
                        mark_calls += 1;
                        let advance = marks.get(&(conv, reader)).is_none_or(|&m| msg > m);
                        let t = Instant::now();
                        if advance {
                            marks.insert((conv, reader), msg);
                            advances += 1;
                            if let Ok(mut m) = open_advances.lock() {
                                m.entry((c, reader)).or_insert((t, t)).1 = t;
                            }
                        }
                        store.mark_read(
                            ConversationId(c),
                            UserId(reader),
                            MessageId(msg),
                            Timestamp::now(),
                        )?;
                    }
                }
                Ok(())
            })();
            if let Err(e) = r {
                driver_error = Some(e);
                break;
            }
        }
        stop.store(true, Ordering::Release);
        match subscriber.join() {
            Ok(r) => r,
            Err(_) => Err(readmark::Error::InvalidArgument(
                "subscriber thread panicked",
            )),
        }
    });
    bar.finish_and_clear();
    if let Some(e) = driver_error {
        return Err(e);
    }
    subscriber_result?;
    let seconds = start.elapsed().as_secs_f64();
    drop(sub);
    store.close()?;
    let buckets = BUCKETS
        .iter()
        .zip(&fan.hist)
        .zip(&fan.capped)
        .map(|((b, h), &capped)| Bucket {
            size: b.0,
            events: h.len(),
            recipients_mean: if h.is_empty() { 0.0 } else { h.mean() },
            recipients_p99: h.value_at_quantile(0.99),
            recipients_max: h.max(),
            capped,
        })
        .collect();
    let ratio = |a: u64, b: u64| if b == 0 { 0.0 } else { a as f64 / b as f64 };
    Ok(RunReport {
        window_ms,
        seconds,
        mark_calls,
        advances,
        events,
        events_per_advance: ratio(events, advances),
        advances_per_event: ratio(advances, events),
        pushes,
        pushes_per_advance: ratio(pushes, advances),
        lagged,
        drained_at_end: drained,
        first_advance_to_event_us: quantiles(&first_h),
        last_advance_to_event_us: quantiles(&last_h),
        buckets,
    })
}
