//! readmark-server embedded in a program of your own: the same server as
//! the binary, started and stopped from your code.
//!
//! ```text
//! READMARK_JWT_SECRET=... READMARK_SERVICE_TOKEN=... \
//!   cargo run --release --example embed
//! ```

use readmark_server::{Server, ServerConfig};

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let config = ServerConfig::new(
        std::env::var("READMARK_JWT_SECRET")?.into_bytes(),
        std::env::var("READMARK_SERVICE_TOKEN")?,
    )
    .listen("127.0.0.1:8080".parse()?)
    .store_path("readmark-data");
    let server = Server::start(config).await?;
    println!("listening on {}; Ctrl-C stops", server.addr());
    tokio::signal::ctrl_c().await?;
    server.shutdown().await?;
    Ok(())
}
