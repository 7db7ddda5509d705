//! Wakes subscriptions when their partition grows.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use tokio::sync::watch;

type Watches = HashMap<(String, u32), watch::Sender<u64>>;

/// Per-partition log-end watches. The writer publishes after each commit;
/// subscriptions wait on them instead of polling the store.
#[derive(Clone, Default)]
pub struct Notifier {
    watches: Arc<Mutex<Watches>>,
}

impl Notifier {
    /// A receiver that changes whenever `topic`/`partition` grows.
    pub fn watch(&self, topic: &str, partition: u32) -> watch::Receiver<u64> {
        let mut map = self.watches.lock().unwrap_or_else(|p| p.into_inner());
        map.entry((topic.to_owned(), partition))
            .or_insert_with(|| watch::channel(0).0)
            .subscribe()
    }

    /// Records a new log end. Partitions nobody watches cost a map lookup.
    pub fn publish(&self, topic: &str, partition: u32, log_end: u64) {
        let mut map = self.watches.lock().unwrap_or_else(|p| p.into_inner());
        let key = (topic.to_owned(), partition);
        if let Some(tx) = map.get(&key) {
            if tx.receiver_count() == 0 {
                map.remove(&key);
            } else {
                tx.send_replace(log_end);
            }
        }
    }
}
