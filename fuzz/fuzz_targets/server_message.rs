#![no_main]
//! See `arena_gameserver::fuzzing::server_message`.

libfuzzer_sys::fuzz_target!(|data: &[u8]| arena_gameserver::fuzzing::server_message(data));
