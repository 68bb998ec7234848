//! `Immutable`: files made read-only for a test, even to root and to files already open (`chattr +i`), and made
//! writable again however the test ends (or its temp dir could not be removed). Shared by this suite's SQLite
//! fault tests and the server crate's `kill -9` test, which includes this file by path.

use std::path::PathBuf;
use std::process::Command;

pub struct Immutable(Vec<PathBuf>);

impl Immutable {
    /// Makes `files` immutable; None when that is not possible here (it needs root, and ext4, xfs or btrfs).
    pub fn new(files: Vec<PathBuf>) -> Option<Self> {
        chattr("+i", &files).then_some(Self(files))
    }
}

impl Drop for Immutable {
    fn drop(&mut self) {
        chattr("-i", &self.0);
    }
}

fn chattr(flag: &str, files: &[PathBuf]) -> bool {
    Command::new("chattr")
        .arg(flag)
        .args(files)
        .output()
        .is_ok_and(|o| o.status.success())
}
