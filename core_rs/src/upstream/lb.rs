//! Load balancers for upstream nodes (APISIX `upstream.type`).
//!
//! Nodes are identified by their index in the `weights` slice given to
//! [`Balancer::new`]. Weight 0 means drained: such a node is never picked.
//!
//! * `roundrobin`: nginx smooth weighted round robin (weights 5,1,1 give
//!   `a a b a c a a`).
//! * `chash`: consistent hashing ring with `160 * weight` virtual nodes per
//!   node (scaled down uniformly only if the ring would exceed
//!   [`MAX_RING_POINTS`]). Virtual node positions depend only on the node index
//!   and replica number, so draining / removing a node (setting its weight to 0
//!   or dropping the last index) only remaps the keys that were on that node.
//!   Without a hash key it falls back to round robin.
//! * `least_conn`: fewest in-flight requests relative to weight, i.e. minimal
//!   `(inflight + 1) / weight`; ties are broken by a rotating start index.
//! * `ewma`: peak-EWMA of upstream latency (Finagle / APISIX `ewma`): the
//!   score is `ewma * (inflight + 1) / weight`, the EWMA decays with a 10 s time
//!   constant (so an idle slow node is eventually retried), and a latency above
//!   the current EWMA replaces it immediately (peak sensitivity). Nodes without
//!   samples score 0 and are tried first. Full scan for up to
//!   [`EWMA_FULL_SCAN`] candidates, power of two choices above that.
//!
//! `tried` (nodes already attempted for this request) are skipped by all
//! algorithms; `pick` returns `None` when no eligible node is left.

use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::Mutex;
use std::time::Instant;

/// Virtual nodes per unit of weight on the consistent hashing ring.
pub const CHASH_POINTS_PER_WEIGHT: u64 = 160;
/// Upper bound of ring size; above it all nodes are scaled down uniformly.
pub const MAX_RING_POINTS: u64 = 160_000;
/// EWMA decay time constant (APISIX uses 10 s).
const EWMA_DECAY_NS: f64 = 10e9;
/// Up to this many candidates the EWMA balancer scans all of them.
pub const EWMA_FULL_SCAN: usize = 8;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LbKind {
    RoundRobin,
    Chash,
    LeastConn,
    Ewma,
}

impl LbKind {
    /// APISIX `upstream.type` names: `roundrobin`, `chash`, `least_conn`, `ewma`.
    pub fn parse(s: &str) -> Option<LbKind> {
        match s {
            "roundrobin" => Some(LbKind::RoundRobin),
            "chash" => Some(LbKind::Chash),
            "least_conn" => Some(LbKind::LeastConn),
            "ewma" => Some(LbKind::Ewma),
            _ => None,
        }
    }
}

#[derive(Debug, Clone, Copy, Default)]
struct EwmaNode {
    /// Latency EWMA in ns (0 = no sample yet).
    ewma: f64,
    /// Time of the last update, ns since `Balancer::epoch`.
    last_ns: u64,
}

pub struct Balancer {
    kind: LbKind,
    weights: Vec<u32>,
    /// Smooth weighted round robin current weights.
    rr: Mutex<Vec<i64>>,
    /// Consistent hashing ring: (point, node), sorted.
    ring: Vec<(u64, u32)>,
    inflight: Vec<AtomicU64>,
    ewma: Mutex<Vec<EwmaNode>>,
    /// Rotating start for tie breaks and P2C randomness.
    ticker: AtomicUsize,
    rng: AtomicU64,
    epoch: Instant,
}

fn fnv_fmix(parts: &[&[u8]]) -> u64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for part in parts {
        for &b in *part {
            h ^= u64::from(b);
            h = h.wrapping_mul(0x0000_0100_0000_01b3);
        }
        // Separator so that part boundaries matter.
        h ^= 0xff;
        h = h.wrapping_mul(0x0000_0100_0000_01b3);
    }
    h ^= h >> 33;
    h = h.wrapping_mul(0xff51_afd7_ed55_8ccd);
    h ^= h >> 33;
    h = h.wrapping_mul(0xc4ce_b9fe_1a85_ec53);
    h ^ (h >> 33)
}

