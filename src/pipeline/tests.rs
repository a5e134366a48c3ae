use std::{
    sync::{Arc, Mutex},
    time::Duration,
};

use futures_util::future::BoxFuture;
use serde_json::json;

use super::*;
use crate::rooms::{test_support::room_with_message, NewEvent};

/// A consumer that notes the positions it saw and either writes something of its own
/// with every batch or skips its checkpoints.
struct Probe {
    name: &'static str,
    skips: bool,
    storage: Arc<Storage>,
    seen: Mutex<Vec<u64>>,
}

impl EventConsumer for Probe {
    fn name(&self) -> &'static str {
        self.name
    }

    fn consume<'a>(
        &'a self,
        events: &'a [Appended],
        mut checkpoint: Checkpoint,
    ) -> BoxFuture<'a, Result<()>> {
        Box::pin(async move {
            self.seen
                .lock()
                .unwrap()
                .extend(events.iter().map(|e| e.pos));
            if self.skips {
                return checkpoint.skip();
            }
            let end = checkpoint.end();
            checkpoint
                .batch()
                .insert(&self.storage.trees.meta, b"probe_wrote", &end.to_be_bytes());
            self.storage.commit(checkpoint.into_batch())
        })
    }
}

fn stored(storage: &Storage, name: &str) -> Option<u64> {
    storage
        .trees
        .meta
        .get(&Pipeline::position_key(name))
        .unwrap()
        .and_then(|v| keys::leading_u64(&v))
}

async fn until_handled(pipeline: &Pipeline, name: &str, pos: u64) {
    for _ in 0..200 {
        if pipeline
            .positions()
            .iter()
            .any(|(n, p)| *n == name && *p >= pos)
        {
            return;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    panic!("{name} did not reach {pos}: {:?}", pipeline.positions());
}

#[tokio::test]
async fn skipped_checkpoints_are_stored_lazily_and_written_ones_at_once() {
    let (s, alice, room, _) = room_with_message().await;
    let storage = s.storage().clone();
    let probe = |name, skips| {
        Arc::new(Probe {
            name,
            skips,
            storage: storage.clone(),
            seen: Mutex::default(),
        })
    };
    let (eager, lazy) = (probe("probe_eager", false), probe("probe_lazy", true));
    let pipeline = Pipeline::builder(storage.clone(), s.rooms.clone())
        .consumer(eager.clone(), None)
        .unwrap()
        .consumer(lazy.clone(), Some("probe_eager"))
        .unwrap()
        .build();
    let start = s.rooms.applied_pos();
    let started = std::time::Instant::now();
    pipeline.start();

    let send = |body: &'static str| {
        let (rooms, alice, room) = (s.rooms.clone(), alice.clone(), room.clone());
        async move {
            let content = json!({"msgtype": "m.text", "body": body});
            let (id, _) = rooms
                .send_to(&room, &alice, NewEvent::message("m.room.message", content))
                .await
                .unwrap();
            rooms.event_pos(&id).unwrap().unwrap()
        }
    };
    let first = send("one").await;
    until_handled(&pipeline, "probe_lazy", first).await;
    // The consumer with writes of its own stored its position with them; the one that
    // skipped handled the event but left its stored position alone (within a second).
    assert_eq!(stored(&storage, "probe_eager"), Some(first));
    assert_eq!(
        storage.trees.meta.get(b"probe_wrote").unwrap(),
        Some(first.to_be_bytes().to_vec())
    );
    if started.elapsed() < LAZY_POSITION {
        assert_eq!(stored(&storage, "probe_lazy"), None);
    }
    assert_eq!(*lazy.seen.lock().unwrap(), vec![first]);
    assert!(first > start);

    // A second later the next round stores it.
    tokio::time::sleep(LAZY_POSITION + Duration::from_millis(100)).await;
    let second = send("two").await;
    until_handled(&pipeline, "probe_lazy", second).await;
    assert_eq!(stored(&storage, "probe_lazy"), Some(second));
    assert_eq!(*lazy.seen.lock().unwrap(), vec![first, second]);
    assert_eq!(*eager.seen.lock().unwrap(), vec![first, second]);
}
