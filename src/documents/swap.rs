//! An in-place restore's documents: the set is restored into a directory beside the live
//! site (`<root>/_restoring-<token>`), and only once it is complete are the live entries
//! exchanged for the restored ones by rename, the live ones moved aside into
//! `<root>/_previous-<token>` (kept for a rollback, which [`swap_back`] does). Nothing of
//! the live site is removed or overwritten: a restore that fails before the exchange leaves
//! it as it was.
//!
//! The names start with `_`, which OpenEMR refuses in a site id (`[A-Za-z0-9.-]` only,
//! checked in its `interface/globals.php`): neither directory can be reached as a site
//! through `?site=` or the Host header.
//!
//! Each stage leaves a mark, so a pod retried at any point resumes: `.complete` in the
//! restoring directory once the set and its `sqlconf.php` are in it (its content the
//! restore's summary), then `.swapped` in the previous directory once every entry is
//! exchanged. A rename is atomic; between the two renames of one entry, the entry is in
//! neither place at the root, which the next run recognises and finishes.

use std::path::{Path, PathBuf};

/// The directory a set is restored into before the exchange.
pub fn restoring_dir(root: &Path, token: &str) -> PathBuf {
    root.join(format!("_restoring-{token}"))
}

/// The directory the replaced entries are kept in.
pub fn previous_dir(root: &Path, token: &str) -> PathBuf {
    root.join(format!("_previous-{token}"))
}

/// The name of [`previous_dir`] under the root (what the restore's status names).
pub fn previous_name(token: &str) -> String {
    format!("_previous-{token}")
}

/// Whether a top-level entry of `sites/` is one of a restore's own directories (not a
/// site; a backup leaves it out).
pub fn is_restore_dir(name: &str) -> bool {
    ["_restoring-", "_previous-", "_rolled-back-"]
        .iter()
        .any(|prefix| name.starts_with(prefix))
}

const COMPLETE: &str = ".complete";
const SWAPPED: &str = ".swapped";

/// The summary recorded by an earlier run once everything was exchanged.
pub fn already_swapped(root: &Path, token: &str) -> Option<String> {
    std::fs::read_to_string(previous_dir(root, token).join(SWAPPED)).ok()
}

/// The summary recorded once the set was complete in the restoring directory.
pub fn restored_complete(root: &Path, token: &str) -> Option<String> {
    std::fs::read_to_string(restoring_dir(root, token).join(COMPLETE)).ok()
}

/// Marks the restoring directory complete, with `summary`.
pub fn mark_complete(root: &Path, token: &str, summary: &str) -> Result<(), String> {
    let path = restoring_dir(root, token).join(COMPLETE);
    std::fs::write(&path, summary).map_err(|e| format!("{}: {e}", path.display()))
}

fn entries(dir: &Path) -> Result<Vec<std::ffi::OsString>, String> {
    let mut names = Vec::new();
    for entry in std::fs::read_dir(dir).map_err(|e| format!("{}: {e}", dir.display()))? {
        let name = entry
            .map_err(|e| format!("{}: {e}", dir.display()))?
            .file_name();
        if name != COMPLETE {
            names.push(name);
        }
    }
    names.sort();
    Ok(names)
}

fn rename(from: &Path, to: &Path) -> Result<(), String> {
    std::fs::rename(from, to)
        .map_err(|e| format!("moving {} to {}: {e}", from.display(), to.display()))
}

/// Exchanges each entry of the complete restoring directory with the root's entry of that
/// name (moved into the previous directory), records `summary` as done, and removes the
/// emptied restoring directory. Entries of the root the set does not have stay.
pub fn swap(root: &Path, token: &str, summary: &str) -> Result<(), String> {
    let restoring = restoring_dir(root, token);
    let previous = previous_dir(root, token);
    if restored_complete(root, token).is_none() {
        return Err(format!(
            "{} is not complete: nothing is exchanged",
            restoring.display()
        ));
    }
    std::fs::create_dir_all(&previous).map_err(|e| format!("{}: {e}", previous.display()))?;
    for name in entries(&restoring)? {
        let live = root.join(&name);
        let kept = previous.join(&name);
        let live_exists = std::fs::symlink_metadata(&live).is_ok();
        let kept_exists = std::fs::symlink_metadata(&kept).is_ok();
        match (live_exists, kept_exists) {
            (true, false) => rename(&live, &kept)?,
            // Moved aside by an earlier run that stopped before moving the restored one in.
            (false, true) | (false, false) => {}
            (true, true) => {
                return Err(format!(
                    "{} and {} both exist while {} is still to be moved in: someone changed the site during the restore; nothing more is moved",
                    live.display(),
                    kept.display(),
                    restoring.join(&name).display()
                ));
            }
        }
        rename(&restoring.join(&name), &live)?;
    }
    let done = previous.join(SWAPPED);
    std::fs::write(&done, summary).map_err(|e| format!("{}: {e}", done.display()))?;
    std::fs::remove_dir_all(&restoring).map_err(|e| format!("{}: {e}", restoring.display()))
}

