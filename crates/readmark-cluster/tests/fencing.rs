//! Answers are fenced by the owner's lease epoch: once a client has heard
//! from the owner that took a partition later, it refuses the answers of
//! an older one (a node paused past its lease that has not noticed yet).
//! Real NATS on loopback; the owners here are plain responders on the
//! partition's query subject, which is all a client sees of an owner.
//!
//! Needs Debian's `nats-server` (scripts/setup.sh and .ci/run install it).

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use futures_util::StreamExt;
use readmark_cluster::local::start_nats;
use readmark_cluster::{Answer, Client, Query, Reply, query_subject};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_refuses_an_owner_older_than_one_it_heard() {
    let dir = tempfile::tempdir().unwrap();
    let (_nats, urls) = start_nats(dir.path(), 1).unwrap();
    let client = Client::connect(&urls, 1)
        .await
        .unwrap()
        .deadline(Duration::from_secs(2));
    // The owner's epoch, as the responder answers it.
    let epoch = Arc::new(AtomicU64::new(5));
    let mut sub = client.nats().subscribe(query_subject(0)).await.unwrap();
    client.nats().flush().await.unwrap();
    let (nats, e) = (client.nats().clone(), epoch.clone());
    tokio::spawn(async move {
        while let Some(m) = sub.next().await {
            let Some(reply) = m.reply else { continue };
            let r = Reply::Ok {
                answer: Answer::Pong {
                    node: "n".into(),
                    applied: 0,
                },
                node: format!("epoch-{}", e.load(Ordering::SeqCst)),
                applied: 0,
                epoch: e.load(Ordering::SeqCst),
            };
            let _ = nats
                .publish(reply, serde_json::to_vec(&r).unwrap().into())
                .await;
        }
    });
    let a = client.ask(0, Query::Ping, 0).await.unwrap();
    assert_eq!(a.epoch, 5);
    // The owner of epoch 3 is older than the one heard: refused until the
    // deadline.
    epoch.store(3, Ordering::SeqCst);
    let stale = client.ask(0, Query::Ping, 0).await;
    assert!(
        matches!(&stale, Err(readmark_cluster::Error::Timeout(t)) if t.contains("stale owner")),
        "{stale:?}"
    );
    // A clone shares what was heard; a newer owner is listened to.
    let clone = client.clone();
    epoch.store(7, Ordering::SeqCst);
    assert_eq!(clone.ask(0, Query::Ping, 0).await.unwrap().epoch, 7);
    epoch.store(5, Ordering::SeqCst);
    assert!(client.ask(0, Query::Ping, 0).await.is_err());
}
