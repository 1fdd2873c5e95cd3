//! `readmark server-load`: readmark-server as a child process (`readmark
//! serve` on loopback, a temporary store) driven by WebSocket clients from
//! this process. Three measurements, each bounded in count and time:
//!
//! 1. **idle**: N authenticated connections that only answer pings: the
//!    server's resident memory per connection and its CPU while idle;
//! 2. **reads**: 1,000 clients in groups of 10 reading in a closed loop:
//!    reads per second end to end (request sent to `ok` received), with
//!    every receipt pushed to the other members on the same sockets;
//! 3. **latency**: pairs of members, one reading five times a second, the
//!    other's socket timed from the read's send to the receipt covering
//!    it, at a coalescing window of 0 and at the default (1 s).

use std::collections::VecDeque;
use std::io::{BufRead, BufReader, Read, Write};
use std::net::SocketAddr;
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use futures_util::{SinkExt, StreamExt};
use hdrhistogram::Histogram;
use readmark::{Error, UserId};
use readmark_server::Tokens;
use serde::Serialize;
use serde_json::{json, Value};
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::Message;

const SECRET: &str = "server-load-secret-of-at-least-32-bytes";
const SERVICE: &str = "server-load-service-credential";

/// Options of `readmark server-load`.
#[derive(clap::Args, Debug, Clone)]
pub(crate) struct ServerLoadArgs {
    /// Idle connections to open.
    #[arg(long, default_value_t = 10_000)]
    pub(crate) idle: usize,
    /// Seconds to watch the idle server (the server pings every 30 s).
    #[arg(long, default_value_t = 40.0)]
    pub(crate) idle_seconds: f64,
    /// Clients of the read throughput run (groups of 10).
    #[arg(long, default_value_t = 1_000)]
    pub(crate) clients: usize,
    /// Seconds of the read throughput run.
    #[arg(long, default_value_t = 10.0)]
    pub(crate) read_seconds: f64,
    /// Member pairs of the latency runs.
    #[arg(long, default_value_t = 200)]
    pub(crate) pairs: usize,
    /// Seconds of each latency run.
    #[arg(long, default_value_t = 10.0)]
    pub(crate) latency_seconds: f64,
    /// Print JSON instead of text.
    #[arg(long)]
    pub(crate) json: bool,
}

#[derive(Serialize, Default)]
struct Report {
    idle_connections: usize,
    server_rss_mib_before: f64,
    server_rss_mib_connected: f64,
    server_kib_per_connection: f64,
    idle_seconds: f64,
    server_idle_cpu_percent_of_a_core: f64,
    client_idle_cpu_percent_of_a_core: f64,
    read_clients: usize,
    reads_per_second: f64,
    reads: u64,
    read_advances: u64,
    read_pushes_received: u64,
    read_server_cpu_percent: f64,
    latency: Vec<LatencyRow>,
}

#[derive(Serialize)]
struct LatencyRow {
    window_ms: u64,
    reads: u64,
    p50_ms: f64,
    p99_ms: f64,
    max_ms: f64,
}

fn bad(e: impl std::fmt::Display) -> Error {
    Error::Io(std::io::Error::other(e.to_string()))
}

/// The server child: started, asked its address, stopped with SIGTERM.
struct ServerChild {
    child: Child,
    addr: SocketAddr,
    /// Kept open: the server prints a line when it stops.
    _stdout: BufReader<std::process::ChildStdout>,
    _dir: tempfile::TempDir,
}

impl ServerChild {
    fn start(window_ms: u64) -> readmark::Result<Self> {
        let dir = tempfile::tempdir()?;
        let mut child = Command::new(std::env::current_exe()?)
            .args([
                "serve",
                "--listen",
                "127.0.0.1:0",
                "--window-ms",
                &window_ms.to_string(),
                "--ops-per-second",
                "1000000",
                "--max-connections",
                "50000",
            ])
            .arg("--store")
            .arg(dir.path().join("store"))
            .env("READMARK_JWT_SECRET", SECRET)
            .env("READMARK_SERVICE_TOKEN", SERVICE)
            .env("RUST_LOG", "warn")
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()?;
        let out = child.stdout.take().ok_or_else(|| bad("no stdout"))?;
        let mut line = String::new();
        let mut out = BufReader::new(out);
        out.read_line(&mut line)?;
        let addr = line
            .split_whitespace()
            .nth(2)
            .and_then(|a| a.parse().ok())
            .ok_or_else(|| bad(format!("server said {line:?}")))?;
        Ok(Self {
            child,
            addr,
            _stdout: out,
            _dir: dir,
        })
    }

