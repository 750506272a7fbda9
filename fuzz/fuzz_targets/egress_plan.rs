#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| overlayd::fuzz_targets::egress_plan(data));
