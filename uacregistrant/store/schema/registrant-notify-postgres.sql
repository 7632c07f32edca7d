-- NOTIFY trigger for the default registrant table (PostgreSQL folds binding_URI to binding_uri).
-- The daemon installs it at start unless --no-db-notify; the same SQL for DBAs.
CREATE OR REPLACE FUNCTION "uacregistrant_registrant_notify"() RETURNS trigger AS $body$
BEGIN
    IF TG_OP = 'TRUNCATE' THEN
        PERFORM pg_notify('uacregistrant_registrant', '{"op": "TRUNCATE"}');
        RETURN NULL;
    ELSIF TG_OP = 'DELETE' THEN
        PERFORM pg_notify('uacregistrant_registrant', json_build_object('op', TG_OP, 'id', OLD."id", 'old', json_build_array(OLD."aor", OLD."binding_uri", OLD."registrar"))::text);
        RETURN OLD;
    ELSIF TG_OP = 'UPDATE' THEN
        PERFORM pg_notify('uacregistrant_registrant', json_build_object('op', TG_OP, 'id', NEW."id", 'new', json_build_array(NEW."aor", NEW."binding_uri", NEW."registrar"), 'old', json_build_array(OLD."aor", OLD."binding_uri", OLD."registrar"))::text);
        RETURN NEW;
    END IF;
    PERFORM pg_notify('uacregistrant_registrant', json_build_object('op', TG_OP, 'id', NEW."id", 'new', json_build_array(NEW."aor", NEW."binding_uri", NEW."registrar"))::text);
    RETURN NEW;
END;
$body$ LANGUAGE plpgsql;
DROP TRIGGER IF EXISTS uacregistrant_notify ON "registrant";
CREATE TRIGGER uacregistrant_notify AFTER INSERT OR UPDATE OR DELETE ON "registrant"
    FOR EACH ROW EXECUTE FUNCTION "uacregistrant_registrant_notify"();
DROP TRIGGER IF EXISTS uacregistrant_notify_truncate ON "registrant";
CREATE TRIGGER uacregistrant_notify_truncate AFTER TRUNCATE ON "registrant"
    FOR EACH STATEMENT EXECUTE FUNCTION "uacregistrant_registrant_notify"();