    fn pid(&self) -> u32 {
        self.child.id()
    }

    fn stop(mut self) -> readmark::Result<()> {
        // SAFETY: kill(2) on our own child's pid.
        unsafe {
            libc::kill(i32::try_from(self.child.id()).unwrap_or(0), libc::SIGTERM);
        }
        let status = self.child.wait()?;
        if status.success() {
            Ok(())
        } else {
            Err(bad(format!("server exited with {status}")))
        }
    }
}

/// Resident MiB and CPU seconds (user + system) of a process.
fn proc_usage(pid: u32) -> (f64, f64) {
    let rss = super::measure::rss_mib(&pid.to_string());
    let cpu = std::fs::read_to_string(format!("/proc/{pid}/stat"))
        .ok()
        .and_then(|s| {
            // Fields after the command's closing parenthesis.
            let rest = s.rsplit_once(')')?.1;
            let f: Vec<&str> = rest.split_whitespace().collect();
            let ticks = f.get(11)?.parse::<f64>().ok()? + f.get(12)?.parse::<f64>().ok()?;
            // SAFETY: sysconf only reads a system constant.
            let hz = unsafe { libc::sysconf(libc::_SC_CLK_TCK) } as f64;
            Some(ticks / hz.max(1.0))
        })
        .unwrap_or(0.0);
    (rss, cpu)
}

/// A keep-alive HTTP/1.1 connection to the backend API.
struct Backend {
    s: std::net::TcpStream,
}

impl Backend {
    fn connect(addr: SocketAddr) -> readmark::Result<Self> {
        let s = std::net::TcpStream::connect(addr)?;
        s.set_nodelay(true)?;
        Ok(Self { s })
    }

    fn call(&mut self, method: &str, path: &str, body: Option<&Value>) -> readmark::Result<u16> {
        let body = body.map(Value::to_string).unwrap_or_default();
        write!(
            self.s,
            "{method} {path} HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {SERVICE}\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}",
            body.len()
        )?;
        let mut head = Vec::new();
        let mut b = [0u8; 1];
        while !head.ends_with(b"\r\n\r\n") {
            self.s.read_exact(&mut b)?;
            head.push(b[0]);
        }
        let head = String::from_utf8_lossy(&head);
        let status = head
            .split(' ')
            .nth(1)
            .and_then(|x| x.parse().ok())
            .unwrap_or(0);
        let len = head
            .lines()
            .find_map(|l| {
                l.to_ascii_lowercase()
                    .strip_prefix("content-length:")
                    .map(|v| v.trim().parse::<usize>().unwrap_or(0))
            })
            .unwrap_or(0);
        let mut rest = vec![0u8; len];
        self.s.read_exact(&mut rest)?;
        if !(200..300).contains(&status) {
            return Err(bad(format!("{method} {path}: {status}")));
        }
        Ok(status)
    }

    /// Conversation `c` with `members`, and messages `1..=messages` sent by
    /// the first member.
    fn conversation(&mut self, c: u64, members: &[u64], messages: u64) -> readmark::Result<()> {
        self.call("PUT", &format!("/v1/conversations/{c}"), None)?;
        for u in members {
            self.call("PUT", &format!("/v1/conversations/{c}/members/{u}"), None)?;
        }
        for m in 1..=messages {
            self.call(
                "POST",
                &format!("/v1/conversations/{c}/messages"),
                Some(&json!({"message": m, "sender": members[0]})),
            )?;
        }
        Ok(())
    }
}

type Ws =
    tokio_tungstenite::WebSocketStream<tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>>;

