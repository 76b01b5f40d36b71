//! The truth about feasibility: can the targets be met at all on the traffic that came?
//!
//! A campaign can be given only requests it is eligible for, and a request goes to one
//! campaign. So the targets are feasible exactly when a flow from the profiles (each
//! carrying its share of traffic) through the eligibility edges to the campaigns
//! (each asking its target) saturates every campaign — Hall's condition, checked by a
//! maximum flow. This is computed from every request of the window (not the sample), by
//! profile, independently of the controller, so the controller's "infeasible" flags,
//! and the delivery of what it flags, can be scored against it.

use std::collections::VecDeque;

/// Campaigns that cannot all get their targets (empty when the targets are feasible),
/// and by how much the targets together are short (a share of traffic).
/// `supply[k]`: share of traffic of profile `k`; `demand[j]`: target of campaign `j`;
/// `eligible(k, j)`: whether campaign `j` may serve profile `k`.
pub fn infeasible_set(supply: &[f64], demand: &[f64], eligible: impl Fn(usize, usize) -> bool) -> (Vec<usize>, f64) {
    let (np, nc) = (supply.len(), demand.len());
    let (s, t) = (np + nc, np + nc + 1);
    let n = np + nc + 2;
    let mut cap = vec![vec![0.0; n]; n];
    for (k, &v) in supply.iter().enumerate() {
        cap[s][k] = v.max(0.0);
        for j in 0..nc {
            if eligible(k, j) {
                cap[k][np + j] = f64::INFINITY;
            }
        }
    }
    for (j, &d) in demand.iter().enumerate() {
        cap[np + j][t] = d.max(0.0);
    }
    let total: f64 = demand.iter().map(|d| d.max(0.0)).sum();
    let mut flow = 0.0;
    // Edmonds–Karp: the graph has at most a few hundred nodes.
    while let Some(parent) = augmenting_path(&cap, s, t) {
        let mut push = f64::INFINITY;
        let mut v = t;
        while v != s {
            let u = parent[v];
            push = push.min(cap[u][v]);
            v = u;
        }
        if push <= 1e-15 {
            break;
        }
        let mut v = t;
        while v != s {
            let u = parent[v];
            cap[u][v] -= push;
            cap[v][u] += push;
            v = u;
        }
        flow += push;
    }
    if flow >= total - 1e-9 {
        return (Vec::new(), 0.0);
    }
    // Hall's violating set: the campaigns short of their target, and every campaign
    // holding traffic one of them could use (in the residual graph, they reach a short
    // campaign): together they ask more than the traffic any of them may serve.
    let short: Vec<usize> = (0..nc).filter(|&j| cap[np + j][t] > 1e-9).map(|j| np + j).collect();
    let reach = reaching(&cap, &short);
    ((0..nc).filter(|&j| reach[np + j]).collect(), total - flow)
}

fn augmenting_path(cap: &[Vec<f64>], s: usize, t: usize) -> Option<Vec<usize>> {
    let n = cap.len();
    let mut parent = vec![usize::MAX; n];
    parent[s] = s;
    let mut queue = VecDeque::from([s]);
    while let Some(u) = queue.pop_front() {
        for v in 0..n {
            if parent[v] == usize::MAX && cap[u][v] > 1e-15 {
                parent[v] = u;
                if v == t {
                    return Some(parent);
                }
                queue.push_back(v);
            }
        }
    }
    None
}

/// Nodes from which one of `targets` is reachable along edges with capacity left.
fn reaching(cap: &[Vec<f64>], targets: &[usize]) -> Vec<bool> {
    let mut seen = vec![false; cap.len()];
    let mut queue = VecDeque::new();
    for &v in targets {
        seen[v] = true;
        queue.push_back(v);
    }
    while let Some(v) = queue.pop_front() {
        for u in 0..cap.len() {
            if !seen[u] && cap[u][v] > 1e-15 {
                seen[u] = true;
                queue.push_back(u);
            }
        }
    }
    seen
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn individually_and_jointly_infeasible() {
        // Profiles DE 0.2, FR 0.2, US 0.6. Campaigns: DE-only, FR-only, DE-or-FR.
        let supply = [0.2, 0.2, 0.6];
        let rules: [&[usize]; 3] = [&[0], &[1], &[0, 1]];
        let eligible = |k: usize, j: usize| rules[j].contains(&k);
        assert_eq!(infeasible_set(&supply, &[0.1, 0.1, 0.15], eligible), (vec![], 0.0));
        // Each fits alone (0.15 ≤ 0.2, 0.15 ≤ 0.2, 0.15 ≤ 0.4), together 0.45 > 0.4.
        let (set, short) = infeasible_set(&supply, &[0.15, 0.15, 0.15], eligible);
        assert_eq!(set, vec![0, 1, 2]);
        assert!((short - 0.05).abs() < 1e-12, "{short}");
        // One campaign alone over its mass.
        assert_eq!(infeasible_set(&supply, &[0.3, 0.0, 0.0], eligible).0, vec![0]);
        // Neither an unrestricted campaign nor one alone on its own saturated traffic is
        // in the violating set.
        let supply = [0.2, 0.2, 0.5, 0.1];
        let rules: [&[usize]; 5] = [&[0], &[1], &[0, 1], &[2, 3], &[3]];
        let eligible = |k: usize, j: usize| rules[j].contains(&k);
        assert_eq!(infeasible_set(&supply, &[0.15, 0.15, 0.15, 0.3, 0.1], eligible).0, vec![0, 1, 2]);
    }
}
