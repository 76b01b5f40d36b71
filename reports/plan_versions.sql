-- Plan versions over time: per placement and hour, which plan versions the edge decided
-- under and what share of the hour's (estimated) requests each one served. A version
-- that lingers after a newer one appeared shows edges still on a cached plan.
--
-- Parameters: {{from}}, {{to}} (inclusive days, YYYY-MM-DD).
WITH per_version AS (
  SELECT placement, dt, hour, plan_version,
         COUNT(*) AS sampled_requests,
         SUM(weight) AS est_requests
  FROM events
  WHERE kind = 'allocation' AND dt BETWEEN '{{from}}' AND '{{to}}'
  GROUP BY placement, dt, hour, plan_version
),
per_hour AS (
  SELECT placement, dt, hour, SUM(est_requests) AS total
  FROM per_version
  GROUP BY placement, dt, hour
)
SELECT v.placement,
       v.dt AS day,
       v.hour,
       v.plan_version,
       v.sampled_requests,
       ROUND(v.est_requests, 3) AS est_requests,
       ROUND(v.est_requests / h.total, 6) AS request_share
FROM per_version v
JOIN per_hour h ON h.placement = v.placement AND h.dt = v.dt AND h.hour = v.hour
ORDER BY placement, day, hour, plan_version