fn build_ring(weights: &[u32]) -> Vec<(u64, u32)> {
    let total: u64 = weights.iter().map(|&w| u64::from(w)).sum();
    let wanted = total.saturating_mul(CHASH_POINTS_PER_WEIGHT);
    let mut ring = Vec::new();
    for (i, &w) in weights.iter().enumerate() {
        if w == 0 {
            continue;
        }
        let mut points = u64::from(w) * CHASH_POINTS_PER_WEIGHT;
        if wanted > MAX_RING_POINTS {
            points = (u128::from(points) * u128::from(MAX_RING_POINTS) / u128::from(wanted)) as u64;
            points = points.max(1);
        }
        let id = (i as u64).to_le_bytes();
        for r in 0..points {
            let p = fnv_fmix(&[&id, &r.to_le_bytes()]);
            ring.push((p, i as u32));
        }
    }
    ring.sort_unstable();
    ring
}

impl Balancer {
    /// `weights[i]` is the weight of node `i`; weight 0 = drained (never picked).
    pub fn new(kind: LbKind, weights: &[u32]) -> Balancer {
        let ring = if kind == LbKind::Chash {
            build_ring(weights)
        } else {
            Vec::new()
        };
        let seed = fnv_fmix(&[&(weights.len() as u64).to_le_bytes()]) | 1;
        Balancer {
            kind,
            weights: weights.to_vec(),
            rr: Mutex::new(vec![0; weights.len()]),
            ring,
            inflight: weights.iter().map(|_| AtomicU64::new(0)).collect(),
            ewma: Mutex::new(vec![EwmaNode::default(); weights.len()]),
            ticker: AtomicUsize::new(0),
            rng: AtomicU64::new(seed),
            epoch: Instant::now(),
        }
    }

    pub fn kind(&self) -> LbKind {
        self.kind
    }

    /// Whether `on_start`/`on_finish` matter (least_conn, ewma): others skip the bookkeeping.
    pub fn tracks_load(&self) -> bool {
        matches!(self.kind, LbKind::LeastConn | LbKind::Ewma)
    }

    /// Number of nodes (including drained ones).
    pub fn len(&self) -> usize {
        self.weights.len()
    }

    pub fn is_empty(&self) -> bool {
        self.weights.is_empty()
    }

    /// Current in-flight count of `node` (0 for an unknown index).
    pub fn inflight(&self, node: usize) -> u64 {
        self.inflight
            .get(node)
            .map_or(0, |c| c.load(Ordering::Relaxed))
    }

    fn eligible(&self, node: usize, tried: &[usize]) -> bool {
        self.weights[node] > 0 && !tried.contains(&node)
    }

    /// Pick a node index. `hash_key` is only used by `chash` (`None` falls back
    /// to round robin). Nodes in `tried` are skipped; `None` when nothing is left.
    pub fn pick(&self, hash_key: Option<&[u8]>, tried: &[usize]) -> Option<usize> {
        match self.kind {
            LbKind::RoundRobin => self.pick_rr(tried),
            LbKind::Chash => match hash_key {
                Some(k) => self.pick_chash(k, tried),
                None => self.pick_rr(tried),
            },
            LbKind::LeastConn => self.pick_least_conn(tried),
            LbKind::Ewma => self.pick_ewma(tried, self.now_ns()),
        }
    }

    /// Call when an upstream request to `node` starts.
    pub fn on_start(&self, node: usize) {
        if let Some(c) = self.inflight.get(node) {
            c.fetch_add(1, Ordering::Relaxed);
        }
    }

    /// Call when an upstream request to `node` finishes (success or failure).
    pub fn on_finish(&self, node: usize, latency_ns: u64) {
        self.on_finish_at(node, latency_ns, self.now_ns());
    }

    fn now_ns(&self) -> u64 {
        self.epoch.elapsed().as_nanos() as u64
    }

    fn on_finish_at(&self, node: usize, latency_ns: u64, now_ns: u64) {
        let Some(c) = self.inflight.get(node) else {
            return;
        };
        let _ = c.fetch_update(Ordering::Relaxed, Ordering::Relaxed, |v| v.checked_sub(1));
        if self.kind != LbKind::Ewma {
            return;
        }
        let mut ew = self.ewma.lock().unwrap_or_else(|e| e.into_inner());
        let e = &mut ew[node];
        let rtt = latency_ns as f64;
        let cur = decayed(e, now_ns);
        e.ewma = if rtt > cur || e.last_ns == 0 && e.ewma == 0.0 {
            // Peak sensitivity: a slower response takes effect at once.
            rtt
        } else {
            let td = now_ns.saturating_sub(e.last_ns) as f64;
            let w = (-td / EWMA_DECAY_NS).exp();
            e.ewma * w + rtt * (1.0 - w)
        };
        e.last_ns = now_ns.max(1);
    }