async fn connect(addr: SocketAddr, tokens: &Tokens, user: u64) -> readmark::Result<Ws> {
    let exp = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap_or_default()
        .as_secs()
        + 3600;
    let mut req = format!("ws://{addr}/v1/ws")
        .into_client_request()
        .map_err(bad)?;
    let token = tokens.issue(UserId(user), exp);
    req.headers_mut().insert(
        "Authorization",
        format!("Bearer {token}").parse().map_err(bad)?,
    );
    let (ws, _) = tokio_tungstenite::connect_async(req).await.map_err(bad)?;
    Ok(ws)
}

pub(crate) fn run(args: &ServerLoadArgs) -> readmark::Result<()> {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    let mut report = Report::default();
    rt.block_on(idle(args, &mut report))?;
    rt.block_on(reads(args, &mut report))?;
    for window in [0, 1000] {
        let row = rt.block_on(latency(args, window))?;
        report.latency.push(row);
    }
    if args.json {
        super::print_json(&report)?;
    } else {
        print_report(&report);
    }
    Ok(())
}

async fn idle(args: &ServerLoadArgs, r: &mut Report) -> readmark::Result<()> {
    let server = ServerChild::start(1000)?;
    let tokens = Tokens::new(SECRET.as_bytes());
    let (rss0, _) = proc_usage(server.pid());
    let bar = indicatif::ProgressBar::new(args.idle as u64);
    bar.set_message("idle connections");
    let stop = Arc::new(AtomicBool::new(false));
    let mut tasks = Vec::with_capacity(args.idle);
    let mut pending = Vec::new();
    for i in 0..args.idle {
        // Users of up to 8 connections each (devices), well within limits.
        let user = 1 + i as u64 / 8;
        let (addr, tokens) = (server.addr, tokens.clone());
        pending.push(tokio::spawn(
            async move { connect(addr, &tokens, user).await },
        ));
        if pending.len() == 100 || i + 1 == args.idle {
            for p in pending.drain(..) {
                let mut ws = p.await.map_err(bad)??;
                let stop = stop.clone();
                // Polling the socket answers the server's pings.
                tasks.push(tokio::spawn(async move {
                    while !stop.load(Ordering::Relaxed) {
                        match ws.next().await {
                            Some(Ok(_)) => {}
                            _ => break,
                        }
                    }
                    ws
                }));
                bar.inc(1);
            }
        }
    }
    bar.finish_and_clear();
    // Let the connects' work settle before measuring.
    tokio::time::sleep(Duration::from_secs(2)).await;
    let (rss1, cpu1) = proc_usage(server.pid());
    let (_, me1) = proc_usage(std::process::id());
    let t = Instant::now();
    tokio::time::sleep(Duration::from_secs_f64(args.idle_seconds)).await;
    let secs = t.elapsed().as_secs_f64();
    let (_, cpu2) = proc_usage(server.pid());
    let (_, me2) = proc_usage(std::process::id());
    let open = tasks.iter().filter(|t| !t.is_finished()).count();
    if open != args.idle {
        return Err(bad(format!(
            "{} of {} idle connections closed",
            args.idle - open,
            args.idle
        )));
    }
    #[allow(clippy::cast_precision_loss)]
    {
        r.idle_connections = args.idle;
        r.server_rss_mib_before = rss0;
        r.server_rss_mib_connected = rss1;
        r.server_kib_per_connection = (rss1 - rss0) * 1024.0 / args.idle as f64;
    }
    r.idle_seconds = secs;
    r.server_idle_cpu_percent_of_a_core = (cpu2 - cpu1) / secs * 100.0;
    r.client_idle_cpu_percent_of_a_core = (me2 - me1) / secs * 100.0;
    stop.store(true, Ordering::Relaxed);
    for t in tasks {
        t.abort();
    }
    server.stop()
}