/// Undoes [`swap`]: each kept entry goes back to the root, the restored one it replaced
/// moved into `_rolled-back-<token>` (kept, not deleted: it is what was restored). Returns
/// how many entries went back. Done once the previous directory holds nothing but its mark.
pub fn swap_back(root: &Path, token: &str) -> Result<usize, String> {
    let previous = previous_dir(root, token);
    let rolled_back = rolled_back_dir(root, token);
    if !previous.exists() {
        return Ok(0);
    }
    std::fs::create_dir_all(&rolled_back).map_err(|e| format!("{}: {e}", rolled_back.display()))?;
    let mut moved = 0;
    for name in entries(&previous)?.into_iter().filter(|n| n != SWAPPED) {
        let live = root.join(&name);
        let aside = rolled_back.join(&name);
        if std::fs::symlink_metadata(&live).is_ok() {
            if std::fs::symlink_metadata(&aside).is_ok() {
                return Err(format!(
                    "{} and {} both exist: nothing more is moved",
                    live.display(),
                    aside.display()
                ));
            }
            rename(&live, &aside)?;
        }
        rename(&previous.join(&name), &live)?;
        moved += 1;
    }
    std::fs::remove_dir_all(&previous).map_err(|e| format!("{}: {e}", previous.display()))?;
    Ok(moved)
}

/// Deletes what a restore kept once it is no longer wanted (`keepPreviousFor` has
/// passed): the replaced entries, only from a directory whose exchange completed (its
/// `.swapped` mark), so a half-done exchange is never lost; after a rollback, the restored
/// entries it moved aside; a restored copy that was never exchanged. Returns whether there
/// was anything to delete.
pub fn discard_previous(root: &Path, token: &str) -> Result<bool, String> {
    let previous = previous_dir(root, token);
    let rolled_back = rolled_back_dir(root, token);
    let mut deleted = false;
    if previous.exists() {
        if already_swapped(root, token).is_none() {
            return Err(format!(
                "{} has no record of a completed exchange: it is left as it is",
                previous.display()
            ));
        }
        std::fs::remove_dir_all(&previous).map_err(|e| format!("{}: {e}", previous.display()))?;
        deleted = true;
    }
    // A restore that stopped before its exchange leaves its restored copy beside the site.
    for dir in [rolled_back, restoring_dir(root, token)] {
        if dir.exists() {
            std::fs::remove_dir_all(&dir).map_err(|e| format!("{}: {e}", dir.display()))?;
            deleted = true;
        }
    }
    Ok(deleted)
}

