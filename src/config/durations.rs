//! The config's duration syntax (`90s`, `5m`, `1h30m`, `7d`).

use super::*;

pub(super) const DURATION_HINT: &str =
    "expected an integer followed by one unit of ms, s, m, h, d (e.g. 500ms, 15s, 2m, 1h, 7d)";

/// Parses a config duration: a non-negative integer followed by exactly one
/// unit of `ms`, `s`, `m`, `h` or `d` (`500ms`, `15s`, `2m`, `1h`, `7d`).
/// Anything else (`15`, `1.5s`, `-1s`, `1x`, `1h30m`, empty) is refused with
/// a message meant for an operator.
pub fn parse_duration(s: &str) -> Result<Duration, String> {
    if s.is_empty() {
        return Err(format!("empty duration; {DURATION_HINT}"));
    }
    let digits = s.find(|c: char| !c.is_ascii_digit()).unwrap_or(s.len());
    let (number, unit) = s.split_at(digits);
    if number.is_empty() {
        return Err(format!("`{s}` is not a duration; {DURATION_HINT}"));
    }
    if unit.is_empty() {
        return Err(format!("`{s}` has no unit; {DURATION_HINT}"));
    }
    let unit_ms: u64 = match unit {
        "ms" => 1,
        "s" => 1000,
        "m" => MINUTE * 1000,
        "h" => HOUR * 1000,
        "d" => DAY * 1000,
        _ => return Err(format!("`{s}` is not a duration; {DURATION_HINT}")),
    };
    let too_large = || format!("`{s}` is too large");
    let n: u64 = number.parse().map_err(|_| too_large())?;
    let ms = n.checked_mul(unit_ms).ok_or_else(too_large)?;
    Ok(Duration::from_millis(ms))
}

/// The inverse of [`parse_duration`]: the largest unit that represents `d`
/// exactly (`120s` → `2m`, `1500ms` stays `1500ms`, zero is `0s`). Parts
/// below a millisecond cannot be written in a config and are dropped.
pub fn format_duration(d: Duration) -> String {
    let ms = d.as_millis();
    if ms == 0 {
        return "0s".into();
    }
    let units: [(&str, u128); 4] = [
        ("d", u128::from(DAY) * 1000),
        ("h", u128::from(HOUR) * 1000),
        ("m", u128::from(MINUTE) * 1000),
        ("s", 1000),
    ];
    for (unit, size) in units {
        if ms % size == 0 {
            return format!("{}{unit}", ms / size);
        }
    }
    format!("{ms}ms")
}
