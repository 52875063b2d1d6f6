//! APISIX's `file-logger` and `http-logger`, native: their confs compiled into a route's
//! `RouteLoggers`. What happens to a request's entry (formatted in Rust when its response ends,
//! written or queued) is `crate::observe::loggers`.
use crate::config::{CompileError, RouteConf};
use crate::observe::accesslog::LogFormat;
pub use crate::observe::loggers::{FileLogger, HttpLogger, RouteLoggers, MAX_PENDING};
use serde_json::Value;
use std::sync::Arc;

fn log_format(
    route: &str,
    plugin: &str,
    conf: &serde_json::Map<String, Value>,
) -> Result<LogFormat, CompileError> {
    let spec = match conf.get("log_format") {
        None | Some(Value::Null) => "json".to_string(),
        Some(v @ Value::Object(_)) => v.to_string(),
        Some(_) => {
            return Err(CompileError(format!(
                "routes[{route}].plugins.{plugin}.log_format: must be an object of field -> \"$variable\""
            )))
        }
    };
    LogFormat::parse(&spec)
        .map_err(|e| CompileError(format!("routes[{route}].plugins.{plugin}.log_format: {e}")))
}

fn conf_of<'a>(
    r: &'a RouteConf,
    plugin: &str,
) -> Result<Option<&'a serde_json::Map<String, Value>>, CompileError> {
    match r.plugins.get(plugin) {
        None | Some(Value::Null) => Ok(None),
        Some(Value::Object(m)) => Ok(Some(m)),
        Some(_) => Err(CompileError(format!(
            "routes[{}].plugins.{plugin}: must be an object",
            r.id
        ))),
    }
}

fn required_str<'a>(
    r: &RouteConf,
    plugin: &str,
    m: &'a serde_json::Map<String, Value>,
    field: &str,
) -> Result<&'a str, CompileError> {
    match m.get(field).and_then(Value::as_str) {
        Some(s) if !s.is_empty() => Ok(s),
        _ => Err(CompileError(format!(
            "routes[{}].plugins.{plugin}.{field}: required (a non-empty string)",
            r.id
        ))),
    }
}

/// The route's loggers, or None when it has neither.
pub fn compile(r: &RouteConf) -> Result<Option<Arc<RouteLoggers>>, CompileError> {
    let file = match conf_of(r, "file-logger")? {
        None => None,
        Some(m) => Some(FileLogger {
            path: Arc::from(required_str(r, "file-logger", m, "path")?),
            format: log_format(&r.id, "file-logger", m)?,
        }),
    };
    let http = match conf_of(r, "http-logger")? {
        None => None,
        Some(m) => {
            required_str(r, "http-logger", m, "uri")?;
            let format = log_format(&r.id, "http-logger", m)?;
            let mut target = m.clone();
            target.remove("log_format");
            let max_pending = m
                .get("max_pending_entries")
                .and_then(Value::as_u64)
                .map_or(MAX_PENDING, |n| n.max(1) as usize);
            Some(HttpLogger {
                format,
                target: Arc::from(Value::Object(target).to_string()),
                max_pending,
            })
        }
    };
    Ok((file.is_some() || http.is_some()).then(|| Arc::new(RouteLoggers { file, http })))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn route(plugins: serde_json::Value) -> RouteConf {
        RouteConf {
            id: "r1".into(),
            plugins: serde_json::from_value(plugins).unwrap(),
            ..Default::default()
        }
    }

    #[test]
    fn compiles_confs_and_names_bad_fields() {
        let l = compile(&route(serde_json::json!({
            "file-logger": {"path": "/tmp/x.log", "log_format": {"s": "$status"}},
            "http-logger": {"uri": "http://127.0.0.1:1/", "batch_max_size": 3, "max_pending_entries": 2}
        })))
        .unwrap()
        .unwrap();
        assert_eq!(&*l.file.as_ref().unwrap().path, "/tmp/x.log");
        let h = l.http.as_ref().unwrap();
        assert_eq!(h.max_pending, 2);
        assert!(h.target.contains("\"batch_max_size\":3"));
        assert!(compile(&route(serde_json::json!({}))).unwrap().is_none());
        let e = compile(&route(serde_json::json!({"file-logger": {}})))
            .err()
            .unwrap();
        assert!(e.0.contains("plugins.file-logger.path"), "{e}");
        let e = compile(&route(serde_json::json!({
            "http-logger": {"uri": "http://x/", "log_format": {"a": "$nope"}}
        })))
        .err()
        .unwrap();
        assert!(
            e.0.contains("plugins.http-logger.log_format") && e.0.contains("$nope"),
            "{e}"
        );
    }
}
