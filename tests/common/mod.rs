//! Helpers shared by integration tests.

use std::path::Path;

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
