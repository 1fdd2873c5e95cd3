//! Partition checkpoints in JetStream's object store: a RocksDB checkpoint
//! of the partition's store, packed as a tar file, stored under
//! `p<partition>` with the log position it covers as its description. A
//! new owner downloads it and replays the log after that position.

use std::path::{Path, PathBuf};

use async_nats::jetstream::object_store::{ObjectMetadata, ObjectStore};
use readmark::Store;

use crate::error::{Result, blocking, nats};

/// The object name of partition `p`'s checkpoint.
pub(crate) fn object_name(p: u32) -> String {
    format!("p{p}")
}

/// The scratch names of partition `p`'s checkpoint at `position`.
fn scratch_of(scratch: &Path, p: u32, position: u64) -> (PathBuf, PathBuf) {
    (
        scratch.join(format!("p{p}.checkpoint.{position}")),
        scratch.join(format!("p{p}.checkpoint.{position}.tar")),
    )
}

/// Takes a RocksDB checkpoint of `store` at `position` under `scratch`:
/// a flush with the position, then hard links, so it is quick and the
/// applier goes on as soon as it returns (the store is not needed to pack
/// and upload it, [`send`]). `None` if the store could not record the
/// position (an update still buffered): nothing was taken.
pub(crate) async fn take(
    store: &std::sync::Arc<Store>,
    position: u64,
    scratch: &Path,
    p: u32,
) -> Result<Option<PathBuf>> {
    let (dir, _) = scratch_of(scratch, p, position);
    let (s, d) = (store.clone(), dir.clone());
    blocking(move || {
        remove_if_there(&d)?;
        if s.checkpoint_at(position, &d)? {
            Ok(Some(d))
        } else {
            remove_if_there(&d)?;
            Ok(None)
        }
    })
    .await
}

/// Packs the checkpoint `take` made at `position` into a tar file,
/// uploads it as partition `p`'s, and removes both; returns the position.
/// Runs beside the applier: a large store takes a while to pack and send.
pub(crate) async fn send(
    dir: PathBuf,
    position: u64,
    scratch: PathBuf,
    bucket: ObjectStore,
    p: u32,
) -> Result<u64> {
    let (_, tar_path) = scratch_of(&scratch, p, position);
    let t = tar_path.clone();
    blocking(move || {
        let file = std::fs::File::create(&t)?;
        let mut tar = tar::Builder::new(file);
        tar.append_dir_all(".", &dir)?;
        tar.into_inner()?.sync_all()?;
        remove_if_there(&dir)?;
        Ok(())
    })
    .await?;
    let mut file = tokio::fs::File::open(&tar_path).await?;
    let meta = ObjectMetadata {
        name: object_name(p),
        description: Some(position.to_string()),
        ..ObjectMetadata::default()
    };
    bucket.put(meta, &mut file).await.map_err(nats)?;
    tokio::fs::remove_file(&tar_path).await?;
    Ok(position)
}

/// Removes what an interrupted [`take`] or [`send`] of partition `p` left
/// under `scratch`.
pub(crate) async fn clean(scratch: &Path, p: u32) -> Result<()> {
    let (scratch, prefix) = (scratch.to_path_buf(), format!("p{p}.checkpoint."));
    blocking(move || {
        let Ok(entries) = std::fs::read_dir(&scratch) else {
            return Ok(());
        };
        for e in entries.flatten() {
            if e.file_name().to_string_lossy().starts_with(&prefix) {
                let path = e.path();
                if path.is_dir() {
                    remove_if_there(&path)?;
                } else {
                    std::fs::remove_file(&path)?;
                }
            }
        }
        Ok(())
    })
    .await
}

/// The position of partition `p`'s checkpoint in `bucket`, if there is
/// one.
pub(crate) async fn position(bucket: &ObjectStore, p: u32) -> Result<Option<u64>> {
    match bucket.info(object_name(p)).await {
        Ok(info) if !info.deleted => Ok(info.description.and_then(|d| d.parse().ok())),
        Ok(_) => Ok(None),
        Err(e) if e.kind() == async_nats::jetstream::object_store::InfoErrorKind::NotFound => {
            Ok(None)
        }
        Err(e) => Err(nats(e)),
    }
}

/// Downloads partition `p`'s checkpoint and unpacks it into `target`
/// (replacing what is there), through a scratch directory beside it so a
/// failed download leaves `target` as it was.
pub(crate) async fn download(bucket: &ObjectStore, p: u32, target: &Path) -> Result<()> {
    // Streamed to a file beside the target, not held in memory: a
    // partition's checkpoint is as large as its store.
    let mut object = bucket.get(object_name(p)).await.map_err(nats)?;
    let tar_path = staging_of(target).with_extension("tar");
    let mut file = tokio::fs::File::create(&tar_path).await?;
    tokio::io::copy(&mut object, &mut file).await?;
    file.sync_all().await?;
    drop(file);
    let target = target.to_path_buf();
    blocking(move || {
        let staging = staging_of(&target);
        remove_if_there(&staging)?;
        std::fs::create_dir_all(&staging)?;
        tar::Archive::new(std::fs::File::open(&tar_path)?).unpack(&staging)?;
        std::fs::remove_file(&tar_path)?;
        remove_if_there(&target)?;
        std::fs::rename(&staging, &target)?;
        Ok(())
    })
    .await
}

fn staging_of(target: &Path) -> PathBuf {
    let mut s = target.as_os_str().to_owned();
    s.push(".restore");
    PathBuf::from(s)
}

fn remove_if_there(dir: &Path) -> std::io::Result<()> {
    match std::fs::remove_dir_all(dir) {
        Err(e) if e.kind() != std::io::ErrorKind::NotFound => Err(e),
        _ => Ok(()),
    }
}
