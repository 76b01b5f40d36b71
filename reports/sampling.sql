-- Sample volume and sample rate per placement and hour.
--
-- events: archived (sampled) events; sampled_requests / sampled_impressions split them
-- by kind. est_requests is the Horvitz-Thompson estimate of the placement's requests
-- (sum of 1/sample_rate over allocations). min_rate / max_rate are the sample rates the
-- edge used that hour (they differ when a new plan changed the rate), effective_rate is
-- sampled over estimated requests.
--
-- Parameters: {{from}}, {{to}} (inclusive days, YYYY-MM-DD).
SELECT placement,
       dt AS day,
       hour,
       COUNT(*) AS events,
       SUM(CASE WHEN kind = 'allocation' THEN 1 ELSE 0 END) AS sampled_requests,
       SUM(CASE WHEN kind = 'impression' THEN 1 ELSE 0 END) AS sampled_impressions,
       ROUND(SUM(CASE WHEN kind = 'allocation' THEN weight ELSE 0.0 END), 3) AS est_requests,
       MIN(sample_rate) AS min_rate,
       MAX(sample_rate) AS max_rate,
       ROUND(SUM(CASE WHEN kind = 'allocation' THEN 1.0 ELSE 0.0 END)
             / NULLIF(SUM(CASE WHEN kind = 'allocation' THEN weight ELSE 0.0 END), 0.0), 6) AS effective_rate
FROM events
WHERE dt BETWEEN '{{from}}' AND '{{to}}'
GROUP BY placement, dt, hour
ORDER BY placement, day, hour
