//! Helpers shared by integration tests.

#![allow(dead_code)] // each test binary uses some of these

use std::path::Path;

/// The binary under test.
pub fn exe() -> &'static str {
    env!("CARGO_BIN_EXE_estafette")
}

/// A free TCP port on 127.0.0.1.
pub fn port() -> u16 {
    estafette::storage::local::free_port().unwrap()
}

/// Files under `dir` that contain `needle` (proves nothing plaintext
/// reached Garage's directories).
pub fn grep_dir(dir: &Path, needle: &[u8]) -> Vec<String> {
    let mut hits = vec![];
    let mut stack = vec![dir.to_owned()];
    while let Some(d) = stack.pop() {
        for e in std::fs::read_dir(&d).unwrap().flatten() {
            let p = e.path();
            if p.is_dir() {
                stack.push(p);
            } else if std::fs::read(&p).map(|b| b.windows(needle.len()).any(|w| w == needle)).unwrap_or(false) {
                hits.push(p.display().to_string());
            }
        }
    }
    hits
}
