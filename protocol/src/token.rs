//! Token files and the `BUILDER_TOKEN` variable: the one reader that the
//! server (`--client-token-file`, `--worker-token-file`), the client and the
//! worker (`--token-file`) share, so that a file one accepts the others
//! accept too.
//!
//! The rule (SPEC §6): the token is on the file's first line and
//! surrounding whitespace is ignored. Blank lines before the token count as
//! surrounding whitespace, so the token is the first line that is not blank;
//! later lines are ignored (room for a comment). This is the most lenient
//! of the readers this one replaces (the worker's), so no token file that
//! worked before stops working. A file that holds no token at all, or that
//! cannot be read, is an error naming the file: an empty token would
//! silently turn authentication off.

use std::io;
use std::path::{Path, PathBuf};

/// The environment variable a client or worker takes its token from when it
/// is given no `--token-file`.
pub const TOKEN_ENV: &str = "BUILDER_TOKEN";

/// Why a token file gave no token.
#[derive(Debug, thiserror::Error)]
pub enum TokenError {
    /// The file could not be read (missing, unreadable, not UTF-8).
    #[error("cannot read token file {}", path.display())]
    Read {
        /// The file.
        path: PathBuf,
        /// Why.
        #[source]
        source: io::Error,
    },
    /// The file is empty or holds only whitespace.
    #[error("token file {} holds no token (it is empty or blank)", path.display())]
    Empty {
        /// The file.
        path: PathBuf,
    },
}

/// The token in a token file's text: its first non-blank line, trimmed.
pub fn parse_token(text: &str) -> Option<&str> {
    let token = text.trim_start().lines().next()?.trim();
    (!token.is_empty()).then_some(token)
}

/// Reads the token from `path`.
///
/// # Errors
///
/// [`TokenError::Read`] if the file cannot be read, [`TokenError::Empty`] if
/// it holds no token.
pub fn read_token_file(path: &Path) -> Result<String, TokenError> {
    let text = std::fs::read_to_string(path).map_err(|source| TokenError::Read {
        path: path.to_owned(),
        source,
    })?;
    parse_token(&text)
        .map(str::to_owned)
        .ok_or_else(|| TokenError::Empty {
            path: path.to_owned(),
        })
}

/// The token a client or worker presents: from `token_file` if given, else
/// from [`TOKEN_ENV`] if it is set and not blank, else none.
///
/// # Errors
///
/// As [`read_token_file`] when a file is given.
pub fn load_token(token_file: Option<&Path>) -> Result<Option<String>, TokenError> {
    match token_file {
        Some(path) => read_token_file(path).map(Some),
        None => Ok(std::env::var(TOKEN_ENV)
            .ok()
            .as_deref()
            .and_then(parse_token)
            .map(str::to_owned)),
    }
}

/// What a client or worker adds to a server's refusal of a hello that
/// carried no token, so the user learns how to give one; `None` when a
/// token was sent or the refusal is about something else.
pub fn refusal_hint(reason: &str, token_sent: bool) -> Option<String> {
    (!token_sent && reason.contains("token")).then(|| {
        format!("this server requires a token: give it with --token-file FILE or the {TOKEN_ENV} variable")
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_token_is_the_first_non_blank_line_trimmed() {
        assert_eq!(parse_token("secret\n"), Some("secret"));
        assert_eq!(parse_token("secret"), Some("secret"));
        assert_eq!(parse_token("  secret \t\r\nother line\n"), Some("secret"));
        assert_eq!(parse_token("\n\n  secret\nother\n"), Some("secret"));
        assert_eq!(parse_token("a b\n"), Some("a b"));
        assert_eq!(parse_token(""), None);
        assert_eq!(parse_token(" \n\t\n"), None);
    }

    #[test]
    fn files_name_themselves_in_errors() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("token");
        std::fs::write(&path, "\n  s3cret  \nsecond line\n").unwrap();
        assert_eq!(read_token_file(&path).unwrap(), "s3cret");

        std::fs::write(&path, " \n\n").unwrap();
        let err = read_token_file(&path).unwrap_err();
        assert!(matches!(err, TokenError::Empty { .. }));
        assert_eq!(
            err.to_string(),
            format!(
                "token file {} holds no token (it is empty or blank)",
                path.display()
            )
        );

        let missing = dir.path().join("missing");
        let err = read_token_file(&missing).unwrap_err();
        assert_eq!(
            err.to_string(),
            format!("cannot read token file {}", missing.display())
        );
        // The cause is the source, not repeated in the message.
        let source = std::error::Error::source(&err).unwrap().to_string();
        assert!(!err.to_string().contains(&source), "{err}: {source}");

        std::fs::write(&path, b"\xff\xfe\n").unwrap();
        assert!(matches!(
            read_token_file(&path),
            Err(TokenError::Read { .. })
        ));
    }

    #[test]
    fn a_refused_missing_token_says_how_to_give_one() {
        let hint = refusal_hint("a token is required", false).unwrap();
        assert!(hint.contains("--token-file") && hint.contains("BUILDER_TOKEN"));
        assert_eq!(refusal_hint("bad token", true), None);
        assert_eq!(refusal_hint("platform x is dropped", false), None);
    }

    #[test]
    fn a_file_wins_over_the_environment() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("token");
        std::fs::write(&path, "from-file\n").unwrap();
        // The variable is not touched here (tests run in parallel); a file
        // given is read whatever the environment holds.
        assert_eq!(
            load_token(Some(&path)).unwrap().as_deref(),
            Some("from-file")
        );
    }
}
