//! Who gets a connection slot.
//!
//! Two budgets, so that peers who never say hello cannot crowd out those
//! who do:
//! - *unauthenticated*: every accepted connection takes one of
//!   `--max-unauthenticated` slots, and at most `--max-unauthenticated-per-ip`
//!   from one address, until its hello is accepted or refused (or its short
//!   hello timeout passes). When a budget is full, the new connection is
//!   not refused: it takes the slot of the *oldest* connection that has not
//!   said hello (of its own address when the per-address budget is full,
//!   of any address when the global one is), which is told why and closed.
//!   So idle connections can never lock a peer out (OpenSSH's MaxStartups
//!   in spirit): an attacker has to open a whole budget's worth of
//!   connections within the time a real peer takes to say hello.
//! - *authenticated*: a connection whose hello was accepted moves to one of
//!   `--max-connections` slots, which only authenticated peers hold; past
//!   it, peers are refused with a reason.
//!
//! What an attacker must sustain to keep a peer out: a newcomer takes the
//! oldest slot, so a peer's connection is only evicted if `B` more
//! connections arrive (from its own address when `B` is the per-address
//! budget, from anywhere for the global one) within `L`, the time from its
//! accept until its hello is read. Keeping a peer out takes more than
//! `B / L` new connections per second, without pause. On loopback `L`
//! was 0.4 ms from connect to welcome with 1000 idle connections held
//! (`tests/admission.rs`): with the defaults, about 160 000 connections
//! per second from the peer's own address (`B` = 64), or 2.6 million per
//! second from elsewhere (`B` = 1024). Even a peer slow enough to use all
//! of `--hello-timeout` `T` (5 s) is kept out only above `B / T`: 12.8 per
//! second from its address, 205 overall, which before eviction was merely
//! the cost of keeping the budget full and locked out every peer of that
//! address, fast or slow.
//!
//! A slot is a guard: dropping it gives the slot back, whatever way the
//! connection ends (panics included). Slots are kept by age in a
//! `BTreeMap`, and by address in ordered sets, so finding and evicting the
//! oldest costs O(log n).

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::net::IpAddr;
use std::sync::{Arc, Mutex, MutexGuard};

use tokio::sync::{oneshot, OwnedSemaphorePermit, Semaphore};

/// The slots of both budgets.
pub struct Admission {
    waiting: Arc<Mutex<Waiting>>,
    unauthenticated_limit: usize,
    per_ip_limit: usize,
    authenticated: Arc<Semaphore>,
    authenticated_limit: usize,
}

/// The connections that have not said hello yet.
#[derive(Default)]
struct Waiting {
    /// Sequence number of the next connection: the older, the smaller.
    next: u64,
    /// Every waiting connection, oldest first.
    by_age: BTreeMap<u64, Entry>,
    /// The waiting connections of each address, oldest first.
    by_ip: HashMap<IpAddr, BTreeSet<u64>>,
}

/// A waiting connection: where it is from, and how to tell it that it was
/// evicted.
struct Entry {
    ip: IpAddr,
    evict: oneshot::Sender<Eviction>,
}

impl Waiting {
    /// Takes `seq` out; `None` if it is not there (evicted already).
    fn remove(&mut self, seq: u64) -> Option<Entry> {
        let entry = self.by_age.remove(&seq)?;
        if let Some(set) = self.by_ip.get_mut(&entry.ip) {
            set.remove(&seq);
            if set.is_empty() {
                self.by_ip.remove(&entry.ip);
            }
        }
        Some(entry)
    }

    /// Evicts `seq`, telling its holder `why`.
    fn evict(&mut self, seq: u64, why: Eviction) {
        if let Some(entry) = self.remove(seq) {
            // The holder may be gone already, between its last await and
            // dropping its slot: then there is no one to tell.
            let _ = entry.evict.send(why);
        }
    }
}

/// Why a connection whose hello was accepted is turned away.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Busy {
    /// Every authenticated slot is taken.
    #[error("server busy: {0} connections already")]
    Authenticated(usize),
}

