//! When a scheduled job runs: a fixed period, or a cron expression.
//!
//! # Periods
//!
//! `hourly`, `daily` and `weekly` are exact durations (3600 s, 86400 s,
//! 7 × 86400 s) in UTC; there is no daylight saving time. Runs keep their
//! phase: [`Trigger::next_after`] returns `anchor + k * period` for the
//! smallest `k >= 1` that is strictly after `now`, where `anchor` is the job's
//! previous *scheduled* run time. A daily job first scheduled at 03:00 stays at
//! 03:00 however late it actually ran, and a job that missed many runs (server
//! down for a month) gets just the next slot in phase, computed in O(1). `never`
//! has no next run.
//!
//! # Cron expressions
//!
//! [`Trigger::cron`] accepts three forms, all evaluated in UTC:
//!
//! - **Classic 5-field crontab**, `min hour dom month dow`, with the semantics
//!   of Vixie cron (what cronie on Linux and cron on FreeBSD run):
//!   - each field is a list (`a,b,c`) of `*`, a value, or a range `a-b`, each
//!     optionally with a step: `*/15`, `1-30/5`, and `a/n` meaning `a-max/n`
//!     (cronie's extension). Ranges must not go backwards. `?` is accepted as
//!     `*` in the two day fields.
//!   - month: `1`-`12` or names `jan`..`dec`; day of week: `0`-`7` where `0`
//!     **and `7` are Sunday**, `1` Monday … `6` Saturday, or names `sun`..`sat`.
//!     Names may be three letters or in full, in any case. `*` in the day of
//!     week field means `0-7`, so `*/2` is Sunday, Tuesday, Thursday, Saturday.
//!   - day of month and day of week: when **both** are restricted (neither
//!     field starts with `*` or `?`), a day matches if **either** matches, so
//!     `0 0 13 * 5` fires every Friday and every 13th. Otherwise both must
//!     match. As in Vixie cron a field counts as unrestricted when it starts
//!     with `*`, so `*/2` in the day of month field is ANDed with the day of
//!     week.
//!   - an expression whose day of month never occurs in its months
//!     (`0 0 30 2 *`) is rejected instead of silently never running.
//!
//!   Implementation: the fields are parsed here into sets of values and handed
//!   to the `cron` crate as explicit lists in its 6-field form (second 0). The
//!   crate numbers days of the week 1 = Sunday … 7 = Saturday and rejects 0,
//!   and it ANDs day of month and day of week; so the day of week set is
//!   shifted by one, and for the OR rule two schedules are built (day of month
//!   only, day of week only) and the earlier next time wins.
//! - **Macros**: `@hourly`, `@daily` (or `@midnight`), `@weekly` (Sunday
//!   00:00), `@monthly`, `@yearly` (or `@annually`), in any case, expanded to
//!   their 5-field equivalents. `@reboot` is not supported.
//! - **The `cron` crate's native form**, 6 or 7 fields
//!   `sec min hour dom month dow [year]`, passed to the crate unchanged and
//!   with its semantics: days of week 1 = Sunday … 7 = Saturday, day of month
//!   and day of week ANDed, years 1970-2100.
//!
//! The expression is stored as the operator wrote it (trimmed), so `info`
//! shows it unchanged; it is parsed again whenever a next run is computed.
//! The `cron` crate computes no run after the year 2100.

use std::fmt;
use std::str::FromStr;

use chrono::{DateTime, Duration, Utc};
use serde::{Deserialize, Serialize};

/// When a scheduled job runs. Crosses the wire (bincode 2 via serde): only
/// append variants.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq, Default)]
pub enum Trigger {
    /// Every 3600 s, in phase with the previous scheduled run.
    Hourly,
    /// Every 86400 s, in phase with the previous scheduled run.
    #[default]
    Daily,
    /// Every 7 × 86400 s, in phase with the previous scheduled run.
    Weekly,
    /// Only when scheduled and on `execute`.
    Never,
    /// A cron expression as the operator wrote it (see the module docs).
    /// Build it with [`Trigger::cron`], which validates it.
    Cron(String),
}

/// Why a trigger could not be parsed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TriggerError {
    /// Not one of the period names.
    #[error("unknown period '{0}': expected hourly, daily, weekly or never")]
    UnknownPeriod(String),
    /// A cron expression that does not parse, or never fires.
    #[error("invalid cron expression '{expr}': {reason}")]
    InvalidCron {
        /// The expression as given (trimmed).
        expr: String,
        /// What is wrong with it.
        reason: String,
    },
}

impl Trigger {
    /// Parses a period name: `hourly`, `daily`, `weekly` or `never`, in any
    /// case.
    ///
    /// # Errors
    ///
    /// [`TriggerError::UnknownPeriod`] for anything else.
    pub fn parse_period(s: &str) -> Result<Trigger, TriggerError> {
        let s = s.trim();
        match s.to_ascii_lowercase().as_str() {
            "hourly" => Ok(Trigger::Hourly),
            "daily" => Ok(Trigger::Daily),
            "weekly" => Ok(Trigger::Weekly),
            "never" => Ok(Trigger::Never),
            _ => Err(TriggerError::UnknownPeriod(s.to_string())),
        }
    }