    fn pick_rr(&self, tried: &[usize]) -> Option<usize> {
        let mut cw = self.rr.lock().unwrap_or_else(|e| e.into_inner());
        let mut total: i64 = 0;
        let mut best: Option<usize> = None;
        for i in 0..self.weights.len() {
            if !self.eligible(i, tried) {
                continue;
            }
            let w = i64::from(self.weights[i]);
            cw[i] += w;
            total += w;
            if best.is_none_or(|b| cw[i] > cw[b]) {
                best = Some(i);
            }
        }
        let b = best?;
        cw[b] -= total;
        Some(b)
    }

    fn pick_chash(&self, key: &[u8], tried: &[usize]) -> Option<usize> {
        if self.ring.is_empty() {
            return None;
        }
        let h = fnv_fmix(&[key]);
        let start = self.ring.partition_point(|&(p, _)| p < h);
        let n = self.ring.len();
        (0..n)
            .map(|i| self.ring[(start + i) % n].1 as usize)
            .find(|&node| !tried.contains(&node))
    }

    fn pick_least_conn(&self, tried: &[usize]) -> Option<usize> {
        let n = self.weights.len();
        if n == 0 {
            return None;
        }
        let start = self.ticker.fetch_add(1, Ordering::Relaxed) % n;
        let mut best: Option<(usize, u128, u128)> = None; // (node, inflight+1, weight)
        for j in 0..n {
            let i = (start + j) % n;
            if !self.eligible(i, tried) {
                continue;
            }
            let load = u128::from(self.inflight[i].load(Ordering::Relaxed)) + 1;
            let w = u128::from(self.weights[i]);
            // load/w < bload/bw  <=>  load*bw < bload*w
            let better = match best {
                None => true,
                Some((_, bload, bw)) => {
                    let (l, r) = (load * bw, bload * w);
                    l < r || (l == r && w > bw)
                }
            };
            if better {
                best = Some((i, load, w));
            }
        }
        best.map(|b| b.0)
    }

    fn next_rand(&self) -> u64 {
        // xorshift64*, racy updates are fine (only quality, not safety, matters).
        let mut x = self.rng.load(Ordering::Relaxed);
        x ^= x >> 12;
        x ^= x << 25;
        x ^= x >> 27;
        self.rng.store(x, Ordering::Relaxed);
        x.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }

    fn ewma_score(&self, ew: &[EwmaNode], i: usize, now_ns: u64) -> f64 {
        let inflight = self.inflight[i].load(Ordering::Relaxed) as f64;
        decayed(&ew[i], now_ns) * (inflight + 1.0) / f64::from(self.weights[i])
    }

    fn pick_ewma(&self, tried: &[usize], now_ns: u64) -> Option<usize> {
        let n = self.weights.len();
        if n == 0 {
            return None;
        }
        let ew = self.ewma.lock().unwrap_or_else(|e| e.into_inner());
        let start = self.ticker.fetch_add(1, Ordering::Relaxed) % n;
        let candidates: Vec<usize> = (0..n)
            .map(|j| (start + j) % n)
            .filter(|&i| self.eligible(i, tried))
            .collect();
        let scan = |cands: &mut dyn Iterator<Item = usize>| {
            let mut best: Option<(usize, f64)> = None;
            for i in cands {
                let s = self.ewma_score(&ew, i, now_ns);
                if best.is_none_or(|(_, bs)| s < bs) {
                    best = Some((i, s));
                }
            }
            best.map(|b| b.0)
        };
        if candidates.len() <= EWMA_FULL_SCAN {
            return scan(&mut candidates.iter().copied());
        }
        // Power of two choices.
        let m = candidates.len() as u64;
        let a = (self.next_rand() % m) as usize;
        let mut b = (self.next_rand() % (m - 1)) as usize;
        if b >= a {
            b += 1;
        }
        scan(&mut [candidates[a], candidates[b]].into_iter())
    }
}

/// EWMA value decayed towards 0 for the time since the last sample, so an idle
/// (possibly slow) node is eventually probed again.
fn decayed(e: &EwmaNode, now_ns: u64) -> f64 {
    if e.ewma == 0.0 {
        return 0.0;
    }
    let td = now_ns.saturating_sub(e.last_ns) as f64;
    e.ewma * (-td / EWMA_DECAY_NS).exp()
}

#[cfg(test)]
mod tests {
    use super::*;

