//! Arbitrary text into the trigger parser. A client's `schedule` and
//! `reschedule` carry a `Trigger::Cron(String)` that the server checks with
//! `Trigger::validate` and then evaluates with `Trigger::next_after` on every
//! scheduler pass, so the expression is peer input on the server.
//!
//! Invariants: nothing panics (the `cron` crate included); `Trigger::cron`,
//! `validate` and `from_str` agree; an accepted expression is stored trimmed
//! and validates again; its next run, when there is one, is strictly after
//! `now`, and asking again from that run gives a later one.

#![no_main]

use chrono::{DateTime, Utc};
use libfuzzer_sys::fuzz_target;
use protocol::trigger::Trigger;

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let cron = Trigger::cron(text);
    let wire = Trigger::Cron(text.to_owned());
    assert_eq!(
        cron.is_ok(),
        wire.validate().is_ok(),
        "cron and validate disagree on {text:?}"
    );
    let _ = text.parse::<Trigger>();
    let _ = Trigger::parse_period(text);

    let Ok(trigger) = cron else {
        return;
    };
    assert_eq!(trigger, Trigger::Cron(text.trim().to_owned()));
    assert!(trigger.validate().is_ok());
    let _ = trigger.to_string();

    // 2025-01-01T00:00:00Z, and a time near the end of the crate's range.
    for secs in [1_735_689_600, 4_102_444_000] {
        let now: DateTime<Utc> = DateTime::from_timestamp(secs, 0).expect("in range");
        if let Some(next) = trigger.next_after(now, now) {
            assert!(next > now, "{text:?}: next run {next} not after {now}");
            if let Some(after) = trigger.next_after(next, next) {
                assert!(after > next, "{text:?}: {after} not after {next}");
            }
        }
    }
});
