-- 0007: a rejected upload's files (stems, manifest) are raw audio too. They have no vault_items rows (nothing
-- was accepted), so retention deletes them per job once the raw-audio retention of the job's plan has passed
-- since it arrived (lib/governance/retention.py purge_rejected_uploads), and records it here.
ALTER TABLE jobs ADD COLUMN files_purged_at timestamptz;
-- What the daily purge looks for: rejected uploads whose files are still there, oldest first.
CREATE INDEX jobs_rejected_files_idx ON jobs (received_at) WHERE status = 'rejected' AND files_purged_at IS NULL;