    const MS: u64 = 1_000_000;

    fn seq(b: &Balancer, n: usize) -> Vec<usize> {
        (0..n).map(|_| b.pick(None, &[]).unwrap()).collect()
    }

    #[test]
    fn send_sync() {
        fn f<T: Send + Sync>() {}
        f::<Balancer>();
    }

    #[test]
    fn parse_kinds() {
        assert_eq!(LbKind::parse("roundrobin"), Some(LbKind::RoundRobin));
        assert_eq!(LbKind::parse("chash"), Some(LbKind::Chash));
        assert_eq!(LbKind::parse("least_conn"), Some(LbKind::LeastConn));
        assert_eq!(LbKind::parse("ewma"), Some(LbKind::Ewma));
        assert_eq!(LbKind::parse("random"), None);
        assert_eq!(LbKind::parse("RoundRobin"), None);
    }

    #[test]
    fn smooth_wrr_nginx_pattern() {
        let b = Balancer::new(LbKind::RoundRobin, &[5, 1, 1]);
        let one = vec![0, 0, 1, 0, 2, 0, 0];
        let mut expect = one.clone();
        expect.extend(&one);
        assert_eq!(seq(&b, 14), expect);
    }

    #[test]
    fn rr_equal_weights_cycle_and_proportions() {
        let b = Balancer::new(LbKind::RoundRobin, &[1, 1, 1]);
        assert_eq!(seq(&b, 6), vec![0, 1, 2, 0, 1, 2]);
        let b = Balancer::new(LbKind::RoundRobin, &[3, 0, 2, 5]);
        let mut counts = [0; 4];
        for i in seq(&b, 1000) {
            counts[i] += 1;
        }
        assert_eq!(counts, [300, 0, 200, 500]);
    }

    #[test]
    fn all_drained_or_empty_gives_none() {
        for kind in [
            LbKind::RoundRobin,
            LbKind::Chash,
            LbKind::LeastConn,
            LbKind::Ewma,
        ] {
            let b = Balancer::new(kind, &[0, 0]);
            assert_eq!(b.pick(Some(b"k"), &[]), None, "{kind:?}");
            assert_eq!(b.pick(None, &[]), None, "{kind:?}");
            let b = Balancer::new(kind, &[]);
            assert_eq!(b.pick(Some(b"k"), &[]), None, "{kind:?}");
            assert!(b.is_empty());
        }
    }

    #[test]
    fn drained_never_picked_and_tried_skipped_all_kinds() {
        for kind in [
            LbKind::RoundRobin,
            LbKind::Chash,
            LbKind::LeastConn,
            LbKind::Ewma,
        ] {
            let b = Balancer::new(kind, &[1, 0, 2, 1]);
            for i in 0..500u32 {
                let key = i.to_le_bytes();
                let p = b.pick(Some(&key), &[]).unwrap();
                assert_ne!(p, 1, "{kind:?} picked drained node");
                let p = b.pick(Some(&key), &[2]).unwrap();
                assert!(p == 0 || p == 3, "{kind:?} picked {p}");
                assert_eq!(b.pick(Some(&key), &[0, 2]), Some(3), "{kind:?}");
                assert_eq!(b.pick(Some(&key), &[0, 2, 3]), None, "{kind:?}");
            }
        }
    }

    #[test]
    fn retry_sequence_visits_every_live_node_once() {
        for kind in [
            LbKind::RoundRobin,
            LbKind::Chash,
            LbKind::LeastConn,
            LbKind::Ewma,
        ] {
            let b = Balancer::new(kind, &[1, 2, 0, 3, 1]);
            let mut tried = Vec::new();
            while let Some(n) = b.pick(Some(b"client-1"), &tried) {
                assert!(!tried.contains(&n));
                tried.push(n);
            }
            tried.sort_unstable();
            assert_eq!(tried, vec![0, 1, 3, 4], "{kind:?}");
        }
    }

    #[test]
    fn chash_same_key_same_node_and_fallback() {
        let b = Balancer::new(LbKind::Chash, &[1, 1, 1, 1]);
        for i in 0..200u32 {
            let key = format!("user-{i}");
            let first = b.pick(Some(key.as_bytes()), &[]).unwrap();
            for _ in 0..3 {
                assert_eq!(b.pick(Some(key.as_bytes()), &[]), Some(first));
            }
        }
        // No key: round robin.
        assert_eq!(seq(&b, 8), vec![0, 1, 2, 3, 0, 1, 2, 3]);
        // Same weights in another balancer instance (another worker): same mapping.
        let b2 = Balancer::new(LbKind::Chash, &[1, 1, 1, 1]);
        for i in 0..200u32 {
            let key = format!("user-{i}");
            assert_eq!(
                b.pick(Some(key.as_bytes()), &[]),
                b2.pick(Some(key.as_bytes()), &[])
            );
        }
    }

