-- migration 2: tags
CREATE TABLE tags (id integer PRIMARY KEY, name text NOT NULL UNIQUE);
INSERT INTO tags (id, name) SELECT i, 'tag-' || i FROM generate_series(1, 40) AS i;
CREATE TABLE note_tags (
    note_id integer NOT NULL REFERENCES notes (id) ON DELETE CASCADE,
    tag_id integer NOT NULL REFERENCES tags (id),
    PRIMARY KEY (note_id, tag_id)
);
INSERT INTO note_tags (note_id, tag_id)
SELECT n, 1 + (n * 7) % 40 FROM generate_series(1, 5000) AS n;
INSERT INTO note_tags (note_id, tag_id)
SELECT n, 1 + (n * 13 + 5) % 40 FROM generate_series(1, 5000, 3) AS n
ON CONFLICT DO NOTHING;