async fn reads(args: &ServerLoadArgs, r: &mut Report) -> readmark::Result<()> {
    const GROUP: usize = 10;
    const MESSAGES: u64 = 200;
    let server = ServerChild::start(1000)?;
    let tokens = Tokens::new(SECRET.as_bytes());
    let groups = args.clients.div_ceil(GROUP);
    {
        let addr = server.addr;
        tokio::task::spawn_blocking(move || -> readmark::Result<()> {
            let mut b = Backend::connect(addr)?;
            for g in 0..groups as u64 {
                let members: Vec<u64> = (0..GROUP as u64)
                    .map(|i| 1 + g * GROUP as u64 + i)
                    .collect();
                b.conversation(1 + g, &members, MESSAGES)?;
            }
            Ok(())
        })
        .await
        .map_err(bad)??;
    }
    let mut clients = Vec::with_capacity(args.clients);
    for i in 0..args.clients {
        clients.push(connect(server.addr, &tokens, 1 + i as u64).await?);
    }
    let (_, cpu1) = proc_usage(server.pid());
    let done = Arc::new(AtomicU64::new(0));
    let advances = Arc::new(AtomicU64::new(0));
    let pushes = Arc::new(AtomicU64::new(0));
    let deadline = Instant::now() + Duration::from_secs_f64(args.read_seconds);
    let started = Instant::now();
    let mut tasks = Vec::new();
    for (i, mut ws) in clients.into_iter().enumerate() {
        let (done, pushes, advances) = (done.clone(), pushes.clone(), advances.clone());
        let c = 1 + (i / GROUP) as u64;
        tasks.push(tokio::spawn(async move {
            let (mut m, mut pass) = (0u64, 0u64);
            while Instant::now() < deadline {
                // Up to the newest, then from the start of a new pass: the
                // first pass advances, later ones repeat (no-ops, still
                // round trips).
                if m == MESSAGES {
                    pass += 1;
                }
                m = m % MESSAGES + 1;
                if pass == 0 {
                    advances.fetch_add(1, Ordering::Relaxed);
                }
                let req = json!({"op": "read", "conversation": c, "up_to": m}).to_string();
                if ws.send(Message::text(req)).await.is_err() {
                    return Err(bad("send failed"));
                }
                loop {
                    match ws.next().await {
                        Some(Ok(Message::Text(t))) => {
                            let v: Value = serde_json::from_str(t.as_str()).map_err(bad)?;
                            if v["type"] == "ok" {
                                done.fetch_add(1, Ordering::Relaxed);
                                break;
                            } else if v["type"] == "error" {
                                return Err(bad(format!("read answered {v}")));
                            }
                            pushes.fetch_add(1, Ordering::Relaxed);
                        }
                        Some(Ok(_)) => {}
                        _ => return Err(bad("connection lost")),
                    }
                }
            }
            Ok(())
        }));
    }
    for t in tasks {
        t.await.map_err(bad)??;
    }
    let secs = started.elapsed().as_secs_f64();
    let (_, cpu2) = proc_usage(server.pid());
    #[allow(clippy::cast_precision_loss)]
    {
        r.read_clients = args.clients;
        r.reads_per_second = done.load(Ordering::Relaxed) as f64 / secs;
        r.read_advances = advances.load(Ordering::Relaxed);
        r.reads = done.load(Ordering::Relaxed);
    }
    r.read_pushes_received = pushes.load(Ordering::Relaxed);
    r.read_server_cpu_percent = (cpu2 - cpu1) / secs * 100.0;
    server.stop()
}

