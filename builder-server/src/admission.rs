//! Who gets a connection slot.
//!
//! Two budgets, so that peers who never say hello cannot crowd out those
//! who do:
//! - *unauthenticated*: every accepted connection takes one of
//!   `--max-unauthenticated` slots, and at most `--max-unauthenticated-per-ip`
//!   from one address, until its hello is accepted or refused (or its short
//!   hello timeout passes);
//! - *authenticated*: a connection whose hello was accepted moves to one of
//!   `--max-connections` slots, which only authenticated peers hold.
//!
//! A slot is a guard: dropping it gives the slot back, whatever way the
//! connection ends (panics included).

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::{Arc, Mutex, MutexGuard};

use tokio::sync::{OwnedSemaphorePermit, Semaphore};

/// The slots of both budgets.
pub struct Admission {
    unauthenticated: Arc<Semaphore>,
    per_ip: Arc<Mutex<HashMap<IpAddr, usize>>>,
    per_ip_limit: usize,
    unauthenticated_limit: usize,
    authenticated: Arc<Semaphore>,
    authenticated_limit: usize,
}

/// Why a connection was turned away.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Busy {
    /// Every unauthenticated slot is taken.
    #[error("server busy: {0} connections are saying hello already")]
    Unauthenticated(usize),
    /// This address holds its share of unauthenticated slots.
    #[error("too many connections from {ip} that have not said hello ({limit})")]
    PerAddress {
        /// The peer's address.
        ip: IpAddr,
        /// `--max-unauthenticated-per-ip`.
        limit: usize,
    },
    /// Every authenticated slot is taken.
    #[error("server busy: {0} connections already")]
    Authenticated(usize),
}

/// A connection before its hello is accepted.
pub struct Unauthenticated {
    _permit: OwnedSemaphorePermit,
    ip: IpAddr,
    per_ip: Arc<Mutex<HashMap<IpAddr, usize>>>,
}

/// A connection whose hello was accepted.
pub struct Authenticated {
    _permit: OwnedSemaphorePermit,
}

fn lock(map: &Mutex<HashMap<IpAddr, usize>>) -> MutexGuard<'_, HashMap<IpAddr, usize>> {
    map.lock().unwrap_or_else(|e| e.into_inner())
}

impl Admission {
    /// Budgets of `unauthenticated` slots (`per_ip` of them per address)
    /// and `authenticated` slots.
    pub fn new(unauthenticated: usize, per_ip: usize, authenticated: usize) -> Admission {
        Admission {
            unauthenticated: Arc::new(Semaphore::new(unauthenticated)),
            per_ip: Arc::default(),
            per_ip_limit: per_ip,
            unauthenticated_limit: unauthenticated,
            authenticated: Arc::new(Semaphore::new(authenticated)),
            authenticated_limit: authenticated,
        }
    }

    /// A slot for a connection just accepted from `ip`.
    pub fn accept(&self, ip: IpAddr) -> Result<Unauthenticated, Busy> {
        let mut per_ip = lock(&self.per_ip);
        let held = per_ip.get(&ip).copied().unwrap_or(0);
        if held >= self.per_ip_limit {
            return Err(Busy::PerAddress {
                ip,
                limit: self.per_ip_limit,
            });
        }
        let permit = self
            .unauthenticated
            .clone()
            .try_acquire_owned()
            .map_err(|_| Busy::Unauthenticated(self.unauthenticated_limit))?;
        per_ip.insert(ip, held + 1);
        Ok(Unauthenticated {
            _permit: permit,
            ip,
            per_ip: self.per_ip.clone(),
        })
    }

    /// Moves a connection whose hello was accepted to the authenticated
    /// budget; its unauthenticated slot is given back either way.
    pub fn authenticate(&self, slot: Unauthenticated) -> Result<Authenticated, Busy> {
        drop(slot);
        self.authenticated
            .clone()
            .try_acquire_owned()
            .map(|permit| Authenticated { _permit: permit })
            .map_err(|_| Busy::Authenticated(self.authenticated_limit))
    }
}

impl Drop for Unauthenticated {
    fn drop(&mut self) {
        let mut per_ip = lock(&self.per_ip);
        if let Some(held) = per_ip.get_mut(&self.ip) {
            *held -= 1;
            if *held == 0 {
                per_ip.remove(&self.ip);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const A: IpAddr = IpAddr::V4(std::net::Ipv4Addr::new(10, 0, 0, 1));
    const B: IpAddr = IpAddr::V4(std::net::Ipv4Addr::new(10, 0, 0, 2));

    #[test]
    fn one_address_gets_its_share_and_no_more() {
        let admission = Admission::new(10, 2, 10);
        let a1 = admission.accept(A).unwrap();
        let _a2 = admission.accept(A).unwrap();
        assert_eq!(
            admission.accept(A).err(),
            Some(Busy::PerAddress { ip: A, limit: 2 })
        );
        // Another address is not affected.
        let _b = admission.accept(B).unwrap();
        // A slot given back can be taken again.
        drop(a1);
        admission.accept(A).unwrap();
    }

    #[test]
    fn silent_connections_cannot_take_authenticated_slots() {
        let admission = Admission::new(3, 3, 1);
        let silent: Vec<_> = (0..3).map(|_| admission.accept(A).unwrap()).collect();
        assert_eq!(admission.accept(B).err(), Some(Busy::Unauthenticated(3)));
        drop(silent);
        // The authenticated slot was never touched by them.
        let hello = admission.accept(B).unwrap();
        let held = admission.authenticate(hello).unwrap();
        // Authenticating gave the unauthenticated slot back ...
        let next = admission.accept(B).unwrap();
        // ... and the authenticated budget is its own.
        assert_eq!(
            admission.authenticate(next).err(),
            Some(Busy::Authenticated(1))
        );
        drop(held);
        let again = admission.accept(B).unwrap();
        admission.authenticate(again).unwrap();
    }
}
