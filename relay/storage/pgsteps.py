"""The PostgreSQL-only migration steps: functions the hot paths call, indexes built CONCURRENTLY.

relay.storage.migrations lists them in their places among the shared steps.
"""

# A windowed counter in one round trip (it was six): the advisory lock serialises the
# key across nodes, and each statement of a VOLATILE function sees what the ones before
# it (and every transaction committed before the lock) wrote.
STEP_9 = """
    CREATE FUNCTION window_add(
        p_account TEXT, p_kind TEXT, p_amount INTEGER, p_bucket DOUBLE PRECISION,
        p_expired DOUBLE PRECISION, p_limit INTEGER
    ) RETURNS TABLE (allowed BOOLEAN, total BIGINT) LANGUAGE plpgsql VOLATILE AS $$
    DECLARE
        v_total BIGINT;
    BEGIN
        PERFORM pg_advisory_xact_lock(hashtext(p_account || '/' || p_kind));
        DELETE FROM window_counts w WHERE w.account_id = p_account AND w.kind = p_kind
            AND w.bucket <= p_expired;
        SELECT COALESCE(SUM(w.count), 0) INTO v_total FROM window_counts w
            WHERE w.account_id = p_account AND w.kind = p_kind;
        IF p_limit IS NOT NULL AND v_total + p_amount > p_limit THEN
            RETURN QUERY SELECT FALSE, v_total;
            RETURN;
        END IF;
        INSERT INTO window_counts AS w (account_id, kind, bucket, count)
            VALUES (p_account, p_kind, p_bucket, p_amount)
            ON CONFLICT (account_id, kind, bucket)
            DO UPDATE SET count = w.count + excluded.count;
        RETURN QUERY SELECT TRUE, v_total + p_amount;
    END
    $$;
    """

# Several windowed counters of one event (an account's limits on a recipient) in one
# round trip, all or none: the keys' advisory locks are taken in the order of their
# lock numbers (two calls never wait on each other in a circle), every total is read,
# and only when none is at its limit is the event added to each. Returns the first
# kind (in the order given) at its limit, or NULL.
STEP_16 = """
    CREATE FUNCTION window_add_all(
        p_account TEXT, p_kinds TEXT[], p_limits INTEGER[], p_bucket DOUBLE PRECISION,
        p_expired DOUBLE PRECISION
    ) RETURNS TEXT LANGUAGE plpgsql VOLATILE AS $$
    DECLARE
        v_lock INTEGER;
        v_total BIGINT;
        v_index INTEGER;
    BEGIN
        FOR v_lock IN
            SELECT DISTINCT hashtext(p_account || '/' || k) FROM unnest(p_kinds) k ORDER BY 1
        LOOP
            PERFORM pg_advisory_xact_lock(v_lock);
        END LOOP;
        FOR v_index IN 1 .. coalesce(array_length(p_kinds, 1), 0) LOOP
            DELETE FROM window_counts w WHERE w.account_id = p_account
                AND w.kind = p_kinds[v_index] AND w.bucket <= p_expired;
            IF p_limits[v_index] IS NOT NULL THEN
                SELECT COALESCE(SUM(w.count), 0) INTO v_total FROM window_counts w
                    WHERE w.account_id = p_account AND w.kind = p_kinds[v_index];
                IF v_total + 1 > p_limits[v_index] THEN
                    RETURN p_kinds[v_index];
                END IF;
            END IF;
        END LOOP;
        INSERT INTO window_counts AS w (account_id, kind, bucket, count)
            SELECT p_account, k, p_bucket, 1 FROM unnest(p_kinds) k
            ON CONFLICT (account_id, kind, bucket) DO UPDATE SET count = w.count + 1;
        RETURN NULL;
    END
    $$;
    """

# The delivery claim. Written inline, the planner chose by the table's statistics, and
# on a queue they no longer described (a new schema; a burst after a quiet week) it
# joined every due recipient to its message and sorted them all to take the first few:
# 3-7 ms a claim at 2,000 queued, growing with the queue. Walking the due index in
# order and stopping at the limit costs the same at any size; the function plans its
# statement with sorts and bitmap scans ruled out, so that is the plan it gets.
STEP_20 = """
    CREATE FUNCTION claim_recipients(
        p_lease TEXT, p_now DOUBLE PRECISION, p_until DOUBLE PRECISION, p_limit INTEGER
    ) RETURNS TABLE (
        id BIGINT, message_id TEXT, rcpt TEXT, attempts INTEGER, account_id TEXT,
        mail_from TEXT, received_at DOUBLE PRECISION, kind TEXT, campaign TEXT,
        dsn TEXT, envelope_dsn TEXT
    ) LANGUAGE plpgsql VOLATILE
    SET enable_sort = off SET enable_bitmapscan = off SET enable_seqscan = off AS $$
    BEGIN
        RETURN QUERY
        WITH picked AS (
            SELECT r.id FROM recipients r JOIN messages m ON m.id = r.message_id
            WHERE r.status = 'pending' AND r.next_attempt <= p_now
                AND r.lease_until <= p_now AND m.held_at IS NULL
                AND NOT (m.kind = 'message' AND EXISTS (SELECT 1 FROM account_states s
                    WHERE s.account_id = m.account_id AND s.state <> 'active'))
            ORDER BY r.next_attempt LIMIT p_limit FOR UPDATE OF r SKIP LOCKED
        ), leased AS (
            UPDATE recipients r SET lease = p_lease, lease_until = p_until FROM picked
            WHERE r.id = picked.id
            RETURNING r.id, r.message_id, r.rcpt, r.attempts, r.dsn
        )
        SELECT l.id, l.message_id, l.rcpt, l.attempts, m.account_id, m.mail_from,
            m.received_at, m.kind, m.campaign, l.dsn, m.dsn
        FROM leased l JOIN messages m ON m.id = l.message_id;
    END
    $$;
    """

