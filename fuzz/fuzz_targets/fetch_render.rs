#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    estafette::imap::fuzzing::render_mail(data);
});
