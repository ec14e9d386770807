-- Keep embeddings inline in the table rows. pgvector stores a vector EXTERNAL (out of line, in
-- the TOAST table, once a row passes ~2 KB), and a 512-d vector is 2056 bytes: every vector
-- read was a TOAST index lookup plus two page reads. An exact scan of 10k references read
-- 30k buffers instead of 3.3k and took 6x as long (tests/bench/catalog.py). Rows of ~2.2 KB fit
-- three to a page, so PLAIN is safe for this column.
--
-- Existing values stay toasted until rewritten: the cast makes a new (inline) value. The HNSW
-- index, if present, is dropped first and rebuilt after, with the parameters that
-- appliance.catalog.HnswParams uses, instead of being updated row by row.
DO $$
DECLARE
    had_index boolean := to_regclass('reference_images_embedding_hnsw') IS NOT NULL;
BEGIN
    DROP INDEX IF EXISTS reference_images_embedding_hnsw;
    ALTER TABLE reference_images ALTER COLUMN embedding SET STORAGE PLAIN;
    UPDATE reference_images SET embedding = embedding::real[]::vector(512);
    IF had_index THEN
        SET LOCAL maintenance_work_mem = '1GB';
        CREATE INDEX reference_images_embedding_hnsw ON reference_images
            USING hnsw (embedding vector_cosine_ops) WITH (m = 16, ef_construction = 64);
    END IF;
END
$$;
