-- Schema version 7: rate counters bounded by what they count (issue 19, finding 3).
--   * one row per token family and budget, reused from window to window (was: one per window);
--   * `ends`, the end of the row's window: a family's live budgets (at most 8) are read through
--     its key, and the housekeeping round drops ended rows through the index, never by a scan.
-- Rows of windows still running are kept (the latest window of each budget).

ALTER TABLE tessera_rates RENAME TO tessera_rates_6;
ALTER INDEX tessera_rates_pkey RENAME TO tessera_rates_6_pkey;

CREATE TABLE tessera_rates (
    tid  bytea  NOT NULL,
    spec text   NOT NULL,
    win  bigint NOT NULL,
    ends bigint NOT NULL,
    used bigint NOT NULL,
    PRIMARY KEY (tid, spec)
);
CREATE INDEX tessera_rates_by_end ON tessera_rates (ends);

-- `spec` is the canonical `N/kU` (s, m, h, d) the nodes wrote.
INSERT INTO tessera_rates (tid, spec, win, ends, used)
SELECT DISTINCT ON (tid, spec) tid, spec, win, win + period, used
FROM (
    SELECT tid, spec, win, used,
           m[1]::bigint * CASE m[2] WHEN 's' THEN 1 WHEN 'm' THEN 60 WHEN 'h' THEN 3600 ELSE 86400 END
               AS period
    FROM tessera_rates_6, regexp_match(spec, '^[0-9]+/([0-9]+)([smhd])$') AS m
) parsed
WHERE win + period > extract(epoch FROM now())::bigint
ORDER BY tid, spec, win DESC;

DROP TABLE tessera_rates_6;
