//! Fuzzes CCEL (TCG2 crypto-agile) event-log parsing, description and replay.
#![no_main]

use chrysalis_attestation::measure::eventlog::EventLog;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Ok(log) = EventLog::parse(data) {
        assert!(log.len <= data.len());
        let _ = log.replay();
        let _ = serde_json::to_string(&log).expect("a parsed log serializes");
    }
});
