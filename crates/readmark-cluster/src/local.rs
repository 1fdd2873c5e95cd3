//! A cluster on one machine, for tests, benchmarks and trying readmark
//! out: NATS servers (Debian's `nats-server`) routed into one JetStream
//! cluster, and `readmark-node` processes, all on loopback, each logging
//! to a file of its own. Every process is SIGKILLed when its handle drops.

use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use crate::error::{Error, Result};

/// A child process, killed (SIGKILL) when dropped.
pub struct Process {
    child: Child,
    name: String,
}

impl Process {
    /// Its name (`nats0`, `node1`, ...).
    pub fn name(&self) -> &str {
        &self.name
    }

    /// Kills it with SIGKILL and waits for it: no shutdown, as a crash.
    pub fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Drop for Process {
    fn drop(&mut self) {
        self.kill();
    }
}

fn free_port() -> Result<u16> {
    Ok(TcpListener::bind("127.0.0.1:0")?.local_addr()?.port())
}

fn log_file(dir: &Path, name: &str) -> Result<std::fs::File> {
    Ok(std::fs::File::create(dir.join(format!("{name}.log")))?)
}

/// `servers` NATS servers with JetStream, routed into one cluster, their
/// stores and logs under `dir`. Returns them with their client URLs.
///
/// # Errors
///
/// [`Error::Config`] if `nats-server` is not installed
/// (`scripts/setup.sh` installs it); [`Error::Io`] if a process or file
/// cannot be made.
pub fn start_nats(dir: &Path, servers: usize) -> Result<(Vec<Process>, Vec<String>)> {
    if Command::new("nats-server")
        .arg("--version")
        .output()
        .is_err()
    {
        return Err(Error::Config(
            "nats-server not found: run scripts/setup.sh (Debian's nats-server 2.9)".into(),
        ));
    }
    let client_ports = (0..servers)
        .map(|_| free_port())
        .collect::<Result<Vec<_>>>()?;
    let route_ports = (0..servers)
        .map(|_| free_port())
        .collect::<Result<Vec<_>>>()?;
    let routes: Vec<String> = route_ports
        .iter()
        .map(|p| format!("nats-route://127.0.0.1:{p}"))
        .collect();
    let mut procs = Vec::new();
    for i in 0..servers {
        let conf = dir.join(format!("nats{i}.conf"));
        let cluster = if servers > 1 {
            format!(
                "cluster {{ name: readmark, listen: 127.0.0.1:{}, routes: [{}] }}\n",
                route_ports[i],
                routes.join(", ")
            )
        } else {
            String::new()
        };
        std::fs::write(
            &conf,
            format!(
                "server_name: n{i}\nlisten: 127.0.0.1:{}\n\
                 jetstream {{ store_dir: \"{}\", max_memory_store: 64MB, max_file_store: 4GB }}\n{cluster}",
                client_ports[i],
                dir.join(format!("js{i}")).display(),
            ),
        )?;
        let child = Command::new("nats-server")
            .arg("-c")
            .arg(&conf)
            .stdout(Stdio::null())
            .stderr(log_file(dir, &format!("nats{i}"))?)
            .spawn()?;
        procs.push(Process {
            child,
            name: format!("nats{i}"),
        });
    }
    let urls = client_ports
        .iter()
        .map(|p| format!("nats://127.0.0.1:{p}"))
        .collect();
    Ok((procs, urls))
}

/// How to start a node with [`start_node`].
#[derive(Clone, Debug)]
pub struct NodeArgs {
    /// The `readmark-node` binary.
    pub binary: PathBuf,
    /// Partitions of the cluster.
    pub partitions: u32,
    /// JetStream replicas.
    pub replicas: usize,
    /// Lease lifetime.
    pub lease_ttl: Duration,
    /// Checkpoint interval.
    pub checkpoint_every: Duration,
}

/// Starts `readmark-node` as `id`, its data in `dir/<id>` and its log in
/// `dir/<id>.log`, reaching NATS at `urls` (the first one first).
///
/// # Errors
///
/// [`Error::Io`] if the process cannot be started.
pub fn start_node(dir: &Path, id: &str, urls: &[String], args: &NodeArgs) -> Result<Process> {
    let child = Command::new(&args.binary)
        .args(["--node-id", id, "--nats", &urls.join(",")])
        .arg("--data")
        .arg(dir.join(id))
        .args(["--partitions", &args.partitions.to_string()])
        .args(["--replicas", &args.replicas.to_string()])
        .args(["--lease-ttl-ms", &args.lease_ttl.as_millis().to_string()])
        .args([
            "--checkpoint-every-ms",
            &args.checkpoint_every.as_millis().to_string(),
        ])
        .env("RUST_LOG", "info")
        .stdout(Stdio::null())
        .stderr(log_file(dir, id)?)
        .spawn()?;
    Ok(Process {
        child,
        name: id.to_string(),
    })
}

/// `urls` starting at the `first`-th: each client or node starts on its
/// own server and falls back to the others.
pub fn rotated(urls: &[String], first: usize) -> Vec<String> {
    (0..urls.len())
        .map(|i| urls[(first + i) % urls.len()].clone())
        .collect()
}

/// A temporary directory for a loopback cluster's stores and logs, whose
/// place is printed; removed when dropped unless `READMARK_KEEP_TEST_DIR`
/// is set, which keeps it to read the logs.
pub struct LogDir {
    path: PathBuf,
    _removed_on_drop: Option<tempfile::TempDir>,
}

impl LogDir {
    /// Makes one.
    ///
    /// # Errors
    ///
    /// [`Error::Io`] if it cannot be made.
    pub fn new() -> Result<LogDir> {
        let tmp = tempfile::tempdir()?;
        let (path, guard) = if std::env::var_os("READMARK_KEEP_TEST_DIR").is_some() {
            (tmp.keep(), None)
        } else {
            (tmp.path().to_path_buf(), Some(tmp))
        };
        eprintln!("logs in {}", path.display());
        Ok(LogDir {
            path,
            _removed_on_drop: guard,
        })
    }

    /// Where it is.
    pub fn path(&self) -> &Path {
        &self.path
    }
}
