//! The `opentelemetry` plugin: its conf (the sampler) and, per request, the start of a trace
//! context — continue the caller's trace (or start one) and decide sampling. The context itself,
//! the spans and their queue are `crate::observe::trace`.
use crate::observe::trace::{parse_traceparent, unix_ns, TraceCtx};
use serde::Deserialize;
use std::cell::Cell;

/// APISIX's `opentelemetry` plugin config (the parts that act per request).
#[derive(Debug, Clone, Deserialize)]
pub struct OtelConf {
    #[serde(default)]
    pub sampler: Sampler,
}

#[derive(Debug, Clone, Deserialize)]
pub struct Sampler {
    #[serde(default = "always_off")]
    pub name: String,
    #[serde(default)]
    pub options: Option<SamplerOptions>,
}

impl Default for Sampler {
    fn default() -> Self {
        Sampler {
            name: always_off(),
            options: None,
        }
    }
}

fn always_off() -> String {
    "always_off".into()
}

#[derive(Debug, Clone, Default, Deserialize)]
pub struct SamplerOptions {
    #[serde(default)]
    pub fraction: Option<f64>,
    #[serde(default)]
    pub root: Option<Box<Sampler>>,
}

impl Sampler {
    /// Sampling decision for a trace id; `parent` is the caller's sampled flag, if it sent one.
    fn decide(&self, trace: &[u8; 16], parent: Option<bool>) -> bool {
        match self.name.as_str() {
            "always_on" => true,
            "trace_id_ratio" => {
                // The low 8 bytes of a random trace id, compared with the fraction (as OTel SDKs do).
                let x = u64::from_be_bytes(trace[8..].try_into().unwrap_or([0; 8]));
                let f = self.options.as_ref().and_then(|o| o.fraction);
                let f = f.unwrap_or(0.0).clamp(0.0, 1.0);
                (x >> 1) < (f * (1u64 << 63) as f64) as u64
            }
            "parent_base" => match parent {
                Some(p) => p,
                None => self
                    .options
                    .as_ref()
                    .and_then(|o| o.root.as_ref())
                    .is_some_and(|r| r.decide(trace, None)),
            },
            _ => false,
        }
    }
}

thread_local! {
    static RNG: Cell<u64> = Cell::new(seed());
}

fn seed() -> u64 {
    let mut b = [0u8; 8];
    let _ = ring::rand::SecureRandom::fill(&ring::rand::SystemRandom::new(), &mut b);
    u64::from_ne_bytes(b) | 1
}

/// xorshift64*: ids need to be unique, not secret.
fn next() -> u64 {
    RNG.with(|r| {
        let mut x = r.get();
        x ^= x >> 12;
        x ^= x << 25;
        x ^= x >> 27;
        r.set(x);
        x.wrapping_mul(0x2545_f491_4f6c_dd1d)
    })
}

fn nonzero8() -> [u8; 8] {
    loop {
        let v = next();
        if v != 0 {
            return v.to_be_bytes();
        }
    }
}

impl TraceCtx {
    pub fn start(conf: &OtelConf, traceparent: Option<&str>) -> TraceCtx {
        let incoming = traceparent.and_then(parse_traceparent);
        let trace = incoming.map(|i| i.0).unwrap_or_else(|| {
            let mut t = [0u8; 16];
            t[..8].copy_from_slice(&nonzero8());
            t[8..].copy_from_slice(&nonzero8());
            t
        });
        TraceCtx {
            trace,
            parent: incoming.map(|i| i.1),
            server_span: nonzero8(),
            client_span: nonzero8(),
            sampled: conf.sampler.decide(&trace, incoming.map(|i| i.2)),
            start_unix_ns: unix_ns(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::observe::trace::hex;

    fn conf(name: &str, fraction: Option<f64>) -> OtelConf {
        OtelConf {
            sampler: Sampler {
                name: name.into(),
                options: Some(SamplerOptions {
                    fraction,
                    root: None,
                }),
            },
        }
    }

    #[test]
    fn continues_a_valid_parent_and_refuses_bad_ones() {
        let tp = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";
        let c = TraceCtx::start(&conf("parent_base", None), Some(tp));
        assert_eq!(hex(&c.trace), "4bf92f3577b34da6a3ce929d0e0e4736");
        assert_eq!(
            c.parent.map(|p| hex(&p)).as_deref(),
            Some("00f067aa0ba902b7")
        );
        assert!(c.sampled);
        let h = c.upstream_header();
        assert!(h.starts_with("00-4bf92f3577b34da6a3ce929d0e0e4736-") && h.ends_with("-01"));
        assert_ne!(&h[36..52], "00f067aa0ba902b7");
        for bad in [
            "00-00000000000000000000000000000000-00f067aa0ba902b7-01",
            "ff-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
            "00-4bf92f3577b34da6a3ce929d0e0e473-00f067aa0ba902b7-01",
            "garbage",
        ] {
            let c = TraceCtx::start(&conf("parent_base", None), Some(bad));
            assert!(c.parent.is_none(), "{bad}");
            assert!(!c.sampled, "no root sampler: not sampled");
        }
    }

    #[test]
    fn ratio_sampler_samples_about_the_fraction() {
        let c = conf("trace_id_ratio", Some(0.25));
        let n = (0..20_000)
            .filter(|_| TraceCtx::start(&c, None).sampled)
            .count();
        assert!((4_000..6_000).contains(&n), "{n}");
        assert!(TraceCtx::start(&conf("always_on", None), None).sampled);
        assert!(!TraceCtx::start(&conf("always_off", None), None).sampled);
    }
}
