-- migration 3: authors
CREATE TABLE authors (id integer PRIMARY KEY, name text NOT NULL);
INSERT INTO authors (id, name) SELECT i, 'author ' || i FROM generate_series(1, 50) AS i;
ALTER TABLE notes ADD COLUMN author_id integer REFERENCES authors (id);
UPDATE notes SET author_id = 1 + id % 50;
ALTER TABLE notes ALTER COLUMN author_id SET NOT NULL;
CREATE INDEX notes_author_id ON notes (author_id);