/// Where a rollback moves the restored entries it replaces.
pub fn rolled_back_dir(root: &Path, token: &str) -> PathBuf {
    root.join(format!("_rolled-back-{token}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A directory of its own for one test, removed when dropped.
    struct Scratch(PathBuf);

    impl Scratch {
        fn new(name: &str) -> Scratch {
            let dir = std::env::temp_dir().join(format!("oe-swap-{}-{name}", std::process::id()));
            let _ = std::fs::remove_dir_all(&dir);
            std::fs::create_dir_all(&dir).unwrap();
            Scratch(dir)
        }

        fn path(&self) -> &Path {
            &self.0
        }
    }

    impl Drop for Scratch {
        fn drop(&mut self) {
            let _ = std::fs::remove_dir_all(&self.0);
        }
    }

    fn tree(root: &Path, files: &[(&str, &str)]) {
        for (path, text) in files {
            let path = root.join(path);
            std::fs::create_dir_all(path.parent().unwrap()).unwrap();
            std::fs::write(path, text).unwrap();
        }
    }

    fn read(path: PathBuf) -> String {
        std::fs::read_to_string(path).unwrap()
    }

    #[test]
    fn the_restored_site_replaces_the_live_one_which_is_kept_aside_and_comes_back_on_rollback() {
        let root = Scratch::new("replace");
        let root = root.path();
        tree(
            root,
            &[("default/sqlconf.php", "live"), ("other/x", "kept")],
        );
        let restoring = restoring_dir(root, "t1");
        tree(&restoring, &[("default/sqlconf.php", "restored")]);
        assert!(swap(root, "t1", "{}").is_err(), "not complete: refused");
        assert_eq!(read(root.join("default/sqlconf.php")), "live");

        mark_complete(root, "t1", "{\"files\":1}").unwrap();
        swap(root, "t1", "{\"files\":1}").unwrap();
        assert_eq!(read(root.join("default/sqlconf.php")), "restored");
        assert_eq!(
            read(previous_dir(root, "t1").join("default/sqlconf.php")),
            "live"
        );
        assert_eq!(
            read(root.join("other/x")),
            "kept",
            "an entry the set lacks stays"
        );
        assert!(!restoring.exists());
        assert_eq!(
            already_swapped(root, "t1").as_deref(),
            Some("{\"files\":1}")
        );

        assert_eq!(swap_back(root, "t1").unwrap(), 1);
        assert_eq!(read(root.join("default/sqlconf.php")), "live");
        assert_eq!(
            read(root.join("_rolled-back-t1/default/sqlconf.php")),
            "restored"
        );
        assert!(!previous_dir(root, "t1").exists());
        assert_eq!(swap_back(root, "t1").unwrap(), 0, "twice is once");
    }

    #[test]
    fn only_a_completed_exchange_is_discarded() {
        let root = Scratch::new("discard");
        let root = root.path();
        tree(root, &[("default/f", "live")]);
        tree(&restoring_dir(root, "t"), &[("default/f", "restored")]);
        tree(&previous_dir(root, "t"), &[("other/f", "half-moved")]);
        assert!(discard_previous(root, "t").is_err(), "no mark: kept");
        assert!(previous_dir(root, "t").join("other/f").exists());
        std::fs::remove_dir_all(previous_dir(root, "t")).unwrap();
        mark_complete(root, "t", "s").unwrap();
        swap(root, "t", "s").unwrap();
        assert!(discard_previous(root, "t").unwrap());
        assert!(!previous_dir(root, "t").exists());
        assert_eq!(read(root.join("default/f")), "restored");
        assert!(!discard_previous(root, "t").unwrap(), "twice is once");
        // After a rollback: the restored entries moved aside go.
        tree(&rolled_back_dir(root, "t"), &[("default/f", "restored")]);
        assert!(discard_previous(root, "t").unwrap());
        assert!(!rolled_back_dir(root, "t").exists());
        assert_eq!(read(root.join("default/f")), "restored");
        // A copy restored beside the site and never exchanged goes too.
        tree(
            &restoring_dir(root, "t"),
            &[("default/f", "never exchanged")],
        );
        assert!(discard_previous(root, "t").unwrap());
        assert!(!restoring_dir(root, "t").exists());
        assert_eq!(read(root.join("default/f")), "restored");
    }

    #[test]
    fn a_swap_stopped_between_its_two_renames_is_finished_by_the_next_run() {
        let root = Scratch::new("resume");
        let root = root.path();
        tree(root, &[("a/f", "live a"), ("b/f", "live b")]);
        tree(
            &restoring_dir(root, "t"),
            &[("a/f", "restored a"), ("b/f", "restored b")],
        );
        mark_complete(root, "t", "s").unwrap();
        // What a run killed after moving `a` aside leaves.
        std::fs::create_dir_all(previous_dir(root, "t")).unwrap();
        std::fs::rename(root.join("a"), previous_dir(root, "t").join("a")).unwrap();
        swap(root, "t", "s").unwrap();
        assert_eq!(read(root.join("a/f")), "restored a");
        assert_eq!(read(root.join("b/f")), "restored b");
        assert_eq!(read(previous_dir(root, "t").join("a/f")), "live a");
        assert_eq!(read(previous_dir(root, "t").join("b/f")), "live b");
    }

    #[test]
    fn a_site_changed_under_the_swap_stops_it_without_losing_anything() {
        let root = Scratch::new("changed");
        let root = root.path();
        tree(root, &[("a/f", "live")]);
        tree(&restoring_dir(root, "t"), &[("a/f", "restored")]);
        tree(&previous_dir(root, "t"), &[("a/f", "aside")]);
        mark_complete(root, "t", "s").unwrap();
        let e = swap(root, "t", "s").unwrap_err();
        assert!(e.contains("someone changed the site"), "{e}");
        assert_eq!(read(root.join("a/f")), "live");
        assert_eq!(read(restoring_dir(root, "t").join("a/f")), "restored");
        assert_eq!(read(previous_dir(root, "t").join("a/f")), "aside");
    }

    #[test]
    fn restore_dirs_are_not_site_ids() {
        let site_id = |s: &str| {
            s.chars()
                .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '.')
        };
        for name in [
            previous_name("abc"),
            "_restoring-abc".into(),
            "_rolled-back-abc".into(),
        ] {
            assert!(is_restore_dir(&name));
            assert!(!site_id(&name), "{name} would be a site id");
        }
        assert!(!is_restore_dir("default"));
    }
}
