//! orb-build templates: `CONFIG/orb-build.template.<platform>`, with
//! `%%OPAM_PACKAGE%%` and `%%PLATFORM%%` replaced.
//!
//! The directory is read whenever an orb job is queued, so a changed, added
//! or removed template takes effect without a restart. A platform that has
//! workers but no template is warned about once, not on every request.

use std::collections::HashSet;
use std::io;
use std::path::{Path, PathBuf};
use std::sync::Mutex;

const PREFIX: &str = "orb-build.template.";

/// The orb-build templates of a config directory.
pub struct Templates {
    dir: PathBuf,
    warned: Mutex<HashSet<String>>,
}

impl Templates {
    /// Templates in `dir` (which need not exist).
    pub fn new(dir: &Path) -> Templates {
        Templates {
            dir: dir.to_owned(),
            warned: Mutex::new(HashSet::new()),
        }
    }

    /// The template directory.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// Every platform that has a template, with the script for `package`.
    /// Unreadable template files are logged and skipped.
    pub fn render_all(&self, package: &str) -> Vec<(String, String)> {
        let entries = match std::fs::read_dir(&self.dir) {
            Ok(entries) => entries,
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Vec::new(),
            Err(e) => {
                tracing::error!(dir = ?self.dir.display(), error = ?protocol::Chain(&e), "cannot read the orb-build template directory");
                return Vec::new();
            }
        };
        let mut platforms: Vec<String> = entries
            .filter_map(|e| e.ok())
            .filter_map(|e| {
                e.file_name()
                    .to_str()?
                    .strip_prefix(PREFIX)
                    .map(str::to_owned)
            })
            .filter(|p| valid_platform(p))
            .collect();
        platforms.sort();
        platforms
            .into_iter()
            .filter_map(|p| self.render(&p, package).map(|s| (p, s)))
            .collect()
    }

    /// The script for `package` on `platform`, if it has a readable template.
    pub fn render(&self, platform: &str, package: &str) -> Option<String> {
        if !valid_platform(platform) {
            return None;
        }
        let path = self.dir.join(format!("{PREFIX}{platform}"));
        match std::fs::read_to_string(&path) {
            Ok(template) => Some(
                template
                    .replace("%%OPAM_PACKAGE%%", package)
                    .replace("%%PLATFORM%%", platform),
            ),
            Err(e) => {
                if e.kind() != io::ErrorKind::NotFound {
                    tracing::error!(template = ?path.display(), error = ?protocol::Chain(&e), "cannot read orb-build template");
                }
                None
            }
        }
    }

    /// Warns (once per platform for the server's lifetime) that `platform`
    /// has workers but no template, so orb jobs never run there.
    pub fn warn_missing(&self, platform: &str) {
        if self.render(platform, "").is_some() {
            return;
        }
        let mut warned = self.warned.lock().unwrap_or_else(|e| e.into_inner());
        if warned.insert(platform.to_owned()) {
            tracing::warn!(
                platform,
                template = ?self.dir.join(format!("{PREFIX}{platform}")).display(),
                "no orb-build template for this platform: orb-build jobs are not queued for it"
            );
        }
    }
}

/// Platform names become file names: no separators, no dot files.
pub fn valid_platform(p: &str) -> bool {
    !p.is_empty()
        && p.len() <= 128
        && !p.starts_with('.')
        && p.bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"-_.+".contains(&b))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn renders_every_platform_and_rereads_changes() {
        let dir = tempfile::tempdir().unwrap();
        let t = Templates::new(dir.path());
        assert!(t.render_all("pkg").is_empty());
        std::fs::write(
            dir.path().join("orb-build.template.debian-12"),
            "build %%OPAM_PACKAGE%% on %%PLATFORM%%\n",
        )
        .unwrap();
        std::fs::write(
            dir.path().join("orb-build.template.freebsd-14"),
            "x %%OPAM_PACKAGE%%",
        )
        .unwrap();
        std::fs::write(dir.path().join("unrelated"), "").unwrap();
        assert_eq!(
            t.render_all("solo5"),
            vec![
                (
                    "debian-12".to_owned(),
                    "build solo5 on debian-12\n".to_owned()
                ),
                ("freebsd-14".to_owned(), "x solo5".to_owned())
            ]
        );
        std::fs::write(dir.path().join("orb-build.template.freebsd-14"), "y").unwrap();
        assert_eq!(t.render("freebsd-14", "p").as_deref(), Some("y"));
        assert_eq!(t.render("../etc", "p"), None);
    }
}
