//! Signals as they cross the wire, and the reference's portable numbering.
//!
//! Build records store a killed or stopped job's signal as the reference's
//! *portable* number (OCaml's `Sys.sigkill` is -7, `Sys.sigterm` -11, ...),
//! not the host's, so records stay comparable across hosts and with those
//! the reference wrote; a signal outside the portable list is stored as the
//! host's positive number. Host numbers are mapped to [`Signal`] in the worker
//! (through `nix`), never here.

use std::fmt;

use serde::{Deserialize, Serialize};

/// A signal. Crosses the wire with bincode: only *append* variants.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Signal {
    Abrt,
    Alrm,
    Fpe,
    Hup,
    Ill,
    Int,
    Kill,
    Pipe,
    Quit,
    Segv,
    Term,
    Usr1,
    Usr2,
    Chld,
    Cont,
    Stop,
    Tstp,
    Ttin,
    Ttou,
    Vtalrm,
    Prof,
    Bus,
    Poll,
    Sys,
    Trap,
    Urg,
    Xcpu,
    Xfsz,
    /// A signal outside the portable list: the host's positive number.
    Other(i32),
}

/// The signals with a portable number, in portable order: `PORTABLE[i]` is
/// number `-(i + 1)`.
const PORTABLE: [(Signal, &str); 28] = [
    (Signal::Abrt, "ABRT"),
    (Signal::Alrm, "ALRM"),
    (Signal::Fpe, "FPE"),
    (Signal::Hup, "HUP"),
    (Signal::Ill, "ILL"),
    (Signal::Int, "INT"),
    (Signal::Kill, "KILL"),
    (Signal::Pipe, "PIPE"),
    (Signal::Quit, "QUIT"),
    (Signal::Segv, "SEGV"),
    (Signal::Term, "TERM"),
    (Signal::Usr1, "USR1"),
    (Signal::Usr2, "USR2"),
    (Signal::Chld, "CHLD"),
    (Signal::Cont, "CONT"),
    (Signal::Stop, "STOP"),
    (Signal::Tstp, "TSTP"),
    (Signal::Ttin, "TTIN"),
    (Signal::Ttou, "TTOU"),
    (Signal::Vtalrm, "VTALRM"),
    (Signal::Prof, "PROF"),
    (Signal::Bus, "BUS"),
    (Signal::Poll, "POLL"),
    (Signal::Sys, "SYS"),
    (Signal::Trap, "TRAP"),
    (Signal::Urg, "URG"),
    (Signal::Xcpu, "XCPU"),
    (Signal::Xfsz, "XFSZ"),
];

impl Signal {
    /// The reference's portable number: SIGABRT -1 ... SIGKILL -7 ...
    /// SIGTERM -11 ... SIGXFSZ -28; `Other(n)` is `n`.
    pub fn portable(self) -> i64 {
        match PORTABLE.iter().position(|(s, _)| *s == self) {
            Some(i) => -(i as i64 + 1),
            None => match self {
                Signal::Other(n) => i64::from(n),
                _ => unreachable!("every named signal is in PORTABLE"),
            },
        }
    }

    /// The signal with this portable number. A number outside -28..=-1 is
    /// `Other` (a host's number; saturated into `i32`).
    pub fn from_portable(n: i64) -> Signal {
        match usize::try_from(-n) {
            Ok(i @ 1..=28) => PORTABLE[i - 1].0,
            _ => Signal::Other(n.clamp(i64::from(i32::MIN), i64::from(i32::MAX)) as i32),
        }
    }

    /// `SIGKILL`, or `signal 42` for `Other(42)`.
    pub fn name(self) -> String {
        match PORTABLE.iter().find(|(s, _)| *s == self) {
            Some((_, name)) => format!("SIG{name}"),
            None => match self {
                Signal::Other(n) => format!("signal {n}"),
                _ => unreachable!("every named signal is in PORTABLE"),
            },
        }
    }

