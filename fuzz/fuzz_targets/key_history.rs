#![no_main]
libfuzzer_sys::fuzz_target!(|data: &[u8]| dsnode::fuzzing::key_history(data));
