//! `prometheus`: the per-route metrics switch and the `route` label (the metrics themselves are
//! `crate::observe::metrics`, recorded when a response ends).
use serde::Deserialize;
use std::sync::Arc;

#[derive(Deserialize)]
pub(crate) struct PrometheusConf {
    #[serde(default)]
    pub(crate) prefer_name: bool,
}

impl PrometheusConf {
    /// The `route` label of route `id` (named `name`): the id, or the name with `prefer_name`.
    pub(crate) fn label(
        conf: Option<&PrometheusConf>,
        id: &Arc<str>,
        name: Option<&str>,
    ) -> Arc<str> {
        match (conf, name) {
            (Some(p), Some(name)) if p.prefer_name => Arc::from(name),
            _ => id.clone(),
        }
    }
}