async fn latency(args: &ServerLoadArgs, window_ms: u64) -> readmark::Result<LatencyRow> {
    const MESSAGES: u64 = 1000;
    let server = ServerChild::start(window_ms)?;
    let tokens = Tokens::new(SECRET.as_bytes());
    let pairs = args.pairs as u64;
    let messages = MESSAGES.min((args.latency_seconds * 5.0) as u64 + 5);
    {
        let addr = server.addr;
        tokio::task::spawn_blocking(move || -> readmark::Result<()> {
            let mut b = Backend::connect(addr)?;
            for p in 0..pairs {
                // The peer sends, the reader reads: its reads advance.
                b.conversation(1 + p, &[2 + 2 * p, 1 + 2 * p], messages)?;
            }
            Ok(())
        })
        .await
        .map_err(bad)??;
    }
    let hist = Arc::new(std::sync::Mutex::new(
        Histogram::<u64>::new_with_bounds(1, 60_000_000, 3).map_err(bad)?,
    ));
    let deadline = Instant::now() + Duration::from_secs_f64(args.latency_seconds);
    let mut tasks = Vec::new();
    for p in 0..pairs {
        let mut reader = connect(server.addr, &tokens, 1 + 2 * p).await?;
        let mut peer = connect(server.addr, &tokens, 2 + 2 * p).await?;
        let sent: Arc<std::sync::Mutex<VecDeque<(u64, Instant)>>> = Arc::default();
        let (sent2, hist) = (sent.clone(), hist.clone());
        let c = 1 + p;
        tasks.push(tokio::spawn(async move {
            // The peer: every receipt settles the reads it covers.
            let watch = tokio::spawn(async move {
                while let Some(Ok(msg)) = peer.next().await {
                    let Message::Text(t) = msg else { continue };
                    let Ok(v) = serde_json::from_str::<Value>(t.as_str()) else {
                        continue;
                    };
                    if v["type"] != "receipt" {
                        continue;
                    }
                    let up_to = v["up_to"].as_u64().unwrap_or(0);
                    let now = Instant::now();
                    let mut s = sent2
                        .lock()
                        .unwrap_or_else(std::sync::PoisonError::into_inner);
                    while s.front().is_some_and(|(m, _)| *m <= up_to) {
                        if let Some((_, at)) = s.pop_front() {
                            let us = u64::try_from(now.duration_since(at).as_micros())
                                .unwrap_or(u64::MAX);
                            let _ = hist
                                .lock()
                                .unwrap_or_else(std::sync::PoisonError::into_inner)
                                .record(us.max(1));
                        }
                    }
                }
            });
            // Spread the pairs' reads over the 200 ms period.
            tokio::time::sleep(Duration::from_millis(p * 200 / pairs.max(1))).await;
            let mut tick = tokio::time::interval(Duration::from_millis(200));
            let mut m = 0;
            while Instant::now() < deadline && m < messages {
                tick.tick().await;
                m += 1;
                sent.lock()
                    .unwrap_or_else(std::sync::PoisonError::into_inner)
                    .push_back((m, Instant::now()));
                let req = json!({"op": "read", "conversation": c, "up_to": m}).to_string();
                if reader.send(Message::text(req)).await.is_err() {
                    break;
                }
                // Answers and the reader's own receipts: drained, unused.
                while let Ok(Some(_)) =
                    tokio::time::timeout(Duration::from_millis(1), reader.next()).await
                {
                }
            }
            // Let the last window's receipts arrive, then stop watching.
            tokio::time::sleep(Duration::from_millis(window_ms + 500)).await;
            watch.abort();
        }));
    }
    for t in tasks {
        t.await.map_err(bad)?;
    }
    server.stop()?;
    let h = hist
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner);
    #[allow(clippy::cast_precision_loss)]
    let ms = |v: u64| v as f64 / 1e3;
    Ok(LatencyRow {
        window_ms,
        reads: h.len(),
        p50_ms: ms(h.value_at_quantile(0.5)),
        p99_ms: ms(h.value_at_quantile(0.99)),
        max_ms: ms(h.max()),
    })
}

fn print_report(r: &Report) {
    println!("server-load: readmark serve on loopback, a fresh temporary store per run");
    println!(
        "idle: {} connections; server RSS {:.1} -> {:.1} MiB ({:.1} KiB per connection); over {:.0} s idle the server used {:.2} % of a core (clients {:.2} %)",
        r.idle_connections,
        r.server_rss_mib_before,
        r.server_rss_mib_connected,
        r.server_kib_per_connection,
        r.idle_seconds,
        r.server_idle_cpu_percent_of_a_core,
        r.client_idle_cpu_percent_of_a_core
    );
    println!(
        "reads: {} clients in groups of 10, closed loop: {:.0} reads/s end to end ({} reads, {} of them advances, the rest repeats), {} receipts pushed to them, server CPU {:.0} % of a core",
        r.read_clients,
        r.reads_per_second,
        r.reads,
        r.read_advances,
        r.read_pushes_received,
        r.read_server_cpu_percent
    );
    for l in &r.latency {
        println!(
            "latency, window {} ms: read -> other member's socket over {} reads: p50 {:.2} ms, p99 {:.2} ms, max {:.2} ms",
            l.window_ms, l.reads, l.p50_ms, l.p99_ms, l.max_ms
        );
    }
}
