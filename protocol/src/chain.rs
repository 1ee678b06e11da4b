//! [`Chain`]: an error and its causes on one line, for logs and for reasons
//! sent to a peer.
//!
//! Error types in builder follow one rule: a Display says what failed and
//! never repeats its source, because `main` prints the whole chain with
//! `{:#}`. Where an error is logged with tracing or becomes a one-line
//! reason outside anyhow, this wrapper prints the same chain.

use std::error::Error;
use std::fmt;

/// Displays an error followed by each of its causes, separated by `": "`
/// (the shape of anyhow's `{:#}`).
/// Generic over the error type so that it is `Send` wherever the error is
/// (it is often built inside async code).
pub struct Chain<'a, E: Error + ?Sized>(pub &'a E);

impl<E: Error + ?Sized> fmt::Display for Chain<'_, E> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.0)?;
        let mut cause = self.0.source();
        while let Some(e) = cause {
            write!(f, ": {e}")?;
            cause = e.source();
        }
        Ok(())
    }
}

/// The chain as a quoted string, so that `error = ?Chain(&e)` is how a
/// log line carries an error: whole, and one logfmt value however many
/// spaces it holds. This is the one way errors are logged in builder.
impl<E: Error + ?Sized> fmt::Debug for Chain<'_, E> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Debug::fmt(&self.to_string(), f)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Debug, thiserror::Error)]
    #[error("cannot read token file /x")]
    struct Outer(#[source] std::io::Error);

    #[test]
    fn each_cause_once_in_order() {
        let e = Outer(std::io::Error::other("denied"));
        assert_eq!(Chain(&e).to_string(), "cannot read token file /x: denied");
        assert_eq!(
            format!("{:?}", Chain(&e)),
            "\"cannot read token file /x: denied\""
        );
    }
}