    /// Parses what [`Signal::name`] prints, plus the name without `SIG` and
    /// any letter case (`SIGKILL`, `KILL`, `kill`, `signal 42`).
    pub fn from_name(name: &str) -> Option<Signal> {
        let name = name.trim();
        if let Some(number) = name.strip_prefix("signal ") {
            return number.trim().parse().ok().map(Signal::Other);
        }
        let upper = name.to_ascii_uppercase();
        let bare = upper.strip_prefix("SIG").unwrap_or(&upper);
        PORTABLE.iter().find(|(_, n)| *n == bare).map(|(s, _)| *s)
    }
}

impl fmt::Display for Signal {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.name())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn portable_numbers_match_the_reference() {
        let expected = [
            (Signal::Abrt, -1),
            (Signal::Alrm, -2),
            (Signal::Fpe, -3),
            (Signal::Hup, -4),
            (Signal::Ill, -5),
            (Signal::Int, -6),
            (Signal::Kill, -7),
            (Signal::Pipe, -8),
            (Signal::Quit, -9),
            (Signal::Segv, -10),
            (Signal::Term, -11),
            (Signal::Usr1, -12),
            (Signal::Usr2, -13),
            (Signal::Chld, -14),
            (Signal::Cont, -15),
            (Signal::Stop, -16),
            (Signal::Tstp, -17),
            (Signal::Ttin, -18),
            (Signal::Ttou, -19),
            (Signal::Vtalrm, -20),
            (Signal::Prof, -21),
            (Signal::Bus, -22),
            (Signal::Poll, -23),
            (Signal::Sys, -24),
            (Signal::Trap, -25),
            (Signal::Urg, -26),
            (Signal::Xcpu, -27),
            (Signal::Xfsz, -28),
        ];
        for (signal, number) in expected {
            assert_eq!(signal.portable(), number, "{signal:?}");
            assert_eq!(Signal::from_portable(number), signal);
        }
    }

    #[test]
    fn every_number_round_trips() {
        for n in (-40..=70).chain([i64::from(i32::MIN), i64::from(i32::MAX)]) {
            assert_eq!(Signal::from_portable(n).portable(), n, "{n}");
        }
        for n in -28..=-1 {
            assert!(!matches!(Signal::from_portable(n), Signal::Other(_)), "{n}");
        }
        assert_eq!(Signal::from_portable(0), Signal::Other(0));
        assert_eq!(Signal::from_portable(-29), Signal::Other(-29));
        assert_eq!(Signal::from_portable(9), Signal::Other(9));
        assert_eq!(Signal::from_portable(i64::MAX), Signal::Other(i32::MAX));
    }

    #[test]
    fn names_round_trip() {
        for n in (-28..=-1).chain([1, 42, 64]) {
            let signal = Signal::from_portable(n);
            assert_eq!(Signal::from_name(&signal.name()), Some(signal), "{n}");
        }
        assert_eq!(Signal::Kill.name(), "SIGKILL");
        assert_eq!(Signal::Vtalrm.to_string(), "SIGVTALRM");
        assert_eq!(Signal::Other(42).name(), "signal 42");
        assert_eq!(Signal::from_name("TERM"), Some(Signal::Term));
        assert_eq!(Signal::from_name("sigusr1"), Some(Signal::Usr1));
        assert_eq!(Signal::from_name("SIGNOPE"), None);
        assert_eq!(Signal::from_name("signal x"), None);
    }

    #[test]
    fn variants_keep_their_bincode_index() {
        // Appending is fine; reordering would change these.
        let config = bincode::config::standard();
        let encode = |s: Signal| bincode::serde::encode_to_vec(s, config).unwrap();
        assert_eq!(encode(Signal::Abrt), [0]);
        assert_eq!(encode(Signal::Kill), [6]);
        assert_eq!(encode(Signal::Xfsz), [27]);
        assert_eq!(encode(Signal::Other(42)), [28, 84]);
    }
}
