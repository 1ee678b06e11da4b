//! Host signals (`nix`) to wire signals ([`protocol::signal::Signal`]).
//!
//! Signals cross the wire as a protocol enum; only the worker knows the host's
//! numbering, so the mapping lives here. A signal the protocol has no name for
//! travels as `Other(host number)`.

use nix::sys::signal::Signal as Host;
use protocol::signal::Signal as Wire;

/// The wire name of a host signal.
pub fn to_wire(sig: Host) -> Wire {
    match sig {
        Host::SIGABRT => Wire::Abrt,
        Host::SIGALRM => Wire::Alrm,
        Host::SIGFPE => Wire::Fpe,
        Host::SIGHUP => Wire::Hup,
        Host::SIGILL => Wire::Ill,
        Host::SIGINT => Wire::Int,
        Host::SIGKILL => Wire::Kill,
        Host::SIGPIPE => Wire::Pipe,
        Host::SIGQUIT => Wire::Quit,
        Host::SIGSEGV => Wire::Segv,
        Host::SIGTERM => Wire::Term,
        Host::SIGUSR1 => Wire::Usr1,
        Host::SIGUSR2 => Wire::Usr2,
        Host::SIGCHLD => Wire::Chld,
        Host::SIGCONT => Wire::Cont,
        Host::SIGSTOP => Wire::Stop,
        Host::SIGTSTP => Wire::Tstp,
        Host::SIGTTIN => Wire::Ttin,
        Host::SIGTTOU => Wire::Ttou,
        Host::SIGVTALRM => Wire::Vtalrm,
        Host::SIGPROF => Wire::Prof,
        Host::SIGBUS => Wire::Bus,
        // SIGPOLL is SIGIO on Linux. Hosts without SIGPOLL (the BSDs) send
        // SIGIO as `Other`, as the reference did.
        #[cfg(any(target_os = "linux", target_os = "android"))]
        Host::SIGIO => Wire::Poll,
        Host::SIGSYS => Wire::Sys,
        Host::SIGTRAP => Wire::Trap,
        Host::SIGURG => Wire::Urg,
        Host::SIGXCPU => Wire::Xcpu,
        Host::SIGXFSZ => Wire::Xfsz,
        other => Wire::Other(other as i32),
    }
}

/// The wire name of a host signal number (as in a wait status).
pub fn from_host_number(n: i32) -> Wire {
    match Host::try_from(n) {
        Ok(sig) => to_wire(sig),
        Err(_) => Wire::Other(n),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn named_signals_map_to_their_wire_names() {
        let cases = [
            (Host::SIGABRT, Wire::Abrt),
            (Host::SIGALRM, Wire::Alrm),
            (Host::SIGFPE, Wire::Fpe),
            (Host::SIGHUP, Wire::Hup),
            (Host::SIGILL, Wire::Ill),
            (Host::SIGINT, Wire::Int),
            (Host::SIGKILL, Wire::Kill),
            (Host::SIGPIPE, Wire::Pipe),
            (Host::SIGQUIT, Wire::Quit),
            (Host::SIGSEGV, Wire::Segv),
            (Host::SIGTERM, Wire::Term),
            (Host::SIGUSR1, Wire::Usr1),
            (Host::SIGUSR2, Wire::Usr2),
            (Host::SIGCHLD, Wire::Chld),
            (Host::SIGCONT, Wire::Cont),
            (Host::SIGSTOP, Wire::Stop),
            (Host::SIGTSTP, Wire::Tstp),
            (Host::SIGTTIN, Wire::Ttin),
            (Host::SIGTTOU, Wire::Ttou),
            (Host::SIGVTALRM, Wire::Vtalrm),
            (Host::SIGPROF, Wire::Prof),
            (Host::SIGBUS, Wire::Bus),
            (Host::SIGSYS, Wire::Sys),
            (Host::SIGTRAP, Wire::Trap),
            (Host::SIGURG, Wire::Urg),
            (Host::SIGXCPU, Wire::Xcpu),
            (Host::SIGXFSZ, Wire::Xfsz),
        ];
        for (host, wire) in cases {
            assert_eq!(to_wire(host), wire, "{host:?}");
            assert_eq!(from_host_number(host as i32), wire, "{host:?}");
        }
    }

    #[test]
    fn host_numbers_are_the_libc_ones() {
        assert_eq!(from_host_number(9), Wire::Kill);
        assert_eq!(from_host_number(15), Wire::Term);
        assert_eq!(from_host_number(2), Wire::Int);
    }

    #[cfg(any(target_os = "linux", target_os = "android"))]
    #[test]
    fn sigio_is_sigpoll_on_linux() {
        assert_eq!(to_wire(Host::SIGIO), Wire::Poll);
    }

    #[test]
    fn signals_without_a_wire_name_keep_their_host_number() {
        assert_eq!(to_wire(Host::SIGWINCH), Wire::Other(Host::SIGWINCH as i32));
        // A real-time signal and nonsense numbers are not nix signals at all.
        assert_eq!(from_host_number(40), Wire::Other(40));
        assert_eq!(from_host_number(0), Wire::Other(0));
        assert_eq!(from_host_number(-3), Wire::Other(-3));
    }
}
