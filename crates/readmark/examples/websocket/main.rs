//! `cargo run --release --example websocket -- [--addr 127.0.0.1:9001] [--window-ms 250]`
//!
//! Serves the protocol documented in `server.rs` on an embedded store in a
//! temporary directory, until interrupted. Try it with any WebSocket client,
//! e.g. `websocat ws://127.0.0.1:9001` and
//! `{"op":"hello","user":1}`, `{"op":"join","conversation":1}`, ...

mod server;

use std::sync::Arc;
use std::time::Duration;

use readmark::{Config, Store};

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let mut addr = "127.0.0.1:9001".to_string();
    let mut window_ms = 250u64;
    let mut args = std::env::args().skip(1);
    while let Some(a) = args.next() {
        match a.as_str() {
            "--addr" => addr = args.next().ok_or("--addr needs a value")?,
            "--window-ms" => window_ms = args.next().ok_or("--window-ms needs a value")?.parse()?,
            other => return Err(format!("unknown argument {other}").into()),
        }
    }
    let dir = tempfile::tempdir()?;
    let store = Arc::new(Store::open(
        dir.path(),
        Config::new().event_window(Duration::from_millis(window_ms)),
    )?);
    let server = server::start(store, &addr)?;
    println!(
        "readmark WebSocket example on ws://{} (store in {}, coalescing window {window_ms} ms); Ctrl-C to stop",
        server.addr,
        dir.path().display()
    );
    loop {
        std::thread::park();
    }
}
