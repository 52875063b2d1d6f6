//! `prometheus`: the per-route metrics switch (the metrics themselves are `crate::observe::metrics`).
use serde::Deserialize;

#[derive(Deserialize)]
pub(crate) struct PrometheusConf {
    #[serde(default)]
    pub(crate) prefer_name: bool,
}