    /// Validates a cron expression (5-field crontab, macro, or the `cron`
    /// crate's 6/7-field form; see the module docs) and returns
    /// [`Trigger::Cron`] holding it trimmed.
    ///
    /// # Errors
    ///
    /// [`TriggerError::InvalidCron`], naming the expression and what is wrong.
    pub fn cron(expr: &str) -> Result<Trigger, TriggerError> {
        let expr = expr.trim();
        compile(expr)?;
        Ok(Trigger::Cron(expr.to_string()))
    }

    /// Checks a trigger that did not come from [`Trigger::cron`] (e.g. one
    /// received over the wire). Periods are always valid.
    ///
    /// # Errors
    ///
    /// [`TriggerError::InvalidCron`] for a cron expression that does not parse.
    pub fn validate(&self) -> Result<(), TriggerError> {
        match self {
            Trigger::Cron(expr) => compile(expr.trim()).map(|_| ()),
            _ => Ok(()),
        }
    }

    /// The period of `hourly`, `daily` and `weekly`; `None` otherwise.
    pub fn period(&self) -> Option<Duration> {
        match self {
            Trigger::Hourly => Some(Duration::seconds(3600)),
            Trigger::Daily => Some(Duration::seconds(86_400)),
            Trigger::Weekly => Some(Duration::seconds(7 * 86_400)),
            Trigger::Never | Trigger::Cron(_) => None,
        }
    }

    /// The next run strictly after `now`.
    ///
    /// For a period this is `anchor + k * period` for the smallest `k >= 1`
    /// that is after `now`, where `anchor` is the previous *scheduled* run
    /// (not when it actually ran), so runs keep their phase; O(1) whatever the
    /// gap. For a cron expression it is the expression's next time after
    /// `now` (`anchor` is ignored). `None` for `never`, for a cron expression
    /// with no further run (or that does not parse) and on overflow.
    pub fn next_after(&self, anchor: DateTime<Utc>, now: DateTime<Utc>) -> Option<DateTime<Utc>> {
        match self {
            Trigger::Never => None,
            Trigger::Cron(expr) => compile(expr.trim())
                .ok()?
                .iter()
                .filter_map(|schedule| schedule.after(&now).next())
                .min(),
            Trigger::Hourly | Trigger::Daily | Trigger::Weekly => {
                let step = self.period()?.num_seconds();
                let k = if now < anchor {
                    1
                } else {
                    // (now - anchor) = q*step + r (+ a fraction of a second),
                    // so anchor + (q+1)*step > now >= anchor + q*step.
                    (now - anchor).num_seconds() / step + 1
                };
                anchor.checked_add_signed(Duration::try_seconds(k.checked_mul(step)?)?)
            }
        }
    }
}

impl fmt::Display for Trigger {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Trigger::Hourly => f.write_str("hourly"),
            Trigger::Daily => f.write_str("daily"),
            Trigger::Weekly => f.write_str("weekly"),
            Trigger::Never => f.write_str("never"),
            Trigger::Cron(expr) => write!(f, "cron '{expr}'"),
        }
    }
}

impl FromStr for Trigger {
    type Err = TriggerError;

    /// A period name if `s` is a single word, otherwise a cron expression
    /// (a macro such as `@daily` counts as a cron expression).
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let s = s.trim();
        if !s.starts_with('@') && s.split_whitespace().count() == 1 {
            Trigger::parse_period(s)
        } else {
            Trigger::cron(s)
        }
    }
}

/// Parses `expr` (already trimmed) into the `cron` schedules whose earliest
/// next time is the expression's next time.
/// The longest cron expression accepted, in bytes: far beyond any real one,
/// and it keeps every `info` item small.
pub const MAX_CRON_LEN: usize = 256;

fn compile(expr: &str) -> Result<Vec<cron::Schedule>, TriggerError> {
    if expr.len() > MAX_CRON_LEN {
        return Err(TriggerError::InvalidCron {
            expr: format!("{}...", expr.chars().take(32).collect::<String>()),
            reason: format!("longer than {MAX_CRON_LEN} bytes"),
        });
    }
    let invalid = |reason: String| TriggerError::InvalidCron {
        expr: expr.to_string(),
        reason,
    };
    let expanded;
    let fields: Vec<&str> = if let Some(name) = expr.strip_prefix('@') {
        expanded = expand_macro(name).map_err(invalid)?;
        expanded.split(' ').collect()
    } else {
        expr.split_whitespace().collect()
    };
    match fields.len() {
        0 => Err(invalid("empty expression".to_string())),
        5 => Classic::parse(&fields)
            .and_then(|classic| classic.schedules())
            .map_err(invalid),
        6 | 7 => native(&fields).map(|s| vec![s]).map_err(invalid),
        n => Err(invalid(format!(
            "{n} field{}; expected 5 (min hour dom month dow) \
             or 6-7 (sec min hour dom month dow [year])",
            if n == 1 { "" } else { "s" }
        ))),
    }
}