# The windowed counters that concurrent sessions ask for meanwhile, in one round trip
# and one transaction: a third of the database's CPU per accepted message went on
# three counters of its own (messages per hour, its recipients' limits, its campaign).
# Each operation is one or more rows of the arrays with the same `p_op` (several: all
# or none, as window_add_all), applied in order, each seeing the ones before it. Every
# key's advisory lock is taken first, in the order of the lock numbers (as
# window_add_all; the keys and numbers are window_add's), so no two calls wait on each
# other in a circle. One row per operation: the first kind at its limit (NULL when
# counted) and the total of its first kind (with the amount when counted).
STEP_21 = """
    CREATE FUNCTION window_apply(
        p_op INTEGER[], p_account TEXT[], p_kind TEXT[], p_limit INTEGER[],
        p_amount INTEGER[], p_bucket DOUBLE PRECISION[], p_expired DOUBLE PRECISION[]
    ) RETURNS TABLE (op INTEGER, refused TEXT, total BIGINT)
    LANGUAGE plpgsql VOLATILE AS $$
    DECLARE
        v_lock INTEGER;
        v_rows INTEGER := coalesce(array_length(p_op, 1), 0);
        v_first INTEGER := 1;
        v_last INTEGER;
        v_row INTEGER;
        v_sum BIGINT;
        v_total BIGINT;
    BEGIN
        FOR v_lock IN
            SELECT DISTINCT hashtext(a || '/' || k) FROM unnest(p_account, p_kind) u(a, k)
            ORDER BY 1
        LOOP
            PERFORM pg_advisory_xact_lock(v_lock);
        END LOOP;
        WHILE v_first <= v_rows LOOP
            v_last := v_first;
            WHILE v_last < v_rows AND p_op[v_last + 1] = p_op[v_first] LOOP
                v_last := v_last + 1;
            END LOOP;
            op := p_op[v_first];
            refused := NULL;
            FOR v_row IN v_first .. v_last LOOP
                DELETE FROM window_counts w WHERE w.account_id = p_account[v_row]
                    AND w.kind = p_kind[v_row] AND w.bucket <= p_expired[v_row];
                SELECT COALESCE(SUM(w.count), 0) INTO v_sum FROM window_counts w
                    WHERE w.account_id = p_account[v_row] AND w.kind = p_kind[v_row];
                IF v_row = v_first THEN
                    v_total := v_sum;
                END IF;
                IF p_limit[v_row] IS NOT NULL
                    AND v_sum + p_amount[v_row] > p_limit[v_row] THEN
                    refused := p_kind[v_row];
                    EXIT;
                END IF;
            END LOOP;
            IF refused IS NULL THEN
                FOR v_row IN v_first .. v_last LOOP
                    INSERT INTO window_counts AS w (account_id, kind, bucket, count)
                        VALUES (p_account[v_row], p_kind[v_row], p_bucket[v_row],
                            p_amount[v_row])
                        ON CONFLICT (account_id, kind, bucket)
                        DO UPDATE SET count = w.count + excluded.count;
                END LOOP;
                v_total := v_total + p_amount[v_first];
            END IF;
            total := v_total;
            RETURN NEXT;
            v_first := v_last + 1;
        END LOOP;
    END
    $$;
    """

# The queue alone: every hot read of recipients asks for the pending ones (the claim,
# renewals, the backlog, holds), and recipients_due also indexed every delivered
# recipient kept until retention, a new entry at each delivery. The partial index
# serves every query of the releases before it as recipients_due did, so that one goes
# in the same step (expand/contract holds: nothing an older node runs changes).
STEP_22 = """
    DROP INDEX CONCURRENTLY IF EXISTS recipients_pending;
    CREATE INDEX CONCURRENTLY recipients_pending ON recipients (next_attempt)
        WHERE status = 'pending';
    DROP INDEX CONCURRENTLY IF EXISTS recipients_due
    """
