#![no_main]
//! See `arena_gameserver::fuzzing::session`.

libfuzzer_sys::fuzz_target!(|data: &[u8]| arena_gameserver::fuzzing::session(data));
