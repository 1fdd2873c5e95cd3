//! `readmark demo`: the main job for a newcomer. Builds a small chat world
//! on a real store, runs a realistic reading workload through the public
//! API, and prints what it did with sample answers.

use std::collections::HashMap;
use std::time::Instant;

use indicatif::{ProgressBar, ProgressStyle};
use rand::Rng;
use readmark::{
    Config, ConversationId, MessageId, Page, ReadTime, Store, Timeline, Timestamp, UserId,
};

use super::workload::{Kind, Step, Workload, WorldParams};
use super::DemoArgs;

/// Length of one workload step on the simulated clock, which starts at the
/// real time of the run (so per-message receipts are within retention).
const STEP_MS: u64 = 40;

/// One user in this many keeps their receipts private everywhere.
const PRIVATE_EVERY: u64 = 50;

#[derive(Default)]
struct EventTally {
    events: u64,
    advances: u64,
    pushes: u64,
    max_recipients: usize,
    private_events: u64,
    private_leaks: u64,
    lagged: u64,
    /// Users below this id with `id % PRIVATE_EVERY == 7` are private
    /// (late joiners get new ids and keep the default).
    private_below: u64,
}

impl EventTally {
    fn add(&mut self, event: readmark::Event) {
        match event {
            readmark::Event::Receipt(e) => {
                self.events += 1;
                self.advances += u64::from(e.advances);
                self.pushes += 1 + e.recipients.len() as u64;
                self.max_recipients = self.max_recipients.max(e.recipients.len());
                if e.reader.get() < self.private_below && e.reader.get() % PRIVATE_EVERY == 7 {
                    self.private_events += 1;
                    self.private_leaks += u64::from(!e.recipients.is_empty());
                }
            }
            readmark::Event::Lagged { dropped } => self.lagged += dropped,
            _ => {}
        }
    }
}

#[derive(Default)]
struct Tally {
    messages: u64,
    sessions: u64,
    mark_calls: u64,
    deletes: u64,
    flags: u64,
    leaves: u64,
    late_joins: u64,
    /// Messages naming a member, and "@everyone" ones.
    mentions: u64,
    everyone: u64,
    /// "x joined" notices (never unread).
    system: u64,
    /// Thread replies, threads begun, and reads inside threads.
    replies: u64,
    threads: u64,
    thread_mark_calls: u64,
}