/// The 5-field equivalent of a macro (`name` without its `@`).
fn expand_macro(name: &str) -> Result<&'static str, String> {
    match name.to_ascii_lowercase().as_str() {
        "hourly" => Ok("0 * * * *"),
        "daily" | "midnight" => Ok("0 0 * * *"),
        "weekly" => Ok("0 0 * * 0"),
        "monthly" => Ok("0 0 1 * *"),
        "yearly" | "annually" => Ok("0 0 1 1 *"),
        "reboot" => Err("@reboot is not supported".to_string()),
        _ => Err(format!(
            "unknown macro '@{name}'; expected @hourly, @daily, @midnight, \
             @weekly, @monthly, @yearly or @annually"
        )),
    }
}

/// Parses the `cron` crate's native 6/7-field form.
fn native(fields: &[&str]) -> Result<cron::Schedule, String> {
    const NAMES: [&str; 7] = [
        "second",
        "minute",
        "hour",
        "day-of-month",
        "month",
        "day-of-week",
        "year",
    ];
    // One space between fields, so that the crate's error (the input, a line
    // with a caret under the fault, then a message) maps back to a field.
    let normalized = fields.join(" ");
    cron::Schedule::from_str(&normalized).map_err(|err| {
        let text = err.to_string();
        let lines: Vec<&str> = text.lines().collect();
        let message = lines.get(2..).unwrap_or_default().join(" ");
        let message = message.trim();
        match lines.get(1).and_then(|line| line.find('^')) {
            Some(column) => {
                let index = normalized
                    .chars()
                    .take(column)
                    .filter(|c| *c == ' ')
                    .count()
                    .min(fields.len() - 1);
                let mut what = format!("{} field '{}'", NAMES[index], fields[index]);
                if NAMES[index] == "day-of-week" {
                    what.push_str(" (in this 6/7-field form 1 is Sunday, 7 Saturday)");
                }
                if message.is_empty() {
                    format!("{what} is invalid")
                } else {
                    format!("{what}: {message}")
                }
            }
            None => lines.join(" "),
        }
    })
}

/// One field of the classic 5-field form.
#[derive(Clone, Copy, Debug)]
enum Unit {
    Minute,
    Hour,
    DayOfMonth,
    Month,
    DayOfWeek,
}

const MONTH_NAMES: [&str; 12] = [
    "january",
    "february",
    "march",
    "april",
    "may",
    "june",
    "july",
    "august",
    "september",
    "october",
    "november",
    "december",
];

const DAY_NAMES: [&str; 7] = [
    "sunday",
    "monday",
    "tuesday",
    "wednesday",
    "thursday",
    "friday",
    "saturday",
];

impl Unit {
    const ALL: [Unit; 5] = [
        Unit::Minute,
        Unit::Hour,
        Unit::DayOfMonth,
        Unit::Month,
        Unit::DayOfWeek,
    ];

    fn name(self) -> &'static str {
        match self {
            Unit::Minute => "minute",
            Unit::Hour => "hour",
            Unit::DayOfMonth => "day-of-month",
            Unit::Month => "month",
            Unit::DayOfWeek => "day-of-week",
        }
    }

    /// Inclusive bounds of the values an operator may write.
    fn bounds(self) -> (u32, u32) {
        match self {
            Unit::Minute => (0, 59),
            Unit::Hour => (0, 23),
            Unit::DayOfMonth => (1, 31),
            Unit::Month => (1, 12),
            Unit::DayOfWeek => (0, 7),
        }
    }

    /// Names (full; their first three letters work too) and the value of the
    /// first one.
    fn names(self) -> (&'static [&'static str], u32) {
        match self {
            Unit::Month => (&MONTH_NAMES, 1),
            Unit::DayOfWeek => (&DAY_NAMES, 0),
            _ => (&[], 0),
        }
    }

    fn value(self, text: &str) -> Result<u32, String> {
        let (lo, hi) = self.bounds();
        if text.is_empty() {
            return Err("missing value".to_string());
        }
        if text.bytes().all(|b| b.is_ascii_digit()) {
            return match text.parse::<u32>() {
                Ok(v) if (lo..=hi).contains(&v) => Ok(v),
                _ => Err(format!("{text} is out of range {lo}-{hi}")),
            };
        }
        let (names, first) = self.names();
        let lower = text.to_ascii_lowercase();
        names
            .iter()
            .position(|name| lower == *name || (lower.len() == 3 && name.starts_with(&lower)))
            .map(|i| first + i as u32)
            .ok_or_else(|| match names {
                [] => format!("'{text}' is not a number in {lo}-{hi}"),
                [a, .., z] => format!(
                    "'{text}' is neither a number in {lo}-{hi} nor a name {}..{}",
                    &a[..3],
                    &z[..3]
                ),
                [_] => unreachable!("name tables have several entries"),
            })
    }

    /// Parses one field into a bit set of values, and whether it counts as
    /// unrestricted for the day-of-month/day-of-week rule (starts with `*`).
    fn parse(self, field: &str) -> Result<(u64, bool), String> {
        let (lo, hi) = self.bounds();
        let day = matches!(self, Unit::DayOfMonth | Unit::DayOfWeek);
        let is_all = |base: &str| base == "*" || (day && base == "?");
        let mut bits = 0u64;
        for item in field.split(',') {
            let (base, step) = match item.split_once('/') {
                Some((base, step)) => match step.parse::<u32>() {
                    Ok(step) if step >= 1 => (base, Some(step)),
                    _ => return Err(format!("bad step '{step}' in '{item}'")),
                },
                None => (item, None),
            };
            let (start, end) = if is_all(base) {
                (lo, hi)
            } else if let Some((a, b)) = base.split_once('-') {
                let (a, b) = (self.value(a)?, self.value(b)?);
                if a > b {
                    return Err(format!("range '{base}' goes backwards"));
                }
                (a, b)
            } else {
                let a = self.value(base)?;
                (a, if step.is_some() { hi } else { a })
            };
            for v in (start..=end).step_by(step.unwrap_or(1) as usize) {
                bits |= 1 << v;
            }
        }
        if let Unit::DayOfWeek = self {
            // 7 is Sunday, like 0.
            if bits & (1 << 7) != 0 {
                bits = (bits | 1) & !(1 << 7);
            }
        }
        Ok((
            bits,
            field.starts_with('*') || (day && field.starts_with('?')),
        ))
    }
}