    #[test]
    fn chash_drain_or_remove_only_remaps_that_nodes_keys() {
        let before = Balancer::new(LbKind::Chash, &[1, 1, 1, 1, 1]);
        let drained = Balancer::new(LbKind::Chash, &[1, 1, 0, 1, 1]);
        let removed_last = Balancer::new(LbKind::Chash, &[1, 1, 1, 1]);
        let (mut moved, mut on_2) = (0, 0);
        for i in 0..20_000u32 {
            let key = i.to_le_bytes();
            let a = before.pick(Some(&key), &[]).unwrap();
            let d = drained.pick(Some(&key), &[]).unwrap();
            let r = removed_last.pick(Some(&key), &[]).unwrap();
            if a == 2 {
                on_2 += 1;
                assert_ne!(d, 2);
                if d != a {
                    moved += 1;
                }
            } else {
                assert_eq!(d, a, "key {i} moved although its node stayed");
            }
            if a != 4 {
                assert_eq!(r, a, "key {i} moved although its node stayed");
            }
            // `tried` behaves like draining for that one request.
            if a == 2 {
                assert_eq!(before.pick(Some(&key), &[2]), Some(d));
            }
        }
        assert_eq!(moved, on_2);
        assert!((3000..5000).contains(&on_2), "share of node 2: {on_2}");
    }

    #[test]
    fn chash_distribution_follows_weights() {
        let b = Balancer::new(LbKind::Chash, &[1, 2, 5]);
        let mut counts = [0u32; 3];
        for i in 0..80_000u32 {
            counts[b.pick(Some(&i.to_le_bytes()), &[]).unwrap()] += 1;
        }
        let share = |c: u32| f64::from(c) / 80_000.0;
        assert!((share(counts[0]) - 0.125).abs() < 0.03, "{counts:?}");
        assert!((share(counts[1]) - 0.25).abs() < 0.04, "{counts:?}");
        assert!((share(counts[2]) - 0.625).abs() < 0.05, "{counts:?}");
    }

    #[test]
    fn chash_ring_is_bounded() {
        let b = Balancer::new(LbKind::Chash, &[1000; 50]);
        assert!(b.ring.len() as u64 <= MAX_RING_POINTS + 50);
        assert!(b.pick(Some(b"x"), &[]).is_some());
    }

    #[test]
    fn least_conn_prefers_fewest_inflight() {
        let b = Balancer::new(LbKind::LeastConn, &[1, 1, 1]);
        b.on_start(0);
        b.on_start(0);
        b.on_start(1);
        assert_eq!(b.pick(None, &[]), Some(2));
        b.on_start(2);
        b.on_start(2);
        assert_eq!(b.pick(None, &[]), Some(1));
        let p = b.pick(None, &[1]).unwrap(); // 0 and 2 tie at 2 in flight
        assert!(p == 0 || p == 2);
        b.on_finish(0, 0);
        b.on_finish(0, 0);
        assert_eq!(b.pick(None, &[]), Some(0));
        assert_eq!(b.inflight(0), 0);
        b.on_finish(0, 0); // extra finish saturates at 0
        assert_eq!(b.inflight(0), 0);
        b.on_start(99); // unknown index ignored
        b.on_finish(99, 1);
    }

    #[test]
    fn least_conn_weighted_and_ties_rotate() {
        let b = Balancer::new(LbKind::LeastConn, &[3, 1]);
        // (0+1)/3 < (0+1)/1
        assert_eq!(b.pick(None, &[]), Some(0));
        b.on_start(0);
        b.on_start(0);
        // (2+1)/3 == (0+1)/1: tie broken by higher weight
        assert_eq!(b.pick(None, &[]), Some(0));
        b.on_start(0);
        // 4/3 > 1/1
        assert_eq!(b.pick(None, &[]), Some(1));

        // Equal weights, equal load: rotate over all nodes.
        let b = Balancer::new(LbKind::LeastConn, &[2, 2, 2]);
        let mut seen = [false; 3];
        for _ in 0..3 {
            seen[b.pick(None, &[]).unwrap()] = true;
        }
        assert_eq!(seen, [true; 3]);
    }

