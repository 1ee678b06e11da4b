//! Which job and platform names the server accepts, for every way one
//! arrives: a client's request ([`crate::client`]) and the reference
//! server's state file ([`crate::legacy::import`]). Job names become
//! directories under the state directory, platform names become parts of
//! file names (templates), so both are checked before anything is stored.

use crate::templates::valid_platform;

/// Job names become directory names under the state directory.
pub fn check_job_name(name: &str) -> Result<(), String> {
    if name.is_empty()
        || name.len() > 255
        || name.starts_with('.')
        || name.contains(['/', '\0'])
        || name.chars().any(char::is_control)
    {
        return Err(format!(
            "invalid job name {name:?}: it must be 1 to 255 bytes, not start with '.', and contain no '/' or control characters"
        ));
    }
    Ok(())
}

/// Platform names become file names (templates).
pub fn check_platform(platform: &str) -> Result<(), String> {
    if valid_platform(platform) {
        Ok(())
    } else {
        Err(format!(
            "invalid platform name {platform:?}: use letters, digits and - _ . +"
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_that_would_escape_the_state_directory_are_refused() {
        for bad in [
            "",
            ".",
            "..",
            ".hidden",
            "a/b",
            "a\0b",
            "a\nb",
            &"x".repeat(256),
        ] {
            assert!(check_job_name(bad).is_err(), "{bad:?}");
        }
        for good in ["hello", "a.b", "x".repeat(255).as_str(), "ümlaut job"] {
            assert!(check_job_name(good).is_ok(), "{good:?}");
        }
        assert!(check_platform("debian-12").is_ok());
        let e = check_platform("../etc").unwrap_err();
        assert!(e.contains("letters, digits"), "{e}");
    }
}