/// A parsed 5-field expression: bit `v` of a set is value `v` (days of the
/// week 0 = Sunday … 6 = Saturday).
#[derive(Debug)]
struct Classic {
    minutes: u64,
    hours: u64,
    days_of_month: u64,
    months: u64,
    days_of_week: u64,
    /// Whether both day fields are restricted, so that a day matching either
    /// one matches (Vixie cron).
    days_or: bool,
}

impl Classic {
    fn parse(fields: &[&str]) -> Result<Classic, String> {
        let mut sets = [(0u64, false); 5];
        for ((unit, field), set) in Unit::ALL.iter().zip(fields).zip(sets.iter_mut()) {
            *set = unit
                .parse(field)
                .map_err(|reason| format!("{} field '{field}': {reason}", unit.name()))?;
        }
        let [minutes, hours, dom, months, dow] = sets;
        let classic = Classic {
            minutes: minutes.0,
            hours: hours.0,
            days_of_month: dom.0,
            months: months.0,
            days_of_week: dow.0,
            days_or: !dom.1 && !dow.1,
        };
        // Days of the week occur in every month; a day of month may not.
        const LONGEST: [u32; 12] = [31, 29, 31, 30, 31, 30, 31, 31, 30, 31, 30, 31];
        let fires = classic.days_or
            || (1..=12u32).any(|m| {
                classic.months & (1 << m) != 0
                    && (1..=LONGEST[m as usize - 1]).any(|d| classic.days_of_month & (1 << d) != 0)
            });
        if !fires {
            return Err(format!(
                "day-of-month '{}' never occurs in month '{}'",
                fields[2], fields[3]
            ));
        }
        Ok(classic)
    }

    /// The `cron` crate schedules (6-field form) whose earliest next time is
    /// this expression's next time.
    fn schedules(&self) -> Result<Vec<cron::Schedule>, String> {
        let minutes = list(self.minutes, 0, 59, 0);
        let hours = list(self.hours, 0, 23, 0);
        let dom = list(self.days_of_month, 1, 31, 0);
        let months = list(self.months, 1, 12, 0);
        // The crate numbers days of the week 1 = Sunday … 7 = Saturday.
        let dow = list(self.days_of_week, 0, 6, 1);
        let day_pairs = if self.days_or {
            vec![(dom, "*".to_string()), ("*".to_string(), dow)]
        } else {
            vec![(dom, dow)]
        };
        day_pairs
            .into_iter()
            .map(|(dom, dow)| {
                let native = format!("0 {minutes} {hours} {dom} {months} {dow}");
                cron::Schedule::from_str(&native)
                    .map_err(|err| format!("internal error: '{native}' rejected: {err}"))
            })
            .collect()
    }
}

/// `*` if `bits` holds every value in `lo..=hi`, else the values (plus
/// `shift`) separated by commas.
fn list(bits: u64, lo: u32, hi: u32, shift: u32) -> String {
    let values: Vec<u32> = (lo..=hi).filter(|v| bits & (1 << v) != 0).collect();
    if values.len() as u32 == hi - lo + 1 {
        return "*".to_string();
    }
    let values: Vec<String> = values.iter().map(|v| (v + shift).to_string()).collect();
    values.join(",")
}

#[cfg(test)]
mod tests {
    use super::*;
    use chrono::{Datelike, TimeZone, Timelike, Weekday};

    fn t(y: i32, mo: u32, d: u32, h: u32, mi: u32, s: u32) -> DateTime<Utc> {
        Utc.with_ymd_and_hms(y, mo, d, h, mi, s).unwrap()
    }

    fn cron(expr: &str) -> Trigger {
        Trigger::cron(expr).unwrap_or_else(|e| panic!("{e}"))
    }

    /// The first `n` runs of `trigger` after `now` (for cron: anchor ignored).
    fn runs(trigger: &Trigger, now: DateTime<Utc>, n: usize) -> Vec<DateTime<Utc>> {
        let mut out = Vec::new();
        let mut now = now;
        for _ in 0..n {
            now = trigger.next_after(now, now).expect("a next run");
            out.push(now);
        }
        out
    }