/// Why a connection that had not said hello yet was closed: a newer one
/// took its slot.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Eviction {
    /// Its address held its whole share of slots.
    #[error("too many connections from {ip} that have not said hello ({limit}): this one, the oldest, was closed for a newer one; say hello sooner")]
    PerAddress {
        /// The peer's address.
        ip: IpAddr,
        /// `--max-unauthenticated-per-ip`.
        limit: usize,
    },
    /// Every slot was taken.
    #[error("server busy: {0} connections are saying hello: this one, the oldest, was closed for a newer one; say hello sooner")]
    Global(usize),
}

/// A connection before its hello is accepted: holds one unauthenticated
/// slot until dropped, [authenticated](Admission::authenticate) or
/// [evicted](Unauthenticated::evicted).
pub struct Unauthenticated {
    seq: u64,
    waiting: Arc<Mutex<Waiting>>,
    evicted: oneshot::Receiver<Eviction>,
}

/// A connection whose hello was accepted.
pub struct Authenticated {
    _permit: OwnedSemaphorePermit,
}

fn lock(waiting: &Mutex<Waiting>) -> MutexGuard<'_, Waiting> {
    waiting.lock().unwrap_or_else(|e| e.into_inner())
}

impl Admission {
    /// Budgets of `unauthenticated` slots (`per_ip` of them per address)
    /// and `authenticated` slots. Each is at least 1.
    pub fn new(unauthenticated: usize, per_ip: usize, authenticated: usize) -> Admission {
        let authenticated = authenticated.max(1);
        Admission {
            waiting: Arc::default(),
            unauthenticated_limit: unauthenticated.max(1),
            per_ip_limit: per_ip.max(1),
            authenticated: Arc::new(Semaphore::new(authenticated)),
            authenticated_limit: authenticated,
        }
    }

    /// A slot for a connection just accepted from `ip`. Never refused:
    /// when a budget is full, the oldest connection in it is evicted (see
    /// the module documentation).
    pub fn accept(&self, ip: IpAddr) -> Unauthenticated {
        let mut waiting = lock(&self.waiting);
        let oldest_here = waiting
            .by_ip
            .get(&ip)
            .filter(|set| set.len() >= self.per_ip_limit)
            .and_then(|set| set.first().copied());
        if let Some(seq) = oldest_here {
            let limit = self.per_ip_limit;
            waiting.evict(seq, Eviction::PerAddress { ip, limit });
        } else if waiting.by_age.len() >= self.unauthenticated_limit {
            if let Some(seq) = waiting.by_age.keys().next().copied() {
                waiting.evict(seq, Eviction::Global(self.unauthenticated_limit));
            }
        }
        let seq = waiting.next;
        waiting.next += 1;
        let (evict, evicted) = oneshot::channel();
        waiting.by_age.insert(seq, Entry { ip, evict });
        waiting.by_ip.entry(ip).or_default().insert(seq);
        Unauthenticated {
            seq,
            waiting: self.waiting.clone(),
            evicted,
        }
    }

    /// Moves a connection whose hello was accepted to the authenticated
    /// budget; its unauthenticated slot is given back either way. (A slot
    /// evicted while its hello was being checked is admitted all the same:
    /// its place went to the newcomer already.)
    pub fn authenticate(&self, slot: Unauthenticated) -> Result<Authenticated, Busy> {
        drop(slot);
        self.authenticated
            .clone()
            .try_acquire_owned()
            .map(|permit| Authenticated { _permit: permit })
            .map_err(|_| Busy::Authenticated(self.authenticated_limit))
    }

    /// How many connections hold an unauthenticated slot.
    pub fn waiting(&self) -> usize {
        lock(&self.waiting).by_age.len()
    }
}

impl Unauthenticated {
    /// Completes when a newer connection took this slot, with the reason
    /// to tell the peer; never completes otherwise. Cancel-safe.
    pub async fn evicted(&mut self) -> Eviction {
        match (&mut self.evicted).await {
            Ok(why) => why,
            // The entry is only dropped after sending; so this is not
            // reached, but never claim an eviction that did not happen.
            Err(_) => std::future::pending().await,
        }
    }

    /// The eviction, if it happened already.
    pub fn try_evicted(&mut self) -> Option<Eviction> {
        self.evicted.try_recv().ok()
    }
}

