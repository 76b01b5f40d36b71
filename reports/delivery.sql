-- Delivery against target per placement, campaign and day.
--
-- Counts are Horvitz-Thompson estimates (sums of 1/sample_rate). On allocations, share
-- is the campaign's allocations over the placement's estimated requests, with a 95 %
-- Wilson interval for the share realized over all the day's requests, on the ratio
-- estimator's effective sample size r(1-r)/V, V = ((1-r)^2 S_y + r^2 (S_x - S_y)) / X^2
-- with S = sum w(w-1) over the delivered events (y) and the requests (x): a sampled
-- request stands for w requests, itself among them, so only w-1 are unseen (at census
-- the interval is the share itself). At a share of 0 or 1 it falls back to Kish's size
-- X^2 / S_x. On impressions, share is the campaign's share of all allocations on each
-- part of its traffic times that part's render ratio (impressions over allocations to
-- the apps that report them, RA), sum_g (A_g/N) rho_g. Each platform is a part; its
-- ratio is its own weighed by lam = min(1, RA_g/(A_g/4), n_g/20), n_g its sampled
-- reporting allocations, and the campaign's ratio over all its reporting apps by
-- 1 - lam (allot-core reading.rs). The interval rests on the linearized variance of
-- that sum, with every covariance in it (per sampled request of part g, w^2 z^2 with
-- z = a rho_a/N - s/N + r c_R + i c_I, rho_a what one allocation of the part reads as,
-- c_R and c_I the share's derivatives in the ratios' bases and numerators; the same
-- w(w-1) sums), plus, for the U_g ads of silent apps, whose fate no event tells,
-- rho(1-rho) U_g / N^2 each and, for the error of each part's ratio learnt from its
-- RA_h reporting ads, c_h^2 rho_h(1-rho_h) / (RA_h N^2), c_h the silent ads it scales
-- (lam_h U_h, and the campaign ratio's share of sum (1 - lam_g) U_g). Impressions without
-- a platform (reported with tokens issued before tokens carried it) count on the empty
-- platform, as the origin counts them; where that platform cannot hold them, the
-- campaign is read by one ratio. The same estimate and interval the origin's
-- status API reports (allot-core estimate::share).
-- Delivery is measured per campaign with the origin's rule (allot-core
-- DeliveryBasis::of): on impressions when the placement's apps report them for at least
-- half of the ads allocated that day (each campaign counting at most its own
-- allocations), the campaign itself has at least 20 sampled impressions and 20 sampled
-- allocations to reporting apps, and at least half of its allocations went to reporting
-- apps; otherwise on allocations (basis). Allocations marked unreported come from apps
-- that said they report none: they count in every share's base, not in the render
-- ratio or the coverage. est_base is the placement's requests, est_delivered the share
-- times them, est_delivered_low/high the interval scaled alike.
--
-- target is the campaign's target rate as the day's traffic saw it: every sampled
-- request is joined to the plan it was served under (table plans, one row per plan
-- version and campaign), so a target changed at noon counts half for each value.
-- Requests served under a plan whose snapshot is not archived are left out of that mean.
-- est_target = est_base * target; vs_target says whether the target lies within
-- the share's interval ('within'), above it ('under': delivered too little) or below
-- it ('over'). A campaign with a target and no delivery is listed with zeros.
--
-- Parameters: {{from}}, {{to}} (inclusive days, YYYY-MM-DD). Written in the SQL that
-- both Athena (Trino) and the local engine (DataFusion) accept.
WITH requests AS (
  SELECT placement, dt,
         SUM(weight) AS requests,
         SUM(weight * weight) AS requests_sq
  FROM events
  WHERE kind = 'allocation' AND dt BETWEEN '{{from}}' AND '{{to}}'
  GROUP BY placement, dt
),
campaigns AS (
  SELECT placement, dt, ad_id AS campaign,
         SUM(CASE WHEN kind = 'allocation' THEN weight ELSE 0.0 END) AS allocations,
         SUM(CASE WHEN kind = 'allocation' AND NOT COALESCE(unreported, FALSE) THEN weight ELSE 0.0 END)
           AS reporting_allocations,
         SUM(CASE WHEN kind = 'impression' THEN weight ELSE 0.0 END) AS impressions,
         SUM(CASE WHEN kind = 'allocation' THEN weight * weight ELSE 0.0 END) AS allocations_sq,
         SUM(CASE WHEN kind = 'impression' THEN weight * weight ELSE 0.0 END) AS impressions_sq,
         SUM(CASE WHEN kind = 'allocation' THEN 1 ELSE 0 END) AS allocation_samples,
         SUM(CASE WHEN kind = 'allocation' AND NOT COALESCE(unreported, FALSE) THEN 1 ELSE 0 END)
           AS reporting_allocation_samples,
         SUM(CASE WHEN kind = 'impression' THEN 1 ELSE 0 END) AS impression_samples
  FROM events
  WHERE ad_id IS NOT NULL AND dt BETWEEN '{{from}}' AND '{{to}}'
  GROUP BY placement, dt, ad_id
),
-- Each campaign's counts per platform, and the parts its share is read by. A
-- platform's sums of w^2 and its sample count are taken in proportion to the
-- campaign's (per unit of HT count), as the origin does: it counts only HT sums per
-- platform. Impressions on no platform beyond what that platform's reporting
-- allocations hold (reported with tokens issued before tokens carried the platform)
-- make the campaign read by one ratio ('whole').
platforms AS (
  SELECT placement, dt, ad_id AS campaign, COALESCE(platform, '') AS platform,
         SUM(CASE WHEN kind = 'allocation' THEN weight ELSE 0.0 END) AS a,
         SUM(CASE WHEN kind = 'allocation' AND COALESCE(unreported, FALSE) THEN weight ELSE 0.0 END) AS u,
         SUM(CASE WHEN kind = 'impression' THEN weight ELSE 0.0 END) AS i
  FROM events
  WHERE ad_id IS NOT NULL AND dt BETWEEN '{{from}}' AND '{{to}}'
  GROUP BY placement, dt, ad_id, COALESCE(platform, '')
),
per_unit AS (
  SELECT placement, dt, campaign,
         CASE WHEN allocations > 0 THEN allocations_sq / allocations ELSE 0.0 END AS allocation_sq,
         CASE WHEN allocations > 0 THEN allocation_samples / allocations ELSE 0.0 END AS allocation_samples,
         CASE WHEN impressions > 0 THEN impressions_sq / impressions ELSE 0.0 END AS impression_sq
  FROM campaigns
),
platform_counts AS (
  SELECT p.placement, p.dt, p.campaign, p.platform, p.a, p.i,
         GREATEST(p.a - p.u, 0.0) AS ra,
         GREATEST(p.a - p.u, 0.0) * q.allocation_samples AS ra_n,
         p.a * q.allocation_sq AS a_sq,
         GREATEST(p.a - p.u, 0.0) * q.allocation_sq AS ra_sq,
         p.i * q.impression_sq AS i_sq
  FROM platforms p
  JOIN per_unit q ON q.placement = p.placement AND q.dt = p.dt AND q.campaign = p.campaign
),
orphans AS (
  SELECT placement, dt, campaign, MAX(CASE WHEN platform = '' AND i > ra * (1 + 1e-9) THEN 1 ELSE 0 END) AS orphaned
  FROM platform_counts
  GROUP BY placement, dt, campaign
),
platform_parts AS (
  SELECT p.*,
         CASE WHEN o.orphaned = 1 THEN 'whole' ELSE 'p:' || p.platform END AS part
  FROM platform_counts p
  JOIN orphans o ON o.placement = p.placement AND o.dt = p.dt AND o.campaign = p.campaign
),
parts AS (
  SELECT placement, dt, campaign, part,
         SUM(a) AS a, SUM(a_sq) AS a_sq, SUM(ra) AS ra, SUM(ra_n) AS ra_n, SUM(ra_sq) AS ra_sq,
         SUM(i) AS i, SUM(i_sq) AS i_sq
  FROM platform_parts
  GROUP BY placement, dt, campaign, part
),
-- How much each part's own ratio weighs (lam), and whether its coverage sets that
-- weight (then lam * A_g = 4 RA_g does not move with A_g). One ratio for the campaign
-- ('whole') is its own.
weights AS (
  SELECT p.*,
         p.ra / (0.25 * p.a) AS by_coverage_of,
         p.ra_n / 20.0 AS by_samples_of
  FROM parts p
  WHERE p.a > 0
),
owned AS (
  SELECT w.*,
         CASE WHEN w.part = 'whole' THEN 1.0
              WHEN w.ra > 0 THEN LEAST(1.0, GREATEST(0.0, LEAST(w.by_coverage_of, w.by_samples_of)))
              ELSE 0.0 END AS lam,
         w.part <> 'whole' AND w.ra > 0 AND w.by_coverage_of < 1.0 AND w.by_coverage_of <= w.by_samples_of
           AS by_coverage
  FROM weights w
),
coverage AS (
  SELECT placement, dt,
         CASE WHEN SUM(reporting_allocations) > 0
              THEN SUM(LEAST(impressions, reporting_allocations)) / SUM(reporting_allocations)
              ELSE 0.0 END AS coverage
  FROM campaigns
  GROUP BY placement, dt
),
basis AS (
  SELECT c.placement, c.dt, c.campaign,
         CASE WHEN v.coverage >= 0.5 AND c.impression_samples >= 20 AND c.reporting_allocation_samples >= 20
                   AND c.reporting_allocations >= 0.5 * c.allocations
              THEN 'impressions' ELSE 'allocations' END AS basis
  FROM campaigns c
  JOIN coverage v ON v.placement = c.placement AND v.dt = c.dt
),
-- Plans issued after the period cannot have served it (and their partitions need no
-- scan). A plan without campaigns is one row with a NULL campaign: a known version that
-- aims for nothing. A version can be logged twice if its plan was published but could
-- not be stored as current: the next round republishes that version, from the targets
-- then in force; MAX keeps one target per version and campaign.
plan_targets AS (
  SELECT placement, plan_version, campaign, MAX(target_rate) AS target_rate
  FROM plans
  WHERE dt <= '{{to}}' AND campaign IS NOT NULL
  GROUP BY placement, plan_version, campaign
),
known_versions AS (
  SELECT DISTINCT placement, plan_version FROM plans WHERE dt <= '{{to}}'
),
covered AS (
  SELECT e.placement, e.dt, SUM(e.weight) AS requests
  FROM events e
  JOIN known_versions v ON v.placement = e.placement AND v.plan_version = e.plan_version
  WHERE e.kind = 'allocation' AND e.dt BETWEEN '{{from}}' AND '{{to}}'
  GROUP BY e.placement, e.dt
),
targeted AS (
  SELECT e.placement, e.dt, t.campaign, SUM(e.weight * t.target_rate) AS weighted
  FROM events e
  JOIN plan_targets t ON t.placement = e.placement AND t.plan_version = e.plan_version
  WHERE e.kind = 'allocation' AND e.dt BETWEEN '{{from}}' AND '{{to}}'
  GROUP BY e.placement, e.dt, t.campaign
),
targets AS (
  SELECT t.placement, t.dt, t.campaign, t.weighted / c.requests AS target
  FROM targeted t
  JOIN covered c ON c.placement = t.placement AND c.dt = t.dt
),
keyed AS (
  SELECT placement, dt, campaign FROM campaigns
  UNION
  SELECT placement, dt, campaign FROM targets
),
delivered AS (
  SELECT k.placement, k.dt, k.campaign, t.target, r.requests,
         COALESCE(b.basis, 'allocations') AS basis,
         COALESCE(c.impressions, 0.0) AS impressions,
         CASE WHEN b.basis = 'impressions' THEN COALESCE(c.impression_samples, 0)
              ELSE COALESCE(c.allocation_samples, 0) END AS samples,
         r.requests_sq,
         COALESCE(c.allocations, 0.0) AS allocations,
         COALESCE(c.allocations_sq, 0.0) AS allocations_sq,
         COALESCE(c.reporting_allocations, 0.0) AS reporting_allocations,
         CASE WHEN COALESCE(c.allocations, 0.0) > 0
              THEN c.reporting_allocations * (c.allocations_sq / c.allocations) ELSE 0.0 END AS reporting_sq,
         COALESCE(c.impressions_sq, 0.0) AS impressions_sq
  FROM keyed k
  JOIN requests r ON r.placement = k.placement AND r.dt = k.dt
  LEFT JOIN campaigns c ON c.placement = k.placement AND c.dt = k.dt AND c.campaign = k.campaign
  LEFT JOIN basis b ON b.placement = k.placement AND b.dt = k.dt AND b.campaign = k.campaign
  LEFT JOIN targets t ON t.placement = k.placement AND t.dt = k.dt AND t.campaign = k.campaign
),
-- The unseen part of each sum (w(w-1)), nested: impressions within reporting
-- allocations within allocations within requests.
unseen AS (
  SELECT d.*,
         LEAST(d.allocations / d.requests, 1.0) AS allocated,
         CASE WHEN d.reporting_allocations > 0 THEN LEAST(d.impressions / d.reporting_allocations, 1.0)
              ELSE 0.0 END AS rho_w,
         GREATEST(d.requests_sq - d.requests, 0.0) AS t_n,
         LEAST(GREATEST(d.allocations_sq - d.allocations, 0.0), GREATEST(d.requests_sq - d.requests, 0.0)) AS t_a
  FROM delivered d
),
-- On impressions, each part's render ratio (its own and the campaign's, weighed).
part_ratios AS (
  SELECT o.*, u.requests, u.rho_w,
         CASE WHEN o.ra > 0 THEN LEAST(o.i / o.ra, 1.0) ELSE 0.0 END AS own_rho,
         o.lam * (CASE WHEN o.ra > 0 THEN LEAST(o.i / o.ra, 1.0) ELSE 0.0 END) + (1 - o.lam) * u.rho_w AS rho
  FROM owned o
  JOIN unseen u ON u.placement = o.placement AND u.dt = o.dt AND u.campaign = o.campaign
  WHERE u.basis = 'impressions'
),
readings AS (
  SELECT placement, dt, campaign,
         SUM(a / requests * rho) AS shown,
         SUM((1 - lam) * a) / MAX(requests) AS pooled,
         SUM((1 - lam) * GREATEST(a - ra, 0.0)) AS pooled_silent
  FROM part_ratios
  GROUP BY placement, dt, campaign
),
nested AS (
  SELECT u.*,
         CASE WHEN u.basis = 'impressions' THEN LEAST(GREATEST(COALESCE(r.shown, 0.0), 0.0), 1.0)
              ELSE u.allocated END AS share,
         COALESCE(r.pooled, 0.0) AS pooled,
         COALESCE(r.pooled_silent, 0.0) AS pooled_silent
  FROM unseen u
  LEFT JOIN readings r ON r.placement = u.placement AND r.dt = u.dt AND r.campaign = u.campaign
),
-- Per part: z for a sampled request allocated (silent), to a reporting app, shown.
part_coefficients AS (
  SELECT p.placement, p.dt, p.campaign, p.rho, p.own_rho,
         GREATEST(p.a - p.ra, 0.0) AS u,
         p.ra,
         -- The silent ads the part's own ratio scales: its own as far as that ratio
         -- weighs, and those the campaign's ratio scales, in proportion to its
         -- reporting ads.
         p.lam * GREATEST(p.a - p.ra, 0.0) + n.pooled_silent * p.ra / n.reporting_allocations AS carried,
         (CASE WHEN p.by_coverage THEN n.rho_w ELSE p.rho END) / p.requests - n.share / p.requests AS given,
         -(CASE WHEN p.ra > 0 THEN p.lam * p.a / (p.requests * p.ra) ELSE 0.0 END)
           * (CASE WHEN p.lam < 1 THEN n.rho_w ELSE p.own_rho END)
           - n.rho_w * n.pooled / n.reporting_allocations AS c_r,
         (CASE WHEN p.ra > 0 THEN p.lam * p.a / (p.requests * p.ra) ELSE 0.0 END)
           + n.pooled / n.reporting_allocations AS c_i,
         GREATEST(p.a_sq - p.a, 0.0) AS t_a,
         LEAST(GREATEST(p.ra_sq - p.ra, 0.0), GREATEST(p.a_sq - p.a, 0.0)) AS t_ra,
         LEAST(GREATEST(p.i_sq - p.i, 0.0), GREATEST(p.ra_sq - p.ra, 0.0), GREATEST(p.a_sq - p.a, 0.0)) AS t_i
  FROM part_ratios p
  JOIN nested n ON n.placement = p.placement AND n.dt = p.dt AND n.campaign = p.campaign
),
part_sums AS (
  SELECT placement, dt, campaign,
         SUM((t_a - t_ra) * given * given + (t_ra - t_i) * POWER(given + c_r, 2)
             + t_i * POWER(given + c_r + c_i, 2)) AS sampled,
         SUM(t_a) AS allocated_sq,
         SUM(rho * (1 - rho) * u
             + CASE WHEN ra > 0 THEN carried * carried * own_rho * (1 - own_rho) / ra ELSE 0.0 END) AS silent
  FROM part_coefficients
  GROUP BY placement, dt, campaign
),
variances AS (
  SELECT n.*,
         CASE WHEN n.basis = 'impressions' AND n.allocations > 0 AND n.reporting_allocations > 0 THEN
           ps.sampled
           + GREATEST(n.t_n - ps.allocated_sq, 0.0) * POWER(n.share / n.requests, 2)
           + ps.silent / (n.requests * n.requests)
         WHEN n.basis = 'impressions' THEN 0.0
         ELSE ((1 - n.share) * (1 - n.share) * n.t_a + n.share * n.share * (n.t_n - n.t_a))
           / (n.requests * n.requests) END AS v,
         -- Kish's size of each part that has unseen requests (NULL: none unseen).
         CASE WHEN n.t_n > 0 THEN n.requests * n.requests / n.t_n END AS kish_n,
         CASE WHEN n.basis = 'impressions' AND n.reporting_allocations > 0
                   AND n.reporting_sq - n.reporting_allocations > 0
              THEN n.reporting_allocations * n.reporting_allocations / (n.reporting_sq - n.reporting_allocations)
         END AS kish_ra
  FROM nested n
  LEFT JOIN part_sums ps ON ps.placement = n.placement AND ps.dt = n.dt AND ps.campaign = n.campaign
),
-- n_eff is NULL where the day was seen whole (census): the interval is the share.
shares AS (
  SELECT v.placement, v.dt, v.campaign, v.basis, v.impressions, v.requests, v.requests AS base,
         v.share * v.requests AS delivered, v.samples, v.target, v.share,
         CASE WHEN v.share > 0 AND v.share < 1 AND v.v > 0 THEN v.share * (1 - v.share) / v.v
              WHEN v.share > 0 AND v.share < 1 THEN NULL
              WHEN v.kish_n IS NOT NULL AND v.kish_ra IS NOT NULL THEN LEAST(v.kish_n, v.kish_ra)
              ELSE COALESCE(v.kish_n, v.kish_ra) END AS n_eff,
         CAST(1.959964 AS DOUBLE) AS z
  FROM variances v
),
wilson AS (
  SELECT s.placement, s.dt, s.campaign, s.basis, s.impressions, s.requests, s.base, s.delivered, s.samples, s.share,
         s.target,
         CASE WHEN s.n_eff IS NULL THEN s.share
              ELSE GREATEST((s.share + s.z * s.z / (2 * s.n_eff)) / (1 + s.z * s.z / s.n_eff)
                - s.z / (1 + s.z * s.z / s.n_eff)
                  * SQRT(s.share * (1 - s.share) / s.n_eff + s.z * s.z / (4 * s.n_eff * s.n_eff)), 0.0)
         END AS low,
         CASE WHEN s.n_eff IS NULL THEN s.share
              ELSE LEAST((s.share + s.z * s.z / (2 * s.n_eff)) / (1 + s.z * s.z / s.n_eff)
                + s.z / (1 + s.z * s.z / s.n_eff)
                  * SQRT(s.share * (1 - s.share) / s.n_eff + s.z * s.z / (4 * s.n_eff * s.n_eff)), 1.0)
         END AS high
  FROM shares s
)
SELECT placement,
       dt AS day,
       campaign,
       basis,
       ROUND(requests, 3) AS est_requests,
       ROUND(base, 3) AS est_base,
       ROUND(delivered, 3) AS est_delivered,
       ROUND(impressions, 3) AS est_impressions,
       samples,
       ROUND(share, 6) AS share,
       ROUND(low, 6) AS share_low,
       ROUND(high, 6) AS share_high,
       ROUND(base * low, 3) AS est_delivered_low,
       ROUND(base * high, 3) AS est_delivered_high,
       ROUND(target, 6) AS target,
       ROUND(base * target, 3) AS est_target,
       CASE WHEN target IS NULL THEN NULL
            WHEN target > high THEN 'under'
            WHEN target < low THEN 'over'
            ELSE 'within' END AS vs_target
FROM wilson
ORDER BY placement, day, campaign