    fn err(expr: &str) -> String {
        let e = Trigger::cron(expr).expect_err(expr).to_string();
        assert!(e.contains(&format!("'{}'", expr.trim())), "{e}");
        assert!(!e.contains('\n'), "{e}");
        e
    }

    #[test]
    fn periods_parse_any_case_and_display() {
        for (s, t) in [
            ("hourly", Trigger::Hourly),
            ("Daily", Trigger::Daily),
            (" WEEKLY ", Trigger::Weekly),
            ("never", Trigger::Never),
        ] {
            assert_eq!(Trigger::parse_period(s).unwrap(), t);
            assert_eq!(t.to_string(), s.trim().to_ascii_lowercase());
        }
        let e = Trigger::parse_period("monthly").unwrap_err().to_string();
        assert_eq!(
            e,
            "unknown period 'monthly': expected hourly, daily, weekly or never"
        );
        assert_eq!(Trigger::default(), Trigger::Daily);
    }

    #[test]
    fn period_lengths() {
        assert_eq!(Trigger::Hourly.period(), Some(Duration::hours(1)));
        assert_eq!(Trigger::Daily.period(), Some(Duration::days(1)));
        assert_eq!(Trigger::Weekly.period(), Some(Duration::weeks(1)));
        assert_eq!(Trigger::Never.period(), None);
        assert_eq!(cron("0 3 * * *").period(), None);
    }

    #[test]
    fn next_period_is_one_period_after_anchor() {
        let anchor = t(2025, 1, 1, 3, 0, 0);
        let now = t(2025, 1, 1, 3, 0, 5);
        assert_eq!(
            Trigger::Hourly.next_after(anchor, now),
            Some(t(2025, 1, 1, 4, 0, 0))
        );
        assert_eq!(
            Trigger::Daily.next_after(anchor, now),
            Some(t(2025, 1, 2, 3, 0, 0))
        );
        assert_eq!(
            Trigger::Weekly.next_after(anchor, now),
            Some(t(2025, 1, 8, 3, 0, 0))
        );
        assert_eq!(Trigger::Never.next_after(anchor, now), None);
    }

    #[test]
    fn daily_keeps_its_phase() {
        let anchor = t(2025, 1, 1, 3, 0, 0);
        let now = t(2025, 1, 4, 14, 27, 0);
        assert_eq!(
            Trigger::Daily.next_after(anchor, now),
            Some(t(2025, 1, 5, 3, 0, 0))
        );
        // A run that started late does not move the phase: the anchor is the
        // scheduled time, the job ran at 03:40.
        assert_eq!(
            Trigger::Daily.next_after(anchor, t(2025, 1, 1, 3, 40, 0)),
            Some(t(2025, 1, 2, 3, 0, 0))
        );
        let weekly = Trigger::Weekly.next_after(anchor, now).unwrap();
        assert_eq!(weekly, t(2025, 1, 8, 3, 0, 0));
        let hourly = Trigger::Hourly.next_after(t(2025, 1, 1, 3, 17, 42), now);
        assert_eq!(hourly, Some(t(2025, 1, 4, 15, 17, 42)));
    }

    #[test]
    fn now_on_a_slot_gives_the_following_slot() {
        let anchor = t(2025, 1, 1, 3, 0, 0);
        assert_eq!(
            Trigger::Daily.next_after(anchor, anchor),
            Some(t(2025, 1, 2, 3, 0, 0))
        );
        assert_eq!(
            Trigger::Daily.next_after(anchor, t(2025, 1, 3, 3, 0, 0)),
            Some(t(2025, 1, 4, 3, 0, 0))
        );
        // Half a second past a slot, and half a second before one.
        let half = Duration::milliseconds(500);
        assert_eq!(
            Trigger::Hourly.next_after(anchor, t(2025, 1, 1, 5, 0, 0) + half),
            Some(t(2025, 1, 1, 6, 0, 0))
        );
        assert_eq!(
            Trigger::Hourly.next_after(anchor, t(2025, 1, 1, 5, 0, 0) - half),
            Some(t(2025, 1, 1, 5, 0, 0))
        );
    }

    #[test]
    fn huge_gaps_are_constant_time() {
        let anchor = t(2015, 6, 1, 3, 0, 0);
        let now = t(2025, 6, 1, 12, 0, 0);
        let start = std::time::Instant::now();
        for trigger in [Trigger::Hourly, Trigger::Daily, Trigger::Weekly] {
            for _ in 0..1000 {
                let next = trigger.next_after(anchor, now).unwrap();
                let period = trigger.period().unwrap();
                assert!(next > now && next - period <= now);
                assert_eq!((next - anchor).num_seconds() % period.num_seconds(), 0);
            }
        }
        assert_eq!(
            Trigger::Daily.next_after(anchor, now),
            Some(t(2025, 6, 2, 3, 0, 0))
        );
        // 2025-06-01 is 3653 days (521 weeks + 6 days) after 2015-06-01, a
        // Monday; the next Monday is 2025-06-02.
        assert_eq!(
            Trigger::Weekly.next_after(anchor, now),
            Some(t(2025, 6, 2, 3, 0, 0))
        );
        // Generous: a loop per missed period would also be fast at 10 years,
        // so also try a gap of ten thousand years.
        let far = t(9999, 12, 31, 0, 0, 0);
        assert_eq!(
            Trigger::Hourly.next_after(t(1, 1, 1, 0, 30, 0), far),
            Some(t(9999, 12, 31, 0, 30, 0))
        );
        assert!(start.elapsed() < std::time::Duration::from_secs(1));
        // Overflow gives None rather than a panic.
        assert_eq!(
            Trigger::Weekly.next_after(DateTime::<Utc>::MAX_UTC, DateTime::<Utc>::MAX_UTC),
            None
        );
    }

