//! The worker settings, as the master sends them: one JSON object made by
//! `pygateway.settings.Settings.worker_json`, where each setting is declared once with its default and
//! help text. Nothing here has a default: a missing field is an error naming it, so the Python
//! declaration is the only source of every value.
use crate::server::Limits;
use serde::Deserialize;
use std::time::Duration;

#[derive(Deserialize, Debug)]
#[serde(deny_unknown_fields)]
pub struct WorkerSettings {
    pub header_timeout: f64,
    pub keepalive_timeout: f64,
    pub keepalive_requests: u64,
    pub max_connections: usize,
    pub max_connections_per_ip: usize,
    pub drain_timeout: f64,
    pub max_head_bytes: usize,
    pub max_line_bytes: usize,
    pub max_headers: usize,
    pub max_uri_bytes: usize,
    pub upstream_keepalive_pool: usize,
    pub upstream_keepalive_timeout: f64,
    /// A file path, `fd:N` (a descriptor inherited from the master), or null: no access log.
    // `Option::deserialize` makes the key required (serde's derive lets a missing Option be None).
    #[serde(deserialize_with = "Option::deserialize")]
    pub access_log: Option<String>,
    pub access_log_format: String,
}

/// What the worker runs with, checked: durations, the edge limits, the upstream pool knobs.
#[derive(Debug)]
pub struct Checked {
    pub limits: Limits,
    pub max_uri_len: usize,
    pub pool_max_idle: usize,
    pub pool_idle_timeout: Duration,
    pub access_log: Option<String>,
    pub access_log_format: String,
}

impl WorkerSettings {
    pub fn parse(json: &str) -> Result<WorkerSettings, String> {
        serde_json::from_str(json).map_err(|e| format!("worker settings: {e}"))
    }

    /// Durations from seconds; an error names the setting of a bad value.
    pub fn check(self) -> Result<Checked, String> {
        let limits = Limits {
            max_head_bytes: self.max_head_bytes,
            max_line_bytes: self.max_line_bytes,
            max_headers: self.max_headers,
            header_timeout: seconds("header_timeout", self.header_timeout, false)?,
            keepalive_idle: seconds("keepalive_timeout", self.keepalive_timeout, false)?,
            keepalive_requests: self.keepalive_requests,
            max_connections: self.max_connections,
            max_connections_per_ip: self.max_connections_per_ip,
            drain_timeout: seconds("drain_timeout", self.drain_timeout, true)?,
        };
        Ok(Checked {
            limits,
            max_uri_len: self.max_uri_bytes,
            pool_max_idle: self.upstream_keepalive_pool,
            pool_idle_timeout: seconds(
                "upstream_keepalive_timeout",
                self.upstream_keepalive_timeout,
                false,
            )?,
            access_log: self.access_log,
            access_log_format: self.access_log_format,
        })
    }
}

/// Seconds as a `Duration`; an error naming the setting for a negative, NaN or too large value
/// (and 0 unless `zero_ok`).
pub(crate) fn seconds(name: &str, v: f64, zero_ok: bool) -> Result<Duration, String> {
    Duration::try_from_secs_f64(v)
        .ok()
        .filter(|d| zero_ok || !d.is_zero())
        .ok_or_else(|| {
            let least = if zero_ok { ">= 0" } else { "> 0" };
            format!("{name}: expected seconds {least}, got {v}")
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn full() -> serde_json::Value {
        serde_json::json!({
            "header_timeout": 10.0, "keepalive_timeout": 60.0, "keepalive_requests": 1000,
            "max_connections": 10000, "max_connections_per_ip": 1000, "drain_timeout": 30.0,
            "max_head_bytes": 32768, "max_line_bytes": 8192, "max_headers": 100, "max_uri_bytes": 8192,
            "upstream_keepalive_pool": 1024, "upstream_keepalive_timeout": 60.0,
            "access_log": null, "access_log_format": "json"
        })
    }

    #[test]
    fn every_field_is_required_and_a_missing_one_is_named() {
        let all = full();
        let names: Vec<String> = all.as_object().unwrap().keys().cloned().collect();
        assert!(WorkerSettings::parse(&all.to_string()).is_ok());
        for name in names {
            let mut v = all.clone();
            v.as_object_mut().unwrap().remove(&name);
            let err = WorkerSettings::parse(&v.to_string()).unwrap_err();
            assert!(err.contains(&format!("missing field `{name}`")), "{err}");
        }
    }

    #[test]
    fn unknown_fields_and_bad_durations_are_rejected() {
        let mut v = full();
        v["max_conections"] = 1.into();
        assert!(WorkerSettings::parse(&v.to_string())
            .unwrap_err()
            .contains("unknown field `max_conections`"));
        let mut v = full();
        v["upstream_keepalive_timeout"] = 0.0.into();
        let err = WorkerSettings::parse(&v.to_string())
            .unwrap()
            .check()
            .unwrap_err();
        assert!(err.starts_with("upstream_keepalive_timeout:"), "{err}");
    }

    #[test]
    fn values_reach_the_limits_and_the_pool_knobs() {
        let mut v = full();
        v["upstream_keepalive_pool"] = 7.into();
        v["upstream_keepalive_timeout"] = 1.5.into();
        v["header_timeout"] = 2.0.into();
        v["access_log"] = "fd:3".into();
        let c = WorkerSettings::parse(&v.to_string())
            .unwrap()
            .check()
            .unwrap();
        assert_eq!(c.pool_max_idle, 7);
        assert_eq!(c.pool_idle_timeout, Duration::from_millis(1500));
        assert_eq!(c.limits.header_timeout, Duration::from_secs(2));
        assert_eq!(c.limits.max_headers, 100);
        assert_eq!(c.access_log.as_deref(), Some("fd:3"));
    }
}
