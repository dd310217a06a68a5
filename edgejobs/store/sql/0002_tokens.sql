-- API tokens and dashboard sessions.
-- Secrets are never stored: a token row keeps the SHA-256 of its secret, a session row the
-- SHA-256 of its id. Times are INTEGER unix milliseconds.

CREATE TABLE tokens (
    id          TEXT PRIMARY KEY,                  -- public id, shown by `token list`
    secret_hash TEXT    NOT NULL UNIQUE,           -- hex SHA-256 of the secret
    org         TEXT,                              -- NULL: a system token (every org)
    role        TEXT    NOT NULL CHECK (role IN ('viewer', 'operator', 'admin')),
    name        TEXT    NOT NULL DEFAULT '',
    created_at  INTEGER NOT NULL,
    revoked_at  INTEGER
) WITHOUT ROWID;

CREATE TABLE sessions (
    id_hash    TEXT PRIMARY KEY,                   -- hex SHA-256 of the session cookie
    token_id   TEXT    NOT NULL REFERENCES tokens (id) ON DELETE CASCADE,
    csrf_token TEXT    NOT NULL,
    created_at INTEGER NOT NULL,
    expires_at INTEGER NOT NULL
) WITHOUT ROWID;
CREATE INDEX sessions_token ON sessions (token_id);
CREATE INDEX sessions_expires ON sessions (expires_at);