    #[test]
    fn cron_daily_at_three() {
        let trigger = cron("0 3 * * *");
        let now = t(2025, 1, 1, 14, 27, 0);
        assert_eq!(
            runs(&trigger, now, 2),
            [t(2025, 1, 2, 3, 0, 0), t(2025, 1, 3, 3, 0, 0)]
        );
        // Strictly after now, and the anchor is ignored.
        let slot = t(2025, 1, 2, 3, 0, 0);
        assert_eq!(
            trigger.next_after(t(2000, 1, 1, 0, 0, 0), slot),
            Some(t(2025, 1, 3, 3, 0, 0))
        );
        assert_eq!(
            trigger.next_after(slot, slot - Duration::milliseconds(1)),
            Some(slot)
        );
    }

    #[test]
    fn cron_steps_ranges_lists_and_month_names() {
        assert_eq!(
            runs(&cron("*/15 * * * *"), t(2025, 1, 1, 23, 31, 0), 3),
            [
                t(2025, 1, 1, 23, 45, 0),
                t(2025, 1, 2, 0, 0, 0),
                t(2025, 1, 2, 0, 15, 0)
            ]
        );
        assert_eq!(
            runs(&cron("5,10-20/5 9-10 * * *"), t(2025, 1, 1, 9, 11, 0), 5),
            [
                t(2025, 1, 1, 9, 15, 0),
                t(2025, 1, 1, 9, 20, 0),
                t(2025, 1, 1, 10, 5, 0),
                t(2025, 1, 1, 10, 10, 0),
                t(2025, 1, 1, 10, 15, 0)
            ]
        );
        // `a/n` is `a-max/n`.
        assert_eq!(
            runs(&cron("50/5 0 * * *"), t(2025, 1, 1, 0, 0, 0), 3),
            [
                t(2025, 1, 1, 0, 50, 0),
                t(2025, 1, 1, 0, 55, 0),
                t(2025, 1, 2, 0, 50, 0)
            ]
        );
        assert_eq!(
            runs(&cron("0 0 1 Jan,JUL *"), t(2025, 1, 1, 0, 0, 0), 2),
            [t(2025, 7, 1, 0, 0, 0), t(2026, 1, 1, 0, 0, 0)]
        );
        assert_eq!(
            runs(&cron("0 0 1 feb-april/2 *"), t(2025, 1, 1, 0, 0, 0), 2),
            [t(2025, 2, 1, 0, 0, 0), t(2025, 4, 1, 0, 0, 0)]
        );
    }

    fn weekdays(expr: &str) -> Vec<Weekday> {
        // 2025-01-05 is a Sunday.
        let trigger = cron(expr);
        runs(&trigger, t(2025, 1, 5, 0, 0, 0), 7)
            .iter()
            .map(|d| d.weekday())
            .take_while({
                let mut seen = Vec::new();
                move |w| {
                    let new = !seen.contains(w);
                    seen.push(*w);
                    new
                }
            })
            .collect()
    }

    #[test]
    fn cron_day_of_week_numbering() {
        use Weekday::*;
        assert_eq!(
            cron("0 12 * * 0").next_after(t(2025, 1, 1, 0, 0, 0), t(2025, 1, 1, 0, 0, 0)),
            Some(t(2025, 1, 5, 12, 0, 0))
        );
        assert_eq!(weekdays("0 12 * * 0"), [Sun]);
        assert_eq!(weekdays("0 12 * * 7"), [Sun]);
        assert_eq!(weekdays("0 12 * * 1"), [Mon]);
        assert_eq!(weekdays("0 12 * * 6"), [Sat]);
        assert_eq!(weekdays("0 12 * * 1-5"), [Mon, Tue, Wed, Thu, Fri]);
        assert_eq!(weekdays("0 12 * * MON"), [Mon]);
        assert_eq!(weekdays("0 12 * * sun"), [Sun]);
        assert_eq!(weekdays("0 12 * * Friday"), [Fri]);
        assert_eq!(weekdays("0 12 * * mon-fri"), [Mon, Tue, Wed, Thu, Fri]);
        assert_eq!(weekdays("0 12 * * 5-7"), [Sun, Fri, Sat]);
        assert_eq!(weekdays("0 12 * * 0,3,sat"), [Sun, Wed, Sat]);
        // Steps count in crontab numbers: 1-5/2 is Mon, Wed, Fri; `*` is 0-7.
        assert_eq!(weekdays("0 12 * * 1-5/2"), [Mon, Wed, Fri]);
        assert_eq!(weekdays("0 12 * * */2"), [Sun, Tue, Thu, Sat]);
        assert_eq!(weekdays("0 12 * * */3"), [Sun, Wed, Sat]);
        assert_eq!(
            weekdays("0 12 * * 0-7"),
            [Sun, Mon, Tue, Wed, Thu, Fri, Sat]
        );
        assert_eq!(weekdays("@weekly"), [Sun]);
    }

