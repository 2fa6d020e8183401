//! `Idempotency-Key`: a publish repeated with the same key within [`WINDOW`] publishes nothing and answers
//! the first publish's id.
//!
//! [`IdempotencyKey`] is the checked header value. With Redis the key is checked inside the publish script
//! (atomic with the publish, so it holds across nodes and across the settling of a lost reply); with the
//! memory backend, [`KeyTable`] gives the same answers in this process: concurrent repeats wait for the
//! first one and take its id, and a first publish that fails leaves the key free for a retry. The table is
//! bounded: at most [`MAX_KEYS`] keys are remembered; past that the oldest are forgotten before their ten
//! minutes are up (a repeat of one of those would publish again).

use std::collections::{HashMap, VecDeque};
use std::sync::{Mutex, PoisonError};
use std::time::Duration;

use tokio::sync::watch;
use tokio::time::Instant;

use crate::error::Error;
use crate::id::EventId;

/// How long a key is remembered.
pub const WINDOW: Duration = Duration::from_secs(600);
/// The longest key, in bytes.
pub const MAX_LEN: usize = 128;
/// Keys the memory backend remembers at most (about 200 bytes each with their bookkeeping: ~20 MiB).
pub const MAX_KEYS: usize = 100_000;

/// An `Idempotency-Key` header value: 1 to [`MAX_LEN`] visible ASCII characters (`!` to `~`).
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct IdempotencyKey(String);

impl IdempotencyKey {
    /// Checks a header value.
    ///
    /// # Errors
    /// [`Error::BadRequest`] when it is empty, too long, or holds anything but `!` to `~`.
    pub fn parse(value: &[u8]) -> Result<Self, Error> {
        if value.is_empty() || value.len() > MAX_LEN || !value.iter().all(|b| (b'!'..=b'~').contains(b)) {
            return Err(Error::BadRequest(format!(
                "Idempotency-Key must be 1 to {MAX_LEN} visible ASCII characters (! to ~, no space)"
            )));
        }
        // Checked ASCII just above.
        Ok(IdempotencyKey(String::from_utf8_lossy(value).into_owned()))
    }

    /// The key's text.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

/// What the table says about a key.
pub enum Claim<'a> {
    /// Used already: the first publish's id.
    Done(EventId),
    /// Free: the caller publishes, then [`Owner::finish`]es (dropping the owner frees the key again).
    Owner(Owner<'a>),
}

/// A key's slot.
enum Slot {
    /// Being published; repeats wait on this (the id once published; the sender dropped if it failed).
    Pending(watch::Receiver<Option<EventId>>),
    /// Published.
    Done { id: EventId, at: Instant },
}

#[derive(Default)]
struct Table {
    slots: HashMap<IdempotencyKey, Slot>,
    /// Keys in the order they were published, for expiry and for the bound.
    order: VecDeque<(Instant, IdempotencyKey)>,
}

/// The memory backend's keys. See the module docs.
#[derive(Default)]
pub struct KeyTable {
    table: Mutex<Table>,
}

impl std::fmt::Debug for KeyTable {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let table = self.table.lock().unwrap_or_else(PoisonError::into_inner);
        f.debug_struct("KeyTable").field("keys", &table.slots.len()).finish()
    }
}

/// The right to publish for a key; see [`Claim::Owner`].
pub struct Owner<'a> {
    table: &'a KeyTable,
    key: IdempotencyKey,
    sender: watch::Sender<Option<EventId>>,
    finished: bool,
}

impl Owner<'_> {
    /// Records the key as used by the publish of `id`, and hands `id` to repeats waiting for it.
    pub fn finish(mut self, id: EventId) {
        let now = Instant::now();
        let mut table = self.table.table.lock().unwrap_or_else(PoisonError::into_inner);
        table.slots.insert(self.key.clone(), Slot::Done { id, at: now });
        table.order.push_back((now, self.key.clone()));
        while table.order.len() > MAX_KEYS {
            if let Some((at, key)) = table.order.pop_front() {
                table.remove_done(&key, at);
            }
        }
        drop(table);
        let _ = self.sender.send(Some(id));
        self.finished = true;
    }
}

impl Drop for Owner<'_> {
    fn drop(&mut self) {
        if !self.finished {
            // The publish failed (or was abandoned): the key is free again; waiting repeats try themselves.
            let mut table = self.table.table.lock().unwrap_or_else(PoisonError::into_inner);
            if matches!(table.slots.get(&self.key), Some(Slot::Pending(_))) {
                table.slots.remove(&self.key);
            }
        }
    }
}

impl Table {
    /// Removes `key` if it is the one published at `at` (not a newer use of the same key).
    fn remove_done(&mut self, key: &IdempotencyKey, at: Instant) {
        if matches!(self.slots.get(key), Some(Slot::Done { at: when, .. }) if *when == at) {
            self.slots.remove(key);
        }
    }

    /// Forgets keys older than [`WINDOW`].
    fn expire(&mut self, now: Instant) {
        while let Some((at, _)) = self.order.front() {
            if now.saturating_duration_since(*at) < WINDOW {
                break;
            }
            if let Some((at, key)) = self.order.pop_front() {
                self.remove_done(&key, at);
            }
        }
    }
}