pub(crate) fn run(args: &DemoArgs) -> Result<(), readmark::Error> {
    #[allow(non_snake_case)]
    let START_MS = Timestamp::now().get();
    let tmp;
    let (path, temporary) = match &args.path {
        Some(p) => (p.clone(), false),
        None => {
            tmp = tempfile::tempdir()?;
            (tmp.path().to_path_buf(), true)
        }
    };
    println!(
        "readmark demo: store at {}{}",
        path.display(),
        if temporary {
            " (temporary, removed at exit)"
        } else {
            ""
        }
    );
    let store = Store::open(&path, Config::new())?;
    let params = WorldParams::for_users(args.users.max(50));
    let mut w = Workload::new(args.seed, &params);

    let setup_started = Instant::now();
    let mut memberships = 0u64;
    for conv in &w.convs {
        let c = ConversationId(conv.id);
        store.create_conversation(c)?;
        for &u in &conv.members {
            store.add_member(c, UserId(u), Timestamp(START_MS))?;
            memberships += 1;
        }
    }
    let count_kind = |k: Kind| w.convs.iter().filter(|c| c.kind == k).count();
    let size_range = |k: Kind| {
        let sizes = w
            .convs
            .iter()
            .filter(|c| c.kind == k)
            .map(|c| c.members.len());
        (sizes.clone().min().unwrap_or(0), sizes.max().unwrap_or(0))
    };
    let (gmin, gmax) = size_range(Kind::Group);
    let (cmin, cmax) = size_range(Kind::Channel);
    println!(
        "setup: {} users; {} conversations: {} DMs, {} groups of {gmin}-{gmax} members, {} channels of {cmin}-{cmax}; {} memberships in {:.2} s",
        params.users,
        w.convs.len(),
        count_kind(Kind::Dm),
        count_kind(Kind::Group),
        count_kind(Kind::Channel),
        thousands(memberships),
        setup_started.elapsed().as_secs_f64()
    );

    // Some users keep their receipts private (Telegram's hidden read
    // times): their events reach only their own devices.
    let mut private_users = 0u64;
    for u in (7..params.users).step_by(PRIVATE_EVERY as usize) {
        store.set_receipts_private(UserId(u), readmark::PrivacyScope::Everywhere, true)?;
        private_users += 1;
    }
    // The user in the most conversations: their login badges at the end,
    // and their catch-up from a cursor taken now.
    let mut per_user: HashMap<u64, usize> = HashMap::new();
    for conv in &w.convs {
        for &u in &conv.members {
            *per_user.entry(u).or_default() += 1;
        }
    }
    let login_user = per_user
        .iter()
        .max_by_key(|(u, n)| (**n, std::cmp::Reverse(**u)))
        .map(|(&u, _)| UserId(u));
    let login_cursor = match login_user {
        Some(u) => Some(store.snapshot(u)?.cursor),
        None => None,
    };
    // The embedding server's dispatcher would run on a thread of its own;
    // the demo polls between steps.
    let events = store.subscribe();
    let mut event_tally = EventTally {
        private_below: params.users,
        ..EventTally::default()
    };

    // Per conversation: message ids in order. Per (conversation, reader):
    // how many of them the reader has scrolled past.
    let mut messages: Vec<Vec<u64>> = vec![Vec::new(); w.convs.len()];
    let mut seen: HashMap<(usize, u64), usize> = HashMap::new();
    // Threads: (conversation, root) -> reply ids in order, the roots of
    // each conversation's threads, and how far each reader has read each.
    let mut replies: HashMap<(usize, u64), Vec<u64>> = HashMap::new();
    let mut roots: Vec<Vec<u64>> = vec![Vec::new(); w.convs.len()];
    let mut thread_seen: HashMap<(usize, u64, u64), usize> = HashMap::new();
    // The newest message of any timeline: ids increase across them.
    let mut newest: Vec<Option<u64>> = vec![None; w.convs.len()];
    let mut tally = Tally::default();
    let mut next_user = params.users;
    let mut seq = 0u64;

    let bar = if args.quiet {
        ProgressBar::hidden()
    } else {
        ProgressBar::new(args.steps)
    };
    bar.set_style(
        ProgressStyle::with_template(
            "{spinner} workload [{bar:30}] {pos}/{len} steps ({per_sec}, eta {eta})",
        )
        .unwrap_or_else(|_| ProgressStyle::default_bar())
        .progress_chars("=> "),
    );
    let started = Instant::now();
    let mut mark_time = std::time::Duration::ZERO;
    for step in 0..args.steps {
        let now = START_MS + step * STEP_MS;
        match w.next_step() {
            Step::Messages {
                conv,
                sender,
                count,
            } => {
                let c = ConversationId(w.convs[conv].id);
                for k in 0..u64::from(count) {
                    seq += 1;
                    // Snowflake-like: time in the high bits, a sequence below.
                    let id = ((now + k) << 16) | (seq & 0xFFFF);
                    // One message in twenty names another member; one in
                    // two hundred outside DMs calls everyone.
                    let members = &w.convs[conv].members;
                    let mut options = readmark::MessageOptions::new();
                    if w.convs[conv].kind != Kind::Dm && w.rng.random_bool(0.005) {
                        options = options.mention_everyone();
                        tally.everyone += 1;
                    } else if !members.is_empty() && w.rng.random_bool(0.05) {
                        let named = members[w.rng.random_range(0..members.len())];
                        if named != sender {
                            options = options.mention([UserId(named)]);
                            tally.mentions += 1;
                        }
                    }
                    // Outside DMs, one message in eight is a reply: mostly
                    // in one of the last 5 threads begun there, else one
                    // begun on one of the last 20 main-timeline messages.
                    let root = if w.convs[conv].kind != Kind::Dm
                        && !messages[conv].is_empty()
                        && w.rng.random_bool(0.125)
                    {
                        let recent_threads = &roots[conv][roots[conv].len().saturating_sub(5)..];
                        if !recent_threads.is_empty() && w.rng.random_bool(0.7) {
                            Some(recent_threads[w.rng.random_range(0..recent_threads.len())])
                        } else {
                            let recent = &messages[conv][messages[conv].len().saturating_sub(20)..];
                            Some(recent[w.rng.random_range(0..recent.len())])
                        }
                    } else {
                        None
                    };
                    let timeline = match root {
                        Some(r) => Timeline::thread(c, MessageId(r)),
                        None => Timeline::main(c),
                    };
                    store.record_message_with(
                        timeline,
                        MessageId(id),
                        UserId(sender),
                        Timestamp(now + k),
                        &options,
                    )?;
                    newest[conv] = Some(id);
                    tally.messages += 1;
                    match root {
                        None => messages[conv].push(id),
                        Some(r) => {
                            let thread = replies.entry((conv, r)).or_default();
                            if thread.is_empty() {
                                roots[conv].push(r);
                                tally.threads += 1;
                            }
                            thread.push(id);
                            thread_seen.insert((conv, r, sender), thread.len());
                            tally.replies += 1;
                        }
                    }
                }
                seen.insert((conv, sender), messages[conv].len());
            }
            Step::Read { conv, reader } => {
                let c = ConversationId(w.convs[conv].id);
                let from = seen.get(&(conv, reader)).copied().unwrap_or(0);
                let to = messages[conv].len();
                if from < to {
                    tally.sessions += 1;
                }
                // One update per message scrolled past, ~250 ms apart.
                for (i, &id) in messages[conv][from..to].iter().enumerate() {
                    let t0 = Instant::now();
                    store.mark_read(
                        c,
                        UserId(reader),
                        MessageId(id),
                        Timestamp(now + 250 * i as u64),
                    )?;
                    mark_time += t0.elapsed();
                    tally.mark_calls += 1;
                }
                seen.insert((conv, reader), to);
                // The reader closes the conversation: their burst of scroll
                // updates becomes one durable write, made by the flusher.
                store.seal(c, UserId(reader));
                // One visit in three also opens a thread and reads its new
                // replies: the thread's own mark.
                if !roots[conv].is_empty() && w.rng.random_bool(0.33) {
                    let root = roots[conv][w.rng.random_range(0..roots[conv].len())];
                    let thread = Timeline::thread(c, MessageId(root));
                    let ids = &replies[&(conv, root)];
                    let from = thread_seen.get(&(conv, root, reader)).copied().unwrap_or(0);
                    for (i, &id) in ids[from..].iter().enumerate() {
                        let t0 = Instant::now();
                        store.mark_read(
                            thread,
                            UserId(reader),
                            MessageId(id),
                            Timestamp(now + 250 * i as u64),
                        )?;
                        mark_time += t0.elapsed();
                        tally.thread_mark_calls += 1;
                    }
                    thread_seen.insert((conv, root, reader), ids.len());
                    store.seal(thread, UserId(reader));
                }
                let rng = &mut w.rng;
                if rng.random_bool(0.01) {
                    store.set_unread_flag(c, UserId(reader), Timestamp(now + 1))?;
                    tally.flags += 1;
                }
            }
        }
        let rng = &mut w.rng;
        if rng.random_bool(0.005) {
            let conv = rng.random_range(0..w.convs.len());
            if let Some(&id) = messages[conv].last() {
                store.delete_message(ConversationId(w.convs[conv].id), MessageId(id))?;
                tally.deletes += 1;
            }
        }
        if rng.random_bool(0.005) {
            // Churn outside DMs: a member leaves, a new user joins late.
            let conv = rng.random_range(0..w.convs.len());
            if w.convs[conv].kind != Kind::Dm && w.convs[conv].members.len() > 2 {
                let i = rng.random_range(0..w.convs[conv].members.len());
                let c = ConversationId(w.convs[conv].id);
                let leaver = w.convs[conv].members[i];
                store.remove_member(c, UserId(leaver))?;
                seen.remove(&(conv, leaver));
                tally.leaves += 1;
                store.add_member(c, UserId(next_user), Timestamp(now))?;
                // The join notice: ordered and readable, never unread.
                seq += 1;
                let id = (now << 16) | (seq & 0xFFFF);
                if newest[conv].is_none_or(|last| id > last) {
                    store.record_message_with(
                        c,
                        MessageId(id),
                        UserId(next_user),
                        Timestamp(now),
                        &readmark::MessageOptions::new().kind(readmark::MessageKind::System),
                    )?;
                    messages[conv].push(id);
                    newest[conv] = Some(id);
                    tally.system += 1;
                }
                seen.insert((conv, next_user), messages[conv].len());
                w.convs[conv].members[i] = next_user;
                next_user += 1;
                tally.late_joins += 1;
            }
        }
        while let Some(e) = events.try_recv()? {
            event_tally.add(e);
        }
        if step % 256 == 0 {
            bar.set_position(step);
        }
    }
    for e in events.drain()? {
        event_tally.add(e);
    }
    drop(events);
    bar.finish_and_clear();
    let elapsed = started.elapsed().as_secs_f64();
    #[allow(clippy::cast_precision_loss)]
    let per_sec = |n: u64, secs: f64| if secs > 0.0 { n as f64 / secs } else { 0.0 };
    println!(
        "workload: {} steps in {elapsed:.2} s: {} messages recorded ({} replies in {} threads, {} naming a member, {} to everyone, {} join notices never counted as unread), {} reading sessions, {} mark_read calls (one per message scrolled past, {} of them in threads; {:.0} calls/s inside mark_read), {} deletes, {} marked unread, {} leaves and {} late joins",
        thousands(args.steps),
        thousands(tally.messages),
        thousands(tally.replies),
        thousands(tally.threads),
        tally.mentions,
        tally.everyone,
        tally.system,
        thousands(tally.sessions),
        thousands(tally.mark_calls + tally.thread_mark_calls),
        thousands(tally.thread_mark_calls),
        per_sec(
            tally.mark_calls + tally.thread_mark_calls,
            mark_time.as_secs_f64()
        ),
        tally.deletes,
        tally.flags,
        tally.leaves,
        tally.late_joins,
    );

    println!("sample answers:");
    for kind in [Kind::Group, Kind::Channel] {
        let busiest = (0..w.convs.len())
            .filter(|&i| w.convs[i].kind == kind)
            .max_by_key(|&i| messages[i].len());
        let Some(i) = busiest else { continue };
        let c = ConversationId(w.convs[i].id);
        // A message a few back from the newest, so some have read it.
        let Some(&m) = messages[i].iter().rev().nth(5).or(messages[i].first()) else {
            continue;
        };
        let rb = store.read_by(
            c,
            store.members(c, None, 1)?[0],
            MessageId(m),
            Page::first(5),
        )?;
        let names: Vec<String> = rb
            .readers
            .iter()
            .map(|r| match r.read_at {
                ReadTime::At(t) => {
                    format!("{} (at +{} ms)", r.user, t.get().saturating_sub(START_MS))
                }
                ReadTime::NoLaterThan(t) => {
                    format!("{} (by +{} ms)", r.user, t.get().saturating_sub(START_MS))
                }
                _ => r.user.to_string(),
            })
            .collect();
        println!(
            "  read by, busiest {:?} {c} ({} members, {} messages), message m{m}: {} readers ({:?}); first: {}{}",
            kind,
            store.member_count(c)?,
            messages[i].len(),
            rb.count,
            rb.source,
            names.join(", "),
            if rb.next.is_some() { ", ..." } else { "" }
        );
    }
    // The thread with the most replies: who read its newest reply, and a
    // member's unread threads there next to their main-timeline count.
    if let Some((&(i, root), ids)) = replies.iter().max_by_key(|(k, v)| (v.len(), **k)) {
        let c = ConversationId(w.convs[i].id);
        let thread = Timeline::thread(c, MessageId(root));
        let newest_reply = *ids.last().unwrap_or(&root);
        let viewer = store.members(c, None, 1)?[0];
        let rb = store.read_by(thread, viewer, MessageId(newest_reply), Page::first(5))?;
        let t0 = Instant::now();
        let listed = store.unread_threads(c, viewer)?;
        let total = store.unread_total(c, viewer)?;
        let main = store.unread_count(c, viewer)?;
        println!(
            "  busiest thread, {c} root m{root} ({} replies): newest reply m{newest_reply} read by {} ({:?}); for {viewer}: {} of the {} threads there unread, {} unread in the main timeline, {} in all ({:.2} ms)",
            ids.len(),
            rb.count,
            rb.source,
            listed.len(),
            roots[i].len(),
            main.count,
            total.count,
            t0.elapsed().as_secs_f64() * 1e3
        );
    }
    if let Some(UserId(user)) = login_user {
        let t0 = Instant::now();
        let counts = store.unread_counts(UserId(user))?;
        let took = t0.elapsed();
        let unread: Vec<String> = counts
            .iter()
            .filter(|(_, u)| u.count > 0 || u.marked_unread)
            .take(8)
            .map(|(c, u)| {
                let at = if u.mentions > 0 {
                    format!("@{}", u.mentions)
                } else {
                    String::new()
                };
                format!(
                    "{c}={}{at}{}",
                    u.count,
                    if u.marked_unread { "*" } else { "" }
                )
            })
            .collect();
        println!(
            "  unread counts at login for u{user}: {} conversations computed in {:.2} ms; with unread: {} (@n = unread mentions, * = marked unread)",
            counts.len(),
            took.as_secs_f64() * 1e3,
            if unread.is_empty() { "none".to_string() } else { unread.join(" ") }
        );
    }
    store.flush()?;
    #[allow(clippy::cast_precision_loss)]
    let per_event = event_tally.advances as f64 / event_tally.events.max(1) as f64;
    println!(
        "receipt events: {} mark advances became {} events ({per_event:.1} advances per event, window {} ms of real time; the demo runs faster than real time, `readmark events` measures at wall-clock pace); {} pushes (reader's devices + recipients), largest fan-out {}; {} users private: {} of their events, {} reached anyone else; {} advances not queued (lagged)",
        thousands(event_tally.advances),
        thousands(event_tally.events),
        Config::new().get_event_window().as_millis(),
        thousands(event_tally.pushes),
        event_tally.max_recipients,
        private_users,
        thousands(event_tally.private_events),
        event_tally.private_leaks,
        event_tally.lagged,
    );
    if let (Some(user), Some(mut cursor)) = (login_user, login_cursor) {
        let t0 = Instant::now();
        let (mut states, mut pages) = (0usize, 0u64);
        loop {
            match store.changes_since(user, cursor, 100)? {
                readmark::CatchUp::Changes(page) => {
                    states += page.states.len();
                    pages += 1;
                    cursor = page.next;
                    if !page.more {
                        break;
                    }
                }
                readmark::CatchUp::SnapshotRequired => {
                    println!("  catch-up for {user}: snapshot required");
                    break;
                }
            }
        }
        println!(
            "catch-up for {user} (offline since setup): {states} changed read states in {pages} pages of at most 100, {:.2} ms",
            t0.elapsed().as_secs_f64() * 1e3
        );
    }
    let stats = store.stats();
    #[allow(clippy::cast_precision_loss)]
    let reduction = stats.mark_updates as f64 / stats.keys_written.max(1) as f64;
    println!(
        "write combining: {} mark updates became {} RocksDB key writes in {} batches ({reduction:.1}x fewer writes; {} updates combined away); journal {} bytes, {} fsyncs; {} malformed merge operands",
        thousands(stats.mark_updates),
        thousands(stats.keys_written),
        thousands(stats.durable_batches),
        thousands(stats.combined_away),
        thousands(stats.journal_bytes),
        stats.fsyncs,
        stats.malformed_operands
    );
    println!(
        "per-message receipts (conversations of at most {} members): {} read-time runs (one per flushed advance: in-order reads need no bit per message), {} bitset operands (messages opened out of order); nothing per message in larger ones; {} stale or duplicate updates cost nothing",
        Config::new().get_receipt_threshold(),
        thousands(stats.read_time_records),
        thousands(stats.receipt_operands),
        thousands(stats.no_ops)
    );
    store.close()?;
    Ok(())
}

fn thousands(n: u64) -> String {
    let s = n.to_string();
    let mut out = String::with_capacity(s.len() + s.len() / 3);
    for (i, ch) in s.chars().enumerate() {
        if i > 0 && (s.len() - i).is_multiple_of(3) {
            out.push(',');
        }
        out.push(ch);
    }
    out
}