    #[test]
    fn least_conn_simulated_load_balances() {
        let b = Balancer::new(LbKind::LeastConn, &[1, 1, 2]);
        for _ in 0..40 {
            let n = b.pick(None, &[]).unwrap();
            b.on_start(n);
        }
        assert_eq!((b.inflight(0), b.inflight(1), b.inflight(2)), (10, 10, 20));
    }

    #[test]
    fn ewma_prefers_low_latency_and_unsampled() {
        let b = Balancer::new(LbKind::Ewma, &[1, 1, 1]);
        let t = 1_000 * MS;
        b.on_start(0);
        b.on_finish_at(0, 100 * MS, t);
        b.on_start(1);
        b.on_finish_at(1, 10 * MS, t);
        // Node 2 has no samples yet: tried first.
        assert_eq!(b.pick_ewma(&[], t), Some(2));
        b.on_start(2);
        b.on_finish_at(2, 50 * MS, t);
        assert_eq!(b.pick_ewma(&[], t), Some(1));
        assert_eq!(b.pick_ewma(&[1], t), Some(2));
        assert_eq!(b.pick_ewma(&[1, 2], t), Some(0));
        // In-flight requests multiply the cost: 10ms * 6 > 50ms.
        for _ in 0..5 {
            b.on_start(1);
        }
        assert_eq!(b.pick_ewma(&[], t), Some(2));
    }

    #[test]
    fn ewma_peak_and_decay() {
        let b = Balancer::new(LbKind::Ewma, &[1, 1]);
        let t = 1_000 * MS;
        b.on_finish_at(0, 10 * MS, t);
        b.on_finish_at(1, 20 * MS, t);
        assert_eq!(b.pick_ewma(&[], t), Some(0));
        // Peak: one slow response of node 0 counts immediately.
        b.on_finish_at(0, 200 * MS, t + MS);
        assert_eq!(b.pick_ewma(&[], t + MS), Some(1));
        // Fast responses pull it back down gradually (EWMA, not instant).
        b.on_finish_at(0, 10 * MS, t + 2 * MS);
        {
            let ew = b.ewma.lock().unwrap();
            assert!(ew[0].ewma > 150.0 * MS as f64, "{}", ew[0].ewma);
        }
        b.on_finish_at(0, 10 * MS, t + 30_000 * MS);
        {
            let ew = b.ewma.lock().unwrap();
            assert!(ew[0].ewma < 30.0 * MS as f64, "{}", ew[0].ewma);
        }
        // Idle decay: a slow node that got no traffic for a long time is
        // probed again, while the busy node's EWMA stays fresh.
        let b = Balancer::new(LbKind::Ewma, &[1, 1]);
        b.on_finish_at(0, 500 * MS, t);
        b.on_finish_at(1, 10 * MS, t);
        assert_eq!(b.pick_ewma(&[], t), Some(1));
        let mut now = t;
        while now < t + 60_000 * MS {
            now += 100 * MS;
            b.on_finish_at(1, 10 * MS, now);
        }
        assert_eq!(b.pick_ewma(&[], now), Some(0));
    }

    #[test]
    fn ewma_weight_divides_cost() {
        let b = Balancer::new(LbKind::Ewma, &[1, 4]);
        let t = 1_000 * MS;
        b.on_finish_at(0, 10 * MS, t);
        b.on_finish_at(1, 30 * MS, t);
        assert_eq!(b.pick_ewma(&[], t), Some(1)); // 30/4 < 10/1
    }

    #[test]
    fn ewma_p2c_many_nodes() {
        let n = 20;
        let b = Balancer::new(LbKind::Ewma, &vec![1; n]);
        let t = 1_000 * MS;
        for i in 0..n {
            // node i latency grows with i; node 0 best
            b.on_finish_at(i, (i as u64 + 1) * 10 * MS, t);
        }
        let mut counts = vec![0u32; n];
        for _ in 0..4000 {
            counts[b.pick_ewma(&[3], t).unwrap()] += 1;
        }
        assert_eq!(counts[3], 0);
        // P2C never picks the worst node (it always loses its comparison)
        assert_eq!(counts[n - 1], 0);
        // and favours good nodes.
        assert!(counts[0] > counts[n / 2], "{counts:?}");
        assert!(counts.iter().filter(|&&c| c > 0).count() > n / 2);
    }
}