impl Drop for Unauthenticated {
    fn drop(&mut self) {
        lock(&self.waiting).remove(self.seq);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const A: IpAddr = IpAddr::V4(std::net::Ipv4Addr::new(10, 0, 0, 1));
    const B: IpAddr = IpAddr::V4(std::net::Ipv4Addr::new(10, 0, 0, 2));

    #[test]
    fn a_full_address_evicts_its_own_oldest() {
        let admission = Admission::new(10, 2, 10);
        let mut a1 = admission.accept(A);
        let mut a2 = admission.accept(A);
        let mut b = admission.accept(B);
        // The third from A takes a1's place; a2 and B are untouched.
        let mut a3 = admission.accept(A);
        assert_eq!(
            a1.try_evicted(),
            Some(Eviction::PerAddress { ip: A, limit: 2 })
        );
        assert_eq!(a2.try_evicted(), None);
        assert_eq!(b.try_evicted(), None);
        assert_eq!(admission.waiting(), 3);
        // Then a2, then a3: always the oldest that is left.
        let _a4 = admission.accept(A);
        assert!(a2.try_evicted().is_some());
        let _a5 = admission.accept(A);
        assert!(a3.try_evicted().is_some());
        assert_eq!(admission.waiting(), 3);
        // An evicted slot dropped late gives nothing back twice.
        drop((a1, a2, a3));
        assert_eq!(admission.waiting(), 3);
    }

    #[test]
    fn a_full_budget_evicts_the_oldest_of_any_address() {
        let admission = Admission::new(3, 3, 10);
        let mut b1 = admission.accept(B);
        let mut a1 = admission.accept(A);
        let mut b2 = admission.accept(B);
        let mut a2 = admission.accept(A);
        assert_eq!(b1.try_evicted(), Some(Eviction::Global(3)));
        assert_eq!(a1.try_evicted(), None);
        let _a3 = admission.accept(A);
        assert_eq!(a1.try_evicted(), Some(Eviction::Global(3)));
        assert_eq!(b2.try_evicted(), None);
        assert_eq!(a2.try_evicted(), None);
        // A slot given back early makes room: nobody is evicted for the next.
        drop(b2);
        let _b3 = admission.accept(B);
        assert_eq!(a2.try_evicted(), None);
        assert_eq!(admission.waiting(), 3);
    }

    #[test]
    fn the_evicted_connection_learns_it_at_once() {
        let rt = tokio::runtime::Builder::new_current_thread()
            .build()
            .unwrap();
        let admission = Admission::new(1, 1, 1);
        let mut first = admission.accept(A);
        let _second = admission.accept(B);
        let why = rt.block_on(first.evicted());
        assert_eq!(why, Eviction::Global(1));
        assert!(why.to_string().contains("the oldest"), "{why}");
    }

    #[test]
    fn silent_connections_cannot_take_authenticated_slots() {
        let admission = Admission::new(3, 3, 1);
        let silent: Vec<_> = (0..3).map(|_| admission.accept(A)).collect();
        drop(silent);
        assert_eq!(admission.waiting(), 0);
        // The authenticated slot was never touched by them.
        let hello = admission.accept(B);
        let held = admission.authenticate(hello).unwrap();
        // Authenticating gave the unauthenticated slot back ...
        assert_eq!(admission.waiting(), 0);
        let next = admission.accept(B);
        // ... and the authenticated budget is its own.
        assert_eq!(
            admission.authenticate(next).err(),
            Some(Busy::Authenticated(1))
        );
        drop(held);
        let again = admission.accept(B);
        admission.authenticate(again).unwrap();
    }

    #[test]
    fn many_evictions_keep_the_books_straight() {
        let admission = Admission::new(50, 5, 1);
        let mut held = Vec::new();
        for i in 0..10_000u32 {
            let ip = IpAddr::V4(std::net::Ipv4Addr::from(0x0a00_0000 + i % 20));
            held.push(admission.accept(ip));
            if i % 7 == 0 {
                held.swap_remove((i as usize * 31) % held.len());
            }
            assert!(admission.waiting() <= 50);
        }
        let live = held
            .iter_mut()
            .filter_map(|s| s.try_evicted().is_none().then_some(()))
            .count();
        assert_eq!(live, admission.waiting());
        drop(held);
        assert_eq!(admission.waiting(), 0);
        let w = lock(&admission.waiting);
        assert!(w.by_ip.is_empty());
    }
}
