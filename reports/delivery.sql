-- Delivery against target per placement, campaign and day.
--
-- est_delivered is the Horvitz-Thompson estimate (sum of 1/sample_rate) of the
-- campaign's deliveries; share is est_delivered over the placement's estimated requests,
-- with a 95 % Wilson interval for the share realized over all the day's requests, on
-- the ratio estimator's effective sample size r(1-r)/V, V = ((1-r)^2 S_y + r^2 (S_x -
-- S_y)) / X^2 with S = sum w(w-1) over the delivered events (y) and the requests (x):
-- a sampled request stands for w requests, itself among them, so only w-1 are unseen
-- (at census the interval is the share itself). At a share of 0 or 1 it falls back to
-- Kish's size X^2 / S_x. The same estimate and interval the origin's status API
-- reports (allot-core estimate::share).
-- Delivery is measured per campaign with the origin's rule (allot-core
-- DeliveryBasis::of): on impressions when the placement's apps report them for at least
-- half of the ads allocated that day (each campaign counting at most its own
-- allocations) and the campaign itself has at least 20 sampled impressions and 20
-- sampled allocations, otherwise on allocations (basis). A share on impressions is of
-- the requests of apps that report them (est_base; allocations marked unreported come
-- from apps that said they report none, and count neither there nor in the coverage);
-- a share on allocations is of all requests. est_delivered_low/high scale the interval
-- to counts of that base.
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
         SUM(weight * weight) AS requests_sq,
         SUM(CASE WHEN COALESCE(unreported, FALSE) THEN 0.0 ELSE weight END) AS reporting,
         SUM(CASE WHEN COALESCE(unreported, FALSE) THEN 0.0 ELSE weight * weight END) AS reporting_sq
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
         SUM(CASE WHEN kind = 'impression' THEN 1 ELSE 0 END) AS impression_samples
  FROM events
  WHERE ad_id IS NOT NULL AND dt BETWEEN '{{from}}' AND '{{to}}'
  GROUP BY placement, dt, ad_id
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
         CASE WHEN v.coverage >= 0.5 AND c.impression_samples >= 20 AND c.allocation_samples >= 20
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
         CASE WHEN b.basis = 'impressions' THEN COALESCE(c.impressions, 0.0)
              ELSE COALESCE(c.allocations, 0.0) END AS delivered,
         CASE WHEN b.basis = 'impressions' THEN COALESCE(c.impression_samples, 0)
              ELSE COALESCE(c.allocation_samples, 0) END AS samples,
         CASE WHEN b.basis = 'impressions' THEN COALESCE(c.impressions_sq, 0.0)
              ELSE COALESCE(c.allocations_sq, 0.0) END AS delivered_sq,
         CASE WHEN b.basis = 'impressions' THEN r.reporting_sq ELSE r.requests_sq END AS base_sq,
         CASE WHEN b.basis = 'impressions' THEN r.reporting ELSE r.requests END AS base
  FROM keyed k
  JOIN requests r ON r.placement = k.placement AND r.dt = k.dt
  LEFT JOIN campaigns c ON c.placement = k.placement AND c.dt = k.dt AND c.campaign = k.campaign
  LEFT JOIN basis b ON b.placement = k.placement AND b.dt = k.dt AND b.campaign = k.campaign
  LEFT JOIN targets t ON t.placement = k.placement AND t.dt = k.dt AND t.campaign = k.campaign
),
ratios AS (
  SELECT d.*,
         LEAST(d.delivered / d.base, 1.0) AS share,
         GREATEST(d.base_sq - d.base, 0.0) AS s_x,
         LEAST(GREATEST(d.delivered_sq - d.delivered, 0.0), GREATEST(d.base_sq - d.base, 0.0)) AS s_y
  FROM delivered d
),
variances AS (
  SELECT r.*,
         ((1 - r.share) * (1 - r.share) * r.s_y + r.share * r.share * (r.s_x - r.s_y))
           / (r.base * r.base) AS v
  FROM ratios r
),
-- n_eff is NULL where the day was seen whole (census): the interval is the share.
shares AS (
  SELECT v.placement, v.dt, v.campaign, v.basis, v.impressions, v.requests, v.base, v.delivered, v.samples,
         v.target, v.share,
         CASE WHEN v.share > 0 AND v.share < 1 AND v.v > 0 THEN v.share * (1 - v.share) / v.v
              WHEN v.share > 0 AND v.share < 1 THEN NULL
              WHEN v.s_x > 0 THEN v.base * v.base / v.s_x
              ELSE NULL END AS n_eff,
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