    #[test]
    fn cron_month_ends_and_leap_days() {
        // 31st: skips February, April, June.
        assert_eq!(
            runs(&cron("0 0 31 * *"), t(2025, 1, 31, 0, 0, 0), 3),
            [
                t(2025, 3, 31, 0, 0, 0),
                t(2025, 5, 31, 0, 0, 0),
                t(2025, 7, 31, 0, 0, 0)
            ]
        );
        assert_eq!(
            runs(&cron("0 0 29 2 *"), t(2025, 3, 1, 0, 0, 0), 2),
            [t(2028, 2, 29, 0, 0, 0), t(2032, 2, 29, 0, 0, 0)]
        );
        // Never-firing expressions are refused rather than accepted silently.
        let e = err("0 0 30 2 *");
        assert!(e.contains("never occurs"), "{e}");
        err("0 0 31 4,jun,9,11 *");
        // ...but not when a day of the week can fire it.
        cron("0 0 30 2 1");
    }

    #[test]
    fn cron_day_of_month_or_day_of_week() {
        // Every Friday and every 13th. 2025-06-13 is a Friday.
        let first = runs_of("0 0 13 * 5", t(2025, 5, 31, 0, 0, 0), 6);
        assert_eq!(
            first,
            [
                t(2025, 6, 6, 0, 0, 0),
                t(2025, 6, 13, 0, 0, 0),
                t(2025, 6, 20, 0, 0, 0),
                t(2025, 6, 27, 0, 0, 0),
                t(2025, 7, 4, 0, 0, 0),
                t(2025, 7, 11, 0, 0, 0)
            ]
        );
        assert_eq!(
            runs_of("0 0 13 * 5", first[5], 2),
            [t(2025, 7, 13, 0, 0, 0), t(2025, 7, 18, 0, 0, 0)]
        );
        // With `*` in the day of month only the day of week counts...
        assert_eq!(weekdays("0 0 * * 5"), [Weekday::Fri]);
        // ...and a field starting with `*` counts as unrestricted (Vixie):
        // odd days that are Mondays. 2025-01-13 is a Monday.
        assert_eq!(
            runs_of("0 0 */2 * 1", t(2025, 1, 1, 0, 0, 0), 2),
            [t(2025, 1, 13, 0, 0, 0), t(2025, 1, 27, 0, 0, 0)]
        );
    }

    fn runs_of(expr: &str, now: DateTime<Utc>, n: usize) -> Vec<DateTime<Utc>> {
        runs(&cron(expr), now, n)
    }

    #[test]
    fn cron_native_six_and_seven_fields() {
        // sec min hour dom month dow [year], the crate's own semantics.
        assert_eq!(
            runs_of("30 0 3 * * *", t(2025, 1, 1, 3, 0, 30), 1),
            [t(2025, 1, 2, 3, 0, 30)]
        );
        assert_eq!(
            runs_of("0 0 12 * * Mon", t(2025, 1, 1, 0, 0, 0), 1),
            [t(2025, 1, 6, 12, 0, 0)]
        );
        // The crate's numbering: 1 is Sunday.
        assert_eq!(
            runs_of("0 0 12 * * 1", t(2025, 1, 1, 0, 0, 0), 1),
            [t(2025, 1, 5, 12, 0, 0)]
        );
        assert_eq!(
            runs_of("0 0 0 1 1 ? 2030", t(2025, 1, 1, 0, 0, 0), 1),
            [t(2030, 1, 1, 0, 0, 0)]
        );
        assert_eq!(
            cron("0 0 0 1 1 ? 2030").next_after(t(2030, 1, 1, 0, 0, 0), t(2030, 1, 1, 0, 0, 0)),
            None
        );
    }

    #[test]
    fn cron_macros() {
        let now = t(2025, 5, 14, 10, 30, 0);
        for (expr, next) in [
            ("@hourly", t(2025, 5, 14, 11, 0, 0)),
            ("@daily", t(2025, 5, 15, 0, 0, 0)),
            ("@Midnight", t(2025, 5, 15, 0, 0, 0)),
            ("@weekly", t(2025, 5, 18, 0, 0, 0)),
            ("@monthly", t(2025, 6, 1, 0, 0, 0)),
            ("@yearly", t(2026, 1, 1, 0, 0, 0)),
            ("@ANNUALLY", t(2026, 1, 1, 0, 0, 0)),
        ] {
            assert_eq!(runs_of(expr, now, 1), [next], "{expr}");
        }
        assert!(err("@reboot").contains("not supported"));
        assert!(err("@fortnightly").contains("unknown macro"));
    }

