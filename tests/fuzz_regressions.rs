//! Inputs the fuzz targets (fuzz/) once crashed on, replayed on every
//! test run so the fixes stay fixed. A file `<target>-<id>` in
//! tests/fuzz_regressions/ is fed to that target's entry point.

use estafette::imap::fuzzing;

fn replay(target: &str, run: fn(&[u8])) -> usize {
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fuzz_regressions");
    let mut n = 0;
    for e in std::fs::read_dir(&dir).unwrap().flatten() {
        if e.file_name().to_string_lossy().starts_with(&format!("{target}-")) {
            run(&std::fs::read(e.path()).unwrap());
            n += 1;
        }
    }
    n
}

#[test]
fn fetch_render_inputs_that_once_crashed() {
    assert!(replay("fetch_render", fuzzing::render_mail) > 0);
}

#[test]
fn imap_command_inputs_that_once_crashed() {
    replay("imap_command", fuzzing::command);
}
