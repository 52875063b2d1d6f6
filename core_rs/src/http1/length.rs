//! Content-Length values.

/// A Content-Length value: 1 to 19 ASCII digits, nothing else (no sign, no whitespace).
pub fn parse_cl_value(v: &[u8]) -> Option<u64> {
    if v.is_empty() || v.len() > 19 {
        return None;
    }
    let mut n: u64 = 0;
    for &b in v {
        if !b.is_ascii_digit() {
            return None;
        }
        n = n * 10 + u64::from(b - b'0');
    }
    Some(n)
}