impl KeyTable {
    /// Claims `key`: its first publish's id if it was used within [`WINDOW`]; else, once no other publish
    /// with it is under way (waiting for one that is), the right to publish.
    ///
    /// # Errors
    /// Never, today; a `Result` so that a bound on waiting can be added.
    pub async fn claim(&self, key: &IdempotencyKey) -> Result<Claim<'_>, Error> {
        loop {
            let mut waiting = {
                let now = Instant::now();
                let mut table = self.table.lock().unwrap_or_else(PoisonError::into_inner);
                table.expire(now);
                match table.slots.get(key) {
                    Some(Slot::Done { id, .. }) => return Ok(Claim::Done(*id)),
                    Some(Slot::Pending(receiver)) => receiver.clone(),
                    None => {
                        let (sender, receiver) = watch::channel(None);
                        table.slots.insert(key.clone(), Slot::Pending(receiver));
                        return Ok(Claim::Owner(Owner { table: self, key: key.clone(), sender, finished: false }));
                    }
                }
            };
            // The first publish with this key is under way: its id, or, if it failed, a turn of our own.
            let published = waiting.wait_for(Option::is_some).await.ok().and_then(|id| *id);
            if let Some(id) = published {
                return Ok(Claim::Done(id));
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Arc;

    fn key(s: &str) -> IdempotencyKey {
        IdempotencyKey::parse(s.as_bytes()).expect("valid key")
    }

    #[test]
    fn keys_are_visible_ascii() {
        assert!(IdempotencyKey::parse(b"!").is_ok());
        assert!(IdempotencyKey::parse(b"~a-Z_0{}\"").is_ok());
        assert!(IdempotencyKey::parse("x".repeat(128).as_bytes()).is_ok());
        for bad in [&b""[..], b"a b", b"a\tb", "é".as_bytes(), b"\x7f", &[b'x'; 129][..]] {
            assert!(IdempotencyKey::parse(bad).is_err(), "{bad:?}");
        }
    }

    #[tokio::test]
    async fn a_key_publishes_once() {
        let table = KeyTable::default();
        let Claim::Owner(owner) = table.claim(&key("a")).await.expect("claim") else { panic!("new key") };
        owner.finish(EventId::new(5, 0));
        assert!(matches!(table.claim(&key("a")).await, Ok(Claim::Done(id)) if id == EventId::new(5, 0)));
        assert!(matches!(table.claim(&key("b")).await, Ok(Claim::Owner(_))));
    }

    #[tokio::test]
    async fn a_failed_publish_frees_the_key() {
        let table = KeyTable::default();
        let Claim::Owner(owner) = table.claim(&key("a")).await.expect("claim") else { panic!("new key") };
        drop(owner);
        assert!(matches!(table.claim(&key("a")).await, Ok(Claim::Owner(_))));
    }

    #[tokio::test]
    async fn concurrent_repeats_wait_for_the_first() {
        let table = Arc::new(KeyTable::default());
        let Claim::Owner(owner) = table.claim(&key("k")).await.expect("claim") else { panic!("new key") };
        let repeat = {
            let table = table.clone();
            tokio::spawn(async move {
                match table.claim(&key("k")).await {
                    Ok(Claim::Done(id)) => Some(id),
                    _ => None,
                }
            })
        };
        tokio::task::yield_now().await;
        owner.finish(EventId::new(7, 1));
        assert_eq!(repeat.await.expect("task"), Some(EventId::new(7, 1)));
    }

    #[tokio::test]
    async fn a_repeat_waiting_on_a_failed_publish_gets_its_own_turn() {
        let table = Arc::new(KeyTable::default());
        let Claim::Owner(owner) = table.claim(&key("k")).await.expect("claim") else { panic!("new key") };
        let repeat = {
            let table = table.clone();
            tokio::spawn(async move {
                match table.claim(&key("k")).await {
                    Ok(Claim::Owner(owner)) => {
                        owner.finish(EventId::new(9, 0));
                        true
                    }
                    _ => false,
                }
            })
        };
        tokio::task::yield_now().await;
        drop(owner);
        assert!(repeat.await.expect("task"));
        assert!(matches!(table.claim(&key("k")).await, Ok(Claim::Done(id)) if id == EventId::new(9, 0)));
    }

    #[tokio::test]
    async fn keys_expire_after_the_window_and_stay_bounded() {
        let table = KeyTable::default();
        let Claim::Owner(owner) = table.claim(&key("old")).await.expect("claim") else { panic!("new key") };
        owner.finish(EventId::new(1, 0));
        let now = Instant::now();
        let lock = || table.table.lock().unwrap_or_else(PoisonError::into_inner);
        lock().expire(now + WINDOW - Duration::from_secs(1));
        assert!(lock().slots.contains_key(&key("old")));
        lock().expire(now + WINDOW + Duration::from_secs(1));
        assert!(!lock().slots.contains_key(&key("old")) && lock().order.is_empty());
        for i in 0..MAX_KEYS + 10 {
            let Claim::Owner(owner) = table.claim(&key(&format!("k{i}"))).await.expect("claim") else {
                panic!("new key")
            };
            owner.finish(EventId::new(2, i as u64));
        }
        let t = table.table.lock().unwrap_or_else(PoisonError::into_inner);
        assert_eq!((t.slots.len(), t.order.len()), (MAX_KEYS, MAX_KEYS));
    }
}
