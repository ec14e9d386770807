-- API keys for the closed-by-default API (`raiox apikey create|list|revoke`). Only a SHA-256
-- of each key is kept: keys are 256 random bits, so a fast hash is as safe as a slow one
-- (nothing to brute-force) and lets one indexed lookup authenticate a request.
CREATE TABLE api_keys (
    id bigserial PRIMARY KEY,
    name text NOT NULL,
    key_sha256 bytea NOT NULL UNIQUE,
    prefix text NOT NULL,
    created_at timestamptz NOT NULL DEFAULT now(),
    last_used_at timestamptz,
    revoked_at timestamptz
);
CREATE UNIQUE INDEX api_keys_active_name ON api_keys (name) WHERE revoked_at IS NULL;
