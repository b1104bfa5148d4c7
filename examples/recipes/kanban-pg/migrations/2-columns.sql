-- migration 2: columns
CREATE TABLE board_columns (id smallint PRIMARY KEY, name text NOT NULL);
INSERT INTO board_columns VALUES (1, 'todo'), (2, 'doing'), (3, 'review'), (4, 'done');
ALTER TABLE cards ADD COLUMN column_id smallint NOT NULL DEFAULT 1
    REFERENCES board_columns (id);
UPDATE cards SET column_id = 1 + id % 4;
