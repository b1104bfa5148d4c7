-- migration 1: notes and boots
CREATE TABLE notes (
    id integer PRIMARY KEY,
    title text NOT NULL,
    body text NOT NULL,
    created_at timestamptz NOT NULL
);
INSERT INTO notes (id, title, body, created_at)
SELECT i, 'note ' || i, md5(i::text) || ' ' || repeat('lorem ipsum ', 1 + i % 7),
       timestamptz '2024-01-01 00:00:00+00' + i * interval '17 minutes'
FROM generate_series(1, 5000) AS i;
CREATE TABLE boots (
    id serial PRIMARY KEY,
    version text NOT NULL,
    at timestamptz NOT NULL DEFAULT now()
);
