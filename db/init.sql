-- Schema and seed data for the demo application database `appdb`.
--
-- Runs against TiDB (the db-init compose service) and MariaDB (the
-- scripts/test-stack.sh stand-in), so it sticks to syntax both accept.
-- Idempotent: every statement is a no-op the second time, which lets
-- `docker compose up` re-run db-init on an existing volume safely.

CREATE DATABASE IF NOT EXISTS appdb;

CREATE TABLE IF NOT EXISTS appdb.users (
    id         BIGINT       NOT NULL AUTO_INCREMENT PRIMARY KEY,
    username   VARCHAR(64)  NOT NULL UNIQUE,
    -- A bcrypt hash, never the plain text; the application verifies against it.
    password   VARCHAR(255) NOT NULL,
    email      VARCHAR(255) NOT NULL,
    created_at TIMESTAMP    NOT NULL DEFAULT CURRENT_TIMESTAMP
) DEFAULT CHARSET = utf8mb4;

-- Seed user, only if absent. INSERT ... SELECT ... WHERE NOT EXISTS rather
-- than INSERT IGNORE: IGNORE would still consume an AUTO_INCREMENT value
-- (InnoDB) and hide unrelated errors such as a too-long column.
-- The hash is of a random password that was thrown away: the row exists to
-- have something to query, not to log in with. Set a real one with
--   UPDATE appdb.users SET password = '<bcrypt hash>' WHERE username = 'admin';
INSERT INTO appdb.users (username, password, email)
SELECT 'admin', '$2b$12$x0mETmQa3/vqYMri3NjjYe3ABNFSyvVoZMIaNnyfohTSC6ST0wH0S', 'admin@example.com'
FROM DUAL
WHERE NOT EXISTS (SELECT 1 FROM appdb.users WHERE username = 'admin');
