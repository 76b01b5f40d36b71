-- Delivery per placement, campaign and day.
--
-- est_delivered is the Horvitz-Thompson estimate (sum of 1/sample_rate) of the
-- campaign's deliveries; share is est_delivered over the placement's estimated requests,
-- with a 95 % Wilson interval on the effective sample size (sum w)^2 / sum w^2: the same
-- estimate and interval the origin's status API reports (allot-core estimate::share).
-- Delivery counts impressions where the placement reported any that day, otherwise
-- allocations (basis). Compare share and its interval with the campaign's target rate.
-- est_delivered_low/high scale the interval to counts.
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
         SUM(CASE WHEN kind = 'impression' THEN weight ELSE 0.0 END) AS impressions,
         SUM(CASE WHEN kind = 'allocation' THEN 1 ELSE 0 END) AS allocation_samples,
         SUM(CASE WHEN kind = 'impression' THEN 1 ELSE 0 END) AS impression_samples
  FROM events
  WHERE ad_id IS NOT NULL AND dt BETWEEN '{{from}}' AND '{{to}}'
  GROUP BY placement, dt, ad_id
),
basis AS (
  SELECT placement, dt,
         CASE WHEN SUM(impression_samples) > 0 THEN 'impressions' ELSE 'allocations' END AS basis
  FROM campaigns
  GROUP BY placement, dt
),
delivered AS (
  SELECT c.placement, c.dt, c.campaign, b.basis, c.impressions, r.requests,
         CASE WHEN b.basis = 'impressions' THEN c.impressions ELSE c.allocations END AS delivered,
         CASE WHEN b.basis = 'impressions' THEN c.impression_samples ELSE c.allocation_samples END AS samples,
         r.requests * r.requests / r.requests_sq AS n_eff
  FROM campaigns c
  JOIN basis b ON b.placement = c.placement AND b.dt = c.dt
  JOIN requests r ON r.placement = c.placement AND r.dt = c.dt
),
shares AS (
  SELECT d.placement, d.dt, d.campaign, d.basis, d.impressions, d.requests, d.delivered, d.samples, d.n_eff,
         LEAST(d.delivered / d.requests, 1.0) AS share,
         CAST(1.959964 AS DOUBLE) AS z
  FROM delivered d
),
wilson AS (
  SELECT s.placement, s.dt, s.campaign, s.basis, s.impressions, s.requests, s.delivered, s.samples, s.share,
         (s.share + s.z * s.z / (2 * s.n_eff)) / (1 + s.z * s.z / s.n_eff) AS center,
         s.z / (1 + s.z * s.z / s.n_eff)
           * SQRT(s.share * (1 - s.share) / s.n_eff + s.z * s.z / (4 * s.n_eff * s.n_eff)) AS half
  FROM shares s
)
SELECT placement,
       dt AS day,
       campaign,
       basis,
       ROUND(requests, 3) AS est_requests,
       ROUND(delivered, 3) AS est_delivered,
       ROUND(impressions, 3) AS est_impressions,
       samples,
       ROUND(share, 6) AS share,
       ROUND(GREATEST(center - half, 0.0), 6) AS share_low,
       ROUND(LEAST(center + half, 1.0), 6) AS share_high,
       ROUND(requests * GREATEST(center - half, 0.0), 3) AS est_delivered_low,
       ROUND(requests * LEAST(center + half, 1.0), 3) AS est_delivered_high
FROM wilson
ORDER BY placement, day, campaign
