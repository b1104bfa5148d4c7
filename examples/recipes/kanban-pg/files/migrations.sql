-- migration 1: cards and boots
CREATE TABLE cards (
    id bigint PRIMARY KEY,
    title text NOT NULL,
    points smallint NOT NULL,
    due date
);
INSERT INTO cards (id, title, points, due)
SELECT i, 'card ' || i || ': ' || substr(md5('card' || i), 1, 12), (i % 8)::smallint,
       CASE WHEN i % 5 = 0 THEN NULL ELSE date '2025-01-01' + (i % 90) END
FROM generate_series(1, 3000) AS i;
CREATE TABLE boots (
    id serial PRIMARY KEY,
    version text NOT NULL,
    at timestamptz NOT NULL DEFAULT now()
);
