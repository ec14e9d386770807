-- The catalog at scale (tests/bench/catalog.py measures all of this).
--
-- 1. Embeddings inline. pgvector stores a vector EXTERNAL, and a 512-d vector is 2056 bytes, so
--    every embedding was toasted: each read of a scan was a TOAST index lookup plus two page
--    reads (an exact scan of 10k references read 30k buffers instead of 3.3k, 6x the time).
--    Rows of ~2.2 KB fit three to a page. Existing values are rewritten by the cast.
--
-- 2. A centroid per implant (the mean of its reference embeddings; cosine ignores the norm),
--    kept by triggers whatever writes the references (import, re-embed, admin). The HNSW index
--    goes on the centroids, not on the references: an implant's views are near each other and
--    the sizes of one line near those, which a graph over 100k references navigates poorly
--    (top-3 implants found 82% of the time at ef_search 40, 98% at 200), while the graph over
--    the implants' centroids finds them 99.5-100% of the time, and is 5x smaller.
--    appliance/catalog/repository.py builds that index past RAIOX_HNSW_THRESHOLD references.
ALTER TABLE reference_images ALTER COLUMN embedding SET STORAGE PLAIN;
ALTER TABLE implants ADD COLUMN centroid vector(512);
ALTER TABLE implants ALTER COLUMN centroid SET STORAGE PLAIN;

CREATE FUNCTION implants_refresh_centroids() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    IF TG_OP IN ('INSERT', 'UPDATE') THEN
        UPDATE implants i
        SET centroid = (SELECT avg(r.embedding) FROM reference_images r WHERE r.implant_id = i.id)
        WHERE i.id IN (SELECT implant_id FROM new_rows);
    END IF;
    IF TG_OP IN ('UPDATE', 'DELETE') THEN
        UPDATE implants i
        SET centroid = (SELECT avg(r.embedding) FROM reference_images r WHERE r.implant_id = i.id)
        WHERE i.id IN (SELECT implant_id FROM old_rows);
    END IF;
    RETURN NULL;
END
$$;

CREATE TRIGGER reference_images_inserted AFTER INSERT ON reference_images
    REFERENCING NEW TABLE AS new_rows
    FOR EACH STATEMENT EXECUTE FUNCTION implants_refresh_centroids();
CREATE TRIGGER reference_images_updated AFTER UPDATE ON reference_images
    REFERENCING OLD TABLE AS old_rows NEW TABLE AS new_rows
    FOR EACH STATEMENT EXECUTE FUNCTION implants_refresh_centroids();
CREATE TRIGGER reference_images_deleted AFTER DELETE ON reference_images
    REFERENCING OLD TABLE AS old_rows
    FOR EACH STATEMENT EXECUTE FUNCTION implants_refresh_centroids();

-- Rewrite the embeddings inline (the update trigger fills every centroid on the way). An index
-- on the references would be updated row by row: it goes first, and where there was one, the
-- centroid index takes its place with appliance.catalog.repository.HnswParams' settings.
DO $$
DECLARE
    had_index boolean := to_regclass('reference_images_embedding_hnsw') IS NOT NULL;
BEGIN
    DROP INDEX IF EXISTS reference_images_embedding_hnsw;
    UPDATE reference_images SET embedding = embedding::real[]::vector(512);
    IF had_index THEN
        PERFORM set_config('maintenance_work_mem', '1GB', true);
        CREATE INDEX implants_centroid_hnsw ON implants
            USING hnsw (centroid vector_cosine_ops) WITH (m = 16, ef_construction = 64);
    END IF;
END
$$;
