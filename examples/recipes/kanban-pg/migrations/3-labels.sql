-- migration 3: labels
CREATE TABLE labels (id integer PRIMARY KEY, name text NOT NULL);
INSERT INTO labels SELECT i, 'label-' || i FROM generate_series(1, 12) AS i;
CREATE TABLE card_labels (
    card_id bigint NOT NULL REFERENCES cards (id) ON DELETE CASCADE,
    label_id integer NOT NULL REFERENCES labels (id),
    PRIMARY KEY (card_id, label_id)
);
INSERT INTO card_labels SELECT c, 1 + c % 12 FROM generate_series(1, 3000) AS c;