    #[test]
    fn cron_keeps_the_expression_as_written() {
        let trigger = cron("  0 3 * * mon-FRI\t");
        assert_eq!(trigger, Trigger::Cron("0 3 * * mon-FRI".to_string()));
        assert_eq!(trigger.to_string(), "cron '0 3 * * mon-FRI'");
        assert_eq!(trigger.validate(), Ok(()));
    }

    #[test]
    fn cron_errors_name_the_expression_and_the_fault() {
        let e = err("61 * * * *");
        assert_eq!(
            e,
            "invalid cron expression '61 * * * *': minute field '61': 61 is out of range 0-59"
        );
        assert!(err("* * *").contains("3 fields; expected 5"));
        assert!(err("foo").contains("1 field; expected 5"));
        assert!(err("").contains("empty expression"));
        assert!(err("   ").contains("empty expression"));
        assert!(err("* * * * * * * *").contains("8 fields"));
        assert!(err("0 24 * * *").contains("hour field '24'"));
        assert!(err("0 0 0 * *").contains("day-of-month field '0'"));
        assert!(err("0 0 * 13 *").contains("month field '13'"));
        assert!(err("0 0 * * 8").contains("day-of-week field '8'"));
        assert!(err("0 0 * * funday").contains("nor a name sun..sat"));
        assert!(err("0 0 * foo *").contains("nor a name jan..dec"));
        assert!(err("0 0 * * 5-1").contains("goes backwards"));
        assert!(err("*/0 * * * *").contains("bad step '0'"));
        assert!(err("*/x * * * *").contains("bad step 'x'"));
        assert!(err("1,,2 * * * *").contains("missing value"));
        assert!(err("-1 * * * *").contains("missing value"));
        assert!(err("? * * * *").contains("minute field '?'"));
        assert!(err("0 0 L * *").contains("day-of-month field 'L'"));
        // The native form reports the crate's message on one line.
        let e = err("0 61 * * * *");
        assert!(e.contains("minute field '61'"), "{e}");
        let e = err("0 0 0 * * 0");
        assert!(e.contains("day-of-week field '0'"), "{e}");
        let e = err("0 0 0 1 * Mon  extra");
        assert!(e.contains("year field 'extra'"), "{e}");
        // A cron trigger that did not come from Trigger::cron.
        let bad = Trigger::Cron("61 * * * *".to_string());
        assert!(bad.validate().is_err());
        assert_eq!(
            bad.next_after(t(2025, 1, 1, 0, 0, 0), t(2025, 1, 1, 0, 0, 0)),
            None
        );
    }

    #[test]
    fn from_str_takes_a_period_or_a_cron_expression() {
        assert_eq!("weekly".parse::<Trigger>(), Ok(Trigger::Weekly));
        assert_eq!(
            "*/5 * * * *".parse::<Trigger>(),
            Ok(Trigger::Cron("*/5 * * * *".to_string()))
        );
        assert_eq!(
            "@daily".parse::<Trigger>(),
            Ok(Trigger::Cron("@daily".to_string()))
        );
        assert!(matches!(
            "fortnightly".parse::<Trigger>(),
            Err(TriggerError::UnknownPeriod(_))
        ));
    }

    /// Vixie cron's rule, evaluated directly on the parsed sets.
    fn matches(c: &Classic, at: DateTime<Utc>) -> bool {
        let has = |set: u64, v: u32| set & (1 << v) != 0;
        let dom = has(c.days_of_month, at.day());
        let dow = has(c.days_of_week, at.weekday().num_days_from_sunday());
        has(c.minutes, at.minute())
            && has(c.hours, at.hour())
            && has(c.months, at.month())
            && if c.days_or { dom || dow } else { dom && dow }
    }

    #[test]
    fn cron_agrees_with_a_minute_by_minute_scan() {
        // Checks the translation to the crate (day-of-week shift, OR rule)
        // against a direct evaluation over 2024-12-25 .. 2025-03-05, which
        // includes a year end and a February.
        let end = t(2025, 3, 5, 0, 0, 0);
        for expr in [
            "0 0 13 * 5",
            "*/20 1-2 1,15 * mon-wed",
            "30 23 */3 * 0",
            "0 12 * * 1-5/2",
            "15 6 31 * 6,7",
            "0 */7 * 1-3 *",
            "59 23 28,29 feb *",
            "0 0 1 1 *",
        ] {
            let fields: Vec<&str> = expr.split_whitespace().collect();
            let classic = Classic::parse(&fields).unwrap();
            let trigger = cron(expr);
            let mut now = t(2024, 12, 25, 0, 0, 0);
            let mut expected = now;
            loop {
                // The next matching minute strictly after `now`, by scanning.
                while expected < end && (expected <= now || !matches(&classic, expected)) {
                    expected += Duration::minutes(1);
                }
                let next = trigger.next_after(now, now).unwrap();
                if expected >= end {
                    assert!(next >= end, "{expr} after {now}: {next}");
                    break;
                }
                assert_eq!(next, expected, "{expr} after {now}");
                now = next;
            }
        }
    }
}
